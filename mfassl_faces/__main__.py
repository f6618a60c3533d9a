"""``python -m mfassl_faces COMMAND ...``: the face package's command line.

Commands:
    axis       symmetry axis of face images from their landmarks (JSON lines, optional PNG)
    landmarks  landmarks for a whole image folder (parallel, resumable JSON lines)
    demo       build the synthetic demo faces (300W layout) from package-shipped photos, in
               $MFASSL_FACES_DEMO_DIR if set, else ~/.cache/mfassl/faces_demo
    pretrain   MFASSL pretraining on face crops (the shared ignite engine)
    benchmark  landmark benchmark: a head on a (frozen or fine-tuned) encoder, NME / FR / AUC
    score      score a prediction file (or dlib / FAN inside the annotated boxes) with the benchmark's metrics
    probe      attribute probe: a linear head on a frozen encoder, AUROC / accuracy / ECE / Brier
"""

from __future__ import annotations

import sys
from typing import Sequence

from mfassl.cli import run_commands

COMMANDS = {
    "axis": ("mfassl_faces.cli_axis", "symmetry axis of face images from their landmarks"),
    "landmarks": ("mfassl_faces.cli_landmarks", "landmarks for a whole image folder (parallel, resumable)"),
    "demo": ("mfassl_faces.cli_tasks:demo_main",
             "build the synthetic demo faces (in $MFASSL_FACES_DEMO_DIR, else ~/.cache/mfassl/faces_demo)"),
    "pretrain": ("mfassl_faces.cli_tasks:pretrain_main", "MFASSL pretraining on face crops"),
    "benchmark": ("mfassl_faces.cli_tasks:benchmark_main", "landmark benchmark (NME, FR, AUC; 300W/WFLW protocols)"),
    "score": ("mfassl_faces.cli_score", "score landmark predictions (a file, or dlib/FAN in the annotated boxes)"),
    "probe": ("mfassl_faces.cli_tasks:probe_main", "attribute probe (AUROC, accuracy, balanced accuracy, ECE, Brier)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (:func:`mfassl.cli.run_commands`): 0 for ``--help``, 2 for no or an unknown command."""
    return run_commands("python -m mfassl_faces", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
