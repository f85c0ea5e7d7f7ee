"""Packs: configurations trained together end with the weights and pictures of each trained alone."""

import copy

import numpy as np
import pytest
import torch
from conftest import SIZE, render, render_alone_and_together
from safetensors.torch import load_file

from lora_core.adapters import LORA_FILE, read_training_metadata
from lora_core.packs import pack_refusal, train_pack
from lora_core.settings import TrainSettings
from lora_core.training import LOSS_LOG, train_lora

# The tolerance of "the same weights" between a configuration trained in a pack and alone (fp32, CPU, 6-8
# steps). The batched products add in another order, and AdamW divides each gradient by its own running size:
# where a gradient is near zero, a rounding can flip the sign of that element's step, a difference of up to
# two steps (2 x lr), which the next steps carry on a little into its neighbours. Measured over repeated
# runs: at most 4 elements of a 256-element tensor beyond 1e-4 (0.2 % of a file's elements), the largest
# 3.0e-3 at lr 3e-3, and under 5.3e-4 of each tensor's norm. Bounds: 2 x lr per element, 1 % of a file's
# elements beyond 1e-4, 1e-2 of each tensor's norm.
SPREAD, SHARE, NORM_RTOL = 1e-4, 0.01, 1e-2


def assert_trained_alike(a, b, lr: float) -> None:
    """Two adapter files of one configuration (learning rate ``lr``) hold the same tensors up to the pack's rounding."""
    a, b = (load_file(str(path)) for path in (a, b))
    assert a.keys() == b.keys()
    spread = 0
    for key in a:
        diff = (a[key] - b[key]).abs()
        assert diff.max() <= 2 * lr, (key, diff.max().item())
        assert diff.norm() <= NORM_RTOL * b[key].norm() + 1e-7, (key, (diff.norm() / b[key].norm()).item())
        spread += int((diff > SPREAD).sum())
    assert spread <= SHARE * sum(t.numel() for t in a.values()), spread


def _render_with(pipe, folder):
    """``render``'s picture with the LoRA of a training folder loaded (and unloaded after)."""
    pipe.load_lora_weights(str(folder), adapter_name="t")
    try:
        return render(pipe)
    finally:
        pipe.unload_lora_weights()


def _differences(pipe, subject_images, settings, tmp_path, configs, **train_args):
    """Train ``configs`` as one pack and each alone; returns [(pack result, alone result)]."""
    configs = [{"max_train_steps": 6} | c for c in configs]  # 6 steps; a configuration may set fewer
    packed = train_pack(
        pipe,
        subject_images,
        [settings(**c) for c in configs],
        [tmp_path / f"pack-{i}" for i in range(len(configs))],
        **train_args,
    )
    alone = [
        train_lora(pipe, subject_images, settings(**c), tmp_path / f"alone-{i}", **train_args)
        for i, c in enumerate(configs)
    ]
    return list(zip(packed, alone, strict=True))


def _assert_each_as_alone(pairs, configs) -> None:
    for config, (packed, alone) in zip(configs, pairs, strict=True):
        lr = max(*alone.lr_history, config.get("text_encoder_lr", 0.0))  # Prodigy's: d x lr, as logged
        assert_trained_alike(packed.lora_path, alone.lora_path, lr)
        assert_trained_alike(packed.kohya_path, alone.kohya_path, lr)
        np.testing.assert_allclose(packed.loss_history, alone.loss_history, rtol=1e-4)
        np.testing.assert_allclose(packed.lr_history, alone.lr_history, rtol=1e-6)
        assert packed.val_losses.keys() == alone.val_losses.keys()
        np.testing.assert_allclose(
            list(packed.val_losses.values()), list(alone.val_losses.values()), rtol=1e-4
        )
        assert (packed.output_dir / LOSS_LOG).read_text().count("\n") == len(alone.loss_history)
        meta = read_training_metadata(packed.lora_path)
        assert meta == read_training_metadata(alone.lora_path)  # the same settings in the same file


