"""Every bundle's metadata.json is valid against the project's schema, checked offline; model-zoo layout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bundle_utils import BUNDLES, ROOT

SCHEMA = BUNDLES / "schemas" / "meta_schema.json"
NAMES = sorted(p.name for p in BUNDLES.glob("mfassl_*") if p.is_dir())
PRETRAIN = ["mfassl_brats_pretrain", "mfassl_chexpert_pretrain"]


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails the test."""
    import monai.apps.utils as apps_utils
    import monai.bundle.scripts as scripts

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    real = apps_utils.download_url

    def only_existing(url, filepath="", *args, **kwargs):
        from pathlib import Path

        if not Path(filepath).is_file():
            refuse(url, filepath)
        return real(url, filepath, *args, **kwargs)

    monkeypatch.setattr(scripts, "download_url", only_existing)
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setattr("urllib.request.urlretrieve", refuse)


def test_bundles_found():
    assert set(PRETRAIN) <= set(NAMES) and "mfassl_brats_segmentation" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_valid_offline(name, offline):
    from monai.bundle import verify_metadata

    meta = BUNDLES / name / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
    m = json.loads(meta.read_text())
    assert m["version"] in m["changelog"]
    assert "mfassl" in m["required_packages_version"]


def test_verify_metadata_command_line():
    meta = BUNDLES / PRETRAIN[0] / "configs" / "metadata.json"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta),
                           "--filepath", str(SCHEMA)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda m: m.pop("network_data_format"), id="missing-network_data_format"),
    pytest.param(lambda m: m.update(version=3), id="version-not-a-string"),
    pytest.param(lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="four"), id="num_channels"),
])
def test_invalid_metadata_is_rejected(tmp_path, offline, mutate):
    from monai.bundle import verify_metadata

    m = json.loads((BUNDLES / PRETRAIN[0] / "configs" / "metadata.json").read_text())
    mutate(m)
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", NAMES)
def test_model_zoo_layout(name):
    root = BUNDLES / name
    for rel in ("LICENSE", "docs/README.md", "configs/metadata.json", "configs/train.json", "configs/logging.conf",
                "configs/evaluate.json", "configs/inference.json", "models"):
        assert (root / rel).exists(), f"{name}: {rel} missing"
    if name in PRETRAIN:
        assert (root / "configs" / "multi_gpu_train.json").is_file()
