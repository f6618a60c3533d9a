"""``python -m mfassl_medical COMMAND ...``: the medical package's command line.

Commands:
    axis   estimate the symmetry axis (2D midline / 3D mid-sagittal plane) of image files
    axes   estimate every image's axis of a CheXpert or BraTS folder once (parallel, resumable)
    demo   build the demo data and run the main job (what ``make demo`` runs)
"""

from __future__ import annotations

import sys
from typing import Sequence

from mfassl.cli import run_commands

COMMANDS = {
    "axis": ("mfassl_medical.cli_axis", "estimate the symmetry axis of image files"),
    "axes": ("mfassl_medical.axes_cli", "estimate every image's axis of a data set once (parallel, resumable)"),
    "demo": ("mfassl_medical.demo", "build the demo data and run the main job"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (:func:`mfassl.cli.run_commands`): 0 for ``--help``, 2 for no or an unknown command."""
    return run_commands("python -m mfassl_medical", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
