"""What the medical commands write never replaces what the user owns: ``axis --png`` and ``axes --out`` through
``python -m mfassl_medical``, an input is never an output, a foreign file only with ``--overwrite``, and a torn
last line of an axes file is repaired."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mfassl.cli import overlay_recogniser

from cli_runner import run_main
from test_axes_command import write_chexpert


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl_medical", *args)


def _png(path: Path, shift: float = 0.0) -> Path:
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = sum(np.exp(-(((xx - (w / 2 + shift + s * 10)) / 6) ** 2 + ((yy - h / 2) / 12) ** 2)) for s in (-1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 200).astype(np.uint8)).save(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", ["png-is-the-input", "first-overlay-is-the-second-input", "with-overwrite"])
def test_axis_never_writes_an_overlay_over_an_input(tmp_path, case):
    a = _png(tmp_path / "scan.png")
    b = _png(tmp_path / "scan_axis.png", 2.0)
    args = {"png-is-the-input": [str(a), "--png", str(a)],
            "first-overlay-is-the-second-input": [str(a), str(b), "--png", str(tmp_path)],
            "with-overwrite": [str(a), "--png", str(a), "--overwrite"]}[case]
    before = {p: _digest(p) for p in (a, b)}
    proc = _run("axis", *args, "--json")
    assert proc.returncode == 2, proc.stderr
    assert "is an input of this command" in proc.stderr and "scan" in proc.stderr and proc.stdout == ""
    assert {p: _digest(p) for p in (a, b)} == before


def test_axis_replaces_its_own_overlays_and_a_foreign_png_only_with_overwrite(tmp_path):
    x = _png(tmp_path / "x.png")
    photo = _png(tmp_path / "photo.png", 3.0)  # the user's picture
    kept = _digest(photo)
    proc = _run("axis", str(x), "--png", str(photo))
    assert proc.returncode == 2 and "already exists and is not an overlay" in proc.stderr
    assert "--overwrite" in proc.stderr and _digest(photo) == kept
    proc = _run("axis", str(x), "--png", str(photo), "--overwrite", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["png"] == str(photo) and overlay_recogniser(photo) is None
    proc = _run("axis", str(x), "--png", str(photo), "--json")  # now an overlay of the command: a rerun replaces it
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["png"] == str(photo)


@pytest.mark.parametrize("name", ["valid.csv", "train/patient00001/study1/view1_frontal.jpg"])
def test_axes_never_writes_over_an_input(tmp_path, name):
    ds = write_chexpert(tmp_path, 2)
    (ds / "valid.csv").write_bytes((ds / "train.csv").read_bytes())
    target = ds / name
    kept = _digest(target)
    proc = _run("axes", str(ds), "--kind", "chexpert", "--workers", "0", "--no-progress", "--out", str(target),
                "--overwrite")
    assert proc.returncode == 2, proc.stderr
    assert f"--out {target} is an input of this command" in proc.stderr and _digest(target) == kept


def test_axes_refuses_a_foreign_file_unless_overwrite(tmp_path):
    ds = write_chexpert(tmp_path, 2)
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"experiment": "mine", "values": [1, 2]}))  # no final newline: not a torn line
    kept = _digest(notes)
    args = ["axes", str(ds), "--kind", "chexpert", "--workers", "0", "--no-progress", "--out", str(notes)]
    proc = _run(*args)
    assert proc.returncode == 2 and "already exists and is not an axes file" in proc.stderr
    assert "--overwrite" in proc.stderr and _digest(notes) == kept
    proc = _run(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in notes.read_text().splitlines()]
    assert len(recs) == 2 and all(r["kind"] == "chexpert" for r in recs)
    # an axes file of another --kind is not resumed either
    brats = tmp_path / "brats_axes.jsonl"
    brats.write_text(json.dumps({"key": "BraTS2021_00000", "kind": "brats", "path": "/data/BraTS2021_00000",
                                 "normal": [1, 0, 0], "offset": 0.0}) + "\n")
    proc = _run(*args[:-1], str(brats))
    assert proc.returncode == 2 and "line 1 holds an axes record of --kind brats" in proc.stderr
    assert len(brats.read_text().splitlines()) == 1


def test_axes_repairs_a_torn_last_line_on_the_next_run(tmp_path):
    ds = write_chexpert(tmp_path, 3)
    out = tmp_path / "axes.jsonl"
    args = ["axes", str(ds), "--kind", "chexpert", "--workers", "0", "--no-progress", "--out", str(out)]
    assert _run(*args).returncode == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])  # the run killed while writing its last line
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    assert "2 already in" in proc.stderr and "1 estimated now" in proc.stderr
    table = pd.read_json(out, lines=True)  # what broke on the torn line
    assert len(table) == 3 and sorted(table["key"]) == sorted(json.loads(x)["key"] for x in lines)
