"""What the pretraining bundles' JSON configs name: the training dataset, batch preparation, and (re-exported
from their homes) the data lists, the run history and the end-of-run report.

The bundles (``bundles/mfassl_brats_pretrain``, ``bundles/mfassl_chexpert_pretrain``) build their data
with MONAI dictionary transforms (load, orient, resample, estimate the symmetry axis, canonicalise, resize),
so images reach the trainer with their axis on the centre line/plane; :func:`prepare_canonical_batch` hands
them to :class:`~mfassl.method.MFASSL` with ``axes=None`` (the centre).

Homes of the re-exported names: the data lists :func:`~mfassl_medical.data.brats.brats_pretrain_datalist` and
:func:`~mfassl_medical.data.chexpert.chexpert_pretrain_datalist`, :func:`~mfassl_medical.axes_file.attach_axes`,
:class:`~mfassl_medical.history.RunHistory`, :func:`~mfassl_medical.pretrain_report.write_report` and
:func:`~mfassl_medical.pretrain_report.bad_sample_report`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from monai.data import Dataset

from mfassl.options import as_float, as_int, is_unset
from mfassl_medical.axes_file import attach_axes
from mfassl_medical.data.brats import brats_pretrain_datalist
from mfassl_medical.data.cache import SafeCacheDataset, SharedPersistentDataset, preprocessing_hash
from mfassl_medical.data.chexpert import chexpert_pretrain_datalist
from mfassl_medical.data.safe import SkipBadSamples, excluded_items
from mfassl_medical.history import RunHistory
from mfassl_medical.pretrain_report import bad_sample_report, write_report

__all__ = [
    "brats_pretrain_datalist",
    "chexpert_pretrain_datalist",
    "attach_axes",
    "CACHE_KINDS",
    "default_num_workers",
    "resolve_cache_kind",
    "default_cache_dir",
    "pretrain_dataset",
    "bad_sample_report",
    "prepare_canonical_batch",
    "RunHistory",
    "write_report",
]

logger = logging.getLogger(__name__)


CACHE_KINDS = ("auto", "memory", "disk", "none")


def default_num_workers(dataset_dir: str | None = None) -> int:
    """DataLoader workers: 0 for the demo data (cached in memory, workers only add start-up time),
    ``min(8, CPUs)`` for a real ``dataset_dir``."""
    return 0 if is_unset(dataset_dir) else min(8, os.cpu_count() or 1)


def resolve_cache_kind(cache: str, dataset_dir: str | None = None) -> str:
    """``"memory"`` | ``"disk"`` | ``"none"`` for the ``cache`` option (``"auto"``: memory for the demo data,
    disk for a real ``dataset_dir``).

    Raises:
        ValueError: naming the option for anything but auto, memory, disk or none.
    """
    kind = str(cache).strip().lower()
    if kind not in CACHE_KINDS:
        raise ValueError(f"option 'cache': {cache!r} is not one of {', '.join(CACHE_KINDS)}.")
    if kind == "auto":
        return "memory" if is_unset(dataset_dir) else "disk"
    return kind


def default_cache_dir(output_dir: str, transform: Any) -> Path:
    """``<output_dir>/../cache/<hash of the preprocessing>``: beside the run folder, so runs with other
    output folders under the same parent and every rank share it; a change of the preprocessing gets a new
    folder."""
    return Path(output_dir).expanduser().resolve().parent / "cache" / preprocessing_hash(transform)


def pretrain_dataset(data: Sequence[dict[str, Any]], transform: Any, cache: str = "auto",
                     dataset_dir: str | None = None, output_dir: str = "runs/pretrain", cache_dir: str | None = None,
                     cache_rate: float = 1.0, num_workers: int = 0,
                     max_bad_fraction: float | None = 0.01) -> Any:
    """The training dataset of a pretraining bundle: cached preprocessing that skips and counts bad samples.

    Args:
        data: the data list (:func:`chexpert_pretrain_datalist`, :func:`brats_pretrain_datalist`).
        transform: the deterministic preprocessing (``train#preprocessing``; random transforms after the
            first one are applied on every read).
        cache: ``"memory"`` (MONAI ``CacheDataset``: everything computed before the first step and kept in RAM;
            fastest for the small demo set), ``"disk"`` (``PersistentDataset``: each item computed lazily the
            first time a DataLoader worker needs it and kept as a file, memory flat in the data-set size),
            ``"none"`` (recomputed every read) or ``"auto"`` (memory for the demo data, disk for a real
            ``dataset_dir``).
        dataset_dir: the bundle's ``dataset_dir`` (decides ``"auto"``).
        output_dir: the run folder; the default disk cache is :func:`default_cache_dir`.
        cache_dir: the disk cache folder (shared across runs, ranks and nodes; None: the default).
        cache_rate: share of items ``CacheDataset`` keeps (memory cache).
        num_workers: ``CacheDataset`` caching threads (memory cache).
        max_bad_fraction: the largest share of unreadable samples the run accepts (skipped, counted, logged
            and listed in the report) before it stops with an error naming them; None: no limit. The items
            the reader left out of ``data`` (a :class:`~mfassl_medical.data.safe.DataList`'s ``excluded``: BraTS
            case folders lacking a modality) count as bad samples.

    Returns:
        a :class:`~mfassl_medical.data.safe.SkipBadSamples` around the cached dataset.
    """
    kind = resolve_cache_kind(cache, dataset_dir)
    limit = None if is_unset(max_bad_fraction) else as_float(max_bad_fraction, "max_bad_fraction", low=0.0,
                                                                  high=1.0)
    workers = as_int(num_workers, "num_workers", low=0)
    if not len(data):
        raise ValueError("the training data list is empty.")
    if kind == "memory":
        base = SafeCacheDataset(data=list(data), transform=transform,
                                cache_rate=as_float(cache_rate, "cache_rate", low=0.0, high=1.0),
                                num_workers=workers, progress=False)
    elif kind == "disk":
        folder = Path(cache_dir).expanduser() if not is_unset(cache_dir) else default_cache_dir(output_dir,
                                                                                                   transform)
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("disk cache of the preprocessing: %s (%d items)", folder, len(data))
        base = SharedPersistentDataset(data=list(data), transform=transform, cache_dir=folder)
    else:
        base = Dataset(data=list(data), transform=transform)
    return SkipBadSamples(base, max_bad_fraction=limit, excluded=excluded_items(data))


def prepare_canonical_batch(batch: Any, device: torch.device | str) -> tuple[torch.Tensor, None]:
    """``(images, None)``: canonicalised images, so the symmetry axis is the centre."""
    images = batch["image"] if isinstance(batch, dict) else batch[0]
    return torch.as_tensor(images).to(device, non_blocking=True).float(), None
