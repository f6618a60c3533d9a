"""Landmarks for a whole image folder, computed once, in parallel, resumably, as JSON lines.

``python -m mfassl_faces landmarks DATASET_DIR --source dlib --workers N --out FILE`` runs
:func:`compute_landmarks`. ``FILE`` holds one strict-JSON object per image, its ``path`` relative to
``DATASET_DIR`` (POSIX separators), and a ``status``:

- ``ok``: the best face (the one the ``axis`` command reports by default): ``schema``, ``landmarks``
  (``(N, 2)`` pixel ``(x, y)``), ``box`` ``[x0, y0, x1, y1]``, ``score``, ``n_faces``, ``face`` (0),
  ``width``, ``height``, ``source``, and the face axis as the ``axis`` command writes it (``normal``,
  ``offset``, ``confidence``, ``fallback``, ``landmark_confidence``, ``detection_confidence``,
  ``missing_points``, ``reason``);
- ``no_face``: the source found none;
- ``error``: the image could not be used; ``error`` says why.

A rerun appends only what is missing: images with an ``ok`` or ``no_face`` line are skipped, images
whose last line is an ``error`` are tried again (a later line for the same path supersedes an
earlier one). A line cut off by an interrupted run is ignored and the file is repaired before
appending. With ``batch_size`` above 1 (one process), a source that batches its network (``fan``)
answers ``batch_size`` images per call (:meth:`~mfassl_faces.sources.LandmarkSource.detect_batch`), e.g.
on a GPU.

``FILE`` is checked before any image is read (:class:`mfassl.files.OutputGuard`): it is never an input (an
image, or an annotation file the ``file`` source reads), whatever ``overwrite`` says; an existing file is
resumed (and repaired) only when it is a landmarks file (JSON lines of ``path`` and ``status``); any other
existing file (a JSON document, an image, notes) is refused unless ``overwrite``, which starts a new file in
its place. A full disk raises :class:`~mfassl.files.NoSpaceError` (``no space left on FILE``).

:func:`read_landmarks_file` reads the file back (last line per path);
:func:`mfassl_faces.readers.landmark_records` turns its ``ok`` lines into
:class:`~mfassl_faces.readers.LandmarkRecord` objects for the face datasets and the pretraining.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mfassl.cli import json_line
from mfassl.files import (OutputGuard, json_lines_recogniser, no_space_reported, read_json_lines, repair_json_lines,
                          same_file)
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import IMAGE_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_landmarks_file", "compute_landmarks", "landmark_record",
           "landmark_lines_batch"]

logger = logging.getLogger(__name__)


def list_images(dataset_dir: str | os.PathLike) -> list[Path]:
    """Every image file under ``dataset_dir`` (recursively, by suffix), sorted, as paths relative to it.

    Raises:
        FaceDataError: the folder does not exist, or is a file.
    """
    root = Path(dataset_dir)
    if root.is_file():
        raise FaceDataError("is a file, not a dataset folder (give the folder that holds the images).", root)
    if not root.is_dir():
        raise FaceDataError("dataset folder does not exist.", root)
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_STATUSES = ("ok", "no_face", "error")

#: recogniser of a landmarks file (:meth:`mfassl.files.OutputGuard.check`)
is_landmarks_file = json_lines_recogniser(lambda r: "path" in r and r.get("status") in _STATUSES,
                                          "a landmark record ('path' and 'status' ok/no_face/error)")


def _inputs(root: Path, rels: Sequence[Path], source: str) -> list[Path]:
    """The images and, for the ``file`` source, the annotation files it would read beside them."""
    from mfassl_faces.sources.files import FileLandmarks

    images = [root / r for r in rels]
    if source != "file":
        return images
    return images + [im.with_suffix(s) for im in images for s in FileLandmarks.suffixes]


def read_landmarks_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{path: record}`` from a landmarks file (the last line per path wins).

    Malformed lines are skipped with a warning naming the file and line number; a record without a
    ``path`` or a ``status`` raises.

    Raises:
        FaceDataError: the file is missing, or a line is valid JSON but not a landmark record.
    """
    p = Path(path)
    if not p.is_file():
        raise FaceDataError("landmarks file does not exist.", p)
    out: dict[str, dict[str, Any]] = {}
    for k, rec in read_json_lines(p):
        if not isinstance(rec, dict) or "path" not in rec or rec.get("status") not in _STATUSES:
            raise FaceDataError(f"line {k}: not a landmark record (needs 'path' and 'status' ok/no_face/error).", p)
        if rec["status"] == "ok":
            pts = np.asarray(rec.get("landmarks"), dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise FaceDataError(f"line {k}: 'landmarks' must be N rows of (x, y), got shape {pts.shape}.", p)
        out[str(rec["path"])] = rec
    return out


# ---------------------------------------------------------------------------------------------- compute
_WORKER: dict[str, Any] = {}


def _init_worker(source: str, source_kwargs: dict[str, Any]) -> None:
    from mfassl_faces.sources import create_source

    _WORKER["name"] = source
    _WORKER["source"] = create_source(source, **source_kwargs)


def landmark_record(image_path: str | os.PathLike, rel: str, source, source_name: str) -> dict[str, Any]:
    """The landmarks-file line of one image (never raises: errors become an ``error`` line)."""
    from mfassl_faces.io import read_image

    t0 = time.perf_counter()
    try:
        image = read_image(image_path)
        return _faces_line(rel, source_name, image, source(image, image_path), time.perf_counter() - t0,
                           name=str(image_path))
    except Exception as err:  # one bad file costs one line
        return _error_line(rel, source_name, err)


def _error_line(rel: str, source_name: str, err: Exception) -> dict[str, Any]:
    reason = err.reason if isinstance(err, FaceDataError) else f"{type(err).__name__}: {err}"
    return {"path": rel, "status": "error", "source": source_name, "error": " ".join(str(reason).split())}


def _faces_line(rel: str, source_name: str, image: np.ndarray, faces: Sequence[Any], seconds: float,
                name: str | None = None) -> dict[str, Any]:
    """The ``ok`` (first face: the best) or ``no_face`` line of an image and the source's answer for it;
    ``name`` (the image file) is named in the axis's log messages."""
    from mfassl_faces.axis import axis_from_landmarks, pixel_axis_fields

    if not faces:
        return {"path": rel, "status": "no_face", "source": source_name, "seconds": round(seconds, 3)}
    face = faces[0]
    axis = axis_from_landmarks(face.landmarks, face.schema, image.shape,
                               detection_confidence=face.detection_confidence, name=name or rel)
    return {"path": rel, "status": "ok", "source": source_name, "schema": face.schema,
            "landmarks": np.round(face.landmarks, 3).tolist(),
            "box": None if face.box is None else [round(float(v), 3) for v in face.box],
            "score": None if face.score is None else round(float(face.score), 4),
            "n_faces": len(faces), "face": 0, "width": int(image.shape[1]), "height": int(image.shape[0]),
            **pixel_axis_fields(axis), "seconds": round(seconds, 3)}


def landmark_lines_batch(jobs: Sequence[tuple[str, str]], source, source_name: str) -> list[dict[str, Any]]:
    """The landmarks-file lines of several images ``(image path, relative path)`` from one
    :meth:`~mfassl_faces.sources.LandmarkSource.detect_batch` call (never raises: an unreadable image costs
    its line; should the batch call fail, each image is answered alone so the failure is pinned to one)."""
    from mfassl_faces.io import read_image

    t0 = time.perf_counter()
    lines: dict[int, dict[str, Any]] = {}
    images, paths, where = [], [], []
    for k, (image_path, rel) in enumerate(jobs):
        try:
            images.append(read_image(image_path))
            paths.append(image_path)
            where.append(k)
        except Exception as err:
            lines[k] = _error_line(rel, source_name, err)
    try:
        answers = source.detect_batch(images, paths) if images else []
    except Exception:
        logger.warning("a batch of %d images failed; answering them one by one.", len(images), exc_info=True)
        for k in where:
            lines[k] = landmark_record(jobs[k][0], jobs[k][1], source, source_name)
    else:
        seconds = (time.perf_counter() - t0) / max(len(jobs), 1)
        for k, image, faces in zip(where, images, answers):
            try:
                lines[k] = _faces_line(jobs[k][1], source_name, image, faces, seconds, name=str(jobs[k][0]))
            except Exception as err:
                lines[k] = _error_line(jobs[k][1], source_name, err)
    return [lines[k] for k in range(len(jobs))]


def _work(job: tuple[str, str]) -> dict[str, Any]:
    image_path, rel = job
    return landmark_record(image_path, rel, _WORKER["source"], _WORKER["name"])


def compute_landmarks(dataset_dir: str | os.PathLike, out: str | os.PathLike, source: str = "dlib",
                      source_kwargs: dict[str, Any] | None = None, workers: int = 1, progress: bool = False,
                      files: Sequence[str | os.PathLike] | None = None, batch_size: int = 1,
                      overwrite: bool = False, option: str = "--out") -> dict[str, Any]:
    """Landmarks of every image under ``dataset_dir`` appended to ``out`` (see the module docstring).

    Args:
        dataset_dir: the image folder (searched recursively).
        out: the landmarks file (JSON lines); created, or resumed when it exists.
        source: landmark source name (:data:`~mfassl_faces.sources.LANDMARK_SOURCES`).
        source_kwargs: keyword arguments of the source (e.g. ``weights_dir`` for ``fan``).
        workers: processes (each builds its own source); 0 or 1 runs in this process.
        progress: show a progress bar on stderr.
        files: only these images (relative to ``dataset_dir``); default every image.
        batch_size: images per source call in one process (above 1: ``workers`` must be 0 or 1).
        overwrite: replace an existing ``out`` that is not a landmarks file (never an input).
        option: the command-line option that named ``out``, for the messages.

    Returns:
        ``{"images", "skipped", "done", "ok", "no_face", "errors", "failed": [(path, reason), ...], "out"}``
        where ``skipped`` counts images already answered by an earlier run.

    Raises:
        FaceDataError: ``dataset_dir`` is missing, a file, or holds no image file (when ``files`` is None).
        mfassl.files.OutputRefusedError: ``out`` is an input, or an existing file that is not a landmarks file
            (and ``overwrite`` is off); nothing was read or written.
        mfassl.files.NoSpaceError: the disk filled up (the lines written so far stay; a rerun goes on).
    """
    if batch_size > 1 and workers > 1:
        raise ValueError(f"batch_size {batch_size} batches in one process; it cannot go with {workers} workers.")
    root = Path(dataset_dir)
    out_path = Path(out)
    rels = [Path(f) for f in files] if files is not None else list_images(root)
    if files is None and not rels:
        raise FaceDataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under this folder.", root)
    if out_path.is_file() and is_landmarks_file(out_path) is None:  # its own file, named like an image
        rels = [r for r in rels if not same_file(root / r, out_path)]
    guard = OutputGuard(_inputs(root, rels, source), overwrite=overwrite)
    state = guard.check(out_path, option, recognise=is_landmarks_file,
                        kind="a landmarks file of python -m mfassl_faces landmarks")
    done: dict[str, dict[str, Any]] = {}
    if state == "own":
        repair_json_lines(out_path)
        done = read_landmarks_file(out_path)
    todo = [r.as_posix() for r in rels if done.get(r.as_posix(), {}).get("status") not in ("ok", "no_face")]
    summary: dict[str, Any] = {"images": len(rels), "skipped": len(rels) - len(todo), "done": 0, "ok": 0,
                               "no_face": 0, "errors": 0, "failed": [], "out": str(out_path)}
    if not todo:
        return summary
    kwargs = dict(source_kwargs or {})
    jobs = [(str(root / r), r) for r in todo]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="landmarks", unit="img", file=sys.stderr)
    with no_space_reported(out_path, "the lines written so far are kept; run again once there is space"), \
            open(out_path, "a" if state == "own" else "w", encoding="utf-8") as fh:
        for rec in _run(jobs, source, kwargs, workers, batch_size):
            fh.write(json_line(rec) + "\n")
            fh.flush()
            summary["done"] += 1
            key = {"ok": "ok", "no_face": "no_face", "error": "errors"}[rec["status"]]
            summary[key] += 1
            if rec["status"] == "error":
                summary["failed"].append((rec["path"], rec["error"]))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return summary


def _run(jobs: list[tuple[str, str]], source: str, kwargs: dict[str, Any], workers: int,
         batch_size: int = 1) -> Iterable[dict[str, Any]]:
    if batch_size > 1:
        _init_worker(source, kwargs)
        for start in range(0, len(jobs), batch_size):
            yield from landmark_lines_batch(jobs[start:start + batch_size], _WORKER["source"], _WORKER["name"])
        return
    if workers <= 1 or len(jobs) == 1:
        _init_worker(source, kwargs)
        yield from (_work(j) for j in jobs)
        return
    if "fork" in mp.get_all_start_methods():
        # build the source once here; the forked workers share it (the dlib model is read once, not N times)
        _init_worker(source, kwargs)
        pool = mp.get_context("fork").Pool(min(workers, len(jobs)))
    else:
        pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker,
                                            initargs=(source, kwargs))
    with pool:
        yield from pool.imap_unordered(_work, jobs, chunksize=1)

