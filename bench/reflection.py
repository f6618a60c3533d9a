"""The reflection benchmark: does pretraining learn, and does MFASSL keep the laterality that flip-invariant
SSL loses? Floors, references, learning curves, then the methods compared.

Data: the synthetic chest demo set with GRADED findings (:func:`mfassl_medical.demo_data.build_demo_data`,
``findings="graded"``: one image in three clean, one with a finding in the left lung, one in the right; four
sizes x three densities anywhere in the lung field, down to barely visible), resized to ``image_size``, the
midline estimated on the full image by :func:`mfassl_medical.axis.estimate_midline`. Two tasks: lesion *side*
(the images with a finding) and lesion *presence* (all images). Two readouts of every frozen encoder: *global*
(the plain encoder's pooled feature, what a downstream user gets) and *paired* (the mirror pair at the
estimated midline through the encoder with MFA, ``[pool(out_l), pool(out_r)]``). The probe is an
L2-regularised logistic regression (strength chosen by inner cross-validation) on standardised features,
``folds``-fold out-of-fold, the same folds for every method of a seed (stratified on none / left / right).

Methods (:data:`METHODS`; every trained one from the SAME initial encoder per seed, on the SAME batches and the
SAME views: the RNG is reseeded before every step), MoCo-v3 on a small MFA-ViT:

=====================  =============================================================================
``random_init``        the encoder untrained (the floor of SSL)
``flip_baseline``      ``mirror=False``, views with the random flip (``flip_prob`` 0.5): invariant SSL
``noflip_baseline``    ``mirror=False``, no flip (``flip_prob`` 0)
``essl_flip``          ``mirror=False``, flip 0.5, ``flip_prediction`` (E-SSL: predict the flip)
``mfassl``             the published method (mirror branch, MFA with the summed gate, flip 0.5)
``mfassl_noflip``      MFASSL with ``flip_prob`` 0
``mfassl_gate_mean``   MFASSL with ``gate_distance="mean"``
``mfassl_centre_axis`` MFASSL split at the image centre instead of the estimated midline
``mfassl_axis_err_*``  MFASSL with the estimated midline rotated by 2 / 5 degrees (random sign per image)
=====================  =============================================================================

References (:data:`REFERENCES`): ``pixels`` (the same probe on the raw pixels; its *paired* readout is the
pixel left-right difference about the estimated midline) and ``supervised`` (the same architecture from the same
initial weights trained on the labels, presence and side together, with the same budget of steps, batch and
learning-rate schedule, one network per outer fold, then probed like the others). Objective runs
(:data:`OBJECTIVE_RUNS`): the flip baseline on DINO, MixedAE and DAGMaN, with their learning checks (DINO
teacher entropy against ``log(out_dim)`` and prototypes in use, MixedAE TopK accuracy against chance, DAGMaN
attention entropy) at every checkpoint.

Every (method, seed) runs in its own process and writes one small result file (``<method>__seed<k>.json``:
out-of-fold probabilities of the final encoder, the probe AUROC at each checkpoint of the run, the training
log; numbers only, no weights) under ``--results``; finished ones are skipped, so a run can stop and go on over
several days, and :mod:`reflection_report` pools whatever is there into ``table.md``, ``results.json``,
``reflection.png`` and ``curves.png`` under ``--out``.

    python bench/reflection.py --jobs 2                       # the run in bench/RESULTS.md (2 CPU cores)
    python bench/reflection.py --methods mfassl --seeds 5 6   # more units into the same results folder
    python bench/reflection.py --merge bench/results/reflection --out bench/out/reflection   # the report only
    python bench/reflection.py --published --device cuda     # ViT-S/16 at 224 px (a GPU)
    python bench/reflection.py --tiny --out D --results D/r   # the reduced pipeline the test suite runs
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reflection_report import (  # noqa: E402
    DATA_KIND,
    READOUTS,
    TASKS,
    UNIT_KIND,
    accuracy,
    detectable_difference,
    read_json,
    report,
    save_json,
    seed_mean,
    seed_mean_diff,
    task_rows,
    task_targets,
)

logger = logging.getLogger("bench.reflection")

__all__ = ["METHODS", "REFERENCES", "OBJECTIVE_RUNS", "Config", "accuracy", "detectable_difference", "main",
           "merge", "seed_mean", "seed_mean_diff"]

#: method -> how it pretrains (mirror, flip_prob, flip_prediction, gate_distance, axis mode, axis error degrees)
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
#: the floors and the supervised ceiling every table carries
REFERENCES: dict[str, dict[str, Any]] = {"pixels": dict(kind="pixels"), "supervised": dict(kind="supervised")}
#: the other objectives, as flip baselines, with their learning checks
OBJECTIVE_RUNS: dict[str, dict[str, Any]] = {
    "dino_flip": dict(mirror=False, flip_prob=0.5, objective="dino"),
    "mixedae_flip": dict(mirror=False, flip_prob=0.5, objective="mixedae"),
    "dagman_flip": dict(mirror=False, flip_prob=0.5, objective="dagman"),
}
ALL_UNITS: dict[str, dict[str, Any]] = {**METHODS, **REFERENCES, **OBJECTIVE_RUNS}
CORE = ("flip_baseline", "random_init", "pixels", "noflip_baseline", "essl_flip", "mfassl", "mfassl_gate_mean",
        "supervised")
"""The methods run on every seed of ``Config.seeds``; the other ablations on ``ablation_seeds``."""
ABLATIONS = ("mfassl_noflip", "mfassl_centre_axis", "mfassl_axis_err_2deg", "mfassl_axis_err_5deg")
OBJECTIVE_KWARGS: dict[str, dict[str, Any]] = {
    "mocov3": dict(proj_hidden_dim=128, out_dim=64, pred_hidden_dim=128),
    "dino": dict(out_dim=1024, hidden_dim=128, bottleneck_dim=64, head_batch_norm=True),
    "mixedae": dict(mixing_ratio=0.5, proj_dim=64, decoder_dim=64, decoder_depth=1, decoder_heads=4),
    "dagman": dict(),
}
PUBLISHED_SHARES = {"t_sym": 0.10, "t_mfa": 0.12, "t_gate": 0.10}
"""The published schedule (10 / 12 / 10 of 100 epochs) as shares of the run, for runs of another length."""


@dataclass
class Config:
    """Sizes of one benchmark run (defaults: the CPU learning regime reported in bench/RESULTS.md)."""

    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    ablation_seeds: Sequence[int] = (0, 1, 2)
    objective_seeds: Sequence[int] = (0,)
    methods: Sequence[str] = tuple(CORE + ABLATIONS + tuple(OBJECTIVE_RUNS))
    n_images: int = 480
    image_size: int = 48
    findings: str = "graded"
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mfa_layer: int | None = None  # None: the backbone's default (2/3 of the depth)
    steps: int = 2400
    batch_size: int = 64
    peak_lr: float = 1.5e-3
    warmup: float = 0.1  # share of the run
    t_sym: float | None = None  # epochs; None: the published share of the run (PUBLISHED_SHARES)
    t_mfa: float | None = None
    t_gate: float | None = None
    curve: Sequence[float] = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)  # checkpoints, as shares of the run
    folds: int = 5
    n_boot: int = 1000
    device: str = "cpu"
    demo_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: the fields that do not change a unit's numbers (which units run, how the report is pooled, where things are)
NOT_RUN_DEFINING = ("seeds", "ablation_seeds", "objective_seeds", "methods", "n_boot", "device", "demo_root")

TINY = dict(seeds=(0,), ablation_seeds=(0,), objective_seeds=(),
            methods=("random_init", "pixels", "flip_baseline", "essl_flip", "mfassl", "mfassl_axis_err_5deg",
                     "supervised"),
            n_images=24, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, steps=8, batch_size=6,
            curve=(0.0, 1.0), folds=2, n_boot=20)
PUBLISHED = dict(n_images=480, image_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mfa_layer=8,
                 steps=7500, batch_size=64, peak_lr=5e-4 * 64 / 256)


def run_key(cfg: Config) -> str:
    """A short hash of the settings that define the units' numbers (sizes, data, schedule, probe), shared by
    every unit of a run; a unit's objective settings are in its own :func:`unit_key`."""
    d = {k: v for k, v in asdict(cfg).items() if k not in NOT_RUN_DEFINING}
    d["probe_cs"] = PROBE_CS
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:10]


