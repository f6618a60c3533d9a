"""``create_trainer(compile=True)``: the compiled step computes what the eager step computes.

The checks use ``torch.compile``'s ``eager`` backend (Dynamo traces the step, no code is generated, so the
numbers must match the eager step exactly and no C++ toolchain is needed); ``aot_eager`` (AOT autograd's
forward and backward graphs) runs as a slow check. The bundles' ``compile`` key is typed on the real command
line of ``python -m monai.bundle run`` (a one-step run; the refusal of a bad value there is a slow check, the
same refusal through fire's parser and MONAI's ``ConfigParser`` is not). Inductor is left out: on this CPU it
takes minutes to compile even the tiny network.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Events

from mfassl.backbones import MFAViT
from mfassl.engine import COMPILE_MODES, compile_forward, create_optimizer, create_trainer, load_checkpoint
from mfassl.method import MFASSL

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bundles"))
from bundle_utils import BUNDLES, TINY  # noqa: E402
from cli_runner import run_monai_bundle  # noqa: E402

CHEX = "mfassl_chexpert_pretrain"
STEPS = 3


def _method(**schedule: float) -> MFASSL:
    """A tiny 2D MoCo-v3 MFASSL (2 views of 16 px, embed 32, 2 blocks, MFA after block 1), seeded; ``schedule``
    replaces the symmetry schedule's ``t_sym=1.0, t_mfa=0.5, t_gate=1.0``."""
    torch.manual_seed(0)
    backbone = MFAViT(2, img_size=16, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, mfa_layer=1)
    return MFASSL(backbone, "mocov3", dict(proj_hidden_dim=32, out_dim=16, pred_hidden_dim=32),
                  views=dict(global_size=16, local_size=8), **{"t_sym": 1.0, "t_mfa": 0.5, "t_gate": 1.0, **schedule})


def _train(out: Path | None, steps: int = STEPS, partial: bool = True, schedule: dict[str, float] | None = None,
           **kw: Any) -> tuple[list[float], Any, MFASSL]:
    """``steps`` steps of the tiny method on seeded ``(3, 1, 24, 24)`` batches, the last one smaller ``(2, ...)``
    with ``partial`` (a partial last batch); the step losses, trainer, method.

    Two steps per epoch: the steps cross ``t_mfa`` (0.5), so MFA and the gate ramp come on mid-run. The smaller
    batch makes ``torch.compile`` recompile with a symbolic batch size: the axis jitter's ``torch.rand(B)`` stopped
    that run before ("SymIntArrayRef expected to contain only concrete integers").
    """
    torch._dynamo.reset()  # each run compiles anew, static shapes first
    method = _method(**(schedule or {}))
    data = [torch.rand(3 if i < steps - 1 or not partial else 2, 1, 24, 24, generator=torch.Generator().manual_seed(i))
            for i in range(steps)]
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch=2, max_epochs=steps, batch_size=3,
                             warmup_epochs=0.5, device="cpu", output_dir=out, progress=False, tensorboard=False,
                             **kw)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    torch.manual_seed(123)
    trainer.run(data, max_epochs=1)
    return losses, trainer, method


def _check_same_run(tmp_path: Path, backend: str, steps: int, exact: bool, partial: bool = True,
                    schedule: dict[str, float] | None = None) -> None:
    eager_losses, _, eager = _train(tmp_path / "eager", steps, partial, schedule)
    losses, trainer, compiled = _train(tmp_path / "compiled", steps, partial, schedule, compile=True,
                                       compile_backend=backend)
    assert trainer.compile_settings == {"mode": "default", "backend": backend}
    assert len(losses) == steps and len({round(v, 6) for v in losses}) == steps  # the steps differ
    tol = dict(rel=0, abs=0) if exact else dict(rel=1e-5, abs=1e-6)
    assert losses == pytest.approx(eager_losses, **tol)
    # the optimizer and the teacher's EMA acted on the real parameters: the same weights after the run
    a, b = eager.state_dict(), compiled.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=tol["rel"], atol=tol["abs"]), k
    start = _method(**(schedule or {})).state_dict()
    teacher = [k for k in b if k.startswith("objective.teacher.") and b[k].is_floating_point()]
    assert teacher and any(not torch.equal(b[k], start[k]) for k in teacher)  # the EMA moved the teacher
    # the checkpoints hold the uncompiled module's keys, with and without compile
    ck_eager = load_checkpoint(tmp_path / "eager" / "checkpoints" / f"checkpoint_{steps}.pt")
    ck = load_checkpoint(tmp_path / "compiled" / "checkpoints" / f"checkpoint_{steps}.pt")
    assert set(ck) == set(ck_eager)
    assert list(ck["model"]) == list(ck_eager["model"]) == list(a)
    assert not any("_orig_mod" in k for k in ck["model"])
    for k in a:
        assert torch.equal(ck["model"][k], b[k]), k


