"""argparse types of the face commands, built on :mod:`mfassl.options` through :func:`mfassl.cli.option_type`:
numbers, booleans and pixel boxes parsed strictly at the command line; the landmark source names.

``--min-confidence nan`` or ``--min-confidence 5`` is refused by argparse with a message naming the
option and the value (exit status 2) instead of running with a meaningless setting.
"""

from __future__ import annotations

import argparse
from typing import Callable

from mfassl.cli import option_type
from mfassl.options import as_bool, as_float, as_int

__all__ = ["SOURCE_NAMES", "float_arg", "int_arg", "bool_arg", "box_arg"]

#: the landmark sources the commands take by name: the names of
#: :data:`mfassl_faces.sources.LANDMARK_SOURCES`, written out so that ``--help`` imports no detector code
SOURCE_NAMES = ("dlib", "fan", "file")


def float_arg(key: str, low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite float in ``[low, high]``."""
    return option_type(as_float, key, low=low, high=high)


def int_arg(key: str, low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer in ``[low, high]``."""
    return option_type(as_int, key, low=low, high=high)


def bool_arg(key: str) -> Callable[[str], bool]:
    """An argparse ``type=`` for true/false, 1/0, yes/no, on/off (any case)."""
    return option_type(as_bool, key)


def box_arg(key: str) -> Callable[[str], tuple[float, float, float, float]]:
    """An argparse ``type=`` for a box ``x0,y0,x1,y1`` in pixels (finite, ``x0 < x1``, ``y0 < y1``)."""

    def parse(text: str) -> tuple[float, float, float, float]:
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        if len(parts) != 4:
            raise argparse.ArgumentTypeError(f"option '{key}': {text!r} is not a box x0,y0,x1,y1.")
        try:
            x0, y0, x1, y1 = (float(as_float(p, key)) for p in parts)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        if not (x0 < x1 and y0 < y1):
            raise argparse.ArgumentTypeError(f"option '{key}': {text!r} needs x0 < x1 and y0 < y1.")
        return x0, y0, x1, y1

    parse.__name__ = "box"
    return parse
