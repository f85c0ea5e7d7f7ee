"""The naming contract: run folders ``3e-4;1e-5[;...]``, images ``<pr>_<u>;<t>;<g>.png``, prompt short names.

Config keys name things by one rule: ``train.`` keys by their short name (``learning_rate``), every other
key as ``section.key`` (``lora.name``); ``short_key`` applies it and ``param_key`` undoes it.

Numbers get their shortest stable form (``0.9``, ``3``, ``3.6``, ``1e-4``): the same value always gives
the same name, whichever way it was typed. Every name is checked to stay inside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
from omegaconf import ListConfig

from lora_core.errors import UserInputError
from lora_core.settings import Hyperparameters

TRAIN_PREFIX = "train."
TRAIN_KEYS = [f.name for f in fields(Hyperparameters)]  # train keys by short name, in schema order
_LORA_MODULE_LISTS = ("lora.unet_target_modules", "lora.text_target_modules", "lora.conv_target_modules")

# Words that carry no content in a prompt's short name ("sitting in the pub" -> "sp").
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "from",
        "for",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "being",
        "been",
        "by",
        "as",
        "into",
        "onto",
        "over",
        "under",
        "his",
        "her",
        "its",
        "their",
        "my",
        "your",
        "our",
        "this",
        "that",
        "these",
        "those",
    ]
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.+=-]+")


def format_number(value: float | int) -> str:
    """Shortest stable text for a number: ``0.9``, ``3``, ``3.6``, ``5000``, ``1e-4``, ``2.5e-4``.

    Below 1 the scientific form is used when it is shorter (``0.0001`` -> ``1e-4``; ``0.01`` stays).

    Args:
        value: An int or float (bools are not numbers here).

    Returns:
        The text; equal values give equal text.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    plain = np.format_float_positional(value, trim="-")  # shortest digits that round-trip
    scientific = np.format_float_scientific(value, trim="-", exp_digits=1)
    return scientific if abs(value) < 1 and len(scientific) < len(plain) else plain


def format_value(value) -> str:
    """Text of any config value in a name: numbers by ``format_number``, lists joined with ``+``."""
    if isinstance(value, bool | int | float):
        return format_number(value)
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "+".join(format_value(v) for v in value)
    return _UNSAFE_CHARS.sub("_", str(value)).strip("._") or "_"


def override_value(value) -> str:
    """A config value as a command-line override writes it: ``true``, ``1e-4``, ``[25,30]``."""
    if isinstance(value, list | tuple | ListConfig):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def run_dir_name(template: str, values: Mapping, varying: Iterable[str]) -> str:
    """Name of a training configuration's folder.

    Args:
        template: Format string with ``{<train key>}`` placeholders and ``{varying}``, which becomes
            ``;<value>`` for each varying key not already in the template.
        values: The job's naming values (train keys by short name, others as ``section.key``).
        varying: Keys whose value differs between the jobs of this sweep, in order.

    Returns:
        The folder name, e.g. ``1e-4;1e-5;5000``.

    Raises:
        UserInputError: The template names an unknown key or makes an unsafe name.
    """
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    rest = "".join(f";{format_value(values[k])}" for k in varying if k not in used)
    formatted = {k: format_value(v) for k, v in values.items() if "." not in k}
    try:
        name = template.format(**formatted, varying=rest)
    except KeyError as err:
        raise UserInputError(f"sweep.run_dir_template={template!r}: {err} is not a train key.") from err
    return check_safe_name(name, "sweep.run_dir_template")


def short_key(key: str) -> str:
    """A config key as it names things: ``train.learning_rate`` -> ``learning_rate``; others unchanged."""
    return key.removeprefix(TRAIN_PREFIX)


def param_key(name: str) -> str:
    """The config key of a naming key (``short_key`` undone): ``learning_rate`` -> ``train.learning_rate``."""
    return name if "." in name else TRAIN_PREFIX + name


def train_short_keys(keys: Iterable[str]) -> list[str]:
    """The ``train.`` keys among ``keys``, by their short name (they name the run folders)."""
    return [short_key(k) for k in keys if k.startswith(TRAIN_PREFIX)]


