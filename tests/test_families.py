"""SDXL and SD 2.x: training (two text encoders, size and crop conditioning, v-prediction), rendering, exports."""

import numpy as np
import pytest
import torch
from conftest import SIZE
from PIL import Image
from safetensors.torch import load_file

from lora_core.adapters import KOHYA_FILE, LORA_FILE
from lora_core.training import LoraTrainer, train_lora
from lora_core.training.objective import denoising_target


@pytest.fixture(scope="module")
def xl(cache_dir):
    """The tiny SDXL pipeline (two text encoders, text_time conditioning), loaded as a job loads it."""
    from lora_core.models import ModelSource, load_pipeline
    from sweeper.config.embedded_models import base_model

    return load_pipeline(base_model(ModelSource(path="tiny-sdxl", device="cpu"), cache_dir=cache_dir))


@pytest.fixture(scope="module")
def sd2(cache_dir):
    """The tiny SD 2.x pipeline (its scheduler predicts the velocity)."""
    from lora_core.models import ModelSource, load_pipeline
    from sweeper.config.embedded_models import base_model

    return load_pipeline(base_model(ModelSource(path="tiny-sd2", device="cpu"), cache_dir=cache_dir))


@pytest.fixture(scope="module")
def wide_subject(tmp_path_factory):
    """Two pictures: one 160 x 128 (cropped at the sides), one 128 x 128."""
    folder = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (160, 128)), ("b.png", (128, 128))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    from lora_core.data.subject import load_subject_images

    return load_subject_images(folder, SIZE)


