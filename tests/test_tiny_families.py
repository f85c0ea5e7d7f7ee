"""The tiny SDXL- and SD-2.x-shaped models: built offline, loaded like real ones; their real-size specs."""

from pathlib import Path

import pytest
import torch

from lora_core.embedded.tiny_model import (
    TinyModelSpec,
    TinySD2Spec,
    TinySDXLSpec,
    build_tiny_pipeline,
    ensure_tiny_model,
    sd21_shaped_spec,
    sdxl_shaped_spec,
)
from lora_core.models import ModelSource, model_identity
from sweeper.config.embedded_models import base_model, embedded_family

# TinyModelSpec().fingerprint() before the SDXL and SD 2 families were added: caches and saved runs name it.
SD1_FINGERPRINT = "46c98e4078b5"


def _weights(pipe) -> dict:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {
        f"{name}.{k}": v
        for name in names
        if getattr(pipe, name, None) is not None
        for k, v in getattr(pipe, name).state_dict().items()
    }


@pytest.fixture(scope="module")
def sdxl(cache_dir):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(ensure_tiny_model(TinySDXLSpec(), cache_dir))


@pytest.fixture(scope="module")
def sd2(cache_dir):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(ensure_tiny_model(TinySD2Spec(), cache_dir))


def test_tiny_sdxl_loads_as_an_sdxl_pipeline_with_two_text_encoders(sdxl):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert type(sdxl) is StableDiffusionXLPipeline
    assert type(sdxl.text_encoder) is CLIPTextModel
    assert type(sdxl.text_encoder_2) is CLIPTextModelWithProjection
    assert sdxl.tokenizer.model_max_length == sdxl.tokenizer_2.model_max_length == 77
    assert sdxl.tokenizer_2.pad_token == "!"  # as SDXL's second tokenizer
    unet, spec = sdxl.unet.config, TinySDXLSpec()
    assert unet.addition_embed_type == "text_time" and unet.use_linear_projection
    assert (
        unet.cross_attention_dim
        == sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    )
    assert (
        unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + spec.projection_dim
    )
    assert unet.down_block_types[0] == "DownBlock2D"
    assert sdxl.vae.config.scaling_factor == 0.13025 and sdxl.vae.config.force_upcast
    assert type(sdxl.scheduler) is EulerDiscreteScheduler
    sched = sdxl.scheduler.config
    assert (sched.timestep_spacing, sched.prediction_type, sched.steps_offset) == ("leading", "epsilon", 1)
    assert sdxl.config.force_zeros_for_empty_prompt


def test_tiny_sdxl_same_seed_same_weights_bit_for_bit_also_after_saving(sdxl):
    a, b = (_weights(build_tiny_pipeline(TinySDXLSpec(seed=0))) for _ in range(2))
    loaded = _weights(sdxl)
    assert a.keys() == b.keys() == loaded.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], loaded[k]) for k in a)
    other = _weights(build_tiny_pipeline(TinySDXLSpec(seed=1)))
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_tiny_sd2_loads_as_an_sd_pipeline_that_predicts_the_velocity(sd2):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert type(sd2) is StableDiffusionPipeline and type(sd2.scheduler) is DDIMScheduler
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    assert not sd2.scheduler.config.clip_sample and not sd2.scheduler.config.set_alpha_to_one
    assert sd2.unet.config.use_linear_projection and list(sd2.unet.config.attention_head_dim) == [2, 4]
    assert sd2.text_encoder.config.hidden_act == "gelu"
    image = sd2("a ktn cat", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_the_sd1_tiny_model_keeps_its_fingerprint_and_folder(cache_dir):
    assert TinyModelSpec().fingerprint() == SD1_FINGERPRINT
    tiny = base_model(ModelSource(path="tiny", device="cpu"), cache_dir=cache_dir)
    assert Path(tiny.path).name == f"tiny-sd-{SD1_FINGERPRINT}"
    assert model_identity(tiny) == f"tiny-{SD1_FINGERPRINT}"


def test_the_families_have_their_own_fingerprints():
    prints = {TinyModelSpec().fingerprint(), TinySDXLSpec().fingerprint(), TinySD2Spec().fingerprint()}
    assert len(prints) == 3
    assert TinySDXLSpec(seed=1).fingerprint() != TinySDXLSpec().fingerprint()


def test_real_size_specs_have_the_real_parameter_counts_without_allocating():
    def counts(spec) -> dict[str, int]:
        with torch.device("meta"):
            pipe = build_tiny_pipeline(spec)
        assert pipe.unet.device.type == "meta"
        names = ("unet", "vae", "text_encoder", "text_encoder_2")
        return {
            n: sum(p.numel() for p in getattr(pipe, n).parameters())
            for n in names
            if getattr(pipe, n, None) is not None
        }

    sdxl = counts(sdxl_shaped_spec())
    assert sdxl["unet"] == pytest.approx(2.567e9, rel=1e-3)
    assert sdxl["text_encoder"] == pytest.approx(123.1e6, rel=1e-3)
    assert sdxl["text_encoder_2"] == pytest.approx(694.7e6, rel=1e-3)
    assert sdxl["vae"] == pytest.approx(83.65e6, rel=1e-3)
    assert sdxl_shaped_spec().resolution == 1024
    sd21 = counts(sd21_shaped_spec())
    assert sd21["unet"] == pytest.approx(865.9e6, rel=1e-3)
    assert sd21["text_encoder"] == pytest.approx(340.4e6, rel=1e-3)
    assert sd21_shaped_spec().resolution == 768


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd2"])
def test_model_path_tiny_family_resolves_to_its_built_folder(name, cache_dir):
    spec = {"tiny-sdxl": TinySDXLSpec, "tiny-sd2": TinySD2Spec}[name](seed=3)
    source = base_model(ModelSource(path=name, device="cpu"), tiny_seed=3, cache_dir=cache_dir)
    folder = Path(source.path)
    assert folder.parent == cache_dir and (folder / "model_index.json").is_file()
    assert folder.name == f"{name}-{spec.fingerprint()}"
    assert model_identity(source) == f"{name}-{spec.fingerprint()}" and source.device == "cpu"


def test_embedded_family_names_the_family_without_building():
    assert [embedded_family(p) for p in ("tiny", "tiny-sdxl", "tiny-sd2", "world", "a/b")] == [
        "sd",
        "sdxl",
        "sd",
        "sd",
        None,
    ]


@pytest.mark.parametrize(
    ("preset", "path", "resolution", "dino"),
    [
        ("tiny_sdxl", "tiny-sdxl", 64, "tiny"),
        ("tiny_sd2", "tiny-sd2", 64, "tiny"),
        ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 1024, "facebook/dino-vits16"),
        ("sd21", "stabilityai/stable-diffusion-2-1", 768, "facebook/dino-vits16"),
    ],
)
def test_model_presets(preset, path, resolution, dino):
    from hydra import compose, initialize_config_dir

    from sweeper.app import CONF_DIR  # registers the schema the config builds on
    from sweeper.config.spec import build_job

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={preset}"])
    assert (cfg.model.path, cfg.model.resolution, cfg.eval.dino_model) == (path, resolution, dino)
    assert build_job(cfg).settings.resolution == resolution
