import json

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, render
from safetensors.torch import load_file

from lora_core.adapters import KOHYA_FILE, LORA_FILE, read_training_metadata
from lora_core.data.order import picture_indices
from lora_core.errors import UserInputError
from lora_core.training import (
    LoraTrainer,
    TrainingStopped,
    denoising_loss,
    find_checkpoint,
    list_checkpoints,
    train_lora,
)


def _weights_of(path):
    return load_file(str(path))


def _load(pipe, folder, name="t"):
    pipe.load_lora_weights(str(folder), adapter_name=name)


def _unload(pipe):
    pipe.unload_lora_weights()


def test_training_lowers_the_denoising_loss(pipe, subject_images, settings, tmp_path):
    s = settings(max_train_steps=60, learning_rate=1e-2)
    before = denoising_loss(pipe, subject_images, s.instance_prompt, samples_per_image=8)
    train_lora(pipe, subject_images, s, tmp_path)
    _load(pipe, tmp_path)
    try:
        after = denoising_loss(pipe, subject_images, s.instance_prompt, samples_per_image=8)
    finally:
        _unload(pipe)
    assert after < before * 0.98, (before, after)  # measured here (32 px): 1.087 -> 1.050


def test_lora_changes_the_image_at_scale_one_and_not_at_scale_zero(pipe, subject_images, settings, tmp_path):
    train_lora(pipe, subject_images, settings(text_encoder_lr=1e-3), tmp_path)
    base = render(pipe)
    _load(pipe, tmp_path)
    try:
        pipe.set_adapters(["t"], adapter_weights=[{"unet": 1.0, "text_encoder": 1.0}])
        full = render(pipe)
        pipe.set_adapters(["t"], adapter_weights=[{"unet": 0.0, "text_encoder": 0.0}])
        off = render(pipe)
    finally:
        _unload(pipe)
    assert np.abs(full - base).mean() > 1e-3
    np.testing.assert_array_equal(off, base)


def test_reloaded_adapter_renders_like_the_trained_pipeline(pipe, subject_images, settings, tmp_path):
    s = settings(text_encoder_lr=1e-3, alpha=8.0)  # alpha != rank: reload must keep scale 2
    trainer = LoraTrainer(pipe, subject_images, s, tmp_path)
    try:
        trainer.setup()
        trainer.train()
        for model in trainer.models:
            model.eval()
        in_memory = render(pipe)
        trainer.save_final()
    finally:
        trainer.cleanup()
    _load(pipe, tmp_path)
    try:
        reloaded = render(pipe)
    finally:
        _unload(pipe)
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-5)
    pipe.load_lora_weights(str(tmp_path / KOHYA_FILE), adapter_name="k")
    try:
        kohya = render(pipe)
    finally:
        _unload(pipe)
    np.testing.assert_allclose(kohya, in_memory, atol=1e-5)


