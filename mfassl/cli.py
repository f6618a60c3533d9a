"""What the packages' command lines share: the ``python -m PACKAGE COMMAND`` dispatcher, argparse types
built on :mod:`mfassl.options`, overlay PNG paths, and strict JSON lines.

- :func:`run_commands`: ``python -m mfassl_medical`` and ``python -m mfassl_faces`` name their commands in
  a table ``{name: (target, help)}`` and hand the arguments to it; ``--help`` lists the commands (exit
  status 0), no command or an unknown one prints the same list (exit status 2).
- :func:`option_type`: an argparse ``type=`` from a strict parser of :mod:`mfassl.options` (``as_float``,
  ``as_int``, ``as_bool``), so ``--min-confidence nan`` is refused with a message naming the option;
  :func:`add_overwrite_option`: the ``--overwrite`` flag every command that writes user-named files has
  (:class:`mfassl.files.OutputGuard`).
- :func:`check_png_target`, :func:`overlay_paths`, :func:`check_overlays`: the ``--png OUT`` of the axis
  commands (one ``.png`` file for one input, else a folder of overlays with one distinct name per input), never
  an input of the command and never a PNG it did not write unless ``--overwrite``; :func:`mark_overlay` tags
  the PNG the commands write (a ``Software`` text chunk) and :func:`overlay_recogniser` reads the tag back.
- :func:`strict_json`, :func:`json_line`: one strict-JSON line per record (NaN and infinity as ``null``).

Command lines use this module (and the JSON-lines files they write); library code takes plain arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mfassl.files import OutputGuard

__all__ = ["run_commands", "option_type", "add_overwrite_option", "check_png_target", "overlay_paths",
           "check_overlays", "mark_overlay", "overlay_recogniser", "strict_json", "json_line", "OVERLAY_EXTENSIONS",
           "OVERLAY_SOFTWARE"]


# ---------------------------------------------------------------------------------------------- dispatcher
def _entry(target: str) -> Callable[[list[str]], Any]:
    """The function that ``target`` names: ``"package.module"`` (its ``main``) or ``"package.module:function"``."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function or "main")


def run_commands(prog: str, commands: Mapping[str, tuple[str, str]], argv: Sequence[str] | None = None) -> int:
    """Run ``prog COMMAND [ARGS]``: the command's entry function gets ``ARGS`` (the words after ``COMMAND``).

    Args:
        prog: how the program is invoked, for the usage line (``"python -m mfassl_faces"``).
        commands: ``{name: (target, help)}`` in the order to list them; ``target`` is ``"package.module"``
            (its ``main(argv)``) or ``"package.module:function"``. The module is imported only when its
            command runs, so ``--help`` stays fast.
        argv: the arguments after ``prog`` (default ``sys.argv[1:]``).

    Returns:
        The command's exit status (None counts as 0); for ``-h`` / ``--help`` the command list and 0; with no
        command or an unknown one the command list and 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in commands:
        width = max((len(name) for name in commands), default=0) + 2
        lines = [f"  {name:{width}s}{help_}" for name, (_, help_) in commands.items()]
        print(f"usage: {prog} COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in {"-h", "--help"} else 2
    return int(_entry(commands[args[0]][0])(args[1:]) or 0)


# ---------------------------------------------------------------------------------------------- options
def option_type(parse: Callable[..., Any], key: str, **kwargs: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` that runs ``parse(text, key, **kwargs)`` and turns its ``ValueError`` into a usage
    error (exit status 2) naming ``key`` and the value.

    Args:
        parse: a strict parser of :mod:`mfassl.options` (``as_float``, ``as_int``, ``as_bool``).
        key: the option's name (``"--min-confidence"``).
        kwargs: its keyword arguments (``low=0.0, high=1.0``).
    """

    def convert(text: str) -> Any:
        try:
            return parse(text, key, **kwargs)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    """The ``--overwrite`` flag of a command that writes files the user names (:class:`mfassl.files.OutputGuard`).

    Args:
        parser: the command's parser.
        what: the files it replaces, for the help (``"an existing --out FILE that is not an axes file"``).
    """
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} (an input of the command is never written over)")


# ---------------------------------------------------------------------------------------------- overlays
#: suffixes taken off an input's name to name its overlay (``.nii.gz`` is tried before ``.nii``)
OVERLAY_EXTENSIONS = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nrrd", ".mha", ".mhd",
                      ".ppm", ".pgm", ".bmp", ".webp")


def _is_png_file(out: str) -> bool:
    return out.lower().endswith(".png") and not os.path.isdir(out)


