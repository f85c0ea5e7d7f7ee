"""Packed LoRA layers: one frozen ``nn.Linear`` with a stack of per-configuration adapters.

A pack's batch holds each configuration's samples in its own contiguous slice. A ``PackedLinear`` applies
configuration *i*'s ``B_i A_i`` (times its scale) only to slice *i*, with two batched matrix products over
the adapters, kept stacked in one tensor each: the launches do not grow with the pack's size, and the
frozen weight is read once.
Ranks that differ are padded to the largest with zero rows of ``A`` and zero columns of ``B``, which get
zero gradients and so stay zero under every optimizer this project uses on packs.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field


def replace_layer(model, name: str, layer) -> tuple:
    """Put ``layer`` where ``model``'s submodule ``name`` is; returns what ``restore_layers`` puts back."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    base = getattr(parent, child)
    setattr(parent, child, layer)
    return parent, child, base


def dropout_generators(dropouts: list[float], states: list) -> dict:
    """``PackRouting.dropout`` of a pack: for each configuration with adapter dropout, (p, its generator).

    Alone, adapter dropout draws from the global generator after the LoRA init; in a pack each configuration
    draws from its own generator, started at ``states[k]``: where the global one stood after its init.
    """
    import torch

    out = {}
    for k, (p, state) in enumerate(zip(dropouts, states, strict=True)):
        if p:
            generator = torch.Generator("cpu")
            generator.set_state(state)
            out[k] = (p, generator)
    return out


def restore_layers(replaced: list) -> None:
    """Put back the layers ``replace_layer`` took out (last replaced first)."""
    for parent, child, base in reversed(replaced):
        setattr(parent, child, base)
    replaced.clear()


@dataclass
class PackRouting:
    """Which configurations are in the batch, in slice order (shared by every packed layer of a model).

    Attributes:
        active: Indices of the configurations whose slices make up the batch, in order; empty: the layers
            add nothing (the base model alone).
        dropout: Configuration index -> (its adapter dropout, its generator) for those that use dropout:
            in training, each draws its masks from its own generator, in the order it would alone.
    """

    active: list[int] = field(default_factory=list)
    dropout: dict = field(default_factory=dict)
    _index: dict = field(default_factory=dict, repr=False)  # (active set, device) -> its index, built once

    def select(self, *stacks) -> tuple:
        """The stacks' rows of the active configurations, in slice order (the stacks themselves when all are)."""
        import torch

        if self.active == list(range(stacks[0].shape[0])):
            return stacks
        key = (tuple(self.active), stacks[0].device)
        if key not in self._index:
            self._index[key] = torch.tensor(self.active, device=stacks[0].device)
        return tuple(stack.index_select(0, self._index[key]) for stack in stacks)

    def adapter_inputs(self, x, training: bool, *stacks) -> tuple | None:
        """What a packed layer's adapters take, or None when no configuration is active.

        The active configurations' rows of ``stacks`` (``select``), then ``x``, through each configuration's
        dropout in training (``drop``).
        """
        if not self.active:
            return None
        return (*self.select(*stacks), self.drop(x) if training else x)

    def drop(self, x):
        """``x`` with each active configuration's slice through its own dropout (unchanged where it has none)."""
        import torch

        if not self.dropout or not any(k in self.dropout for k in self.active):
            return x
        parts = list(x.chunk(len(self.active)))
        for i, k in enumerate(self.active):
            if k in self.dropout:
                p, generator = self.dropout[k]
                # what torch.nn.functional.dropout draws: a Bernoulli mask of the slice, scaled by 1 / (1 - p)
                mask = torch.empty_like(parts[i]).bernoulli_(1 - p, generator=generator).div_(1 - p)
                parts[i] = parts[i] * mask
        return torch.cat(parts)

    def dropped(self) -> list[bool]:
        """Per active configuration, in slice order: whether its slice goes through its own dropout."""
        return [k in self.dropout for k in self.active]

    @contextlib.contextmanager
    def dropout_as_global(self, k: int):
        """Hold configuration ``k``'s dropout generator as the global one (what a checkpoint saves and loads)."""
        import torch

        generator = self.dropout.get(k, (0.0, None))[1]
        if generator is None:
            yield
            return
        saved = torch.get_rng_state()
        torch.set_rng_state(generator.get_state())
        try:
            yield
        finally:
            generator.set_state(torch.get_rng_state())
            torch.set_rng_state(saved)


