"""Plan the inference grid of a run: which cells to render and what each picture is called."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

from lora_core.data.captions import fill_prompt
from lora_core.errors import UserInputError
from lora_core.render import RenderCell
from sweeper.disk.naming import (
    cell_label,
    check_short_name,
    image_stem,
    label_keys,
    short_names,
    text_2_label,
)

# Sensible ranges; outside them a value is far more likely a typo than an experiment.
SCALE_RANGE = (-1.0, 3.0)
GUIDANCE_RANGE = (0.0, 50.0)


@dataclass(frozen=True)
class GridCell:
    """One picture of the grid.

    Attributes:
        prompt_name: Short name of the prompt (``sf``).
        prompt: The prompt with ``{token}``/``{class}`` filled in.
        unet_scale: UNet LoRA scale.
        text_scale: Text-encoder LoRA scale.
        guidance: Guidance scale.
        seed: Seed of the starting noise.
        index: Picture index within the cell.
        count: Pictures per cell.
        stem: File stem (``sf_0.9;0.5;3.6``; ``;<sampler>`` and ``;<steps>`` added when those axes have
            several values).
        sampler: Its sampler (a key of ``lora_core.render.SCHEDULERS``); None: the job's ``render.scheduler``.
        steps: Its sampling steps; None: the job's ``render.num_inference_steps``.
        axes: The values of its grid's axes that have several (sampler, sampling steps, second text
            encoder's scale as ``t2=0.5``), as in its name.
        text_2_scale: SDXL's second text encoder's LoRA scale; None: ``text_scale`` (``render.text_2_scales``).
    """

    prompt_name: str
    prompt: str
    unet_scale: float
    text_scale: float
    guidance: float
    seed: int
    index: int
    count: int
    stem: str
    sampler: str | None = None
    steps: int | None = None
    axes: tuple[str, ...] = ()
    text_2_scale: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "axes", tuple(self.axes))  # a list when read back from run.json

    @property
    def label(self) -> str:
        """Its cell's label, whatever its seed and index: ``unet;text;guidance;<axes>``.

        ``0.9;0.5;3.6;euler_a``: sheet columns, scores, the report and MLflow.
        """
        return cell_label(self.unet_scale, self.text_scale, self.guidance, self.axes)

    @property
    def label_keys(self) -> str:
        """What its ``label`` lists: ``unet;text;guidance``, then ``sampler`` and ``steps`` where it has them."""
        return label_keys(self.label)

    @property
    def file_name(self) -> str:
        """``<stem>.png``."""
        return f"{self.stem}.png"

    def render_cell(self) -> RenderCell:
        """The lora_core cell to render."""
        return RenderCell(
            self.prompt,
            self.unet_scale,
            self.text_scale,
            self.guidance,
            self.seed,
            self.index,
            self.count,
            self.sampler,
            self.steps,
            self.text_2_scale,
        )


def resolve_prompts(prompts, token: str, class_name: str) -> dict[str, str]:
    """Short name -> filled prompt.

    Args:
        prompts: ``render.prompts``: a list whose items are plain prompts (short name derived: initials of
            the content words) or single-entry ``{name: prompt}`` mappings; a ``{name: prompt}`` mapping
            is accepted too.
        token: The identifier (``data.token``).
        class_name: The class noun (``data.class_name``).

    Returns:
        Ordered mapping of short name to prompt.

    Raises:
        UserInputError: Empty prompt list, an empty prompt, or an unsafe or repeated short name.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Mapping):
        prompts = [{k: v} for k, v in prompts.items()]
    if not isinstance(prompts, Sequence):
        raise UserInputError(f"render.prompts: expected a list of prompts, got {prompts!r}.")
    given = [
        (next(iter(p)), str(next(iter(p.values())))) if isinstance(p, Mapping) and len(p) == 1 else (None, p)
        for p in prompts
    ]
    for name, text in given:
        if not isinstance(text, str) or not text.strip():
            key = f"render.prompts.{name}" if name is not None else "render.prompts"
            raise UserInputError(
                f"{key}: {text!r} is not a prompt; each item is a prompt or {{name: prompt}}."
            )
    derived = iter(short_names([fill_prompt(t, token, class_name) for n, t in given if n is None]))
    named: dict[str, str] = {}
    for name, text in given:
        name = check_short_name(name, f"render.prompts.{name}") if name is not None else next(derived)
        if name in named:
            raise UserInputError(
                f"render.prompts.{name}: two prompts have this short name; give them different ones."
            )
        named[name] = fill_prompt(text, token, class_name)
    if not named:
        raise UserInputError(
            "render.prompts: no prompt given; add at least one (e.g. render.prompts=['a photo of {token}'])."
        )
    return named


def _check_range(key: str, values, low: float, high: float) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise UserInputError(f"{key}: empty list; give at least one value.")
    for v in values:
        if not low <= v <= high:
            raise UserInputError(f"{key}: {v} is outside the sensible range [{low}, {high}].")
    return values


