"""Synthetic demo data in the real BraTS and CheXpert layouts, built offline from packaged samples.

Nothing is downloaded. The brain set comes from nilearn's symmetric MNI152 2009a template (T1, grey
and white matter maps, 2 mm), the chest set from pydicom-data's ``RG1_UNCI.dcm`` (one real PA chest
radiograph). Every case gets a known random rigid transform, per-modality intensity changes and,
for most cases, a synthetic lesion/opacity on one side; the side and the transform are written to
ground-truth tables. The data is built once into a cache folder and reused while its manifest
(version, seed, sizes) matches; it is deterministic by seed.

Layout under ``root`` (default :func:`default_demo_root`)::

    README.md                  what the data is and what its labels mean
    manifest.json              version, seed, sizes, file list
    BraTS2021/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz
    brats_truth.csv / .json    per case: lesion side, rigid transform, true mid-sagittal plane
    CheXpert-v1.0-small/{train,valid}.csv
    CheXpert-v1.0-small/{train,valid}/patient00001/study1/view1_frontal.png
    chexpert_truth.csv / .json per image: opacity side, rotation/shift/scale, true midline

Example::

    from mfassl_medical.demo_data import build_demo_data
    from mfassl_medical.data import find_brats_cases, read_chexpert
    paths = build_demo_data()
    cases = find_brats_cases(paths.brats)
    images = read_chexpert(paths.chexpert, "train")
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mfassl.geometry import warp
from mfassl_medical.data.chexpert import CHEXPERT_LABELS

__all__ = ["DEMO_VERSION", "DemoPaths", "default_demo_root", "build_demo_data", "rigid_matrix"]

logger = logging.getLogger(__name__)

DEMO_VERSION = "1"
"""Bump when the generated data changes; a cached build with another version is rebuilt."""

_BRATS_SHAPE = (80, 96, 80)  # 2 mm voxels: 160 x 192 x 160 mm
_BRATS_CENTRE_MM = (0.0, -18.0, 12.0)  # world point at the centre of the output grid
_CXR_SIZE = 256
_CXR_BASE = (330, 311)  # the downsampled radiograph (rows, cols) the chest images are cut from


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo data lies.

    Attributes:
        root: the demo folder.
        brats: the BraTS root (pass to :func:`~mfassl_medical.data.find_brats_cases`).
        chexpert: the CheXpert dataset folder (pass to :func:`~mfassl_medical.data.read_chexpert`).
        brats_truth: CSV of the brain cases' ground truth (``.json`` beside it).
        chexpert_truth: CSV of the chest images' ground truth (``.json`` beside it).
        manifest: the manifest JSON.
        readme: the README.
    """

    root: Path
    brats: Path
    chexpert: Path
    brats_truth: Path
    chexpert_truth: Path
    manifest: Path
    readme: Path


def default_demo_root() -> Path:
    """``$MFASSL_DEMO_DIR`` if set, else ``~/.cache/mfassl/demo``."""
    env = os.environ.get("MFASSL_DEMO_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mfassl" / "demo"


def _paths(root: Path) -> DemoPaths:
    return DemoPaths(root=root, brats=root / "BraTS2021", chexpert=root / "CheXpert-v1.0-small",
                     brats_truth=root / "brats_truth.csv", chexpert_truth=root / "chexpert_truth.csv",
                     manifest=root / "manifest.json", readme=root / "README.md")


def rigid_matrix(angles_deg: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """Homogeneous ``(D+1, D+1)`` rigid transform ``x -> R x + t``.

    Args:
        angles_deg: one angle (2D) or three (3D: about x, then y, then z; ``R = Rz Ry Rx``).
        translation: ``(D,)``.
    """
    t = np.asarray(translation, dtype=np.float64)
    d = t.size
    m = np.eye(d + 1)
    a = [math.radians(v) for v in angles_deg]
    if d == 2:
        c, s = math.cos(a[0]), math.sin(a[0])
        m[:2, :2] = [[c, -s], [s, c]]
    elif d == 3:
        cx, sx, cy, sy, cz, sz = (math.cos(a[0]), math.sin(a[0]), math.cos(a[1]), math.sin(a[1]),
                                  math.cos(a[2]), math.sin(a[2]))
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        m[:3, :3] = rz @ ry @ rx
    else:
        raise ValueError(f"translation must have 2 or 3 components, got {d}.")
    m[:d, d] = t
    return m


def _manifest_matches(paths: DemoPaths, want: dict[str, Any]) -> bool:
    try:
        have = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return False
    if any(have.get(k) != v for k, v in want.items()):
        return False
    return all((paths.root / f).is_file() for f in have.get("files", []))


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], strength: float) -> torch.Tensor:
    """A smooth multiplicative field ``exp(strength * noise)`` from a tiny random grid, upsampled."""
    coarse = torch.as_tensor(rng.standard_normal((1, 1) + (3,) * len(shape)), dtype=torch.float32)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    f = F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)[0, 0]
    return torch.exp(strength * f)


