"""Helpers shared by the benchmark scripts: device names, the sections of bench/RESULTS.md, and the MFASSL
training step that ``bench/step_time.py`` and ``bench/peer_step.py`` both time (:func:`build_mfassl_step`)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")

VIT_MODELS = {"tiny": "mfa_vit_tiny", "small": "mfa_vit_small", "base": "mfa_vit_base"}
"""The 2D ViT-Ti/S/B/16 presets (``mfassl.backbones``) the step benchmarks name by size."""


class MFASSLStep:
    """One training step of an MFASSL run, as ``mfassl.engine.create_trainer`` takes it, minus the schedules.

    ``forward(images, epoch=1.0)`` (the whole loss computation; compiled with ``compile=True``), backward,
    the optimizer step (``create_optimizer``'s AdamW) and the teacher's EMA at the objective's momentum.
    No gradient clipping, AMP or lr schedule: the benchmarks compare the method's work, not the engine's.

    Attributes:
        method: the ``MFASSL`` module (its parameters are the ones trained, compiled or not).
        optimizer: AdamW over them.
        forward: ``method`` or its ``torch.compile``-d forward.
        compiled: whether ``forward`` is compiled.
    """

    def __init__(self, method: torch.nn.Module, optimizer: torch.optim.Optimizer, forward: Callable[..., Any],
                 compiled: bool) -> None:
        self.method, self.optimizer, self.forward, self.compiled = method, optimizer, forward, compiled
        self.momentum = method.teacher_momentum

    def __call__(self, images: torch.Tensor, eager: bool = False) -> float:
        """Train on ``(B, C, H, W)`` images; returns the loss. ``eager=True`` bypasses the compiled forward
        (e.g. to count FLOPs with ``FlopCounterMode``, which compiled code does not report)."""
        out = (self.method if eager else self.forward)(images, epoch=1.0)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        if self.momentum is not None:
            self.method.update_teacher(self.momentum)
        return float(out["loss"].detach())


def build_mfassl_step(model: str, objective: str, mirror: bool, device: torch.device | str, *,
                      compile: bool = False, compile_mode: str = "default",
                      compile_backend: str = "inductor") -> MFASSLStep:
    """The step both step benchmarks time: an ``MFASSL`` on a 2D ViT preset with 1 input channel.

    Args:
        model: ``tiny``, ``small`` or ``base`` (:data:`VIT_MODELS`: ViT-Ti/S/B/16 at 224, 12 blocks).
        objective: ``dino``, ``mocov3``, ... with the published head sizes and views (DINO 2 x 224 + 8 x 96).
        mirror: False for the baseline (the same objective and views, no mirror branch).
        device: where the method lives.
        compile: compile the forward with ``mfassl.engine.compile_forward`` (``compile_mode``,
            ``compile_backend``); the first calls compile.

    The staged schedule is moved to the start (``t_sym = t_mfa = t_gate = 0``): every MFASSL step pays for the
    mirror branch, MFA and both symmetry losses. The caller seeds the RNG before building (the weights) and
    before each step (the views).
    """
    from mfassl.engine import compile_forward, create_optimizer
    from mfassl.method import MFASSL

    method = MFASSL(VIT_MODELS[model], objective, mirror=mirror, t_sym=0.0, t_mfa=0.0, t_gate=0.0,
                    backbone_kwargs=dict(in_chans=1)).to(device)
    optimizer = create_optimizer(method)
    forward = compile_forward(method, compile_mode, compile_backend) if compile else method
    return MFASSLStep(method, optimizer, forward, compile)


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


def publish(table: str, note: str, title: str, *, write: bool, script: str) -> None:
    """Print a benchmark's table and its note; with ``write`` they become the body of RESULTS.md's
    ``## {title}`` section (:func:`replace_section`, the section created naming ``bench/{script}``)."""
    print(table)
    print(note)
    if write:
        replace_section(title, f"{table}\n\n{note}\n", script=script)
