"""Bundle switches mean what they say when typed on ``python -m monai.bundle run``'s command line.

The command line (python-fire) hands ``--mirror false`` over as the string ``'false'``, ``--mirror False`` as
the bool and ``--mirror 0`` as the int. The in-process tests turn the typed text into the same value with
fire's own parser and hand it to MONAI's ``ConfigParser`` exactly as ``monai.bundle run`` does; one real
subprocess run checks the whole path end to end.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle_utils import BUNDLES, TINY  # noqa: E402
from cli_runner import run_monai_bundle

CHEX = "mfassl_chexpert_pretrain"
BRATS = "mfassl_brats_pretrain"
FALSE_TEXTS = ["false", "False", "0", "no", "OFF"]
TRUE_TEXTS = ["true", "True", "1", "yes"]


def _typed(text: str) -> Any:
    """The value ``monai.bundle run`` receives for ``--key text`` (python-fire's parsing)."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(text)


def _parser(name: str, configs: tuple[str, ...] = ("train.json",), **overrides: Any):
    from monai.bundle import ConfigParser

    root = BUNDLES / name
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(root), **TINY[name], **overrides})
    return parser


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


@pytest.fixture(scope="module")
def tiny_chexpert(tmp_path_factory) -> Path:
    """A CheXpert-layout folder of 8 small radiograph-like PNGs (7 frontal, 1 lateral), no demo data needed."""
    from PIL import Image

    from mfassl_medical.data.chexpert import CHEXPERT_COLUMNS, CHEXPERT_LABELS

    root = tmp_path_factory.mktemp("chex") / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        folder = root / "train" / f"patient{i + 1:05d}" / "study1"
        folder.mkdir(parents=True)
        yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
        lungs = sum(np.exp(-((xx - cx) ** 2 / 90.0 + (yy - 34) ** 2 / 260.0)) for cx in (20.5, 42.5))
        img = 40 + 150 * lungs + rng.normal(0, 3, (64, 64))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "view1_frontal.png")
        view = "Lateral" if i == 7 else "Frontal"
        rows.append([f"CheXpert-v1.0-small/train/patient{i + 1:05d}/study1/view1_frontal.png", "Female", "50", view,
                     "PA" if view == "Frontal" else "", *(["1.0"] + [""] * (len(CHEXPERT_LABELS) - 1))])
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CHEXPERT_COLUMNS, *CHEXPERT_LABELS])
        w.writerows(rows)
    return root


@pytest.mark.parametrize("name", [CHEX, BRATS])
@pytest.mark.parametrize("text", FALSE_TEXTS + TRUE_TEXTS)
def test_mirror_typed_on_the_command_line(name, text) -> None:
    method = _parser(name, mirror=_typed(text)).get_parsed_content("method")
    assert method.mirror is (text in TRUE_TEXTS)


@pytest.mark.parametrize("key, text", [("mirror", "maybe"), ("mirror", "2"), ("mirror", "''"),
                                       ("beta", "nan"), ("t_sym", "-1")])
def test_bad_method_options_are_refused_naming_the_key(key, text) -> None:
    with pytest.raises(Exception) as err:
        _parser(CHEX, **{key: _typed(text)}).get_parsed_content("method")
    cause = _root_cause(err.value)
    assert isinstance(cause, ValueError) and f"'{key}'" in str(cause), repr(cause)


@pytest.mark.parametrize("name", [CHEX, BRATS])
@pytest.mark.parametrize("text, fused", [("false", False), ("0", False), ("true", True), ("null", True)])
def test_optimizer_kernel_typed_on_the_command_line(name, text, fused) -> None:
    """``--optimizer#fused false`` asks for torch's default AdamW kernel; the default (null) fuses on a CPU."""
    optimizer = _parser(name, **{"optimizer#fused": _typed(text)}).get_parsed_content("optimizer")
    assert all(bool(g["fused"]) is fused for g in optimizer.param_groups)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["weight_decay"] == 0.0


def test_optimizer_kernel_maybe_is_refused() -> None:
    with pytest.raises(Exception) as err:
        _parser(CHEX, **{"optimizer#fused": _typed("maybe")}).get_parsed_content("optimizer")
    cause = _root_cause(err.value)
    assert isinstance(cause, ValueError) and "'fused'" in str(cause), repr(cause)


