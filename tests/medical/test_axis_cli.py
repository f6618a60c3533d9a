"""The ``axis`` command line: JSON fields and values on a NIfTI the test writes, overlays, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel
import numpy as np
import pytest

from mfassl.cli import check_png_target, overlay_paths
from mfassl.geometry import SymmetryPlane3D
from mfassl_medical import cli_axis
from mfassl_medical.cli_axis import main


def _symmetric_volume(affine: np.ndarray, plane: SymmetryPlane3D, shape=(36, 40, 30)) -> np.ndarray:
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(0)
    out = np.zeros(len(world))
    for _ in range(10):
        c = plane.closest_point(centre) + rng.uniform(-18, 18, 3)
        s = rng.uniform(4.0, 8.0)
        for cc in (c, plane.reflect_points(c)):
            out += np.exp(-np.sum((world - cc) ** 2, 1) / (2 * s * s))
    return out.reshape(shape).astype(np.float32)


def test_cli_json_fields_values_png_and_errors(tmp_path, capsys) -> None:
    affine = np.array([[-2.0, 0, 0, 40.0], [0, 2.0, 0, -40.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    n = np.array([1.0, 0.12, -0.05])
    plane = SymmetryPlane3D.through_point(n, (3.0, 0.0, 0.0))
    good = tmp_path / "vol.nii.gz"
    nibabel.save(nibabel.Nifti1Image(_symmetric_volume(affine, plane), affine), str(good))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    png = tmp_path / "png"

    rc = main([str(good), str(bad), str(tmp_path / "missing.nii"), "--json", "--png", str(png)])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = [json.loads(s) for s in out.strip().splitlines()]
    assert len(lines) == 1
    rec = lines[0]
    assert set(rec) == {"path", "dims", "normal", "offset", "confidence", "fallback", "seconds", "load_seconds", "png"}
    assert rec["png"] == str(png / "vol_axis.png")
    assert rec["path"] == str(good) and rec["dims"] == 3 and rec["fallback"] is False
    est = SymmetryPlane3D(normal=rec["normal"], offset=rec["offset"])
    assert est.angle_to(plane) < 0.3
    assert est.distance_at(plane, plane.closest_point(affine[:3, 3] + [-36.0, 40.0, 37.0])) < 0.3
    assert 0.8 < rec["confidence"] <= 1.0
    assert rec["seconds"] > 0 and rec["load_seconds"] > 0
    assert "broken.nii.gz" in err and "missing.nii" in err and "Traceback" not in err
    assert os.path.getsize(png / "vol_axis.png") > 1000


def test_cli_2d_png(tmp_path, capsys) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    h, w = 60, 80
    img = rng.uniform(0, 50, (h, w // 2)).astype(np.float32)
    img = np.concatenate([img, img[:, ::-1]], axis=1)  # mirror about column 39.5
    path = tmp_path / "x.png"
    Image.fromarray(img.astype(np.uint8)).save(path)
    out_png = tmp_path / "o.png"
    assert main([str(path), "--json", "--png", str(out_png)]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["dims"] == 2 and len(rec["normal"]) == 2
    # PIL via MONAI is (W, H) with an identity affine: the line is x = 39.5 in world = index dim 0
    assert abs(abs(rec["normal"][0]) - 1.0) < 1e-3
    assert abs(abs(rec["offset"]) - 39.5) < 0.2
    assert out_png.exists()


# -- one bad file costs one file; options mean what they say -------------------------------------------------
def _mirrored_png(path, seed: int, h: int = 40, w: int = 48) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    half = rng.uniform(0, 200, (h, w // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1).astype(np.uint8)).save(path)


def _nifti(path, seed: int, offset: float) -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-24.0, -24.0, -20.0)
    plane = SymmetryPlane3D.through_point((1.0, 0.0, 0.0), (offset, 0.0, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(_symmetric_volume(affine, plane, shape=(24, 24, 20)), affine), str(path))


def test_same_file_name_in_two_folders_gets_two_overlays(tmp_path, capsys) -> None:
    a, b = tmp_path / "siteA" / "scan.nii.gz", tmp_path / "siteB" / "scan.nii.gz"
    _nifti(a, 1, offset=-3.0)
    _nifti(b, 2, offset=4.0)
    out = tmp_path / "png"
    assert main([str(a), str(b), "--json", "--png", str(out)]) == 0
    recs = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert [r["path"] for r in recs] == [str(a), str(b)]
    assert [r["png"] for r in recs] == [str(out / "siteA_scan_axis.png"), str(out / "siteB_scan_axis.png")]
    assert abs(recs[0]["offset"] - recs[1]["offset"]) > 5.0  # two different answers, two different pictures
    blobs = [(out / n).read_bytes() for n in ("siteA_scan_axis.png", "siteB_scan_axis.png")]
    assert all(len(x) > 1000 for x in blobs) and blobs[0] != blobs[1]


def test_overlay_paths_are_unique() -> None:
    """The shared ``--png`` naming of both packages' ``axis`` commands (:func:`mfassl.cli.overlay_paths`)."""
    assert cli_axis.overlay_paths is overlay_paths
    paths = ["/d/siteA/scan.nii.gz", "/d/siteB/scan.nii.gz", "/d/siteA/scan.nii.gz", "/d/siteA_scan.png"]
    got = overlay_paths("/o", paths)
    assert got == ["/o/siteA_scan_axis.png", "/o/siteB_scan_axis.png", "/o/siteA_scan-2_axis.png",
                   "/o/siteA_scan-3_axis.png"]
    assert overlay_paths("/o", ["/x/a/vol.nii", "/x/a/other.dcm"]) == ["/o/vol_axis.png", "/o/other_axis.png"]
    assert overlay_paths("/o/one.png", ["/x/a/vol.nii"]) == ["/o/one.png"]
    # path objects and face image formats; a folder named like a dotted DICOM series keeps its dots
    assert overlay_paths(Path("/o"), [Path("/f/takeo.ppm"), Path("/f/1.2.840")]) == ["/o/takeo_axis.png",
                                                                                     "/o/1.2.840_axis.png"]


