"""Serve ``bundles/mfassl_brats_segmentation`` with MONAI Label 0.8.5, offline.

MONAI Label lives in its own venv (``.venv-label``: it needs numpy 1.26 and pydicom 2); this module runs in the
project venv and drives it through its command line:

1. write the MFASSL MONAI Label app (``<workdir>/apps/mfassl``: ``main.py``, ``mfassl_asgi.py``, ``mfassl_ids.py``
   from :mod:`mfassl_medical.label_server`): its datastore refuses image ids and label tags that name anything
   outside the studies folder, its ASGI wrapper allows only loopback CORS origins by default and answers 400 / 404
   for bad ids and unknown models or images;
2. put the bundle under ``<app>/model/<name>/`` with ``models/model.pt`` and the network sizes the weights were
   trained with written into its ``configs/inference.json`` (files a previous server wrote there are moved to
   ``<workdir>/model-backups/`` first);
3. add to the studies folder MONAI Label serves what it lacks: one 4D NIfTI (X, Y, Z, 4 modalities) per BraTS
   case and the reference masks under ``labels/final/``. Files already there (saved labels, uploaded images, the
   datastore's JSON) are kept as they are;
4. start ``monailabel start_server`` on 127.0.0.1 with the two start-up downloads turned off
   (``BUNDLE_DOWNLOAD_SRC=ngc`` and ``--conf sam2 false``), ``MLFLOW_DISABLE_TELEMETRY=true`` and ``HOME`` in the
   work folder.

Command line (what ``make label`` runs)::

    python -m mfassl_medical.label_app serve --workdir outputs/label --port 8000
    # then: curl -X POST "http://127.0.0.1:8000/infer/mfassl_brats_segmentation?image=BraTS2021_00000&output=image" -o seg.nii.gz

Without ``--model`` a tiny network is trained first for a few steps on the demo data (a smoke model: its
segmentation is poor); pass a trained ``model.pt`` and the ``--network`` sizes it was trained with for real use.

``serve`` checks everything it is given before the server starts, and refuses with one ``error: ...`` line
(exit status 2) and no traceback: a ``--label-venv`` that is not a MONAI Label venv, a ``--model`` that does not
exist, and a ``--model`` that is not the bundle's network with the ``--network`` sizes (a truncated file, another
model's weights, an MFASSL pretraining checkpoint): it is loaded into the bundle's network exactly as the
bundle's ``inference.json`` loads it (:func:`check_model_file`), so a server that starts can infer.
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
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from mfassl.cli import option_type
from mfassl.files import atomic_path, write_bytes, write_json
from mfassl.options import as_bool, as_int

__all__ = [
    "BUNDLE_NAME",
    "TINY_NETWORK",
    "APP_NAME",
    "default_bundle_dir",
    "ModelFileError",
    "check_model_file",
    "loopback_origins",
    "write_app_files",
    "write_label_studies",
    "train_bundle",
    "prepare_label_app",
    "label_server_command",
    "label_server_env",
    "start_label_server",
    "wait_until_ready",
    "stop_label_server",
    "infer",
    "build_parser",
    "main",
]

logger = logging.getLogger(__name__)

BUNDLE_NAME = "mfassl_brats_segmentation"
APP_NAME = "mfassl"
"""Folder name of the prepared app under ``<workdir>/apps/``."""
ASGI_APP = "mfassl_asgi:app"
"""What ``--uvicorn_app`` names: MONAI Label's FastAPI app with the MFASSL guards (``mfassl_asgi.py``)."""
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

TINY_NETWORK: dict[str, Any] = {
    "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4], "window_size": 4,
    "roi_size": [64, 64, 64], "sw_roi_size": [96, 96, 96], "sw_overlap": 0.0,
}
"""Network and window sizes for smoke runs on CPU (the bundle's defaults are the SwinUNETR-B sizes): 64^3 training
crops, and one 96^3 sliding window over a demo case (80 x 96 x 80) where 64^3 windows take eight."""

_NETWORK_KEYS = ("feature_size", "depths", "num_heads", "window_size", "patch_size", "roi_size", "sw_roi_size",
                 "sw_batch_size", "sw_overlap")


def default_bundle_dir() -> Path:
    """``bundles/mfassl_brats_segmentation`` of the source checkout this module lies in."""
    return Path(__file__).resolve().parents[1] / "bundles" / BUNDLE_NAME


