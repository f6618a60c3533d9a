"""Symmetry axes (2D lines, 3D planes), reflections, canonicalising affines and batched resampling.

Coordinates
-----------
A hyperplane is ``{x : n . x = d}`` with a unit normal ``n`` and an offset ``d``. The same
types serve *world* coordinates (mm, through a MONAI/nibabel affine) and *index* coordinates
(continuous array indices in the order of the tensor's spatial dimensions, voxel centres at
integers). :meth:`SymmetryHyperplane.transform` moves a hyperplane between frames.

For a tensor of shape ``(B, C, H, W)`` an index point is ``(row, col)``; for
``(B, C, X, Y, Z)`` it is ``(i, j, k)``. The *split dimension* of an axis is the spatial
dimension its normal points along most (``col`` for an upright face or chest X-ray stored as
``(H, W)``, the left-right dimension of a RAS volume).

Resampling (:func:`warp`) takes homogeneous matrices that map *output* index coordinates to
*input* index coordinates, and runs one ``grid_sample`` for 2D and 3D alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # the resampling functions import torch when called: the axis types and matrices need numpy only
    import torch

__all__ = [
    "SymmetryHyperplane",
    "SymmetryAxis2D",
    "SymmetryPlane3D",
    "hyperplane_class",
    "reflection_matrix",
    "rotation_between",
    "canonicalizing_matrix",
    "similarity_matrix",
    "warp",
    "index_grid",
    "axes_to_tensor",
    "centre_axis",
]


def _as_vector(x: Any, dims: int, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if v.shape != (dims,):
        raise ValueError(f"{name} must have {dims} components, got shape {v.shape}.")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {v}.")
    return v


@dataclass(frozen=True, eq=False)
class SymmetryHyperplane:
    """A symmetry hyperplane ``n . x = d`` (a line in 2D, a plane in 3D).

    Args:
        normal: unit normal ``n`` of shape ``(D,)``; it is normalised on construction.
        offset: ``d``, the signed distance of the hyperplane from the origin along ``n``.
        confidence: how much the estimator trusts the axis, in ``[0, 1]``.
        fallback: True when the estimator gave up and returned the image centre.
        info: free-form details of the estimate (method, score, iterations, ...).
    """

    normal: np.ndarray
    offset: float
    confidence: float = 1.0
    fallback: bool = False
    info: dict = field(default_factory=dict, compare=False)

    dims: int = 0  # set by subclasses

    def __post_init__(self) -> None:
        dims = self.dims or np.asarray(self.normal).size
        n = _as_vector(self.normal, dims, "normal")
        norm = float(np.linalg.norm(n))
        if norm < 1e-12:
            raise ValueError("normal must be non-zero.")
        if not math.isfinite(float(self.offset)):
            raise ValueError(f"offset must be finite, got {self.offset}.")
        conf = float(self.confidence)
        if not (0.0 <= conf <= 1.0) or not math.isfinite(conf):
            raise ValueError(f"confidence must lie in [0, 1], got {self.confidence}.")
        object.__setattr__(self, "normal", n / norm)
        object.__setattr__(self, "offset", float(self.offset) / norm)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "fallback", bool(self.fallback))
        object.__setattr__(self, "dims", dims)

    # ------------------------------------------------------------------ construction
    @classmethod
    def through_point(cls, normal: Sequence[float], point: Sequence[float], **kwargs: Any) -> "SymmetryHyperplane":
        """The hyperplane with ``normal`` that passes through ``point``."""
        n = np.asarray(normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        return cls(normal=n, offset=float(n @ np.asarray(point, dtype=np.float64)), **kwargs)

    @classmethod
    def centre(cls, spatial_shape: Sequence[int], split_dim: int, **kwargs: Any) -> "SymmetryHyperplane":
        """The centre line/plane of an array, in index coordinates, normal along ``split_dim``."""
        dims = len(spatial_shape)
        n = np.zeros(dims)
        n[split_dim] = 1.0
        kwargs.setdefault("fallback", False)
        return cls(normal=n, offset=(spatial_shape[split_dim] - 1) / 2.0, **kwargs)

    # ------------------------------------------------------------------ queries
    @property
    def split_dim(self) -> int:
        """The spatial dimension the normal points along most."""
        return int(np.argmax(np.abs(self.normal)))

    def canonical(self) -> "SymmetryHyperplane":
        """The same hyperplane with the sign chosen so that ``normal[split_dim] > 0``."""
        if self.normal[self.split_dim] >= 0:
            return self
        return self.replace(normal=-self.normal, offset=-self.offset)

    def replace(self, **changes: Any) -> "SymmetryHyperplane":
        values = dict(normal=self.normal, offset=self.offset, confidence=self.confidence,
                      fallback=self.fallback, info=dict(self.info))
        values.update(changes)
        return type(self)(**values)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distances ``n . x - d`` of points of shape ``(..., D)``."""
        return np.asarray(points, dtype=np.float64) @ self.normal - self.offset

    def closest_point(self, point: Sequence[float]) -> np.ndarray:
        """The point of the hyperplane closest to ``point``."""
        p = np.asarray(point, dtype=np.float64)
        return p - self.signed_distance(p) * self.normal

    def angle_to(self, other: "SymmetryHyperplane") -> float:
        """Unsigned angle between the two normals in degrees (sign of the normal ignored)."""
        c = abs(float(self.normal @ other.normal))
        return math.degrees(math.acos(min(1.0, c)))

    def distance_at(self, other: "SymmetryHyperplane", point: Sequence[float]) -> float:
        """Distance between the two hyperplanes measured at ``point`` (from this one's closest point)."""
        return abs(float(other.signed_distance(self.closest_point(point))))

    def reflection_matrix(self) -> np.ndarray:
        """Homogeneous ``(D+1, D+1)`` matrix of the reflection ``x -> x - 2 (n.x - d) n``."""
        return reflection_matrix(self.normal, self.offset)

    def reflect_points(self, points: np.ndarray) -> np.ndarray:
        """Reflect points of shape ``(..., D)`` about the hyperplane."""
        p = np.asarray(points, dtype=np.float64)
        return p - 2.0 * self.signed_distance(p)[..., None] * self.normal

    def transform(self, matrix: np.ndarray) -> "SymmetryHyperplane":
        """The hyperplane in the frame ``y`` where ``x = matrix @ [y, 1]`` (``matrix`` maps new to old).

        With ``matrix`` a MONAI affine (index -> world) this turns a world-space hyperplane into
        index space; with its inverse, index space into world.
        """
        m = np.asarray(matrix, dtype=np.float64)
        d = self.dims
        if m.shape != (d + 1, d + 1):
            raise ValueError(f"matrix must be {(d + 1, d + 1)}, got {m.shape}.")
        lin, t = m[:d, :d], m[:d, d]
        n_new = lin.T @ self.normal
        d_new = self.offset - float(self.normal @ t)
        scale = float(np.linalg.norm(n_new))
        return self.replace(normal=n_new / scale, offset=d_new / scale)

    def to_index(self, affine: np.ndarray) -> "SymmetryHyperplane":
        """World -> index coordinates, given the index -> world ``affine``."""
        return self.transform(np.asarray(affine, dtype=np.float64))

    def to_world(self, affine: np.ndarray) -> "SymmetryHyperplane":
        """Index -> world coordinates, given the index -> world ``affine``."""
        return self.transform(np.linalg.inv(np.asarray(affine, dtype=np.float64)))

    def as_array(self) -> np.ndarray:
        """``[n_0, ..., n_{D-1}, d]`` as float32, the row format of :func:`axes_to_tensor`."""
        return np.concatenate([self.normal, [self.offset]]).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "dims": self.dims,
            "normal": [float(v) for v in self.normal],
            "offset": float(self.offset),
            "confidence": float(self.confidence),
            "fallback": bool(self.fallback),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SymmetryHyperplane":
        kind = hyperplane_class(len(data["normal"])) if cls is SymmetryHyperplane else cls
        return kind(normal=data["normal"], offset=data["offset"],
                    confidence=data.get("confidence", 1.0), fallback=data.get("fallback", False))


