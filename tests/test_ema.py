"""The EMA of the LoRA weights: its formula, its files, and resume exactness."""

import pytest
import torch
from conftest import assert_same_weights
from safetensors.torch import load_file

from lora_core.adapters import KOHYA_FILE, LORA_FILE, read_training_metadata
from lora_core.errors import UserInputError
from lora_core.training import EMA_DIR, find_checkpoint, list_checkpoints, train_lora


def test_ema_equals_the_hand_computed_average_of_the_raw_weights(pipe, subject_images, settings, tmp_path):
    # decay 0.3: warm-up (0, 2/11, 3/12) for three steps, then the cap 0.3 from step 4 (4/13 > 0.3)
    steps, cap = 6, 0.3
    result = train_lora(
        pipe, subject_images, settings(max_train_steps=steps, ema_decay=cap, checkpoint_every=1), tmp_path
    )
    checkpoints = list_checkpoints(tmp_path)
    assert list(checkpoints) == list(range(1, steps + 1))
    average = None
    for step, folder in checkpoints.items():
        raw = load_file(str(folder / LORA_FILE))
        decay = 0.0 if step == 1 else min(cap, step / (9 + step))  # min(ema_decay, (1+n)/(10+n)), n = step-1
        average = raw if average is None else {k: decay * average[k] + (1 - decay) * raw[k] for k in raw}
        assert_same_weights(folder / EMA_DIR / LORA_FILE, average)
    assert_same_weights(result.ema_lora_path, average)
    final_raw = load_file(str(result.lora_path))
    assert any(not torch.allclose(final_raw[k], average[k]) for k in final_raw), (
        "the EMA lags the raw weights"
    )


def test_ema_is_saved_beside_the_raw_weights_in_both_formats(pipe, subject_images, settings, tmp_path):
    result = train_lora(
        pipe,
        subject_images,
        settings(max_train_steps=3, ema_decay=0.9, text_encoder_lr=5e-4, checkpoint_steps=(2,)),
        tmp_path,
    )
    assert result.ema_lora_path == tmp_path / EMA_DIR / LORA_FILE
    assert (tmp_path / EMA_DIR / KOHYA_FILE).is_file()
    assert read_training_metadata(result.ema_lora_path)["weights"] == "ema"
    assert read_training_metadata(result.lora_path)["weights"] == "raw"
    ema, raw = load_file(str(result.ema_lora_path)), load_file(str(result.lora_path))
    assert ema.keys() == raw.keys() and any(k.startswith("text_encoder.") for k in ema)
    assert (list_checkpoints(tmp_path)[2] / EMA_DIR / LORA_FILE).is_file()


def test_without_ema_no_ema_files_are_written(pipe, subject_images, settings, tmp_path):
    result = train_lora(pipe, subject_images, settings(max_train_steps=2, ema_decay=0.0), tmp_path)
    assert result.ema_lora_path is None and not (tmp_path / EMA_DIR).exists()


def test_a_checkpoint_without_ema_is_not_continued_with_ema(pipe, subject_images, settings, tmp_path):
    train_lora(pipe, subject_images, settings(max_train_steps=4, checkpoint_steps=(2,)), tmp_path)
    assert find_checkpoint([tmp_path], settings(max_train_steps=4, ema_decay=0.9)) is None
    off = settings(max_train_steps=4, ema_decay=0.0)  # 0 means off, as null does
    assert find_checkpoint([tmp_path], off) is not None


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(ema_decay=1.0), "train.ema_decay=1.0: must be in [0, 1)"),
        (dict(ema_decay=0.99, optimizer="schedulefree_adamw"), "schedulefree_adamw already saves an average"),
        (dict(caption_dropout=1.0), "train.caption_dropout=1.0"),
        (dict(caption_mode="captions"), "data.caption_mode='captions'"),
    ],
)
def test_bad_ema_and_caption_settings_are_named(settings, overrides, named):
    with pytest.raises(UserInputError, match=named.replace("[", r"\[").replace(")", r"\)")):
        settings(**overrides).validate()