def write_label_studies(out_dir: str | os.PathLike, dataset_dir: str | os.PathLike | None = None,
                        cases: Sequence[str] | None = None, with_labels: bool = True) -> list[str]:
    """Add to a MONAI Label studies folder the cases of a BraTS folder (default: the demo data) it lacks.

    Nothing already in ``out_dir`` is changed or removed: an image ``<id>.nii.gz`` or a label
    ``labels/final/<id>.nii.gz`` that exists (a label saved through ``PUT /datastore/label``, an uploaded image, an
    earlier run's copy) is kept as it is; only missing files are written, each through a temporary file renamed
    into place, so an interrupted run leaves no half-written study.

    Args:
        out_dir: the studies folder (created if missing).
        dataset_dir: BraTS root; None builds/reuses the demo data.
        cases: case names to write (default all).
        with_labels: also write ``labels/final/<case>.nii.gz`` (the BraTS seg) when a case has one and no label
            is there yet.

    Returns:
        the image ids of the BraTS cases (the case names), each ``<out_dir>/<id>.nii.gz`` of shape ``(X, Y, Z, 4)``
        (t1, t1ce, t2, flair; the t1 affine). Other images in the folder are kept but not listed.
    """
    import nibabel as nib
    import numpy as np

    from mfassl_medical.data import find_brats_cases

    if dataset_dir in (None, ""):
        from mfassl_medical.demo_data import build_demo_data

        dataset_dir = build_demo_data().brats
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids, added, kept = [], 0, 0
    for rec in find_brats_cases(dataset_dir):
        if cases is not None and rec["case"] not in cases:
            continue
        image = out / f"{rec['case']}.nii.gz"
        if image.exists():
            kept += 1
        else:
            imgs = [nib.load(p) for p in rec["image"]]
            data = np.stack([np.asarray(i.dataobj) for i in imgs], axis=-1)
            vol = nib.Nifti1Image(data, imgs[0].affine)
            with atomic_path(image, suffix=".part.nii.gz") as tmp:  # nibabel picks the format from the name
                nib.save(vol, str(tmp))
            added += 1
        if with_labels and "label" in rec:
            label = out / "labels" / "final" / f"{rec['case']}.nii.gz"
            if label.exists():
                kept += 1
            else:
                with atomic_path(label) as tmp:
                    shutil.copyfile(rec["label"], tmp)
                added += 1
        ids.append(rec["case"])
    if not ids:
        raise ValueError(f"no case of {dataset_dir} matched {cases}.")
    logger.info("studies %s: %d file(s) added, %d already there kept as they are", out, added, kept)
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
    if not (Path(label_venv) / "bin" / "monailabel").is_file() or not exe.exists():
        what = "does not exist" if not Path(label_venv).exists() else "is not a MONAI Label venv (no bin/monailabel)"
        raise FileNotFoundError(f"--label-venv {label_venv} {what}: create the MONAI Label venv first (make "
                                f"label-venv, or python3 -m venv {label_venv} && {label_venv}/bin/pip install "
                                "monailabel==0.8.5 ...), or pass the folder of one.")
    return [str(exe), "-m", "monailabel.main"]


class ModelFileError(ValueError):
    """A ``--model`` file that the bundle's inference cannot load (unreadable, or another network's weights)."""


