"""The reflection benchmark: MFASSL against the baselines the paper compares with, and its ablations.

On the synthetic chest demo data (:func:`mfassl_medical.demo_data.build_demo_data`: varied patients, a
finding of varied size and density in ONE lung in two images out of three, the side recorded), for each
seed every method below is pretrained from the SAME initial weights, on the SAME batches and the SAME views
(the global RNG is reseeded before every step, so the view draws agree step by step), with MoCo-v3 (the
flip-invariant contrastive SSL the claim is about) on a small MFA-ViT:

=====================  =============================================================================
``random_init``        the encoder untrained (the floor)
``flip_baseline``      ``mirror=False``, views with the random flip (``flip_prob`` 0.5): invariant SSL
``noflip_baseline``    ``mirror=False``, no flip (``flip_prob`` 0)
``essl_flip``          ``mirror=False``, flip 0.5, ``flip_prediction`` (E-SSL: predict the flip)
``mfassl``             the published method (mirror branch, MFA with the summed gate, flip 0.5)
``mfassl_noflip``      MFASSL with ``flip_prob`` 0
``mfassl_gate_mean``   MFASSL with ``gate_distance="mean"``
``mfassl_centre_axis`` MFASSL split at the image centre instead of the estimated midline
``mfassl_axis_err_*``  MFASSL with the estimated midline rotated by 2 / 5 degrees (random sign per image)
=====================  =============================================================================

Every frozen encoder is then probed (a linear probe, :func:`mfassl.evaluation.linear_probe`, k-fold
out-of-fold probabilities) for lesion *side* (lesion images only) and lesion *presence* (all images), with
two readouts: *global* (the plain encoder's pooled feature, what a downstream user gets) and *paired* (the
mirror pair at the estimated midline through the encoder with MFA, ``[pool(out_l), pool(out_r)]``). Metrics
come from :mod:`mfassl.evaluation` (AUROC, ECE, Brier, flip consistency, bootstrap intervals); accuracy is
the share of ``(p >= 0.5) == y``. Seeds are pooled: mean over seeds, 95% percentile bootstrap over cases
(one resample of the cases serves every seed). Also: a breakdown by subset (left / right / none; small /
large findings), paired differences against ``flip_baseline`` and ``random_init`` with intervals, the
smallest difference the design detects (80% power, two-sided 5%), and learning checks after the same
pretraining (DINO teacher entropy against ``log(out_dim)``, MixedAE TopK accuracy against chance, DAGMaN
teacher attention entropy against its value at initialisation). Writes ``results.json``, ``table.md`` and
``reflection.png`` under ``--out``.

    python bench/reflection.py --max-minutes 45          # the run in bench/RESULTS.md (2 CPU cores)
    python bench/reflection.py --published --device cuda  # ViT-S/16 at 224 px (a GPU)
    python bench/reflection.py --tiny                     # the reduced pipeline the test suite runs
    python bench/reflection.py --seeds 1 --out D1 ...; python bench/reflection.py --merge D0 D1 D2 --out D
                                                          # one process per seed, pooled afterwards
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mfassl.evaluation import auroc, bootstrap_ci, brier, ece, flip_consistency, linear_probe

logger = logging.getLogger("bench.reflection")

#: method -> (mirror, flip_prob, flip_prediction, gate_distance, axis mode, axis error in degrees)
METHODS: dict[str, dict[str, Any]] = {
    "random_init": dict(train=False),
    "flip_baseline": dict(mirror=False, flip_prob=0.5),
    "noflip_baseline": dict(mirror=False, flip_prob=0.0),
    "essl_flip": dict(mirror=False, flip_prob=0.5, flip_prediction=0.4),
    "mfassl": dict(mirror=True, flip_prob=0.5),
    "mfassl_noflip": dict(mirror=True, flip_prob=0.0),
    "mfassl_gate_mean": dict(mirror=True, flip_prob=0.5, gate_distance="mean"),
    "mfassl_centre_axis": dict(mirror=True, flip_prob=0.5, axis="centre"),
    "mfassl_axis_err_2deg": dict(mirror=True, flip_prob=0.5, axis_err=2.0),
    "mfassl_axis_err_5deg": dict(mirror=True, flip_prob=0.5, axis_err=5.0),
}
READOUTS = ("global", "paired")
TASKS = ("side", "presence")
METRIC_NAMES = ("accuracy", "auroc", "ece", "brier", "flip_consistency")
OBJECTIVE_KWARGS: dict[str, dict[str, Any]] = {
    "mocov3": dict(proj_hidden_dim=128, out_dim=64, pred_hidden_dim=128),
    "dino": dict(out_dim=1024, hidden_dim=128, bottleneck_dim=64),
    "mixedae": dict(mixing_ratio=0.5, proj_dim=64, decoder_dim=64, decoder_depth=1, decoder_heads=4),
    "dagman": dict(),
}


@dataclass
class Config:
    """Sizes of one benchmark run (defaults: the CPU run reported in bench/RESULTS.md)."""

    seeds: Sequence[int] = (0, 1, 2)
    methods: Sequence[str] = tuple(METHODS)
    n_images: int = 96
    image_size: int = 48
    patch_size: int = 8
    embed_dim: int = 48
    depth: int = 3
    num_heads: int = 4
    mfa_layer: int | None = None  # None: the backbone's default (2/3 of the depth)
    epochs: int = 5
    batch_size: int = 16
    peak_lr: float = 1e-3
    t_sym: float = 1.0
    t_mfa: float = 1.0
    t_gate: float = 2.0
    folds: int = 4
    probe_epochs: int = 60
    n_boot: int = 500
    learning_checks: bool = True
    device: str = "cpu"
    max_minutes: float | None = None
    demo_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


TINY = dict(seeds=(0,), methods=("random_init", "flip_baseline", "essl_flip", "mfassl", "mfassl_axis_err_5deg"),
            n_images=18, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, epochs=1, batch_size=6,
            t_sym=0.5, t_mfa=0.0, t_gate=0.5, folds=2, probe_epochs=20, n_boot=20, learning_checks=False)
PUBLISHED = dict(n_images=480, image_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mfa_layer=8,
                 epochs=100, batch_size=64, peak_lr=5e-4 * 64 / 256, t_sym=10.0, t_mfa=12.0, t_gate=10.0,
                 seeds=(0, 1, 2, 3, 4))


# ------------------------------------------------------------------------------------------------------- data
def resized_axis(row_col: np.ndarray, full: int, size: int) -> np.ndarray:
    """An index row ``[n_row, n_col, d]`` of a ``full``-px image as the row of the image resized to ``size``."""
    n, d = np.asarray(row_col[:2], dtype=np.float64), float(row_col[2])
    k = full / size  # full index = k * small index + (k - 1) / 2 (pixel centres)
    return np.array([n[0], n[1], (d - (k - 1) / 2.0 * (n[0] + n[1])) / k])


def truth_axis(row: dict[str, str], size: int) -> np.ndarray:
    """The demo truth midline as an index row ``[n_row, n_col, d]`` of the 256-px image resized to ``size``."""
    nx, ny, d = float(row["midline_normal_xy_0"]), float(row["midline_normal_xy_1"]), float(row["midline_offset_px"])
    return resized_axis(np.array([ny, nx, d]), 256, size)


def rotate_axes(axes: torch.Tensor, degrees: float, size: int, seed: int) -> torch.Tensor:
    """Rotate each line ``[n, d]`` by ``+-degrees`` (random sign per row) about its point nearest the centre."""
    rng = np.random.default_rng(seed)
    out = axes.clone()
    c = np.full(2, (size - 1) / 2.0)
    for i, a in enumerate(axes.numpy()):
        n, d = a[:2], float(a[2])
        p = c - (n @ c - d) * n
        t = math.radians(degrees) * (1.0 if rng.random() < 0.5 else -1.0)
        r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        n2 = r @ n
        out[i] = torch.tensor([n2[0], n2[1], float(n2 @ p)])
    return out


def load_chest(cfg: Config, root: Path) -> dict[str, Any]:
    """Images ``(N, 1, S, S)`` in [0, 1], labels, subsets and the midlines ``(N, 3)`` (estimated, truth, centre)."""
    from PIL import Image

    from mfassl.geometry import SymmetryAxis2D
    from mfassl_medical.axis import estimate_midline
    from mfassl_medical.demo_data import build_demo_data

    paths = build_demo_data(root, n_brats=0, n_chexpert=cfg.n_images)
    with open(paths.chexpert_truth, newline="") as f:
        rows = list(csv.DictReader(f))
    s = cfg.image_size
    imgs, est, fallbacks = [], [], 0
    for r in rows:  # the midline is estimated on the full image, then carried to the working size
        im = Image.open(paths.root / r["path"]).convert("L")
        a = estimate_midline(np.asarray(im, np.float32) / 255.0, split_dim=1)
        fallbacks += int(a.fallback)
        est.append(resized_axis(a.as_array(), im.size[0], s))
        imgs.append(np.asarray(im.resize((s, s), Image.BILINEAR), np.float32) / 255.0)
    x = torch.from_numpy(np.stack(imgs))[:, None]
    truth = np.stack([truth_axis(r, s) for r in rows])
    centre = np.stack([SymmetryAxis2D.centre((s, s), split_dim=1).as_array() for _ in rows])
    est_t = torch.from_numpy(np.stack(est)).float()
    err = [SymmetryAxis2D(normal=e[:2], offset=float(e[2])).angle_to(SymmetryAxis2D(normal=t[:2], offset=float(t[2])))
           for e, t in zip(est_t.numpy(), truth)]
    side = np.array([r["side"] for r in rows])
    size = np.array([r.get("size", "none") for r in rows])
    return {"x": x, "axes": {"estimated": est_t, "truth": torch.from_numpy(truth).float(),
                             "centre": torch.from_numpy(centre).float()},
            "side": side, "size": size, "presence": (side != "none").astype(int), "right": (side == "right").astype(int),
            "axis_fallbacks": fallbacks, "axis_error_deg": {"median": float(np.median(err)), "p90": float(np.percentile(err, 90))},
            "root": str(paths.root), "views": [r.get("view", "PA") for r in rows]}


def method_axes(data: dict[str, Any], spec: dict[str, Any], seed: int, size: int) -> torch.Tensor:
    """The axes a method pretrains with."""
    if spec.get("axis") == "centre":
        return data["axes"]["centre"]
    if spec.get("axis_err"):
        return rotate_axes(data["axes"]["estimated"], float(spec["axis_err"]), size, seed + 7919)
    return data["axes"]["estimated"]


# ------------------------------------------------------------------------------------------------ pretraining
def build_method(cfg: Config, spec: dict[str, Any], seed: int, objective: str = "mocov3"):
    """The MFASSL (or baseline) of one method; the encoder weights depend on ``seed`` only."""
    from mfassl.backbones import MFASwin, MFAViT
    from mfassl.method import MFASSL

    torch.manual_seed(seed)  # the same initial encoder (and MFA block) for every method of one seed
    mfa = {"gate_distance": spec.get("gate_distance", "sum")}
    s = cfg.image_size
    if objective == "dagman":
        net = MFASwin(2, in_chans=1, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=4,
                      mfa_stage=2, **mfa)
    else:
        kw = {} if cfg.mfa_layer is None else {"mfa_layer": cfg.mfa_layer}
        net = MFAViT(2, img_size=s, patch_size=cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim, depth=cfg.depth,
                     num_heads=cfg.num_heads, **kw, **mfa)
    n_local = 2 if objective == "dino" else 0
    return MFASSL(net, objective, OBJECTIVE_KWARGS[objective], mirror=spec.get("mirror", True),
                  views=dict(global_size=s, local_size=s // 2, n_local=n_local, flip_prob=spec.get("flip_prob", 0.5)),
                  t_sym=cfg.t_sym, t_mfa=cfg.t_mfa, t_gate=cfg.t_gate, flip_prediction=spec.get("flip_prediction", 0.0))


def pretrain(cfg: Config, x: torch.Tensor, axes: torch.Tensor, spec: dict[str, Any], seed: int,
             objective: str = "mocov3") -> tuple[Any, dict[str, Any]]:
    """Train one method; returns the MFASSL module (eval mode) and its log (first / last step, seconds)."""
    from ignite.engine import Events
    from torch.utils.data import DataLoader, TensorDataset

    from mfassl.engine import create_optimizer, create_trainer

    t0 = time.perf_counter()
    method = build_method(cfg, spec, seed, objective)
    g = torch.Generator().manual_seed(seed)  # the same batches for every method
    loader = DataLoader(TensorDataset(x, axes), batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g)
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch=len(loader), max_epochs=cfg.epochs,
                             base_lr=cfg.peak_lr * 256 / cfg.batch_size, batch_size=cfg.batch_size,
                             warmup_epochs=max(1.0, cfg.epochs / 10), device=cfg.device, output_dir=None,
                             progress=False, tensorboard=False)
    first: dict[str, float] = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _same_views(engine) -> None:  # every method draws the same views at the same step
        torch.manual_seed(seed * 1_000_003 + engine.state.iteration)

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _first(engine) -> None:
        first.update({k: float(v) for k, v in engine.state.output.items()})

    trainer.run(loader, max_epochs=cfg.epochs)
    last = {k: float(v) for k, v in (trainer.state.output or {}).items()}
    log = {"first": first, "last": last, "steps": int(trainer.state.iteration), "seconds": time.perf_counter() - t0}
    return method.eval(), log


# ------------------------------------------------------------------------------------------------- readouts
@torch.no_grad()
def global_features(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain encoder's pooled features ``(N, C)`` of the images and of their horizontal flips."""
    from mfassl.evaluation import extract_features

    return extract_features(encoder, x), extract_features(encoder, torch.flip(x, dims=(-1,)))


