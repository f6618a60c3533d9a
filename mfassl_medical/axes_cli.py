"""``python -m mfassl_medical axes DATASET_DIR --kind chexpert|brats --workers N --out FILE``: every image's
symmetry axis, once, in parallel, resumable.

The images of a CheXpert folder (``train.csv``/``valid.csv``) or the cases of a BraTS folder are read exactly
as the pretraining bundles read them (:class:`~mfassl_medical.transforms.SafeLoadImage`; a BraTS case is its 4
modalities stacked as channels) and their axis estimated with :func:`mfassl_medical.axis.estimate_axis` in
the world frame of the file's affine, in a pool of ``--workers`` processes. The output is JSON lines, one
object per image, with the fields of ``python -m mfassl_medical axis --json`` and three more::

    {"path", "dims", "normal", "offset", "confidence", "fallback", "seconds", "load_seconds",
     "key", "kind", "files"}

``key`` is the image path relative to ``DATASET_DIR`` (CheXpert) or the case folder name (BraTS): what the
bundles' ``axes_file`` option matches on, so the file stays valid when the data set is mounted elsewhere.
``files`` lists the modality files of a BraTS case. A file that cannot be read gives
``{"path", "key", "kind", "error"}``; a DICOM series read without its bad slices (``--allow-missing-slices``)
adds ``"missing_slices"``. Results are appended and flushed one by one, so a run that is stopped loses
nothing; a rerun estimates only what is missing (images without a line, or whose line is an error) and the
newest line of a key wins. A last line cut short by a killed run is dropped before appending, so the file
stays JSON lines (``pandas.read_json(FILE, lines=True)`` reads it). The summary (stderr) counts the images
done before, estimated now and failed, the BraTS case folders skipped (a missing modality, DICOM only), and
lists the failures and the skipped folders; the exit code is 1 when any image failed or any case folder was
skipped.

What is refused before any image is read (exit code 2, ``error: ...`` naming the path): a ``DATASET_DIR``
that does not exist; for ``--kind chexpert`` a folder without ``train.csv``/``valid.csv`` (a BraTS root is
recognised and named as such) or a file that is not a ``.csv``; for ``--kind brats`` a path that is not a
folder, or a folder without a BraTS case (a CheXpert folder is named as such); a data set with no image.
``DATASET_DIR`` may also be a CheXpert CSV itself (``.../CheXpert-v1.0-small/train.csv``); its folder is then
the data set folder the keys are relative to. The pool's workers end with the command, even when it is
killed with ``kill -9`` (:func:`mfassl.workers.die_with_parent`).

``--out`` is checked before any image is read (:class:`mfassl.files.OutputGuard`): it is never an input of
the command (a CheXpert CSV, an image, a file of a BraTS case folder: exit code 2, whatever ``--overwrite``
says); an existing file is resumed (and repaired) only when it is an axes file of the same ``--kind``; any
other existing file is refused (exit code 2) unless ``--overwrite``, which starts a new file in its place.
A full disk stops the run with ``no space left on FILE`` (exit code 1); the next run repairs the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mfassl.cli import add_overwrite_option
from mfassl.files import (NoSpaceError, OutputGuard, json_lines_recogniser, no_space_reported,
                          repair_json_lines)
from mfassl.workers import die_with_parent
from mfassl_medical.axes_file import axes_key, read_axes_file
from mfassl_medical.errors import DatasetLayoutError

if TYPE_CHECKING:  # the data package imports torch and MONAI: at the point of use, not for --help
    from mfassl_medical.data.safe import DataList

__all__ = ["main", "list_images", "estimate_one", "read_axes_file", "axes_key", "AXIS_FIELDS"]

logger = logging.getLogger(__name__)

#: The fields of ``python -m mfassl_medical axis --json`` every good record carries.
AXIS_FIELDS: tuple[str, ...] = ("path", "dims", "normal", "offset", "confidence", "fallback", "seconds",
                                "load_seconds")
KINDS = ("chexpert", "brats")


def _looks_like_brats(root: Path) -> bool:
    """Whether a folder's sub-folders hold NIfTI files (a BraTS root), for the hint of a wrong ``--kind``."""
    for sub in sorted(p for p in root.iterdir() if p.is_dir())[:20]:
        if any(f.name.lower().endswith((".nii", ".nii.gz")) for f in sub.iterdir()):
            return True
    return False


