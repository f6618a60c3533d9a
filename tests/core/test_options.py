"""Strict option parsing (``mfassl.options``) and the receivers of bundle booleans and numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mfassl.options import as_bool, as_float, as_int


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), (np.bool_(False), False), (np.int64(1), True),
    (torch.tensor(0), False), ("true", True), ("False", False), (" TRUE ", True), ("1", True), ("0", False),
    ("yes", True), ("No", False), ("on", True), ("OFF\n", False),
])
def test_as_bool_accepts(value, expected) -> None:
    assert as_bool(value, "mirror") is expected


@pytest.mark.parametrize("value", [None, 2, -1, 0.5, 1.0, "maybe", "", "  ", "tru", "none", [], "2"])
def test_as_bool_refuses_naming_key_and_value(value) -> None:
    with pytest.raises(ValueError) as err:
        as_bool(value, "frontal_only")
    assert "frontal_only" in str(err.value) and repr(value) in str(err.value)


def test_as_bool_none_when_allowed() -> None:
    assert as_bool(None, "k", allow_none=True) is None
    assert as_bool("null", "k", allow_none=True) is None
    assert as_bool("off", "k", allow_none=True) is False


@pytest.mark.parametrize("value, expected", [(0.5, 0.5), ("1e-4", 1e-4), (" 2 ", 2.0), (3, 3.0), (np.float32(0.25), 0.25)])
def test_as_float_accepts(value, expected) -> None:
    out = as_float(value, "lr", low=0.0, high=10.0)
    assert isinstance(out, float) and out == pytest.approx(expected)


@pytest.mark.parametrize("value, words", [
    ("nan", "NaN"), (float("nan"), "NaN"), (float("inf"), "infinite"), ("-inf", "infinite"),
    (-0.1, "[0.0, 1.0]"), ("5", "[0.0, 1.0]"), ("abc", "not a number"), ("", "not a number"), (True, "boolean"),
    (None, "not a number"),
])
def test_as_float_refuses(value, words) -> None:
    with pytest.raises(ValueError) as err:
        as_float(value, "min_confidence", low=0.0, high=1.0)
    msg = str(err.value)
    assert "min_confidence" in msg and repr(value) in msg and words in msg


def test_as_float_flags() -> None:
    assert math.isnan(as_float("nan", "x", allow_nan=True))
    assert as_float("inf", "t_mfa", low=0.0, allow_inf=True) == math.inf
    with pytest.raises(ValueError, match="t_mfa"):
        as_float("-inf", "t_mfa", low=0.0, allow_inf=True)
    assert as_float(None, "clip_grad", allow_none=True) is None


@pytest.mark.parametrize("value, expected", [(10, 10), ("10", 10), (" 7 ", 7), (4.0, 4), ("1e2", 100), (np.int32(3), 3)])
def test_as_int_accepts(value, expected) -> None:
    out = as_int(value, "epochs", low=1)
    assert type(out) is int and out == expected


@pytest.mark.parametrize("value", ["2.5", 2.5, "nan", float("inf"), "ten", 0, "-3", False, None])
def test_as_int_refuses(value) -> None:
    with pytest.raises(ValueError) as err:
        as_int(value, "epochs", low=1)
    assert "epochs" in str(err.value) and repr(value) in str(err.value)


# -- receivers ------------------------------------------------------------------------------------------------
def _tiny_method(**kw):
    from mfassl.backbones import MFAViT
    from mfassl.method import MFASSL

    torch.manual_seed(0)
    backbone = MFAViT(2, img_size=16, patch_size=8, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    return MFASSL(backbone, "mocov3", dict(proj_hidden_dim=32, out_dim=16, pred_hidden_dim=32),
                  views={"global_size": 16, "local_size": 8, "n_local": 0}, **kw)


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "OFF", 0])
def test_mfassl_mirror_strings_build_the_baseline(text) -> None:
    method = _tiny_method(mirror=text, t_sym=0.0, t_mfa=0.0)
    assert method.mirror is False
    out = method(torch.rand(2, 1, 20, 20), epoch=5.0)
    assert float(out["mirror"]) == 0.0 and float(out["l_eq"]) == 0.0 and float(out["mfa_on"]) == 0.0


def test_mfassl_mirror_true_string_and_refusals() -> None:
    method = _tiny_method(mirror="True", t_sym=0.0, t_mfa=0.0, beta="0.5")
    assert method.mirror is True and method.beta == 0.5
    assert float(method(torch.rand(2, 1, 20, 20), epoch=5.0)["mfa_on"]) == 1.0
    with pytest.raises(ValueError, match="'mirror': 'maybe'"):
        _tiny_method(mirror="maybe")
    with pytest.raises(ValueError, match="beta"):
        _tiny_method(beta="nan")


def test_create_trainer_takes_typed_options_and_refuses_text_naming_the_option() -> None:
    """Text is parsed where it comes in (a bundle's JSON, a command line's parser); the trainer and its handlers
    take ints, floats and bools, and refuse a string naming the option and the parser to use."""
    from mfassl.checkpoints import CheckpointSaver
    from mfassl.engine import ProgressHandler, TensorBoardHandler, create_optimizer, create_trainer

    method = _tiny_method(mirror=False)
    opt = create_optimizer(method, lr="1e-3")  # a bundle component overridden directly (--optimizer#fused)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    trainer = create_trainer(method, opt, steps_per_epoch=1, max_epochs=2, batch_size=2, base_lr=1e-3,
                             warmup_epochs=0, amp=False, progress=False, device="cpu", output_dir=None)
    trainer.run([torch.rand(2, 1, 20, 20)], max_epochs=2)
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2
    assert math.isfinite(trainer.state.output["loss"])
    for bad, words in (({"progress": "false"}, "'progress': 'false' is a string, not a bool; .*as_bool"),
                       ({"amp": 1}, "'amp': 1 \\(int\\) is not a bool"),
                       ({"max_epochs": "2"}, "'max_epochs': '2' is a string, not an int; .*as_int"),
                       ({"base_lr": float("nan")}, "'base_lr': nan is not finite"),
                       ({"max_epochs": 0}, "'max_epochs': 0 is outside"),
                       ({"batch_size": True}, "'batch_size': True \\(bool\\) is not an int"),
                       ({"clip_grad": "none"}, "'clip_grad': 'none' is a string"),
                       ({"momentum_end": 1.5}, "'momentum_end': 1.5 is outside")):
        with pytest.raises(ValueError, match=words):
            create_trainer(method, opt, **{"steps_per_epoch": 1, "max_epochs": 1, "device": "cpu",
                                           "output_dir": None, **bad})
    for build, key in ((lambda: ProgressHandler(enabled="false"), "progress"),
                       (lambda: TensorBoardHandler("tb", enabled="no"), "tensorboard"),
                       (lambda: CheckpointSaver("ck", n_saved="1"), "n_saved"),
                       (lambda: CheckpointSaver("ck", every=0), "checkpoint_every")):
        with pytest.raises(ValueError, match=f"'{key}'"):
            build()
    with pytest.raises(ValueError, match="'lr'"):
        create_optimizer(method, lr="inf")


@pytest.mark.parametrize("value, unset", [(None, True), ("", True), ("  ", True), ("none", True), ("NULL", True),
                                          (" None ", True), ("0", False), (0, False), ("off", False),
                                          ("/data", False), (False, False)])
def test_is_unset(value, unset):
    from mfassl.options import is_unset

    assert is_unset(value) is unset
