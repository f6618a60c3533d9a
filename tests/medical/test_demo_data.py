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
    # every third case is healthy; the others' sides come in pairs (00000-00001 left, 00003-00004 right, ...)
    assert list(truth["side"]) == ["left", "left", "none"] and list(truth["label"]) == [1, 1, 0]
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


def test_real_estimator_recovers_demo_ground_truth(demo, estimator_calls):
    """End to end: reader -> SafeLoadImaged -> EstimateSymmetryAxisd (the real estimator) -> the demo truth."""
    from monai.transforms import Compose

    from mfassl.geometry import SymmetryAxis2D, SymmetryPlane3D
    from mfassl_medical.transforms import SafeLoadImaged
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
    assert len(estimator_calls) == 2  # both axes came from mfassl_medical.axis.estimate_axis


# ---------------------------------------------------------------------- subjects that differ as patients do
def test_brain_deformation_is_mirror_symmetric():
    """The template's deformation keeps its symmetry: x displacement odd, y and z even about the centre plane."""
    import torch

    from mfassl_medical.demo_data.brain import _symmetric_displacement

    d = _symmetric_displacement(np.random.default_rng(0), (9, 7, 5), 3, 4.0, 2.0)  # (X, Y, Z, 3) voxels
    assert d.shape == (9, 7, 5, 3)
    assert torch.allclose(d[..., 0], -d.flip(0)[..., 0]) and torch.allclose(d[..., 1:], d.flip(0)[..., 1:])
    assert float(d[4, ..., 0].abs().max()) == 0.0  # the mid-sagittal plane does not move
    assert 0.2 < float(d.abs().max()) < 10.0  # 4 mm = 2 voxels of 2 mm per standard deviation of the noise


def test_brain_subjects_and_tumours_differ():
    import torch

    from mfassl_medical.demo_data.brain import _brats_case, _load_mni

    data, aff = _load_mni()
    tmpl = torch.from_numpy(data.copy())
    rng = np.random.default_rng(3)
    cases = {size: _brats_case(rng, tmpl, aff, "left", size) for size in ("small", "large")}
    healthy = _brats_case(rng, tmpl, aff, "none")
    vox = {s: int((c[1] > 0).sum()) for s, c in cases.items()}
    assert 0 < vox["small"] < vox["large"]
    for size, (arrays, seg, _, truth) in cases.items():
        assert truth["size"] == size and truth["side"] == "left"
        assert {0, 2, 4} <= set(np.unique(seg)) <= {0, 1, 2, 4}  # oedema and an enhancing rim (and a core)
        assert truth["oedema_radius_mm"] > truth["lesion_radius_mm"] > 0
        t1, t1ce = arrays[0].astype(float), arrays[1].astype(float)
        ratio = t1ce / np.maximum(t1, 1.0)  # modality gains differ: compare the rim with the oedema of one case
        assert ratio[seg == 4].mean() > 1.2 * ratio[seg == 2].mean()  # the rim enhances
    assert healthy[3]["size"] == "none" and healthy[1].sum() == 0
    # per-subject anatomy and contrast
    truths = [c[3] for c in cases.values()] + [healthy[3]]
    assert len({round(t["ventricle_factor"], 3) for t in truths}) == 3
    assert len({round(t["contrast"]["t2"]["csf"], 3) for t in truths}) == 3


def test_chest_subjects_and_findings_differ():
    import torch

    from mfassl_medical.demo_data.chest import _base_midline, _cxr_image, _load_cxr, _patient_chest

    base_np = _load_cxr()
    base, mid = torch.from_numpy(base_np.copy()), _base_midline(base_np)
    a, ta = _patient_chest(np.random.default_rng(1), base, mid, "PA")
    b, tb = _patient_chest(np.random.default_rng(2), base, mid, "AP")
    assert float((a - b).abs().mean()) > 0.03  # different patients before any pose or exposure change
    assert ta["heart_scale"] != tb["heart_scale"] and ta["habitus_width"] != tb["habitus_width"]
    rng = np.random.default_rng(4)
    small = _cxr_image(rng, base, mid, "right", "small")[1]
    large = _cxr_image(rng, base, mid, "right", "large")[1]
    assert 0 < small["opacity_area_px"] < large["opacity_area_px"]
    assert small["size"] == "small" and large["size"] == "large" and 0.3 <= small["opacity_density"] <= 0.8
    none = _cxr_image(rng, base, mid, "none", "large", "AP")[1]
    assert none["size"] == "none" and none["view"] == "AP" and none["opacity_area_px"] == 0.0