def _bundle_network(bundle_dir: Path, network: Mapping[str, Any]) -> Any:
    """The bundle's ``network_def`` from ``configs/inference.json`` with the ``network`` sizes, built on CPU.

    The bundle folder is put on ``sys.path`` for its ``scripts`` package while the network is built, as
    ``python -m monai.bundle run`` and MONAI Label do.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser.update({k: v for k, v in network.items()})
    parser["device"] = "$torch.device('cpu')"
    saved = {k: m for k, m in sys.modules.items() if k == "scripts" or k.startswith("scripts.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(bundle_dir))
    try:
        return parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle_dir))
        for k in [k for k in sys.modules if k == "scripts" or k.startswith("scripts.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def check_model_file(model_file: str | os.PathLike, network: Mapping[str, Any] | None = None,
                     bundle_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Load ``model_file`` into the bundle's network as its ``inference.json`` does, or refuse it.

    The file is read with ``torch.load(weights_only=True)``; its state dict (the file itself, or its ``"model"``
    entry, as the bundle's ``CheckpointLoader`` takes it) must match the network built with the ``network``
    sizes key for key and shape for shape (``strict``).

    Args:
        model_file: the weights ``--model`` names.
        network: the sizes (``feature_size``, ``depths``, ...) the server will use.
        bundle_dir: the bundle (default :func:`default_bundle_dir`).

    Returns:
        ``{"tensors": N, "parameters": P}`` of the loaded state dict.

    Raises:
        FileNotFoundError: ``model_file`` does not exist.
        ModelFileError: it cannot be read as PyTorch weights (truncated, not a PyTorch file, pickled code), holds
            no state dict, or its keys or shapes are not those of the network; the message names the file and
            what differs.
    """
    import torch

    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(f"--model {path}: file not found.")
    bundle = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    sizes = _check_network(network)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, refused pickle
        text = " ".join(str(e).split()).split(". ")[0]  # the reason, not torch's advice to drop weights_only
        raise ModelFileError(f"--model {path}: cannot be read as PyTorch weights ({type(e).__name__}: {text}); the "
                             "file may be truncated or not a model.pt") from None
    state = obj.get("model") if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else obj
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"--model {path}: holds no state dict of tensors (a {type(obj).__name__}); save the "
                             "network's state_dict(), or a dict with it under 'model'")
    net = _bundle_network(bundle, sizes)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the network's {len(expected)} tensors missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors the network does not have (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[:2]})")
        shown = json.dumps(sizes) if sizes else "of its inference.json"
        raise ModelFileError(f"--model {path}: not the {BUNDLE_NAME} network with the sizes {shown}: "
                             + "; ".join(parts) + ". Pass the weights the bundle's train.json wrote "
                             "(models/model.pt) and the --network sizes they were trained with.")
    net.load_state_dict(state, strict=True)
    return {"tensors": len(state), "parameters": int(sum(int(v.numel()) for v in state.values()))}


def write_app_files(app: str | os.PathLike) -> Path:
    """Write the MFASSL MONAI Label app's code into ``app`` (``main.py``, ``mfassl_asgi.py``, ``mfassl_ids.py``).

    The files come from :mod:`mfassl_medical.label_server`; they are the project's own and are rewritten each time.
    Returns the app folder.
    """
    from mfassl_medical.label_server import TEMPLATE_FILES

    app = Path(app)
    app.mkdir(parents=True, exist_ok=True)
    src = Path(__file__).resolve().parent / "label_server"
    for name, target in TEMPLATE_FILES.items():
        shutil.copyfile(src / name, app / target)
    for sub in ("model", "lib", "logs", "bin"):
        (app / sub).mkdir(exist_ok=True)
    return app


def _same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _back_up_outputs(dst: Path, model_file: Path, backups: Path) -> Path | None:
    """Move what a server wrote into the served bundle copy (``models/``, ``logs/``, ``eval/``, ``runs/``: a model
    trained or uploaded through MONAI Label) to ``backups/<name>-<time>/``, except a ``models/model.pt`` equal to
    ``model_file``. Returns the backup folder, or None when there was nothing to keep."""
    files = [p for d in ("models", "logs", "eval", "runs") if (dst / d).is_dir() for p in sorted((dst / d).rglob("*"))
             if p.is_file() and not (p == dst / "models" / "model.pt" and _same_content(p, model_file))]
    if not files:
        return None
    target = backups / f"{dst.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for f in files:
        (target / f.relative_to(dst)).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(f), target / f.relative_to(dst))
    logger.warning("moved %d file(s) the previous server wrote under %s to %s", len(files), dst, target)
    return target


def _check_network(network: Mapping[str, Any] | None) -> dict[str, Any]:
    if network is not None and not isinstance(network, Mapping):
        raise ValueError(f"network must be a mapping of sizes, got {type(network).__name__}: {network!r}.")
    bad = sorted(set(network or {}) - set(_NETWORK_KEYS))
    if bad:
        raise ValueError(f"unknown network key(s) {bad}; use {list(_NETWORK_KEYS)}.")
    return dict(network or {})