def _chexpert_csvs(root: Path, split: str) -> tuple[Path, list[Path]]:
    """The data set folder and the CSV files ``axes`` reads for ``DATASET_DIR`` = ``root``.

    Raises:
        DatasetLayoutError: naming ``root`` and what a CheXpert data set is.
    """
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetLayoutError("is a file but not a CheXpert CSV; DATASET_DIR must be a CheXpert folder "
                                     "(holding train.csv, valid.csv) or one of those CSV files", root)
        return root.parent, [root]
    if not root.is_dir():
        raise DatasetLayoutError("does not exist; DATASET_DIR must be a CheXpert folder (holding train.csv, "
                                 "valid.csv) or one of those CSV files", root)
    names = ("train", "valid") if split == "all" else (split,)
    csvs = [root / f"{s}.csv" for s in names if (root / f"{s}.csv").is_file()]
    if not csvs:
        brats = _looks_like_brats(root)
        hint = " It looks like a BraTS root (case folders of NIfTI files): use --kind brats." if brats else ""
        raise DatasetLayoutError(f"holds no {' or '.join(n + '.csv' for n in names)}: not a CheXpert folder "
                                 f"(e.g. .../CheXpert-v1.0-small with train.csv and valid.csv).{hint}", root)
    return root, csvs


def list_images(dataset_dir: str | os.PathLike, kind: str, split: str = "all",
                frontal_only: bool = True) -> DataList:
    """The images of a data set as ``{"key", "path", "files"}`` in a stable order.

    Args:
        dataset_dir: a CheXpert folder (``train.csv``, ``valid.csv``) or one of its CSV files, or a BraTS root
            (one folder per case).
        kind: ``"chexpert"`` or ``"brats"``.
        split: CheXpert ``"train"``, ``"valid"`` or ``"all"`` (both; ignored when ``dataset_dir`` is a CSV).
        frontal_only: CheXpert frontal views only (what the pretraining bundle reads).

    Returns:
        a :class:`~mfassl_medical.data.safe.DataList`; for BraTS its ``excluded`` names the case folders
        skipped (a missing modality, DICOM only) with the reason.

    Raises:
        DatasetLayoutError: (a ``ValueError``) ``dataset_dir`` does not exist, is not the kind of data set
            ``kind`` says, or holds no image; the message names it and what was expected.
    """
    from mfassl_medical.data.safe import DataList

    root = Path(dataset_dir).expanduser()
    if kind == "brats":
        from mfassl_medical.data import find_brats_cases

        if root.is_dir() and any((root / f"{s}.csv").is_file() for s in ("train", "valid")):
            raise DatasetLayoutError("holds train.csv/valid.csv: a CheXpert folder, not a BraTS root; use "
                                     "--kind chexpert", root)
        cases = find_brats_cases(root, require_seg=False, on_incomplete="skip")
        return DataList([{"key": axes_key(root, c["image"], kind), "path": str(Path(c["image"][0]).parent),
                          "files": [str(f) for f in c["image"]]} for c in cases], excluded=cases.excluded)
    if kind != "chexpert":
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}.")
    from mfassl_medical.data import read_chexpert

    root, csvs = _chexpert_csvs(root, split)
    out, seen = DataList(), set()
    for csv_path in csvs:
        for r in read_chexpert(csv_path, frontal_only=frontal_only):
            key = axes_key(root, r["image"], kind)
            if key not in seen:
                seen.add(key)
                out.append({"key": key, "path": str(r["image"]), "files": [str(r["image"])]})
    return out


def estimate_one(item: dict[str, Any], kind: str, method: str = "auto", min_confidence: float | None = None,
                 allow_missing_slices: bool = False) -> dict[str, Any]:
    """Load one image (or BraTS case) as the bundles do and estimate its world-frame axis.

    A CheXpert image is read as a 2D image (a single-frame DICOM loses its size-1 axis); a DICOM series with a
    truncated or unreadable slice is an error unless ``allow_missing_slices``.

    Returns the JSON record (see the module docstring); errors become ``{"error": ...}`` records, never
    exceptions.
    """
    import numpy as np

    from mfassl_medical.axis import DEFAULT_MIN_CONFIDENCE, estimate_axis
    from mfassl_medical.transforms import SafeLoadImage

    base = {"key": item["key"], "kind": kind, "path": item["path"]}
    try:
        t0 = time.perf_counter()
        files = item["files"]
        loader = SafeLoadImage(spatial_dims=2 if kind == "chexpert" else None, check=True,
                               on_bad_slice="warn" if allow_missing_slices else "raise")
        img = loader(files[0] if kind == "chexpert" else files)
        affine = np.asarray(img.affine.detach().cpu(), dtype=np.float64)
        data = np.asarray(img.as_tensor().detach().cpu(), dtype=np.float32)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        conf = DEFAULT_MIN_CONFIDENCE if min_confidence is None else float(min_confidence)
        axis = estimate_axis(data, affine, method=method, min_confidence=conf, channel_first=True)
        est_s = time.perf_counter() - t1
    except Exception as e:  # one bad file costs one record
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {**base, "error": f"{type(e).__name__}: {msg}"}
    rec = {"path": item["path"], "dims": int(axis.dims), "normal": [float(v) for v in axis.normal],
           "offset": float(axis.offset), "confidence": float(axis.confidence), "fallback": bool(axis.fallback),
           "seconds": round(est_s, 6), "load_seconds": round(load_s, 6), "key": item["key"], "kind": kind}
    if kind == "brats":
        rec["files"] = list(item["files"])
    if img.meta.get("missing_slices"):
        rec["missing_slices"] = list(img.meta["missing_slices"])
    return rec


