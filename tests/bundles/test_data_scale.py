"""The pretraining bundles at real-data scale: the axes file, the disk cache, bad samples, inference."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, TINY
from cli_runner import release_frames, run_monai_bundle

from mfassl_medical.data.chexpert import CHEXPERT_LABELS
from mfassl_medical.data.safe import SkipBadSamples, TooManyBadSamples
from mfassl_medical.errors import MedicalDataError

CHEXPERT = BUNDLES / "mfassl_chexpert_pretrain"


def write_chexpert(root: Path, n: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A CheXpert-v1.0-small folder (train.csv, patient/study/view JPGs) of ``n`` small bilateral images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ds = root / "CheXpert-v1.0-small"
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rows = []
    for i in range(n):
        c = w / 2 - 0.5 + rng.uniform(-3, 3)
        img = sum(np.exp(-(((xx - (c + s * w * 0.22)) / (w * 0.12)) ** 2 + ((yy - h / 2) / (h * 0.3)) ** 2))
                  for s in (-1, 1))
        img = np.clip(img * 200 + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        rel = f"CheXpert-v1.0-small/train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel, quality=95)
        rows.append([rel, "Male", 40, "Frontal", "PA", *([""] * len(CHEXPERT_LABELS))])
    with open(ds / "train.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS])
        wr.writerows(rows)
    return ds


def parsed(**overrides):
    """The CheXpert bundle's train.json with tiny sizes and ``overrides``, as the command line would set them."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(CHEXPERT / "configs" / "train.json"))
    p.update({"bundle_root": str(CHEXPERT), **TINY["mfassl_chexpert_pretrain"], "max_images": None, **overrides})
    return p


@pytest.fixture()
def chexpert(tmp_path):
    return write_chexpert(tmp_path / "data", 6)


# ----------------------------------------------------------------------------------------------- the axes file
def test_bundle_reads_the_axes_file_and_does_not_estimate(tmp_path, chexpert, monkeypatch, estimator_calls):
    from mfassl_medical.axes_cli import run_axes

    axes = tmp_path / "axes.jsonl"
    run_axes(str(chexpert), "chexpert", str(axes), workers=1, progress=False)
    table = {json.loads(ln)["path"]: json.loads(ln) for ln in axes.read_text().splitlines()}
    calls = estimator_calls
    calls.clear()  # count from here on
    p = parsed(dataset_dir=str(chexpert), axes_file=str(axes), cache="none", output_dir=str(tmp_path / "run"))
    ds = p.get_parsed_content("train#dataset")
    items = [ds[i] for i in range(len(ds))]
    assert calls == []  # every axis came from the file
    for it in items:
        rec = table[it["source"]]
        assert it["image_axis_info"]["method"] == "precomputed"
        assert it["axis_confidence"] == pytest.approx(rec["confidence"])
        assert np.allclose(it["image_axis_world"][:2], rec["normal"], atol=1e-5)
        assert it["image_axis_world"][2] == pytest.approx(rec["offset"], abs=1e-4)
        assert tuple(it["image"].shape) == (1, 48, 48)
    # without the file the same images are estimated, to the same axes
    p2 = parsed(dataset_dir=str(chexpert), cache="none", output_dir=str(tmp_path / "run2"))
    ds2 = p2.get_parsed_content("train#dataset")
    lazy = ds2[0]
    assert len(calls) == 1 and lazy["image_axis_info"]["method"] != "precomputed"
    assert lazy["image_axis_world"][2] == pytest.approx(items[0]["image_axis_world"][2], abs=0.5)


def test_images_missing_from_the_axes_file_are_estimated(tmp_path, chexpert, monkeypatch, estimator_calls):
    from mfassl_medical.axes_cli import run_axes

    axes = tmp_path / "axes.jsonl"
    run_axes(str(chexpert), "chexpert", str(axes), workers=1, progress=False)
    lines = axes.read_text().splitlines()
    axes.write_text("\n".join(lines[1:]) + "\n")
    calls = estimator_calls
    calls.clear()  # count from here on
    ds = parsed(dataset_dir=str(chexpert), axes_file=str(axes), cache="none",
                output_dir=str(tmp_path / "run")).get_parsed_content("train#dataset")
    methods = [ds[i]["image_axis_info"]["method"] for i in range(len(ds))]
    assert methods.count("precomputed") == 5 and len(calls) == 1


