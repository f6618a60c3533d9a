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
import hashlib
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

from filelock import FileLock
import numpy as np
import torch
import torch.nn.functional as F

from mfassl.geometry import warp
from mfassl_medical.data.chexpert import CHEXPERT_LABELS

__all__ = ["DEMO_VERSION", "DemoPaths", "default_demo_root", "build_demo_data", "rigid_matrix"]

logger = logging.getLogger(__name__)

DEMO_VERSION = "2"
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


_GENERATOR = "mfassl_medical.demo_data.build_demo_data"
"""The manifest's ``generator``: what marks a folder as this builder's own."""


def _safe_relpath(rel: Any) -> bool:
    """Whether a manifest entry is a plain relative path inside the folder (no ``..``, not absolute, no NUL)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        return False
    parts = rel.split("/")
    return not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _own_manifest(paths: DemoPaths) -> dict[str, Any] | None:
    """The folder's manifest if this builder wrote it (its ``generator``, a list of safe relative ``files``)."""
    try:
        have = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(have, dict) or have.get("generator") != _GENERATOR:
        return None
    files = have.get("files")
    if not isinstance(files, list) or not all(_safe_relpath(f) for f in files):
        return None
    # manifests of earlier versions listed the truth CSVs but not the JSON written beside each
    sidecars = [f[:-4] + ".json" for f in files if f.endswith("_truth.csv") and f[:-4] + ".json" not in files]
    return dict(have, files=files + sidecars)


def _manifest_matches(paths: DemoPaths, want: dict[str, Any]) -> bool:
    have = _own_manifest(paths)
    if have is None or have.get("complete", True) is not True:
        return False
    if any(have.get(k) != v for k, v in want.items()):
        return False
    return all((paths.root / f).is_file() for f in have["files"])


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _not_ours(root: Path, have: dict[str, Any]) -> list[str]:
    """Entries under ``root`` the manifest does not list: files, links, and folders holding no listed file."""
    listed = set(have["files"]) | {"manifest.json"}
    parents = {"/".join(f.split("/")[:i]) for f in listed for i in range(1, f.count("/") + 1)}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in filenames:
            rel = (here / name).relative_to(root).as_posix()
            if rel not in listed:
                out.append(rel)
        for name in dirnames:
            rel = (here / name).relative_to(root).as_posix()
            if (here / name).is_symlink() or rel not in parents:
                out.append(rel + "/")
        dirnames[:] = [d for d in dirnames if (here / d).relative_to(root).as_posix() in parents
                       and not (here / d).is_symlink()]
    return sorted(out)


def _check_target(root: Path, paths: DemoPaths, from_env: bool) -> dict[str, Any] | None:
    """Refuse a folder the builder did not create; return its own manifest (None: missing or empty folder).

    Raises:
        NotADirectoryError: ``root`` is a file.
        FileExistsError: ``root`` is not empty and holds no manifest of this builder, or its manifest lists a path
            that leads outside it; nothing in it is changed.
    """
    how = ("set MFASSL_DEMO_DIR to another folder" if from_env
           else "pass another root= (or set MFASSL_DEMO_DIR when root is not given)")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"demo data root {root} is a file, not a folder: {how}.")
    if not root.exists():
        return None
    have = _own_manifest(paths)
    if have is None:
        if any(root.iterdir()):
            raise FileExistsError(
                f"demo data folder {root} is not empty and holds no manifest.json written by build_demo_data, so it "
                f"is not the builder's: nothing in it was changed or deleted. Choose an empty or new folder ({how}), "
                "or empty this one yourself.")
        return None
    for rel in have["files"]:
        if not _is_inside((root / rel).parent, root):
            raise FileExistsError(f"demo data folder {root}: its manifest lists {rel!r}, which leads outside the "
                                  f"folder (a link?); nothing was changed. Remove the link or {how}.")
    return have