# ---------------------------------------------------------------------- brain (BraTS layout)
@functools.lru_cache(maxsize=1)
def _load_mni() -> tuple[np.ndarray, np.ndarray]:
    """``(4, X, Y, Z)`` float32 [t1, gm, wm, brain mask] of the 2 mm MNI152 template and its affine."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    vols = np.stack([np.asarray(v.get_fdata(), dtype=np.float32) for v in (t1, gm, wm, mask)])
    vols.setflags(write=False)  # cached: shared between builds in one process
    return vols, np.asarray(t1.affine, dtype=np.float64)


def _brats_case(rng: np.random.Generator, tmpl: torch.Tensor, tmpl_affine: np.ndarray, side: str,
                ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic case: 4 modalities (int16), seg (uint8), output affine and its ground truth."""
    shape = _BRATS_SHAPE
    out_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    out_aff[:3, 3] = np.asarray(_BRATS_CENTRE_MM) - 2.0 * (np.asarray(shape) - 1) / 2.0
    angles = rng.uniform(-12.0, 12.0, size=3)
    shift = rng.uniform(-8.0, 8.0, size=3)
    rig = rigid_matrix(angles, shift)  # template world -> case world
    # output index -> template index
    m = np.linalg.inv(tmpl_affine) @ np.linalg.inv(rig) @ out_aff

    # lesion in template world (RAS: +x is the patient's right)
    lesion: dict[str, Any] = {"centre": [math.nan] * 3, "radius_mm": 0.0}
    t1, gm, wm, brain = tmpl[0], tmpl[1], tmpl[2], tmpl[3]
    csf = (brain - gm - wm).clamp(min=0.0)
    ncr = torch.zeros_like(t1)
    ed = torch.zeros_like(t1)
    et = torch.zeros_like(t1)
    if side != "none":
        sign = 1.0 if side == "right" else -1.0
        for _ in range(50):  # a centre inside white matter
            c = np.array([sign * rng.uniform(22.0, 40.0), rng.uniform(-50.0, 15.0), rng.uniform(0.0, 35.0)])
            ijk = np.round(np.linalg.inv(tmpl_affine) @ np.append(c, 1.0))[:3].astype(int)
            if np.all(ijk >= 0) and np.all(ijk < np.array(t1.shape)) and float(wm[tuple(ijk)]) > 0.5:
                break
        r = float(rng.uniform(9.0, 15.0))
        lesion = {"centre": [float(v) for v in c], "radius_mm": r}
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in t1.shape],
                                          indexing="ij"), dim=-1)
        world = grid @ torch.as_tensor(tmpl_affine[:3, :3].T, dtype=torch.float32) + \
            torch.as_tensor(tmpl_affine[:3, 3], dtype=torch.float32)
        scale = torch.as_tensor(rng.uniform(0.8, 1.2, size=3), dtype=torch.float32)
        dist = (((world - torch.as_tensor(c, dtype=torch.float32)) / scale) ** 2).sum(-1).sqrt() / r
        ed = (dist <= 1.0).float()
        et = ((dist <= 0.55) & (dist > 0.35)).float()
        ncr = (dist <= 0.35).float()
        ed = ed * (1 - et) * (1 - ncr)
    # warp anatomy + lesion parts in one call
    stack = torch.stack([t1, gm, wm, csf, ncr, ed, et])[None]
    out = warp(stack, torch.as_tensor(m, dtype=torch.float32), out_shape=shape)[0]
    t1o, gmo, wmo, csfo = out[0], out[1], out[2], out[3]
    ncro, edo, eto = (out[4] > 0.5).float(), (out[5] > 0.5).float(), (out[6] > 0.5).float()
    lesion_any = (ncro + edo + eto).clamp(max=1.0)
    t1o = t1o / max(float(t1o.max()), 1e-6)

    mods = {
        "t1": t1o * (1 - 0.6 * ncro - 0.25 * edo),
        "t1ce": t1o * (1 - 0.6 * ncro - 0.25 * edo) + 0.9 * eto,
        "t2": (0.35 * wmo + 0.6 * gmo + 1.0 * csfo) * (1 - lesion_any) + lesion_any * (0.85 + 0.1 * ncro),
        "flair": (0.55 * wmo + 0.8 * gmo + 0.1 * csfo) * (1 - lesion_any) + lesion_any * (1.0 - 0.5 * ncro),
    }
    arrays = []
    gains = {}
    for name in ("t1", "t1ce", "t2", "flair"):
        v = mods[name].clamp(min=0.0)
        gamma = float(rng.uniform(0.85, 1.15))
        gain = float(rng.uniform(600.0, 1400.0))
        v = v.pow(gamma) * _smooth_field(rng, shape, 0.12) * gain
        v = v + torch.as_tensor(rng.normal(0.0, 0.01 * gain, size=shape), dtype=torch.float32).abs() * (v > 0)
        arrays.append(np.clip(v.numpy(), 0, 32000).astype(np.int16))
        gains[name] = {"gain": gain, "gamma": gamma}
    seg = (ncro * 1 + edo * 2 + eto * 4).numpy().astype(np.uint8)  # BraTS 2021 labels

    # true mid-sagittal plane: template x = 0 moved by the rigid transform
    n = rig[:3, :3] @ np.array([1.0, 0.0, 0.0])
    offset = float(n @ rig[:3, 3])
    truth = {
        "side": side, "rotation_deg": [float(v) for v in angles], "translation_mm": [float(v) for v in shift],
        "plane_normal": [float(v) for v in n], "plane_offset_mm": offset,
        "lesion_centre_template_mm": lesion["centre"], "lesion_radius_mm": lesion["radius_mm"],
        "lesion_centre_mm": ([float(v) for v in (rig @ np.append(lesion["centre"], 1.0))[:3]]
                             if side != "none" else [math.nan] * 3),
        "lesion_voxels": int((seg > 0).sum()), "intensity": gains,
    }
    return arrays, seg, out_aff, truth