def prepare_label_app(workdir: str | os.PathLike, model_file: str | os.PathLike,
                      label_venv: str | os.PathLike | None = None, network: Mapping[str, Any] | None = None,
                      bundle_dir: str | os.PathLike | None = None, name: str = BUNDLE_NAME) -> Path:
    """The MFASSL MONAI Label app with the bundle (and ``model_file`` as ``models/model.pt``) in ``<app>/model/<name>``.

    Args:
        workdir: the app goes to ``<workdir>/apps/mfassl``.
        model_file: trained SwinUNETR weights (state dict, or a dict with ``"model"``).
        label_venv: the MONAI Label venv (checked to exist when given).
        network: sizes written into the copy's ``inference.json`` (keys among ``feature_size``, ``depths``,
            ``num_heads``, ``window_size``, ``patch_size``, ``roi_size``, ``sw_roi_size``, ``sw_batch_size``,
            ``sw_overlap``); they must be those ``model_file`` was trained with.
        bundle_dir: the bundle source (default :func:`default_bundle_dir`).
        name: the model name the server exposes (an id: no path separator, no ``..``).

    Returns:
        the app folder. The bundle copy is rewritten; what a previous server wrote into it (a model trained or
        uploaded through MONAI Label, logs) is moved to ``<workdir>/model-backups/`` first.
    """
    from mfassl_medical.label_server.ids import check_id

    check_id(name, "model name")
    network = _check_network(network)
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file {model_file} not found.")
    if label_venv is not None:
        _monailabel(label_venv)
    app = write_app_files(Path(workdir) / "apps" / APP_NAME)
    src = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    if not (src / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{src} is not a bundle: {src / 'configs' / 'inference.json'} not found.")
    dst = app / "model" / name
    if dst.exists():
        _back_up_outputs(dst, model_file, Path(workdir) / "model-backups")
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "runs", "__pycache__"))
    (dst / "models").mkdir()
    shutil.copyfile(model_file, dst / "models" / "model.pt")
    cfg_file = dst / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(network)
    write_json(cfg_file, cfg, indent=4)
    # MONAI Label names labels from the first output's channel_def: serve the label-map names
    meta_file = dst / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    outputs = meta["network_data_format"]["outputs"]
    if "label_map" in outputs:
        outputs["pred"]["channel_def"] = outputs["label_map"]["channel_def"]
        write_json(meta_file, meta, indent=4)
    return app


def loopback_origins(port: int) -> list[str]:
    """The CORS origins the served app allows by default: ``http://127.0.0.1:PORT`` and ``http://localhost:PORT``."""
    return [f"http://127.0.0.1:{int(port)}", f"http://localhost:{int(port)}"]


def _check_origin(origin: str) -> str:
    u = urllib.parse.urlsplit(origin)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError(f"CORS origin {origin!r} must be scheme://host[:port] (http or https, no path); '*' is "
                         "not offered.")
    return origin.rstrip("/")


def label_server_env(home: str | os.PathLike, base: Mapping[str, str] | None = None,
                     app: str | os.PathLike | None = None,
                     cors_origins: Sequence[str] | None = None, host: str | None = None,
                     allowed_hosts: Sequence[str] | None = None) -> dict[str, str]:
    """Environment of an offline server: no zoo or telemetry download, ``HOME`` in ``home``.

    Args:
        home: HOME, TMPDIR and MPLCONFIGDIR of the server (created).
        base: the environment to start from (default ``os.environ``).
        app: the prepared app; put on ``PYTHONPATH`` so that ``--uvicorn_app mfassl_asgi:app`` imports.
        cors_origins: origins to allow besides none (sets ``MONAI_LABEL_CORS_ORIGINS``); None keeps what ``base``
            has, and the app then allows only the loopback origins of its port.
        host: the address the server binds (``MFASSL_LABEL_HOST``): the app answers requests whose ``Host`` names
            it or a loopback name.
        allowed_hosts: further host names the app answers (``MFASSL_LABEL_ALLOWED_HOSTS``), e.g. the machine's
            name when it listens on another interface.
    """
    env = dict(os.environ if base is None else base)
    Path(home).mkdir(parents=True, exist_ok=True)
    env.update(BUNDLE_DOWNLOAD_SRC="ngc", MLFLOW_DISABLE_TELEMETRY="true", HOME=str(home),
               MPLCONFIGDIR=str(Path(home) / "matplotlib"), PYTHONNOUSERSITE="1", TMPDIR=str(Path(home)))
    env.pop("PYTHONPATH", None)  # the project venv's paths must not leak into MONAI Label's
    if app is not None:
        env["PYTHONPATH"] = str(Path(app).absolute())
    if cors_origins:
        env["MONAI_LABEL_CORS_ORIGINS"] = json.dumps([_check_origin(o) for o in cors_origins])
    if host is not None:
        env["MFASSL_LABEL_HOST"] = str(host)
    if allowed_hosts:
        env["MFASSL_LABEL_ALLOWED_HOSTS"] = json.dumps([_check_host(h) for h in allowed_hosts])
    return env


