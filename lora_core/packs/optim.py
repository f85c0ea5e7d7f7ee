"""One AdamW step and one gradient clipping for a whole pack, over its stacked adapter tensors.

Each tensor is ``(K, ...)``: slice *k* is configuration *k*'s. Every configuration's learning rate,
betas, epsilon, weight decay, clipping norm and bias correction become a ``(K, 1, 1)`` factor, so a step
is the same dozen operations per tensor whatever the pack's size, and slice *k* follows the update
``torch.optim.AdamW`` (foreach) makes for configuration *k* alone, up to rounding.
"""

from __future__ import annotations

import math


class PackAdamW:
    """AdamW over stacked tensors, each configuration's slice with its own hyperparameters.

    Args:
        groups: Parameter groups, each a list of stacked ``(K, ...)`` parameters: the UNet's adapters,
            then the text encoder's.
        settings: Each configuration's ``TrainSettings`` (``adam_*``; all of them train with AdamW).
    """

    def __init__(self, groups: list[list], settings: list):
        import torch

        self.groups, self.k = groups, len(settings)
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in groups for p in g}
        self.beta1 = [s.adam_beta1 for s in settings]
        self.beta2 = [s.adam_beta2 for s in settings]
        self.eps = self._factor([s.adam_epsilon for s in settings])
        self.weight_decay = [s.adam_weight_decay for s in settings]
        self.one_minus_beta1 = self._factor([1 - b for b in self.beta1])
        self.beta2_t = self._factor(self.beta2)
        self.one_minus_beta2 = self._factor([1 - b for b in self.beta2])
        self.steps = [0] * self.k  # each configuration's own step count (its bias correction; resume)

    def _factor(self, values: list[float]):
        import torch

        device = self.groups[0][0].device if self.groups and self.groups[0] else "cpu"
        return torch.tensor(values, dtype=torch.float32, device=device).view(self.k, 1, 1)

    def step(self, lrs: list[list[float]], active: list[int]) -> None:
        """One step of the ``active`` configurations; ``lrs[g][k]`` is configuration *k*'s rate in group *g*.

        The other slices get a zero rate and keep their moments: they are not in the batch.
        """
        import torch

        for k in active:
            self.steps[k] += 1
        moving = self._factor([1.0 if k in active else 0.0 for k in range(self.k)])
        bias1 = [1 - b**t if t else 1.0 for b, t in zip(self.beta1, self.steps, strict=True)]
        bias2_sqrt = self._factor(
            [math.sqrt(1 - b**t) if t else 1.0 for b, t in zip(self.beta2, self.steps, strict=True)]
        )
        lerp1 = self.one_minus_beta1 * moving
        keep2 = self.beta2_t * moving + (1 - moving)
        add2 = self.one_minus_beta2 * moving
        with torch.no_grad():
            for params, rates in zip(self.groups, lrs, strict=True):
                lr = [r if k in active else 0.0 for k, r in enumerate(rates)]
                decay = self._factor([1 - r * wd for r, wd in zip(lr, self.weight_decay, strict=True)])
                step_size = self._factor([-r / bc for r, bc in zip(lr, bias1, strict=True)])
                for p in params:
                    if p.grad is None:
                        continue
                    exp_avg, exp_avg_sq = self.state[id(p)]
                    p.mul_(decay)
                    exp_avg.lerp_(p.grad, lerp1)
                    exp_avg_sq.mul_(keep2).add_(p.grad * p.grad * add2)
                    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
                    p.add_(exp_avg / denom * step_size)

    def moments(self, stack) -> tuple:
        """The ``(exp_avg, exp_avg_sq)`` stacks of one stacked parameter."""
        return self.state[id(stack)]


def clip_pack_gradients(params: list, max_norms: list[float]) -> None:
    """Clip each configuration's gradient to its own ``train.max_grad_norm`` (0: no clipping).

    The norm is configuration *k*'s over every tensor's slice *k*, as ``torch.nn.utils.clip_grad_norm_``
    computes it alone over that configuration's parameters.
    """
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not any(m > 0 for m in max_norms):
        return
    with torch.no_grad():
        squares = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # (K,)
        limit = torch.tensor([m if m > 0 else math.inf for m in max_norms], dtype=squares.dtype)
        coef = (limit.to(squares.device) / (squares.sqrt() + 1e-6)).clamp(max=1.0).view(-1, 1, 1)
        for g in grads:
            g.mul_(coef)
