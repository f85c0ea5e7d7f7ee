"""train.validation_every: a loss on fixed (picture, timestep, noise) triples that leaves training alone."""

import json

import numpy as np
from safetensors.torch import load_file

from lora_core.training import LOSS_LOG, train_lora


def test_validation_leaves_the_training_untouched(pipe, subject_images, settings, tmp_path):
    # dropout and flips draw from random state: measuring must not move it
    common = dict(max_train_steps=6, dropout=0.1, random_flip=True, text_encoder_lr=5e-4)
    plain = train_lora(pipe, subject_images, settings(**common), tmp_path / "plain")
    measured = train_lora(pipe, subject_images, settings(**common, validation_every=2), tmp_path / "measured")
    assert plain.val_losses == {} and sorted(measured.val_losses) == [2, 4, 6]
    assert measured.loss_history == plain.loss_history
    a, b = load_file(str(plain.lora_path)), load_file(str(measured.lora_path))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_validation_loss_is_in_the_loss_log_on_its_steps(pipe, subject_images, settings, tmp_path):
    result = train_lora(pipe, subject_images, settings(max_train_steps=6, validation_every=3), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert [r["val_loss"] for r in rows if "val_loss" in r] == [result.val_losses[3], result.val_losses[6]]


def test_validation_loss_falls_while_the_adapter_fits(pipe, subject_images, settings, tmp_path):
    s = settings(max_train_steps=30, learning_rate=1e-2, validation_every=5, validation_samples=16)
    losses = list(train_lora(pipe, subject_images, s, tmp_path).val_losses.values())
    assert losses[-1] < losses[0], losses


def test_held_out_pictures_are_what_validation_measures(pipe, subject_images, settings, tmp_path):
    s = settings(max_train_steps=2, validation_every=2)
    own = train_lora(pipe, subject_images, s, tmp_path / "own").val_losses[2]
    flipped = [img.transpose(0) for img in subject_images]  # PIL FLIP_LEFT_RIGHT: other pictures
    held_out = train_lora(pipe, subject_images, s, tmp_path / "held", validation_images=flipped).val_losses[2]
    assert held_out != own
