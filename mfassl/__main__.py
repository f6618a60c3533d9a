"""``python -m mfassl export-encoder MODEL --to timm|monai|swinunetr --out OUT.pt|OUT.safetensors``.

Writes the pretrained encoder of ``MODEL`` (a bundle's ``models/model.pt`` with its ``model.json``, a training
checkpoint ``checkpoint_<iteration>.pt`` or a face ``backbone.pt``) as a plain state dict that a stock network
loads with ``strict=True`` and that gives the encoder's features, and ``OUT.json`` beside it with the stock
class, its constructor arguments and the two lines that load it (:func:`mfassl.export.export_encoder`):

- ``--to timm``: timm ``VisionTransformer`` (the 2D MFA-ViT of CheXpert and faces); features ``model(x)``;
- ``--to monai``: MONAI ``ViT`` (the 3D MFA-ViT of BraTS) with ``classification=True`` and an identity head;
  features ``net(x)[0]``;
- ``--to swinunetr``: the ``swinViT`` of MONAI ``SwinUNETR`` (the MFA-Swin); features
  ``net.swinViT(x)[-1].flatten(2).mean(-1)``; the segmentation bundle's ``pretrained_checkpoint`` takes the file.

``--format safetensors`` (or an ``OUT`` ending in ``.safetensors``) writes safetensors instead of ``torch.save``:
no pickle, read by ``safetensors.torch.load_file`` and by ``timm.create_model(...,
pretrained=True, pretrained_cfg_overlay=dict(file=OUT))``.

``--out`` is checked before MODEL is read: the weights file (``OUT.pt`` or ``OUT.safetensors``) and its sidecar
``OUT.json`` are never MODEL or its sidecar (``--out model.pt`` for ``model.pt``, ``--out m2`` for ``m2.pt`` whose
``m2.json`` would be replaced) and never one file (``--out x.json``), whatever ``--overwrite`` says; an existing
pair is replaced only when it is an earlier export (its ``OUT.json`` names the weights file), any other existing
file only with ``--overwrite``. Both files are written completely before either replaces an earlier one.

The sidecar JSON is printed to stdout; errors go to stderr with exit status 1 (``no space left on <path>`` for a
full disk, the earlier export kept), 2 for a refused ``--out`` or a bad option.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from mfassl.cli import add_overwrite_option

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mfassl", description="MFASSL core tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export-encoder", help="write a pretrained encoder for a stock timm / MONAI network",
                        description=__doc__.split("\n\n")[1])
    ex.add_argument("model", metavar="MODEL", help="models/model.pt, checkpoint_<iteration>.pt or backbone.pt")
    ex.add_argument("--to", required=True, choices=("timm", "monai", "swinunetr"), help="the stock network")
    ex.add_argument("--out", required=True,
                    help="the state dict to write (OUT.pt or OUT.safetensors; the sidecar is OUT.json)")
    ex.add_argument("--format", choices=("pt", "safetensors"), default=None,
                    help="torch.save (pt) or safetensors; default: from the suffix of --out")
    ex.add_argument("--config", default=None,
                    help="the network as JSON, {\"backbone\": \"mfa_vit\", \"config\": {...}}, when MODEL does not "
                         "record it")
    ex.add_argument("--out-channels", type=int, default=3, help="SwinUNETR output channels to state (3)")
    ex.add_argument("--no-verify", action="store_true",
                    help="skip building the stock network here and comparing its features")
    add_overwrite_option(ex, "an existing weights file (OUT) or sidecar (OUT.json) that is not an earlier export")
    ex.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from mfassl.encoder_files import EncoderLoadError
    from mfassl.export import export_encoder
    from mfassl.files import NoSpaceError, OutputRefusedError

    try:
        description = json.loads(args.config) if args.config else None
    except ValueError as err:
        print(f"error: --config is not JSON: {err}", file=sys.stderr)
        return 1
    try:
        meta = export_encoder(args.model, args.to, args.out, description=description,
                              out_channels=args.out_channels, verify=not args.no_verify, fmt=args.format,
                              overwrite=args.overwrite)
    except OutputRefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (EncoderLoadError, ValueError, NoSpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
