"""MONAI Label's venv takes the main venv's PyTorch by hard links: same files, nothing stored twice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mfassl_medical import label_venv


def _fake_dist(site: Path, name: str, version: str, files: dict[str, bytes], scripts: tuple[str, ...] = ()) -> None:
    """Write an installed distribution the way pip leaves it: files, dist-info with METADATA and RECORD."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    for script in scripts:  # console scripts live outside site-packages (here: <venv>/bin)
        (site.parent / "bin").mkdir(exist_ok=True)
        (site.parent / "bin" / script).write_text("#!/main/venv/bin/python\n")
    record = [*files, *(f"../bin/{s}" for s in scripts), f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))


@pytest.fixture
def venvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[Path, str]]:
    src, dst = tmp_path / "main", tmp_path / "label"
    versions = {src: "3.11", dst: "3.11"}
    for venv in (src, dst):
        (venv / "site").mkdir(parents=True)
    monkeypatch.setattr(label_venv, "_venv_paths", lambda venv: (versions[Path(venv)], Path(venv) / "site"))
    _fake_dist(src / "site", "torch", "2.14.1", {"torch/__init__.py": b"x = 1\n", "torch/lib/libtorch.so": b"\0" * 4096},
               scripts=("torchrun",))
    _fake_dist(src / "site", "nvidia-cudnn-cu13", "9.0", {"nvidia/cudnn/lib/libcudnn.so": b"\1" * 8192})
    _fake_dist(src / "site", "numpy", "2.4.0", {"numpy/__init__.py": b"v = 2\n"})
    return src, dst, versions


def test_shares_the_torch_build_by_hard_links(venvs) -> None:
    src, dst, _ = venvs
    report = label_venv.share_packages(src, dst)
    assert sorted(report.shared) == ["nvidia-cudnn-cu13==9.0", "torch==2.14.1"]
    assert report.copied == 0 and report.linked == 7  # 2 + 2 dist-info files for torch, 1 + 2 for cudnn
    assert report.linked_bytes == sum(f.stat().st_size for f in (dst / "site").rglob("*") if f.is_file()) > 12288
    for rel in ("torch/lib/libtorch.so", "nvidia/cudnn/lib/libcudnn.so", "torch-2.14.1.dist-info/RECORD"):
        assert os.path.samefile(src / "site" / rel, dst / "site" / rel)
    # numpy is MONAI Label's own (it pins 1.26); console scripts name the main venv's interpreter
    assert not (dst / "site" / "numpy").exists()
    assert not (dst / "bin").exists()


def test_a_distribution_already_there_is_left_alone_and_reruns_are_idempotent(venvs) -> None:
    src, dst, _ = venvs
    _fake_dist(dst / "site", "torch", "2.13.0", {"torch/__init__.py": b"x = 0\n"})
    report = label_venv.share_packages(src, dst)
    assert report.skipped == ["torch==2.14.1"] and report.shared == ["nvidia-cudnn-cu13==9.0"]
    assert (dst / "site" / "torch" / "__init__.py").read_bytes() == b"x = 0\n"
    again = label_venv.share_packages(src, dst)
    assert again.linked == 0 and sorted(again.skipped) == ["nvidia-cudnn-cu13==9.0", "torch==2.14.1"]


def test_refuses_venvs_of_different_pythons(venvs) -> None:
    src, dst, versions = venvs
    versions[dst] = "3.12"
    with pytest.raises(ValueError, match="Python 3.11 .* Python 3.12"):
        label_venv.share_packages(src, dst)
    assert label_venv.main([str(src), str(dst)]) == 2


def test_missing_venv_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no venv here"):
        label_venv.share_packages(tmp_path / "nowhere", tmp_path / "label")


@pytest.mark.parametrize("name, shared", [("torch", True), ("TorchVision", True), ("nvidia_cublas", True),
                                          ("cuda-bindings", True), ("itk-io", True), ("numpy", False), ("torchmetrics", False)])
def test_which_distributions_are_shared(name: str, shared: bool) -> None:
    assert label_venv.is_shared(name) is shared