@dataclass(frozen=True, eq=False)
class SymmetryAxis2D(SymmetryHyperplane):
    """A 2D symmetry line ``n . x = d`` (see :class:`SymmetryHyperplane`)."""

    dims: int = 2

    @classmethod
    def from_angle(cls, angle_deg: float, offset: float, split_dim: int = 1, **kwargs: Any) -> "SymmetryAxis2D":
        """A line whose normal is ``e_split`` rotated by ``angle_deg`` (counter-clockwise in index space)."""
        a = math.radians(angle_deg)
        base = np.zeros(2)
        base[split_dim] = 1.0
        other = np.zeros(2)
        other[1 - split_dim] = 1.0
        n = math.cos(a) * base + math.sin(a) * other
        return cls(normal=n, offset=offset, **kwargs)


@dataclass(frozen=True, eq=False)
class SymmetryPlane3D(SymmetryHyperplane):
    """A 3D symmetry plane ``n . x = d`` (see :class:`SymmetryHyperplane`)."""

    dims: int = 3

    def cut_by_slice(self, axis: int, index: float) -> SymmetryAxis2D:
        """The line where the plane cuts the slice ``x[axis] = index`` (index coordinates of the slice).

        The returned line lives in the 2D coordinates of the remaining two dimensions, in order.
        """
        keep = [k for k in range(3) if k != axis]
        n2 = self.normal[keep]
        d2 = self.offset - self.normal[axis] * index
        if np.linalg.norm(n2) < 1e-9:
            raise ValueError("the plane is parallel to the slice; it does not cut it in a line.")
        return SymmetryAxis2D(normal=n2, offset=d2, confidence=self.confidence, fallback=self.fallback)


