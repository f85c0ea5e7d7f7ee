"""Shared fixtures: a tiny model built offline, the drawn subject, and small training settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Never reach for the network in tests: the tiny model and the drawn subject are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Screenshots the browser tests leave for a person to look at (git-ignored, like all of outputs/).
ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache folder for the session (tiny model, drawn subject, class images); subprocesses share it."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["LORA_SWEEPS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_source(cache_dir):
    """The tiny model as a job loads it: its folder in the session cache, its identity ``tiny-<fingerprint>``."""
    from lora_core.models import ModelSource
    from sweeper.config.embedded_models import base_model

    return base_model(ModelSource(path="tiny", device="cpu"), cache_dir=cache_dir)


@pytest.fixture(scope="session")
def pipe(tiny_source):
    """The process-wide cached tiny pipeline (tests must leave it as they found it)."""
    from lora_core.models import load_pipeline

    return load_pipeline(tiny_source)


@pytest.fixture(scope="session")
def subject_dir(cache_dir) -> Path:
    from lora_core.embedded.drawn_subject import ensure_drawn_subject

    return ensure_drawn_subject(cache_dir, count=5, seed=0, size=128)


@pytest.fixture(scope="session")
def subject_images(subject_dir):
    from lora_core.data.subject import load_subject_images

    return load_subject_images(subject_dir, 64)


@pytest.fixture(scope="session")
def quickstart_sweep(tmp_path_factory, cache_dir):
    """The quickstart's 2 x 2 sweep (shortened), run once as a user runs it: (sweep root, result)."""
    from sweep_cli import FAST, sweep

    root = tmp_path_factory.mktemp("quick")
    result = sweep(root, "experiment=quickstart", *FAST)
    assert result.returncode == 0, result.output
    return root, result


@pytest.fixture
def settings():
    """Factory of small, fast training settings at 64 px (overrides as keyword arguments)."""
    from lora_core.settings import TrainSettings

    def make(**overrides) -> TrainSettings:
        values = dict(
            instance_prompt="a photo of ktn cat",
            resolution=64,
            learning_rate=1e-3,
            text_encoder_lr=0.0,
            max_train_steps=8,
            rank=4,
            seed=3,
            progress_bar=False,
            log_every=1,
        )
        values.update(overrides)
        return TrainSettings(**values)

    return make


def train_killed_then_resumed(pipe, images, settings, folder: Path, **train_args):
    """Train until the first checkpoint of ``settings``, die there, then resume to the end in ``folder``.

    Args:
        train_args: Further ``train_lora`` arguments of both runs (``captions=...``).

    Returns:
        The resumed run's ``TrainResult``.
    """
    from lora_core.training import train_lora

    def killed(step, checkpoint):
        raise KeyboardInterrupt  # the process dies right after writing the checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_lora(pipe, images, settings, folder, on_checkpoint=killed, **train_args)
    return train_lora(pipe, images, settings, folder, resume_from="latest", **train_args)


def assert_same_weights(a, b, atol: float = 1e-6) -> None:
    """Assert two sets of adapter weights hold the same tensors (within ``atol``, relative 1e-5).

    Args:
        a: A safetensors file (path) or its loaded state dict.
        b: The same for the other set.
        atol: Absolute tolerance.
    """
    import torch
    from safetensors.torch import load_file

    a, b = (w if isinstance(w, dict) else load_file(str(w)) for w in (a, b))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


def train_both_adapters(trainer) -> None:
    """Train a set-up ``LoraTrainer``, assert its UNet and text-encoder adapters both moved, switch to eval."""
    import torch

    before = [p.detach().clone() for p in trainer.trainable_params]
    trainer.train()
    moved = [not torch.equal(a, p) for a, p in zip(before, trainer.trainable_params, strict=True)]
    n_unet = len(trainer.optimizer.param_groups[0]["params"])
    assert any(moved[:n_unet]) and any(moved[n_unet:])  # UNet and text-encoder adapters both trained
    for model in trainer.models:
        model.eval()


def render(pipe, prompt: str = "a photo of ktn cat", seed: int = 7, steps: int = 4):
    """One 64 px image as a float array in [0, 1]."""
    import torch

    return pipe(
        prompt,
        num_inference_steps=steps,
        height=64,
        width=64,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


@pytest.fixture
def browser():
    """Debian's headless chromium driven by selenium (the compare page and the MLflow UI tests)."""
    if not (BROWSER and DRIVER):
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver); .ci/run installs them"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
        "--allow-file-access-from-files",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
