"""Start-up time of the commands that do not train: seconds from ``python ...`` to the command's exit.

Each command runs ``--repeats`` times in a fresh interpreter (no shared import cache beyond the OS file
cache; one untimed run first warms that); the table gives the median wall time and its ratio to the baselines
measured in the same run, in turns with the commands so that a busy machine slows both alike:

- ``python -c pass`` (the interpreter alone), ``import numpy``, ``import torch`` and ``import monai`` (MONAI
  imports its whole package on its first import, optional extras such as mlflow and ignite included);
- every entry point's ``--help`` and the ``--help`` of each command that does not train;
- the jobs: ``axis`` on one small PNG and one small NIfTI (``--json``), ``faces axis --help``.

The axis command reads images with the bundles' reader (:class:`mfassl_medical.transforms.SafeLoadImage`,
MONAI's ``LoadImage`` underneath), so that ``axes`` files and bundles see one index frame; its first result
therefore costs ``import monai``, which the table shows beside it.

    python bench/startup.py                    # the table
    python bench/startup.py --write-results    # also the "Start-up" section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import publish

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path) -> dict[str, str]:
    """One 64x64 PNG radiograph-like image and one 32x32x24 NIfTI volume, each symmetric about its centre."""
    import nibabel as nib
    from PIL import Image

    rng = np.random.default_rng(0)
    half = rng.random((64, 32))
    img = np.concatenate([half, half[:, ::-1]], axis=1)
    png = folder / "one.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(png)
    vol_half = rng.random((16, 32, 24)).astype(np.float32)
    vol = np.concatenate([vol_half, vol_half[::-1]], axis=0)
    nii = folder / "one.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(nii))
    return {"png": str(png), "nii": str(nii)}


def commands(inputs: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """``(kind, label, argv after python)`` of every timed command, the baselines first."""
    py = [
        ("baseline", "python -c pass", ["-c", "pass"]),
        ("baseline", "import numpy", ["-c", "import numpy"]),
        ("baseline", "import torch", ["-c", "import torch"]),
        ("baseline", "import monai", ["-c", "import monai"]),
        ("help", "python -m mfassl --help", ["-m", "mfassl", "--help"]),
        ("help", "python -m mfassl export-encoder --help", ["-m", "mfassl", "export-encoder", "--help"]),
        ("help", "python -m mfassl_medical --help", ["-m", "mfassl_medical", "--help"]),
        ("help", "python -m mfassl_medical axis --help", ["-m", "mfassl_medical", "axis", "--help"]),
        ("help", "python -m mfassl_medical axes --help", ["-m", "mfassl_medical", "axes", "--help"]),
        ("help", "python -m mfassl_faces --help", ["-m", "mfassl_faces", "--help"]),
        ("help", "python -m mfassl_faces axis --help", ["-m", "mfassl_faces", "axis", "--help"]),
        ("help", "python -m mfassl_faces landmarks --help", ["-m", "mfassl_faces", "landmarks", "--help"]),
        ("help", "python -m mfassl_medical.label_app --help", ["-m", "mfassl_medical.label_app", "--help"]),
        ("job", "python -m mfassl_medical axis one.png --json", ["-m", "mfassl_medical", "axis", inputs["png"], "--json"]),
        ("job", "python -m mfassl_medical axis one.nii.gz --json",
         ["-m", "mfassl_medical", "axis", inputs["nii"], "--json"]),
    ]
    return py


def time_once(argv: list[str]) -> float:
    """Wall seconds of one ``python argv`` run from the repository root; a failing command is an error."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return seconds


def measure(cmds: list[tuple[str, str, list[str]]], repeats: int) -> dict[str, list[float]]:
    """Median-ready wall times: one untimed warm-up round, then ``repeats`` rounds over every command in turn."""
    for _, _, argv in cmds:
        time_once(argv)
    times: dict[str, list[float]] = {label: [] for _, label, _ in cmds}
    for _ in range(repeats):
        for _, label, argv in cmds:
            times[label].append(time_once(argv))
    return times


def table(cmds: list[tuple[str, str, list[str]]], times: dict[str, list[float]]) -> str:
    """Markdown table: median and range of the wall time, ratio to ``import torch`` and to ``import monai``."""
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_s, monai_s = med["import torch"], med["import monai"]
    rows = ["| kind | command | median (s) | range (s) | / import torch | / import monai |",
            "|---|---|---|---|---|---|"]
    for kind, label, _ in cmds:
        v = times[label]
        rows.append(f"| {kind} | `{label}` | {med[label]:.2f} | {min(v):.2f}-{max(v):.2f} | "
                    f"{med[label] / torch_s:.2f} | {med[label] / monai_s:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each command (default 5)")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(make_inputs(Path(tmp)))
        times = measure(cmds, args.repeats)
    load = os.getloadavg()[0]
    note = (f"{args.repeats} timed runs each after one warm-up round, in turns; {os.cpu_count()} CPU cores, "
            f"load average {load:.1f} at the end. `help` commands import no torch, MONAI or face-alignment; the "
            "axis jobs read through the bundles' MONAI reader, so their first result costs `import monai` "
            "(ratio column) on top of the estimate.")
    publish(table(cmds, times), note, "Start-up", write=args.write_results, script="startup.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