def hyperplane_class(dims: int) -> type[SymmetryHyperplane]:
    """:class:`SymmetryAxis2D` for 2 dimensions, :class:`SymmetryPlane3D` for 3."""
    if dims == 2:
        return SymmetryAxis2D
    if dims == 3:
        return SymmetryPlane3D
    raise ValueError(f"spatial dimensionality must be 2 or 3, got {dims}.")


def centre_axis(spatial_shape: Sequence[int], split_dim: int, **kwargs: Any) -> SymmetryHyperplane:
    """The centre line/plane of an array (index coordinates), the published default axis."""
    return hyperplane_class(len(spatial_shape)).centre(spatial_shape, split_dim, **kwargs)


# ---------------------------------------------------------------------- matrices
def reflection_matrix(normal: Sequence[float], offset: float) -> np.ndarray:
    """Homogeneous matrix of the reflection about ``n . x = d``: ``[[I - 2nn^T, 2dn], [0, 1]]``."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    d = len(n)
    m = np.eye(d + 1)
    m[:d, :d] -= 2.0 * np.outer(n, n)
    m[:d, d] = 2.0 * offset * n
    return m


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation ``R`` (det +1) with ``R a = b`` for unit vectors, any dimension.

    ``R = I + K + K^2 / (1 + a.b)`` with ``K = b a^T - a b^T``; ``a.b`` must not be -1.
    """
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    c = float(a @ b)
    if c <= -1.0 + 1e-9:
        raise ValueError("rotation_between: vectors are opposite; the smallest rotation is not unique.")
    k = np.outer(b, a) - np.outer(a, b)
    return np.eye(len(a)) + k + (k @ k) / (1.0 + c)


def canonicalizing_matrix(axis: SymmetryHyperplane, spatial_shape: Sequence[int],
                          split_dim: int | None = None) -> np.ndarray:
    """Index-space homogeneous matrix ``M`` (output index -> input index) of the rigid transform
    that puts ``axis`` on the centre line/plane of an output array of the same shape.

    With ``x = M y``: ``n . x = d``  iff  ``y[split_dim] = (size - 1) / 2``. The rotation is the
    smallest one taking ``e_split`` to ``n``, about the array centre moved onto the axis.
    Index coordinates are assumed isotropic (resample first, e.g. with MONAI ``Spacingd``).
    """
    dims = len(spatial_shape)
    if axis.dims != dims:
        raise ValueError(f"axis has {axis.dims} dims but the array has {dims} spatial dims.")
    k = axis.split_dim if split_dim is None else split_dim
    ax = axis if axis.normal[k] >= 0 else axis.replace(normal=-axis.normal, offset=-axis.offset)
    e = np.zeros(dims)
    e[k] = 1.0
    rot = rotation_between(e, ax.normal)
    c = (np.asarray(spatial_shape, dtype=np.float64) - 1.0) / 2.0
    p0 = ax.closest_point(c)
    m = np.eye(dims + 1)
    m[:dims, :dims] = rot
    m[:dims, dims] = p0 - rot @ c
    return m


