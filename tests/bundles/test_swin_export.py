"""``ckpt_export`` of the BraTS pretraining bundle's Swin variant (``swin.json``) by scripting, as a user types it.

The command runs in a child interpreter from the bundle folder, without ``--use_trace``, with tiny network sizes
given as command-line strings; the exported module must reproduce the MFA-Swin encoder and carry the metadata.
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import BUNDLES
from cli_runner import run_monai_bundle

ROOT = BUNDLES / "mfassl_brats_pretrain"
CONFIGS = ["configs/inference.json", "configs/swin.json"]
TINY_SWIN = {"network_def#embed_dim": "12", "network_def#depths": "[1,1,1,1]", "network_def#num_heads": "[1,2,3,4]",
             "network_def#window_size": "4"}


def _network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in CONFIGS])
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(ROOT), **{k: json.loads(v) for k, v in TINY_SWIN.items()}})
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def").eval()


def test_swin_variant_exports_by_scripting(tmp_path):
    net = _network()
    assert type(net).__name__ == "MFASwin" and net.mfa_stage == 2  # swin.json's network, MFA after stage 2
    ckpt, ts = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(net.state_dict(), ckpt)
    cmd = ["ckpt_export", "network_def", "--filepath", str(ts),
           "--meta_file", "configs/metadata.json", "--config_file", str(CONFIGS), "--ckpt_file", str(ckpt)]
    for key, value in TINY_SWIN.items():
        cmd += [f"--{key}", value]
    proc = run_monai_bundle(*cmd, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "use_trace: True" not in proc.stdout + proc.stderr

    extra = {"metadata.json": "", "inference.json": "", "swin.json": ""}  # each config file is kept by name
    exported = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(
        (ROOT / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["swin.json"])["network_def"]["_target_"] == "mfassl_medical.networks.MFASwin"
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for size in (32, 40):  # a scripted module, not a trace: other sizes too (40 pads stages 3 and 4)
            x = torch.randn(2, 4, size, size, size, generator=gen)
            ref = net(x)
            torch.testing.assert_close(exported(x), ref, rtol=0, atol=1e-5)
            assert ref.shape == (2, 192)
    with pytest.raises(torch.jit.Error, match="expected 4 input channels"):  # the input check was compiled too
        exported(torch.randn(1, 1, 32, 32, 32))