def test_demo_tables_record_size_and_view(demo):
    truth = pd.read_csv(demo.chexpert_truth)
    assert set(truth["size"]) <= {"small", "large", "none"} and (truth["size"] == "none").eq(truth["side"] == "none").all()
    rows = pd.concat([pd.read_csv(demo.chexpert / f"{s}.csv") for s in ("train", "valid")])
    assert set(rows["AP/PA"]) <= {"AP", "PA"}
    view = truth.set_index("path")["view"]
    assert all(view[p] == v for p, v in zip(rows["Path"], rows["AP/PA"]))
    brats = pd.read_csv(demo.brats_truth)
    assert (brats["size"] == "none").eq(brats["side"] == "none").all()


# ---------------------------------------------------------------------- folder policy: nothing the user owns is lost
def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("via_env", [False, True], ids=["root", "MFASSL_DEMO_DIR"])
def test_foreign_folder_is_refused_and_left_untouched(tmp_path, monkeypatch, via_env):
    mine = tmp_path / "my_data"
    (mine / "scans").mkdir(parents=True)
    (mine / "notes.txt").write_text("my annotations")
    (mine / "scans" / "case1.nii.gz").write_bytes(b"\x1f\x8b user bytes")
    before = _tree(mine)
    if via_env:
        monkeypatch.setenv("MFASSL_DEMO_DIR", str(mine))
    with pytest.raises(FileExistsError) as err:
        build_demo_data(None if via_env else mine, n_brats=0, n_chexpert=1, seed=0)
    assert str(mine) in str(err.value) and "MFASSL_DEMO_DIR" in str(err.value)
    assert _tree(mine) == before and sorted(p.name for p in mine.iterdir()) == ["notes.txt", "scans"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]  # no temporary build left beside it


@pytest.mark.parametrize("manifest", [
    {"note": "another tool's manifest"},
    {"generator": "mfassl_medical.demo_data.build_demo_data", "files": ["../outside.txt"]},
    {"generator": "mfassl_medical.demo_data.build_demo_data", "files": ["/etc/hostname"]},
], ids=["other-tool", "dotdot-entry", "absolute-entry"])
def test_a_manifest_that_is_not_the_builders_is_not_trusted(tmp_path, manifest):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    root = tmp_path / "demo"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=str(root)):
        build_demo_data(root, n_brats=0, n_chexpert=1, seed=0)
    assert outside.read_text() == "keep me" and json.loads((root / "manifest.json").read_text()) == manifest


def test_rebuild_removes_only_what_the_manifest_lists(tmp_path):
    root = tmp_path / "demo"
    first = build_demo_data(root, n_brats=0, n_chexpert=3, seed=0)
    old_files = set(json.loads(first.manifest.read_text())["files"])
    assert {"chexpert_truth.csv", "chexpert_truth.json", "README.md"} <= old_files
    (root / "notes.txt").write_text("mine")
    (root / "CheXpert-v1.0-small" / "my_split.csv").write_text("Path\n")
    (root / "results").mkdir()
    (root / "results" / "auroc.json").write_text("{}")

    again = build_demo_data(root, n_brats=0, n_chexpert=2, seed=1)  # different sizes and seed: a rebuild
    man = json.loads(again.manifest.read_text())
    assert man["seed"] == 1 and man["n_chexpert"] == 2 and man.get("complete", True) is True
    user = {"notes.txt": b"mine", "CheXpert-v1.0-small/my_split.csv": b"Path\n", "results/auroc.json": b"{}"}
    tree = _tree(root)
    assert {k: tree[k] for k in user} == user
    assert set(tree) == set(man["files"]) | {"manifest.json"} | set(user)  # old-only files are gone
    assert len(read_chexpert(again.chexpert, "train")) + len(read_chexpert(again.chexpert, "valid")) == 2
    assert build_demo_data(root, n_brats=0, n_chexpert=2, seed=1) == again  # and the result is reused