def _assert_grids_render_together_as_alone(pipe, loras: list) -> dict:
    """The LoRAs' grids (UNet scale 0, 0.5, 1) rendered together within 1/255 of each alone (which fuses its
    adapter into the weights at each UNet scale); returns the pictures rendered together."""
    from lora_core.render import RenderCell, RenderOptions

    options = RenderOptions(num_inference_steps=3, resolution=SIZE)
    cells = [RenderCell("a photo of ktn cat", u, 0, 4, seed=11) for u in (0, 0.5, 1)]
    alone, together = render_alone_and_together(pipe, loras, cells, options)
    assert together.keys() == alone.keys()
    assert max(np.abs(together[key] - alone[key]).max() for key in alone) <= 1  # of 255
    assert max(np.abs(alone[(0, c)] - alone[(1, c)]).max() for c in cells if c.unet_scale) > 2  # they differ
    return {(k, c.unet_scale): picture for (k, c), picture in together.items()}


@pytest.mark.slow  # several configurations trained twice: in a pack and alone
def test_an_adamw_pack_steps_every_configuration_at_once_as_each_alone(
    pipe, subject_images, settings, tmp_path
):
    """Every configuration on AdamW without EMA: one clipping and one AdamW step for the whole stack."""
    configs = [
        dict(validation_every=2, validation_samples=4),  # the validation loss, on its own weights
        dict(learning_rate=3e-3, lr_scheduler="cosine", lr_warmup_steps=2, max_train_steps=5, seed=5),
        dict(rank=8, alpha=4.0, text_encoder_lr=1e-3, adam_weight_decay=0.1, adam_beta2=0.99, dropout=0.1),
        dict(noise_offset=0.1, snr_gamma=5.0, caption_dropout=0.5, max_grad_norm=0.01, adam_epsilon=1e-6),
    ]
    _assert_each_as_alone(_differences(pipe, subject_images, settings, tmp_path, configs), configs)


@pytest.mark.slow  # several configurations trained twice: in a pack and alone
def test_each_configuration_of_a_pack_ends_with_the_weights_it_has_alone(
    pipe, subject_images, settings, tmp_path
):
    """Other optimizers and the EMA: each configuration's own optimizer, on views of its slices."""
    configs = [
        dict(
            learning_rate=3e-3,
            lr_scheduler="cosine",
            lr_warmup_steps=2,
            max_train_steps=5,
            seed=5,
            dropout=0.2,
        ),
        dict(rank=8, alpha=4.0, text_encoder_lr=1e-3, optimizer="prodigy"),
        dict(
            noise_offset=0.1,
            snr_gamma=5.0,
            caption_dropout=0.5,
            ema_decay=0.9,
            max_grad_norm=0.01,
        ),
        dict(optimizer="schedulefree_adamw", learning_rate=3e-3, validation_every=3, text_encoder_lr=1e-3),
    ]
    _assert_each_as_alone(_differences(pipe, subject_images, settings, tmp_path, configs), configs)
    ema_pack, ema_alone = tmp_path / "pack-2" / "ema" / LORA_FILE, tmp_path / "alone-2" / "ema" / LORA_FILE
    assert_trained_alike(ema_pack, ema_alone, 1e-3)
    # The configuration that trained the text encoder renders the same pictures as alone.
    pictures = [_render_with(pipe, folder) for folder in (tmp_path / "pack-1", tmp_path / "alone-1")]
    assert np.abs(pictures[0] - pictures[1]).max() <= 2 / 255
    assert (
        load_file(str(tmp_path / "pack-1" / LORA_FILE)).keys()
        == load_file(str(tmp_path / "alone-1" / LORA_FILE)).keys()
    )


@pytest.mark.slow  # several configurations trained twice: in a pack and alone
def test_locon_configurations_pack_like_alone(pipe, subject_images, settings, tmp_path):
    """LoCon: the UNet's convolutions adapted too, with their own rank and alpha (grouped convolutions)."""
    locon = dict(conv_target_modules=("conv1", "conv2"))
    configs = [
        dict(locon, conv_rank=4, conv_alpha=2.0),
        dict(locon, conv_rank=8, learning_rate=3e-3, seed=5, text_encoder_lr=1e-3),
    ]
    pairs = _differences(pipe, subject_images, settings, tmp_path, configs)
    _assert_each_as_alone(pairs, configs)
    assert any(".conv1.lora_A" in key for key in load_file(str(pairs[0][0].lora_path)))
    # their grids render together: each picture's convolution adapters as a channel group (measured: 0/255)
    together = _assert_grids_render_together_as_alone(pipe, [packed.output_dir for packed, _ in pairs])
    np.testing.assert_array_equal(together[(0, 0)], together[(1, 0)])  # scale 0: the base model's, once


