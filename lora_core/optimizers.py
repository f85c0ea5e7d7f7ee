"""Build the training optimizer by name, each from its maintained library.

``adamw`` is torch's; the others are optional extras of this package (``pip install
'lora-sweeps[prodigy]'`` ...), imported only when chosen, so a missing one is a one-line error before
training starts, not an ImportError in the middle of a sweep.
"""

from __future__ import annotations

from lora_core.errors import UserInputError
from lora_core.settings import Hyperparameters

# optimizer -> (module to import, pip extra that installs it)
_LIBRARIES = {
    "adamw8bit": ("bitsandbytes", "bnb"),
    "prodigy": ("prodigyopt", "prodigy"),
    "adafactor": ("transformers", None),  # a dependency already
    "schedulefree_adamw": ("schedulefree", "schedulefree"),
}


def check_optimizer(settings: Hyperparameters, device_type: str) -> None:
    """Refuse an optimizer that cannot run here, before any work is done.

    Args:
        settings: The training hyperparameters.
        device_type: ``cuda``, ``cpu``, ``mps`` ...

    Raises:
        UserInputError: The optimizer needs CUDA, or its library is not installed.
    """
    import importlib.util

    name = settings.optimizer
    if name == "adamw8bit" and device_type != "cuda":
        raise UserInputError(
            f"train.optimizer=adamw8bit: bitsandbytes' 8-bit AdamW runs on CUDA only and this job runs on "
            f"{device_type}; use train.optimizer=adamw (or adafactor to save memory) here."
        )
    module, extra = _LIBRARIES.get(name, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise UserInputError(
            f"train.optimizer={name}: needs the {module} package, which is not installed; "
            f"pip install 'lora-sweeps[{extra}]' (or pip install {module})."
        )


def make_optimizer(groups: list[dict], settings: Hyperparameters, device_type: str):
    """The optimizer ``settings.optimizer`` names, over parameter groups that each carry their ``lr``.

    Args:
        groups: ``[{"params": [...], "lr": unet_lr}, {"params": [...], "lr": text_lr}]``.
        settings: The training hyperparameters (``optimizer``, ``optim.*``, ``adam_*``).
        device_type: Where the parameters live (8-bit AdamW needs ``cuda``).

    Returns:
        A ``torch.optim.Optimizer``.

    Raises:
        UserInputError: See ``check_optimizer``.
    """
    check_optimizer(settings, device_type)
    s, name = settings, settings.optimizer
    adam = dict(betas=(s.adam_beta1, s.adam_beta2), eps=s.adam_epsilon, weight_decay=s.adam_weight_decay)
    if name == "adamw":
        import torch

        # foreach: one kernel per op over all the small LoRA tensors instead of one per tensor.
        return torch.optim.AdamW(groups, **adam, foreach=True)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **adam)
    if name == "prodigy":
        from prodigyopt import Prodigy

        p = s.optim.prodigy
        groups = [group | {"lr": p.lr} for group in groups]  # one rate: Prodigy estimates one step size
        return Prodigy(
            groups,
            **adam,
            d_coef=p.d_coef,
            d0=p.d0,
            use_bias_correction=p.use_bias_correction,
            safeguard_warmup=p.safeguard_warmup,
        )
    if name == "adafactor":
        from transformers.optimization import Adafactor

        a = s.optim.adafactor
        return Adafactor(
            groups,
            lr=s.learning_rate,
            relative_step=False,
            warmup_init=False,
            scale_parameter=a.scale_parameter,
            clip_threshold=a.clip_threshold,
            decay_rate=a.decay_rate,
            beta1=a.beta1,
            weight_decay=s.adam_weight_decay,
        )
    if name == "schedulefree_adamw":
        from schedulefree import AdamWScheduleFree

        f = s.optim.schedulefree
        return AdamWScheduleFree(
            groups, **adam, warmup_steps=s.lr_warmup_steps, r=f.r, weight_lr_power=f.weight_lr_power
        )
    raise UserInputError(f"train.optimizer={name}: unknown optimizer.")


def make_schedule(optimizer, s: Hyperparameters):
    """The learning-rate schedule of ``train.lr_scheduler`` (diffusers' ``get_scheduler``) over ``max_train_steps``."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        s.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=s.lr_warmup_steps,
        num_training_steps=s.max_train_steps,
        num_cycles=s.lr_num_cycles,
        power=s.lr_power,
    )


def set_optimizer_mode(optimizer, training: bool) -> None:
    """Switch a two-weight optimizer (schedule-free) to its training or evaluation weights; else a no-op.

    Schedule-free AdamW trains at one point and evaluates at the running average: its ``eval()`` writes
    the average into the parameters, ``train()`` swaps back. Saving, rendering and validation need the
    average.

    Args:
        optimizer: The (possibly accelerate-wrapped) optimizer.
        training: True for the training weights, False for the evaluation weights.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not hasattr(inner, "train") or not callable(getattr(inner, "eval", None)):
        return
    if training:
        inner.train()
    else:
        inner.eval()