def test_alpha_other_than_rank_round_trips_exactly(pipe, subject_images, settings, tmp_path):
    train_lora(pipe, subject_images, settings(rank=4, alpha=2.0, text_encoder_lr=1e-3), tmp_path)
    _load(pipe, tmp_path)
    try:
        scalings = {m.scaling["t"] for m in pipe.unet.modules() if hasattr(m, "scaling") and "t" in m.scaling}
        text_scalings = {
            m.scaling["t"] for m in pipe.text_encoder.modules() if hasattr(m, "scaling") and "t" in m.scaling
        }
    finally:
        _unload(pipe)
    assert scalings == {0.5} and text_scalings == {0.5}
    kohya = _weights_of(tmp_path / KOHYA_FILE)
    alphas = {k: v for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas and all(v.dtype == torch.float32 and v.item() == 2.0 for v in alphas.values())


def test_kohya_export_uses_sd1_names(pipe, subject_images, settings, tmp_path):
    train_lora(pipe, subject_images, settings(text_encoder_lr=1e-3), tmp_path)
    keys = _weights_of(tmp_path / KOHYA_FILE).keys()
    assert any(
        k.startswith("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down")
        for k in keys
    )
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up") for k in keys)
    assert {k.rsplit(".", 2)[-2] for k in keys if not k.endswith(".alpha")} == {"lora_down", "lora_up"}


def test_every_hyperparameter_is_in_the_safetensors_metadata(pipe, subject_images, settings, tmp_path):
    s = settings(learning_rate=2e-4, text_encoder_lr=3e-5, lr_scheduler="cosine", noise_offset=0.05)
    train_lora(pipe, subject_images, s, tmp_path, metadata={"base_model": "tiny"})
    for name in (LORA_FILE, KOHYA_FILE):
        meta = read_training_metadata(tmp_path / name)
        for key, value in {**s.to_dict(), "alpha": s.lora_alpha}.items():  # alpha None means = rank
            assert meta[key] == value, (name, key)
        assert meta["base_model"] == "tiny" and meta["alpha"] == 4.0 and meta["trained_steps"] == 8
    from safetensors import safe_open

    with safe_open(str(tmp_path / KOHYA_FILE), "pt") as f:
        ss = f.metadata()
    assert (
        ss["ss_network_dim"] == "4"
        and ss["ss_text_encoder_lr"] == "3e-05"
        and ss["ss_lr_scheduler"] == "cosine"
    )


def test_a_stop_request_saves_a_checkpoint_that_continues_to_the_same_weights(
    pipe, subject_images, settings, tmp_path
):
    # a job told to give its slot back (time limit, preemption) stops between steps, not on a checkpoint step
    common = dict(
        max_train_steps=10,
        text_encoder_lr=5e-4,
        random_flip=True,
        lr_scheduler="cosine",
        lr_warmup_steps=3,
        checkpoint_steps=(8,),
    )
    full = train_lora(pipe, subject_images, settings(**common), tmp_path / "full")
    asked = []

    def stop_after_step_5():
        asked.append(1)
        return len(asked) == 5

    with pytest.raises(TrainingStopped) as stopped:
        train_lora(
            pipe, subject_images, settings(**common), tmp_path / "stopped", should_stop=stop_after_step_5
        )
    assert (
        stopped.value.step == 5
        and stopped.value.checkpoint == tmp_path / "stopped" / "checkpoints" / "step-000005"
    )
    assert list(list_checkpoints(tmp_path / "stopped")) == [5]
    assert not (tmp_path / "stopped" / LORA_FILE).exists(), "a stopped training leaves no final LoRA"
    resumed = train_lora(pipe, subject_images, settings(**common), tmp_path / "stopped", resume_from="latest")
    assert resumed.resumed_from_step == 5
    assert_same_weights(full.lora_path, resumed.lora_path)
    np.testing.assert_allclose(resumed.loss_history, full.loss_history, rtol=1e-5)


def test_resume_refuses_a_checkpoint_of_other_settings(pipe, subject_images, settings, tmp_path):
    train_lora(pipe, subject_images, settings(checkpoint_steps=(4,)), tmp_path)
    ckpt = list_checkpoints(tmp_path)[4]
    with pytest.raises(UserInputError, match="other settings"):
        train_lora(pipe, subject_images, settings(learning_rate=5e-4), tmp_path / "b", resume_from=ckpt)


def test_latest_ignores_incompatible_checkpoints(pipe, subject_images, settings, tmp_path):
    train_lora(pipe, subject_images, settings(checkpoint_steps=(4,)), tmp_path)
    result = train_lora(pipe, subject_images, settings(learning_rate=5e-4), tmp_path, resume_from="latest")
    assert result.resumed_from_step == 0


def test_learning_rates_reach_their_parameter_groups(pipe, subject_images, settings, tmp_path):
    s = settings(learning_rate=1e-3, text_encoder_lr=1e-5, adam_weight_decay=0.0, max_grad_norm=0.0)
    trainer = LoraTrainer(pipe, subject_images, s, tmp_path)
    try:
        trainer.setup()
        unet_b = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_B" in n}
        text_b = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters() if "lora_B" in n}
        trainer.training_step()
        # Adam's first update moves each weight by about lr (sign of the gradient), whatever its size.
        unet_step = max(
            (p - unet_b[n]).abs().max().item() for n, p in pipe.unet.named_parameters() if n in unet_b
        )
        text_step = max(
            (p - text_b[n]).abs().max().item() for n, p in pipe.text_encoder.named_parameters() if n in text_b
        )
        groups = [g["lr"] for g in trainer.optimizer.param_groups]
    finally:
        trainer.cleanup()
    assert groups == [1e-3, 1e-5]
    assert unet_step == pytest.approx(1e-3, rel=0.05)
    assert text_step == pytest.approx(1e-5, rel=0.05)


