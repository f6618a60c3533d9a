"""``ckpt_export --use_trace``: a traced module that takes every input size, or a refusal that says why.

A trace records one example input's shapes. The 3D MFA-ViT (MONAI's ViT layout) traces into a module that takes
other sizes too; the 2D MFA-ViT (timm's dynamic position embedding), the MFA-Swin and the segmentation bundle's
SwinUNETR (window padding and shifts) would give modules that fail on any other size, so their forward refuses to
be traced and names scripting (the default export) instead. Before, the trace succeeded and the exported module
failed later, on the first input of another size, deep inside the TorchScript interpreter.
"""

from __future__ import annotations

import pytest
import torch

from bundle_utils import BUNDLES

TINY_VIT = {"network_def#embed_dim": 48, "network_def#depth": 2, "network_def#num_heads": 4, "network_def#mfa_layer": 1}
CASES = {
    "vit3d": ("mfassl_brats_pretrain", ["inference.json"], TINY_VIT),
    "vit2d": ("mfassl_chexpert_pretrain", ["inference.json"], {**TINY_VIT, "network_def#img_size": 32}),
    "swin": ("mfassl_brats_pretrain", ["inference.json", "swin.json"],
             {"network_def#embed_dim": 12, "network_def#depths": [1, 1, 1, 1], "network_def#num_heads": [1, 2, 3, 4],
              "network_def#window_size": 4}),
    "segmentation": ("mfassl_brats_segmentation", ["inference.json"],
                     {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4], "window_size": 4}),
}


def _export(case: str, tmp_path, input_shape):
    from monai.bundle import ConfigParser, ckpt_export

    name, configs, tiny = CASES[case]
    root = BUNDLES / name
    files = [str(root / "configs" / c) for c in configs]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"bundle_root": str(root), **tiny})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=str(root / "configs" / "metadata.json"), config_file=files, bundle_root=str(root),
                use_trace=True, input_shape=input_shape, **tiny)
    return net


def test_the_3d_vit_traces_into_a_module_of_any_size(tmp_path):
    net = _export("vit3d", tmp_path, [1, 4, 32, 32, 32])
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        for size in (32, 48):
            x = torch.randn(2, 4, size, size, size, generator=torch.Generator().manual_seed(size))
            torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case,shape", [("vit2d", [1, 1, 32, 32]), ("swin", [1, 4, 32, 32, 32]),
                                        ("segmentation", [1, 4, 64, 64, 64])])
def test_networks_a_trace_would_tie_to_one_size_refuse_with_the_reason(tmp_path, monkeypatch, case, shape):
    if case == "segmentation":
        monkeypatch.syspath_prepend(str(BUNDLES / CASES[case][0]))
    with pytest.raises(RuntimeError, match=r"cannot be exported with torch.jit.trace.*Export by scripting"):
        _export(case, tmp_path, shape)
    assert not (tmp_path / "model.ts").exists()
