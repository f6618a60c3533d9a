"""Loading that fails loudly on bad files: MONAI ``LoadImage`` behind header checks, and image checks.

Bad input is never passed on silently:

* :func:`check_image` / :class:`CheckImage` raise :class:`~mfassl_medical.errors.MedicalDataError`
  for wrong dimensionality, NaN/Inf values and constant images, naming the file;
* :class:`SafeLoadImaged` wraps MONAI ``LoadImage`` so a missing, corrupt or truncated NIfTI/DICOM/PNG
  raises a ``MedicalDataError`` naming the file and the reader's complaint; headers are checked first
  (:func:`check_image_header`: voxel budget, truncated NIfTI, modalities on one grid), the one file at
  fault of a multi-file image is named (also the one file holding NaN/Inf), RGBA/LA images are composited on
  black, images can be converted to the channel count a model takes (``channels``) and a single-frame 2D
  image read as ``(C, H, W, 1)`` loses its size-1 axis (``spatial_dims=2``); a DICOM series with a bad slice
  is refused naming the slice, unless missing slices are allowed (``on_bad_slice="warn"``).

To skip (and count) such samples in a long run, wrap the dataset in
:class:`~mfassl_medical.data.SkipBadSamples`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, SqueezeDim, Transform
from monai.utils import ensure_tuple_rep
from PIL import Image
from pydicom.errors import InvalidDicomError

from mfassl.options import as_int, is_unset
from mfassl_medical.errors import (
    CorruptImageError,
    ImageMismatchError,
    ImageTooLargeError,
    MedicalDataError,
)

__all__ = [
    "check_image",
    "CheckImage",
    "CheckImaged",
    "CheckImageD",
    "CheckImageDict",
    "SafeLoadImage",
    "SafeLoadImaged",
    "SafeLoadImageD",
    "SafeLoadImageDict",
    "DEFAULT_MAX_VOXELS",
    "MAX_VOXELS_ENV",
    "check_image_header",
    "composite_alpha",
    "convert_channels",
    "BAD_SLICE_POLICIES",
    "image_header",
    "voxel_budget",
]

logger = logging.getLogger(__name__)


def _source(img: Any, path: Any = None) -> str | None:
    if path is not None:
        return str(path)
    if isinstance(img, MetaTensor):
        src = img.meta.get("filename_or_obj")
        if src is not None and src != "":
            return str(src)
    return None


def check_image(img: Any, path: str | os.PathLike | Sequence | None = None, spatial_dims: int | None = None,
                channel_first: bool = True, allow_constant: bool = False) -> Any:
    """Raise for an image that cannot be used; return it unchanged otherwise.

    Args:
        img: ``(C, *S)`` (``channel_first``) or ``(*S)`` array or tensor.
        path: the file it came from, for the message (default: the MetaTensor's ``filename_or_obj``).
        spatial_dims: expected number of spatial dims (2 or 3); None skips the check.
        channel_first: whether ``img`` has a leading channel dim.
        allow_constant: accept images with a single value (e.g. empty label maps).

    Raises:
        MedicalDataError: wrong dimensionality, empty, non-finite values, or constant.
    """
    src = _source(img, path)
    shape = tuple(img.shape)
    spatial = shape[1:] if channel_first else shape
    if spatial_dims is not None and len(spatial) != spatial_dims:
        raise MedicalDataError(f"expected {spatial_dims} spatial dims{' after the channel dim' if channel_first else ''}, "
                               f"got shape {shape}", src)
    if int(np.prod(shape)) == 0:
        raise MedicalDataError(f"image is empty, shape {shape}", src)
    t = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_nan = int(torch.isnan(t).sum())
            raise MedicalDataError(f"image has {int(bad.sum())} non-finite values ({n_nan} NaN) of {t.numel()}", src)
    if not allow_constant:
        lo, hi = float(t.min()), float(t.max())
        if hi - lo <= 0.0:
            raise MedicalDataError(f"image is constant (every value is {lo:g})", src)
    return img


class CheckImage(Transform):
    """Transform form of :func:`check_image` (returns the image unchanged or raises)."""

    def __init__(self, spatial_dims: int | None = None, channel_first: bool = True,
                 allow_constant: bool = False) -> None:
        self.spatial_dims = spatial_dims
        self.channel_first = channel_first
        self.allow_constant = allow_constant

    def __call__(self, img: Any, path: Any = None) -> Any:
        return check_image(img, path, self.spatial_dims, self.channel_first, self.allow_constant)


class CheckImaged(MapTransform):
    """Dictionary form of :class:`CheckImage`."""

    def __init__(self, keys: KeysCollection, spatial_dims: int | None = None, channel_first: bool = True,
                 allow_constant: bool | Sequence[bool] = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.channel_first = channel_first
        self.allow_constant = ensure_tuple_rep(allow_constant, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, const in self.key_iterator(d, self.allow_constant):
            check_image(d[key], None, self.spatial_dims, self.channel_first, const)
        return d


DEFAULT_MAX_VOXELS: int = 512 ** 3
"""Default voxel budget of :class:`SafeLoadImage` (512^3 = 134M voxels, 0.5 GB as float32): above any real
MRI/CT volume or radiograph. ``MFASSL_MAX_VOXELS`` in the environment overrides it."""

MAX_VOXELS_ENV = "MFASSL_MAX_VOXELS"

_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".mgh", ".mgz")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_ALPHA_MODES = {"RGBA": "RGB", "LA": "L"}


def voxel_budget(max_voxels: int | str | None = None) -> int:
    """The voxel budget in force: ``max_voxels`` (int or numeric string), else ``$MFASSL_MAX_VOXELS``,
    else :data:`DEFAULT_MAX_VOXELS`.

    Raises:
        ValueError: naming ``max_voxels`` (or the variable) for a value that is not a positive integer.
    """
    name, value = "max_voxels", max_voxels
    if is_unset(value):
        env = os.environ.get(MAX_VOXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_VOXELS
        name, value = MAX_VOXELS_ENV, env
    try:
        n = int(float(value)) if isinstance(value, str) else int(value)
        ok = float(value) == n and n > 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive whole number of voxels, got {value!r}.")
    return n


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _dicom_info(path: Path) -> tuple[tuple[int, ...], str | None] | None:
    """``(shape, problem)`` of one DICOM file from its header (the pixel data is not read), None when
    the file is not DICOM. ``problem`` says why the slice is truncated or unreadable, else None."""
    magic = False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            magic = fh.read(4) == b"DICM"
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                return None
            pixel_at = fh.tell()
    except Exception as e:  # a cut-off header: pydicom raises EOFError, struct.error, ...
        return ((), f"cannot be read ({type(e).__name__}: {e})") if magic else None
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:  # DICOMDIR, structured reports: not an image slice
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    shape = (int(frames), int(rows), int(cols), samples)
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts is not None and getattr(ts, "is_compressed", False):
        return shape, None
    bits = int(ds.get("BitsAllocated", 16) or 16)
    expected = (int(rows) * int(cols) * samples * frames * bits + 7) // 8
    size = path.stat().st_size
    element_header = 8 if getattr(ts, "is_implicit_VR", False) else 12  # tag + (VR, reserved) + length
    available = max(0, size - pixel_at - element_header)
    if available < expected:
        return shape, f"is truncated: its pixel data holds {available} of {expected} bytes"
    return shape, None


def image_header(path: str | os.PathLike) -> dict[str, Any] | None:
    """What a file's header claims, read without loading the data.

    Args:
        path: a NIfTI/Analyze/MGH file, a PNG/JPEG/TIFF/BMP, a DICOM file or a DICOM series folder.

    Returns:
        ``{"shape": (...), "voxels": int}`` plus ``"affine"`` ``(4, 4)`` (NIfTI), ``"mode"`` (PIL) or
        ``"slices"``: ``[(file, problem or None), ...]`` (DICOM); None for a format it does not know.

    Raises:
        CorruptImageError: the header cannot be read, or an uncompressed NIfTI is shorter than its
            header says (truncated); the message names the file.
    """
    p = Path(path)
    if p.is_dir():
        slices, shapes = [], []
        for f in sorted(q for q in p.iterdir() if q.is_file()):
            info = _dicom_info(f)
            if info is None:
                continue
            shape, problem = info
            slices.append((str(f), problem))
            if shape:
                shapes.append(shape)
        if not slices:
            return None
        voxels = sum(int(np.prod(s[:3])) for s in shapes)
        return {"shape": (len(slices), *(shapes[0][1:3] if shapes else ())), "voxels": voxels, "slices": slices}
    if _has_suffix(p, _NIFTI_SUFFIXES):
        try:
            img = nib.load(str(p))
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=np.float64)
            hdr = img.header
        except Exception as e:
            raise CorruptImageError(f"cannot read the NIfTI header ({type(e).__name__}: {e}); the file may be "
                                    f"corrupt, truncated or not an image", p) from e
        voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
        if p.name.lower().endswith(".nii") and hasattr(hdr, "get_data_offset"):
            need = int(hdr.get_data_offset()) + voxels * int(np.dtype(hdr.get_data_dtype()).itemsize)
            size = p.stat().st_size
            if size < need and voxels > 0:
                return {"shape": shape, "voxels": voxels, "affine": affine,
                        "truncated": f"the file is truncated: its header claims {need} bytes (shape {shape}, "
                                     f"{hdr.get_data_dtype()}), the file holds {size}"}
        return {"shape": shape, "voxels": voxels, "affine": affine}
    if _has_suffix(p, _PIL_SUFFIXES):
        try:
            with Image.open(p) as im:
                w, h, mode = int(im.width), int(im.height), str(im.mode)
                bands = len(im.getbands())
        except Exception as e:
            raise CorruptImageError(f"cannot read the image header ({type(e).__name__}: {e}); the file may be "
                                    f"corrupt, truncated or not an image", p) from e
        return {"shape": (w, h, bands), "voxels": w * h, "mode": mode}
    if p.name.lower().endswith(".dcm"):
        info = _dicom_info(p)
        if info is None:
            return None
        shape, problem = info
        return {"shape": shape, "voxels": int(np.prod(shape[:3])) if shape else 0, "slices": [(str(p), problem)]}
    return None


def check_image_header(path: str | os.PathLike, max_voxels: int | str | None = None) -> dict[str, Any] | None:
    """Refuse a file from its header before any voxel is read; return :func:`image_header`'s answer.

    Raises:
        ImageTooLargeError: the header claims more voxels than the budget (:func:`voxel_budget`).
        CorruptImageError: an unreadable header, an uncompressed NIfTI shorter than its header says, or
            a single DICOM file whose pixel data is cut off.
    """
    budget = voxel_budget(max_voxels)
    info = image_header(path)
    if info is None:
        return None
    if info["voxels"] > budget:
        raise ImageTooLargeError(f"the header claims shape {tuple(info['shape'])} = {info['voxels']:,} voxels, over the "
                                 f"voxel budget of {budget:,} (raise it with max_voxels= or ${MAX_VOXELS_ENV} if "
                                 f"the file is real)", path, shape=tuple(info["shape"]), voxels=info["voxels"],
                                 budget=budget)
    if "truncated" in info:
        raise CorruptImageError(info["truncated"], path)
    if not Path(path).is_dir():
        for _, problem in info.get("slices", []):
            if problem:
                raise CorruptImageError(f"the DICOM file {problem}", path)
    return info


def composite_alpha(img: Any, channel_dim: int = 0, mode: str | None = None) -> Any:
    """Composite an image with an alpha channel (RGBA, LA) on black: ``colour * alpha / 255``, alpha dropped.

    Where alpha is opaque (255) the values are those of the colour channels unchanged; transparent pixels
    become 0 (background). So the axis of an RGBA image equals that of its RGB / grey version wherever
    it is opaque, instead of the alpha plane being averaged in as intensity.

    Args:
        img: ``(C, *S)`` (``channel_dim=0``) or ``(*S, C)`` (``channel_dim=-1``) array/tensor/MetaTensor
            with the alpha channel last among the channels, 8-bit range (0-255).
        channel_dim: where the channels are.
        mode: the PIL mode (for the MetaTensor's ``mode`` entry afterwards).

    Returns:
        the image with ``C - 1`` channels, same type (MetaTensor meta kept, ``mode`` updated).
    """
    t = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
    t = torch.movedim(t, channel_dim, 0)
    colour, alpha = t[:-1].to(torch.float32), t[-1:].to(torch.float32)
    out = torch.movedim(colour * (alpha / 255.0).clamp(0.0, 1.0), 0, channel_dim)
    if isinstance(img, MetaTensor):
        meta = {k: v for k, v in img.meta.items() if k != "affine"}  # the affine is passed on its own
        if mode is not None:
            meta["mode"] = _ALPHA_MODES.get(mode, mode)
        meta["alpha"] = "composited on black"
        return MetaTensor(out, affine=img.affine, meta=meta)
    if isinstance(img, np.ndarray):
        return out.numpy()
    return out


#: ITU-R BT.601 luma weights: what PIL's ``convert("L")`` (and most viewers) make of an RGB image.
_LUMA = (0.299, 0.587, 0.114)


def convert_channels(img: Any, channels: int, path: str | os.PathLike | None = None) -> Any:
    """Bring a channel-first image to ``channels`` channels, the way a model with that input expects it.

    * 3 (RGB) -> 1: the luma ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, PIL's ``convert("L")``);
    * 1 -> 3: the grey channel repeated;
    * the same count: unchanged.

    The conversion is recorded in the MetaTensor's meta (``"channels_converted": "3 -> 1 (luma)"``). Composite
    an alpha channel first (:func:`composite_alpha`; :class:`SafeLoadImage` does).

    Args:
        img: ``(C, *S)`` array, tensor or MetaTensor.
        channels: the channel count wanted (1 or 3 convert; any other must already match).
        path: the file, for the error.

    Returns:
        ``(channels, *S)``, the same type (MetaTensor meta kept).

    Raises:
        MedicalDataError: any other pair of counts, naming the file.
    """
    have = int(img.shape[0])
    if have == channels:
        return img
    t = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
    if have == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=torch.float32).reshape(3, *([1] * (t.dim() - 1)))
        out, how = (t.to(torch.float32) * w).sum(0, keepdim=True), "3 -> 1 (luma 0.299 R + 0.587 G + 0.114 B)"
    elif have == 1 and channels == 3:
        out, how = t.expand(3, *t.shape[1:]).clone(), "1 -> 3 (grey repeated)"
    else:
        raise MedicalDataError(f"the image has {have} channels, the model takes {channels} (only RGB -> grey and "
                               f"grey -> RGB are converted)", _source(img, path))
    if isinstance(img, MetaTensor):
        meta = {k: v for k, v in img.meta.items() if k != "affine"}  # the affine is passed on its own
        meta["channels_converted"] = how
        return MetaTensor(out, affine=img.affine, meta=meta)
    return out.numpy() if isinstance(img, np.ndarray) else out


def _drop_single_frame_axes(img: Any, spatial_dims: int) -> Any:
    """``(C, H, W, 1)`` -> ``(C, H, W)`` (affine row and column dropped too) when ``spatial_dims`` is 2: a
    single-frame DICOM or a one-slice volume read as 3D. Trailing size-1 spatial axes only; anything else is
    returned unchanged (and :func:`check_image` then names the dimensionality)."""
    while img.dim() - 1 > spatial_dims and int(img.shape[-1]) == 1:
        img = SqueezeDim(dim=img.dim() - 1, update_meta=True)(img)
    return img


def _nonfinite_file(img: Any, names: Sequence[Any]) -> str | None:
    """The file of the first channel holding NaN/Inf when each of ``names`` gave one channel, else None."""
    if len(names) < 2 or int(img.shape[0]) != len(names):
        return None
    t = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
    if not t.is_floating_point():
        return None
    for k, name in enumerate(names):
        if not bool(torch.isfinite(t[k]).all()):
            return str(name)
    return None


BAD_SLICE_POLICIES = ("raise", "warn")
"""What :class:`SafeLoadImage` does with a truncated/unreadable slice of a DICOM series folder: ``"raise"``
(default: the series is refused, naming the slice) or ``"warn"`` (missing slices allowed: read without them,
a warning names them and the image's meta lists them under ``"missing_slices"``)."""


def _odd_one_out(values: dict[str, Any], same: Callable[[Any, Any], bool]) -> tuple[str, str] | None:
    """``(odd file, reference file)`` when the values of ``values`` (file -> value) are not all the same:
    the odd file is the first that differs from the most common value (ties: from the first file's)."""
    names = list(values)
    if all(same(values[names[0]], values[n]) for n in names[1:]):
        return None
    support = {n: sum(same(values[n], values[m]) for m in names) for n in names}
    ref = max(names, key=lambda n: (support[n], -names.index(n)))
    odd = next(n for n in names if not same(values[n], values[ref]))
    return odd, ref


class SafeLoadImage(Transform):
    """MONAI ``LoadImage`` that refuses bad files before and after reading them, naming the one file at fault.

    Before reading, each file's header is checked (:func:`check_image_header`): a header claiming more
    voxels than ``max_voxels`` is refused without allocating, an uncompressed NIfTI shorter than its
    header says is refused as truncated, and the files of a multi-file image (e.g. the 4 BraTS
    modalities) must agree on spatial shape and affine (the odd one out is named). A failure of the
    reader becomes a :class:`CorruptImageError` naming the file (for several files, each is read alone
    to find the one at fault). An image with an alpha channel (RGBA/LA PNG) is composited on black
    (:func:`composite_alpha`). With ``spatial_dims=2`` a single-frame image read as ``(C, H, W, 1)`` (a
    one-frame DICOM file) becomes ``(C, H, W)`` with a 2D affine; with ``channels`` the image is brought to
    that many channels (:func:`convert_channels`: RGB -> grey luma, grey -> RGB). A DICOM series folder with
    a truncated or unreadable slice is refused naming the slice (``on_bad_slice="warn"`` allows missing
    slices: it is read without them, a warning names them and ``meta["missing_slices"]`` lists them).
    Finally the result is checked with :func:`check_image`; NaN/Inf in one file of a multi-file image names
    that file.

    Args:
        reader: passed to ``LoadImage`` (None: MONAI picks by suffix; NIfTI -> Nibabel, DICOM -> ITK).
        ensure_channel_first: add/move the channel dim first (output ``(C, *S)``).
        spatial_dims: expected spatial dims after loading (2 or 3); None skips the check. With 2, trailing
            size-1 spatial axes are dropped first (a single-frame DICOM).
        allow_constant: accept constant images (label maps of healthy cases).
        check: run :func:`check_image` at all.
        max_voxels: the voxel budget of one load (all files of a multi-file image together); None:
            ``$MFASSL_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`. An int or a numeric string.
        on_bad_slice: ``"raise"`` (default) or ``"warn"`` for a truncated/unreadable slice in a DICOM series
            folder (:data:`BAD_SLICE_POLICIES`; a series that cannot be assembled always raises, naming the bad
            slices).
        channels: the channel count of the output (e.g. a bundle's ``in_channels``); None keeps what the file
            has. Needs ``ensure_channel_first``.
        kwargs: further ``LoadImage`` arguments (``dtype``, ``simple_keys``, ...).

    Output: a MetaTensor ``(C, *S)`` with its affine (``ensure_channel_first=True``).

    Raises:
        MedicalDataError: (or one of its subclasses in :mod:`mfassl_medical.errors`) naming the file.
    """

    def __init__(self, reader: Any = None, ensure_channel_first: bool = True, spatial_dims: int | None = None,
                 allow_constant: bool = False, check: bool = True, max_voxels: int | str | None = None,
                 on_bad_slice: str = "raise", channels: int | str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("image_only", True)
        if on_bad_slice not in BAD_SLICE_POLICIES:
            raise ValueError(f"on_bad_slice must be one of {BAD_SLICE_POLICIES}, got {on_bad_slice!r}.")
        if not is_unset(channels):
            channels = as_int(channels, "channels", low=1)
            if not ensure_channel_first:
                raise ValueError("channels= needs ensure_channel_first=True.")
        if not is_unset(spatial_dims):
            spatial_dims = as_int(spatial_dims, "spatial_dims", low=1)
        self.loader = LoadImage(reader=reader, ensure_channel_first=ensure_channel_first, **kwargs)
        self.reader = reader
        self.ensure_channel_first = ensure_channel_first
        self.spatial_dims = None if is_unset(spatial_dims) else spatial_dims
        self.allow_constant = allow_constant
        self.check = check
        self.max_voxels = None if max_voxels is None else voxel_budget(max_voxels)
        self.on_bad_slice = on_bad_slice
        self.channels = None if is_unset(channels) else channels

    def _check_headers(self, names: list[Any]) -> dict[str, dict[str, Any] | None]:
        budget = voxel_budget(self.max_voxels)
        headers = {str(n): check_image_header(n, budget) for n in names}
        total = sum(h["voxels"] for h in headers.values() if h is not None)
        if len(names) > 1 and total > budget:
            raise ImageTooLargeError(f"the {len(names)} files together claim {total:,} voxels, over the voxel budget "
                                     f"of {budget:,} (max_voxels= or ${MAX_VOXELS_ENV})", ", ".join(headers),
                                     shape=tuple(tuple(h["shape"]) for h in headers.values() if h), voxels=total,
                                     budget=budget)
        known = {n: h for n, h in headers.items() if h is not None and "affine" in h}
        if len(known) > 1:
            shapes = {n: tuple(h["shape"][:3]) for n, h in known.items()}
            odd = _odd_one_out(shapes, lambda a, b: a == b)
            if odd is not None:
                raise ImageMismatchError(f"spatial shape {shapes[odd[0]]} differs from {shapes[odd[1]]} of {odd[1]} "
                                         f"(the files of one image must share a grid)", odd[0], shapes=shapes,
                                         reference=odd[1])
            affines = {n: h["affine"] for n, h in known.items()}
            odd = _odd_one_out(affines, lambda a, b: a.shape == b.shape and bool(np.allclose(a, b)))
            if odd is not None:
                raise ImageMismatchError(f"affine {np.round(affines[odd[0]], 4).tolist()} differs from "
                                         f"{np.round(affines[odd[1]], 4).tolist()} of {odd[1]} (the files of one "
                                         f"image must share a grid)", odd[0], shapes=shapes, reference=odd[1])
        return headers

    def _blame(self, names: list[Any], error: BaseException) -> MedicalDataError:
        """The error naming the one file at fault of a failed multi-file load (each file read alone)."""
        single = LoadImage(reader=self.reader, image_only=True, ensure_channel_first=self.ensure_channel_first)
        shapes: dict[str, tuple[int, ...]] = {}
        for n in names:
            try:
                shapes[str(n)] = tuple(int(s) for s in single(n).shape)
            except Exception as e:
                cause = _root_cause(e)
                return CorruptImageError(f"cannot read the image ({type(cause).__name__}: {cause}); the file may be "
                                         f"corrupt, truncated or not an image (the other files of this image read "
                                         f"alone)", n)
        odd = _odd_one_out(shapes, lambda a, b: a == b)
        if odd is not None:
            return ImageMismatchError(f"shape {shapes[odd[0]]} differs from {shapes[odd[1]]} of {odd[1]} (the files "
                                      f"of one image must share a grid)", odd[0], shapes=shapes, reference=odd[1])
        cause = _root_cause(error)
        return CorruptImageError(f"the files read alone but not together ({type(cause).__name__}: {cause})",
                                 ", ".join(map(str, names)))

    def __call__(self, filename: Any) -> Any:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        shown = str(names[0]) if len(names) == 1 else ", ".join(map(str, names))
        for n in names:
            p = Path(n)
            if not p.exists():
                raise MedicalDataError("file not found", n)
            if p.is_file() and p.stat().st_size == 0:
                raise MedicalDataError("file is empty (0 bytes)", n)
        headers = self._check_headers(names)
        series = headers[str(names[0])] if len(names) == 1 and Path(names[0]).is_dir() else None
        bad_slices = [(f, why) for f, why in (series or {}).get("slices", []) if why]
        if bad_slices and self.on_bad_slice == "raise":
            raise CorruptImageError(f"DICOM slice {bad_slices[0][0]} {bad_slices[0][1]}"
                                    + (f" (and {len(bad_slices) - 1} more bad slice(s))" if len(bad_slices) > 1 else "")
                                    + "; the series is refused (allow missing slices with on_bad_slice='warn', "
                                      "--allow-missing-slices on the command line)", names[0])
        try:
            img = self.loader(filename)
        except Exception as e:  # readers raise many types (RuntimeError, EOFError, zlib.error, InvalidDicomError...)
            if len(names) > 1:
                raise self._blame(names, e) from e
            if bad_slices:
                raise CorruptImageError(f"cannot assemble the DICOM series: slice {bad_slices[0][0]} "
                                        f"{bad_slices[0][1]}", names[0]) from e
            cause = _root_cause(e)
            raise CorruptImageError(f"cannot read the image ({type(cause).__name__}: {cause}); the file may be "
                                    f"corrupt, truncated or not an image", shown) from e
        if bad_slices:
            logger.warning("%s: DICOM series read without %d bad slice file(s) of %d (missing slices allowed; read "
                           "shape %s): %s", names[0], len(bad_slices), len(series["slices"]), tuple(img.shape),
                           "; ".join(f"{f} {why}" for f, why in bad_slices[:5]))
            if isinstance(img, MetaTensor):
                img.meta["missing_slices"] = [f"{f} {why}" for f, why in bad_slices]
        mode = img.meta.get("mode") if isinstance(img, MetaTensor) else None
        if len(names) == 1 and isinstance(mode, str) and mode in _ALPHA_MODES:
            img = composite_alpha(img, 0 if self.ensure_channel_first else -1, mode)
        if self.spatial_dims == 2 and self.ensure_channel_first and isinstance(img, torch.Tensor):
            img = _drop_single_frame_axes(img, 2)
        if self.channels is not None:
            img = convert_channels(img, self.channels, shown)
        if self.check:
            odd = _nonfinite_file(img, names)
            if odd is not None:
                k = [str(n) for n in names].index(odd)
                check_image(img[k:k + 1], odd, None, True, allow_constant=True)
            check_image(img, shown, self.spatial_dims, True, self.allow_constant)
        return img


def _root_cause(e: BaseException) -> BaseException:
    cause = e
    while cause.__cause__ is not None and isinstance(cause, RuntimeError):
        cause = cause.__cause__
    return cause


class SafeLoadImaged(MapTransform):
    """Dictionary form of :class:`SafeLoadImage` (use in place of ``LoadImaged`` + ``EnsureChannelFirstd``).

    Args:
        keys: keys holding a path (or a list of paths, e.g. the 4 BraTS modalities, stacked as channels).
        reader, ensure_channel_first, spatial_dims, check: see :class:`SafeLoadImage`.
        allow_constant: per key or one for all (True for label maps).
        allow_missing_keys: do not raise when a key is absent.
        kwargs: ``max_voxels``, ``on_bad_slice``, ``channels`` (see :class:`SafeLoadImage`) and further
            ``LoadImage`` arguments.

    Raises:
        MedicalDataError: naming the file, for a missing/corrupt/truncated file, wrong dims, NaN/Inf or
            constant image. Wrap the dataset in :class:`~mfassl_medical.data.SkipBadSamples` to skip such samples
            in a run.
    """

    def __init__(self, keys: KeysCollection, reader: Any = None, ensure_channel_first: bool = True,
                 spatial_dims: int | None = None, allow_constant: bool | Sequence[bool] = False,
                 check: bool = True, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        consts = ensure_tuple_rep(allow_constant, len(self.keys))
        self.loaders = {k: SafeLoadImage(reader, ensure_channel_first, spatial_dims, c, check, **kwargs)
                        for k, c in zip(self.keys, consts)}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key])
        return d


CheckImageD = CheckImageDict = CheckImaged
SafeLoadImageD = SafeLoadImageDict = SafeLoadImaged