@functools.cache
def packed_linear_class():
    """The ``PackedLinear`` module class (defined once, on first use: importing this module needs no torch)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class PackedLinear(nn.Module):
        """A frozen linear layer plus one low-rank adapter per configuration, each on its batch slice.

        With ``magnitude`` the adapters are DoRA's, computed as peft's ``DoraLinearLayer`` does alone: each
        output row of ``W + s B A`` rescaled to its learned magnitude, the row norms held constant in the
        backward pass (the DoRA paper's section 4.3).

        Args:
            base: The frozen layer.
            routing: The model's shared routing.
            lora_a: Every configuration's ``A``, ``(K, R, in)`` at the pack's largest rank ``R`` (zero
                padded; zeros for a configuration that does not adapt this model).
            lora_b: Every configuration's ``B``, ``(K, out, R)``.
            scales: Each configuration's alpha / rank.
            magnitude: DoRA: every configuration's magnitudes, ``(K, out)``; None for LoRA.
        """

        def __init__(
            self, base: nn.Linear, routing: PackRouting, lora_a, lora_b, scales: list[float], magnitude=None
        ):
            super().__init__()
            self.base, self.routing = base, routing
            self.lora_A, self.lora_B = lora_a, lora_b  # (K, R, in), (K, out, R); trained by the pack
            self.magnitude = magnitude  # (K, out) or None; trained by the pack
            self.scales = torch.tensor(scales, dtype=lora_a.dtype, device=lora_a.device).view(-1, 1, 1)

        def forward(self, x):
            y = self.base(x)  # the frozen layer takes the undropped input
            stacks = (self.lora_A, self.lora_B, self.scales)
            if self.magnitude is not None:
                stacks += (self.magnitude,)
            inputs = self.routing.adapter_inputs(x, self.training, *stacks)
            if inputs is None:
                return y
            if self.magnitude is not None:
                return y + self._dora(y, *inputs).reshape(y.shape).to(y.dtype)
            a, b, scales, x = inputs
            slices = x.reshape(a.shape[0], -1, x.shape[-1]).to(a.dtype)  # (K, rows of a slice, in)
            # the scale goes on A, the smallest tensor, rather than on the (K, rows, out) product
            delta = torch.bmm(torch.bmm(slices, (a * scales).transpose(1, 2)), b.transpose(1, 2))
            return y + delta.reshape(y.shape).to(y.dtype)

        def _dora(self, y, a, b, scales, magnitude, x):
            """DoRA's addition to the base output, ``(K, rows of a slice, out)``, ``x`` through each dropout."""
            k, weight, bias = a.shape[0], self.base.weight, self.base.bias
            with torch.no_grad():  # ||W + s B A|| of each output row, a constant for the backward pass
                lora_weight = torch.bmm(b, a).to(x.dtype)  # (K, out, in)
                norm = torch.linalg.norm(weight.to(x.dtype) + scales.to(x.dtype) * lora_weight, dim=2)
            scale = (magnitude / norm).unsqueeze(1)  # (K, 1, out)
            slices = x.reshape(k, -1, x.shape[-1])
            lora = torch.bmm(torch.bmm(slices.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2))
            # the base output without its bias: the frozen layer's own, or (alone with dropout, as peft
            # does) the layer on the dropped input
            base = (y if bias is None else y - bias).reshape(k, -1, y.shape[-1])
            dropped = self.routing.dropped() if self.training else []
            if any(dropped):
                on_dropped = functional.linear(slices, weight)
                where = torch.tensor(dropped, device=y.device).view(-1, 1, 1)
                base = torch.where(where, on_dropped, base)
            return (scale - 1) * base + scale * lora * scales

    return PackedLinear


@dataclass
class RowRouting:
    """Which configuration's adapter, at which scale, each picture of a rendering batch takes.

    Attributes:
        rows: Per picture, its configuration's index; None: the layers add nothing.
        scales: Per picture, its UNet scale.
    """

    rows: list[int] | None = None
    scales: list[float] = field(default_factory=list)
    _tensors: tuple | None = None

    def set(self, rows: list[int] | None, scales: list[float]) -> None:
        """Route the next batch (the tensors are made on first use, on the layers' device)."""
        self.rows, self.scales, self._tensors = rows, list(scales), None

    def tensors(self, device, dtype, batch: int) -> tuple:
        """(rows, scales) as tensors, repeated to ``batch`` (classifier-free guidance doubles the batch)."""
        import torch

        if self._tensors is None or self._tensors[0].device != device or self._tensors[0].shape[0] != batch:
            reps = batch // len(self.rows)
            rows = torch.tensor(self.rows * reps, device=device)
            scales = torch.tensor(self.scales * reps, device=device, dtype=dtype)
            self._tensors = (rows, scales)
        return self._tensors


def picture_factors(routing: RowRouting, scaling, batch: int) -> tuple:
    """(each picture's configuration, its UNet scale times its configuration's alpha / rank in a layer).

    Args:
        routing: The batch's ``RowRouting``.
        scaling: The layer's alpha / rank of each configuration, ``(K,)``.
        batch: Pictures in the batch (classifier-free guidance doubles it).
    """
    rows, scales = routing.tensors(scaling.device, scaling.dtype, batch)
    return rows, scales * scaling[rows]


@functools.cache
def row_linear_class():
    """The ``RowPackedLinear`` module class: each picture of a batch with its own configuration's adapter."""
    import torch
    from torch import nn

    class RowPackedLinear(nn.Module):
        """A frozen linear layer plus one adapter per configuration, chosen per picture (rendering a pack).

        With ``magnitude`` the adapters are DoRA's: each picture's rows of ``W + u s B A`` (``u`` its UNet
        scale) rescaled to its configuration's magnitudes, as peft's ``DoraLinearLayer`` computes at a scale.

        Args:
            base: The frozen layer.
            routing: The model's shared ``RowRouting``.
            lora_a: Every configuration's ``A``, ``(K, R, in)`` (zero padded to the largest rank).
            lora_b: Every configuration's ``B``, ``(K, out, R)``.
            scaling: Each configuration's alpha / rank in this layer, ``(K,)``.
            magnitude: DoRA: every configuration's magnitudes, ``(K, out)``; None for LoRA.
        """

        def __init__(self, base: nn.Linear, routing: RowRouting, lora_a, lora_b, scaling, magnitude=None):
            super().__init__()
            self.base, self.routing = base, routing
            self.lora_A, self.lora_B, self.scaling, self.magnitude = lora_a, lora_b, scaling, magnitude
            self._dora_scales: tuple | None = None  # (rows tensor, its pictures' magnitude / row norm)

        def forward(self, x):
            y = self.base(x)
            if self.routing.rows is None:
                return y
            a, b = self.lora_A, self.lora_B
            rows, factor = picture_factors(self.routing, self.scaling, x.shape[0])
            factor = factor.view(-1, 1, 1)
            samples = x.reshape(x.shape[0], -1, x.shape[-1]).to(a.dtype)  # (pictures, tokens, in)
            if self.magnitude is None:
                delta = torch.bmm(
                    torch.bmm(samples, (a[rows] * factor).transpose(1, 2)), b[rows].transpose(1, 2)
                )
                return y + delta.reshape(y.shape).to(y.dtype)
            lora = torch.bmm(torch.bmm(samples, a[rows].transpose(1, 2)), b[rows].transpose(1, 2))
            dora = self._dora_scale(rows, factor.view(-1))  # (pictures, 1, out)
            base = y if self.base.bias is None else y - self.base.bias
            base = base.reshape(lora.shape).to(a.dtype)
            delta = (dora - 1) * base + dora * lora * factor
            return y + delta.reshape(y.shape).to(y.dtype)

        def _dora_scale(self, rows, factor):
            """Each picture's magnitude over its row norms of ``W + u s B A`` (once per batch's routing)."""
            if self._dora_scales is not None and self._dora_scales[0] is rows:
                return self._dora_scales[1]
            weight = self.base.weight.to(self.lora_A.dtype)
            keys = list(
                zip(rows.tolist(), factor.tolist(), strict=True)
            )  # (configuration, scale) per picture
            norms = {}
            for k, f in dict.fromkeys(keys):
                lora_weight = self.lora_B[k] @ self.lora_A[k]
                norms[(k, f)] = torch.linalg.norm(weight + f * lora_weight, dim=1)
            norm = torch.stack([norms[key] for key in keys])
            scale = (self.magnitude[rows] / norm).unsqueeze(1)
            self._dora_scales = (rows, scale)
            return scale

    return RowPackedLinear


@functools.cache
def row_conv_class():
    """The ``RowPackedConv2d`` module class: LoCon's convolutions, each picture with its own adapter."""
    from torch import nn
    from torch.nn import functional

    class RowPackedConv2d(nn.Module):
        """A frozen convolution plus one LoCon adapter per configuration, chosen per picture (rendering a pack).

        The pictures become channel groups: ``A`` and ``B`` run as grouped convolutions, each picture's group
        with its configuration's weights at its scale.

        Args:
            base: The frozen convolution (groups 1, dilation 1).
            routing: The model's shared ``RowRouting``.
            lora_a: Every configuration's ``A``, ``(K, R, in, kh, kw)`` (zero padded to the largest rank).
            lora_b: Every configuration's ``B``, ``(K, out, R, 1, 1)``.
            scaling: Each configuration's alpha / rank in this layer, ``(K,)``.
        """

        def __init__(self, base: nn.Conv2d, routing: RowRouting, lora_a, lora_b, scaling):
            super().__init__()
            if base.groups != 1 or tuple(base.dilation) != (1, 1):
                raise ValueError("packed convolutions need groups=1 and dilation=1")
            self.base, self.routing = base, routing
            self.lora_A, self.lora_B, self.scaling = lora_a, lora_b, scaling

        def forward(self, x):
            y = self.base(x)
            if self.routing.rows is None:
                return y
            a, b = self.lora_A, self.lora_B
            rows, factor = picture_factors(self.routing, self.scaling, x.shape[0])
            factor = factor.view(-1, 1, 1, 1, 1)
            pictures = x.shape[0]
            grouped = x.reshape(1, -1, *x.shape[2:]).to(a.dtype)  # (1, pictures x in, h, w)
            weights = (a[rows] * factor).reshape(-1, *a.shape[2:])  # (pictures x R, in, kh, kw)
            hidden = functional.conv2d(
                grouped, weights, stride=self.base.stride, padding=self.base.padding, groups=pictures
            )
            out = functional.conv2d(hidden, b[rows].reshape(-1, *b.shape[2:]), groups=pictures)
            return y + out.reshape(y.shape).to(y.dtype)

    return RowPackedConv2d


@functools.cache
def packed_conv_class():
    """The ``PackedConv2d`` module class: LoCon's adapted convolutions in a pack."""
    import torch
    from torch import nn
    from torch.nn import functional

    class PackedConv2d(nn.Module):
        """A frozen convolution plus one LoCon adapter per configuration, each on its batch slice.

        The configurations' slices become channel groups: ``A`` (a convolution like the base one, to rank
        ``R``) and ``B`` (1 x 1, back to the output channels) each run as one grouped convolution for the
        whole pack, as ``PackedLinear``'s batched products do.

        Args:
            base: The frozen convolution (groups 1, dilation 1).
            routing: The model's shared routing.
            lora_a: Every configuration's ``A``, ``(K, R, in, kh, kw)`` (zero padded to the largest rank).
            lora_b: Every configuration's ``B``, ``(K, out, R, 1, 1)``.
            scales: Each configuration's alpha / rank in this layer.
        """

        def __init__(self, base: nn.Conv2d, routing: PackRouting, lora_a, lora_b, scales: list[float]):
            super().__init__()
            if base.groups != 1 or tuple(base.dilation) != (1, 1):
                raise ValueError("packed convolutions need groups=1 and dilation=1")
            self.base, self.routing = base, routing
            self.lora_A, self.lora_B = lora_a, lora_b
            self.scales = torch.tensor(scales, dtype=lora_a.dtype, device=lora_a.device)

        def forward(self, x):
            y = self.base(x)  # the frozen layer takes the undropped input
            inputs = self.routing.adapter_inputs(x, self.training, self.lora_A, self.lora_B, self.scales)
            if inputs is None:
                return y
            a, b, scales, x = inputs
            k = a.shape[0]
            n, channels = x.shape[0] // k, x.shape[1]
            grouped = (
                x.reshape(k, n, channels, *x.shape[2:]).transpose(0, 1).reshape(n, k * channels, *x.shape[2:])
            )
            a = (a * scales.view(-1, 1, 1, 1, 1)).reshape(-1, *a.shape[2:])  # (K R, in, kh, kw)
            hidden = functional.conv2d(
                grouped.to(a.dtype), a, stride=self.base.stride, padding=self.base.padding, groups=k
            )
            out = functional.conv2d(hidden, b.reshape(-1, *b.shape[2:]), groups=k)  # (n, K out, h, w)
            delta = out.reshape(n, k, -1, *out.shape[2:]).transpose(0, 1).reshape(y.shape)
            return y + delta.to(y.dtype)

    return PackedConv2d
