"""Loading MFASSL-pretrained Swin weights into SwinUNETR's encoder: strict keys, reports and errors."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.networks.nets import SwinUNETR

from mfassl.backbones import MFASwin, MFAViT
from mfassl.engine import create_optimizer, create_trainer, find_last_checkpoint
from mfassl.method import MFASSL
from mfassl_medical.segmentation import (
    EncoderLoadError,
    extract_encoder_state,
    init_from_pretrained,
    load_pretrained_encoder,
)

from cli_runner import run_main

SIZES = dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
DINO = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16)


def swin_method(dims: int = 2, in_chans: int = 1, window: int = 4, seed: int = 0) -> MFASSL:
    torch.manual_seed(seed)
    bb = MFASwin(dims, in_chans=in_chans, embed_dim=12, window_size=window, mfa_stage=2, **SIZES)
    return MFASSL(bb, "dino", DINO, views=dict(global_size=32, local_size=16, n_local=2), t_sym=1.0, t_mfa=0.0,
                  t_gate=1.0)


def unetr(dims: int = 2, in_chans: int = 1, window: int = 4, feature_size: int = 12) -> SwinUNETR:
    torch.manual_seed(123)
    return SwinUNETR(in_channels=in_chans, out_channels=3, feature_size=feature_size, window_size=window,
                     spatial_dims=dims, **SIZES)


@pytest.fixture(scope="module")
def engine_checkpoint(tmp_path_factory):
    """A real ``checkpoint_<iter>.pt`` written by mfassl.engine after one step of a 2D MFA-Swin MFASSL."""
    out = tmp_path_factory.mktemp("pretrain")
    method = swin_method()
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch=1, max_epochs=1, batch_size=2,
                             output_dir=out, progress=False, tensorboard=False, device="cpu")
    trainer.run([torch.rand(2, 1, 32, 32)], max_epochs=1)
    return find_last_checkpoint(out / "checkpoints"), method


def test_engine_checkpoint_loads_strictly_and_copies_values(engine_checkpoint):
    path, method = engine_checkpoint
    net = unetr()
    report = load_pretrained_encoder(net, path)
    want = method.backbone.swinViT.state_dict()
    assert report.ok and report.prefix == "objective.backbone.swinViT."
    assert sorted(report.loaded) == sorted(want)
    assert report.ignored > 0  # heads, teacher, MFA, mask token
    got = net.swinViT.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, msg=k)
    assert net.encoder_load_report is report
    assert f"{len(want)} loaded, 0 missing, 0 unexpected, 0 shape mismatches" in report.summary()


def test_decoder_is_untouched(engine_checkpoint):
    path, _ = engine_checkpoint
    net = unetr()
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("swinViT.")}
    load_pretrained_encoder(net, path)
    for k, v in net.state_dict().items():
        if not k.startswith("swinViT."):
            torch.testing.assert_close(v, before[k], msg=k)


@pytest.mark.parametrize("prefix_of", ["method", "backbone"])
def test_state_dict_inputs_and_prefixes(prefix_of):
    method = swin_method(seed=1)
    sd = {"model": method.state_dict()} if prefix_of == "method" else method.backbone.state_dict()
    report = load_pretrained_encoder(unetr(), sd)
    assert report.ok and report.source == "<state dict>"
    assert report.prefix == ("objective.backbone.swinViT." if prefix_of == "method" else "swinViT.")


def test_teacher_weights_are_not_taken():
    sd = swin_method().state_dict()
    enc, prefix, _ = extract_encoder_state(sd)
    assert prefix == "objective.backbone.swinViT."
    assert all(not k.startswith("objective.") for k in enc)


def test_window_mismatch_is_reported_and_strict_refuses(engine_checkpoint):
    path, _ = engine_checkpoint
    net = unetr(window=7)
    before = {k: v.clone() for k, v in net.swinViT.state_dict().items()}
    with pytest.raises(EncoderLoadError, match="shape mismatches.*relative_position_bias_table"):
        load_pretrained_encoder(net, path)
    for k, v in net.swinViT.state_dict().items():  # nothing copied
        torch.testing.assert_close(v, before[k])
    report = load_pretrained_encoder(net, path, strict=False)
    assert not report.ok and report.mismatched and report.loaded
    assert all("relative_position" in k for k, _, _ in report.mismatched)


def test_width_mismatch_names_the_file(engine_checkpoint):
    path, _ = engine_checkpoint
    with pytest.raises(EncoderLoadError, match=str(path.name)):
        load_pretrained_encoder(unetr(feature_size=24), path)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(EncoderLoadError, match="nope.pt"):
        load_pretrained_encoder(unetr(), tmp_path / "nope.pt")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EncoderLoadError, match="broken.pt"):
        load_pretrained_encoder(unetr(), bad)


def test_checkpoint_without_swin_encoder():
    torch.manual_seed(0)
    vit = MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=4)
    sd = MFASSL(vit, "dino", DINO, views=dict(global_size=32, local_size=16, n_local=2)).state_dict()
    with pytest.raises(EncoderLoadError, match="no Swin encoder"):
        load_pretrained_encoder(unetr(), {"model": sd})


def test_network_without_encoder():
    with pytest.raises(EncoderLoadError, match="no swinViT"):
        load_pretrained_encoder(torch.nn.Linear(2, 2), {"swinViT.x": torch.zeros(1)})


def test_no_checkpoint_keeps_random_weights_and_says_so(caplog):
    net = unetr()
    with caplog.at_level(logging.WARNING, logger="mfassl_medical.segmentation"):
        assert init_from_pretrained(net, None) is net
    assert "random weights" in caplog.text


def test_3d_checkpoint_into_3d_unetr_forward():
    method = swin_method(dims=3, in_chans=4)
    net = unetr(dims=3, in_chans=4)
    init_from_pretrained(net, {"model": method.state_dict()})
    with torch.no_grad():
        assert net(torch.rand(1, 4, 64, 64, 64)).shape == (1, 3, 64, 64, 64)


def test_the_pretraining_encoder_file_loads_through_the_core_reader(tmp_path):
    """models/model.pt of the pretraining bundle (mfassl.checkpoints.save_encoder) feeds SwinUNETR strictly."""
    import mfassl.checkpoints as core

    method = swin_method(seed=2)
    path = core.save_encoder(method, tmp_path / "models" / "model.pt")
    net = unetr()
    report = load_pretrained_encoder(net, path)
    assert isinstance(report, core.EncoderLoadReport) and report.ok and report.prefix == "swinViT."
    assert report.ignored > 0  # the MFA block and the mask token are not SwinUNETR's
    for k, v in method.backbone.swinViT.state_dict().items():
        torch.testing.assert_close(net.swinViT.state_dict()[k], v, msg=k)
    with pytest.raises(core.EncoderLoadError, match="feature_size"):
        load_pretrained_encoder(unetr(feature_size=24), path)


def test_export_encoder_to_swinunetr_feeds_the_segmentation_bundle(tmp_path):
    """``python -m mfassl export-encoder ... --to swinunetr`` (keys relative to swinViT, no prefix) is a
    ``pretrained_checkpoint`` of the segmentation bundle. Before: refused, 'no Swin encoder weights under [...]'."""
    import json
    import sys

    from monai.bundle import ConfigParser

    import mfassl.checkpoints as core
    from mfassl_medical.label_app import TINY_NETWORK, default_bundle_dir

    torch.manual_seed(3)
    bb = MFASwin(3, in_chans=4, embed_dim=12, window_size=4, mfa_stage=2, **SIZES)
    model = core.save_encoder(bb, tmp_path / "models" / "model.pt")
    out = tmp_path / "swin_vit.pt"
    proc = run_main("mfassl", "export-encoder", str(model), "--to", "swinunetr", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(k.startswith(("swinViT.", "module.")) for k in torch.load(out, weights_only=True))
    bundle = default_bundle_dir()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({**TINY_NETWORK, "bundle_root": str(bundle), "pretrained_checkpoint": str(out), "device": "cpu"})
    sys.path.insert(0, str(bundle))  # scripts/, as MONAI puts the bundle folder on the path
    try:
        net = parser.get_parsed_content("network")
    finally:
        sys.path.remove(str(bundle))
    assert net.encoder_load_report.ok and net.encoder_load_report.prefix == ""
    for k, v in bb.swinViT.state_dict().items():
        torch.testing.assert_close(net.swinViT.state_dict()[k], v, msg=k)
    assert json.loads(out.with_suffix(".json").read_text())["kwargs"]["feature_size"] == 12


def test_monai_self_supervised_swin_weights_load_like_swinunetr_load_from(tmp_path):
    """MONAI users' SSL Swin weights (``{"state_dict": {"module.layers1.0.blocks.0.mlp.fc1.weight", ...}}``, the
    layout ``SwinUNETR.load_from`` reads) load strictly, with the same values as MONAI's own ``load_from``."""
    torch.manual_seed(5)
    source = unetr(dims=3, in_chans=4)
    ssl = {"module." + k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v
           for k, v in source.swinViT.state_dict().items()}
    assert any(".mlp.fc1." in k for k in ssl)
    path = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": ssl}, path)
    ours, theirs = unetr(dims=3, in_chans=4), unetr(dims=3, in_chans=4)
    theirs.load_from(torch.load(path, weights_only=True))  # MONAI's reader of this layout
    report = load_pretrained_encoder(ours, path)
    assert report.ok and report.prefix == "module." and len(report.loaded) == len(ssl)
    for k, v in theirs.swinViT.state_dict().items():
        torch.testing.assert_close(ours.swinViT.state_dict()[k], v, msg=k)
        torch.testing.assert_close(v, source.swinViT.state_dict()[k], msg=k)
