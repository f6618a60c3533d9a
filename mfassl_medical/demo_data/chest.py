"""The chest half of the demo data: CheXpert-layout radiographs from pydicom-data's ``RG1_UNCI.dcm``.

Every image is the one real PA radiograph changed into another patient (habitus, lung shape, diaphragm, heart,
ribs, clavicles), with a synthetic opacity in one lung for two images in three, exposure changes and a known
rotation, scale and shift; ``train.csv`` / ``valid.csv`` carry the CheXpert columns plus ``Side``.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mfassl.geometry import warp
from mfassl_medical.chexpert_columns import CHEXPERT_COLUMNS, CHEXPERT_LABELS
from mfassl_medical.demo_data.synth import index_grid, resample, smooth_field, smooth_noise

__all__ = ["CXR_SIZE", "FINDINGS", "FINDING_DENSITY", "FINDING_SIGMA", "GRADED_SIGMA", "build_chexpert"]

CXR_SIZE = 256
"""Rows and columns of every demo chest image."""

FINDINGS = ("demo", "graded")
"""The finding sets :func:`build_chexpert` draws: ``"demo"`` (small or large, dense enough to see at a glance)
and ``"graded"`` (size x density classes down to the hard end, upper and lower zone of the mid-lung)."""

FINDING_SIGMA: dict[str, tuple[float, float]] = {"small": (0.025, 0.05), "large": (0.07, 0.12)}
"""Blob sigma of the demo findings' size classes, as a share of the radiograph's width."""

GRADED_SIGMA: dict[str, tuple[float, float]] = {
    "tiny": (0.025, 0.04), "small": (0.04, 0.06), "medium": (0.06, 0.09), "large": (0.09, 0.13)}
"""Blob sigma of the graded findings' size classes, as a share of the radiograph's width."""

FINDING_DENSITY: dict[str, tuple[float, float]] = {"faint": (0.25, 0.4), "moderate": (0.4, 0.6),
                                                   "dense": (0.6, 0.9)}
"""Peak opacity (the share of the way from the lung's grey to white) of each graded density class. Fainter and
smaller classes (down to 0.08 and 1.2% of the width) made the findings so rare a feature that 2,400 steps of
pretraining learned lesion presence only +0.04 AUROC over the untrained encoder (bench/RESULTS.md, reflection)."""

GRADED_ROWS = (0.3, 0.62)
"""Row of a graded finding's centre, as a share of the base radiograph's height (upper to lower zone: the
``zone`` column splits at 0.46). Wider ranges reaching the apices and the costophrenic angles (0.2-0.72, and
0.08-0.33 laterally) left lesion presence at chance for the raw pixels and nearly so after 2,400 steps of
pretraining at 48 px (bench/RESULTS.md, reflection)."""
GRADED_LATERAL = (0.13, 0.27)
"""Distance of a graded finding's centre from the midline, as a share of the width (medial to lateral)."""

_GRADED_SIZES = ("tiny", "small", "medium", "large")
_GRADED_DENSITIES = ("faint", "moderate", "dense")

_CXR_BASE = (330, 311)  # the downsampled radiograph (rows, cols) the chest images are cut from


@functools.lru_cache(maxsize=1)
def _load_cxr() -> np.ndarray:
    """The pydicom-data PA chest radiograph, display-corrected (MONOCHROME1 inverted), ``(330, 311)`` in [0, 1]."""
    import pydicom  # imported only when a chest set is built
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


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _patient_chest(rng: np.random.Generator, base: torch.Tensor, base_mid: float, view: str
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The base radiograph changed into another patient, in base coordinates (the midline column stays).

    Body habitus (width and height), lung shape (a smooth displacement odd about the midline), diaphragm
    height (each hemidiaphragm a little differently), heart size (AP views magnify it), rib spacing and
    clavicle overlays mirrored about the midline.
    """
    h, w = base.shape
    yy, xx = index_grid((h, w)).unbind(-1)
    u = (xx - base_mid) / w  # signed distance to the midline, share of the width
    v = yy / h
    width = float(rng.uniform(0.86, 1.14))  # habitus
    height = float(rng.uniform(0.92, 1.08))
    # smooth lung-shape displacement, odd in u (the midline column does not move)
    f = smooth_noise(rng, (h, w), 4, channels=2) * float(rng.uniform(0.015, 0.035)) * w
    fm = f.flip(-1)  # approximately the mirror about the image centre; re-centre on the midline
    shift_cols = int(round(2 * base_mid - (w - 1)))
    fm = torch.roll(fm, shifts=shift_cols, dims=-1)
    dx = 0.5 * (f[0] - fm[0])
    dy = 0.5 * (f[1] + fm[1])
    # diaphragm: the lower lung field moves up or down (each side a little differently)
    dia = float(rng.uniform(-0.07, 0.07)) * h
    dia_lr = float(rng.uniform(-0.015, 0.015)) * h
    low = _smoothstep((v - 0.35) / 0.4)
    dy = dy + (dia + dia_lr * torch.tanh(u / 0.05)) * low
    # heart: radial magnification about its centre (patient's left = image right in a frontal view)
    heart = float(rng.uniform(0.85, 1.25)) * (float(rng.uniform(1.05, 1.15)) if view == "AP" else 1.0)
    hc_x, hc_y = base_mid + 0.05 * w, 0.62 * h
    rx, ry = xx - hc_x, yy - hc_y
    bump = torch.exp(-(rx**2 + ry**2) / (2 * (0.13 * w) ** 2))
    k = (1.0 - 1.0 / heart) * bump
    src_x = base_mid + (xx - base_mid) / width - dx - k * rx
    src_y = (h - 1) / 2.0 + (yy - (h - 1) / 2.0) / height - dy - k * ry
    img = resample(base[None], torch.stack([src_y, src_x], dim=-1), padding_mode="border")[0]
    # ribs and clavicles, mirrored about the midline, inside the lung fields
    au = u.abs()
    lung = _smoothstep((au - 0.04) / 0.05) * _smoothstep((0.42 - au) / 0.06) * _smoothstep((v - 0.12) / 0.08) \
        * _smoothstep((0.8 - v) / 0.1)
    spacing = float(rng.uniform(0.07, 0.11))
    slope = float(rng.uniform(0.25, 0.6))
    phase = float(rng.uniform(0, 2 * math.pi))
    rib_amp = float(rng.uniform(0.02, 0.07))
    ribs = 0.5 * (1 + torch.cos(2 * math.pi * (v - slope * au**1.5) / spacing + phase))
    clav_y, clav_amp = float(rng.uniform(0.14, 0.22)), float(rng.uniform(0.04, 0.12))
    clav = torch.exp(-((v - (clav_y - 0.25 * au)) ** 2) / (2 * 0.012**2)) * _smoothstep((0.3 - au) / 0.08) \
        * _smoothstep((au - 0.02) / 0.03)
    img = (img + rib_amp * ribs * lung + clav_amp * clav).clamp(0.0, 1.0)
    truth = {"view": view, "habitus_width": width, "habitus_height": height, "diaphragm_shift_px": dia,
             "diaphragm_lr_px": dia_lr, "heart_scale": heart, "rib_spacing": spacing, "rib_amplitude": rib_amp,
             "clavicle_row": clav_y}
    return img, truth


def _cxr_image(rng: np.random.Generator, base: torch.Tensor, base_mid: float, side: str, size: str = "large",
               view: str = "PA", density: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One 256 x 256 uint8 image and its truth; coordinates are (x = column, y = row) pixels.

    A different patient (:func:`_patient_chest`), a finding of ``size`` (one to three blobs; sigma as a share
    of the width from :data:`FINDING_SIGMA`, ``"small"`` 2.5-5% or ``"large"`` 7-12%, or with a graded
    ``density`` from :data:`GRADED_SIGMA`, ``"tiny"`` to ``"large"``) and elongation in ONE lung (``side``,
    the patient's side), then exposure (window, gamma, noise), AP magnification and a small rotation, scale
    and shift. ``density`` None draws the peak opacity from 0.3-0.8 (the demo findings); a class of
    :data:`FINDING_DENSITY` draws it from that range and the centre from :data:`GRADED_ROWS` x
    :data:`GRADED_LATERAL` (the graded findings).
    """
    h, w = base.shape
    img, patient = _patient_chest(rng, base, base_mid, view)
    angle = float(rng.uniform(-8.0, 8.0))
    scale = float(rng.uniform(0.95, 1.2))  # base pixels per output pixel
    if view == "AP":
        scale /= float(rng.uniform(1.04, 1.12))  # AP: the source is closer, the chest magnified
    shift = rng.uniform(-0.06, 0.06, size=2) * np.array([w, h])  # (x, y) in base pixels
    # output (row, col) -> base (row, col): centre, rotate, scale, shift
    c_out = (CXR_SIZE - 1) / 2.0
    c_base = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c_base + np.array([shift[1], shift[0]]) - rot @ np.array([c_out, c_out])
    opacity: dict[str, Any] = {"centre_xy": [math.nan, math.nan], "sigma": 0.0, "amp": 0.0, "blobs": 0,
                               "area_px": 0.0, "zone": "none", "lateral": 0.0}
    if side != "none":
        # frontal view: the patient's left lung is on the image's right (higher column)
        sx = 1.0 if side == "left" else -1.0
        graded = density is not None
        lateral = float(rng.uniform(*(GRADED_LATERAL if graded else (0.13, 0.27))))
        cx = base_mid + sx * lateral * w
        cy = rng.uniform(*(GRADED_ROWS if graded else (0.3, 0.62))) * h
        sig = float(rng.uniform(*(GRADED_SIGMA if graded else FINDING_SIGMA)[size])) * w
        amp = float(rng.uniform(*FINDING_DENSITY[density]) if graded else rng.uniform(0.3, 0.8))
        n_blobs = int(rng.integers(1, 4))
        yy, xx = index_grid((h, w)).unbind(-1)
        blob = torch.zeros(h, w)
        for _ in range(n_blobs):
            bx, by = cx + rng.normal(0, 0.5) * sig, cy + rng.normal(0, 0.5) * sig
            theta, elong = rng.uniform(0, math.pi), rng.uniform(1.0, 2.2)
            ct, st = math.cos(theta), math.sin(theta)
            px, py = (xx - bx) * ct + (yy - by) * st, -(xx - bx) * st + (yy - by) * ct
            s1, s2 = sig * math.sqrt(elong), sig / math.sqrt(elong)
            blob = torch.maximum(blob, torch.exp(-(px**2 / (2 * s1**2) + py**2 / (2 * s2**2))))
        img = (img + amp * blob * (1.0 - img)).clamp(0.0, 1.0)
        o = np.linalg.inv(m) @ np.array([cy, cx, 1.0])
        opacity = {"centre_xy": [float(o[1]), float(o[0])], "sigma": float(sig / scale), "amp": amp,
                   "blobs": n_blobs, "area_px": float((blob > 0.5).sum()) / scale**2,
                   "zone": "upper" if cy < 0.46 * h else "lower", "lateral": lateral}
    img = img * smooth_field(rng, (h, w), float(rng.uniform(0.04, 0.12)))
    out = warp(img[None, None], torch.as_tensor(m, dtype=torch.float32), out_shape=(CXR_SIZE, CXR_SIZE),
               padding_mode="zeros")[0, 0]
    lo, hi = float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.88, 1.05))  # exposure window
    g = float(rng.uniform(0.75, 1.35))
    noise = float(rng.uniform(0.004, 0.025))
    out = ((out - lo) / (hi - lo)).clamp(0.0, 1.0).pow(g)
    out = out + torch.as_tensor(rng.normal(0.0, noise, size=out.shape), dtype=torch.float32)
    arr = (out.clamp(0.0, 1.0).numpy() * 255.0 + 0.5).astype(np.uint8)
    # midline: base column base_mid -> output; in (row, col) index space the line n.(r, c) = d
    n_rc = m[:2, :2].T @ np.array([0.0, 1.0])
    d = base_mid - float(np.array([0.0, 1.0]) @ m[:2, 2])
    norm = float(np.linalg.norm(n_rc))
    n_rc, d = n_rc / norm, d / norm
    truth = {
        "side": side, "size": size if side != "none" else "none",
        "density": (density or "demo") if side != "none" else "none", "zone": opacity["zone"],
        "opacity_lateral": opacity["lateral"], "rotation_deg": angle, "scale": scale,
        "shift_xy_px": [float(v) for v in shift], "gamma": g, "window": [lo, hi], "noise": noise,
        # x = column, y = row: the index order of the PNG as MONAI LoadImage returns it, (W, H)
        "midline_normal_xy": [float(n_rc[1]), float(n_rc[0])], "midline_offset_px": float(d),
        "opacity_centre_xy": opacity["centre_xy"], "opacity_sigma_px": opacity["sigma"],
        "opacity_density": opacity["amp"], "opacity_blobs": opacity["blobs"], "opacity_area_px": opacity["area_px"],
        **patient,
    }
    return arr, truth


