import json
import subprocess
import sys
from pathlib import Path

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

from cli_runner import run_main

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
        vals[1] = 1  # one class only: its AUROC is undefined (NaN), written null
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
    # accuracy and balanced accuracy at p = 0.5 beside AUROC, per attribute and averaged
    a0 = res["per_attribute_metrics"]["A0"]
    assert a0["auroc"] == pytest.approx(1.0) and a0["positive_rate"] == pytest.approx(3 / 6)
    per = res["per_attribute_metrics"]
    assert res["mean_accuracy"]["value"] == pytest.approx(np.mean([m["accuracy"] for m in per.values()]))
    finite = [m["balanced_accuracy"] for m in per.values() if np.isfinite(m["balanced_accuracy"])]
    assert res["mean_balanced_accuracy"]["value"] == pytest.approx(np.mean(finite))
    assert 0 <= res["mean_accuracy"]["ci_low"] <= res["mean_accuracy"]["value"] <= res["mean_accuracy"]["ci_high"] <= 1
    saved = _strict((tmp_path / "out" / "attribute_probe.json").read_text())  # literal NaN before
    assert saved["per_attribute"]["A1"] is None and saved["per_attribute"]["A0"] == pytest.approx(1.0)


def test_probe_command_prints_accuracy_and_balanced_accuracy(tmp_path) -> None:
    """Through the command line: accuracy and balanced accuracy beside AUROC, strict JSON on stdout and in the
    file (A1 has one class: its AUROC is null)."""
    _celeba_tree(tmp_path)
    run = _faces_cli("probe", "--images", str(tmp_path / "img"), "--attributes", str(tmp_path / "attr.txt"),
                     "--partition", str(tmp_path / "part.txt"), "--epochs", "30", "--n-boot", "10", "--out",
                     str(tmp_path / "out"), *TINY)
    assert run.returncode == 0, run.stderr
    res = _strict(run.stdout.strip().splitlines()[-1])
    assert res["n_test"] == 6 and {"mean_auroc", "mean_accuracy", "mean_balanced_accuracy", "ece", "brier"} <= set(res)
    assert 0 <= res["mean_auroc"]["value"] <= 1 and 0 <= res["mean_balanced_accuracy"]["value"] <= 1
    saved = _strict((tmp_path / "out" / "attribute_probe.json").read_text())
    assert set(saved["per_attribute_metrics"]["A5"]) == {"auroc", "accuracy", "balanced_accuracy", "positive_rate"}
    assert saved["per_attribute"]["A1"] is None


