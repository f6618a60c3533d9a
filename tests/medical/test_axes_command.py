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


# ------------------------------------------------------------------ every input gets an answer (issue 23)
class _Result:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


def _axes_cli(args: list[str], capsys) -> _Result:
    """``python -m mfassl_medical axes ARGS`` as a user types it (its ``main``, in this process)."""
    capsys.readouterr()
    code = main([*args, "--workers", "0", "--no-progress"])
    return _Result(code, capsys.readouterr().err)


def _brats(root: Path, cases: tuple[str, ...] = ("BraTS2021_00000", "BraTS2021_00001"), shape=(10, 11, 9)) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    for case in cases:
        (root / case).mkdir(parents=True)
        for mod in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) + 0.1, np.eye(4)),
                     str(root / case / f"{case}_{mod}.nii.gz"))
    return root


def test_paths_that_are_not_the_data_set_kind_are_refused_naming_them(tmp_path, capsys):
    """Before: "0 images ... 0 failed", exit 0 and an empty output for the first three."""
    ds = write_chexpert(tmp_path, 1)
    brats = _brats(tmp_path / "brats")
    out = tmp_path / "axes.jsonl"
    (tmp_path / "empty").mkdir()
    cases = [  # (DATASET_DIR, kind, what the error must say)
        (tmp_path / "missing", "chexpert", "does not exist; DATASET_DIR must be a CheXpert folder"),
        (brats, "chexpert", "holds no train.csv or valid.csv: not a CheXpert folder"),
        (tmp_path / "empty", "chexpert", "holds no train.csv or valid.csv"),
        (ds / "train/patient00001/study1/view1_frontal.jpg", "chexpert", "is a file but not a CheXpert CSV"),
        (ds, "brats", "a CheXpert folder, not a BraTS root; use --kind chexpert"),
        (tmp_path / "missing", "brats", "BraTS root is not a folder"),
    ]
    for path, kind, says in cases:
        res = _axes_cli([str(path), "--kind", kind, "--out", str(out)], capsys)
        assert res.returncode == 2, (path, kind, res.returncode, res.stderr[-500:])
        assert f"error: {path}: " in res.stderr and says in res.stderr, (path, kind, res.stderr[-500:])
        assert "Traceback" not in res.stderr and not out.exists()
    assert "use --kind brats" in _axes_cli([str(brats), "--kind", "chexpert", "--out", str(out)], capsys).stderr


def test_a_chexpert_csv_is_a_data_set_path(tmp_path, capsys):
    """Before: ``axes .../train.csv`` wrote nothing and exited 0."""
    ds = write_chexpert(tmp_path, 3)
    out = tmp_path / "axes.jsonl"
    res = _axes_cli([str(ds / "train.csv"), "--kind", "chexpert", "--out", str(out)], capsys)
    assert res.returncode == 0, res.stderr[-1000:]
    assert "3 images in the data set" in res.stderr
    keys = sorted(read_axes_file(out))  # keyed relative to the CSV's folder, as for the folder itself
    assert keys == [f"train/patient{i:05d}/study1/view1_frontal.jpg" for i in (1, 2, 3)]
    res = _axes_cli([str(ds), "--kind", "chexpert", "--out", str(out)], capsys)
    assert res.returncode == 0 and "3 already in" in res.stderr and "0 estimated now" in res.stderr