@pytest.mark.parametrize("text, n_images", [("false", 8), ("no", 8), ("0", 8), ("true", 7), ("YES", 7)])
def test_frontal_only_typed_on_the_command_line(tiny_chexpert, text, n_images) -> None:
    parser = _parser(CHEX, dataset_dir=str(tiny_chexpert), frontal_only=_typed(text), max_images=None)
    assert len(parser.get_parsed_content("train#datalist")) == n_images


def test_frontal_only_maybe_is_refused(tiny_chexpert) -> None:
    with pytest.raises(Exception) as err:
        _parser(CHEX, dataset_dir=str(tiny_chexpert), frontal_only="maybe").get_parsed_content("train#datalist")
    assert "frontal_only" in str(_root_cause(err.value))


def _trainer_overrides(out: Path, **kw: Any) -> dict[str, Any]:
    # an empty loader: the trainer is built (switches parsed) without reading any image
    return {"train#dataloader": "$[]", "train#trainer#steps_per_epoch": 1, "output_dir": str(out), **kw}


def _has_progress_bar(trainer) -> bool:
    handlers = [h for hs in trainer._event_handlers.values() for h, *_ in hs]
    return any("ProgressBar" in repr(getattr(h, "__self__", h)) or "ProgressBar" in getattr(h, "__qualname__", "")
               or "_OutputHandler" in type(h).__name__ for h in handlers)


@pytest.mark.parametrize("key", ["progress", "amp"])
@pytest.mark.parametrize("text", ["false", "no", "maybe"])
def test_trainer_switches_typed_on_the_command_line(tmp_path, key, text) -> None:
    parser = _parser(CHEX, **_trainer_overrides(tmp_path, **{"progress": True, key: _typed(text)}))
    if text == "maybe":
        with pytest.raises(Exception) as err:
            parser.get_parsed_content("train#trainer")
        assert f"'{key}'" in str(_root_cause(err.value))
        return
    trainer = parser.get_parsed_content("train#trainer")
    assert _has_progress_bar(trainer) is (key != "progress")  # "false" attaches no bar (bool("false") did)


class _RunRecorder:
    """Stands in for the trainer in the bundle's ``run`` section: records what ``run`` is handed."""

    def run(self, data, max_epochs):
        return max_epochs


@pytest.mark.parametrize("name", [CHEX, BRATS])
def test_epochs_as_a_numeric_string_builds_the_schedule(tmp_path, name) -> None:
    """The bundle parses its text keys where they come in; the trainer gets ints, floats and bools."""
    parser = _parser(name, **_trainer_overrides(tmp_path, epochs="3", warmup_epochs="0.5", base_lr="1e-3",
                                                batch_size="2", min_lr="0", clip_grad="none", amp="false",
                                                resume_force="no", compile="off", n_saved="1",
                                                checkpoint_every="2", progress="true"))
    trainer = parser.get_parsed_content("train#trainer")
    settings = trainer.run_settings
    assert (settings["max_epochs"], settings["warmup_epochs"], settings["base_lr"], settings["batch_size"]) == \
        (3, 0.5, 1e-3, 2)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-3]  # create_optimizer parses its own
    saver = parser.get_parsed_content("train#handlers#4")
    assert (saver.n_saved, saver.every) == (1, 2)
    assert _has_progress_bar(trainer)
    # the run section hands trainer.run the parsed epochs ("3" -> 3); a fraction is refused naming the key
    parser = _parser(name, **_trainer_overrides(tmp_path, epochs="3"))
    parser["train#trainer"] = _RunRecorder()
    assert parser.get_parsed_content("run") == [3]
    parser = _parser(name, **_trainer_overrides(tmp_path, epochs="2.5"))
    parser["train#trainer"] = _RunRecorder()
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("run")
    assert "option 'epochs': '2.5' is not an integer" in str(_root_cause(err.value))
    for key, text, words in (("base_lr", "nan", "lr': 'nan' is NaN"), ("warmup_epochs", "-1", "'warmup_epochs': -1"),
                             ("batch_size", "'four'", "'batch_size': 'four'")):
        with pytest.raises(Exception) as err:
            _parser(CHEX, **_trainer_overrides(tmp_path, **{key: _typed(text)})).get_parsed_content("train#trainer")
        assert words in str(_root_cause(err.value))


