"""300W's standard split read from the iBUG layout, and the benchmark run on it from the command line."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import numpy as np
import pytest

from mfassl_faces.errors import FaceDataError
from mfassl_faces.protocols import LANDMARK_PROTOCOLS, PROTOCOL_NAMES, read_protocol

from cli_runner import run_main
from face_helpers import IBUG_TREE, write_300w_tree

TINY = ["--size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "4"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ibug") / "300W_root"
    truth = write_300w_tree(root)
    return root, truth


def _rel(records, root) -> list[str]:
    return [r.image.relative_to(root).as_posix() for r in records]


def test_300w_split_is_the_standard_one(tree, caplog) -> None:
    root, truth = tree
    with caplog.at_level(logging.WARNING, logger="mfassl_faces.protocols"):
        split = read_protocol("300w", root)
    train = [f"{d}/{n}" for d in ("afw", "helen/trainset", "lfpw/trainset") for n in sorted(IBUG_TREE[d])]
    assert _rel(split.train, root) == train  # the mirrored image without a .pts is not a face
    test = _rel(split.test, root)
    assert test == [f"{d}/{n}" for d in ("helen/testset", "lfpw/testset", "ibug") for n in sorted(IBUG_TREE[d])]
    assert split.subsets == ("common", "challenging") and split.schema == "ibug68"
    flags = {rel: r.attributes for rel, r in zip(test, split.test)}
    assert flags["helen/testset/296814969_3.jpg"] == {"common": 1, "challenging": 0}
    assert flags["lfpw/testset/image_0001.png"] == {"common": 1, "challenging": 0}
    assert flags["ibug/image_003_1.jpg"] == {"common": 0, "challenging": 1}
    assert split.counts == {"afw": 3, "helen_train": 2, "lfpw_train": 2, "helen_test": 2, "lfpw_test": 1, "ibug": 2}
    assert "the standard 300W afw has 337" in caplog.text  # a partial download is named
    for rec in split.test:  # landmarks read back 0-based from the 1-based .pts
        np.testing.assert_allclose(rec.landmarks, truth[rec.image.relative_to(root).as_posix()], atol=1e-5)
    assert set(PROTOCOL_NAMES) == set(LANDMARK_PROTOCOLS.names())


def test_300w_private_trains_on_every_public_face(tree) -> None:
    root, _ = tree
    split = read_protocol("300w-private", root)
    assert len(split.train) == 3 + 2 + 2 + 2 + 1 + 2  # train + common + challenging
    assert _rel(split.test, root) == ["300W/01_Indoor/indoor_001.png", "300W/02_Outdoor/outdoor_001.png"]
    assert [r.attributes for r in split.test] == [{"indoor": 1, "outdoor": 0}, {"indoor": 0, "outdoor": 1}]
    assert split.subsets == ("indoor", "outdoor")


def test_300w_split_names_a_missing_folder(tree, tmp_path) -> None:
    root, _ = tree
    partial = tmp_path / "partial"
    shutil.copytree(root, partial)
    shutil.rmtree(partial / "300W")
    with pytest.raises(FaceDataError, match=r"300W/01_Indoor: the 300W split needs this folder \(indoor\)"):
        read_protocol("300w-private", partial)
    shutil.rmtree(partial / "lfpw" / "testset")
    with pytest.raises(FaceDataError, match=r"lfpw/testset: the 300W split needs this folder"):
        read_protocol("300w", partial)
    (partial / "lfpw" / "testset").mkdir()
    with pytest.raises(FaceDataError, match=r"lfpw/testset: no image with a .pts"):
        read_protocol("300w", partial)


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl_faces", *args)


def test_benchmark_on_the_300w_split_then_score_its_predictions(tree, tmp_path, capsys) -> None:
    """The user's path: the benchmark on 300W's split with a paper's options prints common / challenging / full,
    saves each test face's prediction, and the score command gives the same numbers from that file."""
    root, _ = tree
    out = tmp_path / "bench"
    proc = _run("benchmark", "--data", str(root), "--split", "300w", "--threshold", "0.08", "--normalization",
                "inter-pupil", "--epochs", "1", "--n-boot", "20", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["n_train"] == 7 and res["n_test"] == 5
    assert res["threshold"] == 0.08 and res["normalization"] == "inter-pupil"
    assert {k: v["n"] for k, v in res["subsets"].items()} == {"full": 5, "common": 3, "challenging": 2}
    table = "\n".join(lines[:-1])
    assert "inter-pupil" in table and "FR@0.08 (%)" in table and "AUC@0.08" in table
    rows = {ln.split()[0]: ln.split() for ln in lines[2:-1]}
    assert set(rows) == {"full", "common", "challenging"}
    assert float(rows["common"][2]) == pytest.approx(100 * res["subsets"]["common"]["nme"], abs=0.006)  # percent
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["image"] for p in preds] == ["helen/testset/296814969_3.jpg", "helen/testset/2968560214_1.jpg",
                                          "lfpw/testset/image_0001.png", "ibug/image_003_1.jpg", "ibug/image_004_1.jpg"]
    assert all(p["face"] == 0 and np.asarray(p["landmarks"]).shape == (68, 2) for p in preds)
    saved = json.loads((out / "landmark_benchmark.json").read_text())
    assert saved["predictions"] == str(out / "predictions.jsonl")

    from mfassl_faces import cli_score

    assert cli_score.main([str(out / "predictions.jsonl"), "--data", str(root), "--split", "300w", "--threshold", "0.08",
                           "--normalization", "inter-pupil", "--n-boot", "20", "--out", str(tmp_path / "score")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["n"] == 5 and again["n_missing"] == 0 and again["unmatched"] == 0
    for name in ("full", "common", "challenging"):
        for key in ("nme", "fr", "auc"):
            assert again["subsets"][name][key] == pytest.approx(res["subsets"][name][key], rel=1e-4, abs=1e-6)
    per_face = [json.loads(ln) for ln in (tmp_path / "score" / "face_errors.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([f["nme"] for f in per_face], [p["nme"] for p in preds], rtol=1e-4)


def test_benchmark_split_needs_the_300w_root(tree, tmp_path, capsys) -> None:
    from mfassl_faces import cli_tasks

    root, _ = tree
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any file is read
        cli_tasks.main(["benchmark", "--split", "300w", "--wflw-train", "x", *TINY])
    assert exit_.value.code == 2 and "--split 300w reads --data" in capsys.readouterr().err
    partial = tmp_path / "partial"
    shutil.copytree(root / "afw", partial / "afw")
    assert cli_tasks.main(["benchmark", "--data", str(partial), "--split", "300w", "--epochs", "1", *TINY]) == 1
    assert "helen/trainset: the 300W split needs this folder" in capsys.readouterr().err
    for bad in (["--threshold", "0"], ["--threshold", "nan"], ["--normalization", "iod"], ["--split", "300W-test"]):
        with pytest.raises(SystemExit) as exit_:
            cli_tasks.main(["benchmark", "--data", str(root), *bad, *TINY])
        assert exit_.value.code == 2 and bad[0] in capsys.readouterr().err


def test_benchmark_on_wflw_prints_the_six_subsets(tmp_path, capsys) -> None:
    """WFLW in its layout (real faces; their 68-point ground truth taken to 98 points): the table on stdout
    and the JSON carry the full set and the six attribute subsets, NME in percent."""
    from mfassl_faces import cli_tasks
    from mfassl_faces.demo import load_source_faces, transform_face
    from mfassl_faces.io import write_image
    from mfassl_faces.readers import WFLW_ATTRIBUTES
    from mfassl_faces.schemas import convert_landmarks

    images = tmp_path / "WFLW_images"
    faces = load_source_faces(include_astronaut=False)
    lists = {"train": [], "test": []}
    for k in range(7):
        f = faces[k % 3]
        img, pts, _ = transform_face(f.image, f.landmarks, 4.0 * k - 12, 150 / max(f.image.shape[:2]))
        rel = f"{k}--Scene/img_{k}.jpg"
        write_image(images / rel, img)
        p98 = convert_landmarks(pts, "ibug68", "wflw98")
        box = (*np.floor(p98.min(axis=0)), *np.ceil(p98.max(axis=0)))
        flags = [int(k % (j + 2) == 0) for j in range(6)]
        line = " ".join(f"{v:.3f}" for v in p98.ravel()) + " " + " ".join(f"{b:.0f}" for b in box) + " " \
            + " ".join(map(str, flags)) + " " + rel
        lists["train" if k < 4 else "test"].append(line)
    for name, lines in lists.items():
        (tmp_path / f"list_98pt_rect_attr_{name}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "bench"
    assert cli_tasks.main(["benchmark", "--wflw-train", str(tmp_path / "list_98pt_rect_attr_train.txt"), "--wflw-test",
                           str(tmp_path / "list_98pt_rect_attr_test.txt"), "--wflw-images", str(images), "--epochs", "1",
                           "--n-boot", "10", "--out", str(out), *TINY]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])
    assert [ln.split()[0] for ln in lines[2:-1]] == ["full", *WFLW_ATTRIBUTES]
    assert list(res["subsets"]) == ["full", *WFLW_ATTRIBUTES] and res["normalization"] == "inter-ocular"
    assert res["subsets"]["pose"]["n"] == 2 and res["subsets"]["expression"]["n"] == 1  # faces 4 and 6; face 6
    assert res["subsets"]["blur"] == {"n": 0, "n_failed": 0, "nme": None, "fr": None, "auc": None}  # strict JSON
    assert "NaN" not in lines[-1] and lines[-2].split() == ["blur", "0", "-", "-", "-"]
    assert float(lines[2].split()[2]) == pytest.approx(100 * res["nme"]["value"], abs=0.006)
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["image"] for p in preds] == ["4--Scene/img_4.jpg", "5--Scene/img_5.jpg", "6--Scene/img_6.jpg"]
    assert np.asarray(preds[0]["landmarks"]).shape == (98, 2)
