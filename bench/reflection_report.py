"""The reflection benchmark's statistics and report: pooling the per-(method, seed) result files of
``bench/reflection.py`` into tables, learning curves and figures.

A result file (``<method>__seed<k>.json``, one per finished process) holds the out-of-fold probabilities of its
encoder's final checkpoint for every (readout, task), the probe AUROC at each checkpoint of the same run (the
learning curve), its training log and the keys of the run settings and of the data. :func:`load_units` reads a
folder of them (refusing files of another run or other data, naming them); :func:`summarise` pools the seeds:
each metric is the mean over the method's seeds with a 95% percentile bootstrap over cases (one resample of the
cases serves every seed), and each difference against ``flip_baseline`` / ``random_init`` is paired, on the
seeds both have. :func:`format_tables` and :func:`plot_bars` / :func:`plot_curves` write what a reader looks at.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mfassl.evaluation import (auroc, bootstrap_ci, bootstrap_indices, brier, ece, flip_consistency,
                               percentile_interval, resampled_auroc)

READOUTS = ("global", "paired")
TASKS = ("side", "presence")
METRIC_NAMES = ("accuracy", "auroc", "ece", "brier", "flip_consistency")
UNIT_KIND = "mfassl.bench.reflection.unit"
DATA_KIND = "mfassl.bench.reflection.data"
REFERENCES_FOR_DIFF = ("flip_baseline", "random_init")


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


def auroc_ci(p: np.ndarray, y: np.ndarray, pb: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
             alpha: float = 0.05) -> tuple[float, float, float]:
    """The seed-mean AUROC of ``p`` ``(N, S)`` (minus that of ``pb`` ``(N, S')`` when given) with its percentile
    bootstrap interval: the resamples and values of ``bootstrap_ci(seed_mean("auroc", ...), ...)`` (or
    ``seed_mean_diff``), each resample's AUROCs from the row counts (:func:`~mfassl.evaluation.resampled_auroc`)
    instead of a sort per resample and seed."""
    def mean_over_seeds(q: np.ndarray, rows: np.ndarray | None) -> np.ndarray | float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if rows is None:
                return float(np.nanmean([auroc(q[:, s], y) for s in range(q.shape[1])]))
            return np.nanmean(np.stack([resampled_auroc(q[:, s], y, rows) for s in range(q.shape[1])]), axis=0)

    point = mean_over_seeds(p, None) - (mean_over_seeds(pb, None) if pb is not None else 0.0)
    if len(y) == 0:
        return point, float("nan"), float("nan")
    idx = bootstrap_indices(len(y), n_boot, seed)
    values = mean_over_seeds(p, idx) - (mean_over_seeds(pb, idx) if pb is not None else 0.0)
    return percentile_interval(point, values, alpha)


def task_rows(labels: Mapping[str, np.ndarray], task: str) -> np.ndarray:
    """Boolean mask of the images a task is scored on: side on the images with a finding, presence on all."""
    return labels["side"] != "none" if task == "side" else np.ones(len(labels["side"]), bool)


def task_targets(labels: Mapping[str, np.ndarray], task: str) -> np.ndarray:
    """``(N_task,)`` 0/1 targets: side = the finding is in the right lung, presence = there is a finding."""
    side = labels["side"][task_rows(labels, task)]
    return (side == "right").astype(int) if task == "side" else (side != "none").astype(int)


def subsets(labels: Mapping[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """Masks over a task's rows for the subset table: the finding's side, size, density and zone.

    For presence a subset of findings is scored against ALL images without a finding (the AUROC of telling
    that kind of finding from a clean chest); for side the subset's findings alone (left against right), so
    the side of the finding itself is no subset of the side task (one class, no AUROC).
    """
    rows = task_rows(labels, task)
    out: dict[str, np.ndarray] = {}
    none = labels["side"][rows] == "none"
    for key in ("side", "size", "density", "zone"):
        if key not in labels or (key == "side" and task == "side"):
            continue
        col = labels[key][rows]
        for value in dict.fromkeys(col.tolist()):
            if value in ("none", "demo", ""):
                continue
            mask = col == value
            out[f"{key}={value}"] = mask | none if task == "presence" else mask
    return {k: v for k, v in out.items() if v.any()}


def n_findings(mask: np.ndarray, y: np.ndarray, task: str) -> int:
    """Findings in a subset mask of :func:`subsets` (for presence the mask also holds every clean image)."""
    return int(y[mask].sum()) if task == "presence" else int(mask.sum())


# ------------------------------------------------------------------------------------------------ the files
def save_json(obj: Any, path: Path, indent: int | None = None) -> None:
    """Strict JSON (NaN and infinities as null), written whole or not at all (:func:`mfassl.files.write_text`)."""
    from mfassl.cli import strict_json
    from mfassl.files import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(strict_json(obj), indent=indent, allow_nan=False) + "\n")


def read_json(path: Path, kind: str) -> dict[str, Any]:
    """A result or data file of this benchmark; a clear error naming the file otherwise."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e}).") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise ValueError(f"{path}: not a reflection-benchmark {kind.rsplit('.', 1)[-1]} file (kind {obj.get('kind')!r}).")
    return obj


def load_units(dirs: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]]]:
    """The result files under ``dirs`` (each a folder of ``*__seed*.json`` and one ``data-*.json``).

    Returns:
        ``(the data file, its labels as arrays, the unit results)``; units of the same (method, seed) in two
        folders count once (the first).

    Raises:
        ValueError: no result file, or files of another data set or other run settings (named).
    """
    units: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    data: dict[str, Any] | None = None
    for d in dirs:
        for f in sorted(Path(d).glob("*__seed*.json")):
            u = read_json(f, UNIT_KIND)
            u["_file"] = str(f)
            if (u["method"], u["seed"]) in seen:
                continue
            seen.add((u["method"], u["seed"]))
            units.append(u)
    if not units:
        raise ValueError(f"no result files (*__seed*.json) under {[str(d) for d in dirs]}.")
    keys = {(u["data_key"], u["run_key"]) for u in units}
    if len(keys) > 1:
        by = {}
        for u in units:
            by.setdefault((u["data_key"], u["run_key"]), []).append(Path(u["_file"]).name)
        raise ValueError("result files of different data or run settings cannot be pooled: "
                         + "; ".join(f"data {k[0]} run {k[1]}: {', '.join(v[:4])}" for k, v in by.items()))
    data_key = units[0]["data_key"]
    for d in dirs:
        f = Path(d) / f"data-{data_key}.json"
        if f.is_file():
            data = read_json(f, DATA_KIND)
            break
    if data is None:
        raise ValueError(f"no data-{data_key}.json beside the result files in {[str(d) for d in dirs]}.")
    labels = {k: np.asarray(v) for k, v in data["labels"].items()}
    return data, labels, units