def test_png_target_is_checked_before_reading(tmp_path) -> None:
    existing_png, plain = tmp_path / "taken.png", tmp_path / "plainfile"
    existing_png.write_bytes(b"x")
    plain.write_text("x")
    (tmp_path / "dir.png").mkdir()
    for ok in [(None, 5), (tmp_path / "new.png", 1), (existing_png, 1), (tmp_path / "folder", 3),
               (tmp_path / "dir.png", 3)]:
        check_png_target(*ok)
    with pytest.raises(ValueError, match=r"names one \.png file, but 2 images were given: give a folder"):
        check_png_target(existing_png, 2, what="images")
    with pytest.raises(ValueError, match=r"^--png .*new\.png names one .png file, but 3 inputs"):
        check_png_target(str(tmp_path / "new.png"), 3)
    with pytest.raises(ValueError, match="not a .png: give a folder or a .png file"):
        check_png_target(plain, 1)
    with pytest.raises(ValueError, match=r"not a .png: give a folder\.$"):
        check_png_target(plain, 2)


def test_package_command_line_lists_its_commands(capsys) -> None:
    from mfassl_medical.__main__ import COMMANDS
    from mfassl_medical.__main__ import main as package_main

    assert package_main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("usage: python -m mfassl_medical COMMAND [ARGS]")
    assert [ln.split()[0] for ln in listing.split("commands:\n")[1].splitlines()] == list(COMMANDS) == \
        ["axis", "axes", "demo"]
    assert package_main([]) == 2 and package_main(["segment"]) == 2


@pytest.fixture()
def no_loading(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_axis, "load_image", lambda path: calls.append(path) or (_ for _ in ()).throw(AssertionError))
    return calls