# ----------------------------------------------------------------------------------------------- the disk cache
def test_disk_cache_is_reused_by_a_second_run(tmp_path, chexpert, monkeypatch, estimator_calls):
    calls = estimator_calls
    calls.clear()  # count from here on
    first = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "runs" / "a")).get_parsed_content(
        "train#dataset")
    assert type(first.dataset).__name__ == "SharedPersistentDataset"  # auto = disk for a real dataset_dir
    a = [first[i] for i in range(len(first))]
    assert first.dataset.computed == 6 and len(calls) == 6
    cache = first.dataset.cache_dir
    assert cache.parent == (tmp_path / "runs" / "cache").resolve()
    files = sorted(cache.glob("*.pt"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 6 and not list(cache.glob("*.tmp"))
    calls.clear()
    second = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "runs" / "b")).get_parsed_content(
        "train#dataset")
    b = [second[i] for i in range(len(second))]
    assert second.dataset.cache_dir == cache
    assert second.dataset.computed == 0 and second.dataset.loaded == 6 and calls == []
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.pt"))] == mtimes
    for x, y in zip(a, b):
        assert torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"]))
    # other preprocessing, other folder
    third = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "runs" / "c"),
                   image_size=[40, 40]).get_parsed_content("train#dataset")
    assert third.dataset.cache_dir != cache


def test_a_batch_of_fresh_and_cached_items_collates(tmp_path, chexpert):
    ds = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "r" / "a")).get_parsed_content("train#dataset")
    ds[0], ds[1]  # a partly filled cache, as after a stopped first epoch
    again = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "r" / "b"),
                   num_workers=0).get_parsed_content("train#dataset")
    from monai.data import DataLoader

    batch = next(iter(DataLoader(again, batch_size=4, shuffle=False)))
    assert again.dataset.loaded == 2 and again.dataset.computed == 2
    assert tuple(batch["image"].shape) == (4, 1, 48, 48) and tuple(batch["image_axis"].shape) == (4, 3)


def test_torn_cache_file_is_recomputed(tmp_path, chexpert):
    ds = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "r" / "a")).get_parsed_content("train#dataset")
    first = [ds[i] for i in range(len(ds))]
    f = sorted(ds.dataset.cache_dir.glob("*.pt"))[0]
    f.write_bytes(f.read_bytes()[:100])  # a copy cut short: MONAI's own PersistentDataset re-raises this one
    ds2 = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "r" / "b")).get_parsed_content("train#dataset")
    again = [ds2[i] for i in range(len(ds2))]
    assert ds2.dataset.computed == 1 and ds2.dataset.loaded == 5
    for x, y in zip(first, again):
        assert torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"]))


def test_cache_options_as_the_command_line_gives_them():
    from mfassl_medical.pretraining import default_num_workers, resolve_cache_kind

    assert resolve_cache_kind("auto", None) == "memory" and resolve_cache_kind("AUTO", "/data/x") == "disk"
    assert resolve_cache_kind(" Disk ", None) == "disk"
    with pytest.raises(ValueError, match="option 'cache'"):
        resolve_cache_kind("ssd")
    assert default_num_workers(None) == 0 and default_num_workers("null") == 0
    assert default_num_workers("/data/x") == min(8, os.cpu_count() or 1)


def test_demo_data_keeps_the_memory_cache(tmp_path, chexpert):
    from mfassl_medical.pretraining import chexpert_pretrain_datalist, pretrain_dataset

    p = parsed()  # dataset_dir unset: the demo data
    assert p.get_parsed_content("num_workers") == 0 and p.get_parsed_content("cache") == "auto"
    data = chexpert_pretrain_datalist(str(chexpert), max_images=2)
    ds = pretrain_dataset(data, p.get_parsed_content("train#preprocessing"), cache="auto", dataset_dir=None,
                          output_dir=str(tmp_path / "run"), max_bad_fraction="0.5")
    assert type(ds.dataset).__name__ == "SafeCacheDataset" and ds.max_bad_fraction == 0.5
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------------------------- bad samples
class _Flaky(torch.utils.data.Dataset):
    def __init__(self, n: int, bad: set[int]):
        self.data = [{"image": f"img{i}.png", "source": f"img{i}.png"} for i in range(n)]
        self.bad = bad

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i in self.bad:
            raise RuntimeError("transform failed") from MedicalDataError("cannot read the image", f"img{i}.png")
        return torch.tensor([float(i)])