def _install_build(root: Path, tmp: Path, have: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Move the finished build in ``tmp`` into ``root``, removing only what the old manifest ``have`` lists.

    A missing or empty ``root`` is replaced by ``tmp``; a folder holding exactly the old build is swapped for it;
    one that also holds other entries (the user's) gets per-file replacement: a transitional manifest
    (``complete: false``, listing old and new files) goes in first, then the new files, then the old-only files
    are removed and the final manifest written. The user's entries stay untouched.
    """
    if not root.exists():
        tmp.rename(root)
        return
    if have is None:  # an empty folder
        root.rmdir()
        tmp.rename(root)
        return
    foreign = _not_ours(root, have)
    if not foreign:
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
        return
    old_files, new_files = set(have["files"]), set(manifest["files"])
    clash = sorted(f for f in new_files - old_files if (root / f).exists() or (root / f).is_symlink())
    if clash:
        raise FileExistsError(f"demo data folder {root}: the new build would overwrite {clash[:5]}, which the old "
                              "manifest does not list (the user's?); nothing was changed. Move them or choose another "
                              "root.")
    logger.warning("demo data folder %s also holds %d entr%s not made by build_demo_data (kept): %s", root,
                   len(foreign), "y" if len(foreign) == 1 else "ies", ", ".join(foreign[:5]))
    pending = dict(manifest, files=sorted(old_files | new_files), complete=False)
    (root / "manifest.json").write_text(json.dumps(pending, indent=1))
    for rel in sorted(new_files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, root / rel)
    for rel in sorted(old_files - new_files):
        (root / rel).unlink(missing_ok=True)
        parent = (root / rel).parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    os.replace(tmp / "manifest.json", root / "manifest.json")


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], strength: float, coarse: int = 3) -> torch.Tensor:
    """A smooth multiplicative field ``exp(strength * noise)`` of ``shape`` from a ``coarse``-point random grid."""
    return torch.exp(strength * _smooth_noise(rng, shape, coarse))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], coarse: int = 3, channels: int = 0) -> torch.Tensor:
    """Smooth standard-normal-ish noise: a ``coarse``-point random grid upsampled to ``shape``.

    Returns:
        ``shape`` (``channels = 0``) or ``(channels, *shape)``.
    """
    c = max(channels, 1)
    grid = torch.as_tensor(rng.standard_normal((1, c) + (int(coarse),) * len(shape)), dtype=torch.float32)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    f = F.interpolate(grid, size=tuple(int(s) for s in shape), mode=mode, align_corners=True)[0]
    return f if channels else f[0]


def _resample(vols: torch.Tensor, coords: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``(C, *S)`` at continuous index coordinates ``(*S', D)`` (index order as ``S``), linear."""
    d = coords.shape[-1]
    size = torch.tensor([float(s) for s in vols.shape[1:]])
    norm = 2.0 * coords / (size - 1.0) - 1.0
    grid = norm.flip(-1)[None]  # grid_sample wants (x, y[, z]) = the last index first
    if d != vols.ndim - 1:
        raise ValueError(f"coordinates have {d} components for a volume of {vols.ndim - 1} spatial dims.")
    return F.grid_sample(vols[None], grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)[0]


def _index_grid(shape: Sequence[int]) -> torch.Tensor:
    """``(*shape, D)`` float index coordinates."""
    return torch.stack(torch.meshgrid(*[torch.arange(int(s), dtype=torch.float32) for s in shape], indexing="ij"),
                       dim=-1)


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


def _symmetric_displacement(rng: np.random.Generator, shape: Sequence[int], coarse: int, amp_mm: float,
                            voxel_mm: float) -> torch.Tensor:
    """A smooth displacement ``(*shape, 3)`` in voxels that is mirror-symmetric about the centre of axis 0.

    The x component is odd and the y, z components even under ``i -> X - 1 - i``, so a template that is
    symmetric about that plane stays symmetric (and the plane stays its mid-sagittal plane).
    """
    f = _smooth_noise(rng, shape, coarse, channels=3) * (amp_mm / voxel_mm)  # (3, *S)
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
    shape = _BRATS_SHAPE
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
    idx = _index_grid(ts)  # (*T, 3)
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
    anat = _resample(tmpl, src)  # (4, *T): deformed t1, gm, wm, mask
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
        lobes = 1.0 + 0.22 * _smooth_noise(rng, ts, 12).clamp(-2.0, 2.0)  # lobulated outline
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
        v = v.pow(gamma) * _smooth_field(rng, shape, float(rng.uniform(0.05, 0.2))) * gain
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


def _build_brats(root: Path, n: int, rng: np.random.Generator) -> tuple[list[str], list[dict[str, Any]]]:
    import nibabel as nib

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
    yy, xx = _index_grid((h, w)).unbind(-1)
    u = (xx - base_mid) / w  # signed distance to the midline, share of the width
    v = yy / h
    width = float(rng.uniform(0.86, 1.14))  # habitus
    height = float(rng.uniform(0.92, 1.08))
    # smooth lung-shape displacement, odd in u (the midline column does not move)
    f = _smooth_noise(rng, (h, w), 4, channels=2) * float(rng.uniform(0.015, 0.035)) * w
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
    img = _resample(base[None], torch.stack([src_y, src_x], dim=-1), padding_mode="border")[0]
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
               view: str = "PA") -> tuple[np.ndarray, dict[str, Any]]:
    """One 256 x 256 uint8 image and its truth; coordinates are (x = column, y = row) pixels.

    A different patient (:func:`_patient_chest`), a finding of ``size`` (``"small"``: one to three
    blobs of sigma 2.5-5% of the width; ``"large"``: 7-12%) and random density and elongation in ONE
    lung (``side``, the patient's side), then exposure (window, gamma, noise), AP magnification and a
    small rotation, scale and shift.
    """
    h, w = base.shape
    img, patient = _patient_chest(rng, base, base_mid, view)
    angle = float(rng.uniform(-8.0, 8.0))
    scale = float(rng.uniform(0.95, 1.2))  # base pixels per output pixel
    if view == "AP":
        scale /= float(rng.uniform(1.04, 1.12))  # AP: the source is closer, the chest magnified
    shift = rng.uniform(-0.06, 0.06, size=2) * np.array([w, h])  # (x, y) in base pixels
    # output (row, col) -> base (row, col): centre, rotate, scale, shift
    c_out = (_CXR_SIZE - 1) / 2.0
    c_base = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c_base + np.array([shift[1], shift[0]]) - rot @ np.array([c_out, c_out])
    opacity: dict[str, Any] = {"centre_xy": [math.nan, math.nan], "sigma": 0.0, "amp": 0.0, "blobs": 0,
                               "area_px": 0.0}
    if side != "none":
        # frontal view: the patient's left lung is on the image's right (higher column)
        sx = 1.0 if side == "left" else -1.0
        cx = base_mid + sx * rng.uniform(0.13, 0.27) * w
        cy = rng.uniform(0.3, 0.62) * h
        sig = float(rng.uniform(0.025, 0.05) if size == "small" else rng.uniform(0.07, 0.12)) * w
        amp = float(rng.uniform(0.3, 0.8))
        n_blobs = int(rng.integers(1, 4))
        yy, xx = _index_grid((h, w)).unbind(-1)
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
                   "blobs": n_blobs, "area_px": float((blob > 0.5).sum()) / scale**2}
    img = img * _smooth_field(rng, (h, w), float(rng.uniform(0.04, 0.12)))
    out = warp(img[None, None], torch.as_tensor(m, dtype=torch.float32), out_shape=(_CXR_SIZE, _CXR_SIZE),
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
        "side": side, "size": size if side != "none" else "none", "rotation_deg": angle, "scale": scale,
        "shift_xy_px": [float(v) for v in shift], "gamma": g, "window": [lo, hi], "noise": noise,
        # x = column, y = row: the index order of the PNG as MONAI LoadImage returns it, (W, H)
        "midline_normal_xy": [float(n_rc[1]), float(n_rc[0])], "midline_offset_px": float(d),
        "opacity_centre_xy": opacity["centre_xy"], "opacity_sigma_px": opacity["sigma"],
        "opacity_density": opacity["amp"], "opacity_blobs": opacity["blobs"], "opacity_area_px": opacity["area_px"],
        **patient,
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
            size = "small" if (i // 3) % 2 == 0 else "large"
            view = "AP" if rng.random() < 0.3 else "PA"
            arr, t = _cxr_image(rng, base, base_mid, side, size, view)
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
- Each case is a different head: the template under a global anisotropic scale (0.92-1.08), a smooth
  mirror-symmetric deformation (3-6 mm coarse, 1-2 mm fine: ventricles and folds move) and a
  ventricle enlargement or shrinkage (factor 0.8-1.6), with its own tissue contrast per modality;
  then moved by a random rigid transform (rotations up to 12 degrees about each axis, shifts up to
  8 mm). The deformation keeps the template's symmetry, so the true mid-sagittal plane (in
  `brats_truth.csv`) is the template's x = 0 carried through the rigid transform.
- Two cases in three carry a synthetic tumour in ONE hemisphere (lobulated, random elongation, an
  enhancing rim of random thickness, oedema 1.3-2 times the core radius; `size` small = core radius
  4-8 mm, large = 9-16 mm); every third case (00002, 00005, ...) is healthy (empty `seg`). `seg` uses
  BraTS 2021 labels: 1 necrotic core, 2 oedema, 4 enhancing ring.
- `brats_truth.csv` / `.json`: `case`, `label` (1 = lesion), `side` (`left`/`right`/`none`, the
  patient's side; RAS +x is the patient's right), `rotation_deg_*`, `translation_mm_*`,
  `plane_normal_*` and `plane_offset_mm` (the plane n.x = offset in world mm of the NIfTI affine),
  lesion centre and radius, intensity parameters.

## CheXpert-v1.0-small/ ({n_chexpert} images)
`train.csv`, `valid.csv` with the CheXpert columns (Path, Sex, Age, Frontal/Lateral, AP/PA, the 14
observations) plus `Side`; images `train/patientNNNNN/studyK/view1_frontal.png`, 256 x 256, 8-bit.
- Every image starts from the same radiograph, changed into another "patient": body habitus (width
  and height), lung shape (a smooth deformation mirrored about the midline), diaphragm height (each
  side a little differently), heart size, rib spacing and clavicle overlays; then exposure (window,
  gamma, noise), bias field, AP (three in ten, magnified, `AP/PA` column) or PA, and a small rotation
  (up to 8 degrees), scale and shift. Sex and Age are random.
- Two images in three carry a synthetic opacity in ONE lung: one to three elongated blobs of random
  density, `size` small (sigma 2.5-5% of the width) or large (7-12%) in `chexpert_truth.csv`. `Lung Opacity` is 1 for those and 0
  otherwise; `No Finding` is 1 for the clean images; `Support Devices` holds random 1/0/-1/blank values
  only to exercise the uncertainty policies (it means nothing); the other observations are blank.
- `Side` (and `chexpert_truth.csv`): `left`/`right` = the patient's side of the opacity (PA view:
  the patient's left is on the image's right), `none` = no opacity. This is the laterality label.
