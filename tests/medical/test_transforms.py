"""Symmetry-axis MONAI transforms: estimate, canonicalise (invertible), mirror pair; array and dict forms."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, PersistentDataset
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd

from mfassl.geometry import SymmetryAxis2D, SymmetryPlane3D, canonicalizing_matrix, warp
from mfassl_medical.transforms import (
    CanonicalizeSymmetry,
    CanonicalizeSymmetryd,
    CanonicalizeSymmetryD,
    EstimateSymmetryAxis,
    EstimateSymmetryAxisd,
    EstimateSymmetryAxisDict,
    MakeMirrorPair,
    MakeMirrorPaird,
    lr_split_dim,
)


def _symmetric(shape: tuple[int, ...], split_dim: int, seed: int = 0) -> np.ndarray:
    """A smooth image exactly mirror-symmetric about the centre of ``split_dim``."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    c = (np.asarray(shape) - 1) / 2.0
    img = np.zeros(shape)
    for _ in range(6):
        centre = c + rng.uniform(-0.25, 0.25, len(shape)) * np.asarray(shape)
        width = rng.uniform(0.06, 0.15) * min(shape)
        amp = rng.uniform(0.5, 1.0)
        for sgn in (1.0, -1.0):  # blob and its mirror
            cc = centre.copy()
            cc[split_dim] = c[split_dim] + sgn * (centre[split_dim] - c[split_dim])
            img += amp * np.exp(-sum((g - x) ** 2 for g, x in zip(grids, cc)) / (2 * width**2))
    return img.astype(np.float32)