@pytest.mark.slow  # several configurations trained twice: in a pack and alone
def test_dora_configurations_pack_like_alone(pipe, subject_images, settings, tmp_path):
    """DoRA: each configuration's magnitudes in a third stack, its row norms of ``W + s B A`` its own; adapter
    dropout takes peft's other path (the base layer on the dropped input)."""
    dora = dict(adapter_kind="dora")
    configs = [
        dict(dora, validation_every=3),
        dict(dora, rank=8, alpha=4.0, learning_rate=3e-3, seed=5, text_encoder_lr=1e-3),
        dict(dora, dropout=0.2, seed=6, text_encoder_lr=1e-3, adam_weight_decay=0.1),
    ]
    pairs = _differences(pipe, subject_images, settings, tmp_path, configs)
    _assert_each_as_alone(pairs, configs)
    packed = load_file(str(pairs[1][0].lora_path))
    magnitudes = [k for k in packed if "lora_magnitude_vector" in k]
    assert magnitudes and any(k.startswith("text_encoder.") for k in magnitudes)
    # the magnitudes trained (they start as the base weight's row norms, which the pack does not keep)
    start = {n: m.weight.norm(dim=1) for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Linear)}
    moved = [
        (packed[k] - start[name]).abs().max()
        for k in magnitudes
        if k.startswith("unet.")
        and (name := k.removeprefix("unet.").rsplit(".lora_magnitude_vector", 1)[0]) in start
    ]
    assert moved and max(moved) > 1e-4
    pictures = [_render_with(pipe, r.output_dir) for r in pairs[1]]
    assert np.abs(pictures[0] - pictures[1]).max() <= 2 / 255
    # their grids render together, each picture with its row norms at its UNet scale (measured: 1/255); at
    # scale 0 DoRA still rescales the rows to its magnitudes: not the base model's picture
    together = _assert_grids_render_together_as_alone(pipe, [packed.output_dir for packed, _ in pairs])
    assert np.abs(together[(0, 0)] - together[(1, 0)]).max() > 0


def test_a_pack_with_gradient_checkpointing_trains_each_configuration_as_alone(
    pipe, subject_images, settings, tmp_path
):
    """The UNet and the text encoder recompute their activations in the backward pass, in the pack as alone."""
    checkpointed = dict(gradient_checkpointing=True)
    configs = [checkpointed, dict(checkpointed, learning_rate=3e-3, seed=5, text_encoder_lr=1e-3, rank=8)]
    models = (pipe.unet, pipe.text_encoder)
    seen = set()  # whether each model recomputes its activations, at the steps of the pack and alone

    def on_step(*_):
        seen.add((pipe.unet.is_gradient_checkpointing, pipe.text_encoder.is_activation_checkpointing))

    pairs = _differences(pipe, subject_images, settings, tmp_path, configs, on_step=on_step)
    _assert_each_as_alone(pairs, configs)
    assert {unet for unet, _ in seen} == {True} and (True, True) in seen  # the text encoder where it trains
    assert not pipe.unet.is_gradient_checkpointing and not models[1].is_activation_checkpointing


