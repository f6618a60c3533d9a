"""A dataset wrapper that skips (and counts) bad samples, and the search for the data error behind a failure.

* :class:`SkipBadSamples` wraps any dataset for long runs: a sample whose loading raises one of
  ``skip_on`` is replaced by the next good one, logged with a warning and counted in ``skipped``;
  past ``max_bad_fraction`` of the samples it stops with :class:`TooManyBadSamples` naming the files.
* :class:`DataList` is a data list (a ``list`` of data dictionaries) that also names the source items a
  reader left out of it as unusable (a BraTS case folder lacking a modality, a DICOM-only case folder):
  :class:`SkipBadSamples` counts them as bad samples, so they are named in a run's report and count toward
  ``max_bad_fraction``.
* :func:`find_medical_error` finds the :class:`~mfassl_medical.errors.MedicalDataError` inside the
  exception chain that MONAI's ``Compose`` and ``DataLoader`` wrap around it.

The loading transforms that raise those errors (``SafeLoadImage``, ``CheckImage``...) are in
:mod:`mfassl_medical.transforms.loading`.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any, Callable, Iterable, Mapping

from torch.utils.data import Dataset

from mfassl_medical.errors import MedicalDataError

__all__ = ["SkipBadSamples", "TooManyBadSamples", "find_medical_error", "item_source", "DataList",
           "excluded_items"]

logger = logging.getLogger(__name__)


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


class DataList(list):
    """A data list that also names what its reader left out as unusable.

    It is a plain ``list`` of data dictionaries (MONAI datasets take it as it is); :attr:`excluded` holds one
    ``{"source": path, "reason": text}`` per source item that could not become a data dictionary (e.g. a BraTS
    case folder lacking a modality). :class:`SkipBadSamples` counts those as bad samples.

    Args:
        items: the data dictionaries.
        excluded: the items left out, ``{"source", "reason"}`` each.
    """

    def __init__(self, items: Iterable[Any] = (), excluded: Iterable[Mapping[str, Any]] = ()) -> None:
        super().__init__(items)
        self.excluded: list[dict[str, str]] = [{"source": str(e["source"]), "reason": str(e["reason"])}
                                               for e in excluded]


def excluded_items(data: Any) -> list[dict[str, str]]:
    """The ``excluded`` entries of a :class:`DataList` (``[]`` for any other sequence)."""
    return list(getattr(data, "excluded", None) or [])


class TooManyBadSamples(MedicalDataError):
    """More bad samples than a run allows (:attr:`SkipBadSamples.max_bad_fraction`); the message names them."""


def item_source(item: Any) -> str | None:
    """The source file(s) of a data-list item, as text (``;`` between the files of a multi-file image)."""
    if not isinstance(item, Mapping):
        return None
    src = item.get("source", item.get("image"))
    if isinstance(src, (list, tuple)):
        return ";".join(map(str, src))
    return None if src is None else str(src)


class SkipBadSamples(Dataset):
    """Wrap a dataset so that a bad sample is skipped in a long run: logged, counted, never silent.

    ``wrapped[i]`` returns ``dataset[i]``; when that raises an exception whose chain contains one of
    ``skip_on`` (by default :class:`MedicalDataError`), the failure is logged with a warning naming the
    file and the reason, counted in :attr:`skipped`, recorded in :attr:`failures` (this process only),
    and the next index is tried (wrapping around) up to ``max_consecutive`` times. Other exceptions
    propagate. The counter and the set of bad indices are shared with ``DataLoader`` worker processes.

    With ``max_bad_fraction`` set, a run stops once more than that share of the distinct samples has turned
    out bad: :class:`TooManyBadSamples` (a ``MedicalDataError``) names the count, the share, the limit and
    the files. ``DataLoader`` re-raises it in the main process, so the run ends with that error (and exit
    code 1), not in the middle of a worker.

    Items the reader already left out (``excluded``, e.g. :attr:`DataList.excluded` of the data list) are bad
    samples from the start: they count in :attr:`bad_files`, :meth:`summary` and toward ``max_bad_fraction``
    over ``len(dataset) + len(excluded)`` samples; when they alone exceed it, the constructor raises.

    Args:
        dataset: any map-style dataset (MONAI ``Dataset``, ``CacheDataset``, ``PersistentDataset``...).
        skip_on: exception types that mark a sample as bad.
        max_consecutive: give up (raise) after this many bad samples in a row.
        on_skip: optional callback ``(index, exception)``.
        max_bad_fraction: the largest share of bad samples, in ``[0, 1]``, a run accepts (None: no limit;
            0: the first bad sample stops it).
        excluded: ``{"source", "reason"}`` of the items the reader left out of the data list (default: the
            wrapped dataset's ``data.excluded`` when it is a :class:`DataList`).

    Attributes:
        skipped: number of skipped reads so far (all processes; a bad sample read in every epoch counts
            every time).
        failures: ``[(index, path, reason), ...]`` seen in this process.
    """

    def __init__(self, dataset: Dataset, skip_on: tuple[type[BaseException], ...] = (MedicalDataError,),
                 max_consecutive: int = 16, on_skip: Callable[[int, BaseException], None] | None = None,
                 max_bad_fraction: float | None = None,
                 excluded: Iterable[Mapping[str, Any]] | None = None) -> None:
        self.dataset = dataset
        self.skip_on = tuple(skip_on)
        self.max_consecutive = int(max_consecutive)
        self.on_skip = on_skip
        if max_bad_fraction is not None:
            max_bad_fraction = float(max_bad_fraction)
            if not 0.0 <= max_bad_fraction <= 1.0:
                raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}.")
        self.max_bad_fraction = max_bad_fraction
        ctx = multiprocessing.get_context()
        self._count = ctx.Value("i", 0)
        self._bad = ctx.Array("b", max(1, len(dataset)), lock=True)  # type: ignore[arg-type]
        self.failures: list[tuple[int, str | None, str]] = []
        if excluded is None:
            excluded = excluded_items(getattr(dataset, "data", None))
        self.excluded: list[dict[str, str]] = [{"source": str(e["source"]), "reason": str(e["reason"])}
                                               for e in excluded]
        if self.excluded and self.max_bad_fraction is not None:
            self._check_limit(len(self.excluded), self.excluded[-1]["reason"], None)

    @property
    def skipped(self) -> int:
        return int(self._count.value)

    @property
    def bad_indices(self) -> list[int]:
        """The distinct indices found bad so far (all processes)."""
        with self._bad.get_lock():
            flags = bytes(self._bad.get_obj())  # type: ignore[attr-defined]
        return [i for i, f in enumerate(flags[: len(self)]) if f]

    def describe(self, index: int) -> str:
        """The source of item ``index`` (from the wrapped dataset's data list) or ``index N``."""
        data = getattr(self.dataset, "data", None)
        try:
            src = item_source(data[index]) if data is not None else None
        except Exception:  # a data list without that index
            src = None
        if src is None:
            src = next((p for i, p, _ in self.failures if i == index and p), None)
        return src or f"index {index}"

    def bad_files(self) -> list[str]:
        """The source file(s) of every distinct bad sample so far (the excluded items first)."""
        return [e["source"] for e in self.excluded] + [self.describe(i) for i in self.bad_indices]

    @property
    def total(self) -> int:
        """Samples the limit is measured over: the dataset's and the excluded ones."""
        return len(self) + len(self.excluded)

    def summary(self) -> dict[str, Any]:
        """``{"bad_samples", "bad_fraction", "max_bad_fraction", "bad_files", "skipped_reads", "excluded"}`` for a
        report; ``bad_samples`` and ``bad_fraction`` count the excluded items too (over :attr:`total`)."""
        n_bad = len(self.bad_indices) + len(self.excluded)
        return {"bad_samples": n_bad, "bad_fraction": n_bad / max(1, self.total),
                "max_bad_fraction": self.max_bad_fraction, "bad_files": self.bad_files(),
                "skipped_reads": self.skipped, "excluded": [dict(e) for e in self.excluded]}

    def _check_limit(self, n_bad: int, reason: str, cause: BaseException | None) -> None:
        """Raise :class:`TooManyBadSamples` when ``n_bad`` of :attr:`total` exceeds ``max_bad_fraction``."""
        n = self.total
        if self.max_bad_fraction is None or n_bad <= self.max_bad_fraction * n:
            return
        files = self.bad_files()
        shown = "; ".join(files[:20]) + (f"; ... ({len(files) - 20} more)" if len(files) > 20 else "")
        raise TooManyBadSamples(
            f"{n_bad} of {n} samples ({100.0 * n_bad / n:.2f}%) could not be used, more than "
            f"max_bad_fraction {self.max_bad_fraction:g} allows; fix or remove them, or raise "
            f"max_bad_fraction. Bad files: {shown}. Last error: {reason}") from cause

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _mark(self, index: int) -> int:
        with self._bad.get_lock():
            self._bad[index] = 1
            return sum(bytes(self._bad.get_obj())[: len(self)])  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        i = int(index) % max(1, n)
        last: BaseException | None = None
        for _ in range(max(1, min(self.max_consecutive, n))):
            try:
                return self.dataset[i]
            except Exception as e:
                bad = find_medical_error(e, self.skip_on)
                if bad is None or isinstance(bad, TooManyBadSamples):
                    raise
                last = bad
                with self._count.get_lock():
                    self._count.value += 1
                n_bad = self._mark(i)
                path = getattr(bad, "path", None)
                reason = getattr(bad, "reason", str(bad))
                self.failures.append((i, path, reason))
                logger.warning("skipping bad sample %d (%s): %s [bad samples so far: %d of %d]", i, path, reason,
                               n_bad + len(self.excluded), self.total)
                if self.on_skip is not None:
                    self.on_skip(i, bad)
                self._check_limit(n_bad + len(self.excluded), reason, bad)
                i = (i + 1) % n
        raise MedicalDataError(f"{self.max_consecutive} bad samples in a row from index {index}; last: {last}")
