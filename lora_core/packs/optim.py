"""One AdamW step and one gradient clipping for a whole pack, over flat buffers of its adapters.

Every stacked adapter tensor of one model (``(K, ...)``: slice *k* is configuration *k*'s) is a view into
one flat ``(K, N)`` buffer, and so is its gradient (``FlatStacks``). Every configuration's learning rate,
betas, epsilon, weight decay, clipping norm and bias correction become a ``(K, 1)`` factor, so a step is a
dozen operations per model whatever the pack's size and the number of adapted layers, and row *k* follows
the update ``torch.optim.AdamW`` makes for configuration *k* alone, up to rounding (``step_together``).
Other optimizers, the EMA and fp16's loss scaling step each configuration on its own (``step_alone``).
"""

from __future__ import annotations

import math


class FlatStacks:
    """The stacked adapter tensors of one model as views into one ``(K, N)`` buffer, their gradients too.

    Args:
        k: Configurations in the pack.
        shapes: Each stacked tensor's shape without its leading ``K``, in order.
        device: Where the buffers live.
    """

    def __init__(self, k: int, shapes: list[tuple[int, ...]], device):
        import torch

        sizes = [math.prod(shape) for shape in shapes]
        self.data = torch.zeros(k, sum(sizes), device=device)
        self.grad = torch.zeros_like(self.data)
        self.stacks, self.offsets = [], []
        offset = 0
        for shape, size in zip(shapes, sizes, strict=True):
            stack = torch.nn.Parameter(self.data[:, offset : offset + size].view(k, *shape))
            self.stacks.append(stack)
            self.offsets.append((offset, size, shape))
            offset += size
        self.attach_grads()

    def attach_grads(self) -> None:
        """Point each stack's ``.grad`` at its part of the gradient buffer (backward adds into it)."""
        for stack, part in zip(self.stacks, self.parts(self.grad), strict=True):
            stack.grad = part

    def parts(self, buffer) -> list:
        """``buffer`` (``(K, N)``: the data, the gradient or a moment) cut into the stacks' shapes."""
        return [self.part(buffer, i) for i in range(len(self.offsets))]

    def part(self, buffer, i: int):
        """Stack ``i``'s part of ``buffer``, in its shape (a view)."""
        o, n, shape = self.offsets[i]
        return buffer[:, o : o + n].view(buffer.shape[0], *shape)