def build_chexpert(root: Path, n: int, rng: np.random.Generator, findings: str = "demo"
                   ) -> tuple[list[str], list[dict[str, Any]]]:
    """Write ``n`` images and their ``train.csv`` / ``valid.csv`` under ``root/CheXpert-v1.0-small`` (about one
    image in six is a validation image, one patient each).

    Image ``i`` has no finding, a finding in the left or in the right lung as ``i % 3`` is 0, 1 or 2, so the
    sides stay balanced. ``findings="demo"``: small and large findings alternate (``(i // 3) % 2``);
    ``"graded"``: the ``j = i // 3``-th finding of each side has size class ``j % 4`` (tiny, small, medium,
    large) and density class ``(j // 4) % 3`` (faint, moderate, dense), so left and right see the same mix.

    Returns:
        ``(files relative to root, one ground-truth record per image)``.
    """
    if findings not in FINDINGS:
        raise ValueError(f"findings must be one of {FINDINGS}, got {findings!r}.")
    base_np = _load_cxr()
    base_mid = _base_midline(base_np)
    base = torch.from_numpy(base_np.copy())
    ds_root = root / "CheXpert-v1.0-small"
    ds_root.mkdir(parents=True, exist_ok=True)
    n_valid = max(1, n // 6) if n > 1 else 0
    header = [*CHEXPERT_COLUMNS, *CHEXPERT_LABELS, "Side"]
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
            j = i // 3
            if findings == "graded":
                size, density = _GRADED_SIZES[j % 4], _GRADED_DENSITIES[(j // 4) % 3]
            else:
                size, density = ("small" if j % 2 == 0 else "large"), None
            view = "AP" if rng.random() < 0.3 else "PA"
            arr, t = _cxr_image(rng, base, base_mid, side, size, view, density)
            rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view1_frontal.png"
            f = root / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(f)
            files.append(rel)
            labels: dict[str, Any] = {name: "" for name in CHEXPERT_LABELS}
            labels["Lung Opacity"] = 1.0 if side != "none" else 0.0
            labels["No Finding"] = 1.0 if side == "none" else ""
            labels["Support Devices"] = rng.choice(["", 0.0, 1.0, -1.0])  # exercises the uncertainty policy
            rows[split].append([rel, sex, age, "Frontal", view, *[labels[k] for k in CHEXPERT_LABELS], side])
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
