"""lora.kind: LoRA, DoRA, LoHa and LoKr (with LoCon convolutions) train, resume exactly, render and export."""

import logging

import numpy as np
import pytest
import torch
from conftest import SIZE, kohya_name, kohya_rebuild, render, train_both_adapters
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from lora_core.adapters import KOHYA_FILE, LORA_FILE, PEFT_FILE, read_training_metadata
from lora_core.errors import UserInputError
from lora_core.render import GridRenderer, RenderCell, RenderOptions, load_adapter
from lora_core.settings import UNET_CONV, TrainSettings
from lora_core.training import ADAPTER_NAME, LoraTrainer, train_lora
from sweeper.app import CONF_DIR
from sweeper.config.spec import build_job
from sweeper.disk.naming import differing_keys

KINDS = ("lora", "dora", "loha", "lokr")
# LoCon on every kind: the UNet's convolutions with their own rank and alpha (scale 0.5; attention: 2).
LOCON = dict(conv_target_modules=UNET_CONV, conv_rank=2, conv_alpha=1.0)


def _options(kind, **overrides):
    return dict(adapter_kind=kind, text_encoder_lr=5e-4, max_train_steps=4, alpha=8.0, **LOCON) | overrides


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["model=tiny", *overrides])


def _train_live(kind, pipe, images, settings, folder, **overrides):
    """Train; return (live picture, trainer) with the adapter still attached (caller cleans up)."""
    trainer = LoraTrainer(pipe, images, settings(**_options(kind, **overrides)), folder)
    trainer.setup()
    train_both_adapters(trainer)
    return render(pipe), trainer


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_renders_the_same_from_its_saved_file(kind, pipe, subject_images, settings, tmp_path):
    base = render(pipe)
    trainer = None
    try:
        trained, trainer = _train_live(kind, pipe, subject_images, settings, tmp_path)
        result = trainer.save_final()
    finally:
        if trainer:
            trainer.cleanup()
    assert np.isfinite(trained).all() and np.abs(trained - base).mean() > 1e-4
    # LoRA and DoRA: diffusers' own file and loader; LoHa and LoKr: peft naming, no diffusers file
    assert result.lora_path.name == (LORA_FILE if kind in ("lora", "dora") else PEFT_FILE)
    assert (tmp_path / LORA_FILE).is_file() == (kind in ("lora", "dora"))
    assert read_training_metadata(result.lora_path)["adapter_kind"] == kind
    if kind in ("lora", "dora"):
        pipe.load_lora_weights(str(tmp_path), adapter_name="t")
    else:
        load_adapter(pipe, tmp_path, "t")
    try:
        reloaded = render(pipe)
    finally:
        pipe.unload_lora_weights()
    np.testing.assert_allclose(reloaded, trained, atol=1e-5)
    np.testing.assert_array_equal(render(pipe), base)  # unloading gave the base model back


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_grid_renderer_fuses_lycoris_kinds_like_it_renders_them_unfused(
    kind, pipe, subject_images, settings, tmp_path
):
    train_lora(
        pipe, subject_images, settings(**_options(kind, max_train_steps=3, learning_rate=1e-2)), tmp_path
    )
    cells = [RenderCell("a photo of ktn cat", u, 0.5, 3.0, seed=1) for u in (0.0, 0.6, 1.0)]
    pictures = {}
    for fuse in (True, False):
        options = RenderOptions(num_inference_steps=3, resolution=SIZE, fuse=fuse)
        with GridRenderer(pipe, tmp_path, options) as renderer:
            pictures[fuse] = {c.unet_scale: np.asarray(img, dtype=float) for c, img in renderer.render(cells)}
    for scale in (0.0, 0.6, 1.0):
        assert np.abs(pictures[True][scale] - pictures[False][scale]).max() <= 1  # 8-bit rounding at most
    assert np.abs(pictures[True][1.0] - pictures[True][0.0]).mean() > 0.1  # the UNet scale matters


