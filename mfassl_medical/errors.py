"""Errors raised for bad medical input (unreadable files, wrong shapes, broken tables)."""

from __future__ import annotations

from mfassl.errors import DataError

__all__ = ["MedicalDataError"]


class MedicalDataError(DataError):
    """A medical file or table cannot be used (see :class:`mfassl.errors.DataError`)."""
