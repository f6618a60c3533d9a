"""A dataset wrapper that skips (and counts) bad samples, and the search for the data error behind a failure.

* :class:`SkipBadSamples` wraps any dataset for long runs: a sample whose loading raises one of
  ``skip_on`` is replaced by the next good one, logged with a warning and counted in ``skipped``;
  past ``max_bad_fraction`` of the samples it stops with :class:`TooManyBadSamples` naming the files.
* :func:`find_medical_error` finds the :class:`~mfassl_medical.errors.MedicalDataError` inside the
  exception chain that MONAI's ``Compose`` and ``DataLoader`` wrap around it.

The loading transforms that raise those errors (``SafeLoadImage``, ``CheckImage``...) are in
:mod:`mfassl_medical.transforms.loading`.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any, Callable, Mapping

from torch.utils.data import Dataset

from mfassl_medical.errors import MedicalDataError

__all__ = ["SkipBadSamples", "TooManyBadSamples", "find_medical_error", "item_source"]

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

    Args:
        dataset: any map-style dataset (MONAI ``Dataset``, ``CacheDataset``, ``PersistentDataset``...).
        skip_on: exception types that mark a sample as bad.
        max_consecutive: give up (raise) after this many bad samples in a row.
        on_skip: optional callback ``(index, exception)``.
        max_bad_fraction: the largest share of bad samples, in ``[0, 1]``, a run accepts (None: no limit;
            0: the first bad sample stops it).

    Attributes:
        skipped: number of skipped reads so far (all processes; a bad sample read in every epoch counts
            every time).
        failures: ``[(index, path, reason), ...]`` seen in this process.
    """

    def __init__(self, dataset: Dataset, skip_on: tuple[type[BaseException], ...] = (MedicalDataError,),
                 max_consecutive: int = 16, on_skip: Callable[[int, BaseException], None] | None = None,
                 max_bad_fraction: float | None = None) -> None:
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
        """The source file(s) of every distinct bad sample so far."""
        return [self.describe(i) for i in self.bad_indices]

    def summary(self) -> dict[str, Any]:
        """``{"bad_samples", "bad_fraction", "max_bad_fraction", "bad_files", "skipped_reads"}`` for a report."""
        bad = self.bad_indices
        return {"bad_samples": len(bad), "bad_fraction": len(bad) / max(1, len(self)),
                "max_bad_fraction": self.max_bad_fraction, "bad_files": [self.describe(i) for i in bad],
                "skipped_reads": self.skipped}

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
                               n_bad, n)
                if self.on_skip is not None:
                    self.on_skip(i, bad)
                if self.max_bad_fraction is not None and n_bad > self.max_bad_fraction * n:
                    files = self.bad_files()
                    shown = "; ".join(files[:20]) + (f"; ... ({len(files) - 20} more)" if len(files) > 20 else "")
                    raise TooManyBadSamples(
                        f"{n_bad} of {n} samples ({100.0 * n_bad / n:.2f}%) could not be used, more than "
                        f"max_bad_fraction {self.max_bad_fraction:g} allows; fix or remove them, or raise "
                        f"max_bad_fraction. Bad files: {shown}. Last error: {reason}") from bad
                i = (i + 1) % n
        raise MedicalDataError(f"{self.max_consecutive} bad samples in a row from index {index}; last: {last}")