def test_skip_bad_samples_up_to_the_share():
    ds = SkipBadSamples(_Flaky(10, {3}), max_bad_fraction=0.1)
    got = [float(ds[i]) for i in range(10)]
    assert got[3] == 4.0 and ds.bad_indices == [3] and ds.bad_files() == ["img3.png"]
    s = ds.summary()
    assert s["bad_samples"] == 1 and s["bad_fraction"] == pytest.approx(0.1) and s["skipped_reads"] == 1
    ds[3]  # the same bad sample again is not a new one
    assert ds.summary()["bad_samples"] == 1 and ds.skipped == 2
    strict = SkipBadSamples(_Flaky(10, {3, 7}), max_bad_fraction=0.1)
    strict[3]
    with pytest.raises(TooManyBadSamples, match=r"2 of 10 samples .*max_bad_fraction 0.1.*img3.png; img7.png"):
        strict[7]
    with pytest.raises(ValueError, match="max_bad_fraction"):
        SkipBadSamples(_Flaky(2, set()), max_bad_fraction=1.5)


def test_bad_samples_seen_by_workers_are_counted_in_the_main_process():
    ds = SkipBadSamples(_Flaky(12, {2, 9}), max_bad_fraction=0.5)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    vals = torch.cat(list(loader)).flatten().tolist()
    assert len(vals) == 12 and 2.0 not in vals and 9.0 not in vals
    assert ds.bad_indices == [2, 9] and ds.summary()["bad_files"] == ["img2.png", "img9.png"]