@pytest.mark.slow  # several configurations trained twice: in a pack and alone
def test_prior_preservation_weights_and_adafactor_pack_like_alone(pipe, subject_images, settings, tmp_path):
    prior = dict(with_prior_preservation=True, class_prompt="a photo of a cat", num_class_images=2)
    configs = [
        dict(prior, prior_loss_weight=1.0, optimizer="adafactor"),
        dict(prior, prior_loss_weight=0.3, optimizer="adafactor", learning_rate=3e-3),
    ]
    pairs = _differences(pipe, subject_images, settings, tmp_path, configs, class_images=subject_images[3:])
    for config, (packed, alone) in zip(configs, pairs, strict=True):
        assert_trained_alike(packed.lora_path, alone.lora_path, config.get("learning_rate", 1e-3))
    # the weight matters: the two configurations differ by far more than the packing does
    a, b = (load_file(str(p.lora_path)) for p, _ in pairs)
    assert max((a[k] - b[k]).norm() / b[k].norm() for k in a) > 10 * NORM_RTOL  # measured: 0.81


def test_a_bfloat16_pack_trains_each_configuration_as_alone(pipe, subject_images, settings, tmp_path):
    """A bfloat16 base model (autocast, adapters in float32): the same weights as alone, within the fp32 bounds.

    Measured (6 steps): at most 5.4e-4 per element at lr 3e-3, 0.6 % of a tensor's norm; losses within 7e-5.
    """
    half = copy.deepcopy(pipe).to(torch.bfloat16)
    configs = [{}, dict(learning_rate=3e-3, seed=5, text_encoder_lr=1e-3, validation_every=3)]
    _assert_each_as_alone(_differences(half, subject_images, settings, tmp_path, configs), configs)
    # DoRA on a half-precision base runs alone: its row norms round otherwise in a pack
    dora = settings(adapter_kind="dora")
    assert "half-precision" in pack_refusal([dora], half_precision=True)
    assert pack_refusal([dora]) is None
    with pytest.raises(ValueError, match="on a half-precision model"):
        train_pack(half, subject_images, [dora, dora], [tmp_path / "d0", tmp_path / "d1"])


