"""The pretraining bundles' evaluate.json, inference.json and TorchScript export on a tiny pretrained encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, TINY, run_bundle

EVAL_TINY = {"n_bootstrap": 50, "linear_epochs": 30, "finetune_epochs": 1, "finetune_batch_size": 4, "knn_k": 3,
             "shift_batch": 2}
INPUT_SHAPE = {"mfassl_brats_pretrain": [1, 4, 32, 32, 32], "mfassl_chexpert_pretrain": [1, 1, 32, 32]}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """One short pretraining run per bundle; its models/model.pt."""
    out = {}
    for name in sorted(TINY):
        run_dir = tmp_path_factory.mktemp(name)
        report = run_bundle(name, run_dir, epochs=1)
        out[name] = Path(report["model_file"])
        assert out[name].is_file()
    return out


def run_config(name: str, config: str, out: Path, model_file: Path, **overrides) -> None:
    from monai.bundle import run

    root = BUNDLES / name
    run(config_file=[str(root / "configs" / "train.json"), str(root / "configs" / config)], bundle_root=str(root),
        output_dir=str(out), model_file=str(model_file), **{**TINY[name], **overrides})


def tiny_encoder(name: str, model_file: Path | None = None) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    from mfassl_medical.encoder_io import load_encoder

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / name / "configs" / "train.json"))
    parser.update({k: v for k, v in TINY[name].items() if k.startswith("network_def#") or k.endswith("_size")})
    net = parser.get_parsed_content("network_def")
    return (load_encoder(net, model_file) if model_file else net).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_evaluate_writes_scores_with_intervals_and_figures(tmp_path, pretrained, name):
    run_config(name, "evaluate.json", tmp_path, pretrained[name], **EVAL_TINY)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["readouts"]) == {"knn", "linear", "finetune"}
    assert report["n_train"] > 0 and report["n_test"] > 0
    for mode, r in report["readouts"].items():
        for label, metrics in r["per_label"].items():
            for metric in ("auroc", "auprc", "f1", "nll", "ece", "brier", "flip_consistency"):
                m = metrics[metric]
                if m["value"] is None or m["ci_low"] is None:  # undefined on this tiny test set: JSON null
                    continue
                assert m["ci_low"] - 1e-9 <= m["value"] <= m["ci_high"] + 1e-9, (mode, label, metric, m)
                if metric not in ("nll",):
                    assert 0.0 <= m["value"] <= 1.0, (mode, label, metric, m)
    shift = report["inference_shift"]
    assert np.isfinite(shift["relative_shift"]) and shift["relative_shift"] >= 0.0
    for key in ("roc", "reliability", "gate_maps", "axis_overlays"):
        assert Path(report["figures"][key]).stat().st_size > 1000, key
    if name == "mfassl_brats_pretrain":
        assert report["label_names"] == ["lesion_present", "lesion_left"] and report["lateral"] == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_inference_embeddings_match_the_encoder(tmp_path, pretrained, name):
    run_config(name, "inference.json", tmp_path, pretrained[name])
    meta = json.loads((tmp_path / "inference.json").read_text())
    emb = np.load(tmp_path / "embeddings.npy")
    gates = np.load(tmp_path / "gates.npy")
    rows = list(csv.DictReader(open(tmp_path / "index.csv")))
    assert emb.shape == (meta["n"], TINY[name]["network_def#embed_dim"]) == (len(rows), emb.shape[1])
    assert np.isfinite(emb).all() and emb.std() > 0
    assert gates.shape == (meta["n"], *meta["gate_grid"]) and gates.min() >= 0.0 and gates.max() <= 1.0
    assert Path(meta["gate_maps_png"]).stat().st_size > 1000
    # The first row is the encoder's output on the first preprocessed image.
    from monai.bundle import ConfigParser

    root = BUNDLES / name
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / "inference.json")])
    parser.update({**TINY[name], "bundle_root": str(root), "model_file": str(pretrained[name])})
    item = parser.get_parsed_content("dataset")[0]
    encoder = tiny_encoder(name, pretrained[name])
    with torch.no_grad():
        ref = encoder(torch.as_tensor(item["image"])[None].float())[0].numpy()
    np.testing.assert_allclose(emb[0], ref, rtol=1e-4, atol=1e-5)
    assert rows[0]["source"].split(";")[0] == str(item["source"][0] if isinstance(item["source"], list) else item["source"])


@pytest.mark.slow
def test_inference_on_a_list_of_files(tmp_path, pretrained):
    from mfassl_medical.pretraining import chexpert_pretrain_datalist

    files = [d["image"] for d in chexpert_pretrain_datalist(None, split="valid")[:2]]
    run_config("mfassl_chexpert_pretrain", "inference.json", tmp_path, pretrained["mfassl_chexpert_pretrain"],
               input_files=files)
    rows = list(csv.DictReader(open(tmp_path / "index.csv")))
    assert [r["source"] for r in rows] == files
    assert np.load(tmp_path / "embeddings.npy").shape[0] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_ckpt_export_reproduces_the_encoder(tmp_path, pretrained, name):
    from monai.bundle import ckpt_export

    root = BUNDLES / name
    ts = tmp_path / "model.ts"
    overrides = {k: v for k, v in TINY[name].items() if k.startswith("network_def#") or k == "roi_size"}
    # scripted (the zoo's default), from the standalone inference.json
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(pretrained[name]),
                meta_file=str(root / "configs" / "metadata.json"),
                config_file=str(root / "configs" / "inference.json"), bundle_root=str(root), **overrides)
    exported = torch.jit.load(str(ts))
    encoder = tiny_encoder(name, pretrained[name])
    x = torch.randn(*[2] + INPUT_SHAPE[name][1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(exported(x).numpy(), encoder(x).numpy(), rtol=1e-4, atol=1e-5)
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["required_packages_version"] == json.loads((root / "configs" / "metadata.json").read_text())[
        "required_packages_version"] and "optional_packages_version" not in meta


def test_load_encoder_names_a_bad_file(tmp_path):
    from mfassl_medical.encoder_io import load_encoder

    net = tiny_encoder("mfassl_chexpert_pretrain")
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="model.pt"):
        load_encoder(net, bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_encoder(net, tmp_path / "missing.pt")
    other = torch.nn.Linear(3, 3).state_dict()
    torch.save(other, bad)
    with pytest.raises(RuntimeError, match="no encoder weights"):
        load_encoder(net, bad)


def test_save_encoder_is_atomic_and_round_trips(tmp_path, monkeypatch):
    from mfassl_medical.encoder_io import load_encoder, save_encoder

    torch.manual_seed(0)
    net = tiny_encoder("mfassl_chexpert_pretrain")
    path = save_encoder(net, tmp_path / "models" / "model.pt")
    good = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_encoder(net, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and not list(path.parent.glob(".model.pt.*"))
    torch.manual_seed(1)
    other = tiny_encoder("mfassl_chexpert_pretrain")
    load_encoder(other, path)
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
