"""Landmark schemas with their mirror maps: WFLW-98, 300W/iBUG-68 and 5-point.

Landmarks are arrays of shape ``(N, 2)`` in *pixel* coordinates ``(x, y)`` = (column, row),
0-based, pixel centres at integers. Point ``i`` of a face and point ``mirror[i]`` of the same face
are images of each other under the face's bilateral symmetry, so flipping an image horizontally
moves point ``i`` to where point ``mirror[i]`` was: :func:`flip_landmarks` reflects the coordinates
and permutes the rows by the map. ``mirror`` is an involution (``mirror[mirror] = identity``);
points with ``mirror[i] == i`` lie on the midline.

Layouts (image-left = the subject's right):

- **WFLW-98**: contour 0-32 (image-left to image-right, chin 16), eyebrows 33-41 (left: upper 33-37
  outer to inner, lower 38-41 inner to outer) and 42-50 (right: upper 42-46 inner to outer, lower
  47-50 outer to inner), nose bridge 51-54, lower nose 55-59, eyes 60-67 (left: outer corner 60,
  upper lid 61-63, inner corner 64, lower lid 65-67) and 68-75 (right: inner corner 68, upper 69-71,
  outer corner 72, lower 73-75), outer lips 76-87 (corner 76, upper 77-81, corner 82, lower 83-87),
  inner lips 88-95 (corner 88, upper 89-91, corner 92, lower 93-95), pupils 96 (left) and 97.
  Inter-ocular distance: points 60 and 72 (outer eye corners).
- **300W/iBUG-68**: contour 0-16, eyebrows 17-21 and 22-26, nose bridge 27-30, lower nose 31-35,
  eyes 36-41 (outer 36, upper 37-38, inner 39, lower 40-41) and 42-47 (inner 42, upper 43-44,
  outer 45, lower 46-47), outer lips 48-59, inner lips 60-67. Inter-ocular: 36 and 45.
- **5-point**: left eye, right eye, nose tip, left mouth corner, right mouth corner; inter-ocular
  0 and 1 (eye centres).

Pupils (:attr:`LandmarkSchema.pupils`, for the inter-pupil normalisation): WFLW annotates them (96,
97); the 68-point layout has none, so each pupil is the centroid of its eye's six contour points
(36-41, 42-47), the usual definition on 300W; the 5-point eye points are eye centres already.

**98 <-> 68** (:func:`convert_landmarks`, :func:`conversion_matrix`): 68 of WFLW's 98 points have a
68-point counterpart: the even contour points 0, 2, ..., 32; the upper eyebrows 33-37 and 42-46; the
nose 51-59; the eye corners and the outer lid points 60, 61, 63, 64, 65, 67 and 68, 69, 71, 72, 73,
75; the lips 76-95. 98 -> 68 takes those points. The correspondence is approximate where the
layouts sample a curve differently (WFLW's 33 contour points against 17; its lids at a quarter and
three quarters against a third and two thirds). 68 -> 98 copies the same points and fills the rest:
odd contour points and the middle lid points (62, 66, 70, 74) as midpoints of their neighbours, the
pupils as eye centroids, and the lower eyebrow edges (38-41, 47-50), which 68 points do not trace,
on the upper eyebrow points above them (an eyebrow of zero thickness). Both maps commute with the
mirror maps (flip then convert = convert then flip), and 68 -> 98 -> 68 is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfassl.registry import Registry

__all__ = [
    "LandmarkSchema",
    "SCHEMAS",
    "WFLW98",
    "IBUG68",
    "FIVE_POINT",
    "get_schema",
    "schema_for_count",
    "flip_landmarks",
    "WFLW98_MIRROR",
    "IBUG68_MIRROR",
    "WFLW98_TO_IBUG68",
    "conversion_matrix",
    "convert_landmarks",
]


@dataclass(frozen=True)
class LandmarkSchema:
    """A landmark layout and its mirror map.

    Args:
        name: registry name (``wflw98``, ``ibug68``, ``five``).
        mirror: ``(N,)`` index of each point's mirror partner (an involution).
        iod: the two points whose distance normalises errors (inter-ocular distance).
        parts: named index ranges (``contour``, ``eyes``...) for drawing and per-part errors.
        pupils: the points whose centroids are the two pupils (left eye's, right eye's), for the
            inter-pupil distance; empty when the layout has no eyes.
    """

    name: str
    mirror: tuple[int, ...]
    iod: tuple[int, int]
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    pupils: tuple[tuple[int, ...], tuple[int, ...]] | tuple[()] = ()

    def __post_init__(self) -> None:
        m = np.asarray(self.mirror)
        n = m.size
        if sorted(m.tolist()) != list(range(n)) or not np.array_equal(m[m], np.arange(n)):
            raise ValueError(f"schema {self.name}: the mirror map must be an involutive permutation.")
        if m[self.iod[0]] != self.iod[1]:
            raise ValueError(f"schema {self.name}: the inter-ocular points must mirror each other.")

    @property
    def n_points(self) -> int:
        """Number of landmarks ``N``."""
        return len(self.mirror)

    @property
    def mirror_array(self) -> np.ndarray:
        """The mirror map as an ``(N,)`` int array."""
        return np.asarray(self.mirror, dtype=np.int64)

    @property
    def pairs(self) -> np.ndarray:
        """``(P, 2)`` mirror pairs ``(i, mirror[i])`` with ``i < mirror[i]``."""
        m = self.mirror_array
        i = np.nonzero(np.arange(m.size) < m)[0]
        return np.stack([i, m[i]], axis=1)

    @property
    def midline(self) -> np.ndarray:
        """``(M,)`` indices of the self-mirrored (midline) points."""
        m = self.mirror_array
        return np.nonzero(m == np.arange(m.size))[0]

    def inter_ocular(self, landmarks: np.ndarray) -> np.ndarray:
        """Inter-ocular distance of ``(..., N, 2)`` landmarks, shape ``(...)``."""
        pts = np.asarray(landmarks, dtype=np.float64)
        self.check(pts)
        return np.linalg.norm(pts[..., self.iod[0], :] - pts[..., self.iod[1], :], axis=-1)

    def check(self, landmarks: np.ndarray, source: str | None = None) -> np.ndarray:
        """Return ``landmarks`` as float64 after checking their shape is ``(..., N, 2)``."""
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.ndim < 2 or pts.shape[-2:] != (self.n_points, 2):
            where = f" in {source}" if source else ""
            raise ValueError(f"expected {self.n_points} landmarks of schema {self.name}{where}, "
                             f"got an array of shape {pts.shape}.")
        return pts

    def inter_pupil(self, landmarks: np.ndarray) -> np.ndarray:
        """Distance between the pupils (:attr:`pupils` centroids) of ``(..., N, 2)`` landmarks, shape ``(...)``."""
        if not self.pupils:
            raise ValueError(f"schema {self.name} defines no pupils.")
        pts = self.check(landmarks)
        left = pts[..., list(self.pupils[0]), :].mean(axis=-2)
        right = pts[..., list(self.pupils[1]), :].mean(axis=-2)
        return np.linalg.norm(left - right, axis=-1)

    def part(self, name: str) -> tuple[int, ...]:
        """Indices of a named part."""
        return dict(self.parts)[name]


def _symmetric(pairs: list[tuple[int, int]], n: int) -> tuple[int, ...]:
    """A mirror map from its non-trivial pairs (all other points are self-mirrored)."""
    m = list(range(n))
    for a, b in pairs:
        m[a], m[b] = b, a
    return tuple(m)


def _reverse(first: int, last: int) -> list[tuple[int, int]]:
    """Pairs of a run ``first..last`` traversed left to right: ``first`` with ``last`` and so on inwards."""
    return [(first + k, last - k) for k in range((last - first + 1) // 2)]


# WFLW-98, derived from the layout in the module docstring.
_WFLW_PAIRS = (
    _reverse(0, 32)                                   # contour
    + [(33 + k, 46 - k) for k in range(5)]            # upper brows: outer-left 33 <-> outer-right 46
    + [(38 + k, 50 - k) for k in range(4)]            # lower brows: inner 38 <-> inner 50
    + _reverse(55, 59)                                # lower nose
    + [(60 + k, 72 - k) for k in range(5)]            # eye corners and upper lids: 60<->72 ... 64<->68
    + [(65 + k, 75 - k) for k in range(3)]            # lower lids: 65<->75, 66<->74, 67<->73
    + _reverse(76, 82) + _reverse(83, 87)             # outer lips
    + _reverse(88, 92) + _reverse(93, 95)             # inner lips
    + [(96, 97)]                                      # pupils
)
WFLW98_MIRROR: tuple[int, ...] = _symmetric(_WFLW_PAIRS, 98)

# 300W/iBUG-68.
_IBUG_PAIRS = (
    _reverse(0, 16)                                   # contour
    + [(17 + k, 26 - k) for k in range(5)]            # brows: outer 17 <-> outer 26
    + _reverse(31, 35)                                # lower nose
    + [(36 + k, 45 - k) for k in range(4)]            # eye corners and upper lids: 36<->45 ... 39<->42
    + [(40, 47), (41, 46)]                            # lower lids
    + _reverse(48, 54) + _reverse(55, 59)             # outer lips
    + _reverse(60, 64) + _reverse(65, 67)             # inner lips
)
IBUG68_MIRROR: tuple[int, ...] = _symmetric(_IBUG_PAIRS, 68)

SCHEMAS: Registry[LandmarkSchema] = Registry("landmark schema")

WFLW98 = LandmarkSchema(
    "wflw98", WFLW98_MIRROR, (60, 72),
    parts=(("contour", tuple(range(0, 33))), ("brow_l", tuple(range(33, 42))), ("brow_r", tuple(range(42, 51))),
           ("nose", tuple(range(51, 60))), ("eye_l", tuple(range(60, 68))), ("eye_r", tuple(range(68, 76))),
           ("mouth_outer", tuple(range(76, 88))), ("mouth_inner", tuple(range(88, 96))), ("pupils", (96, 97))),
    pupils=((96,), (97,)))
IBUG68 = LandmarkSchema(
    "ibug68", IBUG68_MIRROR, (36, 45),
    parts=(("contour", tuple(range(0, 17))), ("brow_l", tuple(range(17, 22))), ("brow_r", tuple(range(22, 27))),
           ("nose", tuple(range(27, 36))), ("eye_l", tuple(range(36, 42))), ("eye_r", tuple(range(42, 48))),
           ("mouth_outer", tuple(range(48, 60))), ("mouth_inner", tuple(range(60, 68)))),
    pupils=(tuple(range(36, 42)), tuple(range(42, 48))))
FIVE_POINT = LandmarkSchema("five", (1, 0, 2, 4, 3), (0, 1),
                            parts=(("eyes", (0, 1)), ("nose", (2,)), ("mouth", (3, 4))), pupils=((0,), (1,)))

for _s, _aliases in ((WFLW98, ("wflw", "wflw98")), (IBUG68, ("300w", "ibug", "ibug68", "68")), (FIVE_POINT, ("five", "5"))):
    for _a in _aliases:
        SCHEMAS.register(_a, (lambda s: (lambda: s))(_s))


def get_schema(schema: str | LandmarkSchema) -> LandmarkSchema:
    """A schema by name (``wflw98``/``wflw``, ``ibug68``/``300w``/``68``, ``five``/``5``) or as given."""
    return schema if isinstance(schema, LandmarkSchema) else SCHEMAS.create(schema)


def schema_for_count(n_points: int) -> LandmarkSchema:
    """The schema with ``n_points`` landmarks (98, 68 or 5)."""
    for s in (WFLW98, IBUG68, FIVE_POINT):
        if s.n_points == n_points:
            return s
    raise ValueError(f"no landmark schema has {n_points} points (known: 98 WFLW, 68 300W/iBUG, 5).")


def flip_landmarks(landmarks: np.ndarray, schema: str | LandmarkSchema, width: int) -> np.ndarray:
    """Landmarks of the horizontally flipped image.

    Args:
        landmarks: ``(..., N, 2)`` pixel ``(x, y)`` coordinates.
        schema: the layout (its mirror map permutes the points).
        width: image width ``W``; pixel centre ``x`` moves to ``W - 1 - x``.

    Returns:
        ``(..., N, 2)``; flipping twice gives the input back.
    """
    s = get_schema(schema)
    pts = s.check(landmarks).copy()
    pts[..., 0] = (width - 1) - pts[..., 0]
    return pts[..., s.mirror_array, :]


# ---------------------------------------------------------------------------------------------- 98 <-> 68
#: for each of the 68 points, its WFLW-98 counterpart (see the module docstring)
WFLW98_TO_IBUG68: tuple[int, ...] = (
    tuple(range(0, 33, 2))                            # contour: every second point
    + tuple(range(33, 38)) + tuple(range(42, 47))     # upper eyebrows
    + tuple(range(51, 60))                            # nose bridge and lower nose
    + (60, 61, 63, 64, 65, 67) + (68, 69, 71, 72, 73, 75)  # eyes: corners and outer lid points
    + tuple(range(76, 96))                            # outer and inner lips
)


def _ibug68_to_wflw98() -> np.ndarray:
    """The ``(98, 68)`` weights of 68 -> 98: copies where a counterpart exists, else the fills of the module docstring."""
    w = np.zeros((98, 68))
    for i68, i98 in enumerate(WFLW98_TO_IBUG68):
        w[i98, i68] = 1.0
    for k in range(16):                               # odd contour points between 68-point k and k + 1
        w[2 * k + 1, [k, k + 1]] = 0.5
    for i98, i68 in zip((38, 39, 40, 41, 47, 48, 49, 50), (21, 20, 19, 18, 25, 24, 23, 22)):
        w[i98, i68] = 1.0                             # lower eyebrow edge on the upper one
    for i98, pair in ((62, (37, 38)), (66, (40, 41)), (70, (43, 44)), (74, (46, 47))):
        w[i98, list(pair)] = 0.5                      # middle lid points
    w[96, 36:42] = 1.0 / 6.0                          # pupils: eye centroids
    w[97, 42:48] = 1.0 / 6.0
    return w


def conversion_matrix(source: str | LandmarkSchema, target: str | LandmarkSchema) -> np.ndarray:
    """The ``(N_target, N_source)`` matrix ``W`` with ``target_points = W @ source_points`` (rows sum to 1).

    Raises:
        ValueError: no conversion between the two layouts (only WFLW-98 <-> 300W-68 and the identity exist).
    """
    s, t = get_schema(source), get_schema(target)
    if s.name == t.name:
        return np.eye(s.n_points)
    if (s.name, t.name) == ("wflw98", "ibug68"):
        w = np.zeros((68, 98))
        w[np.arange(68), list(WFLW98_TO_IBUG68)] = 1.0
        return w
    if (s.name, t.name) == ("ibug68", "wflw98"):
        return _ibug68_to_wflw98()
    raise ValueError(f"no landmark conversion from {s.name} to {t.name} (known: wflw98 <-> ibug68).")


def convert_landmarks(landmarks: np.ndarray, source: str | LandmarkSchema, target: str | LandmarkSchema) -> np.ndarray:
    """``(..., N_source, 2)`` landmarks in the ``target`` layout, ``(..., N_target, 2)`` (see :func:`conversion_matrix`;
    approximate, as the module docstring says)."""
    pts = get_schema(source).check(landmarks)
    return np.einsum("ts,...sc->...tc", conversion_matrix(source, target), pts)
