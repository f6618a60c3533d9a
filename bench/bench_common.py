"""Helpers shared by the benchmark scripts: device names and the sections of bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def device_name(device: torch.device) -> str:
    """A human-readable name of the device the numbers come from."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def section_title(title: str, device: torch.device | str) -> str:
    """The RESULTS.md section title for numbers measured on ``device``: GPU numbers get their own section."""
    return f"{title} on GPU" if torch.device(device).type == "cuda" else title


def replace_section(title: str, body: str, path: Path = RESULTS, script: str | None = None) -> None:
    """Replace the body of the ``## {title}`` section of RESULTS.md (added at the end if absent).

    The title must match exactly, up to an optional `` (`bench/script.py`)`` suffix, so that
    ``"Step time"`` and ``"Step time on GPU"`` are two sections.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"(^## {re.escape(title)}(?: \([^\n]*\))?[ \t]*\n)(.*?)(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda m: m.group(1) + "\n" + body.strip() + "\n\n", text, count=1)
    else:
        header = f"## {title}" + (f" (`bench/{script}`)" if script else "")
        text = text.rstrip() + f"\n\n{header}\n\n{body.strip()}\n"
    path.write_text(text)