def test_too_many_bad_samples_reaches_the_main_process_from_a_worker():
    ds = SkipBadSamples(_Flaky(8, {1, 5}), max_bad_fraction=0.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    with pytest.raises(MedicalDataError, match="max_bad_fraction 0") as err:
        list(loader)
    # the traceback's frames hold the loader's iterator in a reference cycle: cleared here, its workers stop now
    # instead of at a later test's garbage collection, which waited 5 s a worker for them
    release_frames(err.value)


def test_memory_cache_survives_an_unreadable_image(tmp_path, chexpert):
    bad = chexpert / "train/patient00002/study1/view1_frontal.jpg"
    bad.write_bytes(b"broken")
    p = parsed(dataset_dir=str(chexpert), cache="memory", output_dir=str(tmp_path / "run"), max_bad_fraction=0.2,
               num_workers=0)
    ds = p.get_parsed_content("train#dataset")  # caching does not stop at the bad image
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 6 and ds.bad_files() == [str(bad)]
    assert all(it["source"] != str(bad) for it in items)


def _cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return run_monai_bundle("run", *args)


def _tiny_args(out: Path) -> list[str]:
    args = ["--config_file", str(CHEXPERT / "configs" / "train.json"), "--bundle_root", str(CHEXPERT),
            "--output_dir", str(out), "--model_file", str(out / "model.pt"), "--epochs", "1"]
    for k, v in TINY["mfassl_chexpert_pretrain"].items():
        if k != "max_images":
            args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return args


@pytest.mark.slow
def test_bundle_run_skips_a_bad_image_then_stops_cleanly_past_the_limit(tmp_path):
    ds = write_chexpert(tmp_path / "data", 8)
    bad = ds / "train/patient00004/study1/view1_frontal.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    common = ["--dataset_dir", str(ds), "--num_workers", "2"]
    ok = _cli(_tiny_args(tmp_path / "ok") + common + ["--max_bad_fraction", "0.2"])
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["bad_samples"] == 1 and report["bad_files"] == [str(bad)] and report["iterations"] == 2
    assert "bad samples skipped: 1" in ok.stdout
    stop = _cli(_tiny_args(tmp_path / "stop") + common + ["--max_bad_fraction", "0.01"])
    assert stop.returncode == 1, (stop.returncode, stop.stderr[-3000:])  # an error, not an abort (134)
    assert "max_bad_fraction 0.01" in stop.stderr and str(bad) in stop.stderr
    assert "terminate called" not in stop.stderr


# ----------------------------------------------------------------------------------------------- inference
def test_inference_over_a_folder_with_a_bad_image_writes_every_good_output(tmp_path, chexpert):
    from monai.bundle import ConfigParser

    bad = chexpert / "train/patient00003/study1/view1_frontal.jpg"
    bad.write_bytes(b"not an image")
    p = ConfigParser()
    p.read_config([str(CHEXPERT / "configs" / "train.json"), str(CHEXPERT / "configs" / "inference.json")])
    p.update({"bundle_root": str(CHEXPERT), **TINY["mfassl_chexpert_pretrain"], "input_dir": str(chexpert / "train"),
              "output_dir": str(tmp_path / "inf"), "model_file": str(tmp_path / "none.pt")})
    torch.manual_seed(0)
    from mfassl_medical.inference import EmbeddingExporter

    exporter = EmbeddingExporter(p.get_parsed_content("network_def"), p.get_parsed_content("dataset"),
                                 str(tmp_path / "inf"), batch_size=4)
    out = exporter.run()
    assert out["n"] == 5 and out["n_bad"] == 1 and out["bad"][0]["source"] == str(bad)
    emb = np.load(tmp_path / "inf" / "embeddings.npy")
    assert emb.shape == (5, 48) and np.isfinite(emb).all()
    rows = list(csv.DictReader(open(tmp_path / "inf" / "index.csv")))
    assert len(rows) == 5 and str(bad) not in {r["source"] for r in rows}
    bad_rows = list(csv.DictReader(open(tmp_path / "inf" / "bad_images.csv")))
    assert [r["source"] for r in bad_rows] == [str(bad)] and bad_rows[0]["reason"]
    assert json.loads((tmp_path / "inf" / "inference.json").read_text())["n_bad"] == 1


def test_evaluation_data_skips_and_lists_a_bad_image(tmp_path, chexpert):
    from mfassl_medical.data.cache import SafeCacheDataset
    from mfassl_medical.evaluate import _stack

    bad = chexpert / "train/patient00005/study1/view1_frontal.jpg"
    bad.write_bytes(b"")
    p = parsed(dataset_dir=str(chexpert))
    data = [{**it, "labels": np.zeros(1, np.float32)} for it in p.get_parsed_content("train#datalist")]
    ds = SafeCacheDataset(data=data, transform=p.get_parsed_content("train#preprocessing"), num_workers=0,
                          progress=False)
    skipped: list[dict] = []
    x, y, items = _stack(ds, "test images", skipped)
    assert tuple(x.shape) == (5, 1, 48, 48) and tuple(y.shape) == (5, 1)
    assert [b["source"] for b in skipped] == [str(bad)] and "empty" in skipped[0]["reason"]


# ----------------------------------------------------------------------------------------------- issue 23
def test_disk_cache_recomputes_an_image_replaced_under_the_same_name(tmp_path, chexpert):
    """Before: the item was keyed by its path only; the old pixels came back (``bad_samples 0``)."""
    from PIL import Image

    first = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "r" / "a")).get_parsed_content(
        "train#dataset")
    old = [first[i] for i in range(len(first))]
    target = chexpert / "train/patient00002/study1/view1_frontal.jpg"
    flipped = np.asarray(Image.open(target))[:, ::-1].copy()  # another image, the same name
    Image.fromarray(flipped).save(target, quality=95)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 5_000_000_000))
    second = parsed(dataset_dir=str(chexpert), output_dir=str(tmp_path / "r" / "b")).get_parsed_content(
        "train#dataset")
    new = [second[i] for i in range(len(second))]
    assert second.dataset.computed == 1 and second.dataset.loaded == 5
    idx = [i for i, it in enumerate(new) if it["source"] == str(target)]
    assert len(idx) == 1
    assert not torch.equal(torch.as_tensor(old[idx[0]]["image"]), torch.as_tensor(new[idx[0]]["image"]))
    for i, (x, y) in enumerate(zip(old, new)):
        if i != idx[0]:
            assert torch.equal(torch.as_tensor(x["image"]), torch.as_tensor(y["image"]))


def test_file_identity_follows_size_and_mtime(tmp_path):
    from mfassl_medical.data.cache import file_identity

    f = tmp_path / "a.png"
    f.write_bytes(b"12345")
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"x")
    item = {"image": str(f), "source": str(f), "case": "c", "series": [str(series)]}
    before = file_identity(item)
    assert file_identity(dict(item)) == before  # the same files, the same identity
    os.utime(f, ns=(0, f.stat().st_mtime_ns + 1))
    assert file_identity(item) != before
    mid = file_identity(item)
    (series / "2.dcm").write_bytes(b"y")  # a slice added to a series folder
    assert file_identity(item) != mid


