"""Loading that fails loudly on bad files, and a dataset wrapper that skips (and counts) bad samples.

Bad input is never passed on silently:

* :func:`check_image` / :class:`CheckImage` raise :class:`~mfassl_medical.errors.MedicalDataError`
  for wrong dimensionality, NaN/Inf values and constant images, naming the file;
* :class:`SafeLoadImaged` wraps MONAI ``LoadImage`` so a missing, corrupt or truncated NIfTI/DICOM/PNG
  raises a ``MedicalDataError`` naming the file and the reader's complaint;
* :class:`SkipBadSamples` wraps any dataset for long runs: a sample whose loading raises one of
  ``skip_on`` is replaced by the next good one, logged with a warning and counted in ``skipped``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform
from torch.utils.data import Dataset

from mfassl_medical.errors import MedicalDataError

__all__ = [
    "check_image",
    "CheckImage",
    "CheckImaged",
    "CheckImageD",
    "CheckImageDict",
    "SafeLoadImage",
    "SafeLoadImaged",
    "SafeLoadImageD",
    "SafeLoadImageDict",
    "SkipBadSamples",
    "find_medical_error",
]

logger = logging.getLogger(__name__)


def _source(img: Any, path: Any = None) -> str | None:
    if path is not None:
        return str(path)
    if isinstance(img, MetaTensor):
        src = img.meta.get("filename_or_obj")
        if src is not None and src != "":
            return str(src)
    return None


def check_image(img: Any, path: str | os.PathLike | Sequence | None = None, spatial_dims: int | None = None,
                channel_first: bool = True, allow_constant: bool = False) -> Any:
    """Raise for an image that cannot be used; return it unchanged otherwise.

    Args:
        img: ``(C, *S)`` (``channel_first``) or ``(*S)`` array or tensor.
        path: the file it came from, for the message (default: the MetaTensor's ``filename_or_obj``).
        spatial_dims: expected number of spatial dims (2 or 3); None skips the check.
        channel_first: whether ``img`` has a leading channel dim.
        allow_constant: accept images with a single value (e.g. empty label maps).

    Raises:
        MedicalDataError: wrong dimensionality, empty, non-finite values, or constant.
    """
    src = _source(img, path)
    shape = tuple(img.shape)
    spatial = shape[1:] if channel_first else shape
    if spatial_dims is not None and len(spatial) != spatial_dims:
        raise MedicalDataError(f"expected {spatial_dims} spatial dims{' after the channel dim' if channel_first else ''}, "
                               f"got shape {shape}", src)
    if int(np.prod(shape)) == 0:
        raise MedicalDataError(f"image is empty, shape {shape}", src)
    t = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_nan = int(torch.isnan(t).sum())
            raise MedicalDataError(f"image has {int(bad.sum())} non-finite values ({n_nan} NaN) of {t.numel()}", src)
    if not allow_constant:
        lo, hi = float(t.min()), float(t.max())
        if hi - lo <= 0.0:
            raise MedicalDataError(f"image is constant (every value is {lo:g})", src)
    return img


class CheckImage(Transform):
    """Transform form of :func:`check_image` (returns the image unchanged or raises)."""

    def __init__(self, spatial_dims: int | None = None, channel_first: bool = True,
                 allow_constant: bool = False) -> None:
        self.spatial_dims = spatial_dims
        self.channel_first = channel_first
        self.allow_constant = allow_constant

    def __call__(self, img: Any, path: Any = None) -> Any:
        return check_image(img, path, self.spatial_dims, self.channel_first, self.allow_constant)


class CheckImaged(MapTransform):
    """Dictionary form of :class:`CheckImage`."""

    def __init__(self, keys: KeysCollection, spatial_dims: int | None = None, channel_first: bool = True,
                 allow_constant: bool | Sequence[bool] = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from monai.utils import ensure_tuple_rep

        self.spatial_dims = spatial_dims
        self.channel_first = channel_first
        self.allow_constant = ensure_tuple_rep(allow_constant, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, const in self.key_iterator(d, self.allow_constant):
            check_image(d[key], None, self.spatial_dims, self.channel_first, const)
        return d


class SafeLoadImage(Transform):
    """MONAI ``LoadImage`` that turns every failure into a :class:`MedicalDataError` naming the file,
    then checks the result with :func:`check_image`.

    Args:
        reader: passed to ``LoadImage`` (None: MONAI picks by suffix; NIfTI -> Nibabel, DICOM -> ITK).
        ensure_channel_first: add/move the channel dim first (output ``(C, *S)``).
        spatial_dims: expected spatial dims after loading (2 or 3); None skips the check.
        allow_constant: accept constant images (label maps of healthy cases).
        check: run :func:`check_image` at all.
        kwargs: further ``LoadImage`` arguments (``dtype``, ``simple_keys``, ...).

    Output: a MetaTensor ``(C, *S)`` with its affine (``ensure_channel_first=True``).
    """

    def __init__(self, reader: Any = None, ensure_channel_first: bool = True, spatial_dims: int | None = None,
                 allow_constant: bool = False, check: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("image_only", True)
        self.loader = LoadImage(reader=reader, ensure_channel_first=ensure_channel_first, **kwargs)
        self.spatial_dims = spatial_dims
        self.allow_constant = allow_constant
        self.check = check

    def __call__(self, filename: Any) -> Any:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        shown = names[0] if len(names) == 1 else names
        for n in names:
            p = Path(n)
            if not p.exists():
                raise MedicalDataError("file not found", n)
            if p.is_file() and p.stat().st_size == 0:
                raise MedicalDataError("file is empty (0 bytes)", n)
        try:
            img = self.loader(filename)
        except Exception as e:  # readers raise many types (RuntimeError, EOFError, zlib.error, InvalidDicomError...)
            cause = e
            while cause.__cause__ is not None and isinstance(cause, RuntimeError):
                cause = cause.__cause__
            raise MedicalDataError(f"cannot read the image ({type(cause).__name__}: {cause}); the file may be "
                                   f"corrupt, truncated or not an image", shown if not isinstance(shown, list)
                                   else ", ".join(map(str, shown))) from e
        if self.check:
            check_image(img, shown if not isinstance(shown, list) else ", ".join(map(str, shown)),
                        self.spatial_dims, True, self.allow_constant)
        return img


class SafeLoadImaged(MapTransform):
    """Dictionary form of :class:`SafeLoadImage` (use in place of ``LoadImaged`` + ``EnsureChannelFirstd``).

    Args:
        keys: keys holding a path (or a list of paths, e.g. the 4 BraTS modalities, stacked as channels).
        reader, ensure_channel_first, spatial_dims, check: see :class:`SafeLoadImage`.
        allow_constant: per key or one for all (True for label maps).
        allow_missing_keys: do not raise when a key is absent.
        kwargs: further ``LoadImage`` arguments.

    Raises:
        MedicalDataError: naming the file, for a missing/corrupt/truncated file, wrong dims, NaN/Inf or
            constant image. Wrap the dataset in :class:`SkipBadSamples` to skip such samples in a run.
    """

    def __init__(self, keys: KeysCollection, reader: Any = None, ensure_channel_first: bool = True,
                 spatial_dims: int | None = None, allow_constant: bool | Sequence[bool] = False,
                 check: bool = True, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        from monai.utils import ensure_tuple_rep

        consts = ensure_tuple_rep(allow_constant, len(self.keys))
        self.loaders = {k: SafeLoadImage(reader, ensure_channel_first, spatial_dims, c, check, **kwargs)
                        for k, c in zip(self.keys, consts)}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key])
        return d


def find_medical_error(exc: BaseException, types: tuple[type[BaseException], ...] = (MedicalDataError,)
                       ) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s ``__cause__``/``__context__`` chain (MONAI's
    ``Compose`` wraps transform errors in ``RuntimeError``), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, types):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class SkipBadSamples(Dataset):
    """Wrap a dataset so that a bad sample is skipped in a long run: logged, counted, never silent.

    ``wrapped[i]`` returns ``dataset[i]``; when that raises an exception whose chain contains one of
    ``skip_on`` (by default :class:`MedicalDataError`), the failure is logged with a warning naming the
    file and the reason, counted in :attr:`skipped`, recorded in :attr:`failures` (this process only),
    and the next index is tried (wrapping around) up to ``max_consecutive`` times. Other exceptions
    propagate. The counter is shared with ``DataLoader`` worker processes.

    Args:
        dataset: any map-style dataset (MONAI ``Dataset``, ``CacheDataset``, ``PersistentDataset``...).
        skip_on: exception types that mark a sample as bad.
        max_consecutive: give up (raise) after this many bad samples in a row.
        on_skip: optional callback ``(index, exception)``.

    Attributes:
        skipped: number of skipped samples so far (all processes).
        failures: ``[(index, path, reason), ...]`` seen in this process.
    """

    def __init__(self, dataset: Dataset, skip_on: tuple[type[BaseException], ...] = (MedicalDataError,),
                 max_consecutive: int = 16, on_skip: Callable[[int, BaseException], None] | None = None) -> None:
        self.dataset = dataset
        self.skip_on = tuple(skip_on)
        self.max_consecutive = int(max_consecutive)
        self.on_skip = on_skip
        self._count = multiprocessing.get_context().Value("i", 0)
        self.failures: list[tuple[int, str | None, str]] = []

    @property
    def skipped(self) -> int:
        return int(self._count.value)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        i = int(index)
        last: BaseException | None = None
        for _ in range(max(1, min(self.max_consecutive, n))):
            try:
                return self.dataset[i]
            except Exception as e:
                bad = find_medical_error(e, self.skip_on)
                if bad is None:
                    raise
                last = bad
                with self._count.get_lock():
                    self._count.value += 1
                path = getattr(bad, "path", None)
                reason = getattr(bad, "reason", str(bad))
                self.failures.append((i, path, reason))
                logger.warning("skipping bad sample %d (%s): %s [skipped so far: %d]", i, path, reason, self.skipped)
                if self.on_skip is not None:
                    self.on_skip(i, bad)
                i = (i + 1) % n
        raise MedicalDataError(f"{self.max_consecutive} bad samples in a row from index {index}; last: {last}")


CheckImageD = CheckImageDict = CheckImaged
SafeLoadImageD = SafeLoadImageDict = SafeLoadImaged
