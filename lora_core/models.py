"""Load a base Stable Diffusion pipeline (1.x, 2.x or SDXL): hub id, local folder or single-file checkpoint.

Pipelines are cached per process, so the later jobs of a sweep that run in the same process reuse the
weights instead of loading them again. Callers must leave the cached pipeline as they found it (no
adapters left attached, no fused weights); the trainer and the renderer do. The project's own models
(``world``, ``tiny``) arrive here as folders: ``sweeper.config.embedded_models`` resolves their names.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from lora_core.errors import UserInputError

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def quiet_libraries() -> None:
    """Keep the terminal for our own progress: no per-file loading bars or lines from the libraries.

    Imports diffusers and transformers (a few seconds the first time).
    """
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # not every file a checkpoint loads


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from and how to hold it.

    Attributes:
        path: A hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local diffusers folder, or a
            single ``.safetensors``/``.ckpt`` checkpoint.
        revision: Hub revision (branch, tag or commit); None for the default.
        variant: Weight variant on the hub (``fp16``) to download less; None for full weights.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
        device: ``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        single_file_config: For a single-file checkpoint: a diffusers folder or hub id whose component
            configs describe it (needed offline; by default diffusers infers one and may download it).
        local_files_only: Never touch the network (what this machine needs; hub ids must be cached).
        identity: The weights' identity when the path does not say it (a folder the project builds or
            ships: ``tiny-<fingerprint>``, ``world-<content hash>``); None: the path, revision and variant.
    """

    path: str
    revision: str | None = None
    variant: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    single_file_config: str | None = None
    local_files_only: bool = False
    identity: str | None = None


def resolve_device(device: str) -> str:
    """Turn ``auto`` into ``cuda`` or ``cpu`` and check that a named CUDA device exists.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        A torch device string.

    Raises:
        UserInputError: CUDA was asked for and is not available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(
            f"model.device={device}: no CUDA device is available here; use model.device=cpu or auto."
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UserInputError(f"model.device={device}: expected auto, cpu, cuda or cuda:N.")
    return device


def resolve_dtype(dtype: str, device: str):
    """Turn a dtype name into a torch dtype; ``auto`` is float16 on CUDA and float32 on CPU.

    Args:
        dtype: ``auto`` or a name from ``float32/fp32, float16/fp16, bfloat16/bf16``.
        device: The resolved device.

    Returns:
        A ``torch.dtype``.

    Raises:
        UserInputError: Unknown name, or float16 asked for on the CPU (too slow and imprecise to use).
    """
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise UserInputError(f"model.dtype={dtype}: expected auto, float32, float16 or bfloat16.")
    if _DTYPES[dtype] == "float16" and device == "cpu":
        raise UserInputError("model.dtype=float16 on the CPU is not supported; use float32 or bfloat16.")
    return getattr(torch, _DTYPES[dtype])


def model_identity(source: ModelSource) -> str:
    """A string that identifies the base weights, for cache keys (class images, reuse of trainings).

    Args:
        source: The model source.

    Returns:
        ``source.identity`` when set, else the path/hub id with its revision and variant.
    """
    if source.identity is not None:
        return source.identity
    local = Path(source.path).expanduser()
    path = str(local.resolve()) if local.exists() else source.path
    return f"{path}@{source.revision or 'main'}:{source.variant or 'full'}"


def dtype_name(source: ModelSource) -> str:
    """The dtype the pipeline is loaded in, resolved (``auto`` -> ``torch.float16`` on CUDA).

    The pictures a model draws depend on it, so it is part of every identity (class-image cache, reuse).

    Raises:
        UserInputError: An unknown dtype or device.
    """
    return str(resolve_dtype(source.dtype, resolve_device(source.device)))


@functools.lru_cache(maxsize=64)  # the planner asks once per job; a hub lookup is paid once
def model_family(source: ModelSource) -> str:
    """``sdxl`` or ``sd`` (1.x / 2.x) without loading the weights (``lora_core.family``).

    A diffusers folder or hub id says it in its ``model_index.json`` (a hub id's from the local cache, or
    downloaded unless ``local_files_only``); a single-file checkpoint by its keys (SDXL's have
    ``conditioner.embedders``), or its ``single_file_config``'s. Unknown (a hub id that cannot be reached):
    ``sd``, and loading says what is wrong.
    """
    from lora_core.family import SD, SDXL

    local = Path(source.path).expanduser()
    if local.is_file() or source.path.endswith(_SINGLE_FILE_SUFFIXES):
        if source.single_file_config:
            return model_family(
                ModelSource(source.single_file_config, local_files_only=source.local_files_only)
            )
        if local.suffix == ".safetensors" and local.is_file():
            from safetensors import safe_open

            with safe_open(str(local), framework="pt") as f:
                return SDXL if any(k.startswith("conditioner.embedders.1") for k in f.keys()) else SD  # noqa: SIM118
        return SD
    index = local / "model_index.json" if local.is_dir() else _hub_model_index(source)
    if index is None or not Path(index).is_file():
        return SD
    import json

    return SDXL if "XL" in json.loads(Path(index).read_text()).get("_class_name", "") else SD


def _hub_model_index(source: ModelSource) -> str | None:
    """A hub model's ``model_index.json``: the cached copy, else downloaded (None when it cannot be had)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(source.path, "model_index.json", revision=source.revision)
    if isinstance(cached, str):
        return cached
    if source.local_files_only:
        return None
    try:
        return hf_hub_download(source.path, "model_index.json", revision=source.revision)
    except Exception:  # any hub failure: the pipeline's own loading reports it
        return None


