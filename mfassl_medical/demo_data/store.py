"""The demo data folder: where it is, its manifest, the build lock, the README and the truth tables.

A folder is the builder's own when its ``manifest.json`` names :data:`GENERATOR` and lists only safe relative
paths; the builder writes only into a missing or empty folder or one of its own, and replaces a build by
removing only the files the old manifest lists (anything else in the folder stays, with a warning). Several
processes asking for one folder at once take turns on a lock file in the system's temporary folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfassl.files import write_text

__all__ = ["DEMO_VERSION", "GENERATOR", "DemoPaths", "default_demo_root", "manifest_matches", "check_target",
           "install_build", "lock_path", "write_truth", "write_readme"]

logger = logging.getLogger(__name__)

DEMO_VERSION = "2"
"""Bump when the generated data changes; a cached build with another version is rebuilt."""


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

    @classmethod
    def at(cls, root: Path) -> "DemoPaths":
        """The paths of a demo folder ``root`` (whether or not it is built)."""
        return cls(root=root, brats=root / "BraTS2021", chexpert=root / "CheXpert-v1.0-small",
                   brats_truth=root / "brats_truth.csv", chexpert_truth=root / "chexpert_truth.csv",
                   manifest=root / "manifest.json", readme=root / "README.md")


def default_demo_root() -> Path:
    """``$MFASSL_DEMO_DIR`` if set, else ``~/.cache/mfassl/demo``."""
    env = os.environ.get("MFASSL_DEMO_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mfassl" / "demo"


GENERATOR = "mfassl_medical.demo_data.build_demo_data"
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
    if not isinstance(have, dict) or have.get("generator") != GENERATOR:
        return None
    files = have.get("files")
    if not isinstance(files, list) or not all(_safe_relpath(f) for f in files):
        return None
    # manifests of earlier versions listed the truth CSVs but not the JSON written beside each
    sidecars = [f[:-4] + ".json" for f in files if f.endswith("_truth.csv") and f[:-4] + ".json" not in files]
    return dict(have, files=files + sidecars)


def manifest_matches(paths: DemoPaths, want: dict[str, Any]) -> bool:
    """Whether ``paths.root`` holds a complete build of this builder whose manifest has the values of ``want``
    (version, seed, sizes) and whose listed files all exist."""
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


def check_target(root: Path, paths: DemoPaths, from_env: bool) -> dict[str, Any] | None:
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


def install_build(root: Path, tmp: Path, have: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
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
    write_text(root / "manifest.json", json.dumps(pending, indent=1))
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


def _flat(rec: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a truth record: nested dicts as ``key_sub``, lists as ``key_0``, ``key_1``..."""
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


def write_truth(path: Path, records: list[dict[str, Any]]) -> None:
    """Write the ground-truth ``records`` as a flat CSV at ``path`` and as JSON beside it (``.json``)."""
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
  density, `size` small (sigma 2.5-5% of the width) or large (7-12%) in `chexpert_truth.csv` (built with
  `findings="graded"`: `size` tiny/small/medium/large (sigma 2.5-4, 4-6, 6-9, 9-13% of the width) x `density`
  faint/moderate/dense (peak 0.25-0.4, 0.4-0.6, 0.6-0.9), centred in the upper or lower mid-lung, `zone`
  upper/lower; the reflection benchmark's set). `Lung Opacity` is 1 for those and 0
  otherwise; `No Finding` is 1 for the clean images; `Support Devices` holds random 1/0/-1/blank values
  only to exercise the uncertainty policies (it means nothing); the other observations are blank.
- `Side` (and `chexpert_truth.csv`): `left`/`right` = the patient's side of the opacity (PA view:
  the patient's left is on the image's right), `none` = no opacity. This is the laterality label.
- `chexpert_truth.csv` / `.json`: per image the transform and the midline `midline_normal_xy` /
  `midline_offset_px` (n.(x, y) = offset with x = column, y = row in pixels: the index order MONAI's
  `LoadImage` gives a PNG). The midline is the base radiograph's best vertical mirror line carried
  through the known transform: accurate to about a pixel, the anatomy itself is not exactly symmetric.
"""


def lock_path(root: Path) -> str:
    """The inter-process lock of building ``root``: a file in the system's temporary folder named by its path."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"mfassl-demo-{digest}.lock")


def write_readme(root: Path, seed: int, n_brats: int, n_chexpert: int) -> str:
    """Write ``root/README.md`` (what the data is and what its labels mean); returns its name in the folder."""
    (root / "README.md").write_text(_README.format(version=DEMO_VERSION, seed=seed, n_brats=n_brats,
                                                   n_chexpert=n_chexpert))
    return "README.md"