TEXT_2_PREFIX = "t2="  # the second text encoder's scale in a name: ``t2=0.5``


def text_2_label(scale: float) -> str:
    """SDXL's second text encoder's scale as a cell's name and label show it: ``t2=0.5``."""
    return f"{TEXT_2_PREFIX}{format_number(scale)}"


def axis_name(value: str) -> str:
    """Which axis a value of a cell's label after ``unet;text;guidance`` belongs to.

    ``steps`` (a number), ``text_2`` (``t2=0.5``: SDXL's second text encoder's scale) or ``sampler``.
    """
    if value.startswith(TEXT_2_PREFIX):
        return "text_2"
    return "steps" if value.isdigit() else "sampler"


def label_keys(label: str) -> str:
    """What a cell label lists: ``unet;text;guidance``, then ``sampler`` and ``steps`` where it has them."""
    return ";".join(["unet", "text", "guidance", *(axis_name(v) for v in label.split(";")[3:])])


def cell_label(unet: float, text: float, guidance: float, axes=()) -> str:
    """A grid cell's label ``unet;text;guidance`` (``0.9;0.5;3.6``): sheet columns, scores, MLflow.

    The values of the grid's other axes that have several follow: ``0.9;0.5;3.6;euler_a;30``.
    """
    return ";".join([*(format_number(v) for v in (unet, text, guidance)), *axes])


# A second grid's folder part per render setting that differs from the first grid's (``grid_name``).
_GRID_PARTS = {
    "scheduler": lambda v: str(v),
    "samplers": lambda v: "-".join(v),
    "num_inference_steps": lambda v: f"{v}steps",
    "sampling_steps": lambda v: "-".join(str(n) for n in v) + "steps",
    "resolution": lambda v: f"{v}px",
    "negative_prompt": lambda v: f"neg-{hashlib.sha1(v.encode()).hexdigest()[:6]}" if v else "noneg",
    "weights": lambda v: str(v),
    "text_2_scales": lambda v: "-".join(text_2_label(s) for s in v).replace("=", ""),
}
_GRID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def grid_name(differs: Mapping) -> str:
    """The folder of a run's second grid, named by the render settings it draws with otherwise.

    ``{"scheduler": "euler_a", "num_inference_steps": 30}`` -> ``grid-euler_a-30steps``; a negative
    prompt by a hash of its text (``neg-1a2b3c``). Only ``[A-Za-z0-9_.-]``: the name is also the MLflow
    prefix of the grid's pictures and metrics.
    """
    parts = []
    for key, value in differs.items():
        part = _GRID_PARTS[key](value) if key in _GRID_PARTS and value is not None else f"{key}-{value}"
        parts.append(_GRID_UNSAFE.sub("_", part).strip("._") or "_")
    return "grid-" + "-".join(parts)


def grid_label(differs: Mapping) -> str:
    """How a second grid is labelled: ``render.scheduler=euler_a, render.num_inference_steps=30``."""

    def text(value) -> str:
        plain = isinstance(value, str) and (not value or re.search(r"[\s,'\"]", value))
        return repr(value) if plain else override_value(value)

    return ", ".join(f"render.{key}={text(value)}" for key, value in differs.items())


def differing_keys(rows: Sequence[Mapping], settings: bool = False) -> list[str]:
    """Keys whose value differs between runs.

    Args:
        rows: Each run's values: its naming values (keys as ``short_key`` names them), or with ``settings``
            its training settings.
        settings: The report's rule for finished runs' settings: the learning rates always come first, then
            the first run's other keys in its order, ``checkpoint_steps`` (when to save, not what is
            trained) left out. Otherwise the planner's rule: none for a single job, train keys in schema
            order then the others sorted, and a LoRA target set varies by its preset name (``lora.name``),
            not by its module lists.

    Returns:
        The keys.
    """

    def differs(key: str) -> bool:
        return len({json.dumps(r.get(key), sort_keys=True) for r in rows}) > 1

    if settings:
        keys = ["learning_rate", "text_encoder_lr"]
        return keys + [
            k for k in (rows[0] if rows else ()) if differs(k) and k not in (*keys, "checkpoint_steps")
        ]
    if len(rows) < 2:
        return []
    differ = {k for k in {k for values in rows for k in values} if differs(k)}
    if "lora.name" in differ:
        differ -= set(_LORA_MODULE_LISTS)
    train = [k for k in TRAIN_KEYS if k in differ]
    return train + sorted(differ - set(train))


