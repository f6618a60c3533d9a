"""Serve ``bundles/mfassl_brats_segmentation`` with MONAI Label 0.8.5, offline.

MONAI Label lives in its own venv (``.venv-label``: it needs numpy 1.26 and pydicom 2); this module runs in the
project venv and drives it through its command line:

1. copy the ``monaibundle`` sample app out of the installed wheel (``monailabel apps --download``, no network);
2. put the bundle under ``<app>/model/<name>/`` with ``models/model.pt`` and the network sizes the weights were
   trained with written into its ``configs/inference.json``;
3. write the studies folder MONAI Label serves: one 4D NIfTI (X, Y, Z, 4 modalities) per BraTS case, and the
   reference masks under ``labels/final/`` (a temporary copy; the server writes into it);
4. start ``monailabel start_server`` on 127.0.0.1 with the two start-up downloads turned off
   (``BUNDLE_DOWNLOAD_SRC=ngc`` and ``--conf sam2 false``), ``MLFLOW_DISABLE_TELEMETRY=true`` and ``HOME`` in the
   work folder.

Command line (what ``make label`` runs)::

    python -m mfassl_medical.label_app serve --workdir outputs/label --port 8000
    # then: curl -X POST "http://127.0.0.1:8000/infer/mfassl_brats_segmentation?image=BraTS2021_00000&output=image" -o seg.nii.gz

Without ``--model`` a tiny network is trained first for a few steps on the demo data (a smoke model: its
segmentation is poor); pass a trained ``model.pt`` and the ``--network`` sizes it was trained with for real use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "BUNDLE_NAME",
    "TINY_NETWORK",
    "default_bundle_dir",
    "write_label_studies",
    "train_bundle",
    "prepare_label_app",
    "label_server_command",
    "label_server_env",
    "start_label_server",
    "wait_until_ready",
    "stop_label_server",
    "infer",
    "main",
]

logger = logging.getLogger(__name__)

BUNDLE_NAME = "mfassl_brats_segmentation"

TINY_NETWORK: dict[str, Any] = {
    "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4], "window_size": 4,
    "roi_size": [64, 64, 64], "sw_overlap": 0.0,
}
"""Network and window sizes for smoke runs on CPU (the bundle's defaults are the SwinUNETR-B sizes)."""

_NETWORK_KEYS = ("feature_size", "depths", "num_heads", "window_size", "patch_size", "roi_size", "sw_batch_size",
                 "sw_overlap")


def default_bundle_dir() -> Path:
    """``bundles/mfassl_brats_segmentation`` of the source checkout this module lies in."""
    return Path(__file__).resolve().parents[1] / "bundles" / BUNDLE_NAME


def write_label_studies(out_dir: str | os.PathLike, dataset_dir: str | os.PathLike | None = None,
                        cases: Sequence[str] | None = None, with_labels: bool = True) -> list[str]:
    """Write a MONAI Label studies folder from a BraTS folder (default: the demo data).

    Args:
        out_dir: the studies folder (created).
        dataset_dir: BraTS root; None builds/reuses the demo data.
        cases: case names to write (default all).
        with_labels: also write ``labels/final/<case>.nii.gz`` (the BraTS seg) when a case has one.

    Returns:
        the image ids (the case names), each ``<out_dir>/<id>.nii.gz`` of shape ``(X, Y, Z, 4)``
        (t1, t1ce, t2, flair; the t1 affine).
    """
    import nibabel as nib
    import numpy as np

    from mfassl_medical.data import find_brats_cases

    if dataset_dir in (None, ""):
        from mfassl_medical.demo_data import build_demo_data

        dataset_dir = build_demo_data().brats
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    for rec in find_brats_cases(dataset_dir):
        if cases is not None and rec["case"] not in cases:
            continue
        imgs = [nib.load(p) for p in rec["image"]]
        data = np.stack([np.asarray(i.dataobj) for i in imgs], axis=-1)
        nib.save(nib.Nifti1Image(data, imgs[0].affine), str(out / f"{rec['case']}.nii.gz"))
        if with_labels and "label" in rec:
            (out / "labels" / "final").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rec["label"], out / "labels" / "final" / f"{rec['case']}.nii.gz")
        ids.append(rec["case"])
    if not ids:
        raise ValueError(f"no case of {dataset_dir} matched {cases}.")
    return ids