def _build_brats(root: Path, n: int, rng: np.random.Generator) -> tuple[list[str], list[dict[str, Any]]]:
    import nibabel as nib

    data, aff = _load_mni()
    tmpl = torch.from_numpy(data.copy())
    files: list[str] = []
    truth: list[dict[str, Any]] = []
    for i in range(n):
        side = "none" if i % 3 == 2 else ("left" if (i % 3 == 0) == (i % 2 == 0) else "right")
        case = f"BraTS2021_{i:05d}"
        arrays, seg, out_aff, t = _brats_case(rng, tmpl, aff, side)
        folder = root / "BraTS2021" / case
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in zip(("t1", "t1ce", "t2", "flair"), arrays):
            f = folder / f"{case}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(arr, out_aff), str(f))
            files.append(str(f.relative_to(root)))
        f = folder / f"{case}_seg.nii.gz"
        nib.save(nib.Nifti1Image(seg, out_aff), str(f))
        files.append(str(f.relative_to(root)))
        truth.append({"case": case, "label": int(side != "none"), **t})
    return files, truth


# ---------------------------------------------------------------------- chest (CheXpert layout)
@functools.lru_cache(maxsize=1)
def _load_cxr() -> np.ndarray:
    """The pydicom-data PA chest radiograph, display-corrected (MONOCHROME1 inverted), ``(330, 311)`` in [0, 1]."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    a = ds.pixel_array.astype(np.float32)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = a.max() - a
    t = F.interpolate(torch.as_tensor(a)[None, None], size=_CXR_BASE, mode="area")[0, 0].numpy()
    lo, hi = np.percentile(t, [1.0, 99.5])
    out = (np.clip((t - lo) / (hi - lo), 0.0, 1.0) ** 1.6).astype(np.float32)  # darker lung fields
    out.setflags(write=False)  # cached: shared between builds in one process
    return out


def _base_midline(img: np.ndarray) -> float:
    """Column (in base pixels) of the vertical line about which the base image is most symmetric."""
    band = img[int(0.1 * img.shape[0]):int(0.8 * img.shape[0])]
    prof = band - band.mean()
    w = prof.shape[1]
    best, best_c = -np.inf, (w - 1) / 2.0
    for s in range(-40, 41):  # reflection about c: column j <-> 2c - j, 2c = w - 1 + s
        shifted = np.roll(prof[:, ::-1], s, axis=1)
        lo, hi = max(0, s), min(w, w + s)
        score = float((prof[:, lo:hi] * shifted[:, lo:hi]).mean())
        if score > best:
            best, best_c = score, (w - 1 + s) / 2.0
    return best_c


def _cxr_image(rng: np.random.Generator, base: torch.Tensor, base_mid: float, side: str
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """One 256 x 256 uint8 image and its truth; coordinates are (x = column, y = row) pixels."""
    h, w = base.shape
    angle = float(rng.uniform(-10.0, 10.0))
    scale = float(rng.uniform(0.95, 1.2))  # base pixels per output pixel
    shift = rng.uniform(-0.06, 0.06, size=2) * np.array([w, h])  # (x, y) in base pixels
    # output (row, col) -> base (row, col): centre, rotate, scale, shift
    c_out = (_CXR_SIZE - 1) / 2.0
    c_base = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c_base + np.array([shift[1], shift[0]]) - rot @ np.array([c_out, c_out])
    img = base.clone()
    opacity: dict[str, Any] = {"centre_xy": [math.nan, math.nan], "sigma": 0.0}
    if side != "none":
        # PA view: the patient's left lung is on the image's right (higher column)
        sx = 1.0 if side == "left" else -1.0
        cx = base_mid + sx * rng.uniform(0.14, 0.26) * w
        cy = rng.uniform(0.3, 0.62) * h
        sig = rng.uniform(0.05, 0.085) * w
        amp = rng.uniform(0.5, 0.75)
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig**2))
        img = (img + amp * blob * (1.0 - img)).clamp(0.0, 1.0)
        inv = np.linalg.inv(m)
        o = inv @ np.array([cy, cx, 1.0])
        opacity = {"centre_xy": [float(o[1]), float(o[0])], "sigma": float(sig / scale)}
    img = img * _smooth_field(rng, (h, w), 0.08)
    out = warp(img[None, None], torch.as_tensor(m, dtype=torch.float32), out_shape=(_CXR_SIZE, _CXR_SIZE),
               padding_mode="zeros")[0, 0]
    g = float(rng.uniform(0.85, 1.15))
    out = out.clamp(0.0, 1.0).pow(g)
    out = out + torch.as_tensor(rng.normal(0.0, 0.01, size=out.shape), dtype=torch.float32)
    arr = (out.clamp(0.0, 1.0).numpy() * 255.0 + 0.5).astype(np.uint8)
    # midline: base column base_mid -> output; in (row, col) index space the line n.(r, c) = d
    n_rc = m[:2, :2].T @ np.array([0.0, 1.0])
    d = base_mid - float(np.array([0.0, 1.0]) @ m[:2, 2])
    norm = float(np.linalg.norm(n_rc))
    n_rc, d = n_rc / norm, d / norm
    truth = {
        "side": side, "rotation_deg": angle, "scale": scale, "shift_xy_px": [float(v) for v in shift],
        "gamma": g,
        # x = column, y = row: the index order of the PNG as MONAI LoadImage returns it, (W, H)
        "midline_normal_xy": [float(n_rc[1]), float(n_rc[0])], "midline_offset_px": float(d),
        "opacity_centre_xy": opacity["centre_xy"], "opacity_sigma_px": opacity["sigma"],
    }
    return arr, truth


def _build_chexpert(root: Path, n: int, rng: np.random.Generator) -> tuple[list[str], list[dict[str, Any]]]:
    from PIL import Image

    base_np = _load_cxr()
    base_mid = _base_midline(base_np)
    base = torch.from_numpy(base_np.copy())
    ds_root = root / "CheXpert-v1.0-small"
    n_valid = max(1, n // 6) if n > 1 else 0
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS, "Side"]
    rows: dict[str, list[list[Any]]] = {"train": [], "valid": []}
    files: list[str] = []
    truth: list[dict[str, Any]] = []
    patient = 0
    i = 0
    while i < n:
        split = "valid" if i >= n - n_valid else "train"
        patient += 1
        n_studies = 1 if split == "valid" else int(min(n - n_valid - i, rng.integers(1, 3)))
        sex = "Male" if rng.random() < 0.5 else "Female"
        age = int(rng.integers(20, 90))
        for study in range(1, n_studies + 1):
            side = ("none", "left", "right")[i % 3]
            arr, t = _cxr_image(rng, base, base_mid, side)
            rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view1_frontal.png"
            f = root / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(f)
            files.append(rel)
            labels: dict[str, Any] = {name: "" for name in CHEXPERT_LABELS}
            labels["Lung Opacity"] = 1.0 if side != "none" else 0.0
            labels["No Finding"] = 1.0 if side == "none" else ""
            labels["Support Devices"] = rng.choice(["", 0.0, 1.0, -1.0])  # exercises the uncertainty policy
            rows[split].append([rel, sex, age, "Frontal", "PA", *[labels[k] for k in CHEXPERT_LABELS], side])
            truth.append({"path": rel, "split": split, "patient": f"patient{patient:05d}", "label": int(side != "none"),
                          **t})
            i += 1
    for split, rs in rows.items():
        with open(ds_root / f"{split}.csv", "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(header)
            wr.writerows(rs)
        files.append(str((ds_root / f"{split}.csv").relative_to(root)))
    return files, truth


# ---------------------------------------------------------------------- tables, README, entry point
def _flat(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            for k2, v2 in _flat(v).items():
                out[f"{k}_{k2}"] = v2
        elif isinstance(v, (list, tuple)):
            for j, x in enumerate(v):
                out[f"{k}_{j}"] = x
        else:
            out[k] = v
    return out


def _write_truth(path: Path, records: list[dict[str, Any]]) -> None:
    flat = [_flat(r) for r in records]
    cols = list(flat[0]) if flat else []
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=cols)
        wr.writeheader()
        wr.writerows(flat)
    path.with_suffix(".json").write_text(json.dumps(records, indent=1, allow_nan=True))


_README = """# MFASSL demo data (synthetic)