def unit_key(cfg: Config, method: str) -> str:
    """:func:`run_key` and the settings of the unit's objective: a unit is redone when either changes."""
    spec = ALL_UNITS[method]
    d = {"run": run_key(cfg), "objective": OBJECTIVE_KWARGS[spec.get("objective", "mocov3")], "spec": spec}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:10]


def plan(cfg: Config) -> list[tuple[str, int]]:
    """The (method, seed) units of a run, most informative first: the core methods on the first three seeds,
    the ablations, the objective runs, then the remaining core seeds."""
    chosen = [m for m in cfg.methods if m in ALL_UNITS]
    first = list(cfg.seeds)[:3]
    units = [(m, s) for s in first for m in CORE if m in chosen]
    units += [(m, s) for s in cfg.ablation_seeds for m in ABLATIONS if m in chosen]
    units += [(m, s) for s in cfg.objective_seeds for m in OBJECTIVE_RUNS if m in chosen]
    units += [(m, s) for s in list(cfg.seeds)[3:] for m in CORE if m in chosen]
    extra = [m for m in chosen if m not in CORE + ABLATIONS + tuple(OBJECTIVE_RUNS)]
    units += [(m, s) for s in cfg.seeds for m in extra]
    return list(dict.fromkeys(units))


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


def scaled_axes(axes: torch.Tensor, k: float) -> torch.Tensor:
    """Rows ``[n, d]`` of index lines of an image carried to the image resized by ``k`` (pixel centres)."""
    out = axes.clone()
    out[:, 2] = k * axes[:, 2] + (k - 1) / 2.0 * (axes[:, 0] + axes[:, 1])
    return out