class _Ok(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.data = [{"image": f"img{i}.png"} for i in range(n)]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return torch.tensor([float(i)])


def test_excluded_items_are_bad_samples_from_the_start():
    from mfassl_medical.data.safe import DataList

    excluded = [{"source": "/data/BraTS_9", "reason": "case is missing modality file(s) ['t2']"}]
    ds = SkipBadSamples(_Ok(9), max_bad_fraction=0.2, excluded=excluded)
    s = ds.summary()
    assert s["bad_samples"] == 1 and s["bad_fraction"] == pytest.approx(0.1) and s["bad_files"] == ["/data/BraTS_9"]
    assert s["excluded"] == excluded and ds.total == 10
    with pytest.raises(TooManyBadSamples, match=r"1 of 10 samples .*max_bad_fraction 0.05.*/data/BraTS_9"):
        SkipBadSamples(_Ok(9), max_bad_fraction=0.05, excluded=excluded)  # refused before the first step
    wrapped = _Ok(3)
    wrapped.data = DataList(wrapped.data, excluded=excluded)  # taken from the wrapped dataset's DataList
    assert SkipBadSamples(wrapped).bad_files() == ["/data/BraTS_9"]


def _brats_cases(root: Path, n: int, shape=(12, 12, 10)) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    for i in range(n):
        case = root / f"BraTS2021_{i:05d}"
        case.mkdir(parents=True)
        for m in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) + 0.1, np.eye(4)),
                     str(case / f"{case.name}_{m}.nii.gz"))
    return root


