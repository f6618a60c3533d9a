"""Strict parsing of option values that arrive from configuration files and command lines.

``python -m monai.bundle run ... --mirror false`` hands the value over as the *string* ``'false'``
(Python's ``bool('false')`` is ``True``), ``--lr nan`` as the string ``'nan'`` and ``--epochs 1e400`` as
``inf``. The functions here turn such values into what they say, or refuse them with a ``ValueError``
that names the option and the value:

- :func:`as_bool`: ``True``/``False``, the integers 0 and 1, and the strings true/false, 1/0, yes/no,
  on/off (any case, surrounding whitespace ignored).
- :func:`as_float` / :func:`as_int`: numbers or numeric strings, finite unless told otherwise, inside an
  optional closed range ``[low, high]``.

These parse, and belong where text comes in: a command line's parser, a bundle's JSON
(``"$as_bool(@amp, 'amp')"``). Library code below that boundary takes typed values and checks them with
:func:`require`, which refuses a string (an option nobody parsed) naming the option and the parser to use.

Every function takes ``allow_none``: ``None`` (and, for the strings, ``"none"``/``"null"``) then passes
through as ``None``; without it ``None`` is refused.

Example:
    >>> as_bool("False", "mirror")
    False
    >>> as_int("10", "epochs", low=1)
    10
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["as_bool", "as_float", "as_int", "is_unset", "require", "TRUE_WORDS", "FALSE_WORDS"]

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_NONE_WORDS = frozenset({"none", "null"})


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


def is_unset(value: Any) -> bool:
    """Whether an optional setting (a path, a limit) is left unset: ``None``, or a string that is empty or
    ``none`` / ``null`` in any case (what ``python -m monai.bundle run --key none`` or ``--key ""`` hands over)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS | {""})


def _range_text(low: float | None, high: float | None) -> str:
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    return f"[{lo}, {hi}]"


def as_bool(value: Any, key: str, *, allow_none: bool = False) -> bool | None:
    """``value`` as a bool, refusing anything that is not clearly one.

    Args:
        value: a bool, the integer 0 or 1 (numpy and torch scalars included), or one of the strings
            true/false, 1/0, yes/no, on/off in any case with any surrounding whitespace.
        key: the option's name, used in the error.
        allow_none: let ``None`` (or the strings none/null) through as ``None``.

    Raises:
        ValueError: naming ``key`` and ``value`` for anything else (``None`` unless allowed, ``2``,
            ``"maybe"``, ``""``, ``0.5``, ...).
    """
    if allow_none and _is_none(value):
        return None
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        value = value.item()
        if isinstance(value, bool):
            return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(int(value))
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    allowed = "true/false, 1/0, yes/no, on/off" + (" or none" if allow_none else "")
    raise ValueError(f"option '{key}': {value!r} is not a boolean; use {allowed} (any case).")


def _as_number(value: Any, key: str, kind: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"option '{key}': {value!r} is a boolean, not {kind}.")
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        for parse in (int, float):  # "10" stays an int, "1e-4" and "nan" go through float
            try:
                return parse(value.strip())
            except ValueError:
                pass
    raise ValueError(f"option '{key}': {value!r} is not {kind}.")


def _check_range(number: float, value: Any, key: str, low: float | None, high: float | None) -> None:
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"option '{key}': {value!r} is outside the allowed range {_range_text(low, high)}.")


def as_float(value: Any, key: str, *, low: float | None = None, high: float | None = None,
             allow_nan: bool = False, allow_inf: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a float inside ``[low, high]``.

    Args:
        value: a real number or a numeric string (``"1e-4"``, ``" 0.5 "``).
        key: the option's name, used in the error.
        low, high: inclusive bounds (None: unbounded).
        allow_nan: accept NaN (refused by default).
        allow_inf: accept +-inf (refused by default); the bounds still apply.
        allow_none: let ``None`` (or none/null) through as ``None``.

    Raises:
        ValueError: naming ``key``, ``value`` and the range for a non-number, NaN, inf or a value outside
            the range.
    """
    if allow_none and _is_none(value):
        return None
    number = float(_as_number(value, key, "a number"))
    if math.isnan(number):
        if allow_nan:
            return number
        raise ValueError(f"option '{key}': {value!r} is NaN; give a number in {_range_text(low, high)}.")
    if math.isinf(number) and not allow_inf:
        raise ValueError(f"option '{key}': {value!r} is infinite; give a finite number in {_range_text(low, high)}.")
    _check_range(number, value, key, low, high)
    return number


def as_int(value: Any, key: str, *, low: int | None = None, high: int | None = None,
           allow_none: bool = False) -> int | None:
    """``value`` as an int inside ``[low, high]``.

    Integral floats (``10.0``, ``"1e2"``) are accepted; fractional ones (``2.5``), NaN and inf are refused.

    Args:
        value: an integer, an integral float, or a string holding one.
        key: the option's name, used in the error.
        low, high: inclusive bounds (None: unbounded).
        allow_none: let ``None`` (or none/null) through as ``None``.

    Raises:
        ValueError: naming ``key``, ``value`` and the range.
    """
    if allow_none and _is_none(value):
        return None
    number = _as_number(value, key, "an integer")
    if isinstance(number, numbers.Integral):
        result = int(number)
    else:
        f = float(number)
        if not math.isfinite(f) or not f.is_integer():
            raise ValueError(f"option '{key}': {value!r} is not an integer in {_range_text(low, high)}.")
        result = int(f)
    _check_range(result, value, key, low, high)
    return result


_PARSERS = {bool: "as_bool", int: "as_int", float: "as_float"}
_KINDS = {bool: "a bool", int: "an int", float: "a float"}


def require(value: Any, key: str, kind: type, *, low: float | None = None, high: float | None = None,
            allow_none: bool = False) -> Any:
    """``value`` itself when it already is a ``kind`` (``bool``, ``int`` or ``float``) inside ``[low, high]``.

    The check of typed options (a trainer's, a handler's): nothing is parsed. An ``int`` is a ``float`` here, a
    ``bool`` is not a number, numpy and torch scalars are taken by their ``item()``.

    Args:
        value: the option's value.
        key: the option's name, used in the error.
        kind: ``bool``, ``int`` or ``float``.
        low, high: inclusive bounds for numbers (None: unbounded); NaN and infinities are refused.
        allow_none: let ``None`` through.

    Raises:
        ValueError: naming ``key`` and ``value``: a string (naming the parser, e.g. :func:`as_bool`, that the
            command line or bundle should apply where the text comes in), another type, NaN, inf, or a value
            outside the range.
    """
    if value is None and allow_none:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        value = value.item()
    parser, name = _PARSERS[kind], _KINDS[kind]
    if isinstance(value, str):
        raise ValueError(f"option '{key}': {value!r} is a string, not {name}; parse text where it comes in "
                         f"(mfassl.options.{parser}: a bundle writes \"${parser}(@{key}, '{key}')\").")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"option '{key}': {value!r} ({type(value).__name__}) is not {name}"
                         f"{' or None' if allow_none else ''}.")
    if kind is not bool:
        if not math.isfinite(value):
            raise ValueError(f"option '{key}': {value!r} is not finite; give a number in {_range_text(low, high)}.")
        _check_range(value, value, key, low, high)
    return value