_PIPELINES: dict[tuple, object] = {}


def load_pipeline(source: ModelSource):
    """Load (or reuse from this process's cache) the model's pipeline, with no safety checker.

    ``StableDiffusionPipeline`` for SD 1.x / 2.x, ``StableDiffusionXLPipeline`` for SDXL (``model_family``).

    Args:
        source: What to load and where to put it.

    Returns:
        The pipeline on ``source.device`` in ``source.dtype``, progress bars off.

    Raises:
        UserInputError: The path is neither a folder, a checkpoint file nor a reachable hub id, or the
            folder is not a Stable Diffusion pipeline.
    """
    device = resolve_device(source.device)
    dtype = resolve_dtype(source.dtype, device)
    key = (model_identity(source), str(dtype), device, source.single_file_config)
    if key not in _PIPELINES:
        pipe = _load_uncached(source, dtype)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        _PIPELINES[key] = pipe
    return _PIPELINES[key]


def load_tokenizer(source: ModelSource):
    """The model's CLIP tokenizer alone (no weights loaded).

    Args:
        source: The model source (a single-file checkpoint uses its ``single_file_config``).

    Returns:
        A ``CLIPTokenizer``.

    Raises:
        UserInputError: The tokenizer cannot be found.
    """
    from transformers import CLIPTokenizer

    path = source.path
    if Path(path).expanduser().is_file() or path.endswith(_SINGLE_FILE_SUFFIXES):
        path = source.single_file_config or "openai/clip-vit-large-patch14"
        if not Path(path).is_dir():
            return CLIPTokenizer.from_pretrained(path, local_files_only=source.local_files_only)
    try:
        return CLIPTokenizer.from_pretrained(
            path, subfolder="tokenizer", revision=source.revision, local_files_only=source.local_files_only
        )
    except (OSError, ValueError) as err:
        raise UserInputError(f"model.path={source.path}: cannot load its tokenizer ({err}).") from err


def clear_pipeline_cache() -> None:
    """Forget every cached pipeline (frees their memory once no one else holds them)."""
    _PIPELINES.clear()


def _load_uncached(source: ModelSource, dtype):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from lora_core.family import SDXL

    path = source.path
    local = Path(path).expanduser()
    if model_family(source) == SDXL:
        pipeline, common = StableDiffusionXLPipeline, {"dtype": dtype}
    else:
        pipeline = StableDiffusionPipeline
        common = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if local.is_file() or path.endswith(_SINGLE_FILE_SUFFIXES):
            if not local.is_file():
                raise UserInputError(f"model.path={path}: no such checkpoint file.")
            if source.local_files_only and source.single_file_config is None:
                # Without a config diffusers fetches stable-diffusion-v1-5's, ignoring local_files_only.
                raise UserInputError(
                    f"model.path={path}: a single-file checkpoint needs model.single_file_config offline: "
                    "a diffusers folder (or cached hub id) whose configs describe it, such as its base model."
                )
            log.info("Loading single-file checkpoint %s", local)
            return pipeline.from_single_file(
                str(local),
                config=source.single_file_config,
                local_files_only=source.local_files_only,
                **common,
            )
        if local.is_dir() and not (local / "model_index.json").is_file():
            raise UserInputError(
                f"model.path={path}: the folder has no model_index.json, so it is not a diffusers pipeline "
                "folder. Point it at the folder that holds model_index.json, unet/, vae/, text_encoder/."
            )
        log.info("Loading pipeline %s", path)
        return pipeline.from_pretrained(
            str(local) if local.is_dir() else path,
            revision=source.revision,
            variant=source.variant,
            local_files_only=source.local_files_only,
            **common,
        )
    except SingleFileComponentError as err:
        raise UserInputError(
            f"model.path={path}: {err.message.splitlines()[0]} Use a checkpoint with the UNet, VAE and text "
            "encoder, or set model.single_file_config to a diffusers folder that holds the missing weights."
        ) from err
    except (OSError, ValueError) as err:
        hint = (
            "Check the hub id and your network/HF_TOKEN, or download the model and pass its local folder."
            if not local.exists()
            else "The files may be incomplete or not a Stable Diffusion (1.x, 2.x or SDXL) model."
        )
        raise UserInputError(f"model.path={path}: could not load the pipeline ({err}). {hint}") from err
