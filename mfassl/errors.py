"""The error raised for bad input data, shared by the medical and face packages."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """A file or table cannot be used: the message names the file and what is wrong.

    Args:
        message: what is wrong.
        path: the offending file (image, annotation, table, folder), if there is one.

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
