"""The ``axis`` command line: JSON fields and values on a NIfTI the test writes, overlays, bad files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mfassl.geometry import SymmetryPlane3D
from mfassl_medical.cli_axis import main

nibabel = pytest.importorskip("nibabel")


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
    assert set(rec) == {"path", "dims", "normal", "offset", "confidence", "fallback", "seconds", "load_seconds"}
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