def load_chest(cfg: Config, out: Path) -> dict[str, Any]:
    """Images ``(N, 1, S, S)`` in [0, 1], labels and the midlines ``(N, 3)`` (estimated, truth, centre).

    The demo set is built (or found up to date) under ``out``; the resized images and estimated midlines are
    cached as ``data-*.npz`` keyed by the set's truth table and the size (a changed generator or size is a new
    cache), built once under a file lock (several unit processes share it)."""
    from filelock import FileLock

    from mfassl_medical.demo_data import build_demo_data

    root = Path(cfg.demo_root) if cfg.demo_root else out / f"demo-{cfg.findings}-{cfg.n_images}"
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / f".demo-{cfg.findings}-{cfg.n_images}.lock")):
        paths = build_demo_data(root, n_brats=0, n_chexpert=cfg.n_images, findings=cfg.findings)
    key = hashlib.sha1(paths.chexpert_truth.read_bytes() + f"|{cfg.image_size}|v3".encode()).hexdigest()[:10]
    cache = out / f"data-{key}.npz"
    with FileLock(str(cache) + ".lock"):
        if not cache.is_file():
            _build_chest(cfg, paths, cache)
    z = np.load(cache, allow_pickle=False)
    data = {"x": torch.from_numpy(z["x"]),
            "axes": {k: torch.from_numpy(z[f"axes_{k}"]) for k in ("estimated", "truth", "centre")},
            "labels": {k: z[f"label_{k}"].astype(str) for k in ("side", "size", "density", "zone", "view")},
            "summary": json.loads(str(z["summary"]))}
    h = hashlib.sha1(z["x"].tobytes())
    h.update(z["axes_estimated"].tobytes())
    for k in ("side", "size", "density", "zone"):
        h.update("|".join(data["labels"][k]).encode())
    data["key"] = h.hexdigest()[:10]
    return data


def _build_chest(cfg: Config, paths: Any, cache: Path) -> None:
    from PIL import Image

    from mfassl.geometry import SymmetryAxis2D
    from mfassl_medical.axis import estimate_midline

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
    truth = np.stack([truth_axis(r, s) for r in rows]).astype(np.float32)
    centre = np.stack([SymmetryAxis2D.centre((s, s), split_dim=1).as_array() for _ in rows]).astype(np.float32)
    est_a = np.stack(est).astype(np.float32)
    err = [SymmetryAxis2D(normal=e[:2], offset=float(e[2])).angle_to(SymmetryAxis2D(normal=t[:2], offset=float(t[2])))
           for e, t in zip(est_a, truth)]
    lab = {k: np.array([r.get(k, "none") for r in rows]) for k in ("side", "size", "density", "zone")}
    lab["view"] = np.array([r.get("view", "PA") for r in rows])
    summary = {"n_images": len(rows), "image_size": s, "findings": cfg.findings, "root": str(paths.root),
               "n_lesion": int((lab["side"] != "none").sum()), "n_left": int((lab["side"] == "left").sum()),
               "n_right": int((lab["side"] == "right").sum()), "n_ap": int((lab["view"] == "AP").sum()),
               "axis_fallbacks": fallbacks,
               "axis_error_deg": {"median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
                                  "max": float(np.max(err))}}
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez_compressed(tmp, x=np.stack(imgs)[:, None], axes_estimated=est_a, axes_truth=truth, axes_centre=centre,
                        summary=np.array(json.dumps(summary)), **{f"label_{k}": v for k, v in lab.items()})
    tmp.replace(cache)


def write_data_file(data: dict[str, Any], results: Path) -> Path:
    """``data-<key>.json`` beside the result files: the labels and the data summary the report needs."""
    path = results / f"data-{data['key']}.json"
    if not path.is_file():
        save_json({"kind": DATA_KIND, "key": data["key"], "summary": data["summary"],
                   "labels": {k: v.tolist() for k, v in data["labels"].items()}}, path)
    return path


def method_axes(data: dict[str, Any], spec: dict[str, Any], seed: int, size: int) -> torch.Tensor:
    """The axes a method pretrains with."""
    if spec.get("axis") == "centre":
        return data["axes"]["centre"]
    if spec.get("axis_err"):
        return rotate_axes(data["axes"]["estimated"], float(spec["axis_err"]), size, seed + 7919)
    return data["axes"]["estimated"]


