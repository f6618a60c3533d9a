"""The pretraining bundles at real-data scale: the axes file, the disk cache, bad samples, inference."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, TINY

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
    with pytest.raises(MedicalDataError, match="max_bad_fraction 0"):
        list(loader)


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
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


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
