"""Packed LoRA layers: one frozen ``nn.Linear`` with a stack of per-configuration adapters.

A pack's batch holds each configuration's samples in its own contiguous slice. A ``PackedLinear`` applies
configuration *i*'s ``B_i A_i`` (times its scale) only to slice *i*, with two batched matrix products over
the stacked adapters: the launches do not grow with the pack's size, and the frozen weight is read once.
Ranks that differ are padded to the largest with zero rows of ``A`` and zero columns of ``B``, which get
zero gradients and so stay zero under every optimizer this project uses on packs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PackRouting:
    """Which configurations are in the batch, in slice order (shared by every packed layer of a model).

    Attributes:
        active: Indices of the configurations whose slices make up the batch, in order; empty: the layers
            add nothing (the base model alone).
    """

    active: list[int] = field(default_factory=list)


def packed_linear_class():
    """The ``PackedLinear`` module class (defined on first use, so importing this module needs no torch)."""
    global _PACKED_LINEAR
    if _PACKED_LINEAR is None:
        _PACKED_LINEAR = _define_packed_linear()
    return _PACKED_LINEAR


_PACKED_LINEAR = None


def _define_packed_linear():
    import torch
    from torch import nn

    class PackedLinear(nn.Module):
        """A frozen linear layer plus one low-rank adapter per configuration, each on its batch slice.

        Args:
            base: The frozen layer.
            routing: The model's shared routing.
            weights: Per configuration, ``(A, B, scale)``: ``A`` is ``(R, in)`` and ``B`` is ``(out, R)`` at
                the pack's largest rank ``R`` (zero padded), ``scale`` is alpha / the configuration's rank.
                ``A`` and ``B`` are the trainable parameters (or zero tensors for a configuration that does
                not adapt this model).
        """

        def __init__(self, base: nn.Linear, routing: PackRouting, weights: list[tuple]):
            super().__init__()
            self.base, self.routing = base, routing
            self.lora_A = [a for a, _, _ in weights]  # owned by each configuration's optimizer, not here
            self.lora_B = [b for _, b, _ in weights]
            self.scales = [float(s) for _, _, s in weights]
            self._scales: dict[tuple, torch.Tensor] = {}  # active set -> (K, 1, 1) scales, built once

        def forward(self, x):
            y = self.base(x)
            active = self.routing.active
            if not active:
                return y
            k, key = len(active), tuple(active)
            a = torch.stack([self.lora_A[i] for i in active])  # (K, R, in)
            b = torch.stack([self.lora_B[i] for i in active])  # (K, out, R)
            if key not in self._scales:
                values = torch.tensor([self.scales[i] for i in active], dtype=a.dtype)
                self._scales[key] = values.to(a.device).view(k, 1, 1)
            slices = x.reshape(k, -1, x.shape[-1]).to(a.dtype)  # (K, rows of a slice, in)
            delta = torch.bmm(torch.bmm(slices, a.transpose(1, 2)), b.transpose(1, 2)) * self._scales[key]
            return y + delta.reshape(y.shape).to(y.dtype)

    return PackedLinear
