"""``python -m mfassl_medical COMMAND ...``: the medical package's command line.

Commands:
    axis   estimate the symmetry axis (2D midline / 3D mid-sagittal plane) of image files
    axes   estimate every image's axis of a CheXpert or BraTS folder once (parallel, resumable)
    demo   build the demo data and run the main job (what ``make demo`` runs)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "axis": ("mfassl_medical.cli_axis", "estimate the symmetry axis of image files"),
    "axes": ("mfassl_medical.axes_cli", "estimate every image's axis of a data set once (parallel, resumable)"),
    "demo": ("mfassl_medical.demo", "build the demo data and run the main job"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        lines = [f"  {name:6s} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m mfassl_medical COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
