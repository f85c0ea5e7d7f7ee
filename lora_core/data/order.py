"""Which pictures and captions each micro-batch trains on: pure functions of the seed and the step.

Nothing here draws from the training's random generator, so a resumed run sees the same pictures and drops
the same captions as an uninterrupted one.
"""

from __future__ import annotations

import random
from functools import lru_cache


@lru_cache(maxsize=64)
def epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    """The seeded order in which ``epoch`` visits ``n`` pictures."""
    import torch

    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def picture_indices(micro_step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Pictures of one micro-batch: each epoch visits every picture once, in a seeded order.

    A pure function of the step, so a resumed run sees the same pictures as an uninterrupted one.

    Args:
        micro_step: Index of the micro-batch since step 0.
        batch_size: Pictures per micro-batch.
        n: Number of pictures.
        seed: Training seed.

    Returns:
        ``batch_size`` picture indices.
    """
    out = []
    for k in range(micro_step * batch_size, (micro_step + 1) * batch_size):
        epoch, position = divmod(k, n)
        out.append(epoch_order(seed, epoch, n)[position])
    return out


def caption_dropped(micro_step: int, count: int, seed: int, probability: float) -> list[bool]:
    """Which of a micro-batch's subject pictures train with the empty caption (caption dropout).

    A pure function of the step and the seed, drawn from a generator of its own: the training's random
    stream is the same with and without dropout, and a resumed run drops the same captions.

    Args:
        micro_step: Index of the micro-batch since step 0.
        count: Subject pictures in the micro-batch.
        seed: Training seed.
        probability: ``train.caption_dropout``.

    Returns:
        One flag per picture.
    """
    if probability <= 0:
        return [False] * count
    rng = random.Random(seed * 1_000_003 + micro_step * 7 + 0xCA9)
    return [rng.random() < probability for _ in range(count)]


def class_picture_rows(micro_step: int, batch_size: int, n_instance: int, n_class: int) -> list[int]:
    """The class pictures of one micro-batch (prior preservation), cycling through them in order.

    Args:
        micro_step: Index of the micro-batch since step 0.
        batch_size: Class pictures per micro-batch (as many as subject pictures).
        n_instance: Number of subject pictures (class pictures follow them in the picture list).
        n_class: Number of class pictures.

    Returns:
        ``batch_size`` indices into the subject-then-class picture list.
    """
    return [n_instance + (micro_step * batch_size + k) % n_class for k in range(batch_size)]
