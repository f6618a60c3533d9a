"""The pretraining bundles' inference (``configs/inference.json``): embeddings and MFA gate maps of images.

For a folder or a list of images (or the demo data), each image goes through the bundle's preprocessing
(load, orient, resample, estimate the symmetry axis, canonicalise, resize) and the pretrained encoder:

- ``embeddings.npy``: ``(N, D)`` float32 pooled features of the plain encoder (no MFA, as downstream models
  use it);
- ``gates.npy``: ``(N, *G)`` float32 MFA gate of every left-half token on the MFA layer's grid ``G``, from the
  mirror pair about the estimated axis (how much each token took from its mirror token);
- ``index.csv``: one row per image, in the arrays' order: the source file(s), the axis confidence and whether
  the axis fell back to the image centre;
- ``gate_maps.png``: the gate maps of the first images over their left halves;
- ``bad_images.csv``: the images that could not be used (source, reason), when there are any: unreadable
  files, images whose shape differs from the others after the preprocessing, and the case folders the reader
  left out (a BraTS case lacking a modality); they are skipped, logged and listed (also under ``"bad"`` in
  ``inference.json``), and every good image is written.

The data lists ``inference.json`` names (:func:`~mfassl_medical.data.chexpert.chexpert_inference_datalist`,
:func:`~mfassl_medical.data.brats.brats_inference_datalist`) live with their readers and are re-exported here.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mfassl.encoder_files import load_encoder
from mfassl.evaluation import plot_gate_maps
from mfassl.files import atomic_write, write_json, write_text
from mfassl.options import as_bool, as_int
from mfassl.pairing import mirror_pair, pair_key_mask
from mfassl_medical.data.brats import brats_inference_datalist
from mfassl_medical.data.chexpert import IMAGE_SUFFIXES, chexpert_inference_datalist
from mfassl_medical.data.safe import excluded_items, find_medical_error, item_source
from mfassl_medical.errors import MedicalDataError

__all__ = ["IMAGE_SUFFIXES", "chexpert_inference_datalist", "brats_inference_datalist", "EmbeddingExporter"]

logger = logging.getLogger(__name__)


def _write_csv(path: Path, fieldnames: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """A CSV with a header row, written atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


