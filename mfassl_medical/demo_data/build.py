"""Building the demo data: :func:`build_demo_data` (built once, then reused) and :func:`dataset_dir_or_demo`
(the bundles' "``dataset_dir`` unset means the demo data")."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from filelock import FileLock

from mfassl_medical.demo_data.brain import build_brats
from mfassl_medical.demo_data.chest import FINDINGS, build_chexpert
from mfassl_medical.demo_data.store import (
    DEMO_VERSION,
    GENERATOR,
    DemoPaths,
    check_target,
    default_demo_root,
    install_build,
    lock_path,
    manifest_matches,
    write_readme,
    write_truth,
)

__all__ = ["build_demo_data", "dataset_dir_or_demo"]

logger = logging.getLogger(__name__)


def build_demo_data(root: str | os.PathLike | None = None, n_brats: int = 12, n_chexpert: int = 48, seed: int = 0,
                    force: bool = False, findings: str = "demo") -> DemoPaths:
    """Build (or reuse) the synthetic demo data; see :mod:`mfassl_medical.demo_data` for the layout.

    Args:
        root: target folder (default :func:`default_demo_root`).
        n_brats: number of brain cases (0 = none).
        n_chexpert: number of chest images (0 = none).
        seed: random seed; the same seed gives the same files.
        force: rebuild even when a matching build exists.
        findings: the chest findings, ``"demo"`` (small or large, clearly visible) or ``"graded"`` (four sizes x
            three densities, down to barely visible; the reflection benchmark's set):
            see :func:`~mfassl_medical.demo_data.chest.build_chexpert`.

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
    if findings not in FINDINGS:
        raise ValueError(f"findings must be one of {FINDINGS}, got {findings!r}.")
    from_env = root is None and bool(os.environ.get("MFASSL_DEMO_DIR"))
    root = Path(root).expanduser() if root is not None else default_demo_root()
    paths = DemoPaths.at(root)
    want = {"version": DEMO_VERSION, "seed": int(seed), "n_brats": int(n_brats), "n_chexpert": int(n_chexpert),
            "findings": str(findings)}
    if not force and manifest_matches(paths, want):
        logger.debug("demo data at %s is up to date", root)
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    check_target(root, paths, from_env)  # refuse a foreign folder before anything is written
    # several processes (torchrun ranks, a bundle and its server) may ask at once: one builds, the others wait
    # and reuse its build; the lock lives in the system's temporary folder, never beside the user's files
    with FileLock(lock_path(root)):
        if not force and manifest_matches(paths, want):
            return paths
        have = check_target(root, paths, from_env)
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
        try:
            files: list[str] = []
            rng = np.random.default_rng(seed)
            rng_b, rng_c = (np.random.default_rng(s) for s in rng.integers(0, 2**31, size=2))
            if n_brats > 0:
                f, truth = build_brats(tmp, n_brats, rng_b)
                write_truth(tmp / "brats_truth.csv", truth)
                files += f + ["brats_truth.csv", "brats_truth.json"]
            if n_chexpert > 0:
                f, truth = build_chexpert(tmp, n_chexpert, rng_c, findings)
                write_truth(tmp / "chexpert_truth.csv", truth)
                files += f + ["chexpert_truth.csv", "chexpert_truth.json"]
            files.append(write_readme(tmp, seed, n_brats, n_chexpert))
            manifest = dict(want, files=files, build_seconds=round(time.perf_counter() - t0, 2),
                            generator=GENERATOR, synthetic=True)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            install_build(root, tmp, have, manifest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built demo data at %s in %.1f s (%d BraTS cases, %d chest images)", root,
                time.perf_counter() - t0, n_brats, n_chexpert)
    return paths


def dataset_dir_or_demo(dataset_dir: str | os.PathLike | None, part: str) -> Path:
    """``dataset_dir`` as a path, or (None or ``""``) the ``part`` folder of the demo data, built on first use.

    Args:
        dataset_dir: the bundle's ``dataset_dir`` option.
        part: ``"brats"`` (the BraTS root) or ``"chexpert"`` (the CheXpert folder) of :class:`DemoPaths`.

    The fallback is logged (INFO), never silent.
    """
    if part not in ("brats", "chexpert"):
        raise ValueError(f"part must be 'brats' or 'chexpert', got {part!r}.")
    if dataset_dir not in (None, ""):
        return Path(dataset_dir)
    folder = getattr(build_demo_data(), part)
    logger.info("dataset_dir unset: using the synthetic demo data at %s", folder)
    return folder