def image_stem(
    template: str,
    prompt_name: str,
    unet: float,
    text: float,
    guidance: float,
    seed: int | None = None,
    index: int | None = None,
    axes: list[str] | None = None,
) -> str:
    """File stem of one image: ``sf_0.9;0.5;3.6`` (``_<seed>`` and ``-<k>`` added when there are several).

    Args:
        template: Format string with ``{pr} {unet} {text} {guidance}`` (and optionally ``{seed}``).
        prompt_name: Short name of the prompt.
        unet: UNet LoRA scale.
        text: Text-encoder LoRA scale.
        guidance: Guidance scale.
        seed: Appended as ``_<seed>`` when the grid has several seeds (unless the template has ``{seed}``).
        index: Appended as ``-<k>`` when a cell has several images.
        axes: The values of the axes that have several (sampler, then sampling steps), each appended as
            ``;<value>``: ``sf_0.9;0.5;3.6;euler_a;30``.

    Returns:
        The stem (no ``.png``).
    """
    stem = template.format(
        pr=prompt_name,
        unet=format_number(unet),
        text=format_number(text),
        guidance=format_number(guidance),
        seed="" if seed is None else seed,
    )
    stem += "".join(f";{value}" for value in axes or [])
    if seed is not None and "{seed}" not in template:
        stem += f"_{seed}"
    if index is not None:
        stem += f"-{index}"
    return check_safe_name(stem, "render.image_name")


def prompt_short_name(prompt: str) -> str:
    """Initials of the content words: ``smile face`` -> ``sf``, ``A ktn is sitting in the pub`` -> ``ksp``."""
    words = re.findall(r"[A-Za-z0-9]+", prompt.lower())
    content = [w for w in words if w not in STOP_WORDS] or words
    return "".join(w[0] for w in content) or "p"


def short_names(prompts: list[str]) -> list[str]:
    """Short names for a plain prompt list, made unique by a number suffix (``sf``, ``sf2``)."""
    names: list[str] = []
    for prompt in prompts:
        base = prompt_short_name(prompt)
        name, k = base, 2
        while name in names:
            name, k = f"{base}{k}", k + 1
        names.append(name)
    return names


def check_safe_name(name: str, key: str) -> str:
    """Refuse names that could leave the output folder or confuse a file system.

    Args:
        name: A single path component (``;`` is allowed: it is part of the contract).
        key: Config key to name in the message.

    Returns:
        The name, unchanged.

    Raises:
        UserInputError: Slashes, ``..``, control characters, leading dots or an empty name.
    """
    bad = (
        not name
        or name in (".", "..")
        or name.startswith((".", "-"))
        or any(c in name for c in '/\\:*?"<>|\0')
        or any(ord(c) < 32 for c in name)
        or len(name) > 200
    )
    if bad:
        raise UserInputError(
            f"{key}: {name!r} is not a safe file name (no slashes, '..', control characters or leading dots)."
        )
    return name


def check_short_name(name: str, key: str) -> str:
    """A user-given prompt short name: letters, digits, ``_ . + -`` only."""
    if not _SAFE_NAME.match(str(name)) or len(str(name)) > 40:
        raise UserInputError(
            f"{key}: prompt short name {name!r} must be letters, digits, '_', '.', '+' or '-' "
            "(at most 40 characters, no slashes)."
        )
    return str(name)


def inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and check the result stays inside ``root``.

    Raises:
        UserInputError: The path would leave ``root``.
    """
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserInputError(f"{'/'.join(parts)}: this name would write outside {root}.")
    return path
