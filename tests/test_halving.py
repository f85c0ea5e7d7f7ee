"""Successive halving: rungs that continue exactly, the bracket's arithmetic, and its refusals."""

import torch
from safetensors.torch import load_file

from lora_core.adapters import LORA_FILE
from lora_core.training import list_checkpoints, train_lora


def _same_weights(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_rungs_resumed_from_checkpoints_end_with_the_weights_of_one_straight_run(
    pipe, subject_images, settings, tmp_path
):
    # a schedule that depends on the total: each rung must continue the 9-step run, not a shorter one
    common = dict(max_train_steps=9, text_encoder_lr=5e-4, lr_scheduler="linear", random_flip=True)
    straight = train_lora(
        pipe, subject_images, settings(**common, checkpoint_steps=(3,)), tmp_path / "straight"
    )
    rungs = settings(**common)
    first = train_lora(pipe, subject_images, rungs, tmp_path / "rungs", until=1)
    second = train_lora(pipe, subject_images, rungs, tmp_path / "rungs", resume_from="latest", until=3)
    assert (first.name, second.name) == ("step-000001", "step-000003")
    assert not (tmp_path / "rungs" / LORA_FILE).exists(), "a rung writes a checkpoint, not a final LoRA"
    _same_weights(straight.checkpoints[3] / LORA_FILE, second / LORA_FILE)
    top = train_lora(pipe, subject_images, rungs, tmp_path / "rungs", resume_from="latest")
    assert top.resumed_from_step == 3
    _same_weights(straight.lora_path, top.lora_path)
    assert set(list_checkpoints(tmp_path / "rungs")) == {1, 3}
