"""Figures of a pretraining run and of an evaluation: the loss curves and the estimated symmetry axes.

Both draw with matplotlib's Agg backend into one PNG each (the backend is chosen when a figure is drawn, so
importing this module changes nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from monai.transforms import EnsureChannelFirst, LoadImage, Orientation

from mfassl.files import save_figure
from mfassl.geometry import hyperplane_class

__all__ = ["loss_figure", "axis_figure"]

# the axis labels Orientation used by default before MONAI 1.6 (which warns when they are not given)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def loss_figure(rows: list[dict[str, float]], path: Path) -> None:
    """The run's losses (``loss``, ``base``, ``mirror``) and symmetry terms and schedule (``l_eq``, ``l_mid``,
    ``gate_mean``, ``w``, ``ramp``) against the iteration, from :class:`~mfassl_medical.history.RunHistory` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "base", "mirror"):
        if key in rows[0]:
            axes[0].plot(it, [r[key] for r in rows], label=key)
    axes[0].set_xlabel("iteration")
    axes[0].set_title("losses")
    axes[0].legend()
    for key in ("l_eq", "l_mid", "gate_mean", "w", "ramp"):
        if key in rows[0]:
            axes[1].plot(it, [r[key] for r in rows], label=key)
    axes[1].set_xlabel("iteration")
    axes[1].set_title("symmetry terms and schedule")
    axes[1].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def axis_figure(items: Sequence[dict[str, Any]], path: Path, max_items: int = 4) -> int:
    """Overlay each item's estimated axis on its first channel (3D: the middle axial slice).

    Args:
        items: preprocessed data-list items with ``image_axis_world`` (``(D+1,)`` world row), ``source`` (the
            file, or the files of a multi-file image: the first is drawn), ``axis_confidence``, ``axis_fallback``.
        path: the PNG.
        max_items: how many items the figure shows (the first with an axis).

    Returns:
        the number of items drawn (0: no figure written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [it for it in items if "image_axis_world" in it][:max_items]
    if not shown:
        return 0
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    for ax, item in zip(axes[0], shown):
        src = item["source"]
        first = src[0] if isinstance(src, (list, tuple)) else src
        img = LoadImage(image_only=True)(first)
        img = EnsureChannelFirst()(img)
        dims = img.ndim - 1
        if dims == 3:
            img = Orientation(axcodes="RAS", labels=RAS_LABELS)(img)
        affine = np.asarray(img.affine, dtype=np.float64)
        arr = np.asarray(img[0], dtype=np.float32)
        row = np.asarray(item["image_axis_world"], dtype=np.float64)
        world = hyperplane_class(len(row) - 1)(normal=row[:-1], offset=row[-1])
        if dims == 3:
            aff = affine if affine.shape == (4, 4) else np.eye(4)
            index = world.to_index(aff)
            k = arr.shape[2] // 2
            line = index.cut_by_slice(axis=2, index=k)
            plane = arr[:, :, k]
        else:
            aff = affine[np.ix_([0, 1, 3], [0, 1, 3])] if affine.shape == (4, 4) else affine
            line = world.to_index(aff) if len(row) == 3 else world
            plane = arr
        # 3D RAS slices: anterior up (origin lower); 2D images: row 0 at the top
        ax.imshow(plane.T, cmap="gray", origin="lower" if dims == 3 else "upper")
        # line n . (i, j) = d drawn in display coords (x = i, y = j)
        n, d = line.normal, line.offset
        h, w = plane.shape
        if abs(n[0]) >= abs(n[1]):
            js = np.array([0.0, w - 1.0])
            ax.plot((d - n[1] * js) / n[0], js, "r-", lw=1.5)
        else:
            i_s = np.array([0.0, h - 1.0])
            ax.plot(i_s, (d - n[0] * i_s) / n[1], "r-", lw=1.5)
        ax.set_xlim(0, h - 1)
        ax.set_ylim((0, w - 1) if dims == 3 else (w - 1, 0))
        conf = item.get("axis_confidence", float("nan"))
        ax.set_title(f"conf {conf:.2f}{' (fallback)' if item.get('axis_fallback') else ''}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return len(shown)
