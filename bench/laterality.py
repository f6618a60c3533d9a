"""Laterality experiment: does MFASSL keep the left/right information a flip-invariant SSL baseline loses?

On the synthetic chest demo data (one radiograph under random rigid/intensity changes; two images in three
carry an opacity in ONE lung, the side is known), for each seed:

1. pretrain a small MFASSL (MFA-ViT 2D + MoCo-v3 by default, mirror branch on) and its flip baseline (``mirror=False``: the
   same objective on the same standard views, with the random horizontal flip) for the same steps, from the
   same initial weights, on the same batches (``mfassl.method.MFASSL`` + ``mfassl.engine.create_trainer``);
2. freeze each encoder (and, as a floor, the same encoder at random initialisation) and linear-probe, with
   stratified k-fold cross-validation, (a) lesion side (left/right, lesion images only) and (b) lesion presence;
3. score the out-of-fold probabilities: accuracy, AUROC, ECE (15 bins), and flip consistency (the probe
   applied to the horizontally flipped image: for side the prediction should change, for presence stay).

Seeds are pooled: the table gives the mean over seeds and a 95% bootstrap interval (cases resampled, every
seed's prediction for a resampled case kept). Writes ``table.md``, ``results.json`` and ``laterality.png``.

    python bench/laterality.py                      # 3 seeds, the sizes in RESULTS.md (~10 min on 2 CPU cores)
    python bench/laterality.py --tiny --seeds 0     # the reduced pipeline the test suite runs
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mfassl.evaluation import auroc, ece

logger = logging.getLogger("bench.laterality")

METHODS = ("mfassl", "flip_baseline", "random_init")
READOUTS = ("global", "paired")
TASKS = ("side", "presence")
METRICS = ("accuracy", "auroc", "ece", "flip_consistency")


@dataclass
class Config:
    """Sizes of one experiment (defaults: the full run reported in bench/RESULTS.md)."""

    seeds: Sequence[int] = (0, 1, 2)
    n_images: int = 96
    image_size: int = 64
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    epochs: int = 30
    batch_size: int = 16
    peak_lr: float = 1e-3
    t_sym: float = 3.0
    t_mfa: float = 3.0
    t_gate: float = 5.0
    folds: int = 4
    n_boot: int = 1000
    objective: str = "mocov3"  # "mocov3" (contrastive: the flip-invariant SSL the claim is about) or "dino"
    axis: str = "estimated"  # "estimated" (mfassl_medical midline) or "centre"
    demo_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


OBJECTIVES: dict[str, dict[str, Any]] = {
    "mocov3": dict(proj_hidden_dim=128, out_dim=64, pred_hidden_dim=128),
    "dino": dict(out_dim=256, hidden_dim=128, bottleneck_dim=64),
}

TINY = dict(seeds=(0,), n_images=24, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, epochs=2,
            batch_size=8, folds=2, n_boot=50, t_sym=1.0, t_mfa=0.0, t_gate=1.0, axis="centre")


# ---------------------------------------------------------------------------------------------------- metrics
def task_metrics(p: np.ndarray, p_flip: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """Accuracy, AUROC, ECE of probabilities ``p`` for labels ``y``; flip consistency from ``p_flip``."""
    pred, pred_f = p >= 0.5, p_flip >= 0.5
    consistent = (pred_f != pred) if task == "side" else (pred_f == pred)
    return {"accuracy": float((pred == y.astype(bool)).mean()), "auroc": auroc(p, y), "ece": ece(p, y),
            "flip_consistency": float(consistent.mean())}


def pooled_bootstrap(p: np.ndarray, p_flip: np.ndarray, y: np.ndarray, task: str, n_boot: int,
                     seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Mean over seeds and a 95% percentile bootstrap over cases.

    Args:
        p, p_flip: ``(S, N)`` out-of-fold probabilities per seed (original / flipped image).
        y: ``(N,)`` labels.

    Returns:
        metric -> ``(mean over seeds, low, high)``.
    """
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # resamples with one class give NaN AUROC, left out by nanmean
        warnings.simplefilter("ignore", RuntimeWarning)
        return _pooled_bootstrap(p, p_flip, y, task, n_boot, rng)


