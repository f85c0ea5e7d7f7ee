"""A training killed right after a checkpoint and resumed ends where the uninterrupted one does, whatever it uses.

Each case draws from, or depends on, state a checkpoint must keep (random streams, optimizer state, schedules,
the EMA, held-out measurements); the straight run and the killed-then-resumed run must end with the same
weights and, after the resume point, the same losses.
"""

import json

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, train_killed_then_resumed
from safetensors.torch import load_file

from lora_core.settings import UNET_CONV, OptimizerOptions, ProdigyOptions
from lora_core.training import LOSS_LOG, train_lora

CAPTIONS = ["ktn cat on the beach", "ktn cat in snow", "ktn cat on the beach", "a ktn cat", "ktn in the pub"]
# LoCon on every adapter kind: the UNet's convolutions with their own rank and alpha.
LOCON = dict(conv_target_modules=UNET_CONV, conv_rank=2, conv_alpha=1.0)


def _kind(kind):
    # dropout draws from the generator a checkpoint keeps
    return dict(
        adapter_kind=kind, text_encoder_lr=5e-4, max_train_steps=4, alpha=8.0, dropout=0.1, **LOCON
    ), 2


def _optimizer(optimizer):
    # warm-up and dropout: Prodigy's safeguard and schedule-free's own warm-up read state a checkpoint keeps
    values = dict(
        optimizer=optimizer,
        learning_rate=1e-3,
        text_encoder_lr=5e-4,
        max_train_steps=6,
        dropout=0.1,
        lr_warmup_steps=2,
    )
    values["lr_scheduler"] = "constant" if optimizer == "schedulefree_adamw" else "constant_with_warmup"
    if optimizer == "prodigy":  # a larger first step-size estimate: the run trains 6 steps
        values["optim"] = OptimizerOptions(prodigy=ProdigyOptions(d0=1e-4))
    return values, 3


# feature -> (settings of both runs, the step the first run dies after)
FEATURES = {
    # dropout, flips, accumulation and a warm-up schedule all draw or depend on state a checkpoint must keep
    "training": (
        dict(
            max_train_steps=10,
            text_encoder_lr=5e-4,
            dropout=0.1,
            random_flip=True,
            gradient_accumulation_steps=2,
            lr_scheduler="cosine",
            lr_warmup_steps=3,
            noise_offset=0.1,
        ),
        4,
    ),
    "ema": (dict(max_train_steps=10, text_encoder_lr=5e-4, ema_decay=0.8, random_flip=True), 4),
    **{
        f"optimizer-{name}": _optimizer(name)
        for name in ("adamw", "prodigy", "adafactor", "schedulefree_adamw")
    },
    **{f"kind-{kind}": _kind(kind) for kind in ("lora", "dora", "loha", "lokr")},
    "caption-dropout": (dict(max_train_steps=8, text_encoder_lr=5e-4, caption_dropout=0.3), 3),
    "validation-loss": (dict(max_train_steps=6, validation_every=2), 3),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_resume_equivalence(feature, pipe, subject_images, settings, tmp_path):
    common, killed_at = FEATURES[feature]
    extra = dict(captions=CAPTIONS) if feature == "caption-dropout" else {}
    full = train_lora(pipe, subject_images, settings(**common), tmp_path / "full", **extra)
    part = settings(**common, checkpoint_steps=(killed_at,))
    resumed = train_killed_then_resumed(pipe, subject_images, part, tmp_path / "resumed", **extra)
    assert resumed.resumed_from_step == killed_at
    assert_same_weights(full.lora_path, resumed.lora_path)
    np.testing.assert_allclose(resumed.loss_history[killed_at:], full.loss_history[killed_at:], rtol=1e-5)
    if feature == "training":
        assert len(resumed.loss_history) == common["max_train_steps"]
        rows = (tmp_path / "resumed" / LOSS_LOG).read_text().splitlines()
        assert [json.loads(line)["step"] for line in rows] == list(range(1, 11))
    elif feature == "ema":
        assert_same_weights(full.ema_lora_path, resumed.ema_lora_path)
    elif feature == "caption-dropout":
        plain = settings(**dict(common, caption_dropout=0.0))
        undropped = train_lora(pipe, subject_images, plain, tmp_path / "undropped", captions=CAPTIONS)
        a, c = load_file(str(full.lora_path)), load_file(str(undropped.lora_path))
        assert any(not torch.allclose(a[k], c[k]) for k in a), "dropout made no difference"
    elif feature == "validation-loss":
        assert sorted(resumed.val_losses) == [2, 4, 6]
        np.testing.assert_allclose(
            list(resumed.val_losses.values()), list(full.val_losses.values()), rtol=1e-5
        )
