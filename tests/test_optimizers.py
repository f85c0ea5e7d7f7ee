"""train.optimizer: every optimizer that runs on the CPU trains, resumes exactly and renders."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, render, train_both_adapters

from lora_core.errors import UserInputError
from lora_core.settings import OptimizerOptions, ProdigyOptions, TrainSettings
from lora_core.training import LoraTrainer, train_lora

CPU_OPTIMIZERS = ("adamw", "prodigy", "adafactor", "schedulefree_adamw")


def _options(optimizer, **overrides):
    values = dict(optimizer=optimizer, learning_rate=1e-3, text_encoder_lr=5e-4, max_train_steps=6)
    if optimizer == "prodigy":  # a larger first step-size estimate: the tests train 6 steps
        values["optim"] = OptimizerOptions(prodigy=ProdigyOptions(d0=1e-4))
    return values | overrides


@pytest.mark.parametrize("optimizer", CPU_OPTIMIZERS)
def test_each_optimizer_trains_both_models_and_renders(optimizer, pipe, subject_images, settings, tmp_path):
    trainer = LoraTrainer(pipe, subject_images, settings(**_options(optimizer)), tmp_path)
    base = render(pipe)
    try:
        trainer.setup()
        s = trainer.settings
        rates = [s.learning_rate, s.text_encoder_lr] if optimizer != "prodigy" else [s.optim.prodigy.lr] * 2
        assert [g["lr"] for g in trainer.optimizer.param_groups] == rates
        train_both_adapters(trainer)
        trained = render(pipe)
        trainer.save_final()
    finally:
        trainer.cleanup()
    assert np.isfinite(trained).all() and np.abs(trained - base).mean() > 1e-4
    pipe.load_lora_weights(str(tmp_path), adapter_name="t")
    try:
        reloaded = render(pipe)
    finally:
        pipe.unload_lora_weights()
    np.testing.assert_allclose(reloaded, trained, atol=1e-5)  # the saved weights are the rendered ones


def test_schedulefree_checkpoints_do_not_change_the_training(pipe, subject_images, settings, tmp_path):
    # saving swaps to the averaged weights and back; the swap must leave the training weights exact
    common = _options("schedulefree_adamw", max_train_steps=4)
    plain = train_lora(pipe, subject_images, settings(**common), tmp_path / "plain")
    saving = train_lora(pipe, subject_images, settings(**common, checkpoint_every=2), tmp_path / "saving")
    assert_same_weights(plain.lora_path, saving.lora_path)
    assert plain.loss_history == saving.loss_history


def test_schedulefree_saves_its_averaged_weights_not_its_training_point(
    pipe, subject_images, settings, tmp_path
):
    trainer = LoraTrainer(pipe, subject_images, settings(**_options("schedulefree_adamw")), tmp_path)
    try:
        trainer.setup()
        trainer.train()  # ends in evaluation mode
        averaged = [p.detach().clone() for p in trainer.trainable_params]
        trainer.optimizer.train()
        training_point = [p.detach().clone() for p in trainer.trainable_params]
        trainer.optimizer.eval()
    finally:
        trainer.cleanup()
    assert any(not torch.allclose(a, b) for a, b in zip(averaged, training_point, strict=True))


def test_prodigy_estimates_one_step_size_for_both_models(pipe, subject_images, settings, tmp_path):
    trainer = LoraTrainer(pipe, subject_images, settings(**_options("prodigy", max_train_steps=3)), tmp_path)
    try:
        trainer.setup()
        trainer.train()
        groups = trainer.optimizer.param_groups
        assert groups[0]["d_numerator"] > 0  # it is estimating its step size
        assert groups[1]["d"] == groups[0]["d"]
    finally:
        trainer.cleanup()


def test_8bit_adamw_off_cuda_is_one_line_before_training(pipe, subject_images, settings, tmp_path):
    trainer = LoraTrainer(pipe, subject_images, settings(optimizer="adamw8bit"), tmp_path)
    with pytest.raises(UserInputError) as err:
        trainer.setup()
    trainer.cleanup()
    message = str(err.value)
    assert message.startswith("train.optimizer=adamw8bit") and "CUDA" in message and "\n" not in message
    assert not pipe.unet.peft_config if hasattr(pipe.unet, "peft_config") else True  # nothing attached


def test_a_missing_optimizer_library_names_the_extra(monkeypatch, pipe, subject_images, settings, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prodigyopt" else real(name, *a)
    )
    trainer = LoraTrainer(pipe, subject_images, settings(**_options("prodigy")), tmp_path)
    with pytest.raises(UserInputError, match=r"^train\.optimizer=prodigy: .*lora-sweeps\[prodigy\]"):
        trainer.setup()
    trainer.cleanup()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"optimizer": "lion"}, "train.optimizer='lion'"),
        ({"optimizer": "adamw", "learning_rate": 1.0}, "train.learning_rate=1.0"),  # Prodigy's value
        ({"optimizer": "prodigy", "optim": {"prodigy": {"lr": 20.0}}}, "train.optim.prodigy.lr=20.0"),
        ({"optimizer": "schedulefree_adamw", "lr_scheduler": "cosine"}, "train.lr_scheduler='cosine'"),
        (
            {
                "optimizer": "prodigy",
                "optim": {"prodigy": {"d_coef": 0}},
            },
            "train.optim.prodigy.d_coef=0",
        ),
        (
            {"optimizer": "adafactor", "optim": {"adafactor": {"decay_rate": 0.5}}},
            "train.optim.adafactor.decay_rate=0.5",
        ),
    ],
)
def test_bad_optimizer_values_name_their_key(overrides, key):
    with pytest.raises(UserInputError) as err:
        TrainSettings.from_dict({"resolution": 512} | overrides).validate()
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_prodigy_sweeps_beside_adamw_with_one_command():
    # train.optimizer=adamw,prodigy: the same train.learning_rate is valid for both; Prodigy takes its own
    for optimizer in ("adamw", "prodigy"):
        TrainSettings(resolution=512, optimizer=optimizer, learning_rate=1e-4).validate()


def test_unknown_optimizer_option_is_an_error():
    with pytest.raises(UserInputError, match=r"^train\.optim\.prodigy\.dcoef"):
        TrainSettings.from_dict({"optim": {"prodigy": {"dcoef": 2.0}}})


def test_only_the_chosen_optimizers_options_decide_resume():
    a = TrainSettings(optimizer="adamw")
    b = TrainSettings.from_dict({"optimizer": "adamw", "optim": {"prodigy": {"d_coef": 2.0}}})
    assert a.can_continue_from(b)
    p = TrainSettings.from_dict({"optimizer": "prodigy"})
    q = TrainSettings.from_dict({"optimizer": "prodigy", "optim": {"prodigy": {"d_coef": 2.0}}})
    assert not p.can_continue_from(q)
    assert TrainSettings.from_dict(p.to_dict()) == p  # checkpoints read their settings back
