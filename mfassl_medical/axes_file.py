"""The axes file: every image's precomputed symmetry axis, one JSON object a line.

``python -m mfassl_medical axes`` (:mod:`mfassl_medical.axes_cli`) writes it; the bundles' ``axes_file`` option
reads it. A record is keyed by :func:`axes_key` (the image path relative to the data set folder for CheXpert, the
case folder name for BraTS), so the file stays valid when the data set is mounted elsewhere.
:func:`read_axes_file` gives the records by key (the newest line of a key wins) and :func:`attach_axes` hands
each data-list item its record, which :class:`~mfassl_medical.transforms.EstimateSymmetryAxisd` then uses
instead of estimating.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from mfassl.files import read_json_lines
from mfassl.options import is_unset

__all__ = ["axes_key", "read_axes_file", "attach_axes"]

logger = logging.getLogger(__name__)


def axes_key(dataset_dir: str | os.PathLike, image: str | os.PathLike | Sequence[str], kind: str) -> str:
    """The key an image has in an axes file: its path relative to ``dataset_dir`` (CheXpert; POSIX
    separators) or the name of its case folder (BraTS, ``image`` = the modality files)."""
    if kind == "brats":
        first = image if isinstance(image, (str, os.PathLike)) else image[0]
        return Path(first).parent.name
    root = Path(dataset_dir).expanduser().resolve()
    p = Path(image).expanduser().resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every keyed JSON object of the file; lines that are not JSON are skipped
    with a warning (a write cut short)."""
    for n, rec in read_json_lines(path):
        if isinstance(rec, dict) and "key" in rec:
            yield n, rec


def read_axes_file(path: str | os.PathLike, errors: bool = False) -> dict[str, dict[str, Any]]:
    """The records of an axes file by ``key`` (the newest line of a key wins).

    Args:
        path: the JSON-lines file ``python -m mfassl_medical axes`` wrote.
        errors: also return error records (default: only records with an axis).

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"axes file {p} does not exist; write it with python -m mfassl_medical axes.")
    table: dict[str, dict[str, Any]] = {}
    for _, rec in _read_lines(p):
        if "error" in rec:
            if errors or rec["key"] not in table or "error" in table[rec["key"]]:
                table[rec["key"]] = rec
            continue
        ok = all(k in rec for k in ("normal", "offset")) and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in [*rec["normal"], rec["offset"]])
        if ok:  # only what the readers use: memory stays small for 224k lines
            table[rec["key"]] = {k: rec[k] for k in ("key", "path", "files", "dims", "normal", "offset", "confidence",
                                                     "fallback") if k in rec}
    return table if errors else {k: v for k, v in table.items() if "error" not in v}


def attach_axes(items: list[dict[str, Any]], axes_file: str | None, dataset_dir: str | Path,
                kind: str) -> list[dict[str, Any]]:
    """Give each data-list item found in ``axes_file`` its precomputed world axis.

    Items are matched on :func:`axes_key` (the path relative to ``dataset_dir`` for CheXpert, the case folder
    for BraTS) and get ``image_axis_precomputed`` = ``{"normal", "offset",
    "confidence", "fallback"}``, which :class:`~mfassl_medical.transforms.EstimateSymmetryAxisd` uses instead of
    estimating (the record is part of the item, so a disk cache keys on it). Items not in the file (or with
    an error line) are estimated in the loader; how many is logged.

    Raises:
        FileNotFoundError: naming ``axes_file`` when it does not exist.
    """
    if is_unset(axes_file):
        return items
    table = read_axes_file(str(axes_file))
    found = 0
    for it in items:
        rec = table.get(axes_key(dataset_dir, it["image"], kind))
        if rec is not None:
            it["image_axis_precomputed"] = {"normal": [float(v) for v in rec["normal"]],
                                            "offset": float(rec["offset"]),
                                            "confidence": float(rec.get("confidence", 1.0)),
                                            "fallback": bool(rec.get("fallback", False))}
            found += 1
    missing = len(items) - found
    (logger.warning if missing else logger.info)(
        "axes file %s: %d of %d images have a precomputed axis%s", axes_file, found, len(items),
        f"; the other {missing} are estimated in the loader" if missing else "")
    return items