def _pooled_bootstrap(p: np.ndarray, p_flip: np.ndarray, y: np.ndarray, task: str, n_boot: int,
                      rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    point = {k: float(np.nanmean([task_metrics(p[s], p_flip[s], y, task)[k] for s in range(len(p))]))
             for k in METRICS}
    boots: dict[str, list[float]] = {k: [] for k in METRICS}
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        per = [task_metrics(p[s, idx], p_flip[s, idx], y[idx], task) for s in range(len(p))]
        for k in METRICS:
            boots[k].append(float(np.nanmean([m[k] for m in per])))
    return {k: (point[k], float(np.nanpercentile(boots[k], 2.5)), float(np.nanpercentile(boots[k], 97.5)))
            for k in METRICS}


# ------------------------------------------------------------------------------------------------------- data
def load_chest(cfg: Config) -> dict[str, Any]:
    """Images ``(N, 1, S, S)`` in [0, 1], side/presence labels and symmetry axes ``(N, 3)`` (index rows [n, d])."""
    from PIL import Image

    from mfassl_medical.demo_data import build_demo_data, default_demo_root

    root = Path(cfg.demo_root) if cfg.demo_root else default_demo_root()
    if cfg.n_images != 48:  # the shared demo cache holds 48 chest images: another count gets its own folder
        root = root.with_name(f"{root.name}-laterality-{cfg.n_images}")
    paths = build_demo_data(root, n_brats=0 if cfg.n_images != 48 else 12, n_chexpert=cfg.n_images)
    with open(paths.chexpert_truth, newline="") as f:
        rows = list(csv.DictReader(f))
    s = cfg.image_size
    imgs = []
    for r in rows:
        im = Image.open(paths.root / r["path"]).convert("L").resize((s, s), Image.BILINEAR)
        imgs.append(np.asarray(im, np.float32) / 255.0)
    x = torch.from_numpy(np.stack(imgs))[:, None]
    side = np.array([r["side"] for r in rows])
    axes = torch.zeros(len(rows), 3)
    n_fallback = 0
    for i in range(len(rows)):
        if cfg.axis == "estimated":
            from mfassl_medical.axis import estimate_midline

            a = estimate_midline(x[i, 0].numpy(), split_dim=1)
            n_fallback += int(a.fallback)
        else:
            from mfassl.geometry import SymmetryAxis2D

            a = SymmetryAxis2D.centre((s, s), split_dim=1)
        axes[i] = torch.from_numpy(a.as_array())
    return {"x": x, "axes": axes, "side": side, "presence": (side != "none").astype(int),
            "right": (side == "right").astype(int), "axis_fallbacks": n_fallback, "root": str(paths.root)}


# ------------------------------------------------------------------------------------------------ pretraining
def build_method(cfg: Config, mirror: bool, seed: int):
    from mfassl.backbones import MFAViT
    from mfassl.method import MFASSL

    torch.manual_seed(seed)  # same initial encoder for MFASSL and the baseline of one seed
    net = MFAViT(2, img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim,
                 depth=cfg.depth, num_heads=cfg.num_heads)
    s = cfg.image_size
    kwargs = OBJECTIVES[cfg.objective]
    n_local = 2 if cfg.objective == "dino" else 0
    return MFASSL(net, cfg.objective, kwargs, mirror=mirror,
                  views=dict(global_size=s, local_size=s // 2, n_local=n_local), t_sym=cfg.t_sym, t_mfa=cfg.t_mfa,
                  t_gate=cfg.t_gate)


def pretrain(cfg: Config, data: dict[str, Any], mirror: bool, seed: int) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train one method; returns the student encoder (eval mode) and the last step's logged values."""
    from torch.utils.data import DataLoader, TensorDataset

    from ignite.engine import Events

    from mfassl.engine import create_optimizer, create_trainer

    method = build_method(cfg, mirror, seed)
    g = torch.Generator().manual_seed(seed)  # the same batches for both methods
    loader = DataLoader(TensorDataset(data["x"], data["axes"]), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True, generator=g)
    steps = len(loader)
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch=steps, max_epochs=cfg.epochs,
                             base_lr=cfg.peak_lr * 256 / cfg.batch_size, batch_size=cfg.batch_size,
                             warmup_epochs=max(1.0, cfg.epochs / 10), device="cpu", output_dir=None,
                             progress=False, tensorboard=False)
    first: dict[str, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _first(engine) -> None:
        first.update(engine.state.output)

    torch.manual_seed(seed)  # the same augmentation draws for both methods
    trainer.run(loader, max_epochs=cfg.epochs)
    last = dict(trainer.state.output or {})
    last["first_loss"], last["first_base"] = first.get("loss", float("nan")), first.get("base", float("nan"))
    return method.backbone.eval(), last


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Global readout: the plain encoder's pooled features of the images and of their horizontal flips."""
    f = encoder(x).numpy()
    ff = encoder(torch.flip(x, dims=(-1,))).numpy()
    return f, ff


def flipped_axes(axes: torch.Tensor, width: int) -> torch.Tensor:
    """The rows ``[n, d]`` of the same axes in the column-flipped images (normal re-oriented to +columns)."""
    from mfassl.geometry import SymmetryAxis2D

    m = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, width - 1.0], [0.0, 0.0, 1.0]])  # flipped index -> original index
    rows = [SymmetryAxis2D(normal=a[:2].numpy(), offset=float(a[2])).transform(m).canonical().as_array()
            for a in axes]
    return torch.from_numpy(np.stack(rows))