def train_bundle(bundle_root: str | os.PathLike, bundle_dir: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None, python: str | None = None,
                 timeout: float | None = None) -> Path:
    """Run the bundle's ``train.json`` in a subprocess (``python -m monai.bundle run``).

    Args:
        bundle_root: where ``models/``, ``logs/`` go.
        bundle_dir: the bundle (default :func:`default_bundle_dir`).
        overrides: config values (e.g. ``TINY_NETWORK | {"epochs": 1, "epoch_length": 2}``).
        python: interpreter of the project venv (default this one).
        timeout: seconds.

    Returns:
        ``models/model.pt`` (best validation Dice) or, when no validation ran, ``models/model_final.pt``.
    """
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    cmd = [python or sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(bundle_dir / "configs" / "train.json"), "--bundle_root", str(bundle_root),
           "--logging_file", str(bundle_dir / "configs" / "logging.conf")]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", json.dumps(v)]
    logger.info("training: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, timeout=timeout)
    models = Path(bundle_root) / "models"
    for name in ("model.pt", "model_final.pt"):
        if (models / name).is_file():
            return models / name
    raise FileNotFoundError(f"training wrote no model.pt or model_final.pt under {models}.")


def _monailabel(label_venv: str | os.PathLike) -> list[str]:
    """``<venv>/bin/python -m monailabel.main``: the venv's ``bin/monailabel`` wrapper runs whatever ``python`` is
    first on PATH and puts the checkout on PYTHONPATH, so it is bypassed."""
    exe = Path(label_venv).absolute() / "bin" / "python"  # absolute, not resolved (the venv python is a link)
    if not (Path(label_venv) / "bin" / "monailabel").is_file():
        raise FileNotFoundError(f"{exe} not found: create the MONAI Label venv first (make label, or "
                                f"python3 -m venv {label_venv} && {label_venv}/bin/pip install monailabel==0.8.5 ...).")
    return [str(exe), "-m", "monailabel.main"]


def prepare_label_app(workdir: str | os.PathLike, model_file: str | os.PathLike, label_venv: str | os.PathLike,
                      network: Mapping[str, Any] | None = None, bundle_dir: str | os.PathLike | None = None,
                      name: str = BUNDLE_NAME) -> Path:
    """The ``monaibundle`` app with the bundle (and ``model_file`` as ``models/model.pt``) in ``<app>/model/<name>``.

    Args:
        workdir: the app goes to ``<workdir>/apps/monaibundle`` (copied from the wheel once).
        model_file: trained SwinUNETR weights (state dict, or a dict with ``"model"``).
        label_venv: the MONAI Label venv.
        network: sizes written into the copy's ``inference.json`` (keys among ``feature_size``, ``depths``,
            ``num_heads``, ``window_size``, ``patch_size``, ``roi_size``, ``sw_batch_size``, ``sw_overlap``);
            they must be those ``model_file`` was trained with.
        bundle_dir: the bundle source (default :func:`default_bundle_dir`).
        name: the model name the server exposes.

    Returns:
        the app folder.
    """
    apps = Path(workdir) / "apps"
    app = apps / "monaibundle"
    if not (app / "main.py").is_file():
        apps.mkdir(parents=True, exist_ok=True)
        subprocess.run([*_monailabel(label_venv), "apps", "--download", "--name", "monaibundle", "--output",
                        str(apps)], check=True, env=label_server_env(Path(workdir) / "home"))
    src = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    dst = app / "model" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "runs", "__pycache__"))
    (dst / "models").mkdir()
    shutil.copyfile(model_file, dst / "models" / "model.pt")
    bad = sorted(set(network or {}) - set(_NETWORK_KEYS))
    if bad:
        raise ValueError(f"unknown network key(s) {bad}; use {list(_NETWORK_KEYS)}.")
    cfg_file = dst / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(network or {})
    cfg_file.write_text(json.dumps(cfg, indent=4) + "\n")
    return app


