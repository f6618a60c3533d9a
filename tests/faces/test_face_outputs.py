"""What the face commands write never replaces what the user owns, through ``python -m mfassl_faces``: ``axis
--png`` never over an input, ``landmarks --out`` resumes and repairs only a landmarks file, ``demo --out`` writes
only into a demo folder; a foreign file is replaced only with ``--overwrite``."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mfassl.cli import overlay_recogniser
from mfassl_faces.io import write_image, write_pts

from cli_runner import run_main
from face_helpers import place, template


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl_faces", *args)


def _face(path: Path, angle: float = 0.0) -> Path:
    write_image(path, np.full((90, 80, 3), 100, np.uint8))
    write_pts(path.with_suffix(".pts"), place(template("ibug68"), angle, 20.0, (40.0, 45.0)))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("two", [False, True], ids=["png-is-the-input", "first-overlay-is-the-second-input"])
def test_axis_never_writes_an_overlay_over_an_input(tmp_path, two):
    a = _face(tmp_path / "a.png")
    b = _face(tmp_path / "a_axis.png", 10.0)
    args = [str(a), str(b), "--png", str(tmp_path)] if two else [str(a), "--png", str(a)]
    before = {p: _digest(p) for p in (a, b)}
    proc = _run("axis", *args, "--landmarks", "file", "--overwrite")
    assert proc.returncode == 2, proc.stderr
    assert "is an input of this command" in proc.stderr and proc.stdout == ""
    assert {p: _digest(p) for p in (a, b)} == before


def test_axis_replaces_a_foreign_png_only_with_overwrite(tmp_path):
    f = _face(tmp_path / "f.png")
    photo = tmp_path / "photo.png"
    write_image(photo, np.full((20, 20, 3), 7, np.uint8))
    kept = _digest(photo)
    proc = _run("axis", str(f), "--landmarks", "file", "--png", str(photo))
    assert proc.returncode == 2 and "already exists and is not an overlay" in proc.stderr and _digest(photo) == kept
    assert _run("axis", str(f), "--landmarks", "file", "--png", str(photo), "--overwrite").returncode == 0
    assert overlay_recogniser(photo) is None
    assert _run("axis", str(f), "--landmarks", "file", "--png", str(photo)).returncode == 0  # its own overlay


@pytest.fixture()
def faces(tmp_path):
    root = tmp_path / "data"
    _face(root / "a.png")
    _face(root / "b.png", 8.0)
    return root


@pytest.mark.parametrize("kind", ["json-document", "jpeg", "notes-without-final-newline"])
def test_landmarks_leaves_a_foreign_file_as_it_is_unless_overwrite(tmp_path, faces, kind):
    out = tmp_path / {"json-document": "results.json", "jpeg": "photo.jpg",
                      "notes-without-final-newline": "notes.txt"}[kind]
    if kind == "jpeg":
        write_image(out, np.full((16, 16, 3), 50, np.uint8))
    elif kind == "json-document":
        out.write_text(json.dumps({"experiment": "mine", "scores": [0.1, 0.2]}, indent=2))
    else:
        out.write_text("first line\nsecond line, no newline")
    kept = _digest(out)
    args = ["landmarks", str(faces), "--source", "file", "--no-progress", "--out", str(out)]
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "already exists and is not a landmarks file" in proc.stderr and "--overwrite" in proc.stderr
    assert _digest(out) == kept  # the old "repair" cut it before looking at it
    proc = _run(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["status"] for x in out.read_text().splitlines()] == ["ok", "ok"]


def test_landmarks_never_writes_over_an_input(tmp_path, faces):
    for target in (faces / "a.png", faces / "b.pts"):  # an image, an annotation the file source reads
        kept = _digest(target)
        proc = _run("landmarks", str(faces), "--source", "file", "--no-progress", "--out", str(target), "--overwrite")
        assert proc.returncode == 2 and "is an input of this command" in proc.stderr, proc.stderr
        assert _digest(target) == kept


def test_demo_writes_only_into_a_demo_folder_unless_overwrite(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    proc = _run("demo", "--out", str(folder), "--n", "1")
    assert proc.returncode == 1 and "no manifest.json of the faces demo" in proc.stderr
    assert "--overwrite" in proc.stderr and [p.name for p in folder.iterdir()] == ["README.md"]
    assert (folder / "README.md").read_text() == "my notes"
    (folder / "README.md").unlink()
    (folder / "mine.txt").write_text("keep me")
    proc = _run("demo", "--out", str(folder), "--n", "1", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (folder / "manifest.json").is_file() and (folder / "mine.txt").read_text() == "keep me"
    assert _run("demo", "--out", str(folder), "--n", "1").returncode == 0  # its own folder: reused


def test_pretrain_refuses_a_foreign_landmarks_file_before_detecting(tmp_path, faces):
    write_image(faces / "new.png", np.full((60, 60, 3), 90, np.uint8))  # no .pts: the detector's work
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"experiment": "mine"}, indent=2))
    kept = _digest(notes)
    proc = _run("pretrain", "--images", str(faces), "--landmarks-file", str(notes), "--landmark-source", "dlib",
                "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert f"error: --landmarks-file {notes} already exists and is not a landmarks file" in proc.stderr
    assert "--overwrite" in proc.stderr and _digest(notes) == kept and not (tmp_path / "run").exists()
