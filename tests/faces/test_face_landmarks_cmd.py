"""``python -m mfassl_faces landmarks``: a whole folder, in parallel, resumable, per-file errors counted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfassl_faces.demo import load_source_faces
from mfassl_faces.io import write_image, write_pts
from mfassl_faces.landmark_cache import compute_landmarks, list_images, read_landmarks_file
from mfassl_faces.readers import landmark_records

from face_helpers import place, template


def _annotated(folder: Path, name: str, angle: float) -> np.ndarray:
    pts = place(template("ibug68"), angle, 20.0, (40.0, 45.0))
    write_image(folder / f"{name}.png", np.full((90, 80, 3), 100, np.uint8))
    write_pts(folder / f"{name}.pts", pts)
    return pts


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    truth = {"a.png": _annotated(root, "a", 0.0), "sub/b.png": _annotated(root / "sub", "b", 15.0)}
    (root / "broken.jpg").write_bytes(b"\xff\xd8 cut short")
    write_image(root / "nolm.png", np.zeros((40, 40, 3), np.uint8))  # no .pts: the 'file' source fails on it
    return root, truth


def test_resumable_with_errors_counted(dataset, tmp_path) -> None:
    root, truth = dataset
    out = tmp_path / "lm.jsonl"
    assert [p.as_posix() for p in list_images(root)] == ["a.png", "broken.jpg", "nolm.png", "sub/b.png"]
    s1 = compute_landmarks(root, out, "file", workers=2)
    assert (s1["images"], s1["skipped"], s1["ok"], s1["errors"]) == (4, 0, 2, 2)
    assert sorted(p for p, _ in s1["failed"]) == ["broken.jpg", "nolm.png"]
    recs = read_landmarks_file(out)
    for rel, pts in truth.items():
        assert recs[rel]["status"] == "ok" and recs[rel]["schema"] == "ibug68"
        np.testing.assert_allclose(recs[rel]["landmarks"], pts, atol=1e-3)
    angle = np.degrees(np.arctan2(recs["sub/b.png"]["normal"][1], recs["sub/b.png"]["normal"][0]))
    assert angle == pytest.approx(15.0, abs=1e-3)
    assert "cannot be decoded" in recs["broken.jpg"]["error"]
    # a rerun does only what is missing: the two errors are retried, the answered images are not
    write_pts(root / "nolm.pts", place(template("ibug68"), 0.0, 8.0, (20.0, 20.0)))
    s2 = compute_landmarks(root, out, "file", workers=1)
    assert (s2["skipped"], s2["done"], s2["ok"], s2["errors"]) == (2, 2, 1, 1)
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(ln) for ln in lines)
    assert read_landmarks_file(out)["nolm.png"]["status"] == "ok"  # the later line wins
    s3 = compute_landmarks(root, out, "file")
    assert (s3["skipped"], s3["done"]) == (3, 1)  # only the still-broken file
    records = {r.image.relative_to(root).as_posix(): r for r in landmark_records(out, root)}
    assert set(records) == {"a.png", "sub/b.png", "nolm.png"} and records["a.png"].origin == "landmarks_file"


def test_interrupted_last_line_is_repaired(dataset, tmp_path) -> None:
    root, _ = dataset
    out = tmp_path / "lm.jsonl"
    compute_landmarks(root, out, "file", files=["a.png"])
    with open(out, "a") as fh:
        fh.write('{"path": "sub/b.png", "status": "ok", "landm')  # killed mid-write
    s = compute_landmarks(root, out, "file", files=["a.png", "sub/b.png"])
    assert (s["skipped"], s["ok"]) == (1, 1)
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["path"] for r in recs] == ["a.png", "sub/b.png"]


def test_dlib_in_two_workers_and_no_face(tmp_path) -> None:
    pytest.importorskip("dlib")
    takeo = {f.name: f for f in load_source_faces(include_astronaut=False)}["takeo"]
    root = tmp_path / "d"
    write_image(root / "takeo.png", takeo.image)
    write_image(root / "blank.png", np.full((60, 60, 3), 128, np.uint8))
    s = compute_landmarks(root, tmp_path / "lm.jsonl", "dlib", workers=2)
    assert (s["ok"], s["no_face"], s["errors"]) == (1, 1, 0)
    recs = read_landmarks_file(tmp_path / "lm.jsonl")
    assert recs["blank.png"]["status"] == "no_face"
    pts = np.asarray(recs["takeo.png"]["landmarks"])
    assert np.mean(np.linalg.norm(pts - takeo.landmarks, axis=1)) / np.linalg.norm(takeo.landmarks[36] - takeo.landmarks[45]) < 0.06
    assert recs["takeo.png"]["n_faces"] == 1 and recs["takeo.png"]["source"] == "dlib"


def test_command_line(dataset, tmp_path) -> None:
    root, _ = dataset
    out = tmp_path / "lm.jsonl"
    cmd = [sys.executable, "-m", "mfassl_faces", "landmarks", str(root), "--source", "file", "--workers", "2",
           "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["errors"]) == (2, 2)
    assert "error: broken.jpg:" in proc.stderr and "error: nolm.png:" in proc.stderr


@pytest.mark.parametrize("bad", [["--workers", "two"], ["--workers", "-1"], ["--source", "dlbi"]])
def test_bad_options_refused(bad, dataset, tmp_path, capsys) -> None:
    from mfassl_faces import cli_landmarks

    root, _ = dataset
    with pytest.raises(SystemExit) as ex:
        cli_landmarks.main([str(root), "--out", str(tmp_path / "lm.jsonl")] + bad)
    assert ex.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "lm.jsonl").exists()


def test_missing_folder(tmp_path, capsys) -> None:
    from mfassl_faces import cli_landmarks

    assert cli_landmarks.main([str(tmp_path / "nope"), "--source", "file", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "nope: dataset folder does not exist" in capsys.readouterr().err


def test_empty_folder_fails_clearly(tmp_path) -> None:
    """A folder without images is an error (exit 2, naming it), not a silent exit 0 with no output."""
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "x.jsonl"
    proc = subprocess.run([sys.executable, "-m", "mfassl_faces", "landmarks", str(empty), "--source", "file",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"error: {empty}: no image files (.png, .jpg" in proc.stderr and not out.exists()