def _dummy_eval_overrides(section: str) -> dict[str, Any]:
    data = {"train": [], "test": [], "label_names": ["Lung Opacity"], "lateral": [False]}
    if section == "eval":
        return {"eval#encoder": "$@network_def", "eval#data": data, "eval#train_dataset": "$[]",
                "eval#test_dataset": "$[]"}
    return {"dataset": "$[]"}


@pytest.mark.parametrize("text, expected", [("false", False), ("yes", True), ("True", True), ("0", False)])
def test_finetune_freeze_and_save_gates_typed_on_the_command_line(text, expected) -> None:
    ev = _parser(CHEX, ("train.json", "evaluate.json"), finetune_freeze=_typed(text),
                 **_dummy_eval_overrides("eval")).get_parsed_content("eval#evaluator")
    assert ev.finetune["freeze"] is expected
    ex = _parser(CHEX, ("train.json", "inference.json"), save_gates=_typed(text),
                 **_dummy_eval_overrides("infer")).get_parsed_content("evaluator")
    assert ex.save_gates is expected


def test_finetune_freeze_and_save_gates_refuse_maybe() -> None:
    for configs, key, section, target in ((("train.json", "evaluate.json"), "finetune_freeze", "eval", "eval#evaluator"),
                                          (("train.json", "inference.json"), "save_gates", "infer", "evaluator")):
        with pytest.raises(Exception) as err:
            _parser(CHEX, configs, **{key: "maybe"}, **_dummy_eval_overrides(section)).get_parsed_content(target)
        assert f"'{key}'" in str(_root_cause(err.value))


@pytest.mark.parametrize("text, expected", [("false", None), ("no", None), ("True", None), ("maybe", "strict_encoder")])
def test_segmentation_strict_encoder_typed(text, expected) -> None:
    from monai.bundle import ConfigParser

    root = BUNDLES / "mfassl_brats_segmentation"
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root), "network_def": "$torch.nn.Linear(2, 2)", "device": "cpu",
                   "strict_encoder": _typed(text)})
    if expected is None:
        assert parser.get_parsed_content("network").weight.shape == (2, 2)
    else:
        with pytest.raises(Exception) as err:
            parser.get_parsed_content("network")
        assert f"'{expected}'" in str(_root_cause(err.value))


def _cli(name: str, out: Path, dataset_dir: Path, **typed: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of the tiny bundle; ``typed`` are options exactly as a user types them."""
    root = BUNDLES / name
    args = ["run", "--meta_file", str(root / "configs" / "metadata.json"),
            "--config_file", str(root / "configs" / "train.json"), "--bundle_root", str(root),
            "--output_dir", str(out), "--model_file", str(out / "models" / "model.pt"), "--epochs", "1",
            "--dataset_dir", str(dataset_dir)]
    for k, v in {**{k: json.dumps(v) for k, v in TINY[name].items()}, **typed}.items():
        args += [f"--{k}", v]
    return run_monai_bundle(*args, cwd=out.parent)


@pytest.mark.slow
def test_command_line_mirror_false_runs_the_baseline(tiny_chexpert, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = _cli(CHEX, out, tiny_chexpert, mirror="false", frontal_only="false", t_mfa="0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2  # 8 images (the lateral one kept), batch 4
    assert all(r["mirror"] == 0.0 and r["l_eq"] == 0.0 and r["mfa_on"] == 0.0 for r in history)
    assert json.loads((out / "report.json").read_text())["mfa_on_iterations"] == 0


@pytest.mark.slow
def test_command_line_mirror_maybe_exits_non_zero_naming_mirror(tiny_chexpert, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = _cli(CHEX, out, tiny_chexpert, mirror="maybe")
    assert proc.returncode != 0
    assert "'mirror': 'maybe' is not a boolean" in proc.stderr
    assert not (out / "history.json").exists()
