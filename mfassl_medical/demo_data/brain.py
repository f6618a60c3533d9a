"""The brain half of the demo data: BraTS-layout cases from nilearn's symmetric MNI152 template.

Each case is the template (T1, grey and white matter maps, 2 mm) deformed like another head, with a synthetic
tumour in one hemisphere for two cases in three, four pseudo-modalities and a known rigid transform; the case
folder follows the BraTS 2021 naming (``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from mfassl.geometry import warp
from mfassl_medical.demo_data.synth import index_grid, resample, rigid_matrix, smooth_field, smooth_noise

__all__ = ["BRATS_SHAPE", "build_brats"]

BRATS_SHAPE: tuple[int, int, int] = (80, 96, 80)
"""Voxels of every demo case (2 mm: 160 x 192 x 160 mm)."""

_BRATS_CENTRE_MM = (0.0, -18.0, 12.0)  # world point at the centre of the output grid


@functools.lru_cache(maxsize=1)
def _load_mni() -> tuple[np.ndarray, np.ndarray]:
    """``(4, X, Y, Z)`` float32 [t1, gm, wm, brain mask] of the 2 mm MNI152 template and its affine."""
    from nilearn import datasets  # heavy (scikit-learn, pandas): imported only when a brain set is built

    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    vols = np.stack([np.asarray(v.get_fdata(), dtype=np.float32) for v in (t1, gm, wm, mask)])
    vols.setflags(write=False)  # cached: shared between builds in one process
    return vols, np.asarray(t1.affine, dtype=np.float64)


def _symmetric_displacement(rng: np.random.Generator, shape: Sequence[int], coarse: int, amp_mm: float,
                            voxel_mm: float) -> torch.Tensor:
    """A smooth displacement ``(*shape, 3)`` in voxels that is mirror-symmetric about the centre of axis 0.

    The x component is odd and the y, z components even under ``i -> X - 1 - i``, so a template that is
    symmetric about that plane stays symmetric (and the plane stays its mid-sagittal plane).
    """
    f = smooth_noise(rng, shape, coarse, channels=3) * (amp_mm / voxel_mm)  # (3, *S)
    m = f.flip(1)
    sym = torch.stack([0.5 * (f[0] - m[0]), 0.5 * (f[1] + m[1]), 0.5 * (f[2] + m[2])])
    return sym.permute(1, 2, 3, 0)


def _brats_case(rng: np.random.Generator, tmpl: torch.Tensor, tmpl_affine: np.ndarray, side: str,
                size: str = "large") -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic case: 4 modalities (int16), seg (uint8), output affine and its ground truth.

    The symmetric template is first deformed like a different head: a global anisotropic scale, a smooth
    mirror-symmetric displacement (coarse 6 mm and fine 2 mm scales: the folds move) and a radial
    enlargement or shrinkage of the ventricles; then a tumour of ``size`` (``"small"``: core radius 4-8 mm,
    ``"large"``: 9-16 mm) with a lobulated shape, an enhancing rim and oedema is drawn in ONE hemisphere
    (``side``), each modality gets its own tissue contrast, gamma, bias field and noise, and the head is
    moved by a random rigid transform.
    """
    shape = BRATS_SHAPE
    out_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    out_aff[:3, 3] = np.asarray(_BRATS_CENTRE_MM) - 2.0 * (np.asarray(shape) - 1) / 2.0
    angles = rng.uniform(-12.0, 12.0, size=3)
    shift = rng.uniform(-8.0, 8.0, size=3)
    rig = rigid_matrix(angles, shift)  # template world -> case world
    # output index -> template index
    m = np.linalg.inv(tmpl_affine) @ np.linalg.inv(rig) @ out_aff

    # --- anatomy: deform the template (sampling grid in template index space)
    ts = tuple(int(s) for s in tmpl.shape[1:])
    vox = float(abs(tmpl_affine[0, 0]))
    idx = index_grid(ts)  # (*T, 3)
    centre = torch.as_tensor(np.linalg.inv(tmpl_affine) @ np.array([0.0, -18.0, 12.0, 1.0]), dtype=torch.float32)[:3]
    head_scale = rng.uniform(0.92, 1.08, size=3)
    coarse_mm, fine_mm = float(rng.uniform(3.0, 6.0)), float(rng.uniform(1.0, 2.0))
    disp = (_symmetric_displacement(rng, ts, 4, coarse_mm, vox) + _symmetric_displacement(rng, ts, 9, fine_mm, vox))
    vent_factor = float(rng.uniform(0.8, 1.6))  # > 1: larger ventricles (atrophy), < 1: smaller
    vent_c = torch.as_tensor(np.linalg.inv(tmpl_affine) @ np.array([0.0, -8.0, 14.0, 1.0]), dtype=torch.float32)[:3]
    rel = idx - vent_c
    bump = torch.exp(-(rel * vox).pow(2).sum(-1) / (2 * 18.0**2))[..., None]
    src = centre + (idx - centre) / torch.as_tensor(head_scale, dtype=torch.float32)
    src = src - (1.0 - 1.0 / vent_factor) * rel * bump + disp
    anat = resample(tmpl, src)  # (4, *T): deformed t1, gm, wm, mask
    t1, gm, wm, brain = anat[0], anat[1], anat[2], anat[3]
    csf = (brain - gm - wm).clamp(min=0.0)

    # --- tumour in template world (RAS: +x is the patient's right)
    lesion: dict[str, Any] = {"centre": [math.nan] * 3, "core_radius_mm": 0.0, "oedema_radius_mm": 0.0,
                              "axes_scale": [math.nan] * 3}
    ncr = torch.zeros_like(t1)
    ed = torch.zeros_like(t1)
    et = torch.zeros_like(t1)
    if side != "none":
        sign = 1.0 if side == "right" else -1.0
        rc = float(rng.uniform(4.0, 8.0) if size == "small" else rng.uniform(9.0, 16.0))
        ro = rc * float(rng.uniform(1.3, 2.0))
        for _ in range(100):  # a centre inside the brain, the whole oedema on one side of the plane
            c = np.array([sign * rng.uniform(max(15.0, ro + 3.0), max(45.0, ro + 8.0)), rng.uniform(-60.0, 25.0),
                          rng.uniform(-5.0, 40.0)])
            ijk = np.round(np.linalg.inv(tmpl_affine) @ np.append(c, 1.0))[:3].astype(int)
            if np.all(ijk >= 0) and np.all(ijk < np.array(ts)) and float(brain[tuple(ijk)]) > 0.5 \
                    and float(csf[tuple(ijk)]) < 0.5:
                break
        world = idx @ torch.as_tensor(tmpl_affine[:3, :3].T, dtype=torch.float32) + \
            torch.as_tensor(tmpl_affine[:3, 3], dtype=torch.float32)
        axes_scale = rng.uniform(0.75, 1.25, size=3)
        d = (((world - torch.as_tensor(c, dtype=torch.float32)) / torch.as_tensor(axes_scale, dtype=torch.float32))
             ** 2).sum(-1).sqrt()
        lobes = 1.0 + 0.22 * smooth_noise(rng, ts, 12).clamp(-2.0, 2.0)  # lobulated outline
        d = d / lobes
        rim = float(rng.uniform(0.25, 0.5))  # enhancing rim thickness, share of the core radius
        core = d <= rc
        et = (core & (d > (1.0 - rim) * rc)).float()
        ncr = (d <= (1.0 - rim) * rc).float()
        ed = ((d <= ro) & ~core).float() * (brain > 0.3).float()
        lesion = {"centre": [float(v) for v in c], "core_radius_mm": rc, "oedema_radius_mm": ro,
                  "axes_scale": [float(v) for v in axes_scale], "rim_share": rim}
    # warp anatomy + lesion parts into the case grid in one call
    stack = torch.stack([t1, gm, wm, csf, ncr, ed, et])[None]
    out = warp(stack, torch.as_tensor(m, dtype=torch.float32), out_shape=shape)[0]
    t1o, gmo, wmo, csfo = out[0], out[1], out[2], out[3]
    ncro, edo, eto = (out[4] > 0.5).float(), (out[5] > 0.5).float(), (out[6] > 0.5).float()
    ncro, edo = ncro * (1 - eto), edo * (1 - eto) * (1 - ncro)
    lesion_any = (ncro + edo + eto).clamp(max=1.0)
    t1o = t1o / max(float(t1o.max()), 1e-6)

    def w(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    contrast = {  # per-subject tissue contrast of each pseudo-modality
        "t1": {"template": w(0.6, 1.0), "wm": w(0.0, 0.3), "gm": w(0.0, 0.2), "csf": w(0.0, 0.1)},
        "t2": {"wm": w(0.25, 0.45), "gm": w(0.5, 0.7), "csf": w(0.85, 1.15)},
        "flair": {"wm": w(0.45, 0.65), "gm": w(0.7, 0.9), "csf": w(0.05, 0.2)},
        "lesion": {"t1_core": w(0.5, 0.7), "t1_oedema": w(0.15, 0.35), "rim": w(0.6, 1.1),
                   "t2": w(0.75, 0.95), "flair": w(0.85, 1.1)},
    }
    c1, c2, cf, cl = contrast["t1"], contrast["t2"], contrast["flair"], contrast["lesion"]
    t1_base = c1["template"] * t1o + c1["wm"] * wmo + c1["gm"] * gmo + c1["csf"] * csfo
    t1_les = t1_base * (1 - cl["t1_core"] * ncro - cl["t1_oedema"] * edo)
    mods = {
        "t1": t1_les,
        "t1ce": t1_les + cl["rim"] * eto,
        "t2": (c2["wm"] * wmo + c2["gm"] * gmo + c2["csf"] * csfo) * (1 - lesion_any) + lesion_any * (cl["t2"] + 0.1 * ncro),
        "flair": (cf["wm"] * wmo + cf["gm"] * gmo + cf["csf"] * csfo) * (1 - lesion_any)
        + lesion_any * (cl["flair"] - 0.5 * ncro),
    }
    arrays = []
    gains = {}
    for name in ("t1", "t1ce", "t2", "flair"):
        v = mods[name].clamp(min=0.0)
        gamma = float(rng.uniform(0.8, 1.25))
        gain = float(rng.uniform(600.0, 1400.0))
        noise = float(rng.uniform(0.005, 0.025))
        v = v.pow(gamma) * smooth_field(rng, shape, float(rng.uniform(0.05, 0.2))) * gain
        v = v + torch.as_tensor(rng.normal(0.0, noise * gain, size=shape), dtype=torch.float32).abs() * (v > 0)
        arrays.append(np.clip(v.numpy(), 0, 32000).astype(np.int16))
        gains[name] = {"gain": gain, "gamma": gamma, "noise": noise}
    seg = (ncro * 1 + edo * 2 + eto * 4).numpy().astype(np.uint8)  # BraTS 2021 labels

    # true mid-sagittal plane: template x = 0 moved by the rigid transform (the deformation keeps it)
    n = rig[:3, :3] @ np.array([1.0, 0.0, 0.0])
    offset = float(n @ rig[:3, 3])
    truth = {
        "side": side, "size": size if side != "none" else "none",
        "rotation_deg": [float(v) for v in angles], "translation_mm": [float(v) for v in shift],
        "plane_normal": [float(v) for v in n], "plane_offset_mm": offset,
        "lesion_centre_template_mm": lesion["centre"], "lesion_radius_mm": lesion["core_radius_mm"],
        "oedema_radius_mm": lesion["oedema_radius_mm"],
        "lesion_centre_mm": ([float(v) for v in (rig @ np.append(lesion["centre"], 1.0))[:3]]
                             if side != "none" else [math.nan] * 3),
        "lesion_voxels": int((seg > 0).sum()), "enhancing_voxels": int((seg == 4).sum()),
        "head_scale": [float(v) for v in head_scale], "deformation_mm": {"coarse": coarse_mm, "fine": fine_mm},
        "ventricle_factor": vent_factor, "intensity": gains, "contrast": contrast,
    }
    return arrays, seg, out_aff, truth


def build_brats(root: Path, n: int, rng: np.random.Generator) -> tuple[list[str], list[dict[str, Any]]]:
    """Write ``n`` cases under ``root/BraTS2021``.

    Returns:
        ``(files relative to root, one ground-truth record per case)``.
    """
    data, aff = _load_mni()
    tmpl = torch.from_numpy(data.copy())
    files: list[str] = []
    truth: list[dict[str, Any]] = []
    for i in range(n):
        side = "none" if i % 3 == 2 else ("left" if (i % 3 == 0) == (i % 2 == 0) else "right")
        size = "small" if (i // 3) % 2 == 0 else "large"
        case = f"BraTS2021_{i:05d}"
        arrays, seg, out_aff, t = _brats_case(rng, tmpl, aff, side, size)
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
