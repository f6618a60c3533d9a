"""MONAI's bundle workflow properties: ``ConfigWorkflow(..., workflow_type="train"|"infer").check_properties()``.

MONAI Label's bundle app, MONAI FL's ``MonaiAlgo`` and the model zoo's property check drive a bundle through these
ids (``train#trainer``, ``train#dataset``, ``train#inferer``, ``train#trainer#max_epochs``; ``dataset``,
``evaluator``, ``inferer``, ``network_def`` and the optional ids they reference). Before, the pretraining bundles
lacked ``train#inferer`` and the inference ids, and ``train#handlers`` held a bare reference that the optional-id
check cannot read. The check parses the properties (the trainer is built on the tiny demo data), as those tools do
after ``initialize()``.
"""

from __future__ import annotations

import pytest

from bundle_utils import BUNDLES, TINY
from mfassl_medical.label_app import TINY_NETWORK

SEG_TINY = {**TINY_NETWORK, "max_cases": 3}
CASES = [(name, kind) for name in ("mfassl_brats_pretrain", "mfassl_chexpert_pretrain", "mfassl_brats_segmentation")
         for kind in ("train", "infer")]


def workflow(name: str, kind: str, tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    root = BUNDLES / name
    monkeypatch.syspath_prepend(str(root))  # bundle-local code (scripts/), as MONAI Label and the zoo's CI do
    overrides = dict(TINY.get(name, SEG_TINY)) if kind == "train" else {}
    if kind == "infer" and name == "mfassl_brats_segmentation":
        from mfassl_medical.demo_data import build_demo_data

        overrides["dataset_dir"] = str(build_demo_data().brats)  # its inference reads a folder of cases
    wf = ConfigWorkflow(config_file=str(root / "configs" / ("train.json" if kind == "train" else "inference.json")),
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), workflow_type=kind,
                        bundle_root=str(tmp_path), **overrides)
    wf.initialize()
    return wf


@pytest.mark.parametrize("name,kind", CASES)
def test_check_properties_passes(name, kind, tmp_path, monkeypatch):
    wf = workflow(name, kind, tmp_path, monkeypatch)
    assert wf.check_properties() == []
    if kind == "train":
        from monai.inferers import SimpleInferer

        assert isinstance(wf.train_inferer, SimpleInferer) and len(wf.train_dataset) > 0
        assert wf.trainer.optimizer is not None  # MONAI's handlers read the lr there
        assert int(wf.max_epochs) >= 1
    else:
        # the segmentation bundle's inference dataset is an iterable that skips bad cases (no len): its cases
        cases = wf.dataset.data if not hasattr(wf.dataset, "__len__") else wf.dataset
        assert len(cases) > 0
        assert callable(wf.inferer) and callable(getattr(wf.evaluator, "run"))


@pytest.mark.parametrize("name", ["mfassl_brats_pretrain", "mfassl_chexpert_pretrain"])
def test_inference_runs_through_the_inferer_property(name, tmp_path, monkeypatch):
    """The exporter computes the embeddings with the workflow's ``inferer`` (what MONAI Label swaps in)."""
    import torch
    from monai.inferers import SimpleInferer

    wf = workflow(name, "infer", tmp_path, monkeypatch)
    calls = []

    class Recording(SimpleInferer):
        def __call__(self, inputs, network, *args, **kwargs):
            calls.append(tuple(inputs.shape))
            return super().__call__(inputs, network, *args, **kwargs)

    wf.inferer = Recording()  # a property: written into the config, the workflow parses again
    wf.initialize()
    exporter = wf.evaluator
    exporter.checkpoint = None  # no weights in this test: the random network is enough to see the call
    exporter.save_gates = False
    item = exporter.dataset[0]
    feats, _, _, _ = exporter.embed(torch.as_tensor(item["image"])[None])
    assert calls and calls[0][0] == 1 and feats.shape[0] == 1