def _explicit_cells(cells, prompts: dict[str, str]) -> list[tuple[str, float, float, float]]:
    if not isinstance(cells, Mapping):
        raise UserInputError(
            "render.cells: expected {prompt_name: [{unet: .., text: .., guidance: ..}, ...]}."
        )
    out = []
    for name, entries in cells.items():
        if name not in prompts:
            raise UserInputError(
                f"render.cells.{name}: no prompt with this short name (known: {', '.join(prompts)})."
            )
        for i, entry in enumerate(entries or []):
            key = f"render.cells.{name}[{i}]"
            if not isinstance(entry, Mapping) or set(entry) != {"unet", "text", "guidance"}:
                raise UserInputError(
                    f"{key}: each cell is {{unet: .., text: .., guidance: ..}}, got {entry!r}."
                )
            (u,) = _check_range(f"{key}.unet", [entry["unet"]], *SCALE_RANGE)
            (t,) = _check_range(f"{key}.text", [entry["text"]], *SCALE_RANGE)
            (g,) = _check_range(f"{key}.guidance", [entry["guidance"]], *GUIDANCE_RANGE)
            out.append((name, u, t, g))
    return out


# The axes a run's sheet can have as rows or columns, and each cell's value on it.
SHEET_AXES = {
    "unet": lambda c: c.unet_scale,
    "text": lambda c: c.text_scale,
    "text_2": lambda c: c.text_2_scale,  # None: the text scale drives both text encoders
    "guidance": lambda c: c.guidance,
    "sampler": lambda c: c.sampler or "",
    "steps": lambda c: c.steps or 0,
}


def sheet_axes(render) -> tuple[str, str]:
    """The axes of a run's sheets: ``render.sheet_rows`` and ``render.sheet_cols`` (default ``unet``, ``text``).

    Raises:
        UserInputError: An axis that is not one of ``SHEET_AXES``, or the same axis twice.
    """
    rows, cols = render.get("sheet_rows", "unet"), render.get("sheet_cols", "text")
    for key, axis in (("sheet_rows", rows), ("sheet_cols", cols)):
        if axis not in SHEET_AXES:
            raise UserInputError(f"render.{key}={axis}: use one of {', '.join(SHEET_AXES)}.")
    if rows == cols:
        raise UserInputError(f"render.sheet_cols={cols}: the same axis as render.sheet_rows; choose another.")
    return rows, cols


def grid_cells(render, token: str, class_name: str) -> list[GridCell]:
    """Every picture of a run's grid: the full product, or the explicit cells per prompt.

    Args:
        render: The composed ``render`` config (prompts, scales, guidance, seeds, cells, ...).
        token: The identifier.
        class_name: The class noun.

    Returns:
        The cells, prompts in config order.

    Raises:
        UserInputError: Bad values, or two cells that would share a file name.
    """
    prompts = search_replace(resolve_prompts(render.prompts, token, class_name), render.prompt_sr)
    sheet_axes(render)
    samplers, steps = sampling_axes(render)
    seeds = [int(s) for s in render.seeds]
    if not seeds:
        raise UserInputError("render.seeds: empty list; give at least one seed.")
    if render.images_per_cell < 1:
        raise UserInputError(f"render.images_per_cell={render.images_per_cell}: must be at least 1.")
    if render.cells:
        combos = _explicit_cells(render.cells, prompts)
    else:
        unet = _check_range("render.unet_scales", render.unet_scales, *SCALE_RANGE)
        text = _check_range("render.text_scales", render.text_scales, *SCALE_RANGE)
        guidance = _check_range("render.guidance_scales", render.guidance_scales, *GUIDANCE_RANGE)
        combos = [(p, u, t, g) for p in prompts for u, t, g in product(unet, text, guidance)]
    text_2 = [None]
    if render.get("text_2_scales") is not None:
        text_2 = _check_range("render.text_2_scales", render.text_2_scales, *SCALE_RANGE)
    count = render.images_per_cell
    cells, seen = [], {}
    for (name, u, t, g), t2, sampler, n_steps, seed, index in product(
        combos, text_2, samplers, steps, seeds, range(count)
    ):
        axes = ([sampler] if len(samplers) > 1 else []) + ([str(n_steps)] if len(steps) > 1 else [])
        axes += [text_2_label(t2)] if len(text_2) > 1 else []
        stem = image_stem(
            render.image_name,
            name,
            u,
            t,
            g,
            seed if len(seeds) > 1 else None,
            index if count > 1 else None,
            axes,
        )
        cell = GridCell(
            name, prompts[name], u, t, g, seed, index, count, stem, sampler, n_steps, tuple(axes), t2
        )
        if stem in seen:
            if seen[stem] == cell:
                continue  # the same cell listed twice: render it once
            raise UserInputError(
                f"render: two cells would both be written to {stem}.png ({_what_differs(seen[stem], cell)}); "
                "make the names differ."
            )
        seen[stem] = cell
        cells.append(cell)
    return cells