def test_compiled_steps_match_the_eager_steps(tmp_path: Path) -> None:
    _check_same_run(tmp_path, "eager", STEPS, exact=True)
    # the compiled run's checkpoint resumes an eager trainer (compile is not a run-defining setting)
    method = _method()
    trainer = create_trainer(method, create_optimizer(method), steps_per_epoch=2, max_epochs=STEPS, batch_size=3,
                             warmup_epochs=0.5, device="cpu", progress=False, tensorboard=False,
                             resume_from=str(tmp_path / "compiled" / "checkpoints"))
    assert trainer.state.iteration == STEPS and trainer.compile_settings is None


@pytest.mark.slow
def test_aot_eager_steps_match_the_eager_steps(tmp_path: Path) -> None:
    """One step with every term on from the first step (``w = 1``, MFA with its gate fully open): AOT autograd's
    forward and backward graphs of the whole loss; the recompiles (epoch, batch size, MFA switching on) are the
    eager backend's test."""
    on = {"t_sym": 0.0, "t_mfa": 0.0, "t_gate": 0.0}
    assert _method(**on).schedule_at(0.0) == (1.0, 1.0, True)
    _check_same_run(tmp_path, "aot_eager", 1, exact=False, partial=False, schedule=on)


def _build(**kw: Any):
    method = _method()
    return create_trainer(method, create_optimizer(method), steps_per_epoch=1, max_epochs=1, batch_size=2,
                          device="cpu", progress=False, **kw)


def test_compile_false_leaves_the_step_eager() -> None:
    assert _build(compile=False).compile_settings is None


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off"])
def test_compile_text_is_parsed_at_the_boundary_not_by_the_trainer(text: str) -> None:
    """The trainer takes a bool; text (a command line's) is refused naming the parser that reads it."""
    with pytest.raises(ValueError, match=r"option 'compile': '.*' is a string, not a bool; .*as_bool"):
        _build(compile=text)


@pytest.mark.parametrize("kw, key", [
    (dict(compile="maybe"), "'compile'"), (dict(compile="2"), "'compile'"), (dict(compile=""), "'compile'"),
    (dict(compile_mode="fastest"), "'compile_mode'"), (dict(compile=True, compile_mode="turbo"), "'compile_mode'"),
    (dict(compile=True, compile_backend="no_such_backend"), "'compile_backend'"),
    (dict(compile=True, compile_backend="eager", compile_mode="reduce-overhead"), "'compile_mode'"),
])
def test_bad_compile_options_are_refused_naming_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _build(**kw)


def test_compile_forward_shares_the_parameters() -> None:
    method = _method()
    compiled = compile_forward(method, None, "eager")
    assert "default" in COMPILE_MODES
    assert compiled._orig_mod is method  # the same parameters; the state dict to save is the method's
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")
    assert not any(k.startswith("_orig_mod.") for k in method.state_dict())


def test_a_module_compiled_by_the_caller_is_saved_uncompiled(tmp_path: Path) -> None:
    method = _method()
    trainer = create_trainer(torch.compile(method, backend="eager"), create_optimizer(method), steps_per_epoch=1,
                             max_epochs=1, batch_size=2, device="cpu", progress=False, output_dir=tmp_path)
    assert trainer.checkpoint_objects["model"] is method
    assert list(trainer.checkpoint_objects["model"].state_dict()) == list(_method().state_dict())