def _tilted(shape: tuple[int, ...], axis, split_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric image moved so that its symmetry axis becomes ``axis`` (index coords)."""
    sym = _symmetric(shape, split_dim)
    m = canonicalizing_matrix(axis, shape, split_dim)  # canonical (output) -> tilted (input)
    tilted = warp(torch.from_numpy(sym)[None, None], np.linalg.inv(m))[0, 0].numpy()
    return sym, tilted


def _fixed_estimator(world_axis, calls: list | None = None):
    def est(image, affine=None, method="auto", **kwargs):
        if calls is not None:
            calls.append(1)
        return world_axis.replace(confidence=0.9, info={"method": "fixed"})

    return est


def _interior(shape, margin):
    sl = tuple(slice(margin, s - margin) for s in shape)
    return sl


def test_canonicalize_2d_array_symmetric_and_invertible():
    shape, k = (65, 65), 1
    true = SymmetryAxis2D.from_angle(8.0, 0.0, split_dim=k)
    true = SymmetryAxis2D.through_point(true.normal, (32.0, 35.0))
    sym, tilted = _tilted(shape, true, k)
    aff = torch.tensor([[0.0, 0.7, -5.0], [-0.7, 0.0, 9.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    img = MetaTensor(torch.from_numpy(tilted)[None], affine=aff)

    est = EstimateSymmetryAxis(estimator=_fixed_estimator(true.to_world(aff.numpy())))
    axis = est(img)
    assert axis.angle_to(true) < 1e-6 and abs(axis.offset - true.canonical().offset) < 1e-4
    canon = CanonicalizeSymmetry()
    out = canon(img, axis)
    assert isinstance(out, MetaTensor) and out.shape == img.shape
    a = out[0].numpy()
    inner = _interior(shape, 8)
    assert np.abs(a - a[:, ::-1])[inner].max() < 0.02 * a.max()
    m = canonicalizing_matrix(axis, shape)
    assert torch.allclose(out.affine, aff @ torch.as_tensor(m), atol=1e-6)  # world kept: affine @ M
    assert out.applied_operations[-1]["class"] == "CanonicalizeSymmetry"
    back = canon.inverse(out)
    assert torch.allclose(back.affine, aff, atol=1e-6)
    assert not back.applied_operations
    assert np.abs(back[0].numpy() - tilted)[_interior(shape, 12)].max() < 0.03 * tilted.max()


def test_estimate_dict_keys_collate_and_fallback_logging(caplog):
    shape = (40, 40)
    img = MetaTensor(torch.rand(1, *shape))
    true = SymmetryAxis2D.from_angle(5.0, 20.0, split_dim=0)
    t = EstimateSymmetryAxisDict("image", estimator=_fixed_estimator(true))
    d = t({"image": img})
    assert d["image_axis"].dtype == np.float32 and d["image_axis"].shape == (3,)
    assert d["image_axis_world"].shape == (3,)
    assert d["axis_fallback"] is False and d["axis_confidence"] == pytest.approx(0.9)
    assert d["image_axis_info"]["method"] == "fixed"
    batch = next(iter(DataLoader([d, d], batch_size=2)))
    assert batch["image_axis"].shape == (2, 3)

    def broken(image, affine=None, **kwargs):
        raise RuntimeError("estimator exploded")

    caplog.set_level(logging.WARNING)
    d = EstimateSymmetryAxisd("image", axis_keys="axis", estimator=broken)({"image": img})
    assert d["axis_fallback"] is True and d["axis_confidence"] == 0.0
    assert "estimator exploded" in d["axis_info"]["error"]
    assert np.allclose(d["axis"], [1.0, 0.0, 19.5])  # centre of dim 0: the left-right dim of an identity affine
    assert any("estimator exploded" in r.getMessage() for r in caplog.records)


def test_estimate_never_crashes_on_nan_or_constant_images(caplog):
    caplog.set_level(logging.WARNING)
    est = EstimateSymmetryAxis(method="centre")
    for img in (torch.full((1, 16, 16), float("nan")), torch.zeros(1, 8, 8, 8)):
        ax = est(img)
        assert ax.dims == img.ndim - 1


def test_real_estimator_centre_method(estimator_calls):
    """Without ``estimator`` the transform runs ``mfassl_medical.axis.estimate_axis`` (here its centre method)."""
    img = MetaTensor(torch.rand(1, 20, 30), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64)))
    d = EstimateSymmetryAxisd("image", method="centre")({"image": img})
    assert estimator_calls == [1]
    assert "error" not in d["image_axis_info"], d["image_axis_info"]
    assert np.allclose(np.abs(d["image_axis"][:2]), [1.0, 0.0], atol=1e-6)
    assert d["image_axis"][2] * np.sign(d["image_axis"][0]) == pytest.approx(9.5, abs=1e-4)


def _write_nifti(path, arr, affine):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


@pytest.fixture()
def tilted_volume(tmp_path):
    """A 3D mirror-symmetric volume tilted onto a known plane, saved as NIfTI with 1 x 1 x 2 mm voxels."""
    shape, k = (33, 33, 33), 0
    n = np.array([1.0, 0.12, -0.08])
    true = SymmetryPlane3D.through_point(n, (17.0, 16.0, 16.0))
    sym, tilted = _tilted(shape, true, k)
    # store every second z-slice with 2 mm spacing; Spacingd resamples back to 1 mm
    stored = tilted[:, :, ::2]
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    aff[:3, 3] = [-16.0, -16.0, -16.0]
    img_path = _write_nifti(tmp_path / "vol.nii.gz", stored, aff)
    lab = (stored > 0.5 * stored.max()).astype(np.uint8)
    lab_path = _write_nifti(tmp_path / "lab.nii.gz", lab, aff)
    index_full = np.diag([1.0, 1.0, 1.0, 1.0])
    index_full[:3, 3] = [-16.0, -16.0, -16.0]
    world = true.to_world(index_full)  # the 1 mm grid of `tilted` has this affine
    return {"image": img_path, "label": lab_path}, world


def _pipeline(world_axis, calls=None):
    return Compose([
        LoadImaged(["image", "label"], image_only=True),
        EnsureChannelFirstd(["image", "label"]),
        Spacingd(["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        EstimateSymmetryAxisd("image", estimator=_fixed_estimator(world_axis, calls)),
        CanonicalizeSymmetryd(["image", "label"], mode=["bilinear", "nearest"]),
    ])


def test_dict_pipeline_3d_symmetric_and_invertd(tilted_volume):
    data, world = tilted_volume
    pipe = _pipeline(world)
    out = pipe(dict(data))
    img = out["image"]
    assert img.ndim == 4
    k = lr_split_dim(img)
    assert k == 0
    a = img[0].numpy()
    inner = _interior(a.shape, 6)
    assert np.abs(a - a[::-1])[inner].max() < 0.08 * a.max()
    assert np.allclose(out["image_axis"], [1.0, 0.0, 0.0, (a.shape[0] - 1) / 2.0], atol=1e-5)
    # the world axis is unchanged and is the centre plane in the new affine
    from mfassl.geometry import SymmetryPlane3D as P
    from mfassl_medical.transforms.symmetry import image_affine

    moved = P(normal=out["image_axis_world"][:3], offset=out["image_axis_world"][3]).to_index(image_affine(img))
    assert moved.canonical().angle_to(P(normal=[1, 0, 0], offset=16)) < 1e-3
    # the label is resampled by nearest neighbour (loaded as float32): both classes kept, no value in between
    assert set(np.unique(out["label"].numpy()).tolist()) == {0.0, 1.0}

    loaded = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])(dict(data))["image"]
    inv = Invertd(keys="image", transform=pipe, orig_keys="image", nearest_interp=False)(out)
    back = inv["image"]
    assert back.shape == loaded.shape
    assert torch.allclose(back.affine, loaded.affine, atol=1e-4)
    diff = (back - loaded).abs()[0].numpy()
    assert diff[_interior(diff.shape, 5)[:2] + (slice(3, -3),)].mean() < 0.02 * float(loaded.max())


def test_cache_dataset_caches_the_axis(tilted_volume, tmp_path):
    data, world = tilted_volume
    calls: list = []
    ds = CacheDataset([dict(data), dict(data)], transform=_pipeline(world, calls), cache_rate=1.0, num_workers=0,
                      progress=False)
    assert len(calls) == 2
    for _ in range(2):
        batch = next(iter(DataLoader(ds, batch_size=2)))
    assert len(calls) == 2  # not recomputed
    assert batch["image_axis"].shape == (2, 4) and batch["axis_fallback"].tolist() == [False, False]
    calls.clear()
    pds = PersistentDataset([dict(data)], transform=_pipeline(world, calls), cache_dir=tmp_path / "cache")
    first = pds[0]
    second = pds[0]
    assert len(calls) == 1 and np.allclose(first["image_axis"], second["image_axis"])


@pytest.mark.parametrize("dims", [2, 3])
def test_mirror_pair_array_and_dict(dims):
    shape = (33,) * dims
    k = 0 if dims == 3 else 1
    sym = torch.from_numpy(_symmetric(shape, k))[None]
    mp = MakeMirrorPair(mirror_size=16, split_dim=k)
    p = mp(sym)
    assert p.x_l.shape == (1,) + (16,) * dims and p.valid_l.shape == (1,) + (16,) * dims
    assert (p.x_l - p.x_r).abs().max() < 1e-4  # a symmetric image's halves agree
    assert p.matrix_l.shape == (dims + 1, dims + 1)

    d = {"image": sym, "image_axis": np.array([1.0 if i == k else 0.0 for i in range(dims)] + [16.0], np.float32),
         "label": (sym > 0.5).float()}
    t = MakeMirrorPaird(["image", "label"], mirror_size=16, jitter=0.05, mode=["bilinear", "nearest"])
    t.set_random_state(3)
    a = t(dict(d))
    t.set_random_state(3)
    b = t(dict(d))
    assert torch.equal(a["x_l"], b["x_l"]) and np.allclose(a["mirror_axis"], b["mirror_axis"])
    assert abs(a["mirror_axis"][-1] - 16.0) <= 0.05 * 33 + 1e-5
    assert a["label_x_l"].shape == a["x_l"].shape and set(a["label_x_r"].unique().tolist()) <= {0.0, 1.0}
    c = t(dict(d))
    assert not np.allclose(c["mirror_axis"], a["mirror_axis"])  # a fresh draw


def test_compose_with_png_and_canonicalize_alias(tmp_path):
    from PIL import Image

    shape, k = (48, 64), 1
    sym = _symmetric(shape, k)
    Image.fromarray((sym / sym.max() * 255).astype(np.uint8)).save(tmp_path / "x.png")
    t = Compose([
        LoadImaged("image", image_only=True),
        EnsureChannelFirstd("image"),
        EstimateSymmetryAxisd("image", estimator=lambda im, affine=None, **kw:
                              SymmetryAxis2D(normal=[1.0, 0.0], offset=float((im.shape[1] - 1) / 2))),
        CanonicalizeSymmetryD("image"),
        MakeMirrorPaird("image", mirror_size=24),
    ])
    out = t({"image": str(tmp_path / "x.png")})
    assert out["image"].shape == (1, 64, 48)  # MONAI PNG order (W, H): left-right is dim 0
    assert out["image"].affine.shape == (4, 4)
    assert (out["x_l"] - out["x_r"]).abs().max() < 2.0