def test_an_fp16_overflow_skips_only_that_configurations_step(
    pipe, subject_images, settings, tmp_path, monkeypatch
):
    """fp16: each configuration scales its loss with its own gradient scaler and skips its own overflows.

    Accelerate makes a gradient scaler on CUDA only; here each accelerator (the pack's and the lone runs')
    gets torch's CPU ``GradScaler`` and autocast, so that the scaling runs as it does on a GPU. The second
    configuration's scale (2^120) overflows at every step: its steps are all skipped, in the pack as alone,
    and the first configuration trains on as it does alone.
    """
    import accelerate

    scales, scalers = [], []

    class ScaledOnCpu(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp = True  # autocast to float16, and unscale before clipping, as on CUDA
            self.scaler = torch.amp.GradScaler("cpu", init_scale=scales.pop(0))
            scalers.append(self.scaler)

    monkeypatch.setattr(accelerate, "Accelerator", ScaledOnCpu)
    half = copy.deepcopy(pipe).to(torch.float16)
    configs = [{}, dict(learning_rate=3e-3, seed=5, text_encoder_lr=1e-3)]
    scales += [2.0**8, 2.0**120, 2.0**8, 2.0**120]  # the pack's two accelerators, then each lone run's
    pairs = _differences(half, subject_images, settings, tmp_path, configs)
    assert [s.get_scale() for s in scalers] == [2.0**8, 2.0**114] * 2  # 6 overflows: halved 6 times
    (packed, alone), (skipped, skipped_alone) = pairs
    # Each loss is its own: fp16's batched products round otherwise than a batch of one (measured: 3.2e-5 at
    # the first step, where the adapters still add nothing), and AdamW's first steps carry such roundings
    # (measured: 2.4e-3 per element at lr 1e-3, 5.6 % of a tensor's small norm after 6 steps; pictures 0.008/255).
    np.testing.assert_allclose(packed.loss_history, alone.loss_history, rtol=1e-3)
    a, b = (load_file(str(r.lora_path)) for r in (packed, alone))
    assert max((a[k] - b[k]).abs().max() for k in a) <= 4 * 1e-3
    assert any(a[k].abs().max() > 4e-3 for k in a if ".lora_B." in k)  # it trained: B left zero
    pictures = [_render_with(pipe, folder) for folder in (packed.output_dir, alone.output_dir)]
    assert np.abs(pictures[0] - pictures[1]).max() <= 2 / 255
    for result in (skipped, skipped_alone):  # every step skipped: B is still zero, and the log has every step
        assert all(not t.any() for k, t in load_file(str(result.lora_path)).items() if ".lora_B." in k)
        assert len(result.loss_history) == 6
    np.testing.assert_array_equal(skipped.loss_history, skipped_alone.loss_history)


def test_a_configuration_that_diverges_fails_alone_and_the_rest_train_as_alone(
    pipe, subject_images, settings, tmp_path, monkeypatch
):
    import lora_core.packs.trainer as pack_trainer

    calls, original = [], pack_trainer.pack_losses

    def poisoned(*args, **kwargs):  # configuration 1's loss, and so its gradient, turn NaN at step 3
        losses = original(*args, **kwargs)
        calls.append(1)
        return losses * torch.tensor([1.0, float("nan")]) if len(calls) == 3 else losses

    monkeypatch.setattr(pack_trainer, "pack_losses", poisoned)
    trainer = pack_trainer.PackTrainer(
        pipe, subject_images, [settings(), settings(seed=5)], [tmp_path / "a", tmp_path / "b"]
    )
    try:
        trainer.setup()
        results = trainer.train()
    finally:
        trainer.cleanup()
    assert results[1] is None and "step 3" in trainer.failures[1] and "diverged" in trainer.failures[1]
    assert not (tmp_path / "b" / LORA_FILE).exists()
    assert (tmp_path / "b" / LOSS_LOG).read_text().count("\n") == 2  # the steps before it diverged
    alone = train_lora(pipe, subject_images, settings(), tmp_path / "alone")
    assert_trained_alike(results[0].lora_path, alone.lora_path, 1e-3)  # untouched by its neighbour's NaN


def test_a_pack_leaves_the_shared_pipeline_as_it_found_it(pipe, subject_images, settings, tmp_path):
    before = render(pipe)
    names = [n for n, _ in pipe.unet.named_modules()]
    train_pack(pipe, subject_images, [settings(), settings(seed=9)], [tmp_path / "a", tmp_path / "b"])
    assert [n for n, _ in pipe.unet.named_modules()] == names
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    np.testing.assert_array_equal(render(pipe), before)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(adapter_kind="loha"), "lora.kind=loha"),
        (dict(adapter_kind="dora"), "lora.kind differs"),
        (dict(conv_target_modules=("conv1",)), "lora.conv_target_modules differs"),
        (dict(resolution=2 * SIZE), "train.resolution differs"),
        (dict(train_batch_size=2), "train.train_batch_size differs"),
        (dict(rank=8, optimizer="adafactor"), "adafactor with different ranks"),
        (dict(gradient_checkpointing=True, dropout=0.1), "train.gradient_checkpointing with lora.dropout"),
    ],
)
def test_what_cannot_share_a_pack_is_named(change, reason):
    base = TrainSettings(resolution=SIZE, optimizer=change.get("optimizer", "adamw"))
    assert pack_refusal([base, TrainSettings(**{"resolution": SIZE, **change})]) is not None
    assert reason in pack_refusal([base, TrainSettings(**{"resolution": SIZE, **change})])
    assert (
        pack_refusal(
            [base, TrainSettings(resolution=SIZE, learning_rate=1e-2, seed=4, optimizer=base.optimizer)]
        )
        is None
    )