def flipped_axes(axes: torch.Tensor, width: int) -> torch.Tensor:
    """The rows ``[n, d]`` of the same lines in the column-flipped images (normal re-oriented to +columns)."""
    from mfassl.geometry import SymmetryAxis2D

    m = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, width - 1.0], [0.0, 0.0, 1.0]])  # flipped index -> original index
    rows = [SymmetryAxis2D(normal=a[:2].numpy(), offset=float(a[2])).transform(m).canonical().as_array() for a in axes]
    return torch.from_numpy(np.stack(rows)).float()


@torch.no_grad()
def paired_features(encoder: torch.nn.Module, x: torch.Tensor, axes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mirror pair at ``axes`` through the encoder with MFA on (ramp 1): ``[pool(out_l), pool(out_r)]``
    ``(N, 2C)``, for the images and for their flips (with the flipped axes)."""
    from mfassl.pairing import mirror_pair, pair_key_mask

    encoder.eval()

    def run(images: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
        pair = mirror_pair(images, ax, images.shape[-1], split_dim=1)
        km = pair_key_mask(pair, encoder.mfa_patch_size)
        out = encoder.forward_paired(pair.x_l, pair.x_r, ramp=1.0, use_mfa=True, key_mask=km)
        return torch.cat([encoder.pool(out.out_l), encoder.pool(out.out_r)], dim=1)

    return run(x, axes), run(torch.flip(x, dims=(-1,)), flipped_axes(axes, x.shape[-1]))


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` test-index arrays, each class spread evenly over the folds (deterministic given ``seed``)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f)) for f in folds if f]


def probe(f: torch.Tensor, ff: torch.Tensor, y: np.ndarray, cfg: Config, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of the linear probe on the features and on the flipped images' features."""
    p, pf = np.zeros(len(y)), np.zeros(len(y))
    k = max(2, min(cfg.folds, int(np.bincount(y).min())))
    labels = torch.as_tensor(y, dtype=torch.float32)[:, None]
    for te in stratified_folds(y, k, seed):
        tr = np.setdiff1d(np.arange(len(y)), te)
        out = linear_probe(f[tr], labels[tr], torch.cat([f[te], ff[te]]), epochs=cfg.probe_epochs, seed=seed)[:, 0]
        p[te], pf[te] = out[: len(te)].numpy(), out[len(te):].numpy()
    return p, pf


# ------------------------------------------------------------------------------------------------- metrics
def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Share of ``(p >= 0.5) == y``; NaN on no rows."""
    return float(np.mean((np.asarray(p) >= 0.5) == (np.asarray(y) > 0))) if len(y) else float("nan")


def metric(name: str, p: np.ndarray, pf: np.ndarray, y: np.ndarray, task: str) -> float:
    """One metric of one seed's out-of-fold probabilities (``pf``: on the flipped images)."""
    if name == "accuracy":
        return accuracy(p, y)
    if name == "auroc":
        return auroc(p, y)
    if name == "ece":
        return ece(p, y)
    if name == "brier":
        return brier(p, y)
    return flip_consistency(p, pf, swap=task == "side")


def seed_mean(name: str, task: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    """``stat(P, PF, y)`` for :func:`~mfassl.evaluation.bootstrap_ci`: the metric's mean over the seeds,
    ``P``/``PF`` ``(N, S)``."""
    def stat(p: np.ndarray, pf: np.ndarray, y: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean([metric(name, p[:, s], pf[:, s], y, task) for s in range(p.shape[1])]))
    return stat


def seed_mean_diff(name: str, task: str) -> Callable[..., float]:
    """``stat(P_a, PF_a, P_b, PF_b, y)``: method a minus method b, both averaged over seeds."""
    one = seed_mean(name, task)

    def stat(pa: np.ndarray, pfa: np.ndarray, pb: np.ndarray, pfb: np.ndarray, y: np.ndarray) -> float:
        return one(pa, pfa, y) - one(pb, pfb, y)
    return stat


def subsets(data: dict[str, Any], task: str) -> dict[str, np.ndarray]:
    """Boolean masks over the task's rows: left / right / none and small / large findings."""
    les = data["presence"] == 1
    side, size = data["side"], data["size"]
    if task == "side":
        side, size = side[les], size[les]
    out = {"left": side == "left", "right": side == "right", "none": side == "none",
           "small": size == "small", "large": size == "large"}
    return {k: v for k, v in out.items() if v.any()}


# ------------------------------------------------------------------------------------------------------- run
def learning_checks(cfg: Config, data: dict[str, Any], seed: int) -> dict[str, Any]:
    """DINO, MixedAE and DAGMaN (MFASSL on each) after the same pretraining: did anything learn?"""
    x, axes = data["x"], data["axes"]["estimated"]
    out: dict[str, Any] = {}
    spec = METHODS["mfassl"]
    # DINO: the teacher's softmax entropy on the global views against log(out_dim) (uniform = collapsed)
    method, log = pretrain(cfg, x, axes, spec, seed, "dino")
    obj = method.objective
    with torch.no_grad():
        t = obj.teacher[1](obj.teacher[0](x))
        probs = torch.softmax((t - obj.loss_fn.center) / obj.loss_fn.teacher_temp, dim=-1)
        row_h = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
        mean_p = probs.mean(0)
        batch_h = float(-(mean_p * mean_p.clamp_min(1e-12).log()).sum())
    out["dino"] = {"teacher_entropy": row_h, "entropy_of_mean": batch_h,
                   "log_out_dim": math.log(OBJECTIVE_KWARGS["dino"]["out_dim"]),
                   "loss_first": log["first"].get("base"), "loss_last": log["last"].get("base"),
                   "seconds": log["seconds"]}
    # MixedAE: TopK accuracy per homologous layer (chance = mixing ratio)
    method, log = pretrain(cfg, x, axes, spec, seed, "mixedae")
    keys = [k for k in log["last"] if k.startswith("mixedae/topk_acc")]
    out["mixedae"] = {"topk_acc_first": float(np.mean([log["first"][k] for k in keys])) if keys else float("nan"),
                      "topk_acc_last": float(np.mean([log["last"][k] for k in keys])) if keys else float("nan"),
                      "chance": OBJECTIVE_KWARGS["mixedae"]["mixing_ratio"],
                      "loss_first": log["first"].get("base"), "loss_last": log["last"].get("base"),
                      "seconds": log["seconds"]}
    # DAGMaN: teacher attention entropy (mean over stages and heads), first step vs last step; MFA-Swin needs
    # sizes divisible by 32, so the images (and their axes) are resized to the next multiple
    s2 = 32 * math.ceil(cfg.image_size / 32)
    k = s2 / cfg.image_size
    x2 = torch.nn.functional.interpolate(x, size=(s2, s2), mode="bilinear", align_corners=False)
    axes2 = axes.clone()
    axes2[:, 2] = k * axes[:, 2] + (k - 1) / 2.0 * (axes[:, 0] + axes[:, 1])  # pixel centres
    method, log = pretrain(replace(cfg, image_size=s2), x2, axes2, spec, seed, "dagman")
    keys = [k for k in log["last"] if k.startswith("dagman/entropy")]
    out["dagman"] = {"attention_entropy_first": float(np.mean([log["first"][k] for k in keys])),
                     "attention_entropy_last": float(np.mean([log["last"][k] for k in keys])),
                     "mask_overlap_last": log["last"].get("dagman/mask_overlap"),
                     "loss_first": log["first"].get("base"), "loss_last": log["last"].get("base"),
                     "seconds": log["seconds"]}
    return out


def run(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """The whole benchmark; writes ``results.json``, ``table.md`` and ``reflection.png`` and returns the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    deadline = None if cfg.max_minutes is None else t0 + 60.0 * cfg.max_minutes
    root = Path(cfg.demo_root) if cfg.demo_root else out / f"demo-{cfg.n_images}"
    data = load_chest(cfg, root)
    les = data["presence"] == 1
    labels = {"side": data["right"][les], "presence": data["presence"]}
    logger.info("data: %d chest images at %d px (%d with a finding: %d left / %d right; %d small / %d large) from %s; "
                "estimated midline: %d fallbacks, error median %.2f deg (p90 %.2f)", len(data["x"]), cfg.image_size,
                int(les.sum()), int((data["side"] == "left").sum()), int((data["side"] == "right").sum()),
                int((data["size"] == "small").sum()), int((data["size"] == "large").sum()), data["root"],
                data["axis_fallbacks"], data["axis_error_deg"]["median"], data["axis_error_deg"]["p90"])
    methods = list(cfg.methods)
    probs = {(m, r, t): [] for m in methods for r in READOUTS for t in TASKS}  # per seed: (p, pf)
    train_log: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    done_seeds: list[int] = []
    for seed in cfg.seeds:
        if deadline is not None and done_seeds and time.perf_counter() > deadline:
            logger.warning("--max-minutes reached: stopping after seeds %s", done_seeds)
            break
        seed_probs: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        for name in methods:
            spec = METHODS[name]
            if spec.get("train", True):
                method, log = pretrain(cfg, data["x"], method_axes(data, spec, seed, cfg.image_size), spec, seed)
                last = log["last"]
                logger.info("seed %d %-22s %4.0f s, %d steps, loss %.3f -> %.3f (base %.3f -> %.3f), gate mean %.2e%s",
                            seed, name, log["seconds"], log["steps"], log["first"].get("loss", math.nan),
                            last.get("loss", math.nan), log["first"].get("base", math.nan), last.get("base", math.nan),
                            last.get("gate_mean", 0.0),
                            f", flip acc {last['flip_acc']:.2f}" if "flip_acc" in last else "")
            else:
                method, log = build_method(cfg, METHODS["mfassl"], seed).eval(), {}
            train_log[name].append(log)
            enc = method.backbone.eval()
            feats = {"global": global_features(enc, data["x"]),
                     "paired": paired_features(enc, data["x"], data["axes"]["estimated"])}
            for readout, (f, ff) in feats.items():
                for task in TASKS:
                    sel = torch.from_numpy(les if task == "side" else np.ones(len(f), bool))
                    seed_probs[name, readout, task] = probe(f[sel], ff[sel], labels[task], cfg, seed)
        for k, v in seed_probs.items():
            probs[k].append(v)
        done_seeds.append(seed)
    checks = learning_checks(cfg, data, cfg.seeds[0]) if cfg.learning_checks else {}
    save_probs(out / "probs.npz", probs, data, done_seeds)
    result = {"config": {**asdict(cfg), "seeds": done_seeds, "methods": methods},
              "data": {k: data[k] for k in ("axis_fallbacks", "axis_error_deg", "root")} |
              {"n_images": int(len(data["x"])), "n_lesion": int(les.sum()), "n_right": int(data["right"].sum()),
               "n_small": int((data["size"] == "small").sum()), "n_large": int((data["size"] == "large").sum()),
               "n_ap": int(sum(v == "AP" for v in data["views"]))},
              "rows": summarise(probs, labels, data, methods, cfg), "train": train_log, "learning_checks": checks}
    result["seconds"] = time.perf_counter() - t0
    return report(result, out)


def report(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write ``results.json``, ``table.md`` and ``reflection.png`` of a summarised result."""
    methods = result["config"]["methods"]
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    table = format_tables(result)
    (out / "table.md").write_text(table + "\n")
    plot(result["rows"], methods, out / "reflection.png")
    logger.info("\n%s", table)
    logger.info("wrote %s, %s, %s in %.0f s", out / "table.md", out / "results.json", out / "reflection.png",
                result["seconds"])
    return result


def save_probs(path: Path, probs: dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]],
               data: dict[str, Any], seeds: Sequence[int]) -> None:
    """The out-of-fold probabilities ``(N, S)`` per (method, readout, task) and the labels, for :func:`merge`."""
    arrays: dict[str, np.ndarray] = {"seeds": np.asarray(seeds), "side": data["side"], "size": data["size"],
                                     "presence": data["presence"], "right": data["right"]}
    for (m, r, t), v in probs.items():
        if v:
            arrays[f"p|{m}|{r}|{t}"] = np.stack([p for p, _ in v], 1)
            arrays[f"pf|{m}|{r}|{t}"] = np.stack([q for _, q in v], 1)
    np.savez_compressed(path, **arrays)


def merge(dirs: Sequence[str | Path], out_dir: str | Path, n_boot: int | None = None) -> dict[str, Any]:
    """Pool the seeds of several runs (same data, sizes and methods; e.g. one process per seed) into one report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(json.loads((Path(d) / "results.json").read_text()), np.load(Path(d) / "probs.npz")) for d in dirs]
    base, z0 = runs[0]
    for res, z in runs[1:]:
        if not (np.array_equal(z["side"], z0["side"]) and np.array_equal(z["size"], z0["size"])):
            raise ValueError(f"runs {dirs} were not made on the same data; cannot pool their seeds.")
    methods = base["config"]["methods"]
    cfg = Config(**{k: (tuple(v) if k in ("seeds", "methods") else v) for k, v in base["config"].items()
                    if k in Config.__dataclass_fields__})
    if n_boot is not None:
        cfg = replace(cfg, n_boot=n_boot)
    probs: dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    seeds: list[int] = []
    train: dict[str, list[Any]] = {m: [] for m in methods}
    checks = next((res["learning_checks"] for res, _ in runs if res.get("learning_checks")), {})
    runs = [(res, z) for res, z in runs if all(f"p|{m}|global|side" in z.files for m in methods)]  # others: checks only
    for res, z in runs:
        seeds += [int(s) for s in z["seeds"]]
        for m in methods:
            train[m] += res["train"].get(m, [])
            for r in READOUTS:
                for t in TASKS:
                    p, pf = z[f"p|{m}|{r}|{t}"], z[f"pf|{m}|{r}|{t}"]
                    probs.setdefault((m, r, t), []).extend((p[:, i], pf[:, i]) for i in range(p.shape[1]))
    data = {"side": z0["side"], "size": z0["size"], "presence": z0["presence"], "right": z0["right"]}
    les = data["presence"] == 1
    labels = {"side": data["right"][les], "presence": data["presence"]}
    result = {"config": {**base["config"], "seeds": seeds, "n_boot": cfg.n_boot, "merged_from": [str(d) for d in dirs]},
              "data": base["data"], "rows": summarise(probs, labels, data, methods, cfg), "train": train,
              "learning_checks": checks, "seconds": float(sum(res["seconds"] for res, _ in runs))}
    save_probs(out / "probs.npz", probs, data, seeds)
    return report(result, out)


def summarise(probs: dict[tuple[str, str, str], list[tuple[np.ndarray, np.ndarray]]], labels: dict[str, np.ndarray],
              data: dict[str, Any], methods: Sequence[str], cfg: Config) -> list[dict[str, Any]]:
    """One row per (method, readout, task): metrics, subsets, differences, with bootstrap intervals."""
    rows = []
    for task in TASKS:
        y = labels[task]
        subs = subsets(data, task)
        for readout in READOUTS:
            stacked = {m: (np.stack([p for p, _ in probs[m, readout, task]], 1),
                           np.stack([q for _, q in probs[m, readout, task]], 1)) for m in methods}
            for m in methods:
                p, pf = stacked[m]
                row: dict[str, Any] = {"method": m, "readout": readout, "task": task, "n": int(len(y)),
                                       "seeds": int(p.shape[1])}
                for name in METRIC_NAMES:
                    row[name] = bootstrap_ci(seed_mean(name, task), p, pf, y, n_boot=cfg.n_boot, seed=0)
                row["per_seed_accuracy"] = [accuracy(p[:, s], y) for s in range(p.shape[1])]
                row["subsets"] = {k: bootstrap_ci(seed_mean("accuracy", task), p[mask], pf[mask], y[mask],
                                                  n_boot=cfg.n_boot, seed=0) + (int(mask.sum()),)
                                  for k, mask in subs.items()}
                row["diff"] = {}
                for ref in ("flip_baseline", "random_init"):
                    if ref in stacked and ref != m:
                        pb, pfb = stacked[ref]
                        row["diff"][ref] = {name: bootstrap_ci(seed_mean_diff(name, task), p, pf, pb, pfb, y,
                                                               n_boot=cfg.n_boot, seed=0)
                                            for name in ("accuracy", "auroc")}
                rows.append(row)
    return rows


def detectable_difference(rows: list[dict[str, Any]], task: str, readout: str, name: str = "accuracy") -> float:
    """Smallest difference against ``flip_baseline`` detected with 80% power at a two-sided 5% level:
    ``(1.96 + 0.84) * SE``, SE from the width of the paired bootstrap interval (``width / 3.92``), median
    over the methods."""
    widths = [r["diff"]["flip_baseline"][name][2] - r["diff"]["flip_baseline"][name][1] for r in rows
              if r["task"] == task and r["readout"] == readout and "flip_baseline" in r["diff"]
              and np.isfinite(r["diff"]["flip_baseline"][name][2])]
    return float(2.8 * np.median(widths) / 3.92) if widths else float("nan")


def _ci(v: Sequence[float]) -> str:
    return f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"


def format_tables(result: dict[str, Any]) -> str:
    """Markdown tables: main metrics, subsets, differences, learning checks."""
    rows, methods = result["rows"], result["config"]["methods"]
    order = lambda r: (TASKS.index(r["task"]), READOUTS.index(r["readout"]), methods.index(r["method"]))  # noqa: E731
    rows = sorted(rows, key=order)
    lines = ["| task | readout | method | accuracy | AUROC | ECE | Brier | flip consistency |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['readout']} | {r['method']} | "
                     + " | ".join(_ci(r[k]) for k in METRIC_NAMES) + " |")
    sub_names = ["left", "right", "none", "small", "large"]
    lines += ["", "Accuracy by subset (n per subset in the header of each task):", "",
              "| task | readout | method | " + " | ".join(sub_names) + " |", "|---|---|---|" + "---|" * len(sub_names)]
    for r in rows:
        cells = [(_ci(r["subsets"][k][:3]) + f" (n {r['subsets'][k][3]})") if k in r["subsets"] else "-"
                 for k in sub_names]
        lines.append(f"| {r['task']} | {r['readout']} | {r['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (method minus reference, mean over seeds, 95% bootstrap over cases):", "",
              "| task | readout | method | accuracy - flip_baseline | AUROC - flip_baseline | AUROC - random_init |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        d = r["diff"]
        c1 = _ci(d["flip_baseline"]["accuracy"]) if "flip_baseline" in d else "-"
        c2 = _ci(d["flip_baseline"]["auroc"]) if "flip_baseline" in d else "-"
        c3 = _ci(d["random_init"]["auroc"]) if "random_init" in d else "-"
        lines.append(f"| {r['task']} | {r['readout']} | {r['method']} | {c1} | {c2} | {c3} |")
    lines += ["", "Smallest accuracy difference against flip_baseline this design detects (80% power, 5% two-sided):"]
    for task in TASKS:
        for readout in READOUTS:
            lines.append(f"- {task}, {readout}: {detectable_difference(rows, task, readout):.3f}")
    lc = result.get("learning_checks") or {}
    if lc:
        d, mx, dg = lc["dino"], lc["mixedae"], lc["dagman"]
        lines += ["", "Learning checks (MFASSL on each objective, seed %d, the same pretraining):"
                  % result["config"]["seeds"][0],
                  f"- DINO teacher entropy {d['teacher_entropy']:.3f} nats vs log(out_dim) {d['log_out_dim']:.3f} "
                  f"(entropy of the batch-mean distribution {d['entropy_of_mean']:.3f}); loss {d['loss_first']:.3f} -> "
                  f"{d['loss_last']:.3f}",
                  f"- MixedAE TopK accuracy {mx['topk_acc_first']:.3f} -> {mx['topk_acc_last']:.3f} (chance "
                  f"{mx['chance']:.2f}); loss {mx['loss_first']:.3f} -> {mx['loss_last']:.3f}",
                  f"- DAGMaN teacher attention entropy {dg['attention_entropy_first']:.3f} -> "
                  f"{dg['attention_entropy_last']:.3f} nats; mask overlap {dg['mask_overlap_last']:.2f}; loss "
                  f"{dg['loss_first']:.3f} -> {dg['loss_last']:.3f}"]
    cfg = result["config"]
    lines += ["", f"Seeds {cfg['seeds']}; {cfg['folds']}-fold out-of-fold linear probe; {cfg['n_boot']} bootstrap "
              "resamples of the cases. Flip consistency: side = the prediction changes on the flipped image, "
              "presence = it stays."]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], methods: Sequence[str], path: Path) -> None:
    """Bars of accuracy, AUROC, ECE, Brier and flip consistency per method, one panel per task and readout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(READOUTS), len(TASKS), figsize=(15, 4.2 * len(READOUTS)), sharey=True, squeeze=False)
    width = 0.8 / max(len(methods), 1)
    cmap = plt.get_cmap("tab10")
    for ax, (readout, task) in zip(axes.ravel(), [(ro, t) for ro in READOUTS for t in TASKS]):
        for j, name in enumerate(methods):
            r = next((r for r in rows if r["task"] == task and r["method"] == name and r["readout"] == readout), None)
            if r is None:
                continue
            xs = np.arange(len(METRIC_NAMES)) + (j - (len(methods) - 1) / 2) * width
            mean = np.array([r[k][0] for k in METRIC_NAMES])
            err = np.clip(np.array([[r[k][0] - r[k][1] for k in METRIC_NAMES],
                                    [r[k][2] - r[k][0] for k in METRIC_NAMES]]), 0, None)
            err = np.nan_to_num(err)
            ax.bar(xs, mean, width, yerr=err, capsize=1.5, label=name, color=cmap(j % 10))
        ax.set_xticks(np.arange(len(METRIC_NAMES)), ["accuracy", "AUROC", "ECE", "Brier", "flip cons."])
        ax.set_title(f"lesion {task}, {readout} readout")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    axes[0, 0].legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", default="bench/out/reflection")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--methods", nargs="+", choices=tuple(METHODS))
    ap.add_argument("--tiny", action="store_true", help="the reduced sizes of the test suite")
    ap.add_argument("--published", action="store_true", help="ViT-S/16 at 224 px, 480 images, 100 epochs, 5 seeds (GPU)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--n-images", type=int)
    ap.add_argument("--device")
    ap.add_argument("--max-minutes", type=float, help="start no new seed after this many minutes")
    ap.add_argument("--no-learning-checks", action="store_true")
    ap.add_argument("--demo-root")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, help="bootstrap resamples (with --merge: of the pooled report)")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="pool the seeds of these runs' outputs into --out")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="any other Config field, e.g. --set image_size=64 t_gate=5 (numbers parsed as numbers)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mfassl").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.merge:
        merge(args.merge, args.out, n_boot=args.n_boot)
        return 0
    cfg = Config(**(TINY if args.tiny else PUBLISHED if args.published else {}))
    kw: dict[str, Any] = {}
    for k in ("seeds", "methods", "epochs", "n_images", "device", "max_minutes", "demo_root", "n_boot"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = tuple(v) if k in ("seeds", "methods") else v
    if args.no_learning_checks:
        kw["learning_checks"] = False
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in Config.__dataclass_fields__ or not value:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(Config.__dataclass_fields__)}")
        kw[key] = json.loads(value) if value[0] in "0123456789-[{tfn" else value
    run(replace(cfg, **kw), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