@pytest.mark.parametrize("argv, words", [
    (["--method", "nope"], ["--method", "invalid choice: 'nope'", "midline"]),
    (["--min-confidence", "nan"], ["--min-confidence", "'nan' is NaN"]),
    (["--min-confidence", "5"], ["--min-confidence", "'5' is outside the allowed range [0.0, 1.0]"]),
    (["--min-confidence", "-0.1"], ["--min-confidence", "outside"]),
    (["--min-confidence", "inf"], ["--min-confidence", "infinite"]),
    (["--min-confidence", "high"], ["--min-confidence", "not a number"]),
])
def test_bad_options_are_refused_before_any_file_is_read(tmp_path, capsys, no_loading, argv, words) -> None:
    img = tmp_path / "x.png"
    _mirrored_png(img, 0)
    with pytest.raises(SystemExit) as err:
        main([str(img), "--json", *argv])
    assert err.value.code == 2 and no_loading == []
    msg = capsys.readouterr().err
    assert all(w in msg for w in words), msg


def test_method_is_case_insensitive_and_min_confidence_one_forces_the_fallback(tmp_path, capsys) -> None:
    img = tmp_path / "x.png"
    _mirrored_png(img, 0)
    assert main([str(img), "--json", "--method", "MIDLINE", "--min-confidence", "1"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["fallback"] is True and rec["png"] is None


def test_png_file_for_several_inputs_is_refused(tmp_path, capsys, no_loading) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _mirrored_png(a, 0)
    _mirrored_png(b, 1)
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"x")
    with pytest.raises(SystemExit) as err:
        main([str(a), str(b), "--png", str(existing)])
    assert err.value.code == 2 and no_loading == [] and "give a folder" in capsys.readouterr().err


def test_every_input_gets_an_answer_or_one_error_line(tmp_path, capsys, monkeypatch) -> None:
    good1, nan_img, good2 = tmp_path / "a" / "x.png", tmp_path / "nan.nii.gz", tmp_path / "b" / "x.png"
    _mirrored_png(good1, 0)
    _mirrored_png(good2, 1)
    vol = np.ones((8, 8, 8), np.float32)
    vol[2, 3, 4] = np.nan
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), str(nan_img))
    real = cli_axis.write_overlay

    def overlay(path, *a, **k):
        if os.path.basename(path) == "a_x_axis.png":  # the first input's overlay cannot be written
            raise OSError("disk full")
        return real(path, *a, **k)

    monkeypatch.setattr(cli_axis, "write_overlay", overlay)
    out = tmp_path / "png"
    rc = main([str(good1), str(nan_img), str(tmp_path / "gone.png"), str(good2), "--json", "--png", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    recs = [json.loads(s) for s in captured.out.strip().splitlines()]
    assert [r["path"] for r in recs] == [str(good1), str(good2)]
    assert recs[0]["png"] is None and recs[1]["png"] == str(out / "b_x_axis.png") and os.path.isfile(recs[1]["png"])
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in captured.err
    assert errors[0].startswith(f"error: {good1}: cannot write the overlay") and "disk full" in errors[0]
    assert errors[1].startswith(f"error: {nan_img}: ") and errors[2].startswith(f"error: {tmp_path / 'gone.png'}: ")


def test_json_output_is_strict(tmp_path, capsys, monkeypatch) -> None:
    import types

    import mfassl_medical.axis as axis_pkg

    img = tmp_path / "x.png"
    _mirrored_png(img, 0)
    fake = types.SimpleNamespace(dims=2, normal=np.array([1.0, np.nan]), offset=float("inf"),
                                 confidence=float("nan"), fallback=False)
    monkeypatch.setattr(axis_pkg, "estimate_axis", lambda *a, **k: fake)
    assert main([str(img), "--json"]) == 0
    line = capsys.readouterr().out.strip()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    rec = json.loads(line, parse_constant=refuse)
    assert rec["normal"] == [1.0, None] and rec["offset"] is None and rec["confidence"] is None
