"""Give MONAI Label's venv the main venv's PyTorch through hard links instead of a second copy.

MONAI Label lives in its own venv (it pins numpy 1.26 and pydicom 2), but it runs on the same PyTorch
and ITK builds as the main venv. Those, with PyTorch's CUDA libraries and Triton, take about 6.7 GB;
installed twice they double the disk the two venvs need. ``python -m mfassl_medical.label_venv SRC_VENV
DST_VENV`` links the files of ``torch``, ``torchvision``, ``triton``, ``itk`` and the ``nvidia-*`` /
``cuda-*`` / ``itk-*`` distributions of ``SRC_VENV`` into ``DST_VENV``'s site-packages (a copy where the
file system refuses hard links), dist-info included, so that pip in ``DST_VENV`` finds them installed and
leaves them alone.

Safe by construction: a hard link is a second name of the same file; Python writes byte-code caches and
pip replaces or removes files by unlinking and writing new ones, never in place, so neither venv can change
the other's files. Nothing is linked across Python versions, and a distribution the target already has is
left as it is. The ``make label-venv`` target runs it before installing MONAI Label.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHARED_NAMES", "SHARED_PREFIXES", "ShareReport", "is_shared", "share_packages", "main"]

#: distributions shared by name, and by name prefix (normalised: lower case, ``-`` for ``_``)
SHARED_NAMES = frozenset({"torch", "torchvision", "triton", "itk"})
SHARED_PREFIXES = ("nvidia-", "cuda-", "itk-")


@dataclass
class ShareReport:
    """What :func:`share_packages` did: distributions shared or skipped, files linked (and their bytes) or copied."""

    shared: list[str]
    skipped: list[str]
    linked: int = 0
    copied: int = 0
    linked_bytes: int = 0


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def is_shared(name: str) -> bool:
    """Whether the distribution ``name`` is part of the PyTorch or ITK build that both venvs share."""
    key = _normalise(name)
    return key in SHARED_NAMES or key.startswith(SHARED_PREFIXES)


def _venv_paths(venv: Path) -> tuple[str, Path]:
    """(``major.minor``, purelib site-packages) of the venv's own interpreter."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{venv}: no venv here (missing {python}); create it first")
    code = ("import json, sys, sysconfig; print(json.dumps([f'{sys.version_info[0]}.{sys.version_info[1]}', "
            "sysconfig.get_paths()['purelib']]))")
    version, purelib = json.loads(subprocess.check_output([str(python), "-c", code], text=True))
    return version, Path(purelib)


def _installed_names(site: Path) -> set[str]:
    return {_normalise(d.metadata["Name"]) for d in md.distributions(path=[str(site)]) if d.metadata["Name"]}


def _place(src: Path, dst: Path, report: ShareReport) -> None:
    """Hard-link ``src`` to ``dst`` (copy when linking is refused); an existing ``dst`` is kept."""
    if dst.exists() or dst.is_symlink():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        report.copied += 1
        return
    report.linked += 1
    report.linked_bytes += src.stat().st_size


def share_packages(src_venv: str | os.PathLike, dst_venv: str | os.PathLike) -> ShareReport:
    """Link the shared PyTorch distributions of ``src_venv`` into ``dst_venv``.

    Only files inside site-packages are placed (console scripts in ``bin/`` name the source venv's
    interpreter and are left out). Returns what was shared; raises ``FileNotFoundError`` for a missing venv
    and ``ValueError`` when the two venvs run different Python versions.
    """
    src_version, src_site = _venv_paths(Path(src_venv))
    dst_version, dst_site = _venv_paths(Path(dst_venv))
    if src_version != dst_version:
        raise ValueError(f"{src_venv} runs Python {src_version} and {dst_venv} Python {dst_version}: "
                         "their packages cannot be shared")
    present = _installed_names(dst_site)
    report = ShareReport(shared=[], skipped=[])
    root = src_site.resolve()
    for dist in md.distributions(path=[str(src_site)]):
        name = dist.metadata["Name"]
        if not name or not is_shared(name):
            continue
        label = f"{_normalise(name)}=={dist.version}"
        if _normalise(name) in present:
            report.skipped.append(label)
            continue
        for entry in dist.files or []:
            src = (src_site / entry).resolve()
            if not src.is_file() or root not in src.parents:
                continue
            _place(src, dst_site / src.relative_to(root), report)
        report.shared.append(label)
        present.add(_normalise(name))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfassl_medical.label_venv", description=__doc__.split("\n\n")[0])
    parser.add_argument("src_venv", help="the venv whose PyTorch is shared (the main .venv)")
    parser.add_argument("dst_venv", help="the venv that receives it (MONAI Label's .venv-label)")
    args = parser.parse_args(argv)
    try:
        report = share_packages(args.src_venv, args.dst_venv)
    except (FileNotFoundError, ValueError) as err:
        print(f"label_venv: {err}", file=sys.stderr)
        return 2
    print(f"label_venv: {len(report.shared)} distributions shared from {args.src_venv} "
          f"({report.linked} files linked, {report.copied} copied, {report.linked_bytes / 2**30:.1f} GiB not stored twice); "
          f"{len(report.skipped)} already in {args.dst_venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
