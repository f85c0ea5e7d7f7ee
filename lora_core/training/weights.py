"""Weight swaps and the EMA.

The trainable weights hold other values for a while (evaluation weights, the EMA), then get the training
weights back exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lora_core.optimizers import set_optimizer_mode


@contextmanager
def swapped_weights(params: list, values: list | None = None) -> Iterator[None]:
    """Put ``values`` (or whatever the block puts there) into ``params``, then restore them from a copy.

    Args:
        params: The trainable parameters.
        values: Tensors to copy in, one per parameter; None leaves that to the block.
    """
    import torch

    snapshot = [p.detach().clone() for p in params]
    if values is not None:
        with torch.no_grad():
            for p, value in zip(params, values, strict=True):
                p.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, snapshot, strict=True):
                p.copy_(saved)


@contextmanager
def evaluation_weights(params: list, optimizer) -> Iterator[None]:
    """Hold the weights that are saved and rendered, then give the training weights back exactly.

    Schedule-free AdamW evaluates at an average of its iterates (``set_optimizer_mode``); its swap back
    is not bit-exact, so the training weights are restored from a copy and a run that saves
    checkpoints trains exactly like one that does not.
    """
    with swapped_weights(params):
        set_optimizer_mode(optimizer, training=False)
        try:
            yield
        finally:
            set_optimizer_mode(optimizer, training=True)


def ema_weights(params: list, ema):
    """A context that holds the EMA weights in ``params``, then gives the training weights back exactly."""
    return swapped_weights(params, ema.shadow_params)


def make_ema(params: list, decay: float):
    """The EMA (diffusers' ``EMAModel``) over the trainable LoRA weights only.

    Its warm-up is ``min(decay, (1 + n) / (10 + n))`` at the optimizer step after ``n`` earlier ones (0 at
    the first: the average starts at the first step's weights).
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay, foreach=True)