def stacked(units: Sequence[Mapping[str, Any]], method: str, readout: str, task: str
            ) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """``(seeds, P (N, S), PF (N, S))`` of one method's final out-of-fold probabilities, seeds ascending."""
    mine = sorted((u for u in units if u["method"] == method and f"{readout}|{task}" in u["probs"]),
                  key=lambda u: u["seed"])
    if not mine:
        return None
    key = f"{readout}|{task}"
    p = np.stack([np.asarray(u["probs"][key]["p"], dtype=np.float64) for u in mine], 1)
    pf = np.stack([np.asarray(u["probs"][key]["pf"], dtype=np.float64) for u in mine], 1)
    return [int(u["seed"]) for u in mine], p, pf


# ----------------------------------------------------------------------------------------------- summaries
def summarise(units: Sequence[Mapping[str, Any]], labels: Mapping[str, np.ndarray], methods: Sequence[str],
              n_boot: int = 1000) -> list[dict[str, Any]]:
    """One row per (method, readout, task) present: metrics with intervals, subset AUROC, paired differences."""
    rows = []
    for task in TASKS:
        y = task_targets(labels, task)
        subs = subsets(labels, task)
        for readout in READOUTS:
            have = {m: s for m in methods if (s := stacked(units, m, readout, task)) is not None}
            for m, (seeds, p, pf) in have.items():
                row: dict[str, Any] = {"method": m, "readout": readout, "task": task, "n": int(len(y)),
                                       "seeds": seeds}
                for name in METRIC_NAMES:
                    row[name] = (auroc_ci(p, y, n_boot=n_boot) if name == "auroc" else
                                 bootstrap_ci(seed_mean(name, task), p, pf, y, n_boot=n_boot, seed=0))
                row["per_seed_auroc"] = [auroc(p[:, s], y) for s in range(p.shape[1])]
                row["subsets"] = {k: auroc_ci(p[mask], y[mask], n_boot=n_boot) + (n_findings(mask, y, task),)
                                  for k, mask in subs.items()}
                row["diff"] = {}
                for ref in REFERENCES_FOR_DIFF:
                    if ref == m or ref not in have:
                        continue
                    rs, pb, pfb = have[ref]
                    common = sorted(set(seeds) & set(rs))
                    if not common:
                        continue
                    ia, ib = [seeds.index(s) for s in common], [rs.index(s) for s in common]
                    row["diff"][ref] = {
                        "accuracy": bootstrap_ci(seed_mean_diff("accuracy", task), p[:, ia], pf[:, ia], pb[:, ib],
                                                 pfb[:, ib], y, n_boot=n_boot, seed=0),
                        "auroc": auroc_ci(p[:, ia], y, pb[:, ib], n_boot=n_boot)}
                    row["diff"][ref]["seeds"] = common
                rows.append(row)
    return rows


