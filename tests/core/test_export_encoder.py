"""``python -m mfassl export-encoder``: stock timm / MONAI networks load the file strictly and give our features,
checked in a process that never imports mfassl."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mfassl.__main__ import main
from mfassl.backbones import MFASwin, MFAViT
from mfassl.checkpoints import save_encoder

from cli_runner import run_main

# Run in a child interpreter that never imports mfassl: load the exported file into the stock network and compare
# with our features. A .safetensors export is read with pickle disabled (the weights and the reference input and
# features all come through safetensors.torch.load_file), and timm loads it by its own pretrained-weights path
# (create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))).
STOCK_CHECK = r"""
import json, pickle, sys
import torch
from safetensors.torch import load_file


def _no_pickle(*args, **kwargs):
    raise RuntimeError("pickle used")


def check(meta_file, weights, io_file):
    meta = json.load(open(meta_file))
    safe = weights.endswith(".safetensors")
    if safe:
        real = pickle.load, pickle.loads
        pickle.load = pickle.loads = _no_pickle
        state, io = load_file(weights), load_file(io_file)
        x, want = io["x"], io["want"]
    else:
        state = torch.load(weights, weights_only=True)
        x, want = torch.load(io_file, weights_only=True)
    if meta["target"] == "timm" and safe:
        import timm
        kw = {k: v for k, v in meta["kwargs"].items() if k != "class_token"}
        net = timm.create_model("vit_small_patch16_224", pretrained=True,
                                pretrained_cfg_overlay=dict(file=weights), **kw).eval()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
        got = net(x)
    elif meta["target"] == "timm":
        from timm.models.vision_transformer import VisionTransformer
        net = VisionTransformer(**meta["kwargs"]).eval()
        net.load_state_dict(state, strict=True)
        got = net(x)
    elif meta["target"] == "monai":
        from monai.networks.nets import ViT
        net = ViT(**meta["kwargs"]).eval()
        net.load_state_dict(state, strict=True)
        got = net(x)[0]
    else:
        from monai.networks.nets import SwinUNETR
        net = SwinUNETR(**meta["kwargs"]).eval()
        net.swinViT.load_state_dict(state, strict=True)
        got = net.swinViT(x)[-1].flatten(2).mean(-1)
    if safe:
        pickle.load, pickle.loads = real
    return {"max_abs_diff": float((got - want).abs().max()), "shape": list(got.shape)}


results = {w: check(m, w, io) for m, w, io in json.loads(sys.argv[1])}
assert not any(m == "mfassl" or m.startswith("mfassl") for m in sys.modules), "mfassl was imported"
print(json.dumps(results))
"""

CASES = {
    "timm": (lambda: MFAViT(2, img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=4),
             (2, 1, 32, 32)),
    "monai": (lambda: MFAViT(3, img_size=16, patch_size=8, in_chans=4, embed_dim=32, depth=2, num_heads=4),
              (2, 4, 16, 16, 16)),
    "swinunetr": (lambda: MFASwin(3, in_chans=4, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                                  window_size=4), (1, 4, 64, 64, 64)),
}


FORMATS = ("pt", "safetensors")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Every stock network in both formats: ``{(to, fmt): {"meta", "printed", "weights", "io", "shape"}}``, the
    exports written by ``export-encoder`` and the reference input and features of our encoder beside them."""
    from safetensors.torch import save_file

    capture = {}
    for to, (build, shape) in sorted(CASES.items()):
        torch.manual_seed(0)
        encoder = build().eval()
        folder = tmp_path_factory.mktemp(to)
        model = save_encoder(encoder, folder / "models" / "model.pt")
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = encoder(x)
        torch.save((x, want), folder / "io.pt")
        save_file({"x": x, "want": want.contiguous()}, str(folder / "io.safetensors"))
        for fmt in FORMATS:
            out = folder / fmt / f"{to}.{fmt}"  # one sidecar name per folder
            proc = run_main("mfassl", "export-encoder", str(model), "--to", to, "--out", str(out), "--format", fmt)
            assert proc.returncode == 0, proc.stderr
            capture[to, fmt] = {"meta": json.loads(out.with_suffix(".json").read_text()),
                                "printed": json.loads(proc.stdout), "weights": out,
                                "io": folder / f"io.{fmt}", "shape": list(want.shape)}
    return capture


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("to", sorted(CASES))
def test_export_writes_weights_and_a_description_verified_here(exports, to, fmt):
    case = exports[to, fmt]
    meta = case["meta"]
    assert case["printed"] == meta and meta["target"] == to and meta["verified_max_abs_diff"] <= 1e-5
    assert meta["weights"] == case["weights"].name and meta["format"] == fmt
    if fmt == "safetensors":
        raw = case["weights"].read_bytes()
        header = int.from_bytes(raw[:8], "little")
        assert json.loads(raw[8:8 + header])["__metadata__"]["format"] == "pt"  # not a pickle
        assert "safetensors.torch.load_file" in meta["load"]