def fold_ids(labels: dict[str, np.ndarray], k: int, seed: int) -> np.ndarray:
    """``(N,)`` outer fold of each image, stratified on none / left / right (every task and method of a seed
    uses the same folds, so one supervised network per fold serves both tasks)."""
    out = np.zeros(len(labels["side"]), int)
    for j, f in enumerate(stratified_folds(labels["side"], k, seed)):
        out[f] = j
    return out


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` test-index arrays, each class spread evenly over the folds (deterministic given ``seed``)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f)) for f in folds if f]


# ------------------------------------------------------------------------------------------------ the probe
PROBE_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""The inverse L2 strengths the probe chooses from (by inner cross-validation)."""


class LogisticProbe:
    """Standardised features + L2 logistic regression whose strength ``C`` is chosen from :data:`PROBE_CS` by
    3-fold stratified inner cross-validation on the log loss (computed here: scikit-learn's scorer machinery
    costs more than the fits at these sizes), then refit on all the training rows; with one strength in
    :data:`PROBE_CS` there is nothing to choose and the one fit is on all the training rows.

    Args:
        x: ``(N, D)`` training features.
        y: ``(N,)`` 0/1 targets.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.std
        n_inner = int(min(3, np.bincount(y, minlength=2).min()))
        self.c = PROBE_CS[0] if len(PROBE_CS) == 1 else 1.0
        if n_inner >= 2 and len(PROBE_CS) > 1:
            folds = stratified_folds(y, n_inner, 0)
            losses = [np.mean([self._log_loss(self._fit(z[np.setdiff1d(np.arange(len(y)), te)],
                                                        y[np.setdiff1d(np.arange(len(y)), te)], c), z[te], y[te])
                               for te in folds]) for c in PROBE_CS]
            self.c = PROBE_CS[int(np.argmin(losses))]
        self.model = self._fit(z, y, self.c)

    @staticmethod
    def _fit(z: np.ndarray, y: np.ndarray, c: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=5000).fit(z, y)

    @staticmethod
    def _log_loss(model, z: np.ndarray, y: np.ndarray) -> float:
        p = np.clip(model.predict_proba(z)[:, 1], 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``(M,)`` probabilities of class 1."""
        return self.model.predict_proba((x - self.mean) / self.std)[:, 1]


def probe(f: np.ndarray, ff: np.ndarray, labels: dict[str, np.ndarray], task: str, folds: np.ndarray,
          test_folds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities ``(N_task,)`` on the features ``f (N, D)`` and on the flipped images' ``ff``
    (only the rows of ``test_folds`` when given; the others stay NaN)."""
    rows = task_rows(labels, task)
    y, fo = task_targets(labels, task), folds[rows]
    x, xf = np.asarray(f, np.float64)[rows], np.asarray(ff, np.float64)[rows]
    p, pf = np.full(len(y), np.nan), np.full(len(y), np.nan)
    for j in (np.unique(fo) if test_folds is None else test_folds):
        te, tr = fo == j, fo != j
        model = LogisticProbe(x[tr], y[tr])
        p[te], pf[te] = model.predict_proba(x[te]), model.predict_proba(xf[te])
    return p, pf


def probe_all(feats: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: dict[str, np.ndarray], folds: np.ndarray,
              test_folds: Sequence[int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"readout|task": (p, pf)}`` for every readout in ``feats`` and every task."""
    return {f"{r}|{t}": probe(f.numpy(), ff.numpy(), labels, t, folds, test_folds)
            for r, (f, ff) in feats.items() for t in TASKS}


def aurocs(probs: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, np.ndarray]) -> dict[str, float]:
    from mfassl.evaluation import auroc

    return {k: float(auroc(p, task_targets(labels, k.split("|")[1]))) for k, (p, _) in probs.items()}


# ------------------------------------------------------------------------------------------------- readouts
@torch.no_grad()
def global_features(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain encoder's pooled features ``(N, C)`` of the images and of their horizontal flips."""
    from mfassl.evaluation import extract_features

    return extract_features(encoder, x, batch_size=128), extract_features(encoder, torch.flip(x, dims=(-1,)),
                                                                          batch_size=128)


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

    was = encoder.training
    encoder.eval()

    def run(images: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, len(images), 128):
            pair = mirror_pair(images[i:i + 128], ax[i:i + 128], images.shape[-1], split_dim=1)
            km = pair_key_mask(pair, encoder.mfa_patch_size)
            o = encoder.forward_paired(pair.x_l, pair.x_r, ramp=1.0, use_mfa=True, key_mask=km)
            outs.append(torch.cat([encoder.pool(o.out_l), encoder.pool(o.out_r)], dim=1))
        return torch.cat(outs)

    out = run(x, axes), run(torch.flip(x, dims=(-1,)), flipped_axes(axes, x.shape[-1]))
    encoder.train(was)
    return out


def encoder_features(encoder: torch.nn.Module, x: torch.Tensor, axes: torch.Tensor
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Both readouts of an encoder: ``{"global": (f, f_flipped), "paired": (...)}``."""
    return {"global": global_features(encoder, x), "paired": paired_features(encoder, x, axes)}


def pixel_features(x: torch.Tensor, axes: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The raw-pixel floor: ``global`` = the pixels ``(N, S*S)``; ``paired`` = the left half minus the mirrored
    right half about the midline ``(N, S*S/2)`` (what a mirror comparison sees with no encoder)."""
    from mfassl.pairing import mirror_pair

    s = x.shape[-1]

    def diff(images: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
        pair = mirror_pair(images, ax, (s, s // 2), split_dim=1)
        return (pair.x_l - pair.x_r).flatten(1)

    xf = torch.flip(x, dims=(-1,))
    return {"global": (x.flatten(1), xf.flatten(1)), "paired": (diff(x, axes), diff(xf, flipped_axes(axes, s)))}


# ------------------------------------------------------------------------------------------------ pretraining
def schedule_epochs(cfg: Config, epochs: int) -> dict[str, float]:
    """``t_sym``, ``t_mfa``, ``t_gate`` in epochs: the configured values or the published shares of the run."""
    return {k: (float(getattr(cfg, k)) if getattr(cfg, k) is not None else share * epochs)
            for k, share in PUBLISHED_SHARES.items()}


def build_backbone(cfg: Config, spec: dict[str, Any], seed: int, objective: str = "mocov3") -> torch.nn.Module:
    """The encoder of one method; its weights depend on ``seed`` (and the architecture) only."""
    from mfassl.backbones import MFASwin, MFAViT

    torch.manual_seed(seed)  # the same initial encoder (and MFA block) for every method of one seed
    mfa = {"gate_distance": spec.get("gate_distance", "sum")}
    if objective == "dagman":
        return MFASwin(2, in_chans=1, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=4,
                       mfa_stage=2, **mfa)
    kw = {} if cfg.mfa_layer is None else {"mfa_layer": cfg.mfa_layer}
    return MFAViT(2, img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim,
                  depth=cfg.depth, num_heads=cfg.num_heads, **kw, **mfa)


def build_method(cfg: Config, spec: dict[str, Any], seed: int, epochs: int = 1, size: int | None = None):
    """The MFASSL (or baseline) of one method on the backbone of :func:`build_backbone`; its views are ``size``
    px (default ``cfg.image_size``; DAGMaN's MFA-Swin trains on the images resized to a multiple of 32)."""
    from mfassl.method import MFASSL
    from mfassl.objectives import create_objective

    objective = spec.get("objective", "mocov3")
    net = build_backbone(cfg, spec, seed, objective)
    obj = create_objective(objective, net, **OBJECTIVE_KWARGS[objective])
    s = cfg.image_size if size is None else int(size)
    return MFASSL(net, obj, mirror=spec.get("mirror", True),
                  views=dict(global_size=s, local_size=s // 2, n_local=obj.views.n_local,
                             flip_prob=spec.get("flip_prob", 0.5)),
                  flip_prediction=spec.get("flip_prediction", 0.0), **schedule_epochs(cfg, epochs))


def dino_stats(method: Any, x: torch.Tensor) -> dict[str, float]:
    """DINO's collapse checks on ``x``: mean teacher entropy per image (uniform collapse: ``log(out_dim)``), the
    entropy of the mean teacher distribution (one-prototype collapse: 0) and the prototypes that win an image."""
    obj = method.objective
    with torch.no_grad():
        t = obj.teacher[1](obj.teacher[0](x))
        probs = torch.softmax((t - obj.loss_fn.center) / obj.loss_fn.teacher_temp, dim=-1)
        row_h = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
        mean_p = probs.mean(0)
        batch_h = float(-(mean_p * mean_p.clamp_min(1e-12).log()).sum())
    return {"teacher_entropy": row_h, "entropy_of_mean": batch_h, "log_out_dim": math.log(t.shape[-1]),
            "prototypes_used": float(probs.argmax(-1).unique().numel())}


class Checkpoints:
    """Probes the encoder at given steps of a run (before the first step for step 0) and averages the step
    outputs in between (losses, gate, flip accuracy, the objectives' learning checks)."""

    def __init__(self, shares: Sequence[float], probe_fn, x: torch.Tensor) -> None:
        self.shares, self.probe_fn, self.x = sorted(set(float(s) for s in shares)), probe_fn, x
        self.curve: list[dict[str, Any]] = []
        self._sums: dict[str, float] = {}
        self._n = 0

    def record(self, step: int, method: Any) -> None:
        diag = {k: v / max(self._n, 1) for k, v in self._sums.items()}
        if getattr(method.objective, "name", "") == "dino":
            diag.update(dino_stats(method, self.x))
        was = method.training
        method.eval()
        self.curve.append({"step": step, "auroc": self.probe_fn(method.backbone)[1], "diag": diag})
        method.train(was)
        logger.info("  step %5d: %s", step, " ".join(f"{k} {v:.3f}" for k, v in self.curve[-1]["auroc"].items()))
        self._sums, self._n = {}, 0

    def add(self, output: dict[str, float], mirror: bool) -> None:
        keys = ("loss", "base", "flip_acc") + (("mirror", "l_eq", "l_mid", "gate_mean") if mirror else ())
        for k, v in output.items():
            if k in keys or "/" in k:
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._n += 1


def pretrain(cfg: Config, x: torch.Tensor, axes: torch.Tensor, spec: dict[str, Any], seed: int,
             checkpoints: Checkpoints | None = None) -> tuple[Any, dict[str, Any]]:
    """Train one method; returns the MFASSL module (eval mode) and its log (first / last step, seconds)."""
    from ignite.engine import Events
    from torch.utils.data import DataLoader, TensorDataset

    from mfassl.engine import create_optimizer, create_trainer

    t0 = time.perf_counter()
    spe = max(1, len(x) // cfg.batch_size)
    epochs = max(1, round(cfg.steps / spe))
    method = build_method(cfg, spec, seed, epochs, size=x.shape[-1])
    g = torch.Generator().manual_seed(seed)  # the same batches for every method
    loader = DataLoader(TensorDataset(x, axes), batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g)
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch=len(loader), max_epochs=epochs,
                             base_lr=cfg.peak_lr * 256 / cfg.batch_size, batch_size=cfg.batch_size,
                             warmup_epochs=cfg.warmup * epochs, device=cfg.device, output_dir=None,
                             progress=False, tensorboard=False)
    first: dict[str, float] = {}
    total = epochs * len(loader)
    marks = {max(1, round(f * total)) if f > 0 else 0 for f in (checkpoints.shares if checkpoints else [])}

    @trainer.on(Events.ITERATION_STARTED)
    def _same_views(engine) -> None:  # every method draws the same views at the same step
        torch.manual_seed(seed * 1_000_003 + engine.state.iteration)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log(engine) -> None:
        out = {k: float(v) for k, v in engine.state.output.items()}
        if not first:
            first.update(out)
        if checkpoints is not None:
            checkpoints.add(out, method.mirror)
            if engine.state.iteration in marks:
                checkpoints.record(engine.state.iteration, method)

    if checkpoints is not None and 0 in marks:
        checkpoints.record(0, method)
    trainer.run(loader, max_epochs=epochs)
    last = {k: float(v) for k, v in (trainer.state.output or {}).items()}
    log = {"first": first, "last": last, "steps": int(trainer.state.iteration), "epochs": epochs,
           "seconds": time.perf_counter() - t0}
    return method.eval(), log


def train_supervised(cfg: Config, x: torch.Tensor, labels: dict[str, np.ndarray], train: np.ndarray, seed: int
                     ) -> torch.nn.Module:
    """The encoder of :func:`build_backbone` (same initial weights) trained on the labels of the ``train`` images:
    a linear head on the pooled feature, binary cross-entropy for presence (all) plus side (images with a
    finding); random resized crops without flips (a flip would swap the side); ``cfg.steps`` steps at
    ``cfg.batch_size`` with the pretraining's lr schedule and optimizer."""
    import torch.nn.functional as F

    from mfassl.engine import create_optimizer
    from mfassl.schedules import warmup_cosine
    from mfassl.views import MultiCropViews

    enc = build_backbone(cfg, METHODS["flip_baseline"], seed)
    model = torch.nn.ModuleDict({"encoder": enc, "head": torch.nn.Linear(enc.embed_dim, 2)})
    opt = create_optimizer(model)
    views = MultiCropViews(n_global=1, n_local=0, global_size=cfg.image_size, flip_prob=0.0)
    side = labels["side"]
    y = torch.from_numpy(np.stack([(side != "none"), (side == "right")], 1).astype(np.float32))
    has = torch.from_numpy(side != "none")
    g = torch.Generator().manual_seed(seed)
    idx = torch.from_numpy(train)
    spe = max(1, len(idx) // cfg.batch_size)
    total = max(1, round(cfg.steps / spe)) * spe
    model.train()
    for step in range(total):
        if step % spe == 0:
            order = idx[torch.randperm(len(idx), generator=g)]
        b = order[(step % spe) * cfg.batch_size:(step % spe + 1) * cfg.batch_size]
        torch.manual_seed(seed * 1_000_003 + step + 1)
        lr = warmup_cosine(step, total, cfg.warmup * total, cfg.peak_lr, 1e-6)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model["head"](enc(views(x[b])[0]))
        loss_p = F.binary_cross_entropy_with_logits(logits[:, 0], y[b, 0])
        m = has[b]
        loss_s = F.binary_cross_entropy_with_logits(logits[m, 1], y[b, 1][m]) if m.any() else logits.sum() * 0
        opt.zero_grad(set_to_none=True)
        (loss_p + loss_s).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
    return enc.eval()


# ----------------------------------------------------------------------------------------------------- units
def unit_path(results: Path, method: str, seed: int) -> Path:
    return results / f"{method}__seed{seed}.json"


def unit_done(results: Path, method: str, seed: int, key: str) -> bool:
    """Whether a result file of this unit with these settings (:func:`unit_key`) exists."""
    path = unit_path(results, method, seed)
    if not path.is_file():
        return False
    try:
        return read_json(path, UNIT_KIND).get("unit_key") == key
    except ValueError:
        return False


def run_unit(cfg: Config, method: str, seed: int, out: Path, results: Path) -> Path:
    """Train (where the method trains), probe at every checkpoint and write the unit's result file."""
    cpu0 = time.process_time() + _children_cpu()
    t0 = time.perf_counter()
    spec = ALL_UNITS[method]
    data = load_chest(cfg, out)
    write_data_file(data, results)
    labels, x, est = data["labels"], data["x"], data["axes"]["estimated"]
    folds = fold_ids(labels, cfg.folds, seed)
    train_log: dict[str, Any] = {}
    if spec.get("kind") == "pixels":
        probs = probe_all(pixel_features(x, est), labels, folds)
        curve = [{"step": 0, "auroc": aurocs(probs, labels), "diag": {}}]
    elif spec.get("kind") == "supervised":
        probs = {}
        for j in np.unique(folds):  # one network per outer fold, trained on the other folds' labels
            enc = train_supervised(cfg, x, labels, np.flatnonzero(folds != j), seed)
            for key, (pj, pfj) in probe_all(encoder_features(enc, x, est), labels, folds, [j]).items():
                p_, pf_ = probs.setdefault(key, (np.full(len(pj), np.nan), np.full(len(pj), np.nan)))
                te = np.isfinite(pj)
                p_[te], pf_[te] = pj[te], pfj[te]
            logger.info("seed %d supervised fold %d done (%.0f s)", seed, j, time.perf_counter() - t0)
        curve = [{"step": cfg.steps, "auroc": aurocs(probs, labels), "diag": {}}]
    else:
        objective = spec.get("objective", "mocov3")
        xs, axes_all = x, method_axes(data, spec, seed, cfg.image_size)
        est_u = est
        if objective == "dagman":  # MFA-Swin needs sizes divisible by 32
            s2 = 32 * math.ceil(cfg.image_size / 32)
            xs = torch.nn.functional.interpolate(x, size=(s2, s2), mode="bilinear", align_corners=False)
            axes_all, est_u = scaled_axes(axes_all, s2 / cfg.image_size), scaled_axes(est, s2 / cfg.image_size)

        def probe_encoder(enc: torch.nn.Module) -> tuple[dict[str, Any], dict[str, float]]:
            pr = probe_all(encoder_features(enc, xs, est_u), labels, folds)
            return pr, aurocs(pr, labels)

        if not spec.get("train", True):
            enc = build_backbone(cfg, METHODS["mfassl"], seed).eval()
            probs, au = probe_encoder(enc)
            curve = [{"step": 0, "auroc": au, "diag": {}}]
        else:
            cp = Checkpoints(cfg.curve, probe_encoder, xs)
            trained, train_log = pretrain(cfg, xs, axes_all, spec, seed, cp)
            probs, _ = probe_encoder(trained.backbone)
            curve = cp.curve
            logger.info("seed %d %s: %d steps in %.0f s, loss %.3f -> %.3f", seed, method, train_log["steps"],
                        train_log["seconds"], train_log["first"].get("loss", math.nan),
                        train_log["last"].get("loss", math.nan))
    result = {"kind": UNIT_KIND, "method": method, "seed": int(seed), "run_key": run_key(cfg),
              "unit_key": unit_key(cfg, method), "data_key": data["key"],
              "config": {k: v for k, v in asdict(cfg).items() if k not in NOT_RUN_DEFINING},
              "objective_kwargs": OBJECTIVE_KWARGS.get(spec.get("objective", "mocov3")),
              "train": train_log, "curve": curve,
              "probs": {k: {"p": np.round(p_, 5).tolist(), "pf": np.round(pf_, 5).tolist()}
                        for k, (p_, pf_) in probs.items()},
              "seconds": time.perf_counter() - t0,
              "cpu_seconds": time.process_time() + _children_cpu() - cpu0,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    path = unit_path(results, method, seed)
    save_json(result, path)
    logger.info("wrote %s (%.0f s wall, %.0f s CPU)", path, result["seconds"], result["cpu_seconds"])
    return path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cfg: Config, out_dir: str | Path, results_dir: str | Path, jobs: int = 0, threads: int = 1) -> dict[str, Any]:
    """Run every unit of :func:`plan` not yet in ``results_dir``, then write the pooled report under ``out_dir``.

    ``jobs=0`` runs the units in this process; ``jobs=N`` runs them N at a time, one process each."""
    out, results = Path(out_dir), Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    key = run_key(cfg)
    todo = [(m, s) for m, s in plan(cfg) if not unit_done(results, m, s, unit_key(cfg, m))]
    logger.info("run %s: %d units planned, %d to do; results in %s", key, len(plan(cfg)), len(todo), results)
    load_chest(cfg, out)  # build the data once, before the workers
    if jobs <= 0:
        for m, s in todo:
            run_unit(cfg, m, s, out, results)
    else:
        cfg_file = out / f"config-{key}.json"
        save_json(asdict(cfg), cfg_file)
        running: list[tuple[subprocess.Popen, str, int]] = []
        queue = list(todo)
        failed = []
        while queue or running:
            while queue and len(running) < jobs:
                m, s = queue.pop(0)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(cfg_file), "--unit", m,
                       "--seeds", str(s), "--out", str(out), "--results", str(results), "--threads", str(threads)]
                log = open(out / f"log-{m}__seed{s}.txt", "w")
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), m, s))
            time.sleep(2.0)
            for proc, m, s in list(running):
                if proc.poll() is not None:
                    running.remove((proc, m, s))
                    if proc.returncode != 0:
                        failed.append((m, s))
                        logger.error("unit %s seed %d failed (exit %d): see %s", m, s, proc.returncode,
                                     out / f"log-{m}__seed{s}.txt")
                    else:
                        logger.info("unit %s seed %d done", m, s)
        if failed:
            logger.error("%d units failed: %s", len(failed), failed)
    return report([results], out, list(ALL_UNITS), n_boot=cfg.n_boot)


def merge(dirs: Sequence[str | Path], out_dir: str | Path, n_boot: int = 1000) -> dict[str, Any]:
    """Pool the result files of several folders (e.g. several machines' runs) into one report under ``out_dir``."""
    return report(list(dirs), out_dir, list(ALL_UNITS), n_boot=n_boot)


def _config_from_args(args: argparse.Namespace) -> Config:
    if args.config:
        raw = json.loads(Path(args.config).read_text())
        cfg = Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()
                        if k in Config.__dataclass_fields__})
    else:
        cfg = Config(**(TINY if args.tiny else PUBLISHED if args.published else {}))
    kw: dict[str, Any] = {}
    for k in ("seeds", "methods", "steps", "n_images", "device", "demo_root", "n_boot"):
        v = getattr(args, k)
        if v is not None and not (args.unit and k in ("seeds", "methods")):
            kw[k] = tuple(v) if k in ("seeds", "methods") else v
            if k == "seeds":
                kw["ablation_seeds"] = kw["objective_seeds"] = kw["seeds"]
    names = {f.name for f in fields(Config)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in names or not value:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(names)}")
        kw[key] = json.loads(value) if value[0] in "0123456789-[{tfn" else value
        if isinstance(kw[key], list):
            kw[key] = tuple(kw[key])
    return replace(cfg, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", default="bench/out/reflection", help="report, data cache and logs")
    ap.add_argument("--results", default="bench/results/reflection", help="the per-(method, seed) result files")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds of every chosen method")
    ap.add_argument("--methods", nargs="+", choices=tuple(ALL_UNITS))
    ap.add_argument("--tiny", action="store_true", help="the reduced sizes of the test suite")
    ap.add_argument("--published", action="store_true", help="ViT-S/16 at 224 px, 480 images (a GPU)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--n-images", type=int)
    ap.add_argument("--device")
    ap.add_argument("--demo-root")
    ap.add_argument("--jobs", type=int, default=0, help="units at a time, one process each (0: in this process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per unit")
    ap.add_argument("--n-boot", type=int, help="bootstrap resamples of the report")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="only pool the result files of these folders into --out")
    ap.add_argument("--unit", choices=tuple(ALL_UNITS), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="any other Config field, e.g. --set image_size=64 folds=4 (numbers parsed as numbers)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mfassl").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.merge:
        merge(args.merge, args.out, n_boot=args.n_boot or 1000)
        return 0
    cfg = _config_from_args(args)
    if args.unit:
        run_unit(cfg, args.unit, (args.seeds or [0])[0], Path(args.out), Path(args.results))
        return 0
    run(cfg, args.out, args.results, jobs=args.jobs, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
