"""The face ``axis`` command line: one bad file costs one file, switches mean what they say, strict JSON."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfassl.cli import json_line
from mfassl_faces import cli_axis
from mfassl_faces.demo import load_source_faces
from mfassl_faces.io import write_image, write_pts
from mfassl_faces.sources import Face, choose_faces

from cli_runner import run_main
from face_helpers import place, template


def _strict(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def takeo():
    return {f.name: f for f in load_source_faces(include_astronaut=False)}["takeo"]


def _face_file(folder: Path, name: str, image: np.ndarray, angle: float = 0.0) -> Path:
    path = folder / f"{name}.png"
    write_image(path, image)
    write_pts(path.with_suffix(".pts"), place(template("ibug68"), angle, 30.0, (60.0, 70.0)))
    return path


def test_thin_image_is_one_error_and_the_rest_go_on(tmp_path, capsys, takeo) -> None:
    pytest.importorskip("dlib")
    thin = tmp_path / "thin.png"
    write_image(thin, np.full((1, 4000, 3), 120, np.uint8))
    good = tmp_path / "takeo.png"
    write_image(good, takeo.image)
    rc = cli_axis.main([str(thin), str(good), "--landmarks", "dlib", "--json"])
    cap = capsys.readouterr()
    assert rc == 1
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "thin.png" in errors[0] and "4000 x 1" in errors[0] and "too small" in errors[0]
    assert "Traceback" not in cap.err and "cv2.error" not in cap.err
    recs = [_strict(ln) for ln in cap.out.splitlines()]
    assert len(recs) == 1 and recs[0]["path"].endswith("takeo.png") and abs(recs[0]["normal"][0]) > 0.99


def test_unexpected_failure_names_the_file_and_continues(tmp_path, capsys, monkeypatch) -> None:
    a = _face_file(tmp_path, "a", np.zeros((120, 120, 3), np.uint8))
    b = _face_file(tmp_path, "b", np.zeros((120, 120, 3), np.uint8))
    real = cli_axis._source("file", None)

    def flaky(image, path=None):
        if Path(path).name == "a.png":
            raise RuntimeError("decoder\nexploded")
        return real(image, path)

    monkeypatch.setattr(cli_axis, "_source", lambda spec, fan: flaky)
    rc = cli_axis.main([str(a), str(b), "--landmarks", "file"])
    cap = capsys.readouterr()
    assert rc == 1
    assert f"error: {a}: RuntimeError: decoder exploded" in cap.err.splitlines()
    assert [_strict(ln)["path"] for ln in cap.out.splitlines()] == [str(b)]


def test_png_naming_an_existing_file_with_several_images_is_refused_up_front(tmp_path, capsys) -> None:
    a = _face_file(tmp_path, "a", np.zeros((120, 120, 3), np.uint8))
    b = _face_file(tmp_path, "b", np.zeros((120, 120, 3), np.uint8))
    existing = tmp_path / "out.png"
    existing.write_bytes(b"not touched")
    with pytest.raises(SystemExit) as ex:
        cli_axis.main([str(a), str(b), "--landmarks", "file", "--png", str(existing)])
    cap = capsys.readouterr()
    assert ex.value.code == 2 and "--png" in cap.err and "2 images" in cap.err and cap.out == ""
    assert existing.read_bytes() == b"not touched"
    plain = tmp_path / "plainfile"
    plain.write_text("x")
    with pytest.raises(SystemExit):
        cli_axis.main([str(a), "--landmarks", "file", "--png", str(plain)])
    # one image onto an existing .png file no axis command wrote: refused, replaced only with --overwrite
    with pytest.raises(SystemExit) as ex:
        cli_axis.main([str(a), "--landmarks", "file", "--png", str(existing)])
    assert ex.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"not touched"
    assert cli_axis.main([str(a), "--landmarks", "file", "--png", str(existing), "--overwrite"]) == 0
    assert existing.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_file_name_in_two_folders_gives_two_overlays(tmp_path, capsys) -> None:
    img_a = np.zeros((120, 120, 3), np.uint8)
    img_b = np.full((120, 120, 3), 200, np.uint8)
    (tmp_path / "siteA").mkdir()
    (tmp_path / "siteB").mkdir()
    a = _face_file(tmp_path / "siteA", "scan", img_a, angle=0.0)
    b = _face_file(tmp_path / "siteB", "scan", img_b, angle=20.0)
    out = tmp_path / "overlays"
    assert cli_axis.main([str(a), str(b), "--landmarks", "file", "--png", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["siteA_scan_axis.png", "siteB_scan_axis.png"]  # names of mfassl.cli.overlay_paths
    import cv2

    dark = cv2.imread(str(out / "siteA_scan_axis.png"))
    light = cv2.imread(str(out / "siteB_scan_axis.png"))
    assert np.median(dark) < 50 and np.median(light) > 150  # each overlay is drawn on its own image


def test_json_is_strict_with_null_for_nan(tmp_path, capsys) -> None:
    img = _face_file(tmp_path, "nan", np.zeros((120, 120, 3), np.uint8))
    pts = place(template("ibug68"), 0.0, 30.0, (60.0, 70.0))
    pts[5] = np.nan
    (tmp_path / "nan.json").write_text(json.dumps(np.where(np.isnan(pts), None, pts).tolist()))
    assert cli_axis.main([str(img), "--landmarks", str(tmp_path / "nan.json"), "--json"]) == 0
    out = capsys.readouterr().out.strip()
    assert "NaN" not in out and "Infinity" not in out
    rec = _strict(out)
    assert rec["landmarks"][5] == [None, None] and rec["missing_points"] == [5] and rec["fallback"] is False
    assert json_line({"a": float("inf"), "b": [np.float32(np.nan), 1.5], "c": np.bool_(True)}) == \
        '{"a": null, "b": [null, 1.5], "c": true}'


def _run_axis(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl_faces", "axis", *args, cwd=Path(__file__).resolve().parents[2])


def test_one_missing_point_drops_its_pairs_on_the_command_line(tmp_path) -> None:
    """One NaN point among 68 (a detector's JSON output with ``null``): the axis uses the other pairs (not the
    image centre), the record lists the point, and the warning names the image and the landmark file."""
    img = tmp_path / "tilted.png"
    write_image(img, np.zeros((160, 140, 3), np.uint8))
    pts = place(template("ibug68"), 14.0, 30.0, (70.0, 80.0))
    pts[39] = np.nan  # an inner eye corner: pair (39, 42) is left out
    lm = tmp_path / "tilted.json"
    lm.write_text(json.dumps(np.where(np.isnan(pts), None, pts).tolist()))
    run = _run_axis(str(img), "--landmarks", str(lm), "--json")
    assert run.returncode == 0, run.stderr
    rec = _strict(run.stdout)
    assert rec["fallback"] is False and rec["missing_points"] == [39] and rec["confidence"] > 0.99
    assert rec["normal"] == pytest.approx([np.cos(np.radians(14.0)), np.sin(np.radians(14.0))], abs=1e-6)
    assert rec["reason"] is None and rec["score"] is None and rec["detection_confidence"] == 1.0
    warning = [ln for ln in run.stderr.splitlines() if "missing" in ln]
    assert len(warning) == 1 and str(img) in warning[0] and str(lm) in warning[0] and "points [39]" in warning[0]
    assert "uses 28 of 29 mirror pairs" in warning[0]


def test_nan_in_a_pts_annotation_is_refused_naming_file_and_line(tmp_path) -> None:
    img = _face_file(tmp_path, "ann", np.zeros((120, 120, 3), np.uint8))
    lines = img.with_suffix(".pts").read_text().splitlines()
    lines[3 + 7] = "nan 12.5"  # point 7 sits on line 11 (version, n_points, '{' come first)
    img.with_suffix(".pts").write_text("\n".join(lines) + "\n")
    run = _run_axis(str(img), "--landmarks", "file")
    assert run.returncode == 1 and run.stdout == ""
    assert f"error: {img.with_suffix('.pts')}: line 11: non-finite coordinate 'nan 12.5'" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("value", ["nan", "5", "-0.1", "inf", "high"])
def test_min_confidence_is_checked(value, tmp_path, capsys) -> None:
    img = _face_file(tmp_path, "a", np.zeros((120, 120, 3), np.uint8))
    with pytest.raises(SystemExit) as ex:
        cli_axis.main([str(img), "--landmarks", "file", "--min-confidence", value])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "--min-confidence" in err and repr(value) in err


def test_unknown_source_is_refused_before_any_file_is_read(tmp_path, capsys, monkeypatch) -> None:
    def no_reading(*a, **k):
        raise AssertionError("an image was read")

    monkeypatch.setattr("mfassl_faces.io.read_image", no_reading)
    with pytest.raises(SystemExit) as ex:
        cli_axis.main([str(tmp_path / "missing.png"), "--landmarks", "dlbi"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "unknown landmark source 'dlbi'" in err and "missing.png" not in err


def test_command_line_through_python_m(tmp_path) -> None:
    """What a user types: the values arrive as strings."""
    img = _face_file(tmp_path, "a", np.zeros((120, 120, 3), np.uint8), angle=10.0)
    ok = subprocess.run([sys.executable, "-m", "mfassl_faces", "axis", str(img), "--landmarks", "file",
                         "--min-confidence", "0.5", "--face-index", "0"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    rec = _strict(ok.stdout)
    np.testing.assert_allclose(rec["normal"], [np.cos(np.radians(10)), np.sin(np.radians(10))], atol=1e-5)
    bad = subprocess.run([sys.executable, "-m", "mfassl_faces", "axis", str(img), "--face-index", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--face-index" in bad.stderr


def _two_faces() -> list[Face]:
    big = place(template("ibug68"), 0.0, 40.0, (100.0, 100.0))
    small = place(template("ibug68"), 15.0, 20.0, (250.0, 60.0))
    return [Face(big, "ibug68", box=(60, 60, 140, 150), size=90.0), Face(small, "ibug68", box=(230, 40, 270, 85), size=45.0)]


def test_choose_faces() -> None:
    faces = _two_faces()
    assert [(k, how) for k, _, how in choose_faces(faces)] == [(0, "best")]
    assert [(k, how) for k, _, how in choose_faces(faces, all_faces=True)] == [(0, "all"), (1, "all")]
    assert choose_faces(faces, index=1)[0][:1] == (1,)
    assert choose_faces(faces, box=(220, 30, 280, 90))[0][0] == 1
    with pytest.raises(LookupError, match="face index 2 asked for, but 2 face"):
        choose_faces(faces, index=2)
    with pytest.raises(LookupError, match="no face overlaps"):
        choose_faces(faces, box=(500, 500, 510, 510))
    assert choose_faces([], index=3) == []


def test_cli_face_choice_is_reported(tmp_path, capsys, monkeypatch) -> None:
    img = tmp_path / "group.png"
    write_image(img, np.zeros((200, 300, 3), np.uint8))
    faces = _two_faces()
    monkeypatch.setattr(cli_axis, "_source", lambda spec, fan: (lambda image, path=None: faces))
    assert cli_axis.main([str(img), "--landmarks", "dlib", "--box", "220,30,280,90"]) == 0
    rec = _strict(capsys.readouterr().out)
    assert (rec["face"], rec["n_faces"], rec["chosen_by"]) == (1, 2, "box")
    assert rec["normal"][1] == pytest.approx(np.sin(np.radians(15.0)), abs=1e-6)
    assert cli_axis.main([str(img), "--landmarks", "dlib", "--face-index", "5"]) == 1
    cap = capsys.readouterr()
    assert f"error: {img}: face index 5 asked for, but 2 face(s) found." in cap.err and cap.out == ""
    # the summary tells a face-choice mismatch from a file that could not be read
    assert ("summary: 0 processed, 0 without a face (skipped), 1 without the requested face (--face-index / --box), "
            "0 failed (named above).") in cap.err and "unreadable" not in cap.err
    with pytest.raises(SystemExit):
        cli_axis.main([str(img), "--all-faces", "--face-index", "1"])


def test_a_folder_given_as_image_is_named_a_folder(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    assert cli_axis.main([str(folder), "--landmarks", "file"]) == 1
    err = capsys.readouterr().err
    assert f"error: {folder}: is a directory, not an image file" in err and "does not exist" not in err