class PackAdamW:
    """AdamW over flat buffers, each configuration's row with its own hyperparameters.

    Args:
        groups: The models' ``FlatStacks``: the UNet's adapters, then the text encoder's.
        settings: Each configuration's ``TrainSettings`` (``adam_*``; all of them train with AdamW).
    """

    def __init__(self, groups: list[FlatStacks], settings: list):
        import torch

        self.groups, self.k = groups, len(settings)
        self.state = [(torch.zeros_like(g.data), torch.zeros_like(g.data)) for g in groups]
        self.beta1 = [s.adam_beta1 for s in settings]
        self.beta2 = [s.adam_beta2 for s in settings]
        self.eps = self._factor([s.adam_epsilon for s in settings])
        self.weight_decay = [s.adam_weight_decay for s in settings]
        self.one_minus_beta1 = self._factor([1 - b for b in self.beta1])
        self.beta2_t = self._factor(self.beta2)
        self.one_minus_beta2 = self._factor([1 - b for b in self.beta2])
        self.steps = [0] * self.k  # each configuration's own step count (its bias correction; resume)
        # each stacked tensor's group and index, so a checkpoint finds its moments in one look-up
        self._where = {
            id(stack): (g, i) for g, group in enumerate(groups) for i, stack in enumerate(group.stacks)
        }

    def _factor(self, values: list[float]):
        import torch

        device = self.groups[0].data.device if self.groups else "cpu"
        return torch.tensor(values, dtype=torch.float32, device=device).view(self.k, 1)

    def step(self, lrs: list[list[float]], active: list[int]) -> None:
        """One step of the ``active`` configurations; ``lrs[g][k]`` is configuration *k*'s rate in group *g*.

        The other rows get a zero rate and keep their moments: they are not in the batch.
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
            for group, (exp_avg, exp_avg_sq), rates in zip(self.groups, self.state, lrs, strict=True):
                lr = [r if k in active else 0.0 for k, r in enumerate(rates)]
                decay = self._factor([1 - r * wd for r, wd in zip(lr, self.weight_decay, strict=True)])
                step_size = self._factor([-r / bc for r, bc in zip(lr, bias1, strict=True)])
                p, grad = group.data, group.grad
                p.mul_(decay)
                exp_avg.lerp_(grad, lerp1)
                exp_avg_sq.mul_(keep2).add_(grad * grad * add2)
                denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
                p.add_(exp_avg / denom * step_size)

    def moments_of(self, stack) -> tuple:
        """The ``(exp_avg, exp_avg_sq)`` of one stacked tensor, in its shape (views of the buffers)."""
        if id(stack) not in self._where:
            raise KeyError("not a stack of this pack")
        g, i = self._where[id(stack)]
        exp_avg, exp_avg_sq = self.state[g]
        return self.groups[g].part(exp_avg, i), self.groups[g].part(exp_avg_sq, i)

    def save_into(self, k: int, optimizer, params: list, slices: list) -> None:
        """Put configuration ``k``'s part of the moments into its own ``torch.optim.AdamW``'s state.

        Args:
            k: The configuration.
            optimizer: Its own optimizer, over ``params``.
            params: Its own parameters (views of its part of the stacks).
            slices: Per parameter, (checkpoint name, stack, index of its part).
        """
        import torch

        for param, (_, stack, where) in zip(params, slices, strict=True):
            exp_avg, exp_avg_sq = self.moments_of(stack)
            optimizer.state[param] = {
                "step": torch.tensor(float(self.steps[k])),
                "exp_avg": exp_avg[where].clone(),
                "exp_avg_sq": exp_avg_sq[where].clone(),
            }

    def load_from(self, k: int, steps: int, optimizer, params: list, slices: list) -> None:
        """Take configuration ``k``'s moments from its own optimizer's state (a resumed checkpoint's)."""
        import torch

        self.steps[k] = steps
        with torch.no_grad():
            for param, (_, stack, where) in zip(params, slices, strict=True):
                state = optimizer.state.get(param)
                if state:
                    for mine, saved in zip(
                        self.moments_of(stack), (state["exp_avg"], state["exp_avg_sq"]), strict=True
                    ):
                        mine[where].copy_(saved)


def clip_pack_gradients(grads: list, max_norms: list[float]) -> None:
    """Clip each configuration's gradient to its own ``train.max_grad_norm`` (0: no clipping).

    Args:
        grads: The gradient buffers, each ``(K, N)``: row *k* is configuration *k*'s.
        max_norms: Each configuration's limit. The norm is configuration *k*'s over every buffer's row
            *k*, as ``torch.nn.utils.clip_grad_norm_`` computes it alone over its parameters.
    """
    import torch

    if not grads or not any(m > 0 for m in max_norms):
        return
    with torch.no_grad():
        squares = torch.stack([g.pow(2).sum(1) for g in grads]).sum(0)  # (K,)
        limit = torch.tensor([m if m > 0 else math.inf for m in max_norms], dtype=squares.dtype)
        coef = (limit.to(squares.device) / (squares.sqrt() + 1e-6)).clamp(max=1.0).view(-1, 1)
        for g in grads:
            g.mul_(coef)


def step_together(
    adamw: PackAdamW,
    flats: list[FlatStacks],
    groups: list[list[int | None]],
    settings: list,
    optimizers: list,
    schedules: list,
    active,
):
    """Clip and step every active configuration at once (``PackAdamW``), each at its schedule's rate.

    Args:
        adamw: The pack's optimizer.
        flats: The models' ``FlatStacks`` (their gradients filled by the backward).
        groups: Per flat, each configuration's optimizer group of that model (None: it does not adapt it).
        settings: Each configuration's ``TrainSettings`` (its clipping norm).
        optimizers: Each configuration's own optimizer: its rates (and its checkpoint's state).
        schedules: Each configuration's schedule, stepped for its next rates.
        active: The configurations that step.
    """
    import re
    import warnings

    from lora_core.training.recipe import step_sizes

    clip_pack_gradients([flat.grad for flat in flats], [s.max_grad_norm for s in settings])
    now = [step_sizes(optimizer) for optimizer in optimizers]
    # each model's rate of each configuration (0 for a text encoder that one keeps frozen)
    adamw.step([[0.0 if g is None else r[g] for g, r in zip(of, now, strict=True)] for of in groups], active)
    with warnings.catch_warnings():  # torch's warning that the (unused) optimizer of k did not step
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        for k in active:
            schedules[k].step()  # the optimizer's rates for the next step (and its checkpoint)


def step_alone(settings, optimizer, schedule, ema, params: list, slices: list) -> None:
    """One configuration's own clipping, optimizer, schedule and EMA step, on its slices of the stacks.

    Under fp16, as ``accelerator.clip_grad_norm_`` and the accelerated optimizer do alone: the gradients are
    unscaled before clipping; an overflow skips the optimizer's step and its schedule's, and the scaler
    backs off; only this configuration's.

    Args:
        settings: Its ``TrainSettings``.
        optimizer: Its accelerated optimizer (``.scaler``: its gradient scaler under fp16, else None).
        schedule: Its accelerated schedule.
        ema: Its EMA of the weights, or None.
        params: Its parameters: views of its rows and columns of the stacks.
        slices: (name, stack, index) of each parameter: where its gradient is in the stack's.
    """
    import torch

    for view, (_, stack, where) in zip(params, slices, strict=True):
        view.grad = stack.grad[where]
    if settings.max_grad_norm > 0:
        if optimizer.scaler is not None:
            optimizer.scaler.unscale_(optimizer.optimizer)
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.step(params)