def _check_host(name: str) -> str:
    """A host name or address for ``--allowed-host`` (no scheme, port, path or wildcard)."""
    text = str(name).strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    port = ":" in bare and not text.startswith("[") and bare.count(":") < 2  # host:port, not an IPv6 address
    if not bare or any(c in bare for c in "/?#@* ") or port:
        raise ValueError(f"allowed host {name!r} must be a bare host name or address (no scheme, port, path or '*').")
    return bare.lower()


def label_server_command(app: str | os.PathLike, studies: str | os.PathLike, label_venv: str | os.PathLike,
                         port: int = 8000, host: str = "127.0.0.1", name: str = BUNDLE_NAME) -> list[str]:
    """``monailabel start_server`` arguments for the app (no conf value may contain spaces).

    An app written by :func:`prepare_label_app` (it has ``mfassl_asgi.py``) is served through
    ``--uvicorn_app mfassl_asgi:app``; the server's environment must then put the app on ``PYTHONPATH``
    (``label_server_env(..., app=app)``).
    """
    port = as_int(port, "port", low=1, high=65535)
    cmd = [*_monailabel(label_venv), "start_server", "--app", str(Path(app).absolute()),
           "--studies", str(Path(studies).absolute()),
           "--conf", "models", name, "--conf", "sam2", "false", "--conf", "zoo_source", "ngc",
           "--host", host, "--port", str(port)]
    if (Path(app) / "mfassl_asgi.py").is_file():
        cmd += ["--uvicorn_app", ASGI_APP]
    else:
        logger.warning("%s has no mfassl_asgi.py: MONAI Label's own defaults apply (CORS '*', no id checks)", app)
    if host not in _LOOPBACK_HOSTS:
        logger.warning("MONAI Label will listen on %s: without authentication, anyone who reaches it can read and "
                       "write the studies", host)
    return cmd


