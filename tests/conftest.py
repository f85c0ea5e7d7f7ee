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
# `make test` runs two pytest workers on two cores (pytest-xdist): each worker, and every command it starts,
# computes on one thread, so the two do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# Screenshots the browser tests leave for a person to look at (git-ignored, like all of outputs/).
# Picture size of the in-process training tests on the tiny model: 16 x 16 latents, a step in half the time
# of 64 px, and every code path the same.
SIZE = 32
ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Keep tests that share one expensive thing on one worker (``--dist loadgroup``).

    A fixture is built once per worker that asks for it: the quickstart sweep (session), and each module's
    own sweeps and models (module scope), so their tests go to one worker. The SLURM tests share one small
    cluster, where two at once would only queue behind each other.

    The longest work starts first, so the quick tests fill the workers' gaps at the end: modules with SLURM
    tests, then modules with slow tests, then the rest, each module's tests kept together and in order.
    """

    def rank(item) -> int:
        return 0 if item.get_closest_marker("slurm") else 1 if item.get_closest_marker("slow") else 2

    module_rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_rank[module] = min(module_rank.get(module, 2), rank(item))
    items.sort(key=lambda item: module_rank[item.nodeid.split("::")[0]])  # stable: order kept within ranks
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        scopes = {d[-1].scope for d in fixtures.name2fixturedefs.values() if d} if fixtures else set()
        if "quickstart_sweep" in getattr(item, "fixturenames", ()):
            group = "quickstart"
        elif item.get_closest_marker("slurm"):
            group = "slurm"
        elif scopes & {"module", "class", "package"}:
            group = item.nodeid.split("::")[0]
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Stop when pytest-xdist's groups do not reach its scheduler (it reads them from a node-id suffix)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    grouped = [i for i in session.items if i.get_closest_marker("xdist_group")]
    if grouped and "@" not in grouped[0].nodeid:
        raise pytest.UsageError(
            "pytest-xdist's --dist loadgroup does not group with this pytest (node ids without the group "
            "suffix): install the pytest that constraints.txt pins (pytest<9.2)."
        )


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

    return load_subject_images(subject_dir, SIZE)


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
    """Factory of small, fast training settings at ``SIZE`` px (overrides as keyword arguments)."""
    from lora_core.settings import TrainSettings

    def make(**overrides) -> TrainSettings:
        values = dict(
            instance_prompt="a photo of ktn cat",
            resolution=SIZE,
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
    """One ``SIZE`` px image as a float array in [0, 1]."""
    import torch

    return pipe(
        prompt,
        num_inference_steps=steps,
        height=SIZE,
        width=SIZE,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


def render_alone_and_together(pipe, loras: list, cells: list, options) -> tuple[dict, dict]:
    """Each LoRA's ``cells`` rendered alone (``GridRenderer``) and all of them together (``PackRenderer``).

    Returns:
        Two dicts (alone, together) of (LoRA index, cell) -> the picture as a float32 array (0-255).
    """
    import numpy as np

    from lora_core.packs.render import PackRenderer
    from lora_core.render import GridRenderer

    alone = {}
    for k, lora in enumerate(loras):
        with GridRenderer(pipe, lora, options) as renderer:
            alone |= {(k, c): np.asarray(image, dtype=np.float32) for c, image in renderer.render(cells)}
    with PackRenderer(pipe, loras, options) as renderer:
        pairs = [(k, c) for k in range(len(loras)) for c in cells]
        together = {(k, c): np.asarray(image, dtype=np.float32) for k, c, image in renderer.render(pairs)}
    return alone, together


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


# ---- the kohya / LyCORIS export, rebuilt with the formulas A1111, ComfyUI and LyCORIS apply --------------
def kohya_rebuild(tensors: dict, name: str, weight):
    """The weight a LyCORIS-style reader makes of one module of the export (written out here, not peft's)."""
    import torch

    t = {k[len(name) + 1 :]: v.double() for k, v in tensors.items() if k.startswith(name + ".")}
    alpha, w = t["alpha"].item(), weight.double()
    if "hada_w1_a" in t:
        rank = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * alpha / rank
        return w + delta.reshape(w.shape)
    if "lokr_w1" in t:
        if "lokr_w2" in t:  # no low-rank factor: scale 1
            w2, scale = t["lokr_w2"], 1.0
        else:
            w2, scale = t["lokr_w2_a"] @ t["lokr_w2_b"], alpha / t["lokr_w2_b"].shape[0]
        w1 = t["lokr_w1"] if w2.dim() == 2 else t["lokr_w1"][:, :, None, None]
        return w + (torch.kron(w1, w2) * scale).reshape(w.shape)
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    merged = w + ((up.flatten(1) @ down.flatten(1)) * alpha / down.shape[0]).reshape(w.shape)
    if "dora_scale" in t:  # magnitude per output channel (LyCORIS wd_on_out)
        norm = merged.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        merged = t["dora_scale"] * merged / norm
    return merged


def kohya_name(prefix: str, module: str) -> str:
    """A peft module's kohya name: ``lora_unet_...``, or a text encoder's (``lora_te_``, ``lora_te1_``,
    ``lora_te2_``) under ``text_model`` as A1111 and kohya name it."""
    if prefix.startswith("lora_te") and not module.startswith("text_model."):
        module = f"text_model.{module}"
    return prefix + module.replace(".", "_")
