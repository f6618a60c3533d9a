"""Demo data: built offline, cached by manifest, deterministic by seed, readable by the real readers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mfassl_medical.data import CHEXPERT_LABELS, find_brats_cases, read_chexpert, split_by_patient
from mfassl_medical.demo_data import DEMO_VERSION, build_demo_data, default_demo_root

N_BRATS, N_CXR = 3, 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_data(tmp_path_factory.mktemp("demo") / "d", n_brats=N_BRATS, n_chexpert=N_CXR, seed=0)


def test_layout_readme_and_manifest(demo):
    text = demo.readme.read_text()
    assert "synthetic" in text.lower() and "Side" in text and "Lung Opacity" in text
    man = json.loads(demo.manifest.read_text())
    assert man["version"] == DEMO_VERSION and man["seed"] == 0 and man["synthetic"] is True
    assert all((demo.root / f).is_file() for f in man["files"])
    assert demo.brats_truth.is_file() and demo.brats_truth.with_suffix(".json").is_file()
    assert demo.chexpert_truth.is_file()


def test_brats_reader_reads_demo_and_lesion_side_is_true(demo):
    cases = find_brats_cases(demo.brats, require_seg=True)
    assert [c["case"] for c in cases] == [f"BraTS2021_{i:05d}" for i in range(N_BRATS)]
    truth = pd.read_csv(demo.brats_truth).set_index("case")
    assert sorted(truth["side"]) == ["left", "none", "right"] or set(truth["side"]) <= {"left", "right", "none"}
    for c in cases:
        t = truth.loc[c["case"]]
        img = nib.load(c["image"][0])
        assert img.shape == (80, 96, 80) and np.allclose(np.abs(np.diag(img.affine)[:3]), 2.0)
        seg = nib.load(c["label"])
        lab = np.asarray(seg.dataobj)
        assert set(np.unique(lab)) <= {0, 1, 2, 4}
        if t["side"] == "none":
            assert lab.sum() == 0
            continue
        ijk = np.argwhere(lab > 0)
        world = ijk @ seg.affine[:3, :3].T + seg.affine[:3, 3]
        n = np.array([t["plane_normal_0"], t["plane_normal_1"], t["plane_normal_2"]])
        dist = world @ n - t["plane_offset_mm"]
        assert n[0] > 0.9  # RAS: the normal points to the patient's right
        assert (np.median(dist) > 10) == (t["side"] == "right") and abs(np.median(dist)) > 10


def test_chexpert_reader_reads_demo(demo):
    train = read_chexpert(demo.chexpert, "train", uncertainty="ignore")
    valid = read_chexpert(demo.chexpert, "valid")
    assert len(train) + len(valid) == N_CXR
    truth = pd.read_csv(demo.chexpert_truth).set_index("path")
    i_op = CHEXPERT_LABELS.index("Lung Opacity")
    for r in train + valid:
        assert r["side"] in ("left", "right", "none") and r["side"] == truth.loc[r["path"], "side"]
        assert r["label"][i_op] == float(r["side"] != "none") and r["label_mask"][i_op] == 1
        assert Image.open(r["image"]).size == (256, 256)
    parts = split_by_patient(train, {"a": 0.5, "b": 0.5})
    assert not ({r["patient"] for r in parts["a"]} & {r["patient"] for r in parts["b"]})


def test_cached_and_rebuilt_when_different(demo, tmp_path):
    before = demo.manifest.stat().st_mtime_ns
    again = build_demo_data(demo.root, n_brats=N_BRATS, n_chexpert=N_CXR, seed=0)
    assert again == demo and demo.manifest.stat().st_mtime_ns == before  # reused
    # a different seed or a missing file triggers a rebuild; a fresh root with the same seed is identical
    other = build_demo_data(tmp_path / "o", n_brats=1, n_chexpert=3, seed=0)
    same = build_demo_data(tmp_path / "s", n_brats=1, n_chexpert=3, seed=0)
    f = "BraTS2021/BraTS2021_00000/BraTS2021_00000_flair.nii.gz"
    assert np.array_equal(np.asarray(nib.load(other.root / f).dataobj), np.asarray(nib.load(same.root / f).dataobj))
    png = sorted((other.chexpert / "train").rglob("*.png"))[0].relative_to(other.root)
    assert (other.root / png).read_bytes() == (same.root / png).read_bytes()
    assert (other.chexpert / "train.csv").read_text() == (same.chexpert / "train.csv").read_text()
    (same.root / png).unlink()
    build_demo_data(same.root, n_brats=1, n_chexpert=3, seed=0)
    assert (same.root / png).is_file()
    changed = build_demo_data(same.root, n_brats=1, n_chexpert=3, seed=1)
    assert json.loads(changed.manifest.read_text())["seed"] == 1
    assert (changed.root / png).read_bytes() != (other.root / png).read_bytes()


def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MFASSL_DEMO_DIR", str(tmp_path / "x"))
    assert default_demo_root() == tmp_path / "x"
    monkeypatch.delenv("MFASSL_DEMO_DIR")
    assert default_demo_root().parts[-3:] == (".cache", "mfassl", "demo")


def test_real_estimator_recovers_demo_ground_truth(demo):
    """End to end: reader -> SafeLoadImaged -> EstimateSymmetryAxisd (the real estimator) -> the demo truth."""
    mod = pytest.importorskip("mfassl_medical.axis")
    if not hasattr(mod, "estimate_axis"):
        pytest.skip("mfassl_medical.axis has no estimate_axis yet")
    from monai.transforms import Compose

    from mfassl.geometry import SymmetryAxis2D, SymmetryPlane3D
    from mfassl_medical.data import SafeLoadImaged
    from mfassl_medical.transforms import EstimateSymmetryAxisd

    t = Compose([SafeLoadImaged("image"), EstimateSymmetryAxisd("image")])
    case = find_brats_cases(demo.brats)[0]
    tr = pd.read_csv(demo.brats_truth).set_index("case").loc[case["case"]]
    d = t(case)
    true = SymmetryPlane3D(normal=[tr["plane_normal_0"], tr["plane_normal_1"], tr["plane_normal_2"]],
                           offset=tr["plane_offset_mm"])
    est = SymmetryPlane3D(normal=d["image_axis_world"][:3], offset=float(d["image_axis_world"][3]))
    assert not d["axis_fallback"]
    assert true.angle_to(est) < 0.5 and true.distance_at(est, (0.0, -18.0, 12.0)) < 1.0

    rec = read_chexpert(demo.chexpert, "train")[0]
    tr = pd.read_csv(demo.chexpert_truth).set_index("path").loc[rec["path"]]
    d = t(rec)
    true2 = SymmetryAxis2D(normal=[tr["midline_normal_xy_0"], tr["midline_normal_xy_1"]], offset=tr["midline_offset_px"])
    est2 = SymmetryAxis2D(normal=d["image_axis"][:2], offset=float(d["image_axis"][2]))  # PNG index = (x, y)
    assert true2.angle_to(est2) < 2.0 and true2.distance_at(est2, (127.5, 127.5)) < 3.0