def start_label_server(app: str | os.PathLike, studies: str | os.PathLike, label_venv: str | os.PathLike,
                       home: str | os.PathLike, port: int = 8000, host: str = "127.0.0.1", name: str = BUNDLE_NAME,
                       log_file: str | os.PathLike | None = None, cors_origins: Sequence[str] | None = None,
                       allowed_hosts: Sequence[str] | None = None) -> subprocess.Popen:
    """Start the server in the background (stdout/stderr to ``log_file`` if given); stop it with
    :func:`stop_label_server`. ``cors_origins``, ``allowed_hosts``: see :func:`label_server_env`."""
    cmd = label_server_command(app, studies, label_venv, port, host, name)
    logger.info("starting: %s", " ".join(cmd))
    out = open(log_file, "wb") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    env = label_server_env(home, app=app, cors_origins=cors_origins, host=host, allowed_hosts=allowed_hosts)
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(Path(home)))


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
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    req = urllib.request.Request(f"{url}/infer/{urllib.parse.quote(name, safe='')}?{query}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return write_bytes(out_file, r.read())


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


def _network_arg(text: str) -> dict[str, Any]:
    """``--network``: a JSON object of network sizes with known keys."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"option '--network': {text!r} is not JSON ({e}).") from None
    try:
        return _check_network(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"option '--network': {e}") from None


def _answered_hosts(host: str, extra: Sequence[str] | None) -> list[str]:
    from mfassl_medical.label_server.guards import allowed_hosts

    return allowed_hosts(host, extra or ())


def _host_arg(text: str) -> str:
    try:
        return _check_host(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"option '--allowed-host': {e}") from None


def _origin_arg(text: str) -> str:
    try:
        return _check_origin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"option '--cors-origin': {e}") from None


def _serve(args: argparse.Namespace) -> int:
    work = Path(args.workdir).resolve()
    network = dict(TINY_NETWORK) if args.network is None else args.network
    _monailabel(args.label_venv)  # fail before any training when the MONAI Label venv is missing
    model = args.model
    if model is not None:
        check_model_file(model, network)  # refused here, not with a bare 500 at the first infer
    else:
        overrides = {**network, "epochs": args.train_epochs, "epoch_length": args.train_steps,
                     "val_interval": args.train_epochs + 1, "learning_rate": 1e-3}
        if args.dataset_dir:
            overrides["dataset_dir"] = args.dataset_dir
        if args.pretrained_checkpoint:
            overrides["pretrained_checkpoint"] = args.pretrained_checkpoint
        model = train_bundle(work / "train", overrides=overrides)
        check_model_file(model, network)
    app = prepare_label_app(work, model, args.label_venv, network=network)
    studies = work / "studies"  # kept across restarts: saved labels and uploaded images stay
    ids = write_label_studies(studies, args.dataset_dir, with_labels=args.with_labels)
    cmd = label_server_command(app, studies, args.label_venv, args.port, args.host)
    env = label_server_env(work / "home", app=app, cors_origins=args.cors_origin, host=args.host,
                           allowed_hosts=args.allowed_host)
    origins = args.cors_origin or loopback_origins(args.port)
    print(f"serving {len(ids)} studies from {studies} on http://{args.host}:{args.port} (CORS origins: "
          f"{', '.join(origins)}; Host names answered: {', '.join(_answered_hosts(args.host, args.allowed_host))})\n"
          f"  curl -X POST 'http://{args.host}:{args.port}/infer/{BUNDLE_NAME}?image={ids[0]}&output=image' -o seg.nii.gz",
          flush=True)
    os.chdir(work / "home")  # relative names in requests never resolve against the user's folder
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m mfassl_medical.label_app`` parser: booleans and numbers are parsed strictly
    (:func:`mfassl.options.as_bool` / :func:`~mfassl.options.as_int`); a bad value stops with an error naming the
    option."""
    p = argparse.ArgumentParser(prog="python -m mfassl_medical.label_app", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="prepare the app and studies, then run the MONAI Label server (foreground)")
    s.add_argument("--workdir", default="outputs/label", help="app, studies, HOME and training output")
    s.add_argument("--label-venv", default=".venv-label")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--port", type=option_type(as_int, "--port", low=1, high=65535), default=8000)
    s.add_argument("--cors-origin", action="append", type=_origin_arg, default=None, metavar="URL",
                   help="a browser origin allowed to call the server (repeatable; default: http://127.0.0.1:PORT "
                        "and http://localhost:PORT only)")
    s.add_argument("--allowed-host", action="append", type=_host_arg, default=None, metavar="NAME",
                   help="a further host name the server answers in the Host header (repeatable; default: the --host "
                        "address and 127.0.0.1, localhost, ::1 only: other names are refused against DNS rebinding)")
    s.add_argument("--model", help="trained model.pt (default: train a tiny one first)")
    s.add_argument("--network", type=_network_arg,
                   help="JSON of the network sizes the model has (default: the tiny sizes)")
    s.add_argument("--dataset-dir", help="BraTS folder (default: demo data)")
    s.add_argument("--with-labels", type=option_type(as_bool, "--with-labels"), default=True, metavar="BOOL",
                   help="add the reference masks as labels/final where a case has none (true/false; default true)")
    s.add_argument("--pretrained-checkpoint", help="MFASSL checkpoint for the encoder of the tiny training")
    s.add_argument("--train-epochs", type=option_type(as_int, "--train-epochs", low=1), default=1)
    s.add_argument("--train-steps", type=option_type(as_int, "--train-steps", low=1), default=4,
                   help="iterations per epoch of the tiny training")
    w = sub.add_parser("studies", help="add the cases a MONAI Label studies folder lacks (4D NIfTI per case)")
    w.add_argument("out_dir")
    w.add_argument("--dataset-dir")
    w.add_argument("--with-labels", type=option_type(as_bool, "--with-labels"), default=True, metavar="BOOL")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; 2 with one ``error: ...`` line on stderr for what it refuses (a missing or wrong ``--model``,
    a ``--label-venv`` that is not one, a data set it cannot read), 1 when the tiny training fails."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.cmd == "studies":
            ids = write_label_studies(args.out_dir, args.dataset_dir, with_labels=args.with_labels)
            print(f"{len(ids)} studies in {args.out_dir}")
            return 0
        return _serve(args)
    except (FileNotFoundError, ValueError) as err:  # ModelFileError, DatasetLayoutError, bad ids are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"error: the training of the smoke model failed (exit status {err.returncode}): {' '.join(err.cmd)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
