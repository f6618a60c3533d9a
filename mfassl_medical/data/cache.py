"""Datasets for the deterministic preprocessing at full data-set size: a shared on-disk cache and a
memory cache that survives bad files.

* :class:`SharedPersistentDataset` is MONAI's ``PersistentDataset`` (the deterministic transforms up to the
  first random one, computed lazily in whichever process asks for an item, stored as one ``.pt`` file per
  item) with the write made safe for several processes and nodes sharing one cache folder: MONAI 1.6.1
  writes each item into a ``tempfile.TemporaryDirectory()`` (the system temp folder) and ``shutil.move``\\s
  it into ``cache_dir``; when the two are on different file systems (a node-local ``/tmp`` and a shared
  cache) that move is a copy, and another rank can read a half-written file (``torch.load`` then raises a
  ``RuntimeError`` that MONAI re-raises). Here each item is written with :func:`mfassl.files.atomic_write`
  (a temporary file of a unique name inside ``cache_dir``, renamed into place: atomic on POSIX), and an
  unreadable cache file is recomputed, never fatal. An item's cache file is named after the item *and* the
  identity of the files it names (:func:`file_identity`: size and modification time), so an image replaced by
  another file of the same name is computed again instead of being read back stale.
* :class:`SafeCacheDataset` is MONAI's ``CacheDataset`` whose caching step records a bad sample (an image
  whose loading raises :class:`~mfassl_medical.errors.MedicalDataError`) instead of failing the whole
  cache; reading that item raises the error again, so :class:`~mfassl_medical.data.safe.SkipBadSamples`
  skips it like any other bad sample.
* :func:`preprocessing_hash` names a cache folder after the transforms and their settings, so a change of
  the preprocessing never reads stale items.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from copy import deepcopy
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait, Transform
from monai.utils import convert_to_tensor

from mfassl.files import atomic_write
from mfassl_medical.data.safe import find_medical_error
from mfassl_medical.errors import MedicalDataError

__all__ = ["preprocessing_hash", "file_identity", "SharedPersistentDataset", "SafeCacheDataset", "BAD_SAMPLE_KEY"]

logger = logging.getLogger(__name__)

#: The key of the record :class:`SafeCacheDataset` keeps in place of a bad sample.
BAD_SAMPLE_KEY = "_mfassl_bad_sample"

_SIMPLE = (str, int, float, bool, type(None))


def _describe(obj: Any, depth: int = 0) -> Any:
    """A JSON-ready description of a transform (class and simple settings, nested transforms included)."""
    if isinstance(obj, _SIMPLE):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
        return obj.tolist() if np.size(obj) < 1000 else f"array{tuple(np.shape(obj))}"
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if depth > 6 or not hasattr(obj, "__dict__"):
        return name
    fields = {k: _describe(v, depth + 1) for k, v in sorted(vars(obj).items())
              if not k.startswith("_") and k not in ("R", "lazy", "overrides", "logger_name", "log_stats")}
    return {"class": name, **fields}


def _paths(value: Any) -> list[str]:
    """The strings inside a data-list item's values that look like paths (absolute, or holding a separator)."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return [text] if isinstance(text, str) and (os.path.isabs(text) or os.sep in text) else []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    return []


def _stat_key(path: str) -> list[Any]:
    st = os.stat(path)
    return [path, int(st.st_size), int(st.st_mtime_ns)]


def file_identity(item: Any) -> str:
    """A hex digest of the identity of every file a data-list item names: path, size and ``st_mtime_ns``.

    Paths are the item's string values (and those inside lists and dicts) that are absolute or hold a path
    separator and exist; a folder (a DICOM series) stands for the files directly inside it. A file replaced
    by another one (a new size or modification time) changes the digest; a path that does not exist adds
    nothing (loading it fails anyway).

    Args:
        item: a data dictionary (``{"image": path or [paths], ...}``) or a path.
    """
    entries: list[Any] = []
    for path in _paths(item):
        try:
            if os.path.isdir(path):
                entries.append([path, [_stat_key(os.path.join(path, n)) for n in sorted(os.listdir(path))
                                       if os.path.isfile(os.path.join(path, n))]])
            elif os.path.exists(path):
                entries.append(_stat_key(path))
        except OSError:  # vanished in between: loading it will say so
            continue
    return hashlib.md5(json.dumps(entries).encode("utf-8"), usedforsecurity=False).hexdigest()


def preprocessing_hash(transform: Callable | Sequence[Callable], length: int = 12) -> str:
    """A short hex digest of the deterministic part of ``transform`` (its transforms up to the first random
    one, with their settings): equal for equal preprocessing, different when a size, spacing or reader changes.

    Args:
        transform: a MONAI ``Compose`` (or a list of transforms).
        length: digest length in hex digits.
    """
    items = transform.flatten().transforms if isinstance(transform, Compose) else list(
        transform if isinstance(transform, (list, tuple)) else [transform])
    kept = []
    for t in items:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        kept.append(_describe(t))
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


class SharedPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cache folder may be shared by ranks, nodes and runs.

    Items are computed lazily by the process that first needs them (DataLoader workers included), converted
    to tensors as MONAI stores them (a computed item and a cached one have the same types), written to
    ``cache_dir/<item hash><file identity><preprocessing hash>.pt`` with :func:`mfassl.files.atomic_write`
    (readers see the whole file or none; a full or read-only cache folder is logged, ``no space left on
    <file>``, and the item stays uncached), and read back with ``torch.load(weights_only=True)``. The file
    identity (:func:`file_identity`: size and modification time of the files the item names) makes an image
    replaced under the same name a cache miss, so it is computed from the new file (the old item's file stays in
    the folder until the folder is removed). Two processes computing the same item at once both write; the last
    rename wins and both files are identical. A cache file that cannot be read (cut short by a full disk, a
    killed copy) is logged, removed and recomputed.

    Args:
        data: the data list (dicts of paths and precomputed values; they are hashed for the file name).
        transform: the preprocessing ``Compose``; everything before its first random transform is cached.
        cache_dir: the shared cache folder (created when missing).
        kwargs: further ``PersistentDataset`` arguments (``hash_func``, ``hash_transform``, ...).

    Attributes:
        computed: items this process computed (cache misses), for tests and benchmarks.
        loaded: items this process read from the cache.
    """

    def __init__(self, data: Sequence, transform: Sequence[Callable] | Callable, cache_dir: str | os.PathLike,
                 **kwargs: Any) -> None:
        super().__init__(data=data, transform=transform, cache_dir=cache_dir, **kwargs)
        self.computed = 0
        self.loaded = 0

    def _cachecheck(self, item_transformed: Any) -> Any:
        assert self.cache_dir is not None
        # the item's files' identity is part of the name: a file replaced under the same name is recomputed
        name = (self.hash_func(item_transformed).decode("utf-8") + file_identity(item_transformed)[:16]
                + self.transform_hash)
        hashfile = self.cache_dir / f"{name}.pt"
        if hashfile.is_file():
            try:
                out = torch.load(hashfile, weights_only=self.weights_only)
                self.loaded += 1
                return out
            except FileNotFoundError:  # removed by another process in between
                pass
            except Exception as e:  # torn or foreign file: recompute, never fail the run on the cache
                logger.warning("cache file %s cannot be read (%s: %s); recomputing it", hashfile,
                               type(e).__name__, e)
                try:
                    hashfile.unlink()
                except OSError:
                    pass
        out = self._pre_transform(deepcopy(item_transformed))  # keep the original hashed
        # what is returned is what is stored, so a batch mixing fresh and cached items collates
        out = convert_to_tensor(out, convert_numeric=False, track_meta=self.track_meta)
        self.computed += 1
        try:  # a cache item can be recomputed: no fsync
            atomic_write(hashfile, lambda f: torch.save(out, f, pickle_protocol=self.pickle_protocol), durable=False)
        except OSError as e:  # read-only or full cache: train on, uncached
            logger.warning("cannot write the cache file %s (%s); the item stays uncached", hashfile, e)
        return out


class SafeCacheDataset(CacheDataset):
    """``CacheDataset`` that keeps going past bad files while it caches.

    A sample whose deterministic preprocessing raises :class:`MedicalDataError` (anywhere in the exception
    chain) is cached as a small record ``{BAD_SAMPLE_KEY: {"path", "reason"}}`` and logged; reading it
    raises the same ``MedicalDataError`` again, so wrap the dataset in
    :class:`~mfassl_medical.data.safe.SkipBadSamples` to skip, count and report it. Other errors propagate.
    Arguments are those of ``CacheDataset``.
    """

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as e:
            bad = find_medical_error(e)
            if bad is None:
                raise
            path = getattr(bad, "path", None)
            reason = getattr(bad, "reason", str(bad))
            logger.warning("bad sample %d while caching (%s): %s", idx, path, reason)
            return {BAD_SAMPLE_KEY: {"path": path, "reason": reason}}

    def _transform(self, index: int) -> Any:
        cache_index = None
        if self.hash_as_key:
            key = self.hash_func(self.data[index])
            if key in self._hash_keys:
                cache_index = self._hash_keys.index(key)
        elif index % len(self) < self.cache_num:
            cache_index = index % len(self)
        if cache_index is not None and self._cache is not None:
            item = self._cache[cache_index]
            if item is None:  # runtime caching
                item = self._cache[cache_index] = self._load_cache_item(cache_index)
            if isinstance(item, dict) and BAD_SAMPLE_KEY in item:
                info = item[BAD_SAMPLE_KEY]
                raise MedicalDataError(info["reason"], info["path"])
        return super()._transform(index)
