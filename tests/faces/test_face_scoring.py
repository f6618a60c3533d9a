"""Prediction files and the score command: every format gives the same hand-computed numbers, faces are
matched to the annotations, missing faces follow the policy, bad files are named."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mfassl_faces import cli_score
from mfassl_faces.errors import FaceDataError
from mfassl_faces.predictions import read_predictions, score_predictions
from mfassl_faces.readers import WFLW_ATTRIBUTES, read_wflw_annotations
from mfassl_faces.schemas import convert_landmarks

from cli_runner import run_main
from face_helpers import place, template, write_300w_tree

# three faces on two images; image b holds two. Template IOD 1.4 x scale 50 = 70 px, so the offsets below
# (5, 6 and 10 px on every point) give NME 5/70, 6/70 and 10/70.
FACES = [("0--Parade/a.jpg", 5.0, (120.0, 110.0), (1, 0, 0, 0, 0, 1)),
         ("0--Parade/b.jpg", -8.0, (110.0, 120.0), (1, 1, 0, 0, 0, 0)),
         ("0--Parade/b.jpg", 3.0, (320.0, 130.0), (0, 0, 1, 0, 1, 0))]
OFFSETS = [(3.0, 4.0), (0.0, 6.0), (8.0, 6.0)]
EXPECTED = np.array([5.0, 6.0, 10.0]) / 70.0


def _gt(k: int) -> np.ndarray:
    _, angle, centre, _ = FACES[k]
    return place(template("wflw98"), angle, 50.0, centre)


@pytest.fixture()
def wflw(tmp_path):
    lines = []
    for k, (image, _, _, flags) in enumerate(FACES):
        pts = _gt(k)
        x0, y0 = pts.min(axis=0) - 5
        x1, y1 = pts.max(axis=0) + 5
        lines.append(" ".join(f"{v:.6f}" for v in pts.ravel()) + f" {x0:.0f} {y0:.0f} {x1:.0f} {y1:.0f} "
                     + " ".join(map(str, flags)) + " " + image)
    ann = tmp_path / "list_98pt_rect_attr_test.txt"
    ann.write_text("\n".join(lines) + "\n")
    return ann, tmp_path / "WFLW_images"


def _pred(k: int) -> np.ndarray:
    return _gt(k) + np.array(OFFSETS[k])


def _score(ann, root, path, **kw):
    recs = read_wflw_annotations(ann, root)
    return score_predictions(recs, root, read_predictions(path, one_based=kw.pop("one_based", False)), "wflw98",
                             WFLW_ATTRIBUTES, n_boot=20, **kw)


def _write_jsonl(path, objs) -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def _formats(tmp_path, root) -> dict:
    """The same three predictions in each format (image b's faces listed second face first where no index
    is given, so only the box matching can pair them)."""
    rows = [("0--Parade/a.jpg", 0, _pred(0)), ("0--Parade/b.jpg", 0, _pred(1)), ("0--Parade/b.jpg", 1, _pred(2))]
    out = {}
    out["jsonl"] = tmp_path / "p.jsonl"
    _write_jsonl(out["jsonl"], [{"image": i, "face": f, "landmarks": p.tolist()} for i, f, p in rows])
    out["json list, absolute paths, box matching"] = tmp_path / "p_list.json"
    out["json list, absolute paths, box matching"].write_text(json.dumps(
        [{"image": str(root / i), "landmarks": p.tolist()} for i, _, p in rows[::-1]]))
    out["json mapping"] = tmp_path / "p_map.json"
    out["json mapping"].write_text(json.dumps({"0--Parade/a.jpg": rows[0][2].tolist(),
                                              "0--Parade/b.jpg": [rows[2][2].tolist(), rows[1][2].tolist()]}))
    out["csv with header"] = tmp_path / "p.csv"
    with open(out["csv with header"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "face"] + [f"{a}{k}" for k in range(98) for a in "xy"])
        for i, f, p in rows:
            w.writerow([i, f, *p.ravel()])
    out["csv, bare file names"] = tmp_path / "p_bare.csv"
    with open(out["csv, bare file names"], "w", newline="") as fh:
        for i, _, p in rows[::-1]:
            csv.writer(fh).writerow([i.split("/")[-1], *p.ravel()])
    return out


def test_every_format_gives_the_hand_numbers(wflw, tmp_path) -> None:
    ann, root = wflw
    for name, path in _formats(tmp_path, root).items():
        report, faces = _score(ann, root, path, threshold=0.1)
        np.testing.assert_allclose([f["nme"] for f in faces], EXPECTED, rtol=1e-7, err_msg=name)
        assert report["fr"]["value"] == pytest.approx(1 / 3), name
        assert report["auc"]["value"] == pytest.approx(np.mean(np.clip(0.1 - EXPECTED, 0, None)) / 0.1), name
        assert report["nme"]["value"] == pytest.approx(EXPECTED.mean()), name
        assert report["schema"] == "wflw98" and report["n_missing"] == 0 and report["unmatched"] == 0
        # WFLW subsets: pose = faces 0 and 1, blur = face 0, occlusion = face 2, make-up none
        assert report["subsets"]["pose"]["nme"] == pytest.approx(EXPECTED[:2].mean())
        assert report["subsets"]["blur"]["n"] == 1 and report["subsets"]["occlusion"]["fr"] == 1.0
        assert report["subsets"]["make-up"]["n"] == 0
    one_based = tmp_path / "p1.jsonl"
    _write_jsonl(one_based, [{"image": FACES[k][0], "face": [0, 0, 1][k], "landmarks": (_pred(k) + 1).tolist()}
                             for k in range(3)])
    _, faces = _score(ann, root, one_based, one_based=True)
    np.testing.assert_allclose([f["nme"] for f in faces], EXPECTED, rtol=1e-7)
    _, faces = _score(ann, root, one_based)  # read 0-based, the same file is one pixel off everywhere
    assert not np.allclose([f["nme"] for f in faces], EXPECTED)


def test_68_point_predictions_are_scored_on_the_shared_points(wflw, tmp_path) -> None:
    ann, root = wflw
    path = tmp_path / "p68.jsonl"
    _write_jsonl(path, [{"image": FACES[k][0], "face": [0, 0, 1][k],
                         "landmarks": convert_landmarks(_pred(k), "wflw98", "ibug68").tolist()} for k in range(3)])
    report, faces = _score(ann, root, path)
    assert report["schema"] == "ibug68"  # the eye corners are exact counterparts: same IOD, same NME
    np.testing.assert_allclose([f["nme"] for f in faces], EXPECTED, rtol=1e-7)
    assert np.asarray(faces[0]["landmarks"]).shape == (68, 2)


def test_landmarks_command_output_and_missing_faces(wflw, tmp_path) -> None:
    ann, root = wflw
    path = tmp_path / "landmarks.jsonl"
    pts = convert_landmarks(_pred(2), "wflw98", "ibug68")
    box = [*(pts.min(axis=0) - 3), *(pts.max(axis=0) + 3)]
    _write_jsonl(path, [{"path": "0--Parade/a.jpg", "status": "no_face", "source": "dlib"},
                        {"path": "0--Parade/b.jpg", "status": "ok", "source": "dlib", "face": 0, "n_faces": 2,
                         "landmarks": pts.tolist(), "box": box},
                        {"path": "other/c.jpg", "status": "ok", "face": 0, "landmarks": pts.tolist()}])
    with pytest.raises(FaceDataError, match=r"2 of 3 annotated faces have no finite prediction \(first: "
                                            r"0--Parade/a.jpg \(face 0\), 0--Parade/b.jpg \(face 0\)\)"):
        _score(ann, root, path)
    report, faces = _score(ann, root, path, missing="skip")
    # the detector's one face of image b is the second annotated face there (its box overlaps that one)
    assert report["n"] == 1 and report["n_missing"] == 2 and report["unmatched"] == 1
    assert [(f["image"], f["face"]) for f in faces] == [("0--Parade/b.jpg", 1)]
    assert faces[0]["nme"] == pytest.approx(EXPECTED[2])
    report, faces = _score(ann, root, path, missing="fail", threshold=0.2)
    assert report["n"] == 3 and report["n_failed"] == 2 and report["fr"]["value"] == pytest.approx(2 / 3)
    assert report["nme"]["value"] == pytest.approx(EXPECTED[2]) and [f["nme"] for f in faces][:2] == [None, None]
    nan = tmp_path / "nan.jsonl"
    bad = _pred(0)
    bad[5] = np.nan
    _write_jsonl(nan, [{"image": FACES[k][0], "face": [0, 0, 1][k], "landmarks": (bad if k == 0 else _pred(k)).tolist()}
                       for k in range(3)])
    with pytest.raises(FaceDataError, match=r"1 of 3 annotated faces have no finite prediction \(first: 0--Parade/a"):
        _score(ann, root, nan)
    assert _score(ann, root, nan, missing="fail")[0]["fr"]["value"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("content, message", [
    ('{"image": "a.jpg", "landmarks": [[1, 2], [3, 4]]}\n{"image": "b.jpg", "landmarks": [[1, 2]]}\n',
     r"different point counts: 2 \(.*p.jsonl: line 1\), 1 \(.*p.jsonl: line 2\)"),
    ('{"image": "a.jpg", "landmarks": [[1, 2]]}\nnot json\n', r"p.jsonl: line 2 is not JSON"),
    ('{"landmarks": [[1, 2]]}\n', r"p.jsonl: line 1: needs 'image' \(or 'path'\)"),
    ('{"image": "a.jpg", "landmarks": [[1, 2, 3]]}\n', r"p.jsonl: line 1: landmarks must be N rows of \(x, y\)"),
    ('{"image": "a.jpg", "face": -1, "landmarks": [[1, 2]]}\n', r"line 1: 'face' must be a non-negative integer"),
    ('', r"p.jsonl: no predictions in this file"),
])
def test_malformed_prediction_files_are_named(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(FaceDataError, match=message):
        read_predictions(path)


def test_a_face_index_beyond_the_annotations_or_twice(wflw, tmp_path) -> None:
    ann, root = wflw
    path = tmp_path / "p.jsonl"
    _write_jsonl(path, [{"image": "0--Parade/b.jpg", "face": 2, "landmarks": _pred(1).tolist()}])
    with pytest.raises(FaceDataError, match=r"line 1: face 2 asked for, but 0--Parade/b.jpg has 2 annotated face"):
        _score(ann, root, path)
    _write_jsonl(path, [{"image": "0--Parade/b.jpg", "face": 0, "landmarks": _pred(1).tolist()}] * 2)
    with pytest.raises(FaceDataError, match=r"line 2: a second prediction for face 0 of 0--Parade/b.jpg"):
        _score(ann, root, path)


def test_score_command_line(wflw, tmp_path) -> None:
    ann, root = wflw
    path = _formats(tmp_path, root)["jsonl"]
    out = tmp_path / "out"
    proc = run_main("mfassl_faces", "score", str(path), "--wflw-test", str(ann), "--wflw-images", str(root),
                    "--n-boot", "50", "--threshold", "0.08", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["n"] == 3 and res["threshold"] == 0.08 and res["schema"] == "wflw98"
    assert res["fr"]["value"] == pytest.approx(2 / 3)  # 6/70 and 10/70 exceed 0.08
    rows = [ln.split()[0] for ln in lines[2:-1]]
    assert rows == ["full", *WFLW_ATTRIBUTES]  # the six WFLW subsets on stdout
    assert lines[2].split()[2] == f"{100 * EXPECTED.mean():.2f}"
    assert json.loads((out / "score.json").read_text())["subsets"]["pose"]["n"] == 2
    assert [json.loads(ln)["nme"] for ln in (out / "face_errors.jsonl").read_text().splitlines()] == \
        pytest.approx(EXPECTED.tolist())
    assert (out / "ced.png").read_bytes()[:4] == b"\x89PNG"


def test_score_never_writes_over_the_predictions_it_reads(wflw, tmp_path) -> None:
    """``score OUT/face_errors.jsonl --out OUT`` read the user's predictions and then wrote the face errors over
    them; the output files are checked against the inputs before anything is read."""
    ann, root = wflw
    out = tmp_path / "out"
    out.mkdir()
    preds = out / "face_errors.jsonl"
    preds.write_text(_formats(tmp_path, root)["jsonl"].read_text())
    kept = preds.read_bytes()
    proc = run_main("mfassl_faces", "score", str(preds), "--wflw-test", str(ann), "--wflw-images", str(root),
                    "--n-boot", "10", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert f"--out {out}: face_errors.jsonl ({preds}) is an input of this command" in proc.stderr
    assert preds.read_bytes() == kept and sorted(p.name for p in out.iterdir()) == ["face_errors.jsonl"]


def test_score_options_and_errors(wflw, tmp_path, capsys) -> None:
    ann, root = wflw
    path = _formats(tmp_path, root)["jsonl"]
    for argv, message in [([str(path), "--source", "dlib", "--wflw-test", str(ann)], "either a PREDICTIONS file"),
                          ([str(path)], "either --wflw-test FILE or --data DIR"),
                          ([str(path), "--wflw-test", str(ann), "--split", "300w"], "--split 300w reads --data"),
                          ([str(path), "--wflw-test", str(ann), "--device", "cpu"], "--device goes with --source"),
                          (["--source", "fan", "--wflw-test", str(ann), "--fan-weights", str(tmp_path), "--device",
                            "cpu"], "2DFAN4-11f355bf06.pth.tar"),
                          (["--source", "fan", "--wflw-test", str(ann), "--device", "tpu:x"], "--device"),
                          ([str(path), "--wflw-test", str(ann), "--missing", "drop"], "--missing")]:
        with pytest.raises(SystemExit) as exit_:
            cli_score.main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    partial = tmp_path / "partial.jsonl"
    partial.write_text(path.read_text().splitlines()[0] + "\n")
    assert cli_score.main([str(partial), "--wflw-test", str(ann), "--wflw-images", str(root), "--out",
                           str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 2 of 3 annotated faces have no finite prediction") and "--missing skip" in err
    assert cli_score.main([str(tmp_path / "nope.jsonl"), "--wflw-test", str(ann), "--out", str(tmp_path / "o")]) == 1
    assert "nope.jsonl: prediction file does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- sources in boxes
def test_score_dlib_inside_the_300w_boxes(tmp_path, capsys) -> None:
    root = tmp_path / "ibug"
    write_300w_tree(root, max_side=240)
    out = tmp_path / "out"
    assert cli_score.main(["--source", "dlib", "--data", str(root), "--split", "300w", "--n-boot", "20", "--out",
                           str(out), "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 5 and res["n_missing"] == 0 and set(res["subsets"]) == {"full", "common", "challenging"}
    assert res["nme"]["value"] < 0.1
    rows = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows][:2] == ["helen/testset/296814969_3.jpg", "helen/testset/2968560214_1.jpg"]
    assert all(r["schema"] == "ibug68" and r["box_from"] in ("detector", "given") for r in rows)


def test_fan_from_a_weights_folder_inside_ground_truth_boxes(tmp_path, capsys) -> None:
    """The real 2DFAN-4 architecture (random weights) from a folder holding only the landmark weights: the
    score command runs it inside the annotated boxes on the CPU; a corrupt file is named."""
    from face_alignment.models import FAN

    from mfassl_faces.sources import FAN_WEIGHT_FILES

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), weights / FAN_WEIGHT_FILES["landmarks"])
    root = tmp_path / "ibug"
    write_300w_tree(root)
    out = tmp_path / "out"
    assert cli_score.main(["--source", "fan", "--fan-weights", str(weights), "--device", "cpu", "--batch-size", "4",
                           "--data", str(root / "ibug"), "--n-boot", "10", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 2 and res["n_missing"] == 0 and np.isfinite(res["nme"]["value"])
    rows = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["image_003_1.jpg", "image_004_1.jpg"]
    assert all(r["box_from"] == "given" and len(r["landmarks"]) == 68 for r in rows)
    (weights / FAN_WEIGHT_FILES["landmarks"]).write_bytes(b"not weights")
    assert cli_score.main(["--source", "fan", "--fan-weights", str(weights), "--device", "cpu", "--data",
                           str(root / "ibug"), "--out", str(out), "--no-progress"]) == 1
    assert "2DFAN4-11f355bf06.pth.tar: not the 2DFAN-4 weights" in capsys.readouterr().err