def test_text_encoder_is_untouched_when_not_trained(pipe, subject_images, settings, tmp_path):
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    trainer = LoraTrainer(pipe, subject_images, settings(text_encoder_lr=0.0), tmp_path)
    try:
        trainer.setup()
        assert not any(p.requires_grad for p in pipe.text_encoder.parameters())
        assert not any("lora" in n for n, _ in pipe.text_encoder.named_parameters())
        trainer.train()
        trainer.save_final()
    finally:
        trainer.cleanup()
    after = pipe.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(k.startswith("text_encoder.") for k in _weights_of(tmp_path / LORA_FILE))


def test_cleanup_leaves_the_shared_pipeline_as_found(pipe, subject_images, settings, tmp_path):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    first = train_lora(pipe, subject_images, settings(text_encoder_lr=1e-3), tmp_path / "a")
    assert {k: v for k, v in pipe.unet.state_dict().items() if "lora" not in k}.keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items() if k in before)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    second = train_lora(pipe, subject_images, settings(text_encoder_lr=1e-3), tmp_path / "b")
    assert_same_weights(first.lora_path, second.lora_path, atol=0)


def test_checkpoints_hold_loadable_lora_weights(pipe, subject_images, settings, tmp_path):
    result = train_lora(pipe, subject_images, settings(checkpoint_steps=(2, 5), checkpoint_every=4), tmp_path)
    assert sorted(result.checkpoints) == [2, 4, 5, 8]
    assert read_training_metadata(result.checkpoints[5] / LORA_FILE)["trained_steps"] == 5
    pipe.load_lora_weights(str(result.checkpoints[5]), adapter_name="c")
    _unload(pipe)


def test_result_reports_speed_memory_and_histories(pipe, subject_images, settings, tmp_path):
    records = []
    result = train_lora(
        pipe, subject_images, settings(max_train_steps=6, log_every=4), tmp_path, on_step=records.append
    )
    assert [r.step for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.loss for r in records] == result.loss_history
    assert all(r.lr == 1e-3 for r in records) and records[0].text_encoder_lr is None
    assert result.steps_per_second > 0 and result.peak_memory_mb > 0
    saved = json.loads((tmp_path / "train_result.json").read_text())
    tail = result.loss_history[-1:]  # 6 steps: the last 10% is the last step
    assert saved["final_loss"] == sum(tail) / len(tail)


def test_final_loss_is_the_mean_of_the_last_tenth_of_steps_for_the_result_and_the_report(tmp_path):
    from lora_core.training.loss_log import final_loss
    from sweeper.disk.results import RunResult

    losses = [float(v) for v in range(1, 21)]  # 20 steps: the last 10% is steps 19 and 20
    assert final_loss(losses) == 19.5 and final_loss([3.0]) == 3.0 and final_loss([]) is None
    run = RunResult(tmp_path, {}, [], loss=list(enumerate(losses, start=1)))
    assert run.final_loss == 19.5


def test_picture_order_visits_every_picture_each_epoch():
    seen = [picture_indices(step, 2, 5, seed=1) for step in range(5)]
    flat = [i for batch in seen for i in batch]
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and sorted(flat[5:10]) == [0, 1, 2, 3, 4]
    assert picture_indices(3, 2, 5, seed=1) == seen[3]


def test_min_snr_weights_follow_their_formula(pipe, subject_images, settings, tmp_path):
    """Hang et al. 2023, epsilon prediction: weight = min(SNR, gamma) / SNR, SNR = a / (1 - a)."""
    from lora_core.training import LoraTrainer

    trainer = LoraTrainer(pipe, subject_images, settings(snr_gamma=5.0), tmp_path)
    trainer.setup()
    try:
        t = torch.tensor([1, 100, 500, 999])
        alpha_bar = trainer.noise_scheduler.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        expected = torch.minimum(snr, torch.tensor(5.0)) / snr
        assert torch.allclose(trainer.snr_weights(t), expected)
        assert expected[0] < 1 and expected[-1] == 1  # low noise is down-weighted, high noise kept
    finally:
        trainer.cleanup()