def test_skipped_brats_case_folders_are_counted_and_named(tmp_path, capsys):
    """Before: a case folder lacking a modality, or holding only DICOM, vanished from the count (exit 0)."""
    brats = _brats(tmp_path / "brats", ("BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"))
    (brats / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    (brats / "BraTS2021_00003" / "dicom").mkdir(parents=True)
    (brats / "BraTS2021_00003" / "dicom" / "IM0001.dcm").write_bytes(b"\0" * 132)
    out = tmp_path / "axes.jsonl"
    res = _axes_cli([str(brats), "--kind", "brats", "--out", str(out)], capsys)
    assert res.returncode == 1, res.stderr[-1000:]
    assert "2 images in the data set" in res.stderr and "2 case folder(s) skipped" in res.stderr
    assert f"skipped: {brats / 'BraTS2021_00001'}: case is missing modality file(s) ['t2']" in res.stderr
    assert f"skipped: {brats / 'BraTS2021_00003'}: case folder holds no BraTS NIfTI file" in res.stderr
    assert "DICOM series?" in res.stderr
    assert sorted(read_axes_file(out)) == ["BraTS2021_00000", "BraTS2021_00002"]


def test_nan_in_one_modality_names_that_file_only(tmp_path, capsys):
    """Before: the error listed all four modality files."""
    import nibabel as nib

    brats = _brats(tmp_path / "brats", ("BraTS2021_00000",))
    t2 = brats / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    arr = np.asarray(nib.load(str(t2)).dataobj).copy()
    arr[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(t2))
    res = _axes_cli([str(brats), "--kind", "brats", "--out", str(tmp_path / "axes.jsonl")], capsys)
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
    assert res.returncode == 1 and f"{t2}: image has 1 non-finite values (1 NaN)" in line, line
    assert "_t1.nii.gz" not in line and "_flair.nii.gz" not in line


def test_chexpert_single_frame_dicom_and_rgb_png_are_estimated_as_2d(tmp_path, capsys):
    """Before: a single-frame DICOM was estimated as a 3D volume of one slice."""
    import shutil

    from PIL import Image
    from pydicom.data import get_testdata_file

    ds = write_chexpert(tmp_path, 2)
    csv_path = ds / "train.csv"
    lines = csv_path.read_text().splitlines()
    img1 = ds / "train/patient00001/study1/view1_frontal.jpg"
    rgb = np.asarray(Image.open(img1))
    Image.fromarray(np.dstack([rgb, rgb, rgb])).save(ds / "train/patient00001/study1/view1_frontal.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), ds / "train/patient00002/study1/view1_frontal.dcm")
    csv_path.write_text("\n".join([lines[0], lines[1].replace(".jpg", ".png"), lines[2].replace(".jpg", ".dcm")])
                        + "\n")
    out = tmp_path / "axes.jsonl"
    res = _axes_cli([str(ds), "--kind", "chexpert", "--out", str(out)], capsys)
    assert res.returncode == 0, res.stderr[-1000:]
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["dims"] for r in recs] == [2, 2] and all(len(r["normal"]) == 2 for r in recs)


def test_kill_9_of_the_command_ends_its_pool_workers(tmp_path):
    """Before: both workers of ``axes --workers 2`` kept running for minutes after ``kill -9`` of the command."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    ds = write_chexpert(tmp_path, 40, size=(96, 128))
    out = tmp_path / "axes.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "mfassl_medical", "axes", str(ds), "--kind", "chexpert", "--out",
                             str(out), "--workers", "2", "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    workers: list = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = psutil.Process(proc.pid).children(recursive=True)
            if len(workers) >= 2 and out.is_file() and out.stat().st_size > 0:
                break  # the pool is busy with images
            time.sleep(0.1)
        assert len(workers) >= 2 and proc.poll() is None, "the pool never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == [], [p.pid for p in alive]
    finally:
        for p in workers:
            if p.is_running():
                p.kill()


def test_a_repeated_chexpert_row_is_refused_naming_its_lines(tmp_path, capsys):
    """Before: the image listed twice was counted twice ("3 images", exit 0) and given two records."""
    ds = write_chexpert(tmp_path, 3)
    lines = (ds / "train.csv").read_text().splitlines()
    (ds / "train.csv").write_text("\n".join([*lines, lines[2]]) + "\n")  # patient00002's row again, as line 5
    out = tmp_path / "axes.jsonl"
    res = _axes_cli([str(ds), "--kind", "chexpert", "--out", str(out)], capsys)
    assert res.returncode == 2, res.stderr[-1000:]
    assert f"error: {ds / 'train.csv'}: line 5, column 'Path'" in res.stderr
    assert "patient00002/study1/view1_frontal.jpg' is already listed on line 3" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
