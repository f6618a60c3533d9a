"""The pretraining bundles run end to end on the demo data with tiny overrides (as the model zoo's CI does)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bundle_utils import BUNDLES, TINY, run_bundle  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("objective", ["dino", "mae"])
def test_one_epoch_train(tmp_path, name, objective):
    extra = {"objective_args#mae": {"decoder_dim": 48, "decoder_depth": 1, "decoder_heads": 4}}
    report = run_bundle(name, tmp_path, epochs=2, objective=objective, **extra)
    assert report["iterations"] > 0 and report["epochs"] == 2
    assert math.isfinite(report["loss_first"]) and math.isfinite(report["loss_last"])
    assert report["axis_fallbacks"] == 0 and report["axis_confidence_median"] > 0.3
    assert report["mfa_on_iterations"] > 0
    for key in ("loss_curves_png", "axis_overlays_png"):
        assert Path(report[key]).stat().st_size > 1000
    ckpt = sorted((tmp_path / "checkpoints").glob("checkpoint_*.pt"))
    assert ckpt and "model" in torch.load(ckpt[-1], weights_only=True)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_baseline_switch(tmp_path):
    report = run_bundle("mfassl_chexpert_pretrain", tmp_path, epochs=1, mirror=False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert all(r["mirror"] == 0.0 and r["l_eq"] == 0.0 for r in history)
    assert report["mfa_on_iterations"] == 0
    # no schedule of symmetry terms that the baseline does not have, and a report that says so
    assert not any("w" in r or "ramp" in r for r in history)
    from mfassl_medical.pretrain_report import format_report

    assert report["mirror"] is False
    text = format_report(report)
    assert "mirror off" in text and "w(t)" not in text


@pytest.mark.slow
def test_resume_gives_the_same_losses(tmp_path):
    run_bundle("mfassl_chexpert_pretrain", tmp_path / "full", epochs=2)
    full = [r["loss"] for r in json.loads((tmp_path / "full" / "history.json").read_text())]
    # a run cut after its first epoch: the schedules still plan 2 epochs
    run_bundle("mfassl_chexpert_pretrain", tmp_path / "cut", epochs=1, schedule_epochs=2)
    first = [r["loss"] for r in json.loads((tmp_path / "cut" / "history.json").read_text())]
    report = run_bundle("mfassl_chexpert_pretrain", tmp_path / "cut", epochs=2, resume_from="auto")
    whole = [r["loss"] for r in json.loads((tmp_path / "cut" / "history.json").read_text())]
    assert report["epochs"] == 2
    assert whole[:len(first)] == first  # the resumed run keeps the history of the first one
    assert whole == pytest.approx(full, abs=1e-5)


def test_configs_are_valid_json_with_the_required_sections():
    for name in TINY:
        cfg = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
        for key in ("network_def", "method", "optimizer", "train", "initialize", "run", "finalize", "objective",
                    "mirror", "dataset_dir", "lambda_eq", "lambda_mid", "beta", "t_sym", "t_mfa", "t_gate"):
            assert key in cfg, (name, key)
        assert cfg["network_def"]["_target_"].startswith("mfassl_medical.networks.")
        for f in ("metadata.json", "multi_gpu_train.json", "logging.conf"):
            assert (BUNDLES / name / "configs" / f).is_file()
        assert (BUNDLES / name / "LICENSE").is_file() and (BUNDLES / name / "docs" / "README.md").is_file()


@pytest.mark.slow
def test_swin_pretraining_feeds_the_segmentation_encoder(tmp_path):
    from monai.networks.nets import SwinUNETR

    from mfassl_medical.segmentation import load_pretrained_encoder

    swin = {"network_def#embed_dim": 12, "network_def#depths": [1, 1, 1, 1], "network_def#num_heads": [1, 2, 3, 4],
            "network_def#window_size": 4, "roi_size": [64, 64, 64], "local_size": [32, 32, 32], "max_cases": 2}
    run_bundle("mfassl_brats_pretrain", tmp_path, configs=("train.json", "swin.json"), epochs=1, **swin)
    ckpt = sorted((tmp_path / "checkpoints").glob("checkpoint_*.pt"))[-1]
    seg = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                    window_size=4)
    report = load_pretrained_encoder(seg, ckpt)
    state = torch.load(ckpt, weights_only=True)["model"]
    assert report.loaded and not report.missing
    key = "swinViT.layers1.0.blocks.0.attn.qkv.weight"
    assert torch.equal(seg.state_dict()[key], state["objective.backbone." + key])
    # the encoder file the run leaves in models/ loads the same way
    seg2 = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                     window_size=4)
    assert load_pretrained_encoder(seg2, tmp_path / "models" / "model.pt").loaded
    assert torch.equal(seg2.state_dict()[key], state["objective.backbone." + key])


@pytest.mark.slow
def test_related_objectives_in_the_bundles(tmp_path):
    """DAGMaN on the Swin BraTS config and MixedAE on the 2D CheXpert config, with tiny overrides."""
    mixed = run_bundle("mfassl_chexpert_pretrain", tmp_path / "mixedae", epochs=1, objective="mixedae",
                       **{"objective_args#mixedae": {"decoder_dim": 48, "decoder_depth": 1, "decoder_heads": 4,
                                                     "proj_dim": 16}})
    assert mixed["iterations"] > 0 and math.isfinite(mixed["loss_first"]) and math.isfinite(mixed["loss_last"])
    swin = {"network_def#embed_dim": 12, "network_def#depths": [1, 1, 1, 1], "network_def#num_heads": [1, 2, 3, 4],
            "network_def#window_size": 4, "roi_size": [64, 64, 64], "local_size": [32, 32, 32], "max_cases": 2}
    dag = run_bundle("mfassl_brats_pretrain", tmp_path / "dagman", configs=("train.json", "swin.json"), epochs=1,
                     objective="dagman", **swin)
    history = json.loads((tmp_path / "dagman" / "history.json").read_text())
    assert dag["iterations"] > 0 and any(k.startswith("dagman/") for k in history[0])


AXIAL2D_TINY = {"network_def#img_size": 32, "network_def#embed_dim": 48, "network_def#depth": 2,
                "network_def#num_heads": 4, "network_def#mfa_layer": 1, "roi_size": [32, 32], "local_size": [16, 16],
                "n_local": 1, "max_cases": 4, "batch_size": 2, "slices_per_volume": 2, "spacing": [2.0, 2.0, 2.0]}


@pytest.mark.slow
def test_axial_slices_protocol(tmp_path):
    """configs/axial2d.json: 2D MFA-ViT on axial slices of canonicalised volumes (the published BraTS protocol)."""
    from monai.bundle import ConfigParser

    root = BUNDLES / "mfassl_brats_pretrain"
    configs = ("train.json", "axial2d.json")
    report = run_bundle("mfassl_brats_pretrain", tmp_path, configs=configs, epochs=2, **AXIAL2D_TINY)
    assert report["iterations"] == 4 and report["mfa_on_iterations"] > 0 and report["axis_fallbacks"] == 0
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({**AXIAL2D_TINY, "bundle_root": str(root)})
    slices = parser.get_parsed_content("train#dataset")[0]
    assert len(slices) == 2
    for item in slices:
        img = torch.as_tensor(item["image"])
        assert img.shape == (4, 32, 32)
        # each slice of the canonicalised volume is cut by the mid-sagittal plane at its centre column
        a, b = img - img.mean(), img.flip(1) - img.mean()
        assert float((a * b).sum() / (a.norm() * b.norm())) > 0.8
