"""The ``fan`` landmark source: face-alignment's 2D FAN (68 points) with its S3FD detector, weights from a
user-given folder only (:data:`FAN_WEIGHT_FILES`; nothing is downloaded), on any torch device, batched.

The landmarks are computed as face-alignment's ``FaceAlignment.get_landmarks_from_image`` computes them
(the crop around each box and the flip average from ``face_alignment.utils``, the network, the heatmap
decoding of :func:`decode_heatmaps`; whole-pixel coordinates, as face-alignment returns them), but the
face crops of several images go through the network together, in batches of ``batch_size``:
:meth:`FanLandmarks.detect_batch` and :meth:`FanLandmarks.landmarks_in_boxes_batch`.
:func:`decode_heatmaps` is face-alignment's ``get_preds_fromhm`` on a whole batch in numpy: the same
numbers without its per-face loop, whose numba compilation costs about 30 s in every new process.
Inside given boxes (``detected_faces=`` in face-alignment) only the landmark network is needed, so
``detect_faces=False`` loads ``2DFAN4-11f355bf06.pth.tar`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mfassl_faces.errors import FaceDataError
from mfassl_faces.sources.base import LANDMARK_SOURCES, Face, LandmarkSource, check_box, check_image

__all__ = ["FanLandmarks", "FAN_WEIGHT_FILES", "check_fan_weights", "decode_heatmaps"]

FAN_WEIGHT_FILES = {"detector": "s3fd-619a316812.pth", "landmarks": "2DFAN4-11f355bf06.pth.tar"}


def check_fan_weights(weights_dir: str | os.PathLike | None,
                      parts: Sequence[str] = ("detector", "landmarks")) -> dict[str, Path]:
    """The FAN weight files of ``parts`` in ``weights_dir`` (or its ``hub/checkpoints/`` or ``checkpoints/``).

    Args:
        weights_dir: the folder.
        parts: ``detector`` (S3FD) and / or ``landmarks`` (2DFAN-4).

    Raises:
        FileNotFoundError: naming the missing files and the folder searched; nothing is downloaded.
    """
    names = [FAN_WEIGHT_FILES[k] for k in parts]
    if weights_dir is None:
        raise FileNotFoundError("the 'fan' landmark source needs a weights folder (--fan-weights DIR) holding "
                                f"{' and '.join(names)}; nothing is downloaded.")
    root = Path(weights_dir)
    found: dict[str, Path] = {}
    for key in parts:
        for sub in (root, root / "hub" / "checkpoints", root / "checkpoints"):
            if (sub / FAN_WEIGHT_FILES[key]).is_file():
                found[key] = sub / FAN_WEIGHT_FILES[key]
                break
    missing = [FAN_WEIGHT_FILES[k] for k in parts if k not in found]
    if missing:
        raise FileNotFoundError(f"face-alignment weights missing in {root}: {', '.join(missing)} "
                                "(put them in that folder; nothing is downloaded).")
    return found


def decode_heatmaps(heatmaps: np.ndarray, centres: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in image pixels from FAN heatmaps, as face-alignment's ``get_preds_fromhm`` decodes them.

    Each point is its heatmap's arg-max, moved a quarter pixel towards the higher neighbour along each
    axis (away from the border), taken from the ``(H, W)`` heatmap grid back to the image through the
    crop of centre ``c`` and scale ``s`` (a ``200 s`` pixel square) and truncated to whole pixels.

    Args:
        heatmaps: ``(B, N, H, W)``.
        centres: ``(B, 2)`` crop centres ``(x, y)``.
        scales: ``(B,)`` crop scales.

    Returns:
        ``(landmarks (B, N, 2) float64 whole pixels, peaks (B, N) heatmap maxima)``.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    b, n, h, w = hm.shape
    flat = hm.reshape(b, n, h * w)
    idx = flat.argmax(axis=-1)
    peaks = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    px, py = idx % w, idx // h
    preds = np.stack([px + 1, py + 1], axis=-1).astype(np.float32)
    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    bi, ni = np.nonzero(inner)
    x, y = px[inner], py[inner]
    diff = np.stack([hm[bi, ni, y, x + 1] - hm[bi, ni, y, x - 1], hm[bi, ni, y + 1, x] - hm[bi, ni, y - 1, x]], axis=-1)
    preds[bi, ni] += np.sign(diff) * np.float32(0.25)
    preds -= np.float32(0.5)
    out = np.zeros((b, n, 2), dtype=np.float64)
    for k in range(b):
        side = 200.0 * float(scales[k])
        t = np.eye(3)
        t[0, 0] = t[1, 1] = h / side
        t[0, 2] = h * (-float(centres[k][0]) / side + 0.5)
        t[1, 2] = h * (-float(centres[k][1]) / side + 0.5)
        ti = np.linalg.pinv(t)
        p = preds[k].astype(np.float64)
        for r in range(2):
            out[k, :, r] = (ti[r, 0] * p[:, 0] + ti[r, 1] * p[:, 1] + ti[r, 2]).astype(np.int32)
    return out, peaks


def _load_fan(path: Path, device: Any):
    """2DFAN-4 (face-alignment's ``FAN(4)``) with the state dict in ``path``, on ``device``, in eval mode."""
    import torch
    from face_alignment.models import FAN

    net = FAN(4)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch raises several types for a file that is not this state dict
        raise FaceDataError(f"not the 2DFAN-4 weights ({type(err).__name__}: {' '.join(str(err).split())[:200]}).",
                            path) from err
    return net.to(device).eval()


@LANDMARK_SOURCES.register("fan")
class FanLandmarks(LandmarkSource):
    """face-alignment's 2D FAN (68 points) with its S3FD detector, loaded from a local folder.

    Faces are ranked by the S3FD probability (the size breaking ties), which is also their detection confidence.

    Args:
        weights_dir: folder with ``s3fd-619a316812.pth`` and ``2DFAN4-11f355bf06.pth.tar`` (only the latter
            with ``detect_faces=False``).
        device: torch device (``cpu``, ``cuda``, ``cuda:1``...).
        flip_input: average the heatmaps with those of the mirrored crop (slower, slightly more accurate).
        batch_size: face crops per network call.
        detect_faces: load the S3FD detector (False: only :meth:`landmarks_in_boxes`, which needs no detector).
        network: a landmark network instead of 2DFAN-4 from ``weights_dir``: an ``nn.Module`` from
            ``(B, 3, 256, 256)`` crops in ``[0, 1]`` to ``(B, 68, 64, 64)`` heatmaps (or a list whose last item
            is that), e.g. ``face_alignment.models.FAN`` with other weights.
        detector: a face detector instead of S3FD from ``weights_dir``, with face-alignment's detector interface
            (``detect_from_image(image) -> [[x0, y0, x1, y1, score], ...]`` and ``reference_scale``).

    Raises:
        FileNotFoundError: a needed weight file is missing (named); nothing is downloaded.
    """

    name = "fan"

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str = "cpu", flip_input: bool = False,
                 batch_size: int = 8, detect_faces: bool = True, network: Any = None, detector: Any = None) -> None:
        import torch

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}.")
        self.device = torch.device(device)
        self.flip_input = bool(flip_input)
        self.batch_size = int(batch_size)
        parts = [k for k, needed in (("detector", detect_faces and detector is None), ("landmarks", network is None))
                 if needed]
        files = check_fan_weights(weights_dir, parts) if parts else {}
        self.network = network.to(self.device).eval() if network is not None else _load_fan(files["landmarks"],
                                                                                             self.device)
        if detector is None and detect_faces:
            from face_alignment.detection.sfd.sfd_detector import SFDDetector

            detector = SFDDetector(device=str(self.device), path_to_detector=str(files["detector"]))
        self.detector = detector

    @property
    def reference_scale(self) -> float:
        """The box size (``w + h``) of a face that fills FAN's crop: the detector's, else S3FD's (195)."""
        from face_alignment.utils import REFERENCE_SCALE

        return float(getattr(self.detector, "reference_scale", REFERENCE_SCALE))

    # ------------------------------------------------------------------ the network, batched
    def _landmarks(self, jobs: Sequence[tuple[np.ndarray, Sequence[float]]]) -> list[tuple[np.ndarray, float]]:
        """``(landmarks (68, 2), mean heatmap peak)`` for each ``(RGB image, box)``, as face-alignment computes them,
        with the crops of all jobs going through the network ``batch_size`` at a time."""
        import torch
        from face_alignment.utils import CENTER_Y_OFFSET, crop, flip

        centres, scales, crops = [], [], []
        for image, box in jobs:
            x0, y0, x1, y1 = (float(v) for v in box[:4])
            centre = np.array([x1 - (x1 - x0) / 2.0, y1 - (y1 - y0) / 2.0 - (y1 - y0) * CENTER_Y_OFFSET])
            scale = (x1 - x0 + y1 - y0) / self.reference_scale
            centres.append(centre)
            scales.append(scale)
            crops.append(crop(image, centre, scale).transpose((2, 0, 1)).astype(np.float32) / 255.0)
        heatmaps = []
        with torch.no_grad():
            for start in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.stack(crops[start:start + self.batch_size])).to(self.device)
                out = self.network(x)
                out = (out[-1] if isinstance(out, (list, tuple)) else out).detach()
                if self.flip_input:
                    back = self.network(flip(x))
                    out = out + flip((back[-1] if isinstance(back, (list, tuple)) else back).detach(), is_label=True)
                heatmaps.append(out.to(device="cpu", dtype=torch.float32).numpy())
        if not heatmaps:
            return []
        pts, peaks = decode_heatmaps(np.concatenate(heatmaps), np.asarray(centres), np.asarray(scales))
        return [(pts[i], float(peaks[i].mean())) for i in range(len(jobs))]

    @staticmethod
    def _rgb(image: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
        img = check_image(image, 16, path)
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])

    # ------------------------------------------------------------------ the source interface
    def detect(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        return self.detect_batch([image], [path])[0]

    def detect_batch(self, images: Sequence[np.ndarray],
                     paths: Sequence[str | os.PathLike | None] | None = None) -> list[list[Face]]:
        """S3FD on each image, then FAN on all their faces in batches; each list ranked best first (:meth:`rank`:
        by the S3FD probability, the size breaking ties).

        Raises:
            RuntimeError: the source was built with ``detect_faces=False``.
        """
        if self.detector is None:
            raise RuntimeError("this fan source was built without a face detector (detect_faces=False); "
                               "use landmarks_in_boxes, or give the S3FD weights.")
        paths = list(paths) if paths is not None else [None] * len(images)
        rgbs = [self._rgb(image, path) for image, path in zip(images, paths)]
        boxes = []
        for rgb in rgbs:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                boxes.append([np.asarray(b, dtype=np.float64) for b in self.detector.detect_from_image(rgb.copy())])
        jobs = [(rgb, b) for rgb, bs in zip(rgbs, boxes) for b in bs]
        results = iter(self._landmarks(jobs))
        out = []
        for bs in boxes:
            faces = []
            for b in bs:
                pts, peak = next(results)
                x0, y0, x1, y1 = (float(v) for v in b[:4])
                score = float(b[4]) if b.size > 4 else None
                faces.append(Face(pts, "ibug68", box=(x0, y0, x1, y1), size=max(x1 - x0, y1 - y0), score=score,
                                  detection_confidence=1.0 if score is None else float(np.clip(score, 0.0, 1.0)),
                                  info={"heatmap_peak": round(peak, 4)}))
            out.append(self.rank(faces))
        return out

    def landmarks_in_boxes(self, image: np.ndarray, boxes: Sequence[Sequence[float]],
                           path: str | os.PathLike | None = None) -> list[Face]:
        """FAN inside each given box (face-alignment's ``detected_faces=``); no detector runs."""
        return self.landmarks_in_boxes_batch([image], [boxes], [path])[0]

    def landmarks_in_boxes_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Sequence[float]]],
                                 paths: Sequence[str | os.PathLike | None] | None = None) -> list[list[Face]]:
        """FAN inside the given boxes of several images, their crops in batches of ``batch_size``.

        Raises:
            FaceDataError: a box that is not finite with ``x0 < x1`` and ``y0 < y1`` (names the image).
        """
        paths = list(paths) if paths is not None else [None] * len(images)
        rgbs = [self._rgb(image, path) for image, path in zip(images, paths)]
        checked = [[check_box(b, path) for b in bs] for bs, path in zip(boxes, paths)]
        results = iter(self._landmarks([(rgb, b) for rgb, bs in zip(rgbs, checked) for b in bs]))
        out = []
        for bs in checked:
            faces = []
            for b in bs:
                pts, peak = next(results)
                faces.append(Face(pts, "ibug68", box=b, size=max(b[2] - b[0], b[3] - b[1]),
                                  info={"box_from": "given", "heatmap_peak": round(peak, 4)}))
            out.append(faces)
        return out
