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

__all__ = ["SOURCE_NAMES", "NORMALIZATION_NAMES", "float_arg", "int_arg", "bool_arg", "box_arg", "check_device"]

#: the landmark sources the commands take by name: the names of
#: :data:`mfassl_faces.sources.LANDMARK_SOURCES`, written out so that ``--help`` imports no detector code
SOURCE_NAMES = ("dlib", "fan", "file")
#: the NME normalisations (:data:`mfassl_faces.metrics.NORMALIZATIONS`), written out for the same reason
NORMALIZATION_NAMES = ("inter-ocular", "inter-pupil", "box")


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


def check_device(name: str | None) -> str:
    """``name`` as a torch device string, checked before any file is read: ``cpu``, ``cuda``, ``cuda:K``, ``mps``...
    (None: ``cuda`` when available, else ``cpu``).

    Raises:
        ValueError: not a device name, or a CUDA device this machine does not have.
    """
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"option '--device': {name!r} is not a torch device ({err}).") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"option '--device': {name!r} asks for CUDA, which this machine does not have.")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"option '--device': {name!r} asks for GPU {dev.index}, this machine has {count}.")
    return str(dev)