def _what_differs(a: GridCell, b: GridCell) -> str:
    keys = (
        "prompt",
        "unet_scale",
        "text_scale",
        "text_2_scale",
        "guidance",
        "sampler",
        "steps",
        "seed",
        "index",
    )
    return ", ".join(
        f"{k} {getattr(a, k)!r} and {getattr(b, k)!r}" for k in keys if getattr(a, k) != getattr(b, k)
    )


def sampling_axes(render) -> tuple[list[str], list[int]]:
    """The grid's samplers and sampling-step counts.

    ``render.samplers`` / ``render.sampling_steps``, or the one-value ``render.scheduler`` /
    ``render.num_inference_steps``.

    Raises:
        UserInputError: An unknown sampler, a step count out of 1-1000, an empty or repeated list, or both
            ``render.scheduler`` and ``render.samplers`` set.
    """
    from lora_core.render import SCHEDULERS

    samplers = [str(v) for v in render.samplers] if render.samplers is not None else [render.scheduler]
    if render.samplers is not None and render.scheduler != "default":
        raise UserInputError(
            f"render.scheduler={render.scheduler} and render.samplers={samplers}: the samplers axis replaces "
            "the one sampler; list it in render.samplers only."
        )
    sampler_key = "render.samplers" if render.samplers is not None else "render.scheduler"
    for value in samplers:
        if value not in SCHEDULERS:
            raise UserInputError(
                f"{sampler_key}: unknown sampler {value!r}; use any of {', '.join(SCHEDULERS)}."
            )
    steps = (
        [_integer("render.sampling_steps", v) for v in render.sampling_steps]
        if render.sampling_steps is not None
        else [int(render.num_inference_steps)]
    )
    steps_key = "render.sampling_steps" if render.sampling_steps is not None else "render.num_inference_steps"
    for value in steps:
        if not 1 <= value <= 1000:
            raise UserInputError(f"{steps_key}: {value} is outside 1-1000.")
    for key, values in (("render.samplers", samplers), ("render.sampling_steps", steps)):
        if not values:
            raise UserInputError(f"{key}: empty list; give at least one value.")
        if len(set(values)) != len(values):
            raise UserInputError(f"{key}={values}: a value is listed twice; list each once.")
    return samplers, steps


def _integer(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{key}: {value!r} is not a whole number of steps.")
    return value


def search_replace(prompts: dict[str, str], values) -> dict[str, str]:
    """Prompt S/R, as the X/Y/Z plot's: each prompt that holds ``values[0]``, once more per other value.

    Each variant has ``values[0]`` replaced by the value; prompts without it stay as they are, once.

    A variant's short name is the prompt's followed by ``-`` and the value (letters and digits, ``+`` for
    spaces): ``be`` with ``[beach, snow, the pub]`` gives ``be``, ``be-snow`` and ``be-the+pub``.

    Raises:
        UserInputError: Fewer than two values, a repeated or empty value, a first value that no prompt holds,
            or a variant's short name that another prompt already has.
    """
    if values is None:
        return prompts
    values = [str(v) for v in values]
    key = "render.prompt_sr"
    if len(values) < 2:
        raise UserInputError(
            f"{key}={values}: give the word or phrase the prompts hold, then what replaces it "
            "(e.g. render.prompt_sr=[beach,snow,pub])."
        )
    if any(not v.strip() for v in values) or len(set(values)) != len(values):
        raise UserInputError(f"{key}={values}: each value once, none empty.")
    search = values[0]
    if not any(search in prompt for prompt in prompts.values()):
        raise UserInputError(
            f"{key}: its first value {search!r} is in no prompt ({'; '.join(prompts.values())}); the first "
            "value is the word or phrase the prompts hold, the others replace it."
        )
    out: dict[str, str] = {}
    for name, prompt in prompts.items():
        out[name] = prompt
        if search not in prompt:
            continue
        for value in values[1:]:
            variant = check_short_name(f"{name}-{_name_part(value)}", key)
            if variant in prompts or variant in out:
                raise UserInputError(
                    f"{key}: the variant {variant!r} of prompt {name!r} has the short name of another prompt; "
                    "rename that prompt."
                )
            out[variant] = prompt.replace(search, value)
    return out


def _name_part(value: str) -> str:
    return "+".join(re.findall(r"[A-Za-z0-9]+", value)) or "x"


def first_images(cells: list[GridCell]) -> list[GridCell]:
    """One picture per (prompt, unet, text, guidance): the first seed's first image (for sheets and pages)."""
    first_seed = cells[0].seed if cells else 0
    return [c for c in cells if c.seed == first_seed and c.index == 0]
