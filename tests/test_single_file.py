"""Single-file checkpoints (the original CompVis/LDM layout) load through ``load_pipeline`` offline."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import render
from ldm_checkpoint import ldm_state_dict, save_ldm_checkpoint
from safetensors.torch import save_file

from lora_core.embedded.tiny_model import TinyModelSpec, build_tiny_pipeline, sd15_shaped_spec
from lora_core.errors import UserInputError
from lora_core.models import ModelSource, load_pipeline

# Stable Diffusion's block order (cross-attention in all but the deepest block), three levels, still tiny.
SD_LAYOUT = TinyModelSpec(sd_layout=True, unet_channels=(32, 64, 64), vae_channels=(32, 64, 64))
COMPONENTS = ("unet", "vae", "text_encoder")


def write_single_file(pipe, folder: Path, name: str = "model.safetensors") -> ModelSource:
    """Save ``pipe`` as one LDM checkpoint plus a config folder holding no weights; return its source.

    The config folder keeps only configs, tokenizer and scheduler, so every weight that loads must have
    come from the checkpoint (diffusers falls back to the folder's weights for a component the checkpoint
    lacks).
    """
    config = folder / "config"
    pipe.save_pretrained(config)
    for weights in [*config.rglob("*.safetensors"), *config.rglob("*.bin")]:
        weights.unlink()
    checkpoint = save_ldm_checkpoint(pipe, folder / name)
    return ModelSource(
        path=str(checkpoint), single_file_config=str(config), local_files_only=True, device="cpu"
    )


def assert_same_weights(expected, actual) -> None:
    expected, actual = expected.state_dict(), actual.state_dict()
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def sd_layout_pipe():
    return build_tiny_pipeline(SD_LAYOUT)


@pytest.fixture(scope="module")
def single_file(pipe, tmp_path_factory) -> ModelSource:
    """The session's tiny pipeline written as ``model.safetensors`` with its config folder."""
    return write_single_file(pipe, tmp_path_factory.mktemp("single-file"))


@pytest.fixture(scope="module")
def sd15_names():
    """LDM state dict of an SD-1.5-shaped pipeline built on the meta device (names and shapes, no data)."""
    with torch.device("meta"):
        pipe = build_tiny_pipeline(sd15_shaped_spec())
    return pipe, ldm_state_dict(pipe)


def test_sd15_shaped_checkpoint_has_the_names_and_shapes_of_v1_5_pruned_emaonly(sd15_names):
    _, state = sd15_names
    by_part = {
        prefix: sum(key.startswith(prefix) for key in state) for prefix in ("model.", "first_stage_model.")
    }
    # v1-5-pruned-emaonly: 686 UNet and 248 VAE tensors; 196 text tensors plus position_ids, a buffer
    # transformers 5 no longer saves.
    assert by_part == {"model.": 686, "first_stage_model.": 248}
    assert sum(key.startswith("cond_stage_model.transformer.text_model.") for key in state) == 196
    assert state["model.diffusion_model.output_blocks.11.0.skip_connection.weight"].shape == (320, 640, 1, 1)
    assert state["model.diffusion_model.output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert state["model.diffusion_model.output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)
    assert state["model.diffusion_model.input_blocks.9.0.op.weight"].shape == (1280, 1280, 3, 3)
    assert state["first_stage_model.decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert state["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state


def test_diffusers_maps_every_sd15_shaped_ldm_name_back_to_its_own(sd15_names):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    pipe, state = sd15_names
    assert convert_ldm_unet_checkpoint(state, dict(pipe.unet.config)).keys() == pipe.unet.state_dict().keys()
    assert convert_ldm_vae_checkpoint(state, dict(pipe.vae.config)).keys() == pipe.vae.state_dict().keys()


@pytest.mark.parametrize("original", ["pipe", "sd_layout_pipe"])
def test_single_file_loads_exactly_the_weights_it_was_written_from(original, request, tmp_path):
    original = request.getfixturevalue(original)
    loaded = load_pipeline(write_single_file(original, tmp_path))
    assert loaded is not original
    for component in COMPONENTS:
        assert_same_weights(getattr(original, component), getattr(loaded, component))


def test_single_file_pipeline_renders_the_same_image(pipe, single_file):
    np.testing.assert_array_equal(render(load_pipeline(single_file), steps=2), render(pipe, steps=2))


def test_ckpt_checkpoint_loads_like_safetensors(pipe, tmp_path):
    loaded = load_pipeline(write_single_file(pipe, tmp_path, name="model.ckpt"))
    for component in COMPONENTS:
        assert_same_weights(getattr(pipe, component), getattr(loaded, component))


def test_checkpoint_that_does_not_fit_its_config_is_named(sd_layout_pipe, single_file, tmp_path):
    other = save_ldm_checkpoint(sd_layout_pipe, tmp_path / "other.safetensors")
    with pytest.raises(UserInputError, match=r"not a Stable Diffusion \(1\.x, 2\.x or SDXL\) model") as err:
        load_pipeline(replace(single_file, path=str(other)))
    assert str(other) in str(err.value)


def test_file_that_is_not_a_checkpoint_is_named(single_file, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(UserInputError, match="could not load the pipeline") as err:
        load_pipeline(replace(single_file, path=str(junk)))
    assert str(junk) in str(err.value)


def test_checkpoint_missing_the_text_encoder_is_named(pipe, tmp_path):
    source = write_single_file(pipe, tmp_path)
    unet_and_vae = {k: v for k, v in ldm_state_dict(pipe).items() if not k.startswith("cond_stage_model.")}
    save_file(unet_and_vae, source.path)
    with pytest.raises(UserInputError, match="CLIPTextModel") as err:
        load_pipeline(source)
    assert source.path in str(err.value)


def test_offline_single_file_without_config_asks_for_one_and_never_downloads(single_file, monkeypatch):
    import diffusers.loaders.single_file as single_file_loader
    from huggingface_hub.errors import LocalEntryNotFoundError

    downloads = []

    def config_not_cached(repo_id, **kwargs):
        if not kwargs["local_files_only"]:
            downloads.append(repo_id)
        raise LocalEntryNotFoundError(f"{repo_id} is not in the cache (test)")

    monkeypatch.setattr(single_file_loader, "_download_diffusers_model_config_from_hub", config_not_cached)
    with pytest.raises(UserInputError, match="single_file_config"):
        load_pipeline(replace(single_file, single_file_config=None))
    assert downloads == []