def _worker_init(parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)  # a kill -9 of the command ends its workers too
    torch.set_num_threads(1)
    logging.getLogger("mfassl_medical").setLevel(logging.ERROR)


def _estimate_task(args: tuple[dict[str, Any], str, str, float | None, bool]) -> dict[str, Any]:
    return estimate_one(*args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mfassl_medical axes",
                                description="Estimate the symmetry axis of every image of a CheXpert or BraTS "
                                            "folder once, in parallel, resumable; JSON lines for the bundles' "
                                            "axes_file option.")
    p.add_argument("dataset_dir", metavar="DATASET_DIR",
                   help="CheXpert folder (train.csv, valid.csv) or one of its CSV files, or a BraTS root")
    p.add_argument("--kind", required=True, choices=KINDS, help="data set layout")
    p.add_argument("--out", required=True, metavar="FILE", help="JSON-lines file (appended to; resumable)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes (default min(8, CPUs)); 0 or 1 = this process")
    p.add_argument("--split", default="all", choices=("train", "valid", "all"), help="CheXpert split(s)")
    p.add_argument("--all-views", action="store_true", help="CheXpert: lateral views too")
    p.add_argument("--method", default="auto", help="estimator name: auto, midline, msp, centre")
    p.add_argument("--min-confidence", type=float, default=None, help="fall back to the centre below this")
    p.add_argument("--allow-missing-slices", action="store_true",
                   help="read a DICOM series without its truncated/unreadable slices (named in a warning and the "
                        "record) instead of failing it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_option(p, "an existing --out FILE that is not an axes file of this --kind (a new file is started)")
    return p


def _summarise(out: Path, total: int, before: int, new: int, failed: list[dict[str, Any]],
               skipped: Sequence[dict[str, str]] = (), missing_slices: Sequence[dict[str, Any]] = ()) -> str:
    lines = [f"axes: {total} images in the data set, {before} already in {out}, {new} estimated now, "
             f"{len(failed)} failed" + (f", {len(skipped)} case folder(s) skipped" if skipped else "")]
    for rec in failed[:50]:
        lines.append(f"error: {rec['path']}: {rec['error']}")
    if len(failed) > 50:
        lines.append(f"... and {len(failed) - 50} more (lines with \"error\" in {out})")
    for ex in list(skipped)[:50]:
        lines.append(f"skipped: {ex['source']}: {ex['reason']}")
    if len(skipped) > 50:
        lines.append(f"... and {len(skipped) - 50} more skipped case folders")
    for rec in list(missing_slices)[:50]:
        lines.append(f"warning: {rec['path']}: read without {len(rec['missing_slices'])} bad slice(s): "
                     + "; ".join(rec["missing_slices"][:3]))
    return "\n".join(lines)


def _inputs(dataset_dir: str | os.PathLike, kind: str, items: list[dict[str, Any]]) -> list[Path]:
    """Every file the command reads or that belongs to the data set: the images, the CheXpert CSVs, the files of
    each BraTS case folder."""
    root = Path(dataset_dir).expanduser()
    files = [Path(f) for it in items for f in it["files"]]
    if kind == "brats":
        for folder in {Path(it["path"]) for it in items}:
            files += [f for f in folder.iterdir() if f.is_file()]
    elif root.is_file():
        files.append(root)
    else:
        files += [root / f"{s}.csv" for s in ("train", "valid")]
    return files


def _axes_output(out: Path, kind: str, inputs: list[Path], overwrite: bool) -> str:
    """Check ``--out`` (:class:`~mfassl.files.OutputGuard`), repair its torn last line; returns the guard's answer."""
    guard = OutputGuard(inputs, overwrite=overwrite)
    recognise = json_lines_recogniser(
        lambda r: r.get("kind") == kind and "key" in r and "path" in r, f"an axes record of --kind {kind}",
        describe=lambda r: (f"holds an axes record of --kind {r['kind']}"
                            if r.get("kind") in KINDS and r.get("kind") != kind else None))
    state = guard.check(out, "--out", recognise=recognise,
                        kind=f"an axes file of python -m mfassl_medical axes --kind {kind}")
    if state == "own":
        repair_json_lines(out)
    return state


def run_axes(dataset_dir: str, kind: str, out: str, workers: int = 1, split: str = "all", frontal_only: bool = True,
             method: str = "auto", min_confidence: float | None = None, progress: bool = True,
             allow_missing_slices: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Estimate what ``out`` lacks; returns ``{"total", "before", "new", "failed": [records], "skipped":
    [{"source", "reason"}], "missing_slices": [records]}`` (``skipped``: the BraTS case folders left out).

    Raises:
        DatasetLayoutError: ``dataset_dir`` is missing, not a data set of ``kind``, or holds no image
            (:func:`list_images`).
        ValueError: a bad ``method`` or ``min_confidence``.
        mfassl.files.OutputRefusedError: ``out`` is an input, or a foreign file and ``overwrite`` is off.
        mfassl.files.NoSpaceError: the disk filled up (the records written so far stay; a rerun goes on).
    """
    from tqdm.auto import tqdm

    if min_confidence is not None and not (math.isfinite(min_confidence) and 0.0 <= min_confidence <= 1.0):
        raise ValueError(f"--min-confidence must be in [0, 1], got {min_confidence}.")
    from mfassl_medical.axis import AXIS_ESTIMATORS

    if str(method).lower() not in AXIS_ESTIMATORS:
        raise ValueError(f"--method {method!r} is not one of {AXIS_ESTIMATORS.names()}.")
    items = list_images(dataset_dir, kind, split=split, frontal_only=frontal_only)
    if not items:
        raise DatasetLayoutError(f"holds no {kind} image to estimate", Path(dataset_dir).expanduser())
    out_p = Path(out).expanduser()
    state = _axes_output(out_p, kind, _inputs(dataset_dir, kind, items), overwrite)
    done = read_axes_file(out_p) if state == "own" else {}
    todo = [it for it in items if it["key"] not in done]
    before = len(items) - len(todo)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    failed: list[dict[str, Any]] = []
    partial: list[dict[str, Any]] = []
    new = 0
    tasks = [(it, kind, method, min_confidence, allow_missing_slices) for it in todo]
    bar = tqdm(total=len(tasks), desc=f"axes ({kind})", unit="img", disable=not progress or not tasks,
               file=sys.stderr)

    def results() -> Iterable[dict[str, Any]]:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                yield _estimate_task(t)
            return
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            pending: set = set()
            queue = iter(tasks)
            for t in queue:  # a bounded window of submitted tasks: memory does not grow with the data set
                pending.add(pool.submit(_estimate_task, t))
                if len(pending) >= 4 * workers:
                    break
            while pending:
                finished = next(as_completed(pending))
                pending.discard(finished)
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(_estimate_task, nxt))
                yield finished.result()

    with no_space_reported(out_p, "the records written so far are kept; run again once there is space"), \
            open(out_p, "a" if state == "own" else "w", encoding="utf-8") as f:
        for rec in results():
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if "error" in rec:
                failed.append(rec)
            else:
                new += 1
                if rec.get("missing_slices"):
                    partial.append(rec)
            bar.update(1)
    bar.close()
    return {"total": len(items), "before": before, "new": new, "failed": failed, "skipped": items.excluded,
            "missing_slices": partial}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 when every image has an axis, 1 when some failed or a case folder was skipped, 2 for a
    bad command line or a path that is not a data set of ``--kind``."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.workers < 0:
        print(f"error: --workers must be >= 0, got {args.workers}", file=sys.stderr)
        return 2
    try:
        res = run_axes(args.dataset_dir, args.kind, args.out, workers=args.workers, split=args.split,
                       frontal_only=not args.all_views, method=args.method, min_confidence=args.min_confidence,
                       progress=not args.no_progress, allow_missing_slices=args.allow_missing_slices,
                       overwrite=args.overwrite)
    except NoSpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_summarise(Path(args.out), res["total"], res["before"], res["new"], res["failed"], res["skipped"],
                     res["missing_slices"]), file=sys.stderr)
    return 1 if res["failed"] or res["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