**This data is synthetic.** It is generated on this machine by `mfassl_medical.demo_data.build_demo_data`
(version {version}, seed {seed}) from two samples that ship inside Python packages: nilearn's symmetric
MNI152 2009a brain template and pydicom-data's chest radiograph `RG1_UNCI.dcm`. No patient data, no
download. It exists to run the pipelines end to end and to test laterality; it says nothing about
clinical performance.

## BraTS2021/ ({n_brats} cases, BraTS 2021 naming)
`BraTS2021_NNNNN/BraTS2021_NNNNN_{{t1,t1ce,t2,flair,seg}}.nii.gz`, 80 x 96 x 80 voxels of 2 mm, RAS.
- The four "modalities" are pseudo-modalities mixed from the template's T1, grey- and white-matter
  maps (T2-like: CSF bright; FLAIR-like: CSF dark), each with its own gain, gamma, smooth bias
  field and noise. They are not real multi-parametric MRI.
- Each case is the template moved by a random rigid transform (rotations up to 12 degrees about
  each axis, shifts up to 8 mm). The true mid-sagittal plane is in `brats_truth.csv`.
- Two cases in three carry a synthetic tumour in ONE hemisphere; every third case (00002, 00005, ...)
  is healthy (empty `seg`). `seg` uses BraTS 2021 labels: 1 necrotic core, 2 oedema, 4 enhancing ring.