# ------------------------------------------------------------------------------------------- the bundle key
def _typed(text: str) -> Any:
    """The value ``monai.bundle run`` receives for ``--key text`` (python-fire's parsing)."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(text)


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


@pytest.mark.parametrize("name", [CHEX, "mfassl_brats_pretrain"])
@pytest.mark.parametrize("text, expected", [("true", {"mode": "default", "backend": "eager"}), ("False", None),
                                            ("false", None), ("off", None), ("maybe", "refused")])
def test_bundle_compile_key_reaches_the_trainer(tmp_path: Path, name: str, text: str, expected: Any) -> None:
    from monai.bundle import ConfigParser

    root = BUNDLES / name
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root), **TINY[name], "train#dataloader": "$[]",
                   "train#trainer#steps_per_epoch": 1, "output_dir": str(tmp_path), "device": "$torch.device('cpu')",
                   "compile": _typed(text), "compile_backend": "eager"})
    if expected == "refused":
        with pytest.raises(Exception) as err:
            parser.get_parsed_content("train#trainer")
        assert "option 'compile': 'maybe' is not a boolean" in str(_root_cause(err.value))
        return
    assert parser.get_parsed_content("train#trainer").compile_settings == expected


@pytest.fixture(scope="module")
def four_radiographs(tmp_path_factory) -> Path:
    """A CheXpert-layout folder of 4 frontal 64 x 64 PNGs with two bright lung fields (one training step)."""
    from PIL import Image

    from mfassl_medical.data.chexpert import CHEXPERT_COLUMNS, CHEXPERT_LABELS

    root = tmp_path_factory.mktemp("cxr") / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    rows = []
    for i in range(4):
        rel = f"train/patient{i + 1:05d}/study1/view1_frontal.png"
        (root / rel).parent.mkdir(parents=True)
        lungs = np.exp(-((xx - 21.0) ** 2 / 80.0 + (yy - 33) ** 2 / 250.0)) + \
            np.exp(-((xx - 43.0) ** 2 / 80.0 + (yy - 33) ** 2 / 250.0))
        img = 30 + 160 * lungs + rng.normal(0, 4, (64, 64))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rel)
        rows.append([f"CheXpert-v1.0-small/{rel}", "Male", "60", "Frontal", "AP",
                     *([""] * (len(CHEXPERT_LABELS) - 1) + ["1.0"])])
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*CHEXPERT_COLUMNS, *CHEXPERT_LABELS])
        writer.writerows(rows)
    return root


def _cli(out: Path, dataset_dir: Path, **typed: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of the CheXpert bundle's demo config with the tiny sizes, as typed."""
    root = BUNDLES / CHEX
    configs = json.dumps([str(root / "configs" / c) for c in ("train.json", "demo.json")])
    args = ["run", "--meta_file", str(root / "configs" / "metadata.json"),
            "--config_file", configs, "--bundle_root", str(root), "--output_dir", str(out),
            "--model_file", str(out / "models" / "model.pt"), "--dataset_dir", str(dataset_dir), "--epochs", "1",
            "--device", "$torch.device('cpu')"]
    tiny = {**TINY[CHEX], "max_images": 4, "batch_size": 4}
    for k, v in {**{k: json.dumps(v) for k, v in tiny.items()}, **typed}.items():
        args += [f"--{k}", v]
    return run_monai_bundle(*args, cwd=out.parent, env={"MFASSL_OFFLINE": "1"})


def test_command_line_compile_true_trains_and_saves_plain_keys(four_radiographs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = _cli(out, four_radiographs, compile="true", compile_backend="eager")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "runs through torch.compile (mode default, backend eager)" in proc.stdout + proc.stderr
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    (ckpt,) = sorted((out / "checkpoints").glob("checkpoint_*.pt"))
    keys = list(load_checkpoint(ckpt)["model"])
    assert keys and not any("_orig_mod" in k for k in keys)
    assert any(k.startswith("objective.teacher.") for k in keys)


@pytest.mark.slow
def test_command_line_compile_maybe_is_refused_naming_the_key(four_radiographs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = _cli(out, four_radiographs, compile="maybe")
    assert proc.returncode != 0
    assert "option 'compile': 'maybe' is not a boolean" in proc.stderr
    assert not (out / "history.json").exists()