def test_cli_pretrain_resume_then_benchmark(demo, tmp_path, capsys) -> None:
    out = tmp_path / "pre"
    base = ["pretrain", "--data", str(demo), "--out", str(out), "--batch-size", "4", "--no-progress", *TINY]
    assert cli_tasks.main([*base, "--epochs", "1"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["epochs"] == 1 and (out / "backbone.pt").is_file() and (out / "tb").is_dir()
    # a changed --epochs is refused with the switch this command line spells, not a traceback
    assert cli_tasks.main([*base, "--epochs", "2", "--resume", "auto"]) == 1
    err = capsys.readouterr().err
    assert "error: refusing to resume from" in err and "epochs" in err and "pass --resume-force" in err
    assert "resume_force" not in err and "Traceback" not in err
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


ROOT = Path(__file__).resolve().parents[2]


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _faces_cli(*args: str) -> subprocess.CompletedProcess:
    return run_main("mfassl_faces", *args, cwd=ROOT)


def test_cli_model_predicting_nan_fails_every_face(demo, tmp_path) -> None:
    """An encoder whose weights are NaN predicts NaN for every face: FR@0.1 is 1 and AUC 0 (before, NaN > 0.1 was
    False and FR came out 0), the NME is null with no interval around it, stdout and the JSON file are strict."""
    backbone = _tiny_backbone()
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in backbone.state_dict().items()}
    config = dict(spatial_dims=2, img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4)
    torch.save({"backbone_name": "mfa_vit", "backbone_config": json.dumps(config), "backbone_state": state},
               tmp_path / "nan.pt")
    run = _faces_cli("benchmark", "--data", str(demo), "--checkpoint", str(tmp_path / "nan.pt"), "--out",
                     str(tmp_path / "bench"), "--epochs", "1", "--n-boot", "20", *TINY)
    assert run.returncode == 0, run.stderr
    res = _strict(run.stdout.strip().splitlines()[-1])
    assert res["n_failed"] == res["n_test"] == 2
    assert res["fr"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert res["auc"]["value"] == 0.0 and res["nme"] == {"value": None, "ci_low": None, "ci_high": None}
    assert res["flip_nme"] is None
    saved = _strict((tmp_path / "bench" / "landmark_benchmark.json").read_text())
    assert saved["fr"]["value"] == 1.0 and saved["nme"]["value"] is None
    assert "2 of 2 test predictions are not finite" in run.stderr


def test_cli_wflw_nan_line_is_refused_naming_file_and_line(tmp_path) -> None:
    from face_helpers import place, template

    pts = place(template("wflw98"), 0.0, 20.0, (40.0, 45.0))
    write_image(tmp_path / "WFLW_images" / "a.jpg", np.full((90, 80, 3), 128, np.uint8))
    line = " ".join(f"{v:.3f}" for v in pts.ravel()) + " 15 20 65 75 0 0 0 0 0 0 a.jpg"
    fields = line.split()
    fields[6] = "nan"  # landmark 3, x
    (tmp_path / "train.txt").write_text(line + "\n" + line + "\n")
    (tmp_path / "test.txt").write_text(line + "\n" + " ".join(fields) + "\n")
    run = _faces_cli("benchmark", "--wflw-train", str(tmp_path / "train.txt"), "--wflw-test", str(tmp_path / "test.txt"),
                     "--wflw-images", str(tmp_path / "WFLW_images"), "--epochs", "1", *TINY)
    assert run.returncode == 1 and run.stdout == ""
    assert f"error: {tmp_path / 'test.txt'}: line 2: non-finite value 'nan' (landmark 3 x" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("args, message", [
    (["--size", "0"], "option '--size': '0' is outside the allowed range"),
    (["--size", "60"], "--size 60 must be a multiple of --patch-size 16"),
    (["--embed-dim", "30"], "--embed-dim 30 must be a multiple of --num-heads 4"),
    (["--epochs", "0"], "option '--epochs'"),
    (["--batch-size", "-2"], "option '--batch-size'"),
    (["--lr", "nan"], "option '--lr'"),
])
def test_cli_sizes_are_checked_before_anything_runs(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as ex:
        cli_tasks.main(["benchmark", *args])
    assert ex.value.code == 2 and message in capsys.readouterr().err


def test_help_and_the_axis_command_import_no_torch(tmp_path) -> None:
    """--help of every command, and the axis command on annotation files, never import torch (8-10 s before)."""
    code = (
        "import sys\n"
        "from mfassl_faces.__main__ import main\n"
        "for command in ('demo', 'pretrain', 'benchmark', 'probe', 'axis', 'landmarks', 'score'):\n"
        "    try:\n"
        "        main([command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "main(sys.argv[1:])\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    from face_helpers import place, template
    from mfassl_faces.io import write_pts

    write_image(tmp_path / "f.png", np.zeros((90, 80, 3), np.uint8))
    write_pts(tmp_path / "f.pts", place(template("ibug68"), 5.0, 20.0, (40.0, 45.0)))
    run = subprocess.run([sys.executable, "-c", code, "axis", str(tmp_path / "f.png"), "--landmarks", "file"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "False"
    assert _strict(run.stdout.strip().splitlines()[-1])["fallback"] is False


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
