"""MONAI Label app serving MFASSL bundles (copied to ``<app>/main.py``; runs in the MONAI Label venv).

``MFASSLLabelApp`` serves every bundle named by ``--conf models a,b`` from ``<app>/model/<name>/`` through MONAI
Label's ``BundleInferTask`` (and ``BundleTrainTask`` where the bundle is trainable), with two strategies
(``random``, ``first``). It differs from the ``monaibundle`` sample app in what it lets a request name:

- its datastore (:class:`StudiesDatastore`) accepts only image ids and label tags that name one file inside the
  studies folder (rules in ``mfassl_ids``) and only the datastore's file extensions, and stores a label only when
  it is a label map of its image (``mfassl_labels``: a readable NIfTI on the image's grid holding the served
  bundles' label values);
- the label names it reports are those of the bundle's ``label_map`` output when its metadata has one (the values
  its inference writes), not the network's region channels;
- ``infer`` takes an image *id* of the datastore (or a file MONAI Label itself received for this request: an
  upload or a session), never a path a client typed; an unknown model or image is a ``NotFoundError``.

The errors (``mfassl_ids.InvalidIdError`` and ``mfassl_labels.InvalidLabelError`` -> 400, ``NotFoundError`` and
MONAI Label's image/label not found -> 404) are turned into HTTP answers by ``mfassl_asgi``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Dict, Iterable, Optional

import monailabel
from mfassl_ids import InvalidIdError, NotFoundError, check_id, id_problem
from mfassl_labels import InvalidLabelError, bundle_label_values, label_problem, label_value_sets
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models, strtobool

logger = logging.getLogger(__name__)


def _inside(path: str, root: str) -> bool:
    """Whether the real ``path`` lies inside the real folder ``root``."""
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)
    except ValueError:  # different drives
        return False


def _label_map_names(bundle: str) -> Dict[str, int]:
    """``{name: value}`` of the bundle's ``label_map`` output (metadata ``network_data_format``), background left out.

    ``BundleInferTask`` names the labels after the *first* output's ``channel_def``; a bundle whose network output
    (e.g. three region channels) differs from the label map its inference writes describes the written values in
    an output called ``label_map``, and those are the names a client must see. Empty when there is none.
    """
    try:
        with open(os.path.join(bundle, "configs", "metadata.json")) as fh:
            outputs = json.load(fh)["network_data_format"]["outputs"]
        channels = outputs["label_map"]["channel_def"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(v).lower(): int(k) for k, v in channels.items() if str(v).lower() != "background"}


class StudiesDatastore(LocalDatastore):
    """MONAI Label's local datastore that refuses ids, tags and extensions naming files outside its folder.

    Every public method that takes an image id, label id or label tag checks it with ``mfassl_ids.check_id``
    before MONAI Label builds a path from it; ``add_image`` / ``save_label`` also require the file's extension to
    be one of the datastore's (``MONAI_LABEL_DATASTORE_FILE_EXT``), and that the destination lies in the studies
    folder. ``save_label`` stores only a label map of its image (``mfassl_labels.label_problem``).

    Args:
        label_values: the served bundles' ``label_map`` values; a label holds these (or, for BraTS 2021 values,
            the BraTS 2023 ones: ``mfassl_labels.label_value_sets``); None: any whole numbers.
        args, kwargs: those of MONAI Label's ``LocalDatastore``.

    Raises (from those methods):
        InvalidIdError: a bad id, tag or extension.
        InvalidLabelError: (``save_label``) an upload that is not a readable NIfTI on its image's grid with the
            label values.
    """

    def __init__(self, *args: Any, label_values: Optional[Iterable[int]] = None, **kwargs: Any) -> None:
        self.label_values = None if label_values is None else sorted({int(v) for v in label_values})
        super().__init__(*args, **kwargs)

    def _check_ext(self, filename: str, what: str) -> str:
        _, ext = self._to_id(os.path.basename(filename))
        allowed = [e.replace("*", "") for e in self._extensions]
        if ext not in allowed:
            raise InvalidIdError(f"{what} extension {ext!r} is not one of the datastore's {allowed}.")
        return ext

    def _check_dest(self, dest: str) -> None:
        if not _inside(dest, self._datastore_path):
            raise InvalidIdError(f"{dest!r} lies outside the studies folder {self._datastore_path!r}.")

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        ext = self._check_ext(image_filename, "image")
        if not image_id:
            image_id, _ = self._to_id(os.path.basename(image_filename))
        check_id(image_id, "image id")
        self._check_dest(os.path.join(self._datastore.image_path(), self._filename(image_id, ext)))
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        ext = self._check_ext(label_filename, "label")
        self._check_dest(os.path.join(self._datastore.label_path(label_tag), self._filename(image_id, ext)))
        image = super().get_image_uri(image_id)
        if image:  # an unknown image ("") is MONAI Label's own 404 below
            problem = label_problem(label_filename, image, label_value_sets(self.label_values))
            if problem is not None:
                raise InvalidLabelError(f"label for image {image_id!r} (tag {label_tag!r}) {problem}; nothing was "
                                        "stored.")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        return super().remove_image(check_id(image_id, "image id"))

    def remove_label(self, label_id: str, label_tag: str) -> None:
        return super().remove_label(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def get_image(self, image_id: str, params: Optional[Dict[str, Any]] = None) -> Any:
        return super().get_image(check_id(image_id, "image id"), params)

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(check_id(image_id, "image id"))

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        return super().get_image_info(check_id(image_id, "image id"))

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        return super().update_image_info(check_id(image_id, "image id"), info)

    def get_label(self, label_id: str, label_tag: str, params: Optional[Dict[str, Any]] = None) -> Any:
        return super().get_label(check_id(label_id, "label id"), check_id(label_tag, "label tag"), params)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        return super().get_label_info(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        return super().update_label_info(check_id(label_id, "label id"), check_id(label_tag, "label tag"), info)

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        return super().get_labels_by_image_id(check_id(image_id, "image id"))


class MFASSLLabelApp(MONAILabelApp):
    """The MONAI Label app for the bundles under ``<app>/model/`` (``--conf models NAME[,NAME]``)."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.model_dir = os.path.join(app_dir, "model")
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MFASSL bundles",
                         description="MFASSL segmentation bundles served from local files",
                         version=monailabel.__version__)

    # ------------------------------------------------------------------ tasks
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        values: Optional[set] = None
        for path in self.models.values():
            found = bundle_label_values(path)
            if found is not None:
                values = found if values is None else values | found
        logger.info("studies datastore (ids and labels checked; label values %s): %s",
                    sorted(values) if values is not None else "any", self.studies)
        return StudiesDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY, label_values=values)

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, path in self.models.items():
            task = BundleInferTask(path, self.conf)
            names = _label_map_names(path)
            if names:
                task.labels = names
            infers[name] = task
            logger.info("+++ inferer %s => %s (labels %s)", name, path, task.labels)
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.models.items():
            task = BundleTrainTask(path, self.conf)
            if task and task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    # ------------------------------------------------------------------ request checks
    def _check_model(self, model: Any, tasks: Dict[str, Any], what: str) -> None:
        if not model or model not in tasks:
            raise NotFoundError(f"unknown {what} {model!r}; this server has {sorted(tasks)}.")

    def _received_roots(self) -> list[str]:
        """Folders where MONAI Label puts files it received for a request (uploads, sessions)."""
        roots = [tempfile.gettempdir()]
        sessions = self.sessions()
        if sessions is not None and getattr(sessions, "store_path", ""):
            roots.append(sessions.store_path)
        return roots

    def _check_image(self, image: Any, datastore: Optional[Datastore]) -> None:
        if not isinstance(image, str):
            return  # in-memory input from Python callers
        if id_problem(image) is None:
            ds = datastore if datastore is not None else self.datastore()
            if image not in ds.list_images():
                raise NotFoundError(f"image {image!r} is not in the studies folder; GET /datastore/ lists them.")
            return
        if os.path.isabs(image) and os.path.exists(image) and any(_inside(image, r) for r in self._received_roots()):
            return  # an upload or session file MONAI Label wrote itself
        check_id(image, "image id")  # raises with the rule it breaks

    def infer(self, request: Dict[str, Any], datastore: Optional[Datastore] = None) -> Dict[str, Any]:
        """MONAI Label's ``infer`` after checking the model name and the image id.

        Raises:
            NotFoundError: unknown model or image id.
            InvalidIdError: an image that is neither a datastore id nor a file MONAI Label received.
        """
        self._check_model(request.get("model"), self._infers, "model")
        self._check_image(request.get("image"), datastore)
        return super().infer(request, datastore)

    def batch_infer(self, request: Dict[str, Any], datastore: Optional[Datastore] = None) -> Any:
        self._check_model(request.get("model"), self._infers, "model")
        return super().batch_infer(request, datastore)

    def train(self, request: Dict[str, Any]) -> Any:
        self._check_model(request.get("model"), self._trainers, "training model")
        return super().train(request)

    def scoring(self, request: Dict[str, Any], datastore: Optional[Datastore] = None) -> Any:
        self._check_model(request.get("method"), self._scoring_methods, "scoring method")
        return super().scoring(request, datastore)

    def next_sample(self, request: Dict[str, Any]) -> Dict[str, Any]:
        self._check_model(request.get("strategy") or "random", self._strategies, "strategy")
        return super().next_sample(request)
