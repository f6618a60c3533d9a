"""The BraTS segmentation bundle: config keys MONAI Label reads, the label-map output, data lists, and a tiny
train + evaluate run through ``python -m monai.bundle`` on the demo data with a pretrained encoder."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mfassl_medical.label_app import TINY_NETWORK, default_bundle_dir
from mfassl_medical.segmentation import LABEL_NAMES, brats_datalists, regions_to_brats_labels
from mfassl_medical.transforms import ConvertBraTSLabels

from cli_runner import run_monai_bundle

BUNDLE = default_bundle_dir()
CONFIGS = BUNDLE / "configs"


def load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def test_layout():
    for rel in ("LICENSE", "configs/metadata.json", "configs/train.json", "configs/evaluate.json",
                "configs/inference.json", "configs/logging.conf", "docs/README.md", "models/.gitkeep"):
        assert (BUNDLE / rel).is_file(), rel


def test_metadata_is_what_monailabel_reads():
    meta = load("metadata.json")
    fmt = meta["network_data_format"]
    key_image, image = next(iter(fmt["inputs"].items()))
    key_pred, pred = next(iter(fmt["outputs"].items()))
    assert (key_image, key_pred) == ("image", "pred")
    assert image["num_channels"] == 4 and len(image["spatial_shape"]) == 3
    # pred is the network output (3 region channels); the written label map is described as label_map, whose
    # names label_app serves to MONAI Label (it reads the first output's channel_def)
    assert pred["num_channels"] == 3 and pred["dtype"] == "float32"
    label_map = fmt["outputs"]["label_map"]
    assert (label_map["num_channels"], label_map["dtype"]) == (1, "uint8")
    labels = {int(k): v for k, v in label_map["channel_def"].items()}
    assert labels == LABEL_NAMES


def test_inference_keys_and_network_match_training():
    inf, train = load("inference.json"), load("train.json")
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "device", "bundle_root"):
        assert key in inf, key
    assert inf["network_def"] == train["network_def"]
    for key in ("feature_size", "depths", "num_heads", "window_size", "patch_size", "roi_size", "sw_roi_size"):
        assert inf[key] == train[key], key
    # MONAI Label's venv has no mfassl: inference.json must only import what it has (torch, MONAI, scripts/)
    assert "mfassl_medical" not in json.dumps(inf) and "import mfassl" not in json.dumps(inf)
    assert inf["output_dir"] != train["output_dir"] and "predictions" in inf["output_dir"]


@pytest.mark.parametrize("configs, inferer", [(("train.json",), "validate#inferer"),
                                              (("train.json", "evaluate.json"), "validate#inferer"),
                                              (("inference.json",), "inferer")])
def test_sliding_window_size_is_sw_roi_size_defaulting_to_the_training_crop(monkeypatch, configs, inferer):
    """``sw_roi_size`` sets the sliding window of validation, evaluation and inference; unset, it is ``roi_size``
    (the training crop). The command line's ``--sw_roi_size "[96,96,96]"`` arrives as a list."""
    monkeypatch.syspath_prepend(str(BUNDLE))
    from fire.parser import DefaultParseValue

    def window(**overrides) -> tuple[int, ...]:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        parser.update({"bundle_root": str(BUNDLE), **overrides})
        return tuple(parser.get_parsed_content(inferer).roi_size)

    assert window() == (96, 96, 96)
    assert window(roi_size=[64, 64, 64]) == (64, 64, 64)  # follows the crop
    assert window(roi_size=[64, 64, 64], sw_roi_size=DefaultParseValue("[128,128,96]")) == (128, 128, 96)


