"""Render inference grids of a LoRA: prompt × UNet scale × text-encoder scale × guidance × seed.

What a user would write is one ``set_adapters`` and one pipeline call per cell. This renders the same
pictures faster:

- the adapter is loaded once;
- cells that draw the same picture are rendered once: a scale of a model part the adapter does not adapt
  changes nothing (a LoRA trained with the text encoder frozen draws its text-scale axis once);
- prompt embeddings are encoded once per (prompt, text-encoder scale) — the text encoder's LoRA scale only
  changes the embeddings, so cells that differ in UNet scale or guidance share them;
- cells with the same (UNet scale, guidance) go through the pipeline together, in batches;
- the UNet LoRA is fused into the weights at each UNet scale (an unfused LoRA adds its own matmuls to every
  attention projection at every step), and the exact base weights are put back afterwards, so a cached
  pipeline serves the next job bit-for-bit unchanged;
- each picture's starting noise comes from its own seed, exactly as a single-image call with
  ``generator=torch.Generator().manual_seed(seed)`` draws it, so a cell's picture does not depend on which
  other cells share its batch.

Per-component scales go through ``set_adapters(..., adapter_weights=[{"unet": u, "text_encoder": t}])``;
``cross_attention_kwargs={"scale": ...}`` would reset them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

from lora_core.errors import UserInputError
from lora_core.family import SDXL, family_of

log = logging.getLogger(__name__)

ADAPTER_NAME = "lora_sweeps_render"

# Names users write -> diffusers scheduler classes (and options), for render.scheduler.
SCHEDULERS = {
    "default": None,
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


@dataclass(frozen=True)
class RenderCell:
    """One picture to render.

    Attributes:
        prompt: The full prompt.
        unet_scale: UNet LoRA scale.
        text_scale: Text-encoder LoRA scale.
        guidance: Classifier-free guidance scale (<= 1 turns guidance off).
        seed: Seed of the starting noise.
        index: Which of the cell's ``count`` pictures this is.
        count: Pictures drawn from this seed (as ``num_images_per_prompt`` would).
        sampler: A key of ``SCHEDULERS``; None: the grid's ``RenderOptions.scheduler``.
        steps: Sampling steps; None: the grid's ``RenderOptions.num_inference_steps``.
        text_2_scale: SDXL's second text encoder's LoRA scale; None: ``text_scale``.
    """

    prompt: str
    unet_scale: float
    text_scale: float
    guidance: float
    seed: int = 0
    index: int = 0
    count: int = 1
    sampler: str | None = None
    steps: int | None = None
    text_2_scale: float | None = None

    @property
    def text_scales(self) -> tuple[float, float]:
        """The scales of the text encoders' LoRAs: the first's, and SDXL's second's."""
        return self.text_scale, self.text_scale if self.text_2_scale is None else self.text_2_scale


@dataclass(frozen=True)
class RenderOptions:
    """Settings shared by every cell of a grid.

    Attributes:
        num_inference_steps: Sampling steps.
        resolution: Side in pixels.
        negative_prompt: Negative prompt ('' for none).
        scheduler: A key of ``SCHEDULERS``.
        batch_size: Pictures per pipeline call (0: 16 on the CPU, 8 on a GPU).
        fuse: Fuse the UNet LoRA per scale (faster); False keeps it unfused (same pictures, within float
            rounding).
    """

    num_inference_steps: int = 25
    resolution: int = 512
    negative_prompt: str = ""
    scheduler: str = "default"
    batch_size: int = 0
    fuse: bool = True

    def validate(self, prefix: str = "render") -> None:
        """Check the values; the first problem raises ``UserInputError`` naming the key."""
        if not 1 <= self.num_inference_steps <= 1000:
            raise UserInputError(f"{prefix}.num_inference_steps={self.num_inference_steps}: must be 1-1000.")
        if self.resolution < 8 or self.resolution % 8:
            raise UserInputError(f"{prefix}.resolution={self.resolution}: must be a positive multiple of 8.")
        if self.scheduler not in SCHEDULERS:
            raise UserInputError(f"{prefix}.scheduler={self.scheduler}: use one of {', '.join(SCHEDULERS)}.")
        if self.batch_size < 0:
            raise UserInputError(f"{prefix}.batch_size={self.batch_size}: must be >= 0 (0: automatic).")


def initial_noise(cell: RenderCell, shape: tuple[int, ...]):
    """The starting latents of a cell's picture: what a single pipeline call with this seed draws.

    Args:
        cell: The cell.
        shape: Latent shape of one picture (C, H, W).

    Returns:
        A float32 CPU tensor of ``shape``; with ``count`` pictures per seed, picture ``index`` of one
        ``(count, *shape)`` draw.
    """
    import torch

    generator = torch.Generator("cpu").manual_seed(cell.seed)
    return torch.randn((cell.count, *shape), generator=generator)[cell.index]


def load_adapter(pipe, lora: str | os.PathLike, adapter_name: str) -> None:
    """Load an adapter of any kind onto a pipeline, as the pipeline's own LoRA calls then drive it.

    Args:
        pipe: A ``StableDiffusionPipeline``.
        lora: A training folder (its diffusers file, else its peft file), a diffusers- or kohya-format LoRA
            or DoRA file (``pipe.load_lora_weights``), or an ``adapter_peft.safetensors`` (LoHa, LoKr).
        adapter_name: Name of the adapter in the models.

    Raises:
        UserInputError: A folder holds no adapter file.
    """
    from lora_core.adapters import find_weights_file, is_peft_adapter_file, load_peft_adapter

    path = Path(lora)
    if path.is_dir():
        found = find_weights_file(path)
        if found is None:
            raise UserInputError(f"{path}: no adapter file in this folder (nothing trained here yet?).")
        path = found
    if is_peft_adapter_file(path):
        load_peft_adapter(pipe, path, adapter_name)
    else:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)


class GridRenderer:
    """Renders cells with one LoRA on a borrowed pipeline; use as a context manager.

    Args:
        pipe: A ``StableDiffusionPipeline`` with no adapter loaded.
        lora: Folder or file of an adapter (see ``load_adapter``); None renders the base model.
        options: Shared render settings.
    """

    def __init__(self, pipe, lora: str | os.PathLike | None, options: RenderOptions):
        options.validate()
        self.pipe, self.lora, self.options = pipe, lora, options
        self._snapshot: dict | None = None
        self._fused_at: float | None = None
        self._scheduler = None

    def __enter__(self) -> GridRenderer:
        pipe = self.pipe
        if self.lora is not None:
            with quiet_adapter_loading():
                load_adapter(pipe, self.lora, ADAPTER_NAME)
        self._scheduler = use_scheduler(pipe, self.options.scheduler)
        return self

    def __exit__(self, *exc) -> None:
        self._unfuse()
        self.pipe.scheduler = self._scheduler
        if self.lora is not None:
            self.pipe.unload_lora_weights()

    # ---- public ------------------------------------------------------------------------------------------
    def render(self, cells: Iterable[RenderCell]) -> Iterator[tuple[RenderCell, object]]:
        """Render cells, grouped for speed; yields (cell, PIL image) as each batch finishes.

        Cells that draw the same picture (their scales differ only for a model part the adapter does not
        adapt, e.g. the text-encoder scale of a LoRA that left the text encoder frozen) are rendered once.

        Args:
            cells: The cells (any order).

        Yields:
            Each cell with its picture.
        """
        parts = adapter_parts(self.pipe, ADAPTER_NAME) if self.lora is not None else set()
        drawn_by: dict[RenderCell, list[RenderCell]] = {}  # cells that draw the same picture, rendered once
        for cell in cells:
            drawn_by.setdefault(same_picture(cell, parts), []).append(cell)
        cells = list(drawn_by)
        embeds = self._prompt_embeddings(cells)  # shared by every sampler and step count
        options = self.options
        for (sampler, _), by_sampling in groupby(sorted(cells, key=sampling_key), key=sampling_key):
            self.pipe.scheduler = sampler_of(self._scheduler, sampler or options.scheduler)
            key = lambda c: (c.unet_scale, c.guidance)  # noqa: E731
            for (unet_scale, guidance), group in groupby(sorted(by_sampling, key=key), key=key):
                self._set_unet_scale(unet_scale)
                group = list(group)
                size = batch_size(options, self.pipe.device)
                for start in range(0, len(group), size):
                    batch = group[start : start + size]
                    for drawn, image in zip(batch, self._render_batch(batch, guidance, embeds), strict=True):
                        yield from ((cell, image) for cell in drawn_by[drawn])

    # ---- prompt embeddings -------------------------------------------------------------------------------
    def _prompt_embeddings(self, cells: list[RenderCell]) -> dict:
        """(prompt, text scales) -> (positive, negative) embeddings, each encoded once."""
        out = {}
        for scales in sorted({c.text_scales for c in cells}):
            prompts = sorted({c.prompt for c in cells if c.text_scales == scales})
            self._set_text_scale(*scales)
            for prompt, pair in encode_prompts(self.pipe, prompts, self.options.negative_prompt).items():
                out[(prompt, scales)] = pair
        return out

    def _set_scales(self, unet: float, text: float, text_2: float | None = None) -> None:
        set_adapter_scales(self.pipe, ADAPTER_NAME, unet, text, text_2)

    def _set_text_scale(self, text_scale: float, text_2_scale: float | None = None) -> None:
        if self.lora is not None:
            self._set_scales(1.0, text_scale, text_2_scale)

    # ---- UNet scale --------------------------------------------------------------------------------------
    def _set_unet_scale(self, unet_scale: float) -> None:
        if self.lora is None:
            return
        if not self.options.fuse:
            self._set_scales(unet_scale, 0.0)
            return
        if self._fused_at == unet_scale:
            return
        self._unfuse()
        if self._snapshot is None:
            self._snapshot = _lora_base_weights(self.pipe.unet)
        self._set_scales(unet_scale, 0.0)
        # fuse_lora multiplies lora_scale with the weight set_adapters gave the UNet.
        self.pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=[ADAPTER_NAME])
        self._fused_at = unet_scale

    def _unfuse(self) -> None:
        if self._fused_at is None:
            return
        self.pipe.unfuse_lora(components=["unet"])
        _restore_base_weights(self.pipe.unet, self._snapshot)  # undo the rounding of fuse + unfuse
        self._fused_at = None

    # ---- batches -----------------------------------------------------------------------------------------
    def _render_batch(self, batch: list[RenderCell], guidance: float, embeds: dict) -> list:
        pairs = [embeds[(c.prompt, c.text_scales)] for c in batch]
        return render_pictures(self.pipe, self.options, batch, pairs, guidance)


def use_scheduler(pipe, name: str):
    """Give ``pipe`` the sampler ``render.scheduler`` names (``default``: keep its own); returns the one it had."""
    previous = pipe.scheduler
    pipe.scheduler = sampler_of(previous, name)
    return previous


def sampler_of(own, name: str):
    """The sampler ``name`` (a key of ``SCHEDULERS``) made from the model's own scheduler ``own``.

    ``default`` is ``own`` itself; every other is built from ``own``'s config, so that switching samplers
    within a grid carries nothing of one sampler into the next.
    """
    spec = SCHEDULERS[name]
    if spec is None:
        return own
    import diffusers

    cls_name, extra = spec
    return getattr(diffusers, cls_name).from_config(own.config, **extra)


def sampling_key(cell: RenderCell) -> tuple[str, int]:
    """How a cell is sampled, for grouping (None sorts as the grid's own: ``""`` and 0)."""
    return (cell.sampler or "", cell.steps or 0)


def batch_size(options: RenderOptions, device) -> int:
    """Pictures per pipeline call: ``render.batch_size``, or 8 on a GPU and 16 on the CPU."""
    if options.batch_size:
        return options.batch_size
    return 8 if device.type == "cuda" else 16


def set_adapter_scales(pipe, name: str, unet: float, text: float, text_2: float | None = None) -> None:
    """``set_adapters`` with a weight for each component the adapter has (a UNet-only one has no text part).

    SDXL's second text encoder takes ``text_2``, or ``text`` when None.
    """
    parts = adapter_parts(pipe, name)
    scales = (("unet", unet), ("text_encoder", text), ("text_encoder_2", text if text_2 is None else text_2))
    weights = {part: w for part, w in scales if part in parts}
    pipe.set_adapters([name], adapter_weights=[weights])


def adapter_parts(pipe, name: str) -> set[str]:
    """The pipeline's parts (``unet``, ``text_encoder``, ``text_encoder_2``) that adapter ``name`` adapts."""
    return {part for part, names in pipe.get_list_adapters().items() if name in names}


def same_picture(cell: RenderCell, parts: set[str]) -> RenderCell:
    """The cell that draws ``cell``'s picture with an adapter of ``parts`` (the model parts it adapts).

    A part's scale is 0 where the adapter has nothing in that part to scale: it changes nothing there.
    """
    text, text_2 = cell.text_scales
    return replace(
        cell,
        unet_scale=cell.unet_scale if "unet" in parts else 0.0,
        text_scale=text if "text_encoder" in parts else 0.0,
        text_2_scale=text_2 if "text_encoder_2" in parts else 0.0,
    )


def encode_prompts(pipe, prompts: list[str], negative_prompt: str) -> dict:
    """Each prompt's (positive, negative) embeddings, with the text encoders' adapters as they are set.

    SDXL's also hold the pooled ones: (positive, negative, pooled positive, pooled negative).
    """
    import torch

    negatives = [negative_prompt] * len(prompts)
    with torch.no_grad():
        if family_of(pipe) == SDXL:
            parts = pipe.encode_prompt(
                prompts, device=pipe.device, num_images_per_prompt=1, negative_prompt=negatives
            )
        else:
            parts = pipe.encode_prompt(prompts, pipe.device, 1, True, negative_prompt=negatives)
    return {prompt: tuple(part[i] for part in parts) for i, prompt in enumerate(prompts)}


def render_pictures(
    pipe, options: RenderOptions, cells: list[RenderCell], embeds: list, guidance: float
) -> list:
    """One pipeline call: each cell's picture from its own starting noise and its (positive, negative) embeds."""
    import torch

    latent_side = options.resolution // pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, latent_side, latent_side)
    latents = torch.stack([initial_noise(c, shape) for c in cells]).to(pipe.device, pipe.unet.dtype)
    positive = torch.stack([pair[0] for pair in embeds])
    negative = torch.stack([pair[1] for pair in embeds])
    pooled = {}  # SDXL's pooled embeddings
    if len(embeds[0]) == 4:
        pooled = {
            "pooled_prompt_embeds": torch.stack([pair[2] for pair in embeds]),
            "negative_pooled_prompt_embeds": torch.stack([pair[3] for pair in embeds]),
        }
    # One generator per picture, for schedulers that add noise while sampling (euler_a).
    generators = [torch.Generator("cpu").manual_seed(c.seed + 7919 * c.index) for c in cells]
    steps = {c.steps or options.num_inference_steps for c in cells}
    if len(steps) != 1:
        raise ValueError(f"one pipeline call samples with one step count, not {sorted(steps)}")
    with torch.no_grad():
        return pipe(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            latents=latents,
            guidance_scale=guidance,
            num_inference_steps=steps.pop(),
            height=options.resolution,
            width=options.resolution,
            generator=generators,
            **pooled,
        ).images


def _lora_base_weights(model) -> dict:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: module.get_base_layer().weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer)
    }


def _restore_base_weights(model, snapshot: dict | None) -> None:
    if not snapshot:
        return
    modules = dict(model.named_modules())
    for name, weight in snapshot.items():
        modules[name].get_base_layer().weight.data.copy_(weight)


@contextlib.contextmanager
def quiet_adapter_loading():
    """Silence what loading adapters says that is no news here.

    diffusers warns about a LoRA without text-encoder weights (a frozen text encoder); with several adapters
    in one model (``lora_core.packs.render``) transformers reports the others' weights as missing from each
    file (they are kept: checked in tests) and peft warns that there are several.
    """
    loggers = [logging.getLogger(name) for name in ("transformers", "diffusers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
