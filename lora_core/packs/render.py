"""Render the grids of several LoRAs of one base model together: cells of several configurations in one call.

``GridRenderer`` renders one LoRA, fusing it into the UNet at each UNet scale. A pack's configurations share
the base model, so ``PackRenderer`` renders their cells in the same denoising calls instead: each picture of a
batch goes through the frozen UNet with its own configuration's adapter at its own UNet scale
(``RowPackedLinear``), and its prompt embeddings are encoded with its own configuration's text-encoder
adapter at its own text scale, exactly as alone. Cells of one call share the guidance scale (the pipeline
takes one); the starting noise of each picture comes from its own seed (``render.initial_noise``), so a
picture does not depend on its batch. LoRA, DoRA (on linear layers) and LoCon; LoHa and LoKr render alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import groupby

from lora_core.packs.layers import RowRouting, replace_layer, restore_layers, row_conv_class, row_linear_class
from lora_core.render import (
    RenderCell,
    RenderOptions,
    adapter_parts,
    batch_size,
    encode_prompts,
    load_adapter,
    quiet_adapter_loading,
    render_pictures,
    same_picture,
    sampler_of,
    sampling_key,
    set_adapter_scales,
    use_scheduler,
)

ADAPTER_PREFIX = "lora_sweeps_pack_"


class NotPackable(ValueError):
    """These adapters cannot render together (the reason is the message); render each alone."""


class PackRenderer:
    """Renders the cells of several LoRAs on a borrowed pipeline; use as a context manager.

    Args:
        pipe: A ``StableDiffusionPipeline`` with no adapter loaded.
        loras: One adapter folder or file per configuration (see ``render.load_adapter``).
        options: Shared render settings.

    Raises:
        NotPackable: On entering, when an adapter is LoHa or LoKr, or DoRA on convolutions; the pipeline is
            left as found.
    """

    def __init__(self, pipe, loras: list[str | os.PathLike], options: RenderOptions):
        options.validate()
        self.pipe, self.loras, self.options = pipe, list(loras), options
        self.names = [f"{ADAPTER_PREFIX}{k}" for k in range(len(self.loras))]
        self.routing = RowRouting()
        self._replaced: list[tuple] = []
        self._scheduler = None
        self._loaded = False

    def __enter__(self) -> PackRenderer:
        pipe = self.pipe
        self._loaded = True
        try:
            with quiet_adapter_loading():
                for lora, name in zip(self.loras, self.names, strict=True):
                    load_adapter(pipe, lora, name)
            self._stacks = _unet_stacks(pipe.unet, self.names)
            self._dora = _dora_adapters(pipe, self.names)
        except BaseException:
            self._unload()
            raise
        self._scheduler = use_scheduler(pipe, self.options.scheduler)
        return self

    def __exit__(self, *exc) -> None:
        restore_layers(self._replaced)
        self._unload()
        if self._scheduler is not None:
            self.pipe.scheduler = self._scheduler

    # ---- public ------------------------------------------------------------------------------------------
    def render(self, cells: Iterable[tuple[int, RenderCell]]) -> Iterator[tuple[int, RenderCell, object]]:
        """Render (configuration index, cell) pairs; yields (index, cell, PIL image) as each batch finishes.

        A picture is rendered once for all the pairs that draw it: a configuration's cells whose scales differ
        only where its adapter has nothing to scale (``render.same_picture``), and every configuration's cells
        at UNet and text-encoder scale 0, which draw the base model's picture (LoRA and LoCon; not DoRA).
        """
        parts = [adapter_parts(self.pipe, name) for name in self.names]
        drawn_by: dict[tuple, list[tuple[int, RenderCell]]] = {}
        for k, cell in cells:
            same = same_picture(cell, parts[k])
            # at scale 0 a LoRA adds nothing (DoRA still rescales its rows)
            base = same.unet_scale == 0 and same.text_scales == (0, 0) and not self._dora[k]
            drawn_by.setdefault((None if base else k, same), []).append((k, cell))
        members = {(pairs[0][0], same): pairs for (_, same), pairs in drawn_by.items()}
        cells = list(members)
        embeds = self._prompt_embeddings(cells)
        self._unload()  # the text encoders' adapters are done; the UNet's become packed layers
        self._install_layers()
        size = batch_size(self.options, self.pipe.device)
        key = lambda item: (*sampling_key(item[1]), item[1].guidance)  # noqa: E731
        for (sampler, _, guidance), group in groupby(sorted(cells, key=key), key=key):
            self.pipe.scheduler = sampler_of(self._scheduler, sampler or self.options.scheduler)
            group = list(group)
            for start in range(0, len(group), size):
                batch = group[start : start + size]
                images = self._render_batch(batch, guidance, embeds)
                for drawn, image in zip(batch, images, strict=True):
                    yield from ((k, cell, image) for k, cell in members[drawn])

    # ---- prompt embeddings -------------------------------------------------------------------------------
    def _prompt_embeddings(self, cells: list[tuple[int, RenderCell]]) -> dict:
        """(configuration, prompt, text scales) -> its embeddings, each with its own adapter, as alone."""
        out = {}
        for k in sorted({k for k, _ in cells}):
            mine = [c for j, c in cells if j == k]
            for scales in sorted({c.text_scales for c in mine}):
                prompts = sorted({c.prompt for c in mine if c.text_scales == scales})
                set_adapter_scales(self.pipe, self.names[k], 1.0, *scales)
                for prompt, pair in encode_prompts(self.pipe, prompts, self.options.negative_prompt).items():
                    out[(k, prompt, scales)] = pair
        return out

    # ---- layers ------------------------------------------------------------------------------------------
    def _install_layers(self) -> None:
        unet = self.pipe.unet
        for name, (a, b, scaling, magnitude) in self._stacks.items():
            base = unet.get_submodule(name)
            if a.dim() == 5:  # LoCon's convolution
                layer = row_conv_class()(base, self.routing, a, b, scaling)
            else:
                layer = row_linear_class()(base, self.routing, a, b, scaling, magnitude)
            self._replaced.append(replace_layer(unet, name, layer))

    def _unload(self) -> None:
        if self._loaded:
            self.pipe.unload_lora_weights()
            self._loaded = False

    # ---- batches -----------------------------------------------------------------------------------------
    def _render_batch(self, batch: list[tuple[int, RenderCell]], guidance: float, embeds: dict) -> list:
        pairs = [embeds[(k, c.prompt, c.text_scales)] for k, c in batch]
        self.routing.set([k for k, _ in batch], [c.unet_scale for _, c in batch])
        try:
            return render_pictures(self.pipe, self.options, [c for _, c in batch], pairs, guidance)
        finally:
            self.routing.set(None, [])


def _unet_stacks(unet, names: list[str]) -> dict:
    """Per adapted layer of the UNet, the configurations' adapters stacked (zero padded to the largest rank).

    Returns:
        Layer name -> (``A`` ``(K, R, in[, kh, kw])``, ``B`` ``(K, out, R[, 1, 1])``, scaling ``(K,)``, DoRA's
        magnitudes ``(K, out)`` or None): linear layers' LoRA and DoRA, and LoCon's convolutions.

    Raises:
        NotPackable: An adapter is LoHa or LoKr, or DoRA on a convolution.
    """
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    stacks = {}
    for layer_name, module in unet.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        mine = [n for n in names if n in getattr(module, "scaling", {})]
        if not mine:
            continue
        base = module.get_base_layer()
        if not isinstance(module, LoraLayer) or not isinstance(base, torch.nn.Linear | torch.nn.Conv2d):
            raise NotPackable(f"{layer_name}: {type(module).__name__} adapters render alone (LoHa, LoKr)")
        dora = [n for n in mine if n in module.lora_magnitude_vector]
        if dora and isinstance(base, torch.nn.Conv2d):
            raise NotPackable(f"{layer_name}: DoRA on convolutions renders alone")
        rank = max(module.lora_A[n].weight.shape[0] for n in mine)
        device, dtype = base.weight.device, base.weight.dtype
        a_shape, b_shape = module.lora_A[mine[0]].weight.shape, module.lora_B[mine[0]].weight.shape
        a = torch.zeros(len(names), rank, *a_shape[1:], device=device, dtype=dtype)
        b = torch.zeros(len(names), b_shape[0], rank, *b_shape[2:], device=device, dtype=dtype)
        scaling = torch.zeros(len(names), device=device, dtype=dtype)
        magnitude = torch.zeros(len(names), b_shape[0], device=device, dtype=dtype) if dora else None
        for k, name in enumerate(names):
            if name in mine:
                r = module.lora_A[name].weight.shape[0]
                a[k, :r] = module.lora_A[name].weight.detach()
                b[k, :, :r] = module.lora_B[name].weight.detach()
                scaling[k] = module.scaling[name]
            if magnitude is not None:  # a configuration without DoRA here: the base row norms (factor 1)
                magnitude[k] = (
                    module.lora_magnitude_vector[name].weight.detach()
                    if name in dora
                    else torch.linalg.norm(base.weight.detach(), dim=1)
                )
        stacks[layer_name] = (a, b, scaling, magnitude)
    return stacks


def _dora_adapters(pipe, names: list[str]) -> list[bool]:
    """Per adapter, whether it is DoRA anywhere in the pipeline (its scale 0 is not the base model)."""
    from lora_core.family import text_encoders

    models = [pipe.unet, *(model for _, model in text_encoders(pipe))]
    held = set()
    for model in models:
        for module in model.modules():
            held |= set(getattr(module, "lora_magnitude_vector", None) or {})
    return [name in held for name in names]