def test_inference_label_map_equals_helper_and_inverts_region_conversion(monkeypatch):
    monkeypatch.syspath_prepend(str(BUNDLE))  # as MONAI Label does while it parses the bundle (scripts/)
    parser = ConfigParser(load("inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    lambdad = next(t for t in post.transforms if type(t).__name__ == "Lambdad")
    rng = np.random.default_rng(0)
    seg = torch.as_tensor(rng.choice([0, 1, 2, 4], size=(1, 6, 7, 5)))
    regions = ConvertBraTSLabels()(seg)  # TC, WT, ET
    assert torch.equal(regions_to_brats_labels(regions), seg.to(torch.uint8))
    assert torch.equal(lambdad({"pred": regions})["pred"], seg.to(torch.uint8))
    random_regions = torch.as_tensor(rng.integers(0, 2, size=(3, 4, 4, 4)), dtype=torch.float32)
    torch.testing.assert_close(lambdad({"pred": random_regions})["pred"], regions_to_brats_labels(random_regions))


def test_datalists_split_demo_data():
    d = brats_datalists(None, val_fraction=0.25, seed=0)
    names = lambda items: {c["case"] for c in items}  # noqa: E731
    assert names(d["train"]).isdisjoint(names(d["val"]))
    assert len(d["val"]) == 3 and len(d["train"]) == 9
    assert all(len(c["image"]) == 4 and c["label"].endswith("_seg.nii.gz") for c in d["all"])
    assert brats_datalists(None, seed=0) == d and brats_datalists(None, seed=1) != d
    small = brats_datalists(None, max_cases=3)
    assert len(small["all"]) == 3 and len(small["val"]) == 1


@pytest.mark.slow
def test_train_with_pretrained_encoder_then_evaluate(tmp_path):
    from mfassl.backbones import MFASwin
    from mfassl.method import MFASSL

    torch.manual_seed(0)
    bb = MFASwin(3, in_chans=4, embed_dim=TINY_NETWORK["feature_size"], depths=TINY_NETWORK["depths"],
                 num_heads=TINY_NETWORK["num_heads"], window_size=TINY_NETWORK["window_size"], mfa_stage=2)
    ckpt = tmp_path / "checkpoint_1.pt"
    method = MFASSL(bb, "dino", dict(out_dim=64, hidden_dim=32, bottleneck_dim=16),
                    views=dict(global_size=32, local_size=16, n_local=2))
    torch.save({"model": method.state_dict()}, ckpt)
    root = tmp_path / "run"
    overrides = {**TINY_NETWORK, "epochs": 1, "epoch_length": 1, "max_cases": 3, "pretrained_checkpoint": str(ckpt),
                 "learning_rate": 1e-3}
    res = run_monai_bundle("run", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
                           *[a for k, v in overrides.items() for a in (f"--{k}", json.dumps(v))])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model_final.pt").is_file()
    cmd = ["run", "--config_file", json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]),
           "--bundle_root", str(root), "--max_cases", "3"]
    for k, v in TINY_NETWORK.items():
        cmd += [f"--{k}", json.dumps(v)]
    res = run_monai_bundle(*cmd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (root / "eval" / "metrics.csv").read_text()
    rows = dict(line.split(",") for line in summary.strip().splitlines())
    for key in ("val_mean_dice", "dice_tc", "dice_wt", "dice_et", "hd95_tc", "hd95_wt", "hd95_et"):
        assert key in rows, key
    assert 0.0 <= float(rows["val_mean_dice"]) <= 1.0
    with open(root / "eval" / "dice_wt_raw.csv") as f:
        assert len(list(csv.reader(f))) == 2  # header + the one validation case

    # inference.json on the BraTS case layout (four modality files per case), with the model just trained
    from mfassl_medical.demo_data import build_demo_data

    case = sorted(p for p in build_demo_data().brats.iterdir() if p.is_dir())[0]
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / case.name).symlink_to(case, target_is_directory=True)
    cmd = ["run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(root),
           "--dataset_dir", str(studies)]
    for k, v in TINY_NETWORK.items():
        cmd += [f"--{k}", json.dumps(v)]
    res = run_monai_bundle(*cmd, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    written = sorted((root / "predictions").rglob("*.nii.gz"))
    assert [p.name for p in written] == [f"{case.name}_seg.nii.gz"]
    import nibabel as nib

    seg = nib.load(str(written[0]))
    image = nib.load(str(sorted(case.glob("*.nii.gz"))[0]))
    assert seg.shape[:3] == image.shape[:3]  # back on the case's own grid
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert not (root / "eval" / f"{case.name}_seg.nii.gz").exists()


def _run_inference(tmp_path, *args):
    cmd = ["run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(tmp_path / "bundle"), *args]
    for k, v in TINY_NETWORK.items():
        cmd += [f"--{k}", json.dumps(v)]
    return run_monai_bundle(*cmd, cwd=tmp_path)


def test_inference_refuses_an_unset_dataset_dir(tmp_path):
    """Before: exit 0 having written nothing (the default <bundle_root>/studies did not exist)."""
    (tmp_path / "bundle").mkdir()
    res = _run_inference(tmp_path)
    assert res.returncode != 0
    assert "dataset_dir is not set" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "bundle" / "predictions").exists()


def test_inference_datalist_refuses_a_missing_or_empty_folder(tmp_path):
    data, _ = _scripts()
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        data.inference_datalist(str(tmp_path / "nope"))
    (tmp_path / "empty" / "labels").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty holds no case"):
        data.inference_datalist(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="dataset_dir is not set"):
        data.inference_datalist(None)


def _scripts():
    sys.path.insert(0, str(BUNDLE))
    try:
        from scripts import data, networks
    finally:
        sys.path.remove(str(BUNDLE))
    return data, networks


def test_inference_datalist_reads_brats_case_folders_and_4d_files(tmp_path):
    data, _ = _scripts()
    for case, names in {"BraTS2021_00001": ["BraTS2021_00001_%s.nii.gz" % m for m in ("flair", "t1", "t1ce", "t2", "seg")],
                        "BraTS-GLI-00002-000": ["BraTS-GLI-00002-000-%s.nii.gz" % m for m in ("t1n", "t1c", "t2w", "t2f")]}.items():
        (tmp_path / case).mkdir()
        for n in names:
            (tmp_path / case / n).write_bytes(b"")
    (tmp_path / "BraTS2021_00003.nii.gz").write_bytes(b"")
    (tmp_path / "labels").mkdir()
    items = data.inference_datalist(str(tmp_path))
    assert [i["case"] for i in items] == ["BraTS-GLI-00002-000", "BraTS2021_00001", "BraTS2021_00003"]
    assert [Path(p).name for p in items[1]["image"]] == [
        "BraTS2021_00001_t1.nii.gz", "BraTS2021_00001_t1ce.nii.gz", "BraTS2021_00001_t2.nii.gz",
        "BraTS2021_00001_flair.nii.gz"]
    assert [Path(p).name.split("-")[-1] for p in items[0]["image"]] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz",
                                                                        "t2f.nii.gz"]
    assert items[2]["image"] == str(tmp_path / "BraTS2021_00003.nii.gz")
    (tmp_path / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    (tmp_path / "BraTS2021_00004" / "DICOM").mkdir(parents=True)
    (tmp_path / "BraTS2021_00004" / "DICOM" / "IM0001").write_bytes(b"\0" * 128 + b"DICM")
    items = data.inference_datalist(str(tmp_path))  # the folders that cannot be used are items with an error
    bad = {i["case"]: i for i in items if "error" in i}
    assert sorted(bad) == ["BraTS2021_00001", "BraTS2021_00004"] and "labels" not in {i["case"] for i in items}
    assert re.search(r"BraTS2021_00001 lacks the modality file\(s\) \['_t2'\]", bad["BraTS2021_00001"]["error"])
    assert "holds DICOM files, no NIfTI modality files" in bad["BraTS2021_00004"]["error"]
    fmt = data.CaseNameFormatter()
    assert fmt({"filename_or_obj": "/d/BraTS2021_00001/BraTS2021_00001_t1.nii.gz"}, None)["subject"] == \
        "/d/BraTS2021_00001/BraTS2021_00001.nii.gz"
    assert fmt({"filename_or_obj": "/d/BraTS-GLI-00002-000-t1n.nii.gz"}, None)["subject"] == "/d/BraTS-GLI-00002-000.nii.gz"


@pytest.mark.parametrize("spatial_dims,shape,kw", [(3, (1, 4, 64, 64, 64), {}), (3, (1, 4, 64, 96, 64), {"window_size": 7}),
                                                    (2, (2, 4, 64, 96), {"downsample": "mergingv2"})])
def test_scriptable_swinunetr_equals_monai_and_scripts(spatial_dims, shape, kw):
    """Before: torch.jit.script(SwinUNETR) raised NotSupportedError inside torch (torch.utils.checkpoint)."""
    from monai.networks.nets import SwinUNETR as Stock

    _, networks = _scripts()
    args = dict(in_channels=4, out_channels=3, feature_size=12, depths=(1, 2, 1, 1), num_heads=(1, 2, 3, 4),
                window_size=kw.pop("window_size", 4), spatial_dims=spatial_dims, **kw)
    torch.manual_seed(0)
    stock, ours = Stock(**args).eval(), networks.SwinUNETR(**args).eval()
    ours.load_state_dict(stock.state_dict(), strict=True)
    scripted = torch.jit.script(ours)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = stock(x)
        torch.testing.assert_close(ours(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted(x), ref, rtol=1e-5, atol=1e-5)


def _seg_case(root: Path, case: str, shape=(64, 64, 64), seed: int = 0) -> list[Path]:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / case).mkdir(parents=True)
    files = []
    for m in ("t1", "t1ce", "t2", "flair"):
        files.append(root / case / f"{case}_{m}.nii.gz")
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) + 0.1, np.eye(4)), str(files[-1]))
    return files