# ---- the kohya / LyCORIS export, rebuilt with the formulas A1111, ComfyUI and LyCORIS apply (conftest) --
@pytest.mark.parametrize("kind", KINDS)
def test_kohya_export_rebuilds_every_adapted_weight(kind, pipe, subject_images, settings, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    trainer = None
    try:
        _, trainer = _train_live(kind, pipe, subject_images, settings, tmp_path, max_train_steps=3)
        trainer.save_final()
        exported = load_file(str(tmp_path / KOHYA_FILE))
        checked = set()
        for model_name in ("unet", "text_encoder"):
            for module_name, module in getattr(pipe, model_name).named_modules():
                if not isinstance(module, BaseTunerLayer):
                    continue
                base = module.get_base_layer().weight.detach().clone()
                module.merge(adapter_names=[ADAPTER_NAME])  # peft's own adapted weight
                adapted = module.get_base_layer().weight.detach().clone()
                module.unmerge()
                name = kohya_name({"unet": "lora_unet_", "text_encoder": "lora_te_"}[model_name], module_name)
                rebuilt = kohya_rebuild(exported, name, base)
                torch.testing.assert_close(rebuilt.float(), adapted, atol=2e-6, rtol=1e-5, msg=name)
                assert not torch.equal(adapted, base), name  # a trained module: the check could fail
                checked.add(name)
    finally:
        if trainer:
            trainer.cleanup()
    assert {k.split(".")[0] for k in exported} == checked  # nothing exported that no module holds
    assert any("resnets_0_conv1" in name for name in checked)  # LoCon: the convolutions are in it
    assert any(name.startswith("lora_te_text_model_") for name in checked)


def test_kohya_locon_file_loads_in_diffusers_like_the_live_adapter(pipe, subject_images, settings, tmp_path):
    trainer = None
    try:
        trained, trainer = _train_live("lora", pipe, subject_images, settings, tmp_path)
        trainer.save_final()
    finally:
        if trainer:
            trainer.cleanup()
    pipe.load_lora_weights(str(tmp_path / KOHYA_FILE), adapter_name="k")
    try:
        kohya = render(pipe)
    finally:
        pipe.unload_lora_weights()
    np.testing.assert_allclose(kohya, trained, atol=1e-5)


def test_kohya_metadata_names_the_lycoris_algorithm(pipe, subject_images, settings, tmp_path):
    import json

    from safetensors import safe_open

    train_lora(pipe, subject_images, settings(**_options("loha", max_train_steps=1)), tmp_path)
    with safe_open(str(tmp_path / KOHYA_FILE), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"algo": "loha", "conv_dim": "2", "conv_alpha": "1.0"}


# ---- configuration -----------------------------------------------------------------------------------------
def test_kinds_diffusers_cannot_load_are_said_in_one_line_before_training(caplog):
    with caplog.at_level(logging.WARNING, logger="sweeper.config.spec"):
        job = build_job(_compose("lora.kind=lokr"))
    lines = [r.getMessage() for r in caplog.records if "lora.kind=lokr" in r.getMessage()]
    assert (
        len(lines) == 1
        and "load_lora_weights cannot load" in lines[0]
        and "lora.kind=lora or dora" in lines[0]
    )
    assert job.settings.adapter_kind == "lokr"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.kind=lycoris", "lora.kind"),
        ("lora.conv_rank=0", "lora.conv_rank"),
        ("lora.conv_alpha=-1", "lora.conv_alpha"),
        ("lora.conv_target_modules=[to_q]", "lora.conv_target_modules"),
    ],
)
def test_bad_adapter_values_name_their_key(override, key):
    with pytest.raises(UserInputError, match=rf"^{key}="):
        build_job(_compose(override))


def test_the_locon_preset_reaches_the_training_settings():
    settings = build_job(_compose("lora=attn_ff_conv", "lora.kind=dora", "lora.conv_rank=8")).settings
    assert settings.adapter_kind == "dora" and settings.conv_rank == 8
    assert set(settings.conv_target_modules) == set(UNET_CONV) and "ff.net.2" in settings.unet_target_modules


def test_a_kind_sweep_names_run_folders_by_kind():
    template = "{learning_rate};{text_encoder_lr}{varying}"
    jobs = [build_job(_compose(f"lora.kind={kind}", "train.learning_rate=1e-4")) for kind in ("lora", "dora")]
    varying = differing_keys([job.name_values for job in jobs])
    assert varying == ["lora.kind"]
    assert [job.run_dir(template, varying).name for job in jobs] == ["1e-4;1e-5;lora", "1e-4;1e-5;dora"]
    # with the target preset varying too, the preset's name stands for its module lists
    jobs = [build_job(_compose(f"lora={targets}", "lora.kind=loha")) for targets in ("attn", "attn_ff_conv")]
    varying = differing_keys([job.name_values for job in jobs])
    assert [job.run_dir(template, varying).name for job in jobs] == [
        "1e-4;1e-5;attn",
        "1e-4;1e-5;attn_ff_conv",
    ]


def test_a_checkpoint_of_another_kind_is_not_continued():
    lora = TrainSettings(resolution=64, adapter_kind="lora")
    assert not TrainSettings(resolution=64, adapter_kind="dora").can_continue_from(lora)
    assert not TrainSettings(resolution=64, adapter_kind="lora", conv_rank=2).can_continue_from(lora)
    assert TrainSettings(resolution=64, adapter_kind="lora").can_continue_from(lora)
