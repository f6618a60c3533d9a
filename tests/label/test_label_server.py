"""Integration: the real MONAI Label 0.8.5 server (in ``.venv-label``) serves the segmentation bundle over HTTP.

A tiny SwinUNETR is trained for two steps on the demo data through the bundle's ``train.json``, the
``monaibundle`` app is copied out of the wheel, the server starts offline on 127.0.0.1, ``/info/`` lists the model,
``POST /infer`` returns a label volume for a lesion case, and SIGTERM stops the server. A two-step model does not
segment: the test checks what is honest to check (shape, affine, labels within the bundle's label set) and records
the whole-tumour Dice it measured against the demo mask (``-rA`` or the JUnit report show it).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mfassl_medical.label_app import (
    BUNDLE_NAME,
    TINY_NETWORK,
    infer,
    prepare_label_app,
    start_label_server,
    stop_label_server,
    train_bundle,
    wait_until_ready,
    write_label_studies,
)
from mfassl_medical.segmentation import LABEL_NAMES

LABEL_VENV = Path(os.environ.get("MFASSL_LABEL_VENV", Path(__file__).resolve().parents[2] / ".venv-label"))

pytestmark = [
    pytest.mark.label,
    pytest.mark.skipif(not (LABEL_VENV / "bin" / "monailabel").is_file(),
                       reason=f"MONAI Label venv not found at {LABEL_VENV} (create it with `make label-venv`, or set "
                              "MFASSL_LABEL_VENV)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_infers_a_label_volume(tmp_path, record_property, capsys):
    import nibabel as nib

    model = train_bundle(tmp_path / "train", overrides={**TINY_NETWORK, "epochs": 1, "epoch_length": 2, "max_cases": 3,
                                                        "val_interval": 2, "learning_rate": 1e-3}, timeout=600)
    app = prepare_label_app(tmp_path, model, LABEL_VENV, network=TINY_NETWORK)
    assert (app / "model" / BUNDLE_NAME / "models" / "model.pt").is_file()
    studies = tmp_path / "studies"
    lesion, healthy = "BraTS2021_00000", "BraTS2021_00002"
    assert write_label_studies(studies, cases=[lesion, healthy]) == [lesion, healthy]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = start_label_server(app, studies, LABEL_VENV, tmp_path / "home", port=port, log_file=log)
    try:
        info = wait_until_ready(url, proc, timeout=240, log_file=log)
        assert BUNDLE_NAME in info["models"]
        labels = info["models"][BUNDLE_NAME]["labels"]
        assert {int(v) for v in labels.values()} == {k for k in LABEL_NAMES if k}
        with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=30) as r:
            assert {lesion, healthy} <= set(json.loads(r.read())["objects"])

        out = infer(url, lesion, tmp_path / "pred.nii.gz")
        pred_img = nib.load(str(out))
        ref_img = nib.load(str(studies / f"{lesion}.nii.gz"))
        pred = np.asarray(pred_img.dataobj)
        assert pred.shape == ref_img.shape[:3]
        np.testing.assert_allclose(pred_img.affine, ref_img.affine, atol=1e-4)
        values = set(np.unique(pred).astype(int).tolist())
        assert values <= set(LABEL_NAMES), values

        seg = np.asarray(nib.load(str(studies / "labels" / "final" / f"{lesion}.nii.gz")).dataobj)
        wt_p, wt_t = pred > 0, seg > 0
        dice = 2.0 * (wt_p & wt_t).sum() / max(1, wt_p.sum() + wt_t.sum())
        assert 0.0 <= dice <= 1.0
        record_property("wt_dice_two_step_model", float(dice))
        record_property("predicted_labels", sorted(values))
        with capsys.disabled():
            print(f"\n[label] {lesion}: labels {sorted(values)}, WT Dice of the two-step model {dice:.4f} "
                  f"({int(wt_p.sum())} predicted vs {int(wt_t.sum())} reference tumour voxels)")
    finally:
        code = stop_label_server(proc)
    assert code in (0, -15), log.read_text()[-3000:]
    assert (studies / f"{lesion}.nii.gz").is_file()  # the server wrote into the copy only
