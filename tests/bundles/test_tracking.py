"""``python -m monai.bundle run ... --tracking mlflow`` (MONAI's experiment tracking) on every bundle, offline.

MONAI's default MLflow settings add an ``MLFlowHandler`` to ``train#handlers`` that logs
``from_engine(["loss"], first=True)`` of every iteration as ``train_loss``, the optimizer's lr, the trainer's
``engine.state.metrics`` every epoch, and the executed config file as an artifact, into a SQLite store at
``<output_dir>/mlruns.db``. Before the pretraining trainers gave MONAI's handlers their output form
(``decollate``), the first iteration crashed (``float()`` of a tuple). Each run here is the command a user types,
with its sockets refused and MLflow's telemetry off (:func:`bundle_utils.refuse_network`), through MONAI's command
line parser in the test's interpreter (:func:`cli_runner.run_monai_bundle`).
"""

from __future__ import annotations

import json
import os

import pytest

from bundle_utils import BUNDLES, TINY, cli_args, refuse_network
from cli_runner import run_monai_bundle
from mfassl_medical.label_app import TINY_NETWORK

SEG_TINY = {**TINY_NETWORK, "epochs": 1, "epoch_length": 2, "max_cases": 3}


def _runs(db: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("monai_experiment")
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mfassl_brats_pretrain", "mfassl_chexpert_pretrain", "mfassl_brats_segmentation"])
def test_tracking_mlflow_logs_losses_lr_gate_and_config(tmp_path, name, monkeypatch):
    root = BUNDLES / name
    overrides = {**TINY[name], "epochs": 2} if name in TINY else SEG_TINY
    refuse_network(monkeypatch)
    proc = run_monai_bundle("run", "--config_file", str(root / "configs" / "train.json"), "--bundle_root",
                            str(tmp_path), "--tracking", "mlflow", *cli_args(overrides), cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    # the store is under the run's output folder: <bundle_root>/runs/pretrain, or eval/ of the segmentation bundle
    out = tmp_path / ("eval" if name == "mfassl_brats_segmentation" else "runs/pretrain")
    client, runs = _runs(str(out / "mlruns.db"))
    (run,) = runs
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(loss) >= 2 and all(m.value == m.value for m in loss)  # every iteration, finite
    assert "lr_group_0" in metrics
    if name in TINY:
        # the step's terms, averaged per epoch (mfassl.engine.EpochMetrics), one point per epoch
        for key in ("loss", "base", "mirror", "l_eq", "l_mid", "gate_mean", "w", "lr", "momentum"):
            assert key in metrics, key
            assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
        history = json.loads((out / "history.json").read_text())
        assert [m.value for m in loss] == pytest.approx([r["loss"] for r in history], rel=1e-6)
        assert 0.0 <= metrics["gate_mean"] <= 1.0
    else:
        assert {"val_mean_dice", "dice_wt"} <= set(metrics)
    # the executed config (every file merged, overrides applied) is an artifact of the run
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    (config,) = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    logged = json.loads(open(os.path.join(client.download_artifacts(run.info.run_id, config, str(tmp_path)))).read())
    assert logged["network_def"]["_target_"] == json.loads((root / "configs" / "train.json").read_text())[
        "network_def"]["_target_"]
