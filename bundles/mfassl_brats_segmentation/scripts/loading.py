"""Inference over a folder of cases that names the one file at fault and goes on with the other cases.

Torch and MONAI only (MONAI Label's venv imports this bundle without ``mfassl``):

* :class:`CheckedLoadImaged` is MONAI's ``LoadImaged`` (a subclass, so MONAI Label still wraps it as its own
  loader) whose failure names the one modality file that cannot be read (each file is read alone to find it)
  and which refuses NaN/Inf voxels naming the modality file that holds them (a NaN spreads through the
  intensity normalisation and the network into a meaningless label map). It raises :class:`BadCaseError`.
* :class:`SkipBadCases` is the ``dataset`` of ``configs/inference.json``: it runs the preprocessing case by
  case; a case that fails (a :class:`BadCaseError`, any reader error, or a case folder the data list could not
  use: a missing modality, DICOM only) is logged at ERROR naming the case and the file, listed in
  ``<report_dir>/bad_cases.csv`` and skipped, and the other cases are segmented. When no case is left it raises.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, apply_transform
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["BadCaseError", "CheckedLoadImaged", "SkipBadCases", "BAD_CASES_FILE"]

logger = logging.getLogger(__name__)

# What SkipBadCases writes into its report_dir when a case was skipped: case, source, reason. (A comment, not an
# attribute docstring: the model zoo's check-docstring-first hook allows one module-level string.)
BAD_CASES_FILE = "bad_cases.csv"


class BadCaseError(ValueError):
    """A case that cannot be segmented; ``path`` is the file (or folder) at fault, ``reason`` what is wrong."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = str(reason)
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.path))


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None and isinstance(e, RuntimeError):
        e = e.__cause__
    return e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` that names the modality file at fault: unreadable, truncated, or holding NaN/Inf.

    Arguments are those of MONAI's ``LoadImaged``. A key may hold one file (a 4D NIfTI, modalities last) or the
    list of modality files stacked as channels.

    Raises:
        BadCaseError: naming the file that cannot be read (each file of a list is read alone to find it), or
            the file whose voxels include NaN/Inf (``path`` is that file; for a 4D file the channel is named).
    """

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        sources = {key: data[key] for key in self.key_iterator(dict(data))}
        try:
            d = super().__call__(data, reader)
        except Exception as e:  # readers raise EOFError, zlib.error, RuntimeError, ...
            key = next(iter(sources), None)
            raise self._blame(sources.get(key), e) from e
        for key, src in sources.items():
            self._check_finite(d[key], src)
        return d

    def _blame(self, source: Any, error: BaseException) -> BadCaseError:
        """The error naming the one file of ``source`` that cannot be read alone."""
        files = [source] if isinstance(source, (str, os.PathLike)) else list(source or [])
        single = LoadImage(image_only=True)
        if len(files) > 1:
            for f in files:
                try:
                    single(f)
                except Exception as e:
                    cause = _root_cause(e)
                    return BadCaseError(f"cannot read the image ({_one_line(cause)}); the file may be corrupt, "
                                        f"truncated or not an image (the case's other files read)", f)
        cause = _root_cause(error)
        return BadCaseError(f"cannot read the image ({_one_line(cause)}); the file may be corrupt, truncated or not "
                            f"an image", ", ".join(map(str, files)) or None)

    @staticmethod
    def _check_finite(img: Any, source: Any) -> None:
        t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            return
        files = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        for c in range(int(t.shape[0])):
            bad = ~torch.isfinite(t[c])
            if bool(bad.any()):
                n_nan = int(torch.isnan(t[c]).sum())
                where = (str(files[c]) if len(files) == int(t.shape[0]) else str(files[0]))
                channel = "" if len(files) == int(t.shape[0]) else f" in channel {c}"
                raise BadCaseError(f"image has {int(bad.sum())} non-finite values ({n_nan} NaN){channel} of "
                                   f"{t[c].numel()}", where)


def _find_bad_case(e: BaseException) -> BadCaseError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, BadCaseError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class SkipBadCases(IterableDataset):
    """The cases of a data list, preprocessed one by one; a case that fails is named, listed and skipped.

    Args:
        data: data dicts (``image``, ``case``; from :func:`scripts.data.inference_datalist`). An item with an
            ``error`` entry is a case folder the data list could not use (its ``image`` is the folder).
        transform: the preprocessing (``configs/inference.json``'s ``preprocessing``).
        report_dir: where ``bad_cases.csv`` goes (the bundle's ``output_dir``); None writes none.

    Attributes:
        bad: ``[{"case", "source", "reason"}, ...]`` of the cases skipped by the last full iteration.

    Raises (at the end of an iteration):
        RuntimeError: no case could be preprocessed; the message names the first bad cases.
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], transform: Callable | None = None,
                 report_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.data = list(data)
        self.transform = transform
        self.report_dir = None if report_dir in (None, "") else str(report_dir)
        self.bad: list[dict[str, str]] = []

    def _skip(self, item: Mapping[str, Any], source: Any, reason: str) -> None:
        case = str(item.get("case", ""))
        self.bad.append({"case": case, "source": str(source), "reason": reason})
        logger.error("case %s skipped: %s: %s", case, source, reason)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        shard = range(len(self.data)) if info is None else range(info.id, len(self.data), info.num_workers)
        self.bad = []
        good = 0
        for i in shard:
            item = self.data[i]
            if "error" in item:
                self._skip(item, item.get("image"), str(item["error"]))
                continue
            try:
                out = apply_transform(self.transform, dict(item)) if self.transform is not None else dict(item)
            except Exception as e:
                bad = _find_bad_case(e)
                if bad is not None:
                    self._skip(item, bad.path, bad.reason)
                else:
                    image = item.get("image")
                    files = ", ".join(map(str, image)) if isinstance(image, (list, tuple)) else str(image)
                    self._skip(item, files, _one_line(_root_cause(e)))
                continue
            good += 1
            yield out
        self._report(len(shard), good, info is None)

    def _report(self, total: int, good: int, main_process: bool) -> None:
        path = os.path.join(self.report_dir, BAD_CASES_FILE) if self.report_dir is not None else None
        if path is not None and main_process:
            if self.bad:
                os.makedirs(self.report_dir, exist_ok=True)
                with open(path, "w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=["case", "source", "reason"])
                    writer.writeheader()
                    writer.writerows(self.bad)
            elif os.path.isfile(path) and _is_own_report(path):  # an earlier run's list no longer holds
                os.remove(path)
        if self.bad:
            shown = "; ".join(f"{b['case']} ({b['source']}: {b['reason']})" for b in self.bad[:10])
            where = f" (listed in {os.path.join(self.report_dir, BAD_CASES_FILE)})" if self.report_dir else ""
            if good == 0:
                raise RuntimeError(f"none of the {total} case(s) could be read{where}: {shown}")
            logger.warning("segmented %d of %d case(s); %d skipped%s: %s", good, total, len(self.bad), where, shown)
        else:
            logger.info("segmented %d case(s)", good)


def _is_own_report(path: str) -> bool:
    """Whether ``path`` is a ``bad_cases.csv`` this class wrote (its header), so removing it loses nothing else."""
    try:
        with open(path, newline="") as fh:
            return fh.readline().strip() == "case,source,reason"
    except (OSError, UnicodeDecodeError):
        return False
