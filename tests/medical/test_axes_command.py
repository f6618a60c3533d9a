"""``python -m mfassl_medical axes``: the axes file's format, resuming, counted errors, the process pool."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mfassl_medical.axes_cli import AXIS_FIELDS, main, read_axes_file, run_axes
from mfassl_medical.data.chexpert import CHEXPERT_LABELS


def write_chexpert(root: Path, n: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A CheXpert-v1.0-small folder (train.csv + patient/study/view JPGs) of ``n`` small frontal images whose
    bright pair of "lungs" is symmetric about column ``W/2 + shift``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ds = root / "CheXpert-v1.0-small"
    rows = []
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c = w / 2 - 0.5 + rng.uniform(-3, 3)
        img = np.zeros((h, w), np.float32)
        for side in (-1, 1):
            img += np.exp(-(((xx - (c + side * w * 0.22)) / (w * 0.12)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2))
        img = np.clip(img * 200 + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        rel = f"CheXpert-v1.0-small/train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel, quality=95)
        rows.append([rel, "Female", 50, "Frontal", "PA", *(["1.0"] + [""] * (len(CHEXPERT_LABELS) - 1))])
    with open(ds / "train.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS])
        wr.writerows(rows)
    return ds


def test_axes_file_has_the_axis_cli_fields(tmp_path):
    ds = write_chexpert(tmp_path, 3)
    out = tmp_path / "axes.jsonl"
    assert main([str(ds), "--kind", "chexpert", "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 3
    for rec in recs:
        assert set(AXIS_FIELDS) <= set(rec) and rec["kind"] == "chexpert" and rec["dims"] == 2
        assert rec["key"] == str(Path(rec["path"]).relative_to(ds.resolve()).as_posix())
        assert abs(np.linalg.norm(rec["normal"]) - 1.0) < 1e-6 and abs(rec["normal"][0]) > 0.99
        assert 0.0 <= rec["confidence"] <= 1.0 and rec["seconds"] >= 0.0
    assert sorted(read_axes_file(out)) == sorted(r["key"] for r in recs)


def test_rerun_does_only_what_is_missing_and_counts_errors(tmp_path, monkeypatch, capsys, estimator_calls):
    ds = write_chexpert(tmp_path, 5)
    bad = ds / "train/patient00003/study1/view1_frontal.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg at all")
    out = tmp_path / "axes.jsonl"
    calls = estimator_calls
    calls.clear()  # count from here on
    assert main([str(ds), "--kind", "chexpert", "--workers", "0", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "4 estimated now, 1 failed" in err and f"error: {bad}" in err
    assert len(calls) == 4
    table = read_axes_file(out, errors=True)
    assert "error" in table["train/patient00003/study1/view1_frontal.jpg"]
    # a run stopped half-way: drop two good lines and leave a torn last line
    lines = out.read_text().splitlines()
    good = [ln for ln in lines if '"error"' not in ln]
    out.write_text("\n".join(good[:2]) + "\n" + good[2][:25])
    calls.clear()
    assert main([str(ds), "--kind", "chexpert", "--workers", "0", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "2 already in" in err and "2 estimated now, 1 failed" in err
    assert len(calls) == 2  # the two missing good images; the bad one is tried again and fails
    assert len(read_axes_file(out)) == 4
    # once the file is fixed, a rerun estimates that one image only
    bad.write_bytes((ds / "train/patient00001/study1/view1_frontal.jpg").read_bytes())
    calls.clear()
    assert main([str(ds), "--kind", "chexpert", "--workers", "0", "--out", str(out), "--no-progress"]) == 0
    assert len(calls) == 1 and len(read_axes_file(out)) == 5


def test_process_pool_gives_the_same_axes(tmp_path):
    ds = write_chexpert(tmp_path, 4)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert run_axes(str(ds), "chexpert", str(one), workers=1, progress=False)["new"] == 4
    res = run_axes(str(ds), "chexpert", str(two), workers=2, progress=False)
    assert res["new"] == 4 and not res["failed"]
    a, b = read_axes_file(one), read_axes_file(two)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k]["offset"] == pytest.approx(b[k]["offset"], abs=1e-6)


def test_bad_options_are_refused(tmp_path, capsys):
    ds = write_chexpert(tmp_path, 1)
    assert main([str(ds), "--kind", "chexpert", "--out", str(tmp_path / "a.jsonl"), "--method", "nope"]) == 2
    assert "--method 'nope'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--kind", "brats", "--out", str(tmp_path / "a.jsonl")]) == 2
    assert not (tmp_path / "a.jsonl").exists()
