"""Errors raised for bad face input (unreadable images, wrong landmark counts, broken tables)."""

from __future__ import annotations

import os

__all__ = ["FaceDataError", "NoFaceFound"]


class FaceDataError(ValueError):
    """A file cannot be used: the message names the file and what is wrong.

    Args:
        message: what is wrong.
        path: the offending file (image, landmark file, table), if there is one.

    Attributes:
        path: the offending file as a string, or None.
        reason: the message without the path prefix.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.reason, self.path))


class NoFaceFound(FaceDataError):
    """The landmark source found no face in an image (the image is skipped and counted)."""