def test_empty_folder_is_used(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    paths = build_demo_data(root, n_brats=0, n_chexpert=1, seed=0)
    assert json.loads(paths.manifest.read_text())["generator"] == "mfassl_medical.demo_data.build_demo_data"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile"):
        build_demo_data(tmp_path / "afile", n_brats=0, n_chexpert=1)


def test_concurrent_builds_into_one_fresh_folder_both_succeed(tmp_path):
    """Before: two torchrun ranks building a fresh demo folder at once failed ("Directory not empty")."""
    import subprocess
    import sys

    root = tmp_path / "demo"
    # chest images only: the lock and the move into place are the same for every part, and a brain case would add
    # the MNI template's loading (about 5 s) to each process
    code = ("import sys; from mfassl_medical.demo_data import build_demo_data; "
            "p = build_demo_data(sys.argv[1], n_brats=0, n_chexpert=2); print(p.manifest.is_file())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert [o[0].strip() for o in outs] == ["True", "True"]
    assert json.loads((root / "manifest.json").read_text())["n_chexpert"] == 2
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".demo.build-")]  # no half-built folder left



def test_graded_findings_span_sizes_densities_and_stay_balanced(tmp_path):
    """``findings="graded"``: every size x density class, the same mix on each side, the classes' ranges held,
    and the default demo images unchanged by the option (the same draws)."""
    from mfassl_medical.demo_data.chest import FINDING_DENSITY, GRADED_SIGMA

    graded = build_demo_data(tmp_path / "g", n_brats=0, n_chexpert=72, seed=0, findings="graded")
    truth = pd.read_csv(graded.chexpert_truth)
    les = truth[truth["side"] != "none"]
    assert len(les) == 48 and (les["side"] == "left").sum() == 24
    assert set(les["size"]) == {"tiny", "small", "medium", "large"} and set(les["density"]) == {"faint", "moderate",
                                                                                                "dense"}
    mix = les.groupby("side")[["size", "density"]].value_counts().unstack(0)
    assert (mix["left"] == mix["right"]).all()  # left and right see the same size x density mix
    for _, r in les.iterrows():
        lo, hi = FINDING_DENSITY[r["density"]]
        assert lo <= r["opacity_density"] <= hi
    assert set(truth.loc[truth["side"] == "none", "density"]) == {"none"}
    sigma = (les["opacity_sigma_px"] / 256.0).groupby(les["size"]).median()
    assert sigma["tiny"] < sigma["small"] < sigma["medium"] < sigma["large"]  # ordered sizes (of the 256-px image)
    assert GRADED_SIGMA["tiny"][0] < GRADED_SIGMA["large"][0]
    # the default set: the option leaves its images as they were (same random draws)
    demo_a = build_demo_data(tmp_path / "a", n_brats=0, n_chexpert=6, seed=0)
    demo_b = build_demo_data(tmp_path / "b", n_brats=0, n_chexpert=6, seed=0, findings="demo")
    for p in pd.read_csv(demo_a.chexpert_truth)["path"]:
        assert (demo_a.root / p).read_bytes() == (demo_b.root / p).read_bytes()
    assert set(pd.read_csv(demo_a.chexpert_truth)["density"]) <= {"demo", "none"}
    # a graded folder is not taken for a demo one, and back
    assert json.loads(graded.manifest.read_text())["findings"] == "graded"
    with pytest.raises(ValueError, match="findings must be one of"):
        build_demo_data(tmp_path / "x", n_brats=0, n_chexpert=3, findings="hard")
    assert not (tmp_path / "x").exists()  # refused before anything is written