def _draw(pipe, seed: int = 7):
    """One ``SIZE`` px picture in [0, 1], 3 steps, the pipeline's own call."""
    out = pipe(
        "a photo of ktn cat",
        negative_prompt="",
        num_inference_steps=3,
        height=SIZE,
        width=SIZE,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.images[0]


def _trained_modules(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_sdxl_trains_both_text_encoders_at_their_own_rates_with_each_pictures_size_and_crop(
    xl, wide_subject, settings, tmp_path
):
    """Each text encoder gets its LoRA and learning rate (``train.text_encoder_2_lr``); the UNet is told each
    picture's original size and crop as diffusers' SDXL script computes them."""
    s = settings(text_encoder_lr=1e-3, text_encoder_2_lr=2e-3, max_train_steps=6, train_batch_size=2)
    seen = []

    def spy(module, args, kwargs):
        seen.extend(tuple(int(v) for v in row) for row in kwargs["added_cond_kwargs"]["time_ids"].tolist())

    trainer = LoraTrainer(xl, wide_subject, s, tmp_path)
    hook = xl.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        trainer.setup()
        assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-3, 2e-3]
        before = [_trained_modules(m) for m in (xl.unet, xl.text_encoder, xl.text_encoder_2)]
        trainer.train()
        after = [_trained_modules(m) for m in (xl.unet, xl.text_encoder, xl.text_encoder_2)]
        trainer.save_final()
    finally:
        hook.remove()
        trainer.cleanup()
    for old, new in zip(before, after, strict=True):
        assert old and any(not torch.equal(old[k], new[k]) for k in old)  # every model's adapter trained
    # 160 x 128 resized to a height of SIZE (40 x 32 at 32 px), its centre cropped at 4 px from the left
    left = round((160 * SIZE / 128 - SIZE) / 2)
    assert left > 0 and set(seen) == {(128, 160, 0, left, SIZE, SIZE), (128, 128, 0, 0, SIZE, SIZE)}
    keys = load_file(str(tmp_path / LORA_FILE)).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    kohya = load_file(str(tmp_path / KOHYA_FILE)).keys()
    assert {k.split("_")[0] + "_" + k.split("_")[1] for k in kohya} == {"lora_unet", "lora_te1", "lora_te2"}
    assert not any(name.startswith("lora_te_") for name in kohya)
    assert not any("lora_" in n for n, _ in xl.text_encoder_2.named_parameters())  # cleanup took it out


def _rebuild(tensors: dict, name: str, weight: torch.Tensor) -> torch.Tensor:
    down, up, alpha = (
        tensors[f"{name}.lora_down.weight"],
        tensors[f"{name}.lora_up.weight"],
        tensors[f"{name}.alpha"],
    )
    return weight + ((up.flatten(1) @ down.flatten(1)) * alpha / down.shape[0]).reshape(weight.shape)


def test_the_sdxl_files_load_back_to_the_same_pictures_and_kohya_rebuilds_every_weight(
    xl, wide_subject, settings, tmp_path
):
    """``StableDiffusionXLPipeline.load_lora_weights`` reads the diffusers file and the kohya file back to the
    pictures of the live adapter; every kohya module (``lora_unet_``, ``lora_te1_``, ``lora_te2_``, true alpha)
    rebuilds its live adapted weight."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lora_core.training.recipe import ADAPTER_NAME

    s = settings(text_encoder_lr=1e-3, alpha=8.0, max_train_steps=4)  # alpha != rank: scale 2 must survive
    trainer = LoraTrainer(xl, wide_subject, s, tmp_path)
    checked = set()
    try:
        trainer.setup()
        trainer.train()
        for model in trainer.models:
            model.eval()
        live = _draw(xl)
        trainer.save_final()
        exported = load_file(str(tmp_path / KOHYA_FILE))
        prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
        for component, prefix in prefixes.items():
            for module_name, module in getattr(xl, component).named_modules():
                if not isinstance(module, BaseTunerLayer):
                    continue
                base = module.get_base_layer().weight.detach().clone()
                module.merge(adapter_names=[ADAPTER_NAME])
                adapted = module.get_base_layer().weight.detach().clone()
                module.unmerge()
                path = (
                    module_name
                    if component == "unet" or module_name.startswith("text_model.")
                    else (f"text_model.{module_name}")
                )
                name = prefix + path.replace(".", "_")
                torch.testing.assert_close(
                    _rebuild(exported, name, base), adapted, atol=2e-6, rtol=1e-5, msg=name
                )
                checked.add(name)
    finally:
        trainer.cleanup()
    assert {k.split(".")[0] for k in exported} == checked
    for file in (LORA_FILE, KOHYA_FILE):
        xl.load_lora_weights(str(tmp_path), weight_name=file, adapter_name="r")
        try:
            reloaded = _draw(xl)
        finally:
            xl.unload_lora_weights()
        np.testing.assert_allclose(reloaded, live, atol=1e-5, err_msg=file)
    assert np.abs(_draw(xl) - live).max() > 0.01  # the base model draws otherwise: the check could fail


def test_the_grid_renderer_draws_sdxl_cells_as_the_plain_per_cell_loop(xl, wide_subject, settings, tmp_path):
    """Batched, fused and with shared prompt embeddings, each cell is the picture of its own pipeline call."""
    from lora_core.render import GridRenderer, RenderCell, RenderOptions, initial_noise

    train_lora(xl, wide_subject, settings(text_encoder_lr=1e-3, max_train_steps=3), tmp_path)
    cells = [RenderCell("a photo of ktn cat", u, t, 4.0, seed=5) for u in (0.0, 1.0) for t in (0.0, 1.0)]
    options = RenderOptions(num_inference_steps=3, resolution=SIZE)
    with GridRenderer(xl, tmp_path, options) as renderer:
        grid = {c: np.asarray(image, dtype=np.float32) for c, image in renderer.render(cells)}
    xl.load_lora_weights(str(tmp_path), adapter_name="p")
    try:
        for cell in cells:
            weights = {
                "unet": cell.unet_scale,
                "text_encoder": cell.text_scale,
                "text_encoder_2": cell.text_scale,
            }
            xl.set_adapters(["p"], adapter_weights=[weights])
            shape = (xl.unet.config.in_channels, SIZE // xl.vae_scale_factor, SIZE // xl.vae_scale_factor)
            plain = xl(
                cell.prompt,
                negative_prompt="",
                latents=initial_noise(cell, shape)[None],
                guidance_scale=cell.guidance,
                num_inference_steps=3,
                height=SIZE,
                width=SIZE,
                generator=torch.Generator().manual_seed(cell.seed),
            ).images[0]
            assert np.abs(np.asarray(plain, dtype=np.float32) - grid[cell]).max() <= 1, cell  # of 255
    finally:
        xl.unload_lora_weights()
    scales = {(c.unet_scale, c.text_scale): grid[c] for c in cells}
    assert np.abs(scales[1.0, 1.0] - scales[0.0, 0.0]).max() > 5  # the LoRA changes the picture


def test_the_v_prediction_target_is_the_velocity():
    """Under ``prediction_type=v_prediction`` the UNet learns v = sqrt(abar) noise - sqrt(1 - abar) x0."""
    from diffusers import DDPMScheduler

    common = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    v_scheduler = DDPMScheduler(prediction_type="v_prediction", **common)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 400, 999])
    abar = v_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(denoising_target(v_scheduler, latents, noise, t), expected)
    assert torch.equal(denoising_target(DDPMScheduler(**common), latents, noise, t), noise)


def test_sd2_trains_on_the_velocity_its_scheduler_names_and_samples_with_it(
    sd2, subject_images, settings, tmp_path
):
    from lora_core.render import sampler_of
    from lora_core.training import recipe

    targets = []
    real = recipe.denoising_target

    def spy(scheduler, latents, noise, timesteps):
        out = real(scheduler, latents, noise, timesteps)
        abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].view(-1, 1, 1, 1)
        targets.append((out, abar.sqrt() * noise - (1 - abar).sqrt() * latents, noise))
        return out

    recipe.denoising_target = spy
    try:
        train_lora(sd2, subject_images, settings(max_train_steps=2), tmp_path)
    finally:
        recipe.denoising_target = real
    assert len(targets) == 2
    for out, velocity, noise in targets:
        torch.testing.assert_close(out, velocity)
        assert not torch.allclose(out, noise)
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    for name in ("euler_a", "ddim", "dpmpp_2m"):  # a grid's other samplers keep the model's prediction type
        assert sampler_of(sd2.scheduler, name).config.prediction_type == "v_prediction"
