"""Group a sweep's configurations into packs: configurations trained together, one forward and backward a step.

``sweep.pack`` is the largest pack (``1``: each configuration alone; ``auto``: as many as fit, see
``lora_core.packs.pack_capacity``). Configurations share a pack when everything but the settings a pack lets
differ (``PACKABLE_FIELDS``) is equal: model, pictures, class pictures, resolution, batch, adapter targets.
A configuration that cannot join any pack runs alone, and the plan says why in one line.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import fields

from lora_core.errors import UserInputError
from lora_core.packs import PACKABLE_FIELDS, pack_capacity, pack_refusal
from lora_core.settings import TrainSettings
from sweeper.config.spec import JobSpec

log = logging.getLogger(__name__)

AUTO = "auto"


def pack_size_setting(value) -> int | None:
    """``sweep.pack`` checked: the largest pack, or None for ``auto``.

    Raises:
        UserInputError: Not a positive integer or ``auto``.
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        value = repr(value)
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1 or str(value).strip() != str(size):
        raise UserInputError(
            f"sweep.pack={value}: use a positive integer (the most configurations trained together; "
            "1 trains each alone) or auto."
        )
    return size


def lone_reason(spec: JobSpec) -> str | None:
    """Why this configuration cannot train in any pack, in one line; None when it can."""
    if spec.stop_at is not None:
        return None
    return pack_refusal([spec.settings], half_precision=_half_precision(spec.model))


def _half_precision(model) -> bool:
    """Whether the jobs load the base model in float16 or bfloat16 (``model.dtype``, ``auto`` resolved)."""
    from lora_core.models import resolve_device, resolve_dtype

    try:
        return resolve_dtype(model.dtype, resolve_device(model.device)).itemsize < 4
    except UserInputError:
        return False  # the plan's own checks name the value


def _pack_key(spec: JobSpec) -> str:
    """What configurations of one pack must share: every setting a pack cannot vary, model and pictures."""
    shared = {
        f.name: getattr(spec.settings, f.name) for f in fields(TrainSettings) if f.name not in PACKABLE_FIELDS
    }
    return json.dumps(
        [
            shared,
            spec.model.__dict__,
            str(spec.instance_dir),
            spec.class_images and spec.class_images.__dict__,
        ],
        sort_keys=True,
        default=str,
    )


def plan_packs(
    specs: list[JobSpec], names: list[str], size: int | None, parallel: int = 1
) -> tuple[list[dict], dict[str, str]]:
    """Which configurations may train together, and how many at most.

    Args:
        specs: Every job's checked values, in plan order.
        names: Their run folder names.
        size: The largest pack (``sweep.pack``), None for ``auto``.
        parallel: Jobs the launcher runs at once: ``auto`` spreads a group over that many packs at least.

    Returns:
        The pack groups (``{"members": run folder names, "largest": n, "spread": least packs}``: any of its
        members may share a pack) and, for the jobs that run alone though packing is on, why.
    """
    alone: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for spec, name in zip(specs, names, strict=True):
        reason = lone_reason(spec) if size != 1 else None
        if reason:
            alone[name] = reason
        else:
            groups.setdefault(_pack_key(spec), []).append(name)
    by_name = dict(zip(names, specs, strict=True))
    planned = []
    for members in groups.values():
        largest = size if size is not None else pack_capacity_of(by_name[members[0]])
        planned.append({"members": members, "largest": largest, "spread": parallel if size is None else 1})
    return planned, alone


def split_packs(groups: list[dict], names: list[str]) -> list[list[str]]:
    """``names`` (all of a sweep's configurations, or a halving rung's) in packs, in the order given.

    Each group's names among them make as few packs as its ``largest`` allows (at least ``spread``), of
    sizes that differ by one at most; a name in no group is a pack of its own.
    """
    packs = []
    for group in groups:
        members = [n for n in names if n in group["members"]]
        if members:
            count = max(
                math.ceil(len(members) / max(1, group["largest"])), min(group["spread"], len(members))
            )
            packs += _split(members, count)
    grouped = {n for pack in packs for n in pack}
    packs += [[n] for n in names if n not in grouped]
    order = {name: i for i, name in enumerate(names)}
    packs.sort(key=lambda pack: order[pack[0]])
    return packs


def pack_capacity_of(spec: JobSpec) -> int:
    """``auto``'s largest pack for this configuration's model, resolution and batch."""
    from pathlib import Path

    from sweeper.config.embedded_models import TINY_SPECS, WORLD

    if spec.model.path == WORLD:
        from lora_core.embedded.world_weights import verified_world_dir

        folder = verified_world_dir()[0] / "sd"
    else:
        folder = Path(spec.model.path).expanduser() if spec.model.path not in TINY_SPECS else None
    return pack_capacity(spec.settings, folder, spec.model.device)


def _split(members: list[str], count: int) -> list[list[str]]:
    """``members`` in ``count`` packs of sizes that differ by one at most, in order."""
    base, extra = divmod(len(members), count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        out.append(members[start:end])
        start = end
    return out


def describe_packs(packs: list[list[str]], alone: dict[str, str]) -> list[str]:
    """One line per pack of several configurations and per configuration that runs alone for a reason."""
    lines = [
        f"pack {i}: {len(p)} configurations trained together ({', '.join(p)})"
        for i, p in enumerate(packs)
        if len(p) > 1
    ]
    lines += [f"{name} runs alone: {reason}" for name, reason in alone.items()]
    return lines