def label_server_env(home: str | os.PathLike, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of an offline server: no zoo or telemetry download, ``HOME`` in ``home``."""
    env = dict(os.environ if base is None else base)
    Path(home).mkdir(parents=True, exist_ok=True)
    env.update(BUNDLE_DOWNLOAD_SRC="ngc", MLFLOW_DISABLE_TELEMETRY="true", HOME=str(home),
               MPLCONFIGDIR=str(Path(home) / "matplotlib"), PYTHONNOUSERSITE="1", TMPDIR=str(Path(home)))
    env.pop("PYTHONPATH", None)  # the project venv's paths must not leak into MONAI Label's
    return env


def label_server_command(app: str | os.PathLike, studies: str | os.PathLike, label_venv: str | os.PathLike,
                         port: int = 8000, host: str = "127.0.0.1", name: str = BUNDLE_NAME) -> list[str]:
    """``monailabel start_server`` arguments for the app (no conf value may contain spaces)."""
    return [*_monailabel(label_venv), "start_server", "--app", str(Path(app).absolute()),
            "--studies", str(Path(studies).absolute()),
            "--conf", "models", name, "--conf", "sam2", "false", "--conf", "zoo_source", "ngc",
            "--host", host, "--port", str(int(port))]


def start_label_server(app: str | os.PathLike, studies: str | os.PathLike, label_venv: str | os.PathLike,
                       home: str | os.PathLike, port: int = 8000, host: str = "127.0.0.1", name: str = BUNDLE_NAME,
                       log_file: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start the server in the background (stdout/stderr to ``log_file`` if given); stop it with
    :func:`stop_label_server`."""
    cmd = label_server_command(app, studies, label_venv, port, host, name)
    logger.info("starting: %s", " ".join(cmd))
    out = open(log_file, "wb") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, env=label_server_env(home), stdout=out, stderr=subprocess.STDOUT,
                            cwd=str(Path(home)))


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0,
                     log_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Poll ``GET <url>/info/`` until it answers; returns its JSON.

    Raises:
        RuntimeError: the process ended first (the log tail is in the message), or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log_file).read_text(errors="replace")[-3000:] if log_file else ""
            raise RuntimeError(f"MONAI Label exited with code {proc.returncode} before answering:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(1.0)
    raise RuntimeError(f"MONAI Label did not answer {url}/info/ within {timeout:.0f} s.")


def infer(url: str, image_id: str, out_file: str | os.PathLike, name: str = BUNDLE_NAME,
          timeout: float = 600.0) -> Path:
    """``POST <url>/infer/<name>?image=<id>&output=image``; writes the returned label volume to ``out_file``."""
    req = urllib.request.Request(f"{url}/infer/{name}?image={image_id}&output=image", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        Path(out_file).write_bytes(r.read())
    return Path(out_file)


def stop_label_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("MONAI Label ignored SIGTERM for %.0f s; killing pid %d", timeout, proc.pid)
            proc.kill()
            proc.wait()
    return proc.returncode


def _serve(args: argparse.Namespace) -> int:
    work = Path(args.workdir).resolve()
    network = dict(TINY_NETWORK) if args.network is None else json.loads(args.network)
    model = args.model
    if model is None:
        overrides = {**network, "epochs": args.train_epochs, "epoch_length": args.train_steps,
                     "val_interval": args.train_epochs + 1, "learning_rate": 1e-3}
        if args.dataset_dir:
            overrides["dataset_dir"] = args.dataset_dir
        if args.pretrained_checkpoint:
            overrides["pretrained_checkpoint"] = args.pretrained_checkpoint
        model = train_bundle(work / "train", overrides=overrides)
    app = prepare_label_app(work, model, args.label_venv, network=network)
    studies = work / "studies"
    if studies.exists():
        shutil.rmtree(studies)
    ids = write_label_studies(studies, args.dataset_dir)
    cmd = label_server_command(app, studies, args.label_venv, args.port, args.host)
    print(f"serving {len(ids)} studies from {studies} on http://{args.host}:{args.port}\n"
          f"  curl -X POST 'http://{args.host}:{args.port}/infer/{BUNDLE_NAME}?image={ids[0]}&output=image' -o seg.nii.gz",
          flush=True)
    os.execve(cmd[0], cmd, label_server_env(work / "home"))
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mfassl_medical.label_app", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="prepare the app and studies, then run the MONAI Label server (foreground)")
    s.add_argument("--workdir", default="outputs/label", help="app, studies, HOME and training output")
    s.add_argument("--label-venv", default=".venv-label")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model", help="trained model.pt (default: train a tiny one first)")
    s.add_argument("--network", help="JSON of the network sizes the model has (default: the tiny sizes)")
    s.add_argument("--dataset-dir", help="BraTS folder (default: demo data)")
    s.add_argument("--pretrained-checkpoint", help="MFASSL checkpoint for the encoder of the tiny training")
    s.add_argument("--train-epochs", type=int, default=1)
    s.add_argument("--train-steps", type=int, default=4, help="iterations per epoch of the tiny training")
    w = sub.add_parser("studies", help="write a MONAI Label studies folder (4D NIfTI per case)")
    w.add_argument("out_dir")
    w.add_argument("--dataset-dir")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cmd == "studies":
        ids = write_label_studies(args.out_dir, args.dataset_dir)
        print(f"wrote {len(ids)} studies to {args.out_dir}")
        return 0
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
