"""Reading images and 300W/iBUG ``.pts`` landmark files, with errors that name the file; the image suffixes.

Images are read in their display orientation: a JPEG's EXIF ``Orientation`` tag (a phone photo taken
upright but stored sideways) is applied, as an image viewer and PIL's ``ImageOps.exif_transpose`` do, so
landmarks and axes refer to the upright picture.

Landmarks are returned in 0-based pixel ``(x, y)`` coordinates. ``.pts`` files follow the 300W
convention of 1-based coordinates (a point on the top-left pixel centre is written ``1 1``);
:func:`read_pts` subtracts 1 and :func:`write_pts` adds it back (``one_based=False`` turns that off).
An annotation file holds no missing points: :func:`read_pts` refuses a non-finite coordinate naming the
file and line. The generic :func:`read_landmark_file` (``.npy``, ``.json``, text: typically a detector's
output) takes NaN (JSON ``null``) as a *missing point*, which the axis estimate leaves out
(:func:`mfassl_faces.axis.axis_from_landmarks`), and refuses infinite values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mfassl_faces.errors import FaceDataError

__all__ = ["IMAGE_SUFFIXES", "read_image", "encode_image", "write_image", "read_pts", "write_pts",
           "read_landmark_file"]

#: the file suffixes taken for images when a folder is searched (lower case; :func:`read_image` reads them all)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB in its display orientation (EXIF ``Orientation`` applied;
    grey images are repeated to 3 channels, an alpha channel is dropped, 16-bit images are rescaled).

    Raises:
        FaceDataError: the path is a folder, or the file is missing, empty or not a readable image.
    """
    import cv2

    p = Path(path)
    if p.is_dir():
        raise FaceDataError("is a directory, not an image file (give the image files, e.g. DIR/*.jpg).", p)
    if not p.is_file():
        raise FaceDataError("image file does not exist.", p)
    data = np.fromfile(str(p), dtype=np.uint8)
    # ANYDEPTH | ANYCOLOR keeps 16-bit and grey images as they are and, unlike IMREAD_UNCHANGED, lets OpenCV
    # apply the EXIF orientation
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if img is None:
        raise FaceDataError("cannot be decoded as an image (corrupt or not an image file).", p)
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def encode_image(image: np.ndarray, suffix: str, path: str | os.PathLike = "") -> bytes:
    """The file bytes of an ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 image in the format of ``suffix``
    (``".png"``, ``".jpg"``...); ``path`` names the file in the error."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(suffix, img)
    except cv2.error as err:
        raise FaceDataError(f"could not encode the image as {suffix} ({' '.join(str(err).split())}).", path) from err
    if not ok:
        raise FaceDataError(f"could not encode the image as {suffix}.", path)
    return buf.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 image (format from the suffix), atomically
    (:func:`mfassl.files.write_bytes`)."""
    from mfassl.files import write_bytes

    write_bytes(path, encode_image(image, Path(path).suffix, path))


def read_pts(path: str | os.PathLike, one_based: bool = True) -> np.ndarray:
    """A 300W/iBUG ``.pts`` file as ``(N, 2)`` 0-based pixel ``(x, y)``.

    The layout: ``version: 1``, ``n_points: N``, ``{``, N lines ``x y``, ``}``.

    Raises:
        FaceDataError: missing file, broken header, a count that disagrees with ``n_points``, a line that is
            not two numbers or a non-finite coordinate (``nan``, ``inf``; naming the line).
    """
    p = Path(path)
    if not p.is_file():
        raise FaceDataError("landmark file does not exist.", p)
    try:
        numbered = [(k, ln.strip()) for k, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
                    if ln.strip()]
    except UnicodeDecodeError as err:
        raise FaceDataError(f"not a text .pts file ({err}).", p) from err
    lines = [ln for _, ln in numbered]
    header = {}
    body_start = None
    for i, ln in enumerate(lines):
        if ln == "{":
            body_start = i + 1
            break
        if ":" in ln:
            k, v = ln.split(":", 1)
            header[k.strip().lower()] = v.strip()
    if body_start is None or "n_points" not in header:
        raise FaceDataError("not a .pts file (needs 'n_points:' and a '{ ... }' block).", p)
    try:
        n = int(header["n_points"])
        end = lines.index("}", body_start)
    except ValueError as err:
        raise FaceDataError(f"malformed .pts file ({err}).", p) from err
    rows = []
    for lineno, ln in numbered[body_start:end]:
        fields = ln.split()
        try:
            xy = [float(v) for v in fields[:2]]
        except ValueError as err:
            raise FaceDataError(f"line {lineno}: malformed .pts point {ln!r} ({err}).", p) from err
        if len(xy) != 2:
            raise FaceDataError(f"line {lineno}: a .pts point needs two coordinates, got {ln!r}.", p)
        if not all(np.isfinite(xy)):
            raise FaceDataError(f"line {lineno}: non-finite coordinate {ln!r} (an annotation has no missing points).", p)
        rows.append(xy)
    pts = np.array(rows, dtype=np.float64).reshape(-1, 2)
    if pts.shape != (n, 2):
        raise FaceDataError(f"header says {n} points but the file holds {pts.shape[0]}.", p)
    return pts - 1.0 if one_based else pts


def write_pts(path: str | os.PathLike, landmarks_xy: np.ndarray, one_based: bool = True) -> None:
    """Write ``(N, 2)`` 0-based pixel landmarks as a 300W ``.pts`` file (atomically)."""
    from mfassl.files import write_text

    pts = np.asarray(landmarks_xy, dtype=np.float64) + (1.0 if one_based else 0.0)
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in pts)
    write_text(path, f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n")


def read_landmark_file(path: str | os.PathLike) -> np.ndarray:
    """``(N, 2)`` pixel landmarks from ``.pts`` (1-based), ``.npy``, ``.json`` (a list of ``[x, y]``) or
    whitespace/comma text (``x y`` per line, 0-based).

    Outside ``.pts``, a NaN coordinate (``null`` in JSON, ``nan`` in text) marks a missing point and is kept;
    an infinite one is refused.

    Raises:
        FaceDataError: naming the file: missing, unreadable, not ``N`` rows of ``(x, y)``, or infinite values.
    """
    p = Path(path)
    if not p.is_file():
        raise FaceDataError("landmark file does not exist.", p)
    suffix = p.suffix.lower()
    try:
        if suffix == ".pts":
            return read_pts(p)
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".json":
            arr = np.asarray(json.loads(p.read_text(encoding="utf-8")), dtype=np.float64)
        else:
            arr = np.loadtxt(p, delimiter="," if suffix == ".csv" else None, dtype=np.float64, ndmin=2)
    except FaceDataError:
        raise
    except Exception as err:  # numpy / json raise several types for broken files
        raise FaceDataError(f"cannot read landmarks ({type(err).__name__}: {err}).", p) from err
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1 and arr.size % 2 == 0:
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise FaceDataError(f"landmarks must be N rows of (x, y), got shape {arr.shape}.", p)
    if np.isinf(arr).any():
        rows = sorted({int(i) for i in np.nonzero(np.isinf(arr))[0]})
        raise FaceDataError(f"infinite coordinate at point(s) {rows[:5]} (a missing point is written NaN / null).", p)
    return arr