def test_the_packed_layer_applies_each_adapter_to_its_own_slice_only():
    from lora_core.packs.layers import PackRouting, packed_linear_class

    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    weights = [(torch.randn(3, 6), torch.randn(5, 3), 0.5), (torch.randn(3, 6), torch.randn(5, 3), 2.0)]
    weights[0][0][2:] = 0  # configuration 0 has rank 2, padded to 3
    weights[0][1][:, 2:] = 0
    routing = PackRouting([1, 0])
    a, b = torch.stack([w[0] for w in weights]), torch.stack([w[1] for w in weights])
    layer = packed_linear_class()(base, routing, a, b, [w[2] for w in weights])
    x = torch.randn(4, 7, 6)  # two slices of two samples: configuration 1, then 0
    expected = torch.cat(
        [
            base(x[i : i + 2]) + s * (x[i : i + 2] @ a.T @ b.T)
            for i, (a, b, s) in ((0, weights[1]), (2, weights[0]))
        ]
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    routing.active = [0, 1]  # the whole pack, in order: no index
    torch.testing.assert_close(layer(x[[2, 3, 0, 1]]), expected[[2, 3, 0, 1]], atol=1e-5, rtol=1e-5)
    routing.active = []
    torch.testing.assert_close(layer(x), base(x))


def _weights(path) -> dict:
    return load_file(str(path))


def test_a_stopped_pack_continues_each_configuration_from_its_own_checkpoint(
    pipe, subject_images, settings, tmp_path
):
    """A time limit stops the pack at step 3: each configuration still training checkpoints there, and the
    same pack started again ends with the weights and loss logs of an uninterrupted pack (one had finished)."""
    from lora_core.packs import PackTrainer
    from lora_core.training import TrainingStopped, find_checkpoint

    configs = [
        dict(
            max_train_steps=6, dropout=0.1, text_encoder_lr=1e-3
        ),  # its dropout generator is checkpointed too
        dict(max_train_steps=3, seed=5, learning_rate=3e-3),
        dict(rank=8),
    ]
    straight = train_pack(
        pipe, subject_images, [settings(**c) for c in configs], [tmp_path / f"s{i}" for i in range(3)]
    )
    dirs = [tmp_path / f"r{i}" for i in range(3)]
    calls = []
    stopped = PackTrainer(
        pipe,
        subject_images,
        [settings(**c) for c in configs],
        dirs,
        should_stop=lambda: calls.append(1) or len(calls) == 3,
    )
    try:
        stopped.setup()
        with pytest.raises(TrainingStopped):
            stopped.train()
    finally:
        stopped.cleanup()
    assert stopped.results[1] is not None and stopped.results[0] is None  # the 3-step one finished
    resume = [find_checkpoint([d], settings(**c)) for d, c in zip(dirs, configs, strict=True)]
    assert [c.name if c else None for c in resume] == ["step-000003", None, "step-000003"]
    unfinished = [0, 2]  # what the sweep starts again: the configurations without their final files
    again = train_pack(
        pipe,
        subject_images,
        [settings(**configs[k]) for k in unfinished],
        [dirs[k] for k in unfinished],
        resume_from=[resume[k] for k in unfinished],
    )
    for k, result in zip(unfinished, again, strict=True):
        a, b = _weights(result.lora_path), _weights(straight[k].lora_path)
        assert all(torch.equal(a[key], b[key]) for key in a), k
        assert result.loss_history == straight[k].loss_history
        assert result.resumed_from_step == 3


@pytest.mark.slow  # trains one configuration three times
def test_checkpoints_of_a_pack_and_of_a_lone_run_continue_in_either(pipe, subject_images, settings, tmp_path):
    """The checkpoint format is one: a pack's checkpoint continues alone, a lone run's continues in a pack."""
    mine, other = settings(checkpoint_steps=(3,), text_encoder_lr=1e-3), settings(seed=7)
    packed = train_pack(pipe, subject_images, [mine, other], [tmp_path / "p", tmp_path / "o"])
    alone = train_lora(pipe, subject_images, mine, tmp_path / "a")
    continued = train_lora(
        pipe,
        subject_images,
        mine,
        tmp_path / "ca",
        resume_from=tmp_path / "p" / "checkpoints" / "step-000003",
    )
    in_pack = train_pack(
        pipe,
        subject_images,
        [mine, other],
        [tmp_path / "cp", tmp_path / "o2"],
        resume_from=[tmp_path / "a" / "checkpoints" / "step-000003", None],
    )
    for result in (continued, in_pack[0], packed[0]):
        assert_trained_alike(result.lora_path, alone.lora_path, 1e-3)
        np.testing.assert_allclose(result.loss_history, alone.loss_history, rtol=1e-4)


@pytest.mark.slow  # three trainings, their grids rendered alone and together
def test_a_packs_grids_render_together_as_each_alone(pipe, subject_images, settings, tmp_path, monkeypatch):
    """Cells of several LoRAs in one denoising call, each with its own adapter and scales: within 1/255
    (measured: at most 1 of 255, on the largest pixel). A picture that several cells draw is drawn once."""
    from itertools import product

    import lora_core.packs.render
    import lora_core.render
    from lora_core.packs.render import PackRenderer
    from lora_core.render import GridRenderer, RenderCell, RenderOptions

    drawn = []  # pictures the pipeline drew, per renderer

    def counted(module, renderer):
        real, enter = module.render_pictures, renderer.__enter__

        def render_pictures(pipe, options, cells, *args):
            drawn[-1] += len(cells)
            return real(pipe, options, cells, *args)

        def entered(self):
            drawn.append(0)
            return enter(self)

        monkeypatch.setattr(module, "render_pictures", render_pictures)
        monkeypatch.setattr(renderer, "__enter__", entered)

    counted(lora_core.render, GridRenderer)
    counted(lora_core.packs.render, PackRenderer)

    configs = [
        settings(learning_rate=3e-2, max_train_steps=4),
        settings(rank=8, text_encoder_lr=3e-2, seed=5),
        settings(text_encoder_lr=1e-2, seed=6),  # a second text-encoder adapter beside the first
    ]
    results = train_pack(pipe, subject_images, configs, [tmp_path / k for k in "abc"])
    loras = [r.output_dir for r in results]
    options = RenderOptions(num_inference_steps=3, resolution=SIZE)
    cells = [
        RenderCell(prompt, u, t, g, seed=11)
        for prompt, u, t, g in product(
            ["a photo of ktn cat", "ktn cat on a beach"], [0, 0.5, 1], [0, 1], [1, 4]
        )
    ]
    before = render(pipe)
    alone, together = render_alone_and_together(pipe, loras, cells, options)
    assert together.keys() == alone.keys()
    # the first LoRA left the text encoder frozen: its text scale changes nothing, its 24 cells draw 12
    # pictures; together, the 4 cells at UNet and text scale 0 (2 prompts x 2 guidances) draw the base model's
    # picture once for all three: 4 + 8 of the first (UNet 0.5, 1) + 2 x 20 of the others (all but the base's)
    assert drawn == [12, 24, 24, 52]
    for u, prompt, g in product([0, 0.5, 1], ["a photo of ktn cat"], [1, 4]):
        for pictures in (alone, together):
            same = [pictures[(0, RenderCell(prompt, u, t, g, seed=11))] for t in (0, 1)]
            np.testing.assert_array_equal(*same)
    base = [together[(k, RenderCell("a photo of ktn cat", 0, 0, 4, seed=11))] for k in range(3)]
    np.testing.assert_array_equal(base[0], base[1])
    np.testing.assert_array_equal(base[0], base[2])
    assert max(np.abs(together[key] - alone[key]).max() for key in alone) <= 1  # of 255
    # the two adapters draw differently, so each picture had its own
    assert max(np.abs(alone[(0, c)] - alone[(1, c)]).max() for c in cells if c.unet_scale) > 10
    np.testing.assert_array_equal(render(pipe), before)  # the pipeline is left as found


def test_the_packed_convolution_applies_each_adapter_to_its_own_slice_only():
    from lora_core.packs.layers import PackRouting, packed_conv_class

    torch.manual_seed(0)
    base = torch.nn.Conv2d(3, 5, 3, padding=1)
    a, b = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 5, 4, 1, 1)
    a[0, 3:], b[0, :, 3:] = 0, 0  # configuration 0 has rank 3, padded to 4
    scales = [0.5, 2.0]
    routing = PackRouting([1, 0])
    layer = packed_conv_class()(base, routing, a, b, scales)
    x = torch.randn(4, 3, 6, 6)  # two slices of two samples: configuration 1, then 0
    expected = torch.cat(
        [
            base(x[i : i + 2])
            + scales[k]
            * torch.nn.functional.conv2d(torch.nn.functional.conv2d(x[i : i + 2], a[k], padding=1), b[k])
            for i, k in ((0, 1), (2, 0))
        ]
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    routing.active = []
    torch.testing.assert_close(layer(x), base(x))