- `chexpert_truth.csv` / `.json`: per image the transform and the midline `midline_normal_xy` /
  `midline_offset_px` (n.(x, y) = offset with x = column, y = row in pixels: the index order MONAI's
  `LoadImage` gives a PNG). The midline is the base radiograph's best vertical mirror line carried
  through the known transform: accurate to about a pixel, the anatomy itself is not exactly symmetric.
"""


def _lock_path(root: Path) -> str:
    """The inter-process lock of building ``root``: a file in the system's temporary folder named by its path."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"mfassl-demo-{digest}.lock")


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

    Raises:
        FileExistsError: ``root`` is a non-empty folder without this builder's ``manifest.json`` (the error names
            it); nothing in it is changed. Choose another ``root`` / ``MFASSL_DEMO_DIR``.
        NotADirectoryError: ``root`` is a file.

    Folder policy: the builder writes only into a missing or empty folder or one whose manifest it wrote
    (``generator``). A rebuild removes only the files that manifest lists; anything else in the folder (the user's
    notes, outputs) stays, with a warning naming it.
    """
    from_env = root is None and bool(os.environ.get("MFASSL_DEMO_DIR"))
    root = Path(root).expanduser() if root is not None else default_demo_root()
    paths = _paths(root)
    want = {"version": DEMO_VERSION, "seed": int(seed), "n_brats": int(n_brats), "n_chexpert": int(n_chexpert)}
    if not force and _manifest_matches(paths, want):
        logger.debug("demo data at %s is up to date", root)
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    _check_target(root, paths, from_env)  # refuse a foreign folder before anything is written
    # several processes (torchrun ranks, a bundle and its server) may ask at once: one builds, the others wait
    # and reuse its build; the lock lives in the system's temporary folder, never beside the user's files
    with FileLock(_lock_path(root)):
        if not force and _manifest_matches(paths, want):
            return paths
        have = _check_target(root, paths, from_env)
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
        try:
            files: list[str] = []
            rng = np.random.default_rng(seed)
            rng_b, rng_c = (np.random.default_rng(s) for s in rng.integers(0, 2**31, size=2))
            if n_brats > 0:
                f, truth = _build_brats(tmp, n_brats, rng_b)
                _write_truth(tmp / "brats_truth.csv", truth)
                files += f + ["brats_truth.csv", "brats_truth.json"]
            if n_chexpert > 0:
                (tmp / "CheXpert-v1.0-small").mkdir(parents=True, exist_ok=True)
                f, truth = _build_chexpert(tmp, n_chexpert, rng_c)
                _write_truth(tmp / "chexpert_truth.csv", truth)
                files += f + ["chexpert_truth.csv", "chexpert_truth.json"]
            (tmp / "README.md").write_text(_README.format(version=DEMO_VERSION, seed=seed, n_brats=n_brats,
                                                          n_chexpert=n_chexpert))
            files.append("README.md")
            manifest = dict(want, files=files, build_seconds=round(time.perf_counter() - t0, 2),
                            generator=_GENERATOR, synthetic=True)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            _install_build(root, tmp, have, manifest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built demo data at %s in %.1f s (%d BraTS cases, %d chest images)", root,
                time.perf_counter() - t0, n_brats, n_chexpert)
    return paths