def check_png_target(out: str | os.PathLike | None, n_inputs: int, what: str = "inputs") -> None:
    """Refuse a ``--png OUT`` that cannot hold the overlays of ``n_inputs`` inputs, before any input is read.

    ``OUT`` is a ``.png`` file (one input only) or a folder (made when missing); what may be replaced there is
    :func:`check_overlays`' business.

    Raises:
        ValueError: a ``.png`` file for several inputs, or an existing file that is not a ``.png`` (the message
            starts with ``--png OUT`` and says what to give instead; ``what`` names the inputs in it).
    """
    if out is None:
        return
    target = os.fspath(out)
    if _is_png_file(target):
        if n_inputs > 1:
            raise ValueError(f"--png {target} names one .png file, but {n_inputs} {what} were given: give a folder.")
    elif os.path.exists(target) and not os.path.isdir(target):
        alternative = "a folder" if n_inputs > 1 else "a folder or a .png file"
        raise ValueError(f"--png {target} is an existing file that is not a .png: give {alternative}.")


def _strip_extension(name: str) -> str:
    for ext in OVERLAY_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def overlay_paths(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> list[str]:
    """One overlay PNG path per input, never the same path twice.

    Args:
        out: ``--png``: a ``.png`` file (one input only, see :func:`check_png_target`) or a folder.
        inputs: the input paths, in order.

    Returns:
        ``[out]`` for one input and a ``.png`` ``out``; else ``out/<name>_axis.png`` for each input, ``<name>``
        its path relative to the common folder of all inputs with the extension dropped and folder
        separators written ``_`` (``siteA/scan.nii.gz`` -> ``siteA_scan``); a name already taken (the same
        input twice, or ``siteA_scan.png`` beside ``siteA/scan.png``) gets ``-2``, ``-3``...
    """
    target = os.fspath(out)
    if len(inputs) == 1 and _is_png_file(target):
        return [target]
    full = [os.path.abspath(os.path.normpath(os.fspath(p))) for p in inputs]
    try:
        common = os.path.commonpath([os.path.dirname(f) for f in full]) if full else ""
    except ValueError:  # different drives (Windows): no common folder
        common = ""
    taken: set[str] = set()
    result = []
    for f in full:
        rel = os.path.relpath(f, common) if common else f.lstrip(os.sep)
        parts = [q for q in rel.replace("\\", "/").split("/") if q not in ("", ".")]
        parts[-1] = _strip_extension(parts[-1])
        stem = "_".join(q.replace(":", "_") for q in parts) or "image"
        name, k = stem, 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name.lower())
        result.append(os.path.join(target, f"{name}_axis.png"))
    return result


OVERLAY_SOFTWARE = "MFASSL axis overlay"
"""The ``Software`` text of the overlay PNGs the axis commands write: how a rerun knows an overlay is its own."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def mark_overlay(png: bytes) -> bytes:
    """``png`` with a ``tEXt`` chunk ``Software`` = :data:`OVERLAY_SOFTWARE` after its header chunk."""
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError("not PNG data")
    end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4  # signature, IHDR length/type, data, CRC
    body = b"tEXt" + b"Software\0" + OVERLAY_SOFTWARE.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return png[:end] + chunk + png[end:]


def overlay_recogniser(path: Path) -> str | None:
    """None when ``path`` is an overlay PNG an axis command wrote (:func:`mark_overlay`), else why it is not."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return "not a PNG file"
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    break
                data = fh.read(length)
                fh.seek(4, os.SEEK_CUR)
                if kind == b"tEXt" and data == b"Software\0" + OVERLAY_SOFTWARE.encode("latin-1"):
                    return None
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    return "a PNG that no axis command wrote"


def check_overlays(guard: OutputGuard, out: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                   pngs: Sequence[str | os.PathLike]) -> None:
    """Check the overlay of every input with ``guard`` (its inputs: the command's inputs) before any is read:
    none may be an input (a later one included) or another overlay; an existing PNG is replaced only when an
    axis command wrote it, or with ``--overwrite``.

    Raises:
        mfassl.files.OutputRefusedError: naming ``--png OUT``, the overlay and the input it belongs to.
    """
    for src, png in zip(inputs, pngs):
        guard.check(png, "--png", value=out, what=f"the overlay of {src}", recognise=overlay_recogniser,
                    kind="an overlay PNG of an axis command")


# ---------------------------------------------------------------------------------------------- JSON lines
def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None and numpy types made plain."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def json_line(record: Mapping[str, Any]) -> str:
    """One strict JSON line (``allow_nan=False``; NaN and infinity are written ``null`` first)."""
    return json.dumps(strict_json(dict(record)), allow_nan=False)
