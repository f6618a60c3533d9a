"""``python -m mfassl_medical COMMAND ...``: the medical package's command line.

Commands:
    axis   estimate the symmetry axis (2D midline / 3D mid-sagittal plane) of image files
    axes   estimate every image's axis of a CheXpert or BraTS folder once (parallel, resumable)
    demo   build the demo data and run the main job (what ``make demo`` runs)
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Sequence

from mfassl.cli import run_commands

COMMANDS = {
    "axis": ("mfassl_medical.cli_axis", "estimate the symmetry axis of image files"),
    "axes": ("mfassl_medical.axes_cli", "estimate every image's axis of a data set once (parallel, resumable)"),
    "demo": ("mfassl_medical.demo", "build the demo data and run the main job"),
}


HARMLESS_WARNINGS: tuple[str, ...] = (
    "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
)
"""Warnings MONAI gives on every machine without its optional GPU DICOM decoder (nvImageCodec): pydicom's own
decoders read the files. Our commands leave them out; library code and ``python -m monai.bundle`` keep them."""

HARMLESS_LOGGERS: tuple[str, ...] = ("monai.data.nvimgcodec_pydicom_plugin",)
"""MONAI loggers that only say the same (shown from ERROR up in our commands)."""


def quiet_known_warnings() -> None:
    """Hide :data:`HARMLESS_WARNINGS` and :data:`HARMLESS_LOGGERS`' warnings (an entry point's choice)."""
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in HARMLESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (:func:`mfassl.cli.run_commands`): 0 for ``--help``, 2 for no or an unknown command."""
    quiet_known_warnings()
    return run_commands("python -m mfassl_medical", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
