"""Errors raised for bad face input (unreadable images, wrong landmark counts, broken tables)."""

from __future__ import annotations

from mfassl.errors import DataError

__all__ = ["FaceDataError", "NoFaceFound"]


class FaceDataError(DataError):
    """A face image, landmark file or table cannot be used (see :class:`mfassl.errors.DataError`)."""


class NoFaceFound(FaceDataError):
    """The landmark source found no face in an image (the image is skipped and counted)."""
