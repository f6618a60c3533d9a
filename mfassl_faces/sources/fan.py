"""The ``fan`` landmark source: face-alignment's 2D FAN (68 points) with its S3FD detector, weights from a
user-given folder only (:data:`FAN_WEIGHT_FILES`; nothing is downloaded)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from mfassl_faces.sources.base import LANDMARK_SOURCES, Face, LandmarkSource, check_image

__all__ = ["FanLandmarks", "FAN_WEIGHT_FILES", "check_fan_weights"]

FAN_WEIGHT_FILES = {"detector": "s3fd-619a316812.pth", "landmarks": "2DFAN4-11f355bf06.pth.tar"}


@contextlib.contextmanager
def _hub_dir(folder: Path) -> Iterator[None]:
    """Point torch.hub at ``folder`` (which holds ``checkpoints/``) for the duration."""
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        yield
    finally:
        torch.hub.set_dir(old)


def check_fan_weights(weights_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The FAN weight files in ``weights_dir`` (or its ``hub/checkpoints/`` or ``checkpoints/``).

    Raises:
        FileNotFoundError: naming the missing files and the folder searched; nothing is downloaded.
    """
    if weights_dir is None:
        raise FileNotFoundError("the 'fan' landmark source needs a weights folder (--fan-weights DIR) holding "
                                f"{FAN_WEIGHT_FILES['detector']} and {FAN_WEIGHT_FILES['landmarks']}; "
                                "nothing is downloaded.")
    root = Path(weights_dir)
    found: dict[str, Path] = {}
    for key, fname in FAN_WEIGHT_FILES.items():
        for sub in (root, root / "hub" / "checkpoints", root / "checkpoints"):
            if (sub / fname).is_file():
                found[key] = sub / fname
                break
    missing = [FAN_WEIGHT_FILES[k] for k in FAN_WEIGHT_FILES if k not in found]
    if missing:
        raise FileNotFoundError(f"face-alignment weights missing in {root}: {', '.join(missing)} "
                                "(put them in that folder; nothing is downloaded).")
    return found


@LANDMARK_SOURCES.register("fan")
class FanLandmarks(LandmarkSource):
    """face-alignment's 2D FAN (68 points) with its S3FD detector, loaded from a local folder.

    Faces are ranked by the S3FD probability (the size breaking ties), which is also their detection confidence.

    Args:
        weights_dir: folder with ``s3fd-619a316812.pth`` and ``2DFAN4-11f355bf06.pth.tar``.
        device: torch device string.
        flip_input: average with the flipped image (slower, slightly more accurate).
    """

    name = "fan"

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str = "cpu", flip_input: bool = False) -> None:
        files = check_fan_weights(weights_dir)
        import face_alignment

        with tempfile.TemporaryDirectory(prefix="mfassl_fan_") as tmp:
            ck = Path(tmp) / "checkpoints"
            ck.mkdir()
            (ck / FAN_WEIGHT_FILES["landmarks"]).symlink_to(files["landmarks"].resolve())
            with _hub_dir(Path(tmp)):
                self.model = face_alignment.FaceAlignment(
                    face_alignment.LandmarksType.TWO_D, device=device, flip_input=flip_input, face_detector="sfd",
                    face_detector_kwargs={"path_to_detector": str(files["detector"])}, compile=False)

    def detect(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        img = check_image(image, 16, path)
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lms, _, boxes = self.model.get_landmarks_from_image(img, return_bboxes=True)
        faces = []
        for pts, box in zip(lms or [], boxes or []):
            x0, y0, x1, y1 = (float(v) for v in box[:4])
            score = float(box[4]) if len(box) > 4 else None
            faces.append(Face(np.asarray(pts, dtype=np.float64)[:, :2], "ibug68", box=(x0, y0, x1, y1),
                              size=max(x1 - x0, y1 - y0), score=score,
                              detection_confidence=1.0 if score is None else float(np.clip(score, 0.0, 1.0))))
        return faces