- `brats_truth.csv` / `.json`: `case`, `label` (1 = lesion), `side` (`left`/`right`/`none`, the
  patient's side; RAS +x is the patient's right), `rotation_deg_*`, `translation_mm_*`,
  `plane_normal_*` and `plane_offset_mm` (the plane n.x = offset in world mm of the NIfTI affine),
  lesion centre and radius, intensity parameters.

## CheXpert-v1.0-small/ ({n_chexpert} images)
`train.csv`, `valid.csv` with the CheXpert columns (Path, Sex, Age, Frontal/Lateral, AP/PA, the 14
observations) plus `Side`; images `train/patientNNNNN/studyK/view1_frontal.png`, 256 x 256, 8-bit.
- Every image is the same radiograph under a random rotation (up to 10 degrees), scale, shift, bias
  field, gamma and noise. Sex and Age are random.
- Two images in three carry a synthetic opacity in ONE lung. `Lung Opacity` is 1 for those and 0
  otherwise; `No Finding` is 1 for the clean images; `Support Devices` holds random 1/0/-1/blank values
  only to exercise the uncertainty policies (it means nothing); the other observations are blank.
- `Side` (and `chexpert_truth.csv`): `left`/`right` = the patient's side of the opacity (PA view:
  the patient's left is on the image's right), `none` = no opacity. This is the laterality label.
