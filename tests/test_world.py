"""The drawn world, its tokenizer, the recipe that trains the world model, and the shipped weights' check."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import numpy as np
import pytest

from lora_core.embedded import world
from lora_core.embedded.drawn_subject import TEAL, draw_subject_image


def test_world_has_the_classes_colours_and_places_it_promises():
    assert len(world.OBJECTS) >= 10 and len(world.COLOURS) >= 6 and len(world.PLACES) >= 6
    assert {"cat", "dog", "ball", "tree", "house", "car", "bird", "fish", "cup", "flower"} <= set(
        world.OBJECTS
    )


def test_same_seed_draws_the_same_scene_and_another_seed_does_not():
    def picture(seed):
        rng = random.Random(seed)
        return np.asarray(world.draw_scene(world.sample_scene(rng), rng))

    assert np.array_equal(picture(5), picture(5))
    assert not np.array_equal(picture(5), picture(6))
    assert picture(5).shape == (world.SIZE, world.SIZE, 3)


def test_pretraining_never_draws_a_held_out_combination():
    held_out = world.held_out_combinations(0)
    assert len(held_out) >= 50
    rng = random.Random(1)
    drawn = {(s.obj, s.colour, s.place) for s in (world.sample_scene(rng, held_out) for _ in range(20000))}
    assert not drawn & held_out
    assert len(drawn) == len(world.OBJECTS) * len(world.COLOURS) * len(world.PLACES) - len(held_out)


def test_full_caption_names_size_colour_object_and_place():
    scene = world.Scene("ball", "red", "beach", "big")
    assert world.caption(scene) == "a big red ball on the beach"
    rng = random.Random(0)
    for _ in range(50):
        text = world.caption(scene, rng, full=True)
        assert "red ball" in text and text.endswith("on the beach")


def test_a_place_is_drawn_the_same_whatever_the_object():
    a, b = world.Scene("cat", "red", "snow", individual=1), world.Scene("car", "blue", "snow", individual=2)
    # The top-left corner is sky in every snow picture, far from any object.
    corner = [np.asarray(world.draw_scene(s, random.Random(3)))[:4, :4].mean(axis=(0, 1)) for s in (a, b)]
    assert np.allclose(corner[0], corner[1], atol=1)


def _near(pixels: np.ndarray, rgb, tolerance: float = 30) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).sum(axis=-1) < tolerance).sum())


def test_world_cats_never_have_the_drawn_subjects_teal_eyes():
    rng = random.Random(2)
    cats = [
        world.Scene("cat", c, p, s, rng.randrange(2**31))
        for c in world.COLOURS
        for p in world.PLACES
        for s in ("big", "")
    ]
    teal = sum(_near(np.asarray(world.draw_scene(s, rng)), TEAL, 45) for s in cats)
    subject = sum(_near(np.asarray(draw_subject_image(random.Random(i), 128)), TEAL, 45) for i in range(5))
    assert teal == 0 and subject >= 20


def test_world_tokenizer_gives_every_world_word_and_identifier_one_token():
    from lora_core.embedded.recipe import RARE_TOKENS, world_tokenizer

    tokenizer = world_tokenizer()
    for word in [*world.vocabulary_words(), *RARE_TOKENS]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    # Any other string still encodes, byte by byte.
    assert len(tokenizer("90210", add_special_tokens=False).input_ids) == 5


def test_identifier_token_appears_in_no_pretraining_caption():
    from lora_core.embedded.recipe import RARE_TOKENS

    rng = random.Random(0)
    words = {w for _ in range(3000) for w in world.caption(world.sample_scene(rng), rng).split()}
    assert not words & set(RARE_TOKENS)


# ---- the recipe and the shipped weights' check ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """The whole recipe at 1/1000 of its steps: every stage runs, the result has the shipped layout."""
    from lora_core.embedded.recipe import Recipe, build

    out = tmp_path_factory.mktemp("world")
    manifest = build(out, Recipe(seed=0).scaled(0.001))
    return out, manifest


@pytest.mark.slow
def test_recipe_writes_a_diffusers_pipeline_clip_identity_model_and_manifest(small_world):
    out, manifest = small_world
    assert (out / "sd" / "model_index.json").is_file()
    assert {
        "sd/unet/diffusion_pytorch_model.safetensors",
        "clip/model.safetensors",
        "identity/model.safetensors",
    } <= set(manifest["files"])
    assert set(manifest["report"]) == {"vae", "clip", "identity", "unet"}
    assert 0 <= manifest["report"]["unet"]["object"] <= 1


@pytest.mark.slow
def test_world_model_loads_by_name_and_renders(small_world, monkeypatch):
    from lora_core.models import ModelSource, load_pipeline, model_identity
    from sweeper.config.embedded_models import base_model

    monkeypatch.setenv("LORA_SWEEPS_WORLD", str(small_world[0]))
    source = base_model(ModelSource(path="world", device="cpu"))
    pipe = load_pipeline(source)
    image = pipe(
        "a red ball on the beach", num_inference_steps=2, height=64, width=64, output_type="np"
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert model_identity(source).startswith("world-") and len(model_identity(source)) == len("world-") + 12


@pytest.mark.slow
def test_recipe_is_deterministic_given_its_seed(tmp_path):
    from lora_core.embedded.recipe import Recipe, train_vae

    recipe = dataclasses.replace(Recipe(seed=4).scaled(0.0005), vae_batch=8)  # a few small steps suffice
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert train_vae(recipe, a) == train_vae(recipe, b)
    weights = "diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()


@pytest.mark.slow
def test_assembling_the_same_stages_twice_gives_the_same_files(small_world, tmp_path):
    """The shipped folders are re-saved from the stages: nothing in them may be freshly initialised."""
    from lora_core.embedded.recipe import Recipe, assemble

    out, manifest = small_world
    again = tmp_path / "again"
    shutil.copytree(out / "stages", again / "stages")
    assert assemble(again, Recipe(seed=0).scaled(0.001), manifest["report"])["files"] == manifest["files"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_damaged_world_weights_are_named_with_how_to_restore_them(small_world, tmp_path, monkeypatch, damage):
    from lora_core.embedded.world_weights import verified_world_dir
    from lora_core.errors import UserInputError

    copy = tmp_path / "world"
    shutil.copytree(small_world[0] / "sd", copy / "sd")
    shutil.copy(small_world[0] / "manifest.json", copy / "manifest.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.startswith("sd/")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    weights = copy / "sd" / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setenv("LORA_SWEEPS_WORLD", str(copy))
    with pytest.raises(UserInputError, match=rf"{weights}.*{damage}.*lora_core.embedded.recipe build"):
        verified_world_dir()


@pytest.mark.slow
def test_schedulers_made_from_the_embedded_models_config_never_clip_latents(small_world):
    """DDIM/DDPM clip x0 by default; in latent space that wrecks sampling (washed-out, prompt ignored)."""
    import diffusers

    saved = json.loads((small_world[0] / "sd" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] is False
    for name in ("DDIMScheduler", "DDPMScheduler"):
        assert getattr(diffusers, name).from_config(saved).config.clip_sample is False


def _small_clip():
    import torch
    from transformers import CLIPConfig, CLIPModel

    from lora_core.embedded.recipe import world_tokenizer

    tokenizer = world_tokenizer()
    torch.manual_seed(0)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "image_size": world.SIZE,
        "patch_size": 16,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)), tokenizer


def test_the_clip_loss_is_clips_own_when_captions_differ_and_counts_shared_captions_as_positives():
    import torch

    from lora_core.embedded.recipe import _clip_loss

    model, tokenizer = _small_clip()
    model.requires_grad_(False)
    pixels = torch.randn(4, 3, world.SIZE, world.SIZE)
    distinct = ["a photo of a cat", "a photo of a dog", "a red ball", "a cup"]
    tokens = tokenizer(distinct, padding=True, return_tensors="pt")
    ours = _clip_loss(model, tokens, pixels, distinct)
    clips = model(
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        pixel_values=pixels,
        return_loss=True,
    ).loss
    assert float(ours) == pytest.approx(float(clips), rel=1e-5)
    shared = ["a photo of a cat", "a photo of a cat", "a red ball", "a cup"]
    tokens = tokenizer(shared, padding=True, return_tensors="pt")
    swapped = pixels[[1, 0, 2, 3]]  # the two cat pictures swap places: nothing changes for a shared caption
    a, b = _clip_loss(model, tokens, pixels, shared), _clip_loss(model, tokens, swapped, shared)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    plain = model(
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        pixel_values=swapped,
        return_loss=True,
    ).loss
    assert float(plain) != pytest.approx(float(b), rel=1e-3)  # CLIP's own loss tells them apart