def detectable_difference(rows: Sequence[Mapping[str, Any]], task: str, readout: str, name: str = "auroc") -> float:
    """Smallest difference against ``flip_baseline`` detected with 80% power at a two-sided 5% level:
    ``(1.96 + 0.84) * SE``, SE from the width of the paired bootstrap interval (``width / 3.92``), median
    over the methods."""
    widths = [r["diff"]["flip_baseline"][name][2] - r["diff"]["flip_baseline"][name][1] for r in rows
              if r["task"] == task and r["readout"] == readout and "flip_baseline" in r["diff"]
              and np.isfinite(r["diff"]["flip_baseline"][name][2])]
    return float(2.8 * np.median(widths) / 3.92) if widths else float("nan")


def curves(units: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: the checkpoint steps and, per ``"readout|task"``, the AUROC mean and min/max over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        mine = [u for u in units if u["method"] == m and u.get("curve")]
        if not mine:
            continue
        steps = sorted({int(c["step"]) for u in mine for c in u["curve"]})
        entry: dict[str, Any] = {"steps": steps, "seeds": sorted(int(u["seed"]) for u in mine)}
        for key in (f"{r}|{t}" for r in READOUTS for t in TASKS):
            vals = [[c["auroc"].get(key, math.nan) for u in mine for c in u["curve"] if int(c["step"]) == s]
                    for s in steps]
            entry[key] = {"mean": [float(np.nanmean(v)) if v else math.nan for v in vals],
                          "min": [float(np.nanmin(v)) if v else math.nan for v in vals],
                          "max": [float(np.nanmax(v)) if v else math.nan for v in vals]}
        diag_keys = sorted({k for u in mine for c in u["curve"] for k in c.get("diag", {})})
        entry["diag"] = {k: [float(np.nanmean([c["diag"].get(k, math.nan) for u in mine for c in u["curve"]
                                                if int(c["step"]) == s] or [math.nan])) for s in steps]
                         for k in diag_keys}
        out[m] = entry
    return out


# ----------------------------------------------------------------------------------------------- the report
def _ci(v: Sequence[float]) -> str:
    return "-" if v is None else f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"


def _step_columns(steps: Sequence[int]) -> tuple[list[int], dict[int, int]]:
    """Table columns of checkpoint steps: steps one apart (a run of ``epochs x steps_per_epoch`` = 2,401 steps
    and the supervised reference's 2,400) share the column of the larger; returns the columns and the map."""
    groups: list[list[int]] = []
    for s in steps:
        if groups and s - groups[-1][-1] <= 1:
            groups[-1].append(s)
        else:
            groups.append([s])
    return [g[-1] for g in groups], {s: g[-1] for g in groups for s in g}


def _order(methods: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[int, int, int]]:
    return lambda r: (TASKS.index(r["task"]), READOUTS.index(r["readout"]), list(methods).index(r["method"]))


def format_tables(result: Mapping[str, Any]) -> str:
    """Markdown: the main table, subsets, paired differences, learning curves and checks, costs."""
    methods = result["methods"]
    rows = sorted(result["rows"], key=_order(methods))
    lines = ["| task | readout | method | seeds | AUROC | accuracy | ECE | Brier | flip consistency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['readout']} | {r['method']} | {len(r['seeds'])} | {_ci(r['auroc'])} | "
                     + " | ".join(_ci(r[k]) for k in ("accuracy", "ece", "brier", "flip_consistency")) + " |")
    sub_names = list(dict.fromkeys(k for r in rows for k in r["subsets"]))
    lines += ["", "AUROC by subset (presence: that kind of finding against every clean image; side: left against "
              "right within the subset; n = findings in the subset):", ""]
    for task in TASKS:
        names = [k for k in sub_names if any(k in r["subsets"] for r in rows if r["task"] == task)]
        if not names:
            continue
        lines += [f"| {task} | readout | method | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for r in (r for r in rows if r["task"] == task):
            cells = [(f"{r['subsets'][k][0]:.2f} (n {r['subsets'][k][3]})") if k in r["subsets"] else "-"
                     for k in names]
            lines.append(f"| {task} | {r['readout']} | {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Paired differences in AUROC (method minus reference on the seeds both have, mean over those seeds, "
              "95% bootstrap over cases):", "",
              "| task | readout | method | - flip_baseline | - random_init |", "|---|---|---|---|---|"]
    for r in rows:
        d = r["diff"]
        cells = [(_ci(d[ref]["auroc"]) + f" ({len(d[ref]['seeds'])} seeds)") if ref in d else "-"
                 for ref in REFERENCES_FOR_DIFF]
        lines.append(f"| {r['task']} | {r['readout']} | {r['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Smallest AUROC difference against flip_baseline this design detects (80% power, 5% two-sided):"]
    for task in TASKS:
        for readout in READOUTS:
            lines.append(f"- {task}, {readout}: {detectable_difference(rows, task, readout):.3f}")
    cv = result.get("curves") or {}
    if cv:
        steps, column = _step_columns(sorted({s for c in cv.values() for s in c["steps"]}))
        lines += ["", "Learning curves: probe AUROC at each checkpoint of the same run (mean over seeds):", "",
                  "| method | readout, task | " + " | ".join(f"step {s}" for s in steps) + " |",
                  "|---|---|" + "---|" * len(steps)]
        for m in methods:
            if m not in cv:
                continue
            for key in (f"{r}|{t}" for t in TASKS for r in READOUTS):
                vals = {column[s]: v for s, v in zip(cv[m]["steps"], cv[m][key]["mean"])}
                lines.append(f"| {m} | {key.replace('|', ', ')} | "
                             + " | ".join(f"{vals[s]:.2f}" if s in vals and np.isfinite(vals[s]) else "-"
                                          for s in steps) + " |")
        diag_rows = [(m, k, cv[m]) for m in methods if m in cv for k in cv[m].get("diag", {})]
        if diag_rows:
            lines += ["", "Learning checks at the same checkpoints (mean over seeds):", "",
                      "| method | quantity | " + " | ".join(f"step {s}" for s in steps) + " |",
                      "|---|---|" + "---|" * len(steps)]
            for m, k, c in diag_rows:
                vals = {column[s]: v for s, v in zip(c["steps"], c["diag"][k])}
                lines.append(f"| {m} | {k} | " + " | ".join(f"{vals[s]:.3g}" if s in vals and np.isfinite(vals[s])
                                                           else "-" for s in steps) + " |")
    cost = result.get("cost") or {}
    if cost:
        lines += ["", "Cost (process CPU time, this machine):", "", "| method | seeds | CPU min per seed |",
                  "|---|---|---|"]
        for m in methods:
            if m in cost:
                lines.append(f"| {m} | {cost[m]['seeds']} | {cost[m]['cpu_minutes']:.1f} |")
        lines.append(f"\nTotal: {sum(c['cpu_minutes'] * c['seeds'] for c in cost.values()) / 60:.1f} CPU hours.")
    return "\n".join(lines)


def costs(units: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method: seeds done and mean CPU minutes per seed."""
    out = {}
    for m in methods:
        mine = [u for u in units if u["method"] == m]
        if mine:
            out[m] = {"seeds": len(mine), "cpu_minutes": float(np.mean([u["cpu_seconds"] for u in mine])) / 60.0}
    return out


def plot_curves(result: Mapping[str, Any], path: Path) -> None:
    """Probe AUROC against pretraining steps, one panel per (task, readout); floors as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cv, methods = result.get("curves") or {}, result["methods"]
    final = {(r["method"], r["readout"], r["task"]): r["auroc"][0] for r in result["rows"]}
    fig, axes = plt.subplots(len(TASKS), len(READOUTS), figsize=(12, 8.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (task, readout) in zip(axes.ravel(), [(t, r) for t in TASKS for r in READOUTS]):
        key = f"{readout}|{task}"
        for j, m in enumerate(methods):
            if m in cv and len(cv[m]["steps"]) > 1:
                c = cv[m][key]
                ax.plot(cv[m]["steps"], c["mean"], marker="o", ms=3, lw=1.2, color=cmap(j % 20), label=m)
                ax.fill_between(cv[m]["steps"], c["min"], c["max"], color=cmap(j % 20), alpha=0.12, lw=0)
            elif (m, readout, task) in final:
                ax.axhline(final[m, readout, task], ls="--", lw=1.0, color=cmap(j % 20), label=f"{m} (reference)")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("probe AUROC")
        ax.set_title(f"lesion {task}, {readout} readout")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6.5, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(result: Mapping[str, Any], path: Path) -> None:
    """AUROC with its interval per method, one panel per (task, readout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["methods"]
    fig, axes = plt.subplots(len(TASKS), len(READOUTS), figsize=(13, 8), sharey=True, squeeze=False)
    for ax, (task, readout) in zip(axes.ravel(), [(t, r) for t in TASKS for r in READOUTS]):
        rs = [next((r for r in result["rows"] if (r["method"], r["readout"], r["task"]) == (m, readout, task)), None)
              for m in methods]
        names = [m for m, r in zip(methods, rs) if r is not None]
        vals = np.array([r["auroc"] for r in rs if r is not None]) if names else np.zeros((0, 3))
        if names:
            err = np.nan_to_num(np.clip(np.stack([vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]]), 0, None))
            ax.bar(np.arange(len(names)), vals[:, 0], yerr=err, capsize=2, color="tab:blue")
            ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")
        ax.set_ylim(0.3, 1.0)
        ax.set_title(f"lesion {task}, {readout} readout: AUROC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(dirs: Sequence[str | Path], out_dir: str | Path, methods: Sequence[str], n_boot: int = 1000
           ) -> dict[str, Any]:
    """Pool the result files under ``dirs`` and write ``results.json``, ``table.md``, ``reflection.png`` (bars)
    and ``curves.png`` under ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, labels, units = load_units(dirs)
    present = [m for m in methods if any(u["method"] == m for u in units)]
    present += sorted({u["method"] for u in units} - set(present))
    result = {"methods": present, "data": data["summary"], "config": units[0]["config"],
              "rows": summarise(units, labels, present, n_boot=n_boot), "curves": curves(units, present),
              "cost": costs(units, present), "n_boot": n_boot, "from": [str(d) for d in dirs],
              "train": {u["method"] + f"__seed{u['seed']}": u["train"] for u in units}}
    save_json(result, out / "results.json", indent=1)
    (out / "table.md").write_text(format_tables(result) + "\n")
    plot_bars(result, out / "reflection.png")
    plot_curves(result, out / "curves.png")
    return result