@torch.no_grad()
def paired_features(encoder: torch.nn.Module, x: torch.Tensor, axes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Paired readout: the mirror pair (split at the axis) through the encoder with MFA on (gate fully open),
    ``[pool(out_l), pool(out_r)]``; the same for the flipped images with their flipped axes."""
    from mfassl.pairing import mirror_pair, token_mask

    def run(images: torch.Tensor, ax: torch.Tensor) -> np.ndarray:
        pair = mirror_pair(images, ax, images.shape[-1], split_dim=1)
        km = token_mask(pair.valid_l, encoder.mfa_patch_size) & token_mask(pair.valid_r, encoder.mfa_patch_size)
        out = encoder.forward_paired(pair.x_l, pair.x_r, ramp=1.0, use_mfa=True, key_mask=km)
        return torch.cat([encoder.pool(out.out_l), encoder.pool(out.out_r)], dim=1).numpy()

    return run(x, axes), run(torch.flip(x, dims=(-1,)), flipped_axes(axes, x.shape[-1]))


def probe(f: np.ndarray, ff: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of a standardised logistic-regression probe, on the images and their flips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p, pf = np.zeros(len(y)), np.zeros(len(y))
    k = max(2, min(folds, int(np.bincount(y).min())))
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(f, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        clf.fit(f[tr], y[tr])
        p[te] = clf.predict_proba(f[te])[:, 1]
        pf[te] = clf.predict_proba(ff[te])[:, 1]
    return p, pf


# ------------------------------------------------------------------------------------------------------- run
def run(cfg: Config, out_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole experiment; returns (and writes) the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_chest(cfg)
    log(f"data: {len(data['x'])} chest images ({int(data['presence'].sum())} with a one-sided opacity) at "
        f"{cfg.image_size} px from {data['root']}; axes: {cfg.axis} ({data['axis_fallbacks']} centre fallbacks)")
    les = data["presence"] == 1
    labels = {"side": data["right"][les], "presence": data["presence"]}
    keys = [(m, r) for m in METHODS for r in READOUTS]
    probs: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {k: {t: [] for t in TASKS} for k in keys}
    flips: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {k: {t: [] for t in TASKS} for k in keys}
    train_log: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS[:2]}
    for seed in cfg.seeds:
        encoders = {}
        for name, mirror in (("mfassl", True), ("flip_baseline", False)):
            t1 = time.perf_counter()
            encoders[name], last = pretrain(cfg, data, mirror, seed)
            last["seconds"] = time.perf_counter() - t1
            train_log[name].append(last)
            log(f"seed {seed} {name}: {last['seconds']:.0f} s, loss {last['first_loss']:.3f} -> {last['loss']:.3f} "
                f"(base {last['first_base']:.3f} -> {last['base']:.3f}), gate mean {last.get('gate_mean', 0.0):.3f}")
        encoders["random_init"] = build_method(cfg, True, seed).backbone.eval()
        for name, enc in encoders.items():
            feats = {"global": features(enc, data["x"]), "paired": paired_features(enc, data["x"], data["axes"])}
            for readout, (f, ff) in feats.items():
                for task in TASKS:
                    sel = les if task == "side" else np.ones(len(f), bool)
                    p, pf = probe(f[sel], ff[sel], labels[task], cfg.folds, seed)
                    probs[name, readout][task].append(p)
                    flips[name, readout][task].append(pf)
    rows = []
    for name, readout in keys:
        for task in TASKS:
            pp, pf = probs[name, readout][task], flips[name, readout][task]
            stats = pooled_bootstrap(np.stack(pp), np.stack(pf), labels[task], task, cfg.n_boot)
            per_seed = [task_metrics(a, b, labels[task], task) for a, b in zip(pp, pf)]
            rows.append({"method": name, "readout": readout, "task": task, "n": int(len(labels[task])),
                         **{k: stats[k] for k in METRICS}, "per_seed": per_seed})
    result = {"config": {**asdict(cfg), "seeds": list(cfg.seeds)}, "rows": rows, "train_last_step": train_log,
              "seconds": time.perf_counter() - t0,
              "data": {"n_images": int(len(data["x"])), "n_lesion": int(les.sum()),
                       "n_right": int(data["right"].sum()), "axis_fallbacks": data["axis_fallbacks"]}}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = format_table(rows, cfg)
    (out / "table.md").write_text(table + "\n")
    plot(rows, out / "laterality.png")
    log(table)
    log(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'laterality.png'} in {result['seconds']:.0f} s")
    return result


def format_table(rows: list[dict[str, Any]], cfg: Config) -> str:
    """Markdown: one row per method and task, ``mean [low, high]`` per metric."""
    head = ("| task | readout | method | n | accuracy | AUROC | ECE | flip consistency |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    order = lambda r: (TASKS.index(r["task"]), READOUTS.index(r["readout"]), METHODS.index(r["method"]))  # noqa: E731
    for r in sorted(rows, key=order):
        cells = [f"{r[k][0]:.2f} [{r[k][1]:.2f}, {r[k][2]:.2f}]" for k in METRICS]
        lines.append(f"| {r['task']} | {r['readout']} | {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    lines.append(f"\nSeeds {list(cfg.seeds)}; {cfg.folds}-fold out-of-fold probe; mean over seeds, 95% bootstrap "
                 f"interval over cases ({cfg.n_boot} resamples). Flip consistency: side = the prediction changes on "
                 "the flipped image, presence = it stays. Readout global: the plain encoder's pooled feature of the "
                 "whole image; paired: the mirror pair through the encoder with MFA, [left, right] pooled features.")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(READOUTS), len(TASKS), figsize=(11, 3.6 * len(READOUTS)), sharey=True,
                             squeeze=False)
    width = 0.26
    for ax, (readout, task) in zip(axes.ravel(), [(ro, t) for ro in READOUTS for t in TASKS]):
        for j, name in enumerate(METHODS):
            r = next(r for r in rows if r["task"] == task and r["method"] == name and r["readout"] == readout)
            xs = np.arange(len(METRICS)) + (j - 1) * width
            mean = np.array([r[k][0] for k in METRICS])
            # the percentile interval of a biased statistic (ECE) need not contain the mean over seeds
            err = np.clip(np.array([[r[k][0] - r[k][1] for k in METRICS], [r[k][2] - r[k][0] for k in METRICS]]), 0, None)
            ax.bar(xs, mean, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(np.arange(len(METRICS)), ["accuracy", "AUROC", "ECE", "flip cons."])
        ax.set_title(f"probe: lesion {task} ({readout} readout)")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/out/laterality")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--tiny", action="store_true", help="the reduced sizes of the test suite")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--n-images", type=int)
    ap.add_argument("--axis", choices=("estimated", "centre"))
    ap.add_argument("--objective", choices=tuple(OBJECTIVES))
    ap.add_argument("--demo-root")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    kw: dict[str, Any] = dict(TINY) if args.tiny else {}
    for k in ("seeds", "epochs", "n_images", "axis", "objective", "demo_root"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = tuple(v) if k == "seeds" else v
    run(Config(**kw), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
