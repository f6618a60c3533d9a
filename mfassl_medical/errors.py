"""Errors raised for bad medical input (unreadable files, wrong shapes, broken tables).

Every class is a :class:`MedicalDataError` (itself a :class:`mfassl.errors.DataError`, a
``ValueError``), so code that skips bad samples by catching ``MedicalDataError`` recognises all of
them. The message starts with the offending file; ``.path`` and ``.reason`` hold the two parts, and
each subclass keeps the details (row, column, values, shapes) as attributes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from mfassl.errors import DataError

__all__ = [
    "MedicalDataError",
    "TableError",
    "LabelValueError",
    "ImageMismatchError",
    "ImageTooLargeError",
    "CorruptImageError",
    "DatasetLayoutError",
]


class MedicalDataError(DataError):
    """A medical file or table cannot be used (see :class:`mfassl.errors.DataError`)."""


class _Detailed(MedicalDataError):
    """A :class:`MedicalDataError` with keyword details that survive pickling (DataLoader workers)."""

    _fields: tuple[str, ...] = ()

    def __init__(self, message: str, path: str | os.PathLike | None = None, **details: Any) -> None:
        for name in self._fields:
            setattr(self, name, details.pop(name, None))
        if details:
            raise TypeError(f"{type(self).__name__} got unknown detail(s) {sorted(details)}")
        super().__init__(message, path)

    def __reduce__(self):
        return (_rebuild, (type(self), self.reason, self.path, {f: getattr(self, f) for f in self._fields}))


def _rebuild(cls: type, reason: str, path: str | None, details: dict[str, Any]) -> MedicalDataError:
    return cls(reason, path, **details)


class TableError(_Detailed):
    """A CSV table is malformed: a cut-off or over-long row, a duplicated column, a bad cell, no rows.

    Attributes:
        row: the 1-based line number of the row as an editor shows it (1 = the header), or None.
        column: the column name, or None.
        value: the offending cell text, or None.
    """

    _fields = ("row", "column", "value")


class LabelValueError(_Detailed):
    """A label map holds values outside the documented label set (or non-integer values).

    Attributes:
        values: the offending values (sorted, at most a few).
        allowed: the allowed values.
    """

    _fields = ("values", "allowed")


class ImageMismatchError(_Detailed):
    """Images that must share a grid do not: spatial shapes or affines differ.

    Attributes:
        shapes: ``{file: shape}`` of the files compared (or the two shapes).
        reference: the file the others were compared against.
    """

    _fields = ("shapes", "reference")


class ImageTooLargeError(_Detailed):
    """A file's header claims more voxels than the voxel budget allows (refused before reading the data).

    Attributes:
        shape: the shape the header claims.
        voxels: the number of voxels it claims.
        budget: the voxel budget in force.
    """

    _fields = ("shape", "voxels", "budget")


class CorruptImageError(MedicalDataError):
    """A file cannot be read: truncated, corrupt, or not an image."""


class DatasetLayoutError(MedicalDataError):
    """A data set folder does not have the expected layout (e.g. a case folder holding no NIfTI)."""


def format_values(values: Sequence[Any], limit: int = 8) -> str:
    """``[7, 255]`` or ``[1, 2, ..., 99] (120 values)``: a short list for messages."""
    vals = list(values)
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals[:limit])
    return f"[{shown}{', ...' if len(vals) > limit else ''}]" + (f" ({len(vals)} values)" if len(vals) > limit else "")
