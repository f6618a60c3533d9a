"""``python -m mfassl_faces COMMAND ...``: the face package's command line.

Commands:
    axis       symmetry axis of face images from their landmarks (JSON lines, optional PNG)
    landmarks  landmarks for a whole image folder (parallel, resumable JSON lines)
    demo       build the synthetic demo faces (300W layout) from package-shipped photos
    pretrain   MFASSL pretraining on face crops (the shared ignite engine)
    benchmark  landmark benchmark: a head on a (frozen or fine-tuned) encoder, NME / FR / AUC
    probe      attribute probe: a linear head on a frozen encoder, AUROC / ECE / Brier
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "axis": ("mfassl_faces.cli_axis", "symmetry axis of face images from their landmarks"),
    "landmarks": ("mfassl_faces.cli_landmarks", "landmarks for a whole image folder (parallel, resumable)"),
    "demo": ("mfassl_faces.cli_tasks", "build the synthetic demo faces"),
    "pretrain": ("mfassl_faces.cli_tasks", "MFASSL pretraining on face crops"),
    "benchmark": ("mfassl_faces.cli_tasks", "landmark benchmark (NME, FR@0.1, AUC@0.1)"),
    "probe": ("mfassl_faces.cli_tasks", "attribute probe (AUROC, ECE, Brier)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        lines = [f"  {name:10s} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m mfassl_faces COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    if module.__name__.endswith("cli_tasks"):
        return int(module.main(argv) or 0)
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
