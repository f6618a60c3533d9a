"""``python -m mfassl_faces demo|pretrain|benchmark|probe ...``: data, pretraining and evaluation.

- ``demo``: build the synthetic demo faces (300W layout) in ``--out``.
- ``pretrain``: MFASSL on face crops through the shared engine (:func:`mfassl.engine.create_trainer`):
  progress bar, TensorBoard, checkpoints, ``--resume auto``; under ``torchrun`` it runs distributed
  like the bundles. The mirror axis of each crop comes from its landmarks. Writes ``backbone.pt``.
- ``benchmark``: the landmark benchmark (:func:`mfassl_faces.benchmark.run_landmark_benchmark`): ``--split``
  picks a random split of ``--data`` or 300W's standard one (:mod:`mfassl_faces.protocols`), ``--threshold``
  and ``--normalization`` the paper conventions; it prints a table (NME in percent, per subset) and then
  one JSON line, and writes ``landmark_benchmark.json``, ``ced.png`` and ``predictions.jsonl``.
- ``probe``: the CelebA-HQ attribute probe (:func:`mfassl_faces.benchmark.run_attribute_probe`).

Each command has its entry function for ``python -m mfassl_faces`` (:func:`demo_main`, :func:`pretrain_main`,
:func:`benchmark_main`, :func:`probe_main`: the arguments after the command name); :func:`main` takes the
command name first.

The demo set lives in ``$MFASSL_FACES_DEMO_DIR`` if set, else ``~/.cache/mfassl/faces_demo``
(:func:`mfassl_faces.demo.default_demo_dir`).

Landmark data: ``--data DIR`` (a 300W-layout folder; default the demo set, built if missing),
``--wflw-train FILE --wflw-test FILE --wflw-images DIR``, or ``--images DIR`` (any image folder, e.g.
CelebA's ``img_align_celeba``) whose landmarks come from the dataset's annotations where they exist
(``--celeba-landmarks list_landmarks_align_celeba.txt``, ``.pts`` beside an image), then from
``--landmarks-file FILE`` (the output of ``python -m mfassl_faces landmarks``), and only for the images
still without from the detector ``--landmark-source`` (default dlib), whose answers are added to that
file (default ``OUT/landmarks.jsonl``) so they are computed once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mfassl.cli import json_line
from mfassl_faces.cli_options import NORMALIZATION_NAMES, check_device, float_arg, int_arg

if TYPE_CHECKING:  # torch is imported when a command runs, so that --help stays fast
    import torch

logger = logging.getLogger("mfassl_faces.cli")

DEMO_DIR_HELP = "$MFASSL_FACES_DEMO_DIR if set, else ~/.cache/mfassl/faces_demo"


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument("--checkpoint", help="backbone.pt from 'pretrain', or an engine checkpoint_<N>.pt")
    g.add_argument("--backbone", default="mfa_vit", choices=("mfa_vit", "mfa_swin"),
                   help="mfa_vit (2D ViT) or mfa_swin (2D Swin: 4 stages of max(1, depth // 4) blocks, "
                        "heads num_heads // 4 doubling per stage, patch min(patch_size, 4), window --window-size)")
    g.add_argument("--size", type=int_arg("--size", low=8, high=4096), default=64,
                   help="crop / image side in pixels, a multiple of --patch-size for mfa_vit (64)")
    g.add_argument("--patch-size", type=int_arg("--patch-size", low=1, high=512), default=16)
    g.add_argument("--embed-dim", type=int_arg("--embed-dim", low=1), default=64,
                   help="a multiple of --num-heads (64)")
    g.add_argument("--depth", type=int_arg("--depth", low=1), default=4)
    g.add_argument("--num-heads", type=int_arg("--num-heads", low=1), default=4)
    g.add_argument("--window-size", type=int_arg("--window-size", low=1), default=4, help="Swin window (mfa_swin only)")


def check_task_args(args: argparse.Namespace) -> None:
    """Check the options of ``pretrain``, ``benchmark`` and ``probe`` before any file is read: the encoder
    sizes (:func:`check_backbone_args`), ``--device`` (resolved: ``cuda`` when available, else ``cpu``),
    ``--split`` against the data options, and FAN on a GPU with several landmark workers.

    Raises:
        ValueError: naming the options (:func:`main` turns it into a usage error, exit status 2).
    """
    check_backbone_args(args)
    args.device = check_device(args.device)
    split = getattr(args, "split", "random")
    if split != "random" and (not args.data or args.wflw_train or args.wflw_test or args.images):
        raise ValueError(f"--split {split} reads --data, the 300W root (afw/, helen/, lfpw/, ibug/), and no "
                         "--wflw-* or --images.")
    if getattr(args, "landmark_source", None) == "fan" and args.images and args.device.startswith("cuda") \
            and args.landmark_workers > 1:
        raise ValueError(f"FAN on {args.device} runs in one process; drop --landmark-workers {args.landmark_workers} "
                         "(forked workers cannot share the GPU).")


def check_backbone_args(args: argparse.Namespace) -> None:
    """Refuse encoder sizes that cannot build a network, before any file is read.

    Raises:
        ValueError: naming the options (the caller turns it into a usage error, exit status 2).
    """
    if args.backbone == "mfa_vit":
        if args.size % args.patch_size:
            raise ValueError(f"--size {args.size} must be a multiple of --patch-size {args.patch_size} for mfa_vit.")
        if args.embed_dim % args.num_heads:
            raise ValueError(f"--embed-dim {args.embed_dim} must be a multiple of --num-heads {args.num_heads}.")
    else:
        heads = max(1, args.num_heads // 4)
        if args.embed_dim % heads:
            raise ValueError(f"--embed-dim {args.embed_dim} must be divisible by the first stage's {heads} heads.")


def _add_landmark_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("landmark data")
    g.add_argument("--data", help=f"300W-layout folder (<name>.png + <name>.pts); default the demo set, built if missing, "
                        f"in {DEMO_DIR_HELP}")
    g.add_argument("--wflw-train", help="WFLW list_98pt_rect_attr_train.txt")
    g.add_argument("--wflw-test", help="WFLW list_98pt_rect_attr_test.txt")
    g.add_argument("--wflw-images", help="WFLW_images folder")
    g.add_argument("--test-fraction", type=float_arg("--test-fraction", 0.01, 0.99), default=0.25,
                   help="test share of a --data or --images folder, in [0.01, 0.99] (0.25)")
    g.add_argument("--images", help="image folder; landmarks from annotations, --landmarks-file, then the detector")
    g.add_argument("--celeba-landmarks", help="CelebA list_landmarks_align_celeba.txt for the --images folder")
    g.add_argument("--landmarks-file", help="landmarks JSON lines (python -m mfassl_faces landmarks); detector "
                                            "answers are added to it (default OUT/landmarks.jsonl)")
    g.add_argument("--landmark-source", default="dlib", choices=("dlib", "fan", "none"),
                   help="detector for --images without landmarks; 'none' leaves them out (dlib)")
    g.add_argument("--landmark-workers", type=int_arg("--landmark-workers", low=0, high=256), default=1,
                   help="detector processes (1)")
    g.add_argument("--fan-weights", help="FAN weights folder (--landmark-source fan)")
    g.add_argument("--overwrite", action="store_true",
                   help="let the detector start a new --landmarks-file in place of an existing file that is not a "
                        "landmarks file (an input is never written over)")


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("landmark metrics")
    g.add_argument("--threshold", type=float_arg("--threshold", 1e-6, 1.0), default=0.1,
                   help="NME threshold of the failure rate and the AUC (0.1; 0.08 is also common, e.g. on "
                        "300W's private set)")
    g.add_argument("--normalization", default="inter-ocular", choices=NORMALIZATION_NAMES,
                   help="NME normaliser: inter-ocular (outer eye corners, the default: WFLW and most 300W papers), "
                        "inter-pupil (eye centres), box (sqrt(w*h) of the ground-truth landmarks' box)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--seed", type=int_arg("--seed", low=0), default=0)
    p.add_argument("--device", default=None, help="torch device of the encoder and of FAN (--landmark-source fan): "
                                                  "cpu, cuda, cuda:1... (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (training, landmark detection)")
    p.add_argument("-v", "--verbose", action="store_true")


def _add_training_args(p: argparse.ArgumentParser, epochs: int, lr: float, batch_size: int | None,
                       lr_help: str = "learning rate") -> None:
    p.add_argument("--epochs", type=int_arg("--epochs", low=1), default=epochs, help=f"({epochs})")
    p.add_argument("--lr", type=float_arg("--lr", low=0.0), default=lr, help=f"{lr_help} ({lr:g})")
    if batch_size is not None:
        p.add_argument("--batch-size", type=int_arg("--batch-size", low=1), default=batch_size,
                       help=f"({batch_size})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mfassl_faces", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build the synthetic demo faces")
    d.add_argument("--out", default=None, help=f"folder of the demo set (default {DEMO_DIR_HELP})")
    d.add_argument("--n", type=int, default=8, help="samples per source face (8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that holds other files and no demo manifest (files of the "
                        "demo's names are replaced, the others kept)")
    d.add_argument("-v", "--verbose", action="store_true")

    pt = sub.add_parser("pretrain", help="MFASSL pretraining on face crops")
    _add_backbone_args(pt)
    _add_landmark_data_args(pt)
    _common(pt)
    pt.add_argument("--objective", default="dino", choices=("dino", "mocov3", "mae", "dagman", "mixedae"),
                    help="base objective: dino, mocov3, mae; dagman needs --backbone mfa_swin, mixedae the ViT")
    pt.add_argument("--no-mirror", action="store_true", help="baseline without the mirror branch")
    _add_training_args(pt, epochs=2, lr=5e-4, batch_size=8, lr_help="peak lr at batch 256")
    pt.add_argument("--warmup-epochs", type=float_arg("--warmup-epochs", low=0.0), default=1.0)
    pt.add_argument("--resume", default=None, help="'auto', a checkpoint file or a folder")
    pt.add_argument("--resume-force", action="store_true",
                    help="resume even when the run settings (batch size, epochs, objective...) differ from the checkpoint's")
    pt.add_argument("--t-sym", type=float_arg("--t-sym", low=0.0), default=10.0)
    pt.add_argument("--t-mfa", type=float_arg("--t-mfa", low=0.0), default=12.0)
    pt.add_argument("--t-gate", type=float_arg("--t-gate", low=0.0), default=10.0)

    b = sub.add_parser("benchmark", help="landmark benchmark")
    _add_backbone_args(b)
    _add_landmark_data_args(b)
    _common(b)
    b.add_argument("--split", default="random", choices=("random", "300w", "300w-private"),
                   help="split of --data: random (a seeded --test-fraction), 300w (train: AFW + HELEN + LFPW "
                        "trainsets; test: the full set, reported as common, challenging and full), 300w-private "
                        "(train: all public 300W faces; test: 300W/01_Indoor + 02_Outdoor); the 300w splits read "
                        "the iBUG layout (afw/, helen/trainset, helen/testset, lfpw/trainset, lfpw/testset, ibug/)")
    _add_metric_args(b)
    b.add_argument("--head", default="linear", choices=["linear", "heatmap"])
    b.add_argument("--finetune", action="store_true", help="train the encoder too (default frozen)")
    _add_training_args(b, epochs=10, lr=1e-3, batch_size=16)
    b.add_argument("--n-boot", type=int_arg("--n-boot", low=0), default=500, help="bootstrap resamples (500)")

    pr = sub.add_parser("probe", help="CelebA-HQ attribute probe")
    _add_backbone_args(pr)
    _common(pr)
    pr.add_argument("--images", required=True, help="CelebA-HQ-img (or img_align_celeba) folder")
    pr.add_argument("--attributes", required=True, help="CelebAMask-HQ-attribute-anno.txt or list_attr_celeba.txt")
    pr.add_argument("--partition", help="list_eval_partition.txt (official split)")
    pr.add_argument("--identity", help="identity_CelebA.txt (identity-aware split when no --partition)")
    pr.add_argument("--mapping", help="CelebA-HQ-to-CelebA-mapping.txt")
    pr.add_argument("--test-split", default="test", choices=["val", "test"])
    _add_training_args(pr, epochs=100, lr=1e-2, batch_size=None)
    pr.add_argument("--n-boot", type=int_arg("--n-boot", low=0), default=500, help="bootstrap resamples (500)")
    return parser


# ---------------------------------------------------------------------------------------------- helpers
def _device(name: str | None) -> "torch.device":
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _backbone_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.backbone == "mfa_swin":  # the sizes were checked by check_backbone_args
        heads = max(1, args.num_heads // 4)
        return dict(spatial_dims=2, in_chans=3, embed_dim=args.embed_dim, depths=[max(1, args.depth // 4)] * 4,
                    num_heads=[heads * 2 ** i for i in range(4)], window_size=args.window_size,
                    patch_size=min(args.patch_size, 4))
    return dict(spatial_dims=2, img_size=args.size, patch_size=args.patch_size, in_chans=3, embed_dim=args.embed_dim,
                depth=args.depth, num_heads=args.num_heads)


def build_backbone(args: argparse.Namespace):
    """The encoder: from ``--checkpoint`` (the network it records wins over the size options) or freshly
    initialised. Reading and strict loading go through :mod:`mfassl.encoder_files` (a ``backbone.pt``, an engine
    ``checkpoint_<N>.pt`` or a bundle's ``models/model.pt``); a file that does not fit raises
    :class:`~mfassl.encoder_files.EncoderLoadError` naming it and the keys."""
    from mfassl.backbones import create_backbone
    from mfassl.encoder_files import EncoderLoadError, load_encoder, read_encoder_file

    name, config = args.backbone, _backbone_config(args)
    source = None
    if args.checkpoint:
        source = read_encoder_file(args.checkpoint)
        if source.description is not None:
            name, config = source.description["backbone"], dict(source.description["config"])
    backbone = create_backbone(name, **config)
    if source is not None:
        try:
            load_encoder(backbone, source)
        except EncoderLoadError as err:
            raise EncoderLoadError(f"{err}\n(check --backbone/--size/--patch-size/--embed-dim/--depth/--num-heads "
                                   "against the pretraining run)") from err
        logger.info("encoder loaded from %s", args.checkpoint)
    else:
        logger.warning("no --checkpoint: the encoder is randomly initialised.")
    return backbone, name, config


def image_folder_records(args: argparse.Namespace, default_out: str = "faces_pretrain"):
    """``(records, counts)`` for ``--images``: annotations first, the landmarks file next, the detector last."""
    from mfassl_faces.readers import collect_landmark_records, read_celeba_landmarks

    table = read_celeba_landmarks(args.celeba_landmarks) if args.celeba_landmarks else None
    cache = Path(args.landmarks_file) if args.landmarks_file else _out(args, default_out) / "landmarks.jsonl"
    source = None if args.landmark_source == "none" else args.landmark_source
    kwargs = {"weights_dir": args.fan_weights, "device": str(_device(args.device))} if source == "fan" else {}
    records, counts = collect_landmark_records(args.images, table, "five" if table else None, cache, source, kwargs,
                                               workers=args.landmark_workers, progress=not args.no_progress,
                                               overwrite=args.overwrite,
                                               option="--landmarks-file" if args.landmarks_file else "--out")
    logger.info("landmarks for %d images of %s: %s (cache %s)", len(records), args.images, counts, cache)
    return records, counts


def _split(records: list, test_fraction: float, seed: int) -> tuple[list, list]:
    """``(train, test)``: a seeded random ``test_fraction`` of ``records`` (at least one) for the test set."""
    import torch

    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, int(round(len(records) * test_fraction)))
    return [records[i] for i in order[n_test:]], [records[i] for i in order[:n_test]]


def landmark_sets(args: argparse.Namespace, flip_prob: float = 0.0, default_out: str = "faces_pretrain"):
    """``(train, test, schema)`` landmark datasets from the arguments."""
    from mfassl_faces.demo import build_demo_data
    from mfassl_faces.readers import LandmarkDataset, read_300w_folder, read_wflw_annotations

    if getattr(args, "images", None):
        records, _ = image_folder_records(args, default_out)
        if len(records) < 2:
            raise SystemExit(f"error: {args.images}: need at least 2 images with landmarks, found {len(records)}.")
        schemas = sorted({r.schema for r in records})
        train, test = _split(records, args.test_fraction, args.seed)
        schema = schemas[0] if len(schemas) == 1 else "ibug68"
        return (LandmarkDataset(train, schema, size=args.size, flip_prob=flip_prob),
                LandmarkDataset(test, schema, size=args.size), schemas[0] if len(schemas) == 1 else None)
    split = getattr(args, "split", "random")
    if split != "random":
        from mfassl_faces.protocols import read_protocol

        proto = read_protocol(split, args.data)
        test = LandmarkDataset(proto.test, proto.schema, size=args.size, attribute_names=proto.subsets)
        return LandmarkDataset(proto.train, proto.schema, size=args.size, flip_prob=flip_prob), test, proto.schema
    if args.wflw_train or args.wflw_test:
        if not (args.wflw_train and args.wflw_test and args.wflw_images):
            raise SystemExit("error: WFLW needs --wflw-train, --wflw-test and --wflw-images.")
        train = read_wflw_annotations(args.wflw_train, args.wflw_images)
        test = read_wflw_annotations(args.wflw_test, args.wflw_images)
        schema = "wflw98"
    else:
        folder = Path(args.data) if args.data else build_demo_data()
        records = read_300w_folder(folder)
        if len(records) < 2:
            raise SystemExit(f"error: {folder}: need at least 2 annotated images, found {len(records)}.")
        train, test = _split(records, args.test_fraction, args.seed)
        schema = "ibug68"
    return (LandmarkDataset(train, schema, size=args.size, flip_prob=flip_prob),
            LandmarkDataset(test, schema, size=args.size), schema)


def _out(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out) if args.out else Path("outputs") / default


# ---------------------------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    from mfassl_faces.demo import build_demo_data

    out = build_demo_data(args.out, n_per_face=args.n, seed=args.seed, overwrite=args.overwrite)
    print(json_line({"demo": str(out)}))
    return 0


class _ImageAxis:
    """Only what the engine's ``prepare_batch`` reads: ``{"image", "axis"}`` (a map-style dataset)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, "torch.Tensor"]:
        item = self.ds[i]
        return {"image": item["image"], "axis": item["axis"]}


def cmd_pretrain(args: argparse.Namespace) -> int:
    import ignite.distributed as idist
    import torch
    from torch.utils.data import ConcatDataset

    from mfassl.engine import create_optimizer, create_trainer
    from mfassl.method import MFASSL

    torch.manual_seed(args.seed)
    out = _out(args, "faces_pretrain")
    train, test, _ = landmark_sets(args, flip_prob=0.0)
    data = _ImageAxis(ConcatDataset([train, test]))  # self-supervised: every crop is usable
    backbone, name, config = build_backbone(args)
    objective_kwargs = {"dino": dict(out_dim=1024, hidden_dim=256, bottleneck_dim=64)}.get(args.objective, {})
    method = MFASSL(backbone, args.objective, objective_kwargs, mirror=not args.no_mirror, t_sym=args.t_sym,
                    t_mfa=args.t_mfa, t_gate=args.t_gate,
                    views=dict(global_size=args.size, local_size=max(16, args.size // 2)))
    world = idist.get_world_size()
    loader = idist.auto_dataloader(data, batch_size=args.batch_size * world, shuffle=True, drop_last=len(data) >= args.batch_size * world,
                                   num_workers=0)
    trainer = create_trainer(method, create_optimizer(method, lr=args.lr), len(loader), args.epochs,
                             base_lr=args.lr, batch_size=args.batch_size * world, warmup_epochs=args.warmup_epochs,
                             device=_device(args.device), output_dir=out, progress=not args.no_progress,
                             resume_from=args.resume, resume_force=args.resume_force)
    trainer.run(loader, max_epochs=args.epochs)
    if idist.get_rank() == 0:
        from mfassl.checkpoints import atomic_save
        from mfassl.encoder_files import encoder_state_dict

        atomic_save({"backbone_name": name, "backbone_config": json.dumps(config),
                     "backbone_state": encoder_state_dict(method.backbone)}, out / "backbone.pt")
        summary = {"output_dir": str(out), "epochs": trainer.state.epoch, "iterations": trainer.state.iteration,
                   "last_loss": (trainer.state.output or {}).get("loss"), "backbone": str(out / "backbone.pt")}
        print(json_line(summary))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(args.seed)
    train, test, schema = landmark_sets(args, flip_prob=0.5, default_out="faces_benchmark")
    if schema is None:
        raise SystemExit("error: the landmark benchmark needs one landmark layout; the --images folder mixes "
                         "several (annotations and detector landmarks).")
    from mfassl_faces.benchmark import run_landmark_benchmark  # the networks' packages: after the data is read

    backbone, _, _ = build_backbone(args)
    res = run_landmark_benchmark(backbone, train, test, schema, args.size, head=args.head, finetune=args.finetune,
                                 epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, n_boot=args.n_boot,
                                 out_dir=_out(args, "faces_benchmark"), device=_device(args.device), seed=args.seed,
                                 threshold=args.threshold, normalization=args.normalization,
                                 image_root=_image_root(args))
    from mfassl_faces.report import format_landmark_table

    print(format_landmark_table(res, f"{args.head} head on the {'fine-tuned' if args.finetune else 'frozen'} encoder, "
                                     f"NME normalised by the {args.normalization} distance"))
    print(json_line({k: res[k] for k in ("n_train", "n_test", "n_failed", "normalization", "threshold", "nme", "fr",
                                         "auc", "subsets", "flip_nme", "ced_png", "predictions")}))
    return 0


def _image_root(args: argparse.Namespace) -> str | None:
    """The folder the benchmark's test images are named relative to in ``predictions.jsonl``."""
    if getattr(args, "images", None):
        return args.images
    if args.wflw_train or args.wflw_test:
        return args.wflw_images
    return args.data


def cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from mfassl_faces.readers import CelebAHQDataset

    torch.manual_seed(args.seed)
    kw = dict(partition_file=args.partition, identity_file=args.identity, mapping_file=args.mapping, size=args.size,
              seed=args.seed)
    train = CelebAHQDataset(args.images, args.attributes, "train", **kw)
    test = CelebAHQDataset(args.images, args.attributes, args.test_split, **kw)
    if len(train) == 0 or len(test) == 0:
        raise SystemExit(f"error: empty split (train {len(train)}, {args.test_split} {len(test)} images).")
    from mfassl_faces.benchmark import run_attribute_probe  # the networks' packages: after the data is read

    backbone, _, _ = build_backbone(args)
    res = run_attribute_probe(backbone, train, test, train.names, epochs=args.epochs, lr=args.lr, n_boot=args.n_boot,
                              out_dir=_out(args, "faces_probe"), device=_device(args.device), seed=args.seed)
    print(json_line({k: res[k] for k in ("n_train", "n_test", "mean_auroc", "mean_accuracy", "mean_balanced_accuracy",
                                         "ece", "brier")}))
    return 0


COMMANDS = {"demo": cmd_demo, "pretrain": cmd_pretrain, "benchmark": cmd_benchmark, "probe": cmd_probe}


def main(argv: Sequence[str] | None = None) -> int:
    """``demo|pretrain|benchmark|probe ARGS``: parse, run the command; 1 (with one ``error:`` line) for a data,
    file or run error (``no space left on <path>`` for a full disk, a refused output file), 2 for bad options."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if hasattr(args, "backbone"):
        try:
            check_task_args(args)
        except ValueError as err:
            parser.error(str(err))
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from mfassl_faces.errors import FaceDataError

    try:
        return COMMANDS[args.command](args)
    except (FaceDataError, OSError, RuntimeError) as err:  # OSError: a full disk, a refused output included
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        from mfassl.engine import ResumeError

        if not isinstance(err, ResumeError):
            raise
        # the engine words its hint for the bundles' command line; this one spells the switch --resume-force
        text = str(err).replace("set resume_force: true (--resume_force true)", "pass --resume-force")
        print(f"error: {text}", file=sys.stderr)
        return 1


def demo_main(argv: Sequence[str]) -> int:
    """``python -m mfassl_faces demo ARGS``."""
    return main(["demo", *argv])


def pretrain_main(argv: Sequence[str]) -> int:
    """``python -m mfassl_faces pretrain ARGS``."""
    return main(["pretrain", *argv])


def benchmark_main(argv: Sequence[str]) -> int:
    """``python -m mfassl_faces benchmark ARGS``."""
    return main(["benchmark", *argv])


def probe_main(argv: Sequence[str]) -> int:
    """``python -m mfassl_faces probe ARGS``."""
    return main(["probe", *argv])


if __name__ == "__main__":
    sys.exit(main())