def test_brats_case_folders_left_out_count_in_the_bundle_report_and_limit(tmp_path):
    """Before: a case folder lacking a modality (or holding only DICOM) vanished: ``bad_samples 0`` in report.json,
    and it never counted toward max_bad_fraction."""
    from monai.bundle import ConfigParser

    from mfassl_medical.pretrain_report import bad_sample_report

    root = _brats_cases(tmp_path / "brats", 4)
    (root / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").unlink()
    (root / "BraTS2021_00009" / "DICOM").mkdir(parents=True)
    (root / "BraTS2021_00009" / "DICOM" / "IM1.dcm").write_bytes(b"\0" * 132)

    def dataset(limit: float):
        p = ConfigParser()
        p.read_config(str(BUNDLES / "mfassl_brats_pretrain" / "configs" / "train.json"))
        p.update({"bundle_root": str(BUNDLES / "mfassl_brats_pretrain"), **TINY["mfassl_brats_pretrain"],
                  "max_cases": None, "dataset_dir": str(root), "cache": "none", "max_bad_fraction": limit,
                  "output_dir": str(tmp_path / "run")})
        return p.get_parsed_content("train#dataset")

    report = bad_sample_report(dataset(0.5))
    assert report["bad_samples"] == 2 and report["bad_fraction"] == pytest.approx(2 / 5)
    assert report["bad_files"] == [str(root / "BraTS2021_00001"), str(root / "BraTS2021_00009")]
    assert "missing modality file(s) ['flair']" in report["excluded"][0]["reason"]
    assert "DICOM series?" in report["excluded"][1]["reason"]
    from mfassl_medical.data.safe import find_medical_error

    with pytest.raises(Exception) as err:  # refused before the first step (the config wraps the error)
        dataset(0.1)
    cause = find_medical_error(err.value, (TooManyBadSamples,))
    assert cause is not None and re.search(r"2 of 5 samples .*max_bad_fraction 0.1.*BraTS2021_00001", str(cause))


def test_inference_skips_an_image_of_another_shape_and_lists_left_out_cases(tmp_path, chexpert):
    """Before: one image of another shape stopped the whole inference with "stack expects each tensor to be equal
    size", naming no file."""
    from mfassl_medical.data.safe import DataList
    from mfassl_medical.inference import EmbeddingExporter

    good = [torch.rand(1, 32, 32) for _ in range(3)]

    class _Data(torch.utils.data.Dataset):
        def __init__(self):
            self.data = DataList([{"image": f"/d/img{i}.png", "source": f"/d/img{i}.png"} for i in range(4)],
                                 excluded=[{"source": "/d/case_x", "reason": "case is missing modality file(s)"}])

        def __len__(self):
            return 4

        def __getitem__(self, i):
            img = torch.rand(3, 32, 32) if i == 2 else good[min(i, 2)]
            return {"image": img, "source": f"/d/img{i}.png"}

    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([str(CHEXPERT / "configs" / "train.json"), str(CHEXPERT / "configs" / "inference.json")])
    p.update({"bundle_root": str(CHEXPERT), **TINY["mfassl_chexpert_pretrain"]})
    out = EmbeddingExporter(p.get_parsed_content("network_def"), _Data(), str(tmp_path / "inf"), batch_size=4).run()
    assert out["n"] == 3 and out["n_bad"] == 2
    assert [b["source"] for b in out["bad"]] == ["/d/case_x", "/d/img2.png"]
    assert "image shape (3, 32, 32)" in out["bad"][1]["reason"]
    assert np.load(tmp_path / "inf" / "embeddings.npy").shape == (3, 48)


def test_rgb_rgba_and_single_frame_dicom_images_batch_with_grey_ones(tmp_path, chexpert):
    """Before: one RGB(A) PNG or single-frame DICOM among the grey images stopped the pretraining and the inference
    with "stack expects each tensor to be equal size", naming no file."""
    import shutil

    from monai.data import DataLoader
    from PIL import Image
    from pydicom.data import get_testdata_file

    csv_path = chexpert / "train.csv"
    text = csv_path.read_text()
    for k, kind in ((2, "RGB"), (3, "RGBA"), (4, "DICOM")):
        jpg = chexpert / f"train/patient{k:05d}/study1/view1_frontal.jpg"
        grey = np.asarray(Image.open(jpg))
        if kind == "DICOM":
            new = jpg.with_suffix(".dcm")
            shutil.copy(get_testdata_file("CT_small.dcm"), new)
        else:
            new = jpg.with_suffix(".png")
            planes = [grey, grey, grey] + ([np.full_like(grey, 255)] if kind == "RGBA" else [])
            Image.fromarray(np.dstack(planes), kind).save(new)
        jpg.unlink()
        text = text.replace(jpg.relative_to(chexpert.parent).as_posix(), new.relative_to(chexpert.parent).as_posix())
    csv_path.write_text(text)
    ds = parsed(dataset_dir=str(chexpert), cache="none", output_dir=str(tmp_path / "run"),
                num_workers=0).get_parsed_content("train#dataset")
    batch = next(iter(DataLoader(ds, batch_size=6, shuffle=False)))
    assert tuple(batch["image"].shape) == (6, 1, 48, 48) and ds.bad_indices == []


def test_bundle_inference_embeds_rgb_rgba_and_single_frame_dicom_images(tmp_path, chexpert):
    """``python -m monai.bundle run`` with inference.json over a folder mixing grey JPGs, an RGB and an RGBA PNG and
    a single-frame DICOM. Before: the run stopped with "stack expects each tensor to be equal size", naming no
    file, and wrote no embedding."""
    import shutil

    from PIL import Image
    from pydicom.data import get_testdata_file

    images = tmp_path / "images"
    images.mkdir()
    for k, jpg in enumerate(sorted(chexpert.glob("train/*/study1/view1_frontal.jpg"))[:3]):
        shutil.copy(jpg, images / f"grey{k}.jpg")
    grey = np.asarray(Image.open(images / "grey0.jpg"))
    Image.fromarray(np.dstack([grey, grey // 2, grey // 4]), "RGB").save(images / "rgb.png")
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA").save(images / "rgba.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), images / "one_frame.dcm")
    model = tmp_path / "model.pt"
    torch.save(parsed().get_parsed_content("network_def").state_dict(), model)
    args = ["--config_file", json.dumps([str(CHEXPERT / "configs" / "train.json"),
                                         str(CHEXPERT / "configs" / "inference.json")]),
            "--bundle_root", str(CHEXPERT), "--input_dir", str(images), "--output_dir", str(tmp_path / "inf"),
            "--model_file", str(model), "--batch_size", "6"]
    for k, v in TINY["mfassl_chexpert_pretrain"].items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    res = _cli(args)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "inf" / "index.csv")))
    assert sorted(Path(r["source"]).name for r in rows) == ["grey0.jpg", "grey1.jpg", "grey2.jpg", "one_frame.dcm",
                                                            "rgb.png", "rgba.png"]
    emb = np.load(tmp_path / "inf" / "embeddings.npy")
    assert emb.shape == (6, 48) and np.isfinite(emb).all()
    assert json.loads((tmp_path / "inf" / "inference.json").read_text())["n_bad"] == 0
