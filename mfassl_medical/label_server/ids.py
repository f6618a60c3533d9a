"""Image ids and label tags a MONAI Label request may name, and the errors the server answers 400 / 404 for.

MONAI Label's local datastore builds file paths as ``<studies>/<image id><ext>`` and
``<studies>/labels/<tag>/<image id><ext>``, and its ``infer`` opens ``image`` directly when it is an existing path.
An id is therefore accepted only when it names one file inside the studies folder:

- a non-empty string of at most 255 characters;
- no path separator (``/`` or ``\\``), no ``..``, no NUL or other control character;
- not ``.``, not absolute, no drive (``C:``) prefix.

This module is pure Python (no monailabel import) so the project's tests can check the rules directly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InvalidIdError", "NotFoundError", "MAX_ID_LENGTH", "id_problem", "check_id"]

MAX_ID_LENGTH = 255


class InvalidIdError(ValueError):
    """A request named an id, tag or parameter value the server refuses (HTTP 400)."""


class NotFoundError(LookupError):
    """A request named a model, image or label the server does not have (HTTP 404)."""


def id_problem(value: Any) -> str | None:
    """Why ``value`` is not an acceptable image id / label tag, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if "\x00" in value:
        return "contains a NUL character"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if ".." in value:
        return "contains '..'"
    if value == ".":
        return "is '.'"
    if len(value) >= 2 and value[1] == ":" and value[0].isalpha():
        return "starts with a drive letter"
    return None


def check_id(value: Any, what: str = "image id") -> str:
    """``value`` if it is an acceptable id (see the module docstring).

    Args:
        value: the id from the request.
        what: what it is, for the error (``"image id"``, ``"label tag"``).

    Raises:
        InvalidIdError: naming ``what``, the value and the rule it breaks.
    """
    problem = id_problem(value)
    if problem is not None:
        raise InvalidIdError(f"{what} {value!r} {problem}: ids name one file inside the studies folder "
                             "(no path separators, no '..', no absolute paths, no NUL).")
    return value
