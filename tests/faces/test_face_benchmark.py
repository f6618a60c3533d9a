import json

import numpy as np
import pytest
import torch

from mfassl.backbones import create_backbone
from mfassl_faces import cli_tasks
from mfassl_faces.benchmark import run_attribute_probe, run_landmark_benchmark
from mfassl_faces.demo import build_demo_data
from mfassl_faces.heads import HeatmapLandmarkHead, LandmarkModel, soft_argmax_2d
from mfassl_faces.io import write_image
from mfassl_faces.readers import CelebAHQDataset, LandmarkDataset, read_300w_folder

TINY = ["--size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "4"]


def _tiny_backbone():
    return create_backbone("mfa_vit", spatial_dims=2, img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2,
                           num_heads=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_data(tmp_path_factory.mktemp("faces") / "demo", n_per_face=2, seed=1, include_astronaut=False,
                           max_side=160)


def test_soft_argmax_finds_the_peak() -> None:
    hm = torch.full((1, 1, 5, 9), -50.0)
    hm[0, 0, 1, 6] = 50.0
    np.testing.assert_allclose(soft_argmax_2d(hm)[0, 0].numpy(), [6 / 8, 1 / 4], atol=1e-5)


@pytest.mark.parametrize("head", ["linear", "heatmap"])
def test_heads_shapes_and_frozen_encoder(head: str) -> None:
    bb = _tiny_backbone()
    model = LandmarkModel(bb, head, 68, 32, finetune=False)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 68, 2)
    out.sum().backward()
    assert all(p.grad is None for p in bb.parameters())
    assert any(p.grad is not None for p in model.head.parameters())
    with pytest.raises(ValueError):
        HeatmapLandmarkHead(32, 5, grid=None)


def test_tiny_landmark_benchmark_end_to_end(demo, tmp_path) -> None:
    recs = read_300w_folder(demo)
    train = LandmarkDataset(recs[:4], "ibug68", size=32, flip_prob=0.5)
    test = LandmarkDataset(recs[4:], "ibug68", size=32)
    res = run_landmark_benchmark(_tiny_backbone(), train, test, "ibug68", 32, head="linear", epochs=2, batch_size=4,
                                 n_boot=20, out_dir=tmp_path)
    assert res["n_test"] == 2 and res["nme"]["ci_low"] <= res["nme"]["value"] <= res["nme"]["ci_high"]
    assert 0 <= res["auc"]["value"] <= 1 and 0 <= res["fr"]["value"] <= 1 and res["flip_nme"] >= 0
    assert len(res["train_loss"]) == 2
    assert (tmp_path / "ced.png").is_file() and json.loads((tmp_path / "landmark_benchmark.json").read_text())


def _celeba_tree(tmp_path) -> None:
    """16 images whose brightness sets attribute A0 (learnable); the other 39 are random; official partition:
    10 train, 6 test."""
    rng = np.random.default_rng(0)
    names = [f"A{k}" for k in range(40)]
    n = 16
    lines = []
    for i in range(n):
        img = np.zeros((24, 24, 3), np.uint8)
        bright = i % 2
        img[:] = 200 if bright else 30  # attribute 0 follows the brightness: learnable
        write_image(tmp_path / "img" / f"{i}.jpg", img)
        vals = rng.choice([-1, 1], 40)
        vals[0] = 1 if bright else -1
        lines.append(f"{i}.jpg " + " ".join(str(v) for v in vals))
    (tmp_path / "attr.txt").write_text(f"{n}\n{' '.join(names)}\n" + "\n".join(lines) + "\n")
    (tmp_path / "part.txt").write_text("\n".join(f"{i}.jpg {0 if i < 10 else 2}" for i in range(n)) + "\n")


def test_attribute_probe_end_to_end(tmp_path) -> None:
    _celeba_tree(tmp_path)
    tr = CelebAHQDataset(tmp_path / "img", tmp_path / "attr.txt", "train", partition_file=tmp_path / "part.txt", size=32)
    te = CelebAHQDataset(tmp_path / "img", tmp_path / "attr.txt", "test", partition_file=tmp_path / "part.txt", size=32)
    res = run_attribute_probe(_tiny_backbone(), tr, te, epochs=50, n_boot=20, out_dir=tmp_path / "out")
    assert res["per_attribute"]["A0"] == pytest.approx(1.0)
    assert 0 <= res["ece"] <= 1 and 0 <= res["brier"] <= 1
    assert (tmp_path / "out" / "attribute_probe.json").is_file()
    # accuracy and balanced accuracy at p = 0.5 beside AUROC, per attribute and averaged
    a0 = res["per_attribute_metrics"]["A0"]
    assert a0["auroc"] == pytest.approx(1.0) and a0["positive_rate"] == pytest.approx(3 / 6)
    per = res["per_attribute_metrics"]
    assert res["mean_accuracy"]["value"] == pytest.approx(np.mean([m["accuracy"] for m in per.values()]))
    finite = [m["balanced_accuracy"] for m in per.values() if np.isfinite(m["balanced_accuracy"])]
    assert res["mean_balanced_accuracy"]["value"] == pytest.approx(np.mean(finite))
    assert 0 <= res["mean_accuracy"]["ci_low"] <= res["mean_accuracy"]["value"] <= res["mean_accuracy"]["ci_high"] <= 1


def test_probe_command_prints_accuracy_and_balanced_accuracy(tmp_path, capsys) -> None:
    _celeba_tree(tmp_path)
    rc = cli_tasks.main(["probe", "--images", str(tmp_path / "img"), "--attributes", str(tmp_path / "attr.txt"),
                         "--partition", str(tmp_path / "part.txt"), "--epochs", "30", "--n-boot", "10", "--out",
                         str(tmp_path / "out"), *TINY])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and {"mean_auroc", "mean_accuracy", "mean_balanced_accuracy", "ece", "brier"} <= set(res)
    assert 0 <= res["mean_balanced_accuracy"]["value"] <= 1
    saved = json.loads((tmp_path / "out" / "attribute_probe.json").read_text())
    assert set(saved["per_attribute_metrics"]["A5"]) == {"auroc", "accuracy", "balanced_accuracy", "positive_rate"}


def test_cli_pretrain_resume_then_benchmark(demo, tmp_path, capsys) -> None:
    out = tmp_path / "pre"
    base = ["pretrain", "--data", str(demo), "--out", str(out), "--batch-size", "4", "--no-progress", *TINY]
    assert cli_tasks.main([*base, "--epochs", "1"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["epochs"] == 1 and (out / "backbone.pt").is_file() and (out / "tb").is_dir()
    assert cli_tasks.main([*base, "--epochs", "2", "--resume", "auto", "--resume-force"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["epochs"] == 2 and second["iterations"] == 2 * first["iterations"]
    rc = cli_tasks.main(["benchmark", "--data", str(demo), "--checkpoint", str(out / "backbone.pt"), "--out",
                         str(tmp_path / "bench"), "--epochs", "1", "--n-boot", "10", "--head", "heatmap", *TINY])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and res["n_test"] == 2 and (tmp_path / "bench" / "ced.png").is_file()


def test_cli_bad_checkpoint_is_a_clear_error(demo, tmp_path, capsys) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = cli_tasks.main(["benchmark", "--data", str(demo), "--checkpoint", str(bad), "--epochs", "1", *TINY])
    assert rc == 1 and "broken.pt" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    pytest.param(["--objective", "mixedae"], id="mixedae-vit"),
    pytest.param(["--objective", "dagman", "--backbone", "mfa_swin", "--patch-size", "2", "--embed-dim", "24",
                  "--depth", "4", "--num-heads", "4", "--window-size", "4"], id="dagman-swin"),
])
def test_cli_pretrain_related_objectives(demo, tmp_path, capsys, extra) -> None:
    out = tmp_path / "pre"
    args = ["pretrain", "--data", str(demo), "--out", str(out), "--batch-size", "4", "--no-progress", "--epochs", "1",
            *TINY, *extra, "--t-sym", "0", "--t-mfa", "0", "--t-gate", "1"]
    assert cli_tasks.main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["iterations"] > 0
    saved = torch.load(out / "backbone.pt", weights_only=True)
    assert saved["backbone_name"] == ("mfa_swin" if "dagman" in extra else "mfa_vit")


class _Built(Exception):
    """Stops ``pretrain`` once its method is built."""


@pytest.mark.parametrize("objective,counts", [("dino", (2, 8)), ("mocov3", (2, 0)), ("mae", (1, 0))])
def test_cli_pretrain_views_are_the_objectives_own(demo, tmp_path, monkeypatch, objective, counts) -> None:
    """``pretrain --objective X`` draws the global and local crops X's ``ViewSpec`` asks for."""
    import mfassl.method
    from mfassl.objectives import OBJECTIVES

    built = []

    class Recorded(mfassl.method.MFASSL):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)
            raise _Built

    monkeypatch.setattr(mfassl.method, "MFASSL", Recorded)
    with pytest.raises(_Built):
        cli_tasks.main(["pretrain", "--data", str(demo), "--out", str(tmp_path / "pre"), "--objective", objective,
                        "--no-progress", *TINY])
    views, spec = built[0].views, OBJECTIVES.get(objective).views
    assert (views.n_global, views.n_local) == counts == (spec.n_global, spec.n_local)
    assert list(views.global_size) == [32, 32] and list(views.local_size) == [16, 16]