- `chexpert_truth.csv` / `.json`: per image the transform and the midline `midline_normal_xy` /
  `midline_offset_px` (n.(x, y) = offset with x = column, y = row in pixels: the index order MONAI's
  `LoadImage` gives a PNG). The midline is the base radiograph's best vertical mirror line carried
  through the known transform: accurate to about a pixel, the anatomy itself is not exactly symmetric.
"""


def build_demo_data(root: str | os.PathLike | None = None, n_brats: int = 12, n_chexpert: int = 48, seed: int = 0,
                    force: bool = False) -> DemoPaths:
    """Build (or reuse) the synthetic demo data; see the module docstring for the layout.

    Args:
        root: target folder (default :func:`default_demo_root`).
        n_brats: number of brain cases (0 = none).
        n_chexpert: number of chest images (0 = none).
        seed: random seed; the same seed gives the same files.
        force: rebuild even when a matching build exists.

    Returns:
        :class:`DemoPaths`. A build whose manifest matches (version, seed, sizes) and whose files all
        exist is reused; otherwise the data is built in a temporary sibling folder and moved into place.
    """
    root = Path(root).expanduser() if root is not None else default_demo_root()
    paths = _paths(root)
    want = {"version": DEMO_VERSION, "seed": int(seed), "n_brats": int(n_brats), "n_chexpert": int(n_chexpert)}
    if not force and _manifest_matches(paths, want):
        logger.debug("demo data at %s is up to date", root)
        return paths
    t0 = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        files: list[str] = []
        rng = np.random.default_rng(seed)
        rng_b, rng_c = (np.random.default_rng(s) for s in rng.integers(0, 2**31, size=2))
        if n_brats > 0:
            f, truth = _build_brats(tmp, n_brats, rng_b)
            _write_truth(tmp / "brats_truth.csv", truth)
            files += f + ["brats_truth.csv"]
        if n_chexpert > 0:
            (tmp / "CheXpert-v1.0-small").mkdir(parents=True, exist_ok=True)
            f, truth = _build_chexpert(tmp, n_chexpert, rng_c)
            _write_truth(tmp / "chexpert_truth.csv", truth)
            files += f + ["chexpert_truth.csv"]
        (tmp / "README.md").write_text(_README.format(version=DEMO_VERSION, seed=seed, n_brats=n_brats,
                                                      n_chexpert=n_chexpert))
        files.append("README.md")
        manifest = dict(want, files=files, build_seconds=round(time.perf_counter() - t0, 2),
                        generator="mfassl_medical.demo_data.build_demo_data", synthetic=True)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built demo data at %s in %.1f s (%d BraTS cases, %d chest images)", root,
                time.perf_counter() - t0, n_brats, n_chexpert)
    return paths