def similarity_matrix(angle_deg: float, scale: float, centre: Sequence[float], new_centre: Sequence[float]) -> np.ndarray:
    """``(2, 3)`` forward map ``p' = scale * R(angle) (p - centre) + new_centre`` of 2D points ``p = (u, v)``.

    ``R(angle) = [[cos, -sin], [sin, cos]]`` turns the first coordinate's axis towards the second's: in pixel
    ``(x, y)`` with ``y`` pointing down, a positive angle turns clockwise on screen. The matrix maps *input* to
    *output* points (OpenCV's ``warpAffine`` convention; :func:`warp` takes the inverse, output -> input):
    ``p' = m[:, :2] @ p + m[:, 2]``.

    Args:
        angle_deg: rotation in degrees.
        scale: zoom factor (> 0).
        centre: the input point that goes to ``new_centre``.
        new_centre: where ``centre`` lands.
    """
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = np.asarray(new_centre, dtype=np.float64) - r @ np.asarray(centre, dtype=np.float64)
    return np.concatenate([r, t[:, None]], axis=1)


# ---------------------------------------------------------------------- resampling
def index_grid(matrix: torch.Tensor, out_shape: Sequence[int], in_shape: Sequence[int]) -> torch.Tensor:
    """Sampling grid for ``grid_sample`` from output->input index matrices.

    Args:
        matrix: ``(B, D+1, D+1)`` output index -> input index.
        out_shape: output spatial shape.
        in_shape: input spatial shape.

    Returns:
        ``(B, *out_shape, D)`` normalised coordinates (``align_corners=True``), last dim reversed.
    """
    import torch

    dims = len(out_shape)
    dev, dt = matrix.device, matrix.dtype
    axes = [torch.arange(s, device=dev, dtype=dt) for s in out_shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    pts = torch.stack([*mesh, torch.ones_like(mesh[0])], dim=-1).reshape(-1, dims + 1)  # (P, D+1)
    src = torch.einsum("bij,pj->bpi", matrix[:, :dims, :], pts)  # (B, P, D)
    size = torch.tensor(list(in_shape), device=dev, dtype=dt)
    norm = 2.0 * src / (size - 1).clamp(min=1) - 1.0
    # grid_sample wants the last spatial dim first: (x=W, y=H[, z=D]) for (D, H, W) arrays.
    norm = norm.flip(-1)
    return norm.reshape(matrix.shape[0], *out_shape, dims)


def warp(images: torch.Tensor, matrix: torch.Tensor | np.ndarray, out_shape: Sequence[int] | None = None,
         mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Resample a batch through index-space affines, 2D or 3D with one code path.

    Args:
        images: ``(B, C, *S_in)`` with 2 or 3 spatial dims.
        matrix: ``(B, D+1, D+1)`` or ``(D+1, D+1)``: output index -> input index.
        out_shape: spatial shape of the output, default ``S_in``.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding_mode: ``grid_sample`` padding for points outside the input.

    Returns:
        ``(B, C, *out_shape)``.
    """
    import torch
    import torch.nn.functional as F

    if images.ndim not in (4, 5):
        raise ValueError(f"images must be (B, C, H, W) or (B, C, X, Y, Z), got shape {tuple(images.shape)}.")
    dims = images.ndim - 2
    m = torch.as_tensor(matrix, dtype=torch.float32 if not images.is_floating_point() else images.dtype,
                        device=images.device)
    if m.ndim == 2:
        m = m.unsqueeze(0).expand(images.shape[0], -1, -1)
    if m.shape[1:] != (dims + 1, dims + 1):
        raise ValueError(f"matrix must be (B, {dims + 1}, {dims + 1}), got {tuple(m.shape)}.")
    in_shape = tuple(images.shape[2:])
    out_shape = tuple(out_shape) if out_shape is not None else in_shape
    grid = index_grid(m, out_shape, in_shape)
    src = images if images.is_floating_point() else images.float()
    return F.grid_sample(src, grid.to(src.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def axes_to_tensor(axes: Sequence[SymmetryHyperplane], device: torch.device | str | None = None) -> torch.Tensor:
    """Stack axes into a ``(B, D+1)`` tensor of rows ``[n, d]`` (index coordinates)."""
    import torch

    return torch.as_tensor(np.stack([a.as_array() for a in axes]), device=device)