class EmbeddingExporter:
    """Embeds every image of a preprocessed dataset and writes the arrays, the index and a figure.

    Args:
        encoder: the encoder (``network_def``), pretrained or loaded from ``checkpoint`` when the run starts.
        dataset: items with a canonicalised ``image`` ``(C, *S)`` at the encoder's input size.
        output_dir: where the files go.
        device: where the encoder runs.
        split_dim: the left-right spatial dimension (the mirror pairs split it).
        save_gates: also run the mirror pair through MFA and save the gate maps.
        batch_size: images per forward pass.
        figure_items: how many gate maps ``gate_maps.png`` shows.
        inferer: a MONAI ``Inferer`` that computes the features, ``inferer(images, encoder)`` (the bundles'
            ``SimpleInferer``; a ``SlidingWindowInferer`` would need an encoder with a spatial output); None calls
            the encoder directly.
        checkpoint: the encoder file (``models/model.pt``) or training checkpoint loaded strictly into ``encoder``
            when :meth:`run` starts, as MONAI's ``CheckpointLoader`` does for an engine (so the workflow parses and
            its properties can be checked before weights exist); None uses ``encoder`` as it is.
    """

    def __init__(self, encoder: nn.Module, dataset: Sequence[dict[str, Any]], output_dir: str,
                 device: torch.device | str = "cpu", split_dim: int = 0, save_gates: bool = True,
                 batch_size: int = 8, figure_items: int = 4, inferer: Callable[..., Any] | None = None,
                 checkpoint: str | os.PathLike | None = None) -> None:
        self.encoder = encoder
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.split_dim = int(split_dim)
        self.save_gates = as_bool(save_gates, "save_gates")
        self.batch_size = as_int(batch_size, "batch_size", low=1)
        self.figure_items = as_int(figure_items, "figure_items", low=0)
        self.inferer = inferer
        self.checkpoint = checkpoint

    def _source(self, index: int, fallback: Any = None) -> str:
        """The source file(s) of item ``index`` from the dataset's data list, else ``fallback`` or ``item N``."""
        data = getattr(self.dataset, "data", None)
        try:
            src = item_source(data[index]) if data is not None else None
        except Exception:  # a dataset without a data list
            src = None
        return str(src or fallback or f"item {index}")

    def _read(self, index: int) -> Any:
        """Item ``index`` of the dataset, or None for an image that cannot be used (recorded in ``self.bad``
        with its source and the reason, and logged)."""
        try:
            return self.dataset[index]
        except Exception as e:
            bad = find_medical_error(e)
            if bad is None:
                raise
            src = self._source(index, getattr(bad, "path", None))
            reason = getattr(bad, "reason", str(bad))
            logger.warning("skipping image %s: %s", src, reason)
            self.bad.append({"source": str(src), "reason": str(reason)})
            return None

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...], Any]:
        """``(B, D)`` features, ``(B, N)`` left-half gates (or None), the gate grid and the mirror pair."""
        enc = self.encoder
        x = images.to(self.device).float()
        feats = enc(x) if self.inferer is None else self.inferer(x, enc)
        if not self.save_gates:
            return feats, None, (), None
        size = tuple(x.shape[2:])
        pair = mirror_pair(x, None, mirror_size=size, split_dim=self.split_dim)
        key_mask = pair_key_mask(pair, enc.mfa_patch_size)
        out = enc.forward_paired(pair.x_l, pair.x_r, ramp=1.0, key_mask=key_mask)
        return feats, out.gate_l, enc.grid_shape(size, at_mfa=True), pair

    def run(self) -> dict[str, Any]:
        """Embed everything; returns ``{"n": ..., "embeddings": path, "gates": path, "index": path, ...}``.

        Raises:
            EncoderLoadError: ``checkpoint`` is missing, unreadable or does not fit the encoder (naming the file).
        """
        if self.checkpoint is not None:
            load_encoder(self.encoder, self.checkpoint)
        self.encoder.to(self.device).eval()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        feats, gates, rows, shown_x, shown_g = [], [], [], [], []
        grid: tuple[int, ...] = ()
        n = len(self.dataset)
        self.bad: list[dict[str, str]] = excluded_items(getattr(self.dataset, "data", None))
        shape: tuple[int, ...] | None = None  # every embedded image has the first good image's shape
        for start in tqdm(range(0, n, self.batch_size), desc="embedding", leave=False):
            items = []
            for i in range(start, min(n, start + self.batch_size)):
                it = self._read(i)
                it = it[0] if isinstance(it, list) else it
                if it is None:
                    continue
                got = tuple(torch.as_tensor(it["image"]).shape)
                shape = got if shape is None else shape
                if got != shape:
                    src = self._source(i, item_source(it))
                    reason = (f"image shape {got} after the preprocessing differs from {shape} of the other images "
                              "(channels or dimensionality the bundle does not take)")
                    logger.warning("skipping image %s: %s", src, reason)
                    self.bad.append({"source": src, "reason": reason})
                    continue
                items.append(it)
            if not items:
                continue
            x = torch.stack([torch.as_tensor(it["image"]).float() for it in items])
            f, g, grid, pair = self.embed(x)
            feats.append(f.float().cpu())
            if g is not None:
                gates.append(g.float().cpu())
                if sum(len(s) for s in shown_x) < self.figure_items:
                    shown_x.append(pair.x_l.cpu())
                    shown_g.append(g.cpu())
            for it in items:
                rows.append({"row": len(rows), "source": item_source(it) or "",
                             "axis_confidence": float(it.get("axis_confidence", float("nan"))),
                             "axis_fallback": bool(it.get("axis_fallback", False))})
        out: dict[str, Any] = {"n": len(rows), "bad": list(self.bad), "n_bad": len(self.bad)}
        if self.bad:
            _write_csv(self.output_dir / "bad_images.csv", ["source", "reason"], self.bad)
            out["bad_images"] = str(self.output_dir / "bad_images.csv")
        if not rows:
            write_json(self.output_dir / "inference.json", out, indent=2)
            raise MedicalDataError(f"none of the {n} images could be read; see {self.output_dir / 'bad_images.csv'}: "
                                   + "; ".join(f"{b['source']} ({b['reason']})" for b in self.bad[:10]))
        emb = torch.cat(feats).numpy().astype(np.float32)
        atomic_write(self.output_dir / "embeddings.npy", lambda f: np.save(f, emb))
        out["embeddings"] = str(self.output_dir / "embeddings.npy")
        out["embedding_dim"] = int(emb.shape[1])
        if gates:
            g = torch.cat(gates).reshape(len(rows), *grid).numpy().astype(np.float32)
            atomic_write(self.output_dir / "gates.npy", lambda f: np.save(f, g))
            out["gates"] = str(self.output_dir / "gates.npy")
            out["gate_grid"] = list(grid)
            out["gate_maps_png"] = str(plot_gate_maps(torch.cat(shown_x)[: self.figure_items],
                                                      torch.cat(shown_g)[: self.figure_items], grid,
                                                      self.output_dir / "gate_maps.png"))
        _write_csv(self.output_dir / "index.csv", ["row", "source", "axis_confidence", "axis_fallback"], rows)
        out["index"] = str(self.output_dir / "index.csv")
        write_json(self.output_dir / "inference.json", out, indent=2)
        logger.info("embedded %d images (%d-d) -> %s%s", out["n"], out["embedding_dim"], out["embeddings"],
                    f"; gate maps {tuple(grid)} -> {out['gates']}, figure {out['gate_maps_png']}" if gates else "")
        if self.bad:
            logger.warning("skipped %d image(s) that cannot be read (listed in %s): %s", len(self.bad),
                           out["bad_images"], "; ".join(f"{b['source']} ({b['reason']})" for b in self.bad[:10]))
        return out
