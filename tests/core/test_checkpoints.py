"""mfassl.checkpoints and mfassl.encoder_files: encoder files without duplicate keys, one strict reader for every
kind of file, training checkpoints written atomically, and the names mfassl.checkpoints keeps for its users."""

from __future__ import annotations

import json
import os
from argparse import Namespace

import pytest
import torch

from mfassl.backbones import MFASwin, MFAViT
from mfassl.checkpoints import (
    ENCODER_PREFIXES,
    EncoderFileNotFoundError,
    EncoderLoadError,
    atomic_save,
    build_encoder,
    describe_encoder,
    encoder_state_dict,
    load_encoder,
    save_encoder,
)

from helpers import tiny_method


def _backbones():
    torch.manual_seed(0)
    return {
        "vit2d": MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=4),
        "vit3d": MFAViT(3, img_size=16, patch_size=8, in_chans=4, embed_dim=32, depth=2, num_heads=4),
        "swin2d": MFASwin(2, in_chans=1, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=4),
    }


INPUTS = {"vit2d": (2, 1, 32, 32), "vit3d": (2, 4, 16, 16, 16), "swin2d": (2, 1, 64, 64)}


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_encoder_file_has_no_duplicates_and_round_trips(tmp_path, kind):
    bb = _backbones()[kind].eval()
    path = save_encoder(bb, tmp_path / "models" / "model.pt")
    state = torch.load(path, weights_only=True)
    ptrs = [v.untyped_storage().data_ptr() + v.storage_offset() * v.element_size() for v in state.values()]
    assert len(set(ptrs)) == len(ptrs)  # no tensor stored under two names
    if kind.startswith("vit"):
        assert any(k.startswith("encoder.blocks.") for k in state)
        assert not any(k.startswith("blocks.") or k.startswith("norm.") for k in state)
        assert list(state) == list(bb.state_dict())  # the network itself holds each tensor once
        bb.load_state_dict(state, strict=True)  # what a zoo user does with models/model.pt
    sidecar = json.loads((tmp_path / "models" / "model.json").read_text())
    assert sidecar["backbone"] == describe_encoder(bb)["backbone"] and sidecar["tensors"] == len(state)
    torch.manual_seed(1)
    other = build_encoder(sidecar).eval()
    report = load_encoder(other, path)
    assert report.ok and report.prefix == "" and len(report.loaded) == len(state)
    x = torch.randn(*INPUTS[kind], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(other(x), bb(x), rtol=0, atol=0)


def test_files_written_with_aliases_still_load(tmp_path):
    bb = _backbones()["vit2d"]
    torch.save(bb.state_dict(), tmp_path / "old.pt")  # the earlier model.pt layout: blocks.* beside encoder.blocks.*
    other = _backbones()["vit2d"]
    torch.nn.init.zeros_(other.encoder.cls_token)
    report = load_encoder(other, tmp_path / "old.pt")
    assert report.ok and not report.unexpected
    torch.testing.assert_close(other.encoder.cls_token, bb.encoder.cls_token)


@pytest.mark.parametrize("layout", ["training", "ddp", "objective", "backbone_file"])
def test_one_reader_for_every_layout(tmp_path, layout):
    method = tiny_method("dino", seed=3)
    enc = method.backbone
    if layout == "training":
        obj = {"model": method.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
        prefix = "objective.backbone."
    elif layout == "ddp":
        obj = {"module." + k: v for k, v in method.state_dict().items()}
        prefix = "module.objective.backbone."
    elif layout == "objective":
        obj = method.objective.state_dict()
        prefix = "backbone."
    else:
        obj = {"backbone_name": "mfa_vit", "backbone_config": json.dumps(describe_encoder(enc)["config"]),
               "backbone_state": enc.state_dict()}
        prefix = ""
    torch.save(obj, tmp_path / "file.pt")
    target = tiny_method("dino", seed=4).backbone
    report = load_encoder(target, tmp_path / "file.pt")
    assert report.ok and report.prefix == prefix
    for k, v in encoder_state_dict(enc).items():
        assert torch.equal(target.state_dict()[k], v), k
    if layout == "training":
        assert report.ignored > 0  # teacher and heads left out


def test_strict_refusal_names_the_file_and_copies_nothing(tmp_path):
    save_encoder(_backbones()["vit2d"], tmp_path / "model.pt")
    torch.manual_seed(2)
    wide = MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=48, depth=2, num_heads=4)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(EncoderLoadError, match=r"(?s)model\.pt does not fit MFAViT.*shape mismatches.*cls_token"):
        load_encoder(wide, tmp_path / "model.pt")
    for k, v in wide.state_dict().items():
        assert torch.equal(v, before[k]), k
    report = load_encoder(wide, tmp_path / "model.pt", strict=False)
    assert not report.ok and report.mismatched and "mfa.a" in report.loaded


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(EncoderFileNotFoundError, match="nope.pt") as info:
        load_encoder(_backbones()["vit2d"], tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, RuntimeError)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(EncoderLoadError, match="bad.pt cannot be read"):
        load_encoder(_backbones()["vit2d"], tmp_path / "bad.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(EncoderLoadError, match="no encoder weights"):
        load_encoder(_backbones()["vit2d"], tmp_path / "linear.pt")


def test_atomic_save_leaves_no_temporary_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = atomic_save({"a": torch.ones(3)}, tmp_path / "x.pt")
    good = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"^no space left on .*x\.pt .*the earlier x\.pt is left as it was"):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["x.pt"]


def test_bundles_segmentation_and_faces_share_the_module(tmp_path):
    import mfassl.checkpoints as core
    import mfassl_faces.cli_tasks as faces
    import mfassl_medical.encoder_io as encoder_io
    import mfassl_medical.segmentation as seg

    assert seg.EncoderLoadError is core.EncoderLoadError is encoder_io.EncoderLoadError
    assert seg.EncoderLoadReport is core.EncoderLoadReport
    assert encoder_io.ENCODER_KEY_PREFIXES == ENCODER_PREFIXES
    assert seg.ENCODER_PREFIXES == tuple(p + "swinViT." for p in ENCODER_PREFIXES)
    # the face CLI reads an engine checkpoint's recorded network, whatever its size options say
    method = tiny_method("dino", seed=5)
    desc = describe_encoder(method.backbone)
    torch.save({"model": method.state_dict(), "run": {"network": json.dumps(desc)}}, tmp_path / "checkpoint_4.pt")
    args = Namespace(checkpoint=str(tmp_path / "checkpoint_4.pt"), backbone="mfa_vit", size=64, patch_size=16,
                     embed_dim=64, depth=4, num_heads=4, window_size=4)
    backbone, name, config = faces.build_backbone(args)
    assert name == "mfa_vit" and config == desc["config"]
    for k, v in encoder_state_dict(method.backbone).items():
        assert torch.equal(backbone.state_dict()[k], v), k
    # and refuses, naming the file, when nothing records the network and the sizes do not fit
    torch.save(method.backbone.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(EncoderLoadError, match=r"(?s)plain\.pt does not fit.*check --backbone"):
        faces.build_backbone(Namespace(**{**vars(args), "checkpoint": str(tmp_path / "plain.pt")}))


def test_weights_and_description_get_one_mode_from_the_umask(tmp_path):
    """``model.json`` was written 0600 while ``model.pt`` got the umask's mode; now both get what open() gives."""
    old = os.umask(0o027)
    try:
        path = save_encoder(_backbones()["vit2d"], tmp_path / "models" / "model.pt")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in path.parent.iterdir()}
    assert modes == {"model.pt": "0o640", "model.json": "0o640"}


NAMES_KEPT = r"""
import importlib, json, sys
import mfassl.checkpoints as checkpoints
loaded = sorted(m for m in ("mfassl.encoder_files", "mfassl.export") if m in sys.modules)
homes = {}
for name in checkpoints.__all__:
    obj = getattr(checkpoints, name)  # as a bundle's "$checkpoints.save_encoder(...)" reads it
    home = next(m for m in ("mfassl.checkpoints", "mfassl.encoder_files", "mfassl.export")
                if name in vars(importlib.import_module(m)))
    assert getattr(importlib.import_module(home), name) is obj, name
    homes[name] = home
ns = {}
exec("from mfassl.checkpoints import *", ns)
assert set(checkpoints.__all__) <= set(ns), set(checkpoints.__all__) - set(ns)
try:
    checkpoints.no_such_name
except AttributeError as err:
    missing = str(err)
print(json.dumps({"loaded_by_import": loaded, "homes": homes, "missing": missing}))
"""


def test_the_three_modules_and_the_names_checkpoints_keeps():
    """Training checkpoints, encoder files and export live in three modules; every name users imported from
    ``mfassl.checkpoints`` still comes from there (the same object), without that module importing the other two."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NAMES_KEPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["loaded_by_import"] == []
    homes = res["homes"]
    assert {n for n, m in homes.items() if m == "mfassl.checkpoints"} == {
        "CHECKPOINT_PREFIX", "CheckpointSaver", "atomic_save", "find_checkpoints", "find_last_checkpoint",
        "load_checkpoint"}
    assert {n for n, m in homes.items() if m == "mfassl.export"} == {
        "EXPORT_TARGETS", "WEIGHT_FORMATS", "export_encoder", "save_weights", "weight_format"}
    assert {"save_encoder", "load_encoder", "read_encoder_file", "EncoderLoadError", "EncoderLoadReport",
            "ENCODER_PREFIXES"} <= {n for n, m in homes.items() if m == "mfassl.encoder_files"}
    assert len(homes) == 26 and res["missing"] == "module 'mfassl.checkpoints' has no attribute 'no_such_name'"