def test_stock_networks_load_every_export_strictly_without_mfassl(exports, tmp_path):
    """One child interpreter that never imports mfassl loads all six exports (a .safetensors one with pickle
    disabled; timm's by its own pretrained-weights path) and gives our features."""
    jobs = [[str(c["weights"].with_suffix(".json")), str(c["weights"]), str(c["io"])] for c in exports.values()]
    proc = subprocess.run([sys.executable, "-c", STOCK_CHECK, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in exports.values():
        got = res[str(case["weights"])]
        assert got["shape"] == case["shape"] and got["max_abs_diff"] <= 1e-5, case["weights"].name


def test_export_from_a_training_checkpoint(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from mfassl.engine import create_optimizer, create_trainer

    from helpers import tiny_method

    method = tiny_method("mocov3")
    loader = DataLoader(TensorDataset(torch.rand(4, 1, 40, 40, generator=torch.Generator().manual_seed(0))),
                        batch_size=4)
    trainer = create_trainer(method, create_optimizer(method), 1, 1, batch_size=4, output_dir=tmp_path,
                             progress=False, tensorboard=False)
    trainer.run(loader, max_epochs=1)
    meta_path = tmp_path / "vit.json"
    assert main(["export-encoder", str(tmp_path / "checkpoints" / "checkpoint_1.pt"), "--to", "timm", "--out",
                 str(tmp_path / "vit.pt")]) == 0
    meta = json.loads(meta_path.read_text())
    assert meta["kwargs"]["embed_dim"] == 32 and meta["verified_max_abs_diff"] <= 1e-5


def test_clear_errors(tmp_path, capsys):
    torch.manual_seed(0)
    swin = CASES["swinunetr"][0]()
    model = save_encoder(swin, tmp_path / "model.pt")
    assert main(["export-encoder", str(model), "--to", "timm", "--out", str(tmp_path / "x.pt")]) == 1
    assert "holds a 3D MFASwin; --to timm does not fit it" in capsys.readouterr().err
    vit = CASES["timm"][0]()
    torch.save(vit.state_dict(), tmp_path / "bare.pt")  # no sidecar, nothing records the network
    assert main(["export-encoder", str(tmp_path / "bare.pt"), "--to", "timm", "--out", str(tmp_path / "y.pt")]) == 1
    assert "does not say which network it holds" in capsys.readouterr().err
    config = json.dumps({"backbone": "mfa_vit", "config": dict(spatial_dims=2, img_size=32, patch_size=8, in_chans=1,
                                                               embed_dim=32, depth=2, num_heads=4)})
    assert main(["export-encoder", str(tmp_path / "bare.pt"), "--to", "timm", "--out", str(tmp_path / "y.pt"),
                 "--config", config]) == 0
    assert not (tmp_path / "x.pt").exists() and (tmp_path / "y.pt").is_file()


def _export(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl", "export-encoder", *args)


@pytest.mark.parametrize("out", ["model.pt", "model", "model.json", "new.json"],
                         ids=["the-input", "the-input-sidecar", "sidecar-as-weights", "weights-and-sidecar-one-file"])
def test_out_never_writes_over_the_model_or_its_sidecar(tmp_path, out):
    """``--out model.pt`` replaced the input and its sidecar; ``--out m2`` for ``m2.pt`` replaced ``m2.json``."""
    torch.manual_seed(0)
    model = save_encoder(CASES["timm"][0](), tmp_path / "model.pt")
    before = {p: p.read_bytes() for p in (model, tmp_path / "model.json")}
    proc = _export(str(model), "--to", "timm", "--out", str(tmp_path / out), "--overwrite")
    assert proc.returncode == 2, proc.stderr
    assert ("is an input of this command" in proc.stderr) != (out == "new.json")
    assert ("would be the same file as the weights file" in proc.stderr) == (out == "new.json")
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_out_replaces_an_earlier_export_and_a_foreign_file_only_with_overwrite(tmp_path):
    torch.manual_seed(0)
    model = save_encoder(CASES["timm"][0](), tmp_path / "model.pt")
    other = tmp_path / "other.pt"
    other.write_bytes(b"the user's own weights")
    proc = _export(str(model), "--to", "timm", "--out", str(other))
    assert proc.returncode == 2 and "already exists and is not a file of python -m mfassl export-encoder" in proc.stderr
    assert other.read_bytes() == b"the user's own weights" and not (tmp_path / "other.json").exists()
    (tmp_path / "new.json").write_text('{"mine": true}')  # a foreign sidecar name
    proc = _export(str(model), "--to", "timm", "--out", str(tmp_path / "new.pt"))
    assert proc.returncode == 2 and "its description (" in proc.stderr and "new.json" in proc.stderr
    assert (tmp_path / "new.json").read_text() == '{"mine": true}' and not (tmp_path / "new.pt").exists()
    assert _export(str(model), "--to", "timm", "--out", str(other), "--overwrite", "--no-verify").returncode == 0
    assert json.loads((tmp_path / "other.json").read_text())["weights"] == "other.pt"
    proc = _export(str(model), "--to", "timm", "--out", str(other), "--no-verify")  # an earlier export: replaced
    assert proc.returncode == 0, proc.stderr
    assert "cls_token" in torch.load(other, weights_only=True)

def test_format_follows_the_suffix_and_a_contradiction_is_refused(tmp_path, capsys):
    torch.manual_seed(0)
    model = save_encoder(CASES["timm"][0]().eval(), tmp_path / "models" / "model.pt")
    assert main(["export-encoder", str(model), "--to", "timm", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["format"] == "safetensors"
    capsys.readouterr()
    assert main(["export-encoder", str(model), "--to", "timm", "--out", str(tmp_path / "b.pt"),
                 "--format", "safetensors"]) == 1
    assert "--format safetensors writes .safetensors; --out is" in capsys.readouterr().err
    assert not (tmp_path / "b.pt").exists()


def test_safetensors_out_is_guarded_as_a_pt_out_is(tmp_path):
    """``--format safetensors``: the sidecar of ``model.safetensors`` is the input's ``model.json``; a foreign
    ``.safetensors`` file is replaced only with ``--overwrite``, an earlier safetensors export without it."""
    torch.manual_seed(0)
    model = save_encoder(CASES["timm"][0](), tmp_path / "model.pt")
    before = {p: p.read_bytes() for p in (model, tmp_path / "model.json")}
    proc = _export(str(model), "--to", "timm", "--out", str(tmp_path / "model.safetensors"), "--overwrite")
    assert proc.returncode == 2 and "its description (" in proc.stderr, proc.stderr
    assert "model.json) is an input of this command" in proc.stderr
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "model.safetensors").exists()
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"the user's own safetensors")
    proc = _export(str(model), "--to", "timm", "--out", str(other), "--format", "safetensors", "--no-verify")
    assert proc.returncode == 2 and "already exists and is not a file of python -m mfassl export-encoder" in proc.stderr
    assert other.read_bytes() == b"the user's own safetensors" and not (tmp_path / "other.json").exists()
    proc = _export(str(model), "--to", "timm", "--out", str(other), "--overwrite", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "other.json").read_text())["weights"] == "other.safetensors"
    proc = _export(str(model), "--to", "timm", "--out", str(other), "--no-verify")  # an earlier export: replaced
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    assert "cls_token" in load_file(str(other))
    # other.json describes other.safetensors: an --out other.pt would leave that file without its description
    proc = _export(str(model), "--to", "timm", "--out", str(tmp_path / "other.pt"), "--no-verify")
    assert proc.returncode == 2 and "it describes 'other.safetensors', not 'other.pt'" in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "other.json").read_text())["weights"] == "other.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt", "other.json", "other.safetensors"]