def test_inference_names_the_file_at_fault_and_goes_on_with_the_other_cases(tmp_path):
    """Before: a truncated modality stopped the run with ``EOFError ... LoadImaged`` naming no file, a case folder
    lacking a modality stopped it too, NaN in a modality gave a label map silently and a DICOM-only case folder
    vanished."""
    import nibabel as nib

    from mfassl_medical.label_app import _bundle_network

    data = tmp_path / "cases"
    _seg_case(data, "BraTS2021_00000")
    cut = _seg_case(data, "BraTS2021_00001", seed=1)[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    nan = _seg_case(data, "BraTS2021_00002", seed=2)[3]
    arr = np.asarray(nib.load(str(nan)).dataobj).copy()
    arr[5, 6, 7] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(nan))
    _seg_case(data, "BraTS2021_00003", seed=3)[2].unlink()
    (data / "BraTS2021_00004" / "series").mkdir(parents=True)
    (data / "BraTS2021_00004" / "series" / "IM1.dcm").write_bytes(b"\0" * 132)
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(_bundle_network(BUNDLE, TINY_NETWORK).state_dict(), tmp_path / "bundle" / "models" / "model.pt")
    res = _run_inference(tmp_path, "--dataset_dir", str(data))
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    written = sorted(p.name for p in (tmp_path / "bundle" / "predictions").glob("*.nii.gz"))
    assert written == ["BraTS2021_00000_seg.nii.gz"]
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "bundle" / "predictions" / "bad_cases.csv"))}
    assert sorted(rows) == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003", "BraTS2021_00004"]
    assert rows["BraTS2021_00001"]["source"] == str(cut) and "cannot read the image (EOFError" in \
        rows["BraTS2021_00001"]["reason"]
    assert rows["BraTS2021_00002"]["source"] == str(nan) and "1 non-finite values (1 NaN)" in \
        rows["BraTS2021_00002"]["reason"]
    assert "lacks the modality file(s) ['_t2']" in rows["BraTS2021_00003"]["reason"]
    assert "holds DICOM files" in rows["BraTS2021_00004"]["reason"]
    assert f"case BraTS2021_00001 skipped: {cut}: cannot read the image" in log
    assert "segmented 1 of 5 case(s); 4 skipped" in log and "Traceback" not in log
    # every case bad: the run fails, naming them
    (data / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz").write_bytes(b"\x1f\x8b broken")
    res = _run_inference(tmp_path, "--dataset_dir", str(data))
    assert res.returncode != 0 and "none of the 5 case(s) could be read" in res.stdout + res.stderr
