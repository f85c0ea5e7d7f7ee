import numpy as np
import pytest
import torch
from conftest import SIZE
from PIL import Image
from safetensors.torch import load_file

from lora_core.data.class_images import ClassImageSpec, ensure_class_images
from lora_core.data.subject import load_subject_images
from lora_core.errors import UserInputError
from lora_core.training import LoraTrainer, train_lora


@pytest.fixture
def spec():
    return ClassImageSpec(
        prompt="a photo of a cat", count=3, resolution=SIZE, num_inference_steps=2, seed=4, batch_size=2
    )


@pytest.fixture
def counted_calls(pipe, monkeypatch):
    calls = []
    original = type(pipe).__call__

    def counting(self, *args, **kwargs):
        calls.append(len(args[0]) if args else 1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", counting)
    return calls


def test_class_images_are_generated_once(pipe, spec, tmp_path, counted_calls):
    first = ensure_class_images(pipe, spec, "tiny-x", tmp_path)
    assert len(first) == 3 and all(p.is_file() for p in first)
    assert sum(counted_calls) == 3
    again = ensure_class_images(pipe, spec, "tiny-x", tmp_path)
    assert again == first and sum(counted_calls) == 3


def test_an_interrupted_generation_continues_with_the_same_pictures(pipe, spec, tmp_path, counted_calls):
    paths = ensure_class_images(pipe, spec, "tiny-x", tmp_path)
    kept = np.asarray(Image.open(paths[1]))
    paths[1].unlink()
    ensure_class_images(pipe, spec, "tiny-x", tmp_path)
    assert sum(counted_calls) == 4  # only the missing picture was drawn again
    redrawn = np.asarray(Image.open(paths[1])).astype(int)
    # drawn alone instead of in a batch of two: equal up to float rounding in a few pixels
    assert np.abs(redrawn - kept).max() <= 2 and np.abs(redrawn - kept).mean() < 0.01


def test_the_cache_key_holds_what_determines_the_pictures(spec):
    key = spec.cache_key("m", "torch.float32")
    assert spec.cache_key("m2", "torch.float32") != key
    assert spec.cache_key("m", "torch.float16") != key
    assert ClassImageSpec(**{**spec.__dict__, "prompt": "a dog"}).cache_key("m", "torch.float32") != key
    assert ClassImageSpec(**{**spec.__dict__, "count": 50}).cache_key("m", "torch.float32") == key


def _prior_weights(pipe, subject_images, settings, class_pictures, out, weight):
    s = settings(
        with_prior_preservation=True,
        class_prompt="a photo of a cat",
        num_class_images=3,
        prior_loss_weight=weight,
    )
    return load_file(str(train_lora(pipe, subject_images, s, out, class_images=class_pictures).lora_path))


def test_prior_preservation_trains_on_the_class_images(pipe, subject_images, settings, spec, tmp_path):
    pictures = load_subject_images(ensure_class_images(pipe, spec, "tiny-x", tmp_path)[0].parent, SIZE)
    other = [Image.fromarray(255 - np.asarray(p)) for p in pictures]
    a = _prior_weights(pipe, subject_images, settings, pictures, tmp_path / "a", 1.0)
    b = _prior_weights(pipe, subject_images, settings, other, tmp_path / "b", 1.0)
    assert any(not torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # the class pictures matter...
    a0 = _prior_weights(pipe, subject_images, settings, pictures, tmp_path / "a0", 0.0)
    b0 = _prior_weights(pipe, subject_images, settings, other, tmp_path / "b0", 0.0)
    assert all(torch.allclose(a0[k], b0[k], atol=1e-6) for k in a0)  # ...only through the prior loss


def test_batch_holds_instance_and_class_pictures(pipe, subject_images, settings, tmp_path):
    s = settings(with_prior_preservation=True, class_prompt="a photo of a cat", train_batch_size=2)
    trainer = LoraTrainer(pipe, subject_images, s, tmp_path, class_images=subject_images[:2])
    try:
        trainer.setup()
        latents, prompts = trainer.micro_batch(0)
    finally:
        trainer.cleanup()
    assert latents.shape[0] == 4 and prompts == [0, 0, 1, 1]
    assert trainer.latents.mean.shape[1] == len(subject_images) + 2


def test_prior_preservation_without_class_images_is_an_error(pipe, subject_images, settings, tmp_path):
    s = settings(with_prior_preservation=True, class_prompt="a photo of a cat")
    with pytest.raises(UserInputError, match="class images"):
        train_lora(pipe, subject_images, s, tmp_path)


def test_class_picture_identity_uses_the_resolved_dtype(pipe, spec, tiny_source, monkeypatch):
    """The job's identity and the cache folder agree, and fp16 and fp32 class pictures are told apart."""
    import torch

    from lora_core.models import dtype_name

    assert dtype_name(tiny_source) == str(pipe.unet.dtype) == "torch.float32"  # "auto" on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = type(tiny_source)(**{**tiny_source.__dict__, "device": "cuda"})
    assert dtype_name(on_gpu) == "torch.float16"  # "auto" on CUDA
    assert spec.cache_key("m", dtype_name(on_gpu)) != spec.cache_key("m", dtype_name(tiny_source))