@pytest.mark.parametrize(
    "option", [{"snr_gamma": 5.0}, {"noise_offset": 0.1}], ids=["min-snr", "noise-offset"]
)
def test_min_snr_and_noise_offset_each_change_what_is_trained(
    pipe, subject_images, settings, tmp_path, option
):
    plain = train_lora(pipe, subject_images, settings(), tmp_path / "plain")
    changed = train_lora(pipe, subject_images, settings(**option), tmp_path / "changed")
    assert all(np.isfinite(changed.loss_history))
    assert changed.loss_history != plain.loss_history  # same seed: only the option can tell them apart
    with pytest.raises(AssertionError):
        assert_same_weights(changed.lora_path, plain.lora_path)


def test_bad_target_module_is_a_clear_error(pipe, subject_images, settings, tmp_path):
    with pytest.raises(UserInputError, match="unet_target_modules"):
        train_lora(pipe, subject_images, settings(unet_target_modules=("no_such_layer",)), tmp_path)
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())
    assert train_lora(
        pipe, subject_images, settings(), tmp_path / "next"
    ).lora_path.is_file()  # the next job works


def test_a_checkpoint_of_another_base_model_or_pictures_is_not_continued(
    pipe, subject_images, settings, tmp_path
):
    identity = {"base_model": "tiny-a", "instance_dir": "/pictures/a"}
    train_lora(pipe, subject_images, settings(checkpoint_steps=(4,)), tmp_path, identity=identity)
    other = {**identity, "instance_dir": "/pictures/b"}
    assert find_checkpoint([tmp_path], settings(), identity) == list_checkpoints(tmp_path)[4]
    assert find_checkpoint([tmp_path], settings(), other) is None
    result = train_lora(
        pipe, subject_images, settings(), tmp_path / "b", resume_from="latest", identity=other
    )
    assert result.resumed_from_step == 0
    with pytest.raises(UserInputError, match="other pictures"):
        train_lora(
            pipe,
            subject_images,
            settings(),
            tmp_path / "c",
            resume_from=list_checkpoints(tmp_path)[4],
            identity=other,
        )


def test_pictures_are_encoded_when_a_step_first_draws_them(pipe, subject_images, settings, tmp_path):
    """Start-up waits for no picture's encoding; a picture's latents do not depend on when it was encoded."""
    trainer = LoraTrainer(pipe, subject_images, settings(random_flip=True), tmp_path)
    try:
        trainer.setup()
        assert trainer.latents.encoded == {}
        latents, _ = trainer.micro_batch(0)
        assert len(trainer.latents.encoded) == latents.shape[0] == 1
        drawn = dict(trainer.latents.encoded)
        every = trainer.latents.mean  # encodes the rest: both orientations of every picture
        assert tuple(every.shape[:2]) == (2, len(subject_images))
        (flip, row), (mean, _std) = next(iter(drawn.items()))
        assert torch.equal(every[flip, row], mean)
        assert not torch.equal(every[0, row], every[1, row])  # the flipped picture is its own latent
    finally:
        trainer.cleanup()


def test_a_rung_reached_by_another_runs_checkpoint_is_saved_in_its_own_folder(
    pipe, subject_images, settings, tmp_path
):
    """A rung at step 4 that continues from a longer run's checkpoint at 4 (step-axis reuse) trains nothing,
    and its own ``checkpoints/step-000004`` holds those weights (the rung's grid renders from there)."""
    from lora_core.training import checkpoint_dir

    longer = settings(max_train_steps=8, checkpoint_steps=(4,))
    train_lora(pipe, subject_images, longer, tmp_path / "longer")
    source = checkpoint_dir(tmp_path / "longer", 4)
    rung = train_lora(
        pipe, subject_images, settings(max_train_steps=6), tmp_path / "rung", resume_from=source, until=4
    )
    assert rung == checkpoint_dir(tmp_path / "rung", 4) and rung.is_dir()
    assert_same_weights(source / LORA_FILE, rung / LORA_FILE)
