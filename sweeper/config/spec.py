"""Turn one composed Hydra config into checked lora_core values — before any model loads."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_core.adapters import format_notes
from lora_core.data.captions import fill_prompt
from lora_core.data.class_images import ClassImageSpec
from lora_core.errors import UserInputError
from lora_core.models import ModelSource
from lora_core.render import RenderOptions
from lora_core.settings import TrainSettings
from sweeper.config.embedded_models import base_model
from sweeper.disk.naming import check_safe_name, run_dir_name, short_key
from sweeper.planning.grid import GridCell, grid_cells, sampling_axes

DATA_KINDS = ("object", "live")
# render.weights: which LoRA weights render the grid; with both, the run folder holds the raw grid and its
# ema/ subfolder (sweeper.disk.layout.RunFolder.ema) the EMA grid.
RENDER_WEIGHTS = ("raw", "ema", "both")

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything one job needs, checked.

    Attributes:
        model: Base model as configured: its path may name ``tiny`` or ``world`` (see ``base_model``).
        instance_dir: Subject picture folder (None: the drawn default subject).
        settings: Training settings.
        class_images: What to generate for prior preservation, or None.
        render: Shared render settings.
        cells: The grid.
        sweep_dir: ``<sweep.root>/<sweep.name>``.
        train_values: The ``train`` section as plain values.
        name_values: Every value that can name a run folder: train keys by their short name, the rest as
            ``section.key`` (paths by their last component).
        steps: Training steps below the last at which the grid is rendered too (``render.steps``).
        stop_at: Train only to this step and render the grid there (``sweep.stop_at_step``), or None.
        token: The identifier (``data.token``), filled into captions.
        class_name: The class noun (``data.class_name``), filled into captions.
        weights: ``render.weights``: raw, ema or both.
        tiny_seed: Seed of the tiny model's random weights (``model.tiny_seed``).
    """

    model: ModelSource
    instance_dir: Path | None
    settings: TrainSettings
    class_images: ClassImageSpec | None
    render: RenderOptions
    cells: list[GridCell]
    sweep_dir: Path
    train_values: dict
    name_values: dict
    steps: list[int] = field(default_factory=list)
    stop_at: int | None = None
    token: str = "ktn"
    class_name: str = "cat"
    weights: str = "raw"
    tiny_seed: int = 0

    @property
    def weights_grids(self) -> list[str]:
        """The weights each rendered grid uses, the run folder's first (``["raw", "ema"]`` for both)."""
        return ["raw", "ema"] if self.weights == "both" else [self.weights]

    def base_model(self) -> ModelSource:
        """The model to load: ``model`` with ``tiny``/``world`` made their folders (built or checked here).

        Raises:
            UserInputError: The world model's files are missing or corrupt.
        """
        return base_model(self.model, self.tiny_seed)

    def read_captions(self, instance_dir: Path) -> list[str]:
        """Each subject picture's caption (``data.caption_mode``), checked; see ``lora_core.data.captions``.

        Raises:
            UserInputError: A bad caption file, named with what to do.
        """
        from lora_core.data.captions import read_captions
        from lora_core.data.subject import list_subject_images

        s = self.settings
        pictures = list_subject_images(instance_dir)
        return read_captions(
            instance_dir, pictures, s.caption_mode, self.token, self.class_name, s.instance_prompt
        )

    def run_dir(self, template: str, varying: list[str]) -> Path:
        """This job's run folder inside the sweep folder."""
        return self.sweep_dir / run_dir_name(template, self.name_values, varying)


def sweep_dir_of(cfg: DictConfig) -> Path:
    """``<sweep.root>/<sweep.name>``, with the name checked to stay a single folder."""
    check_safe_name(cfg.sweep.name, "sweep.name")
    return Path(cfg.sweep.root) / cfg.sweep.name


def build_job(cfg: DictConfig) -> JobSpec:
    """Check and convert a composed config.

    Args:
        cfg: The job's composed config (``sweeper.config.schema.Config``).

    Returns:
        The ``JobSpec``.

    Raises:
        UserInputError: The first bad value, named by its key.
    """
    model = _model_source(cfg)
    _check_outputs(cfg)
    if cfg.data.kind not in DATA_KINDS:
        raise UserInputError(f"data.kind={cfg.data.kind}: use object or live.")
    if not cfg.data.token.strip():
        raise UserInputError("data.token: the identifier must not be empty (e.g. ktn).")
    train_values = OmegaConf.to_container(cfg.train, resolve=True)
    resolution = train_values["resolution"] or cfg.model.resolution
    settings = TrainSettings.from_dict(
        train_values
        | {
            "resolution": resolution,
            "instance_prompt": fill_prompt(cfg.data.instance_prompt, cfg.data.token, cfg.data.class_name),
            "class_prompt": fill_prompt(cfg.data.class_prompt, cfg.data.token, cfg.data.class_name),
            "center_crop": cfg.data.center_crop,
            "caption_mode": cfg.data.caption_mode,
            "unet_target_modules": list(cfg.lora.unet_target_modules),
            "text_target_modules": list(cfg.lora.text_target_modules),
            "adapter_kind": cfg.lora.kind,
            "conv_target_modules": list(cfg.lora.conv_target_modules),
            "conv_rank": cfg.lora.conv_rank,
            "conv_alpha": cfg.lora.conv_alpha,
        }
    )
    settings.validate()
    _check_captions_and_weights(cfg)
    _say_format_notes(settings.adapter_kind)
    shared = {f.name: cfg.render[f.name] for f in fields(RenderOptions)}  # RenderConfig holds every one
    samplers, sampling_steps = sampling_axes(cfg.render)  # the first of each axis stands for the grid's own
    shared |= {"scheduler": samplers[0], "num_inference_steps": sampling_steps[0]}
    render = RenderOptions(**shared | {"resolution": cfg.render.resolution or resolution})
    render.validate()
    cells = grid_cells(cfg.render, cfg.data.token, cfg.data.class_name) if cfg.render.enabled else []
    if cfg.render.text_2_scales is not None:
        _check_second_text_encoder(model, cfg.render.text_2_scales)
    steps, stop_at = _checkpoint_axis(cfg, settings.max_train_steps)
    settings.add_checkpoint_steps([*steps, *([stop_at] if stop_at else [])])
    return JobSpec(
        model=model,
        instance_dir=Path(cfg.data.instance_dir).expanduser() if cfg.data.instance_dir else None,
        settings=settings,
        class_images=_class_spec(cfg, settings),
        render=render,
        cells=cells,
        sweep_dir=sweep_dir_of(cfg),
        train_values=train_values,
        name_values=naming_values(cfg),
        steps=steps,
        stop_at=stop_at,
        token=cfg.data.token,
        class_name=cfg.data.class_name,
        weights=cfg.render.weights,
        tiny_seed=cfg.model.tiny_seed,
    )


def _check_second_text_encoder(model: ModelSource, scales) -> None:
    """``render.text_2_scales`` needs a model with a second text encoder (SDXL)."""
    from lora_core.family import SDXL
    from sweeper.config.embedded_models import configured_family

    if configured_family(model) != SDXL:
        raise UserInputError(
            f"render.text_2_scales={list(scales)}: model.path={model.path} has one text encoder (SD 1.x / 2.x); "
            "the second text encoder's scales are for SDXL models. Leave render.text_2_scales unset."
        )


_said: set[str] = set()


def _say_format_notes(kind: str) -> None:
    """What an export format cannot hold for this adapter kind: one line each, once per process."""
    for line in format_notes(kind):
        if line not in _said:
            _said.add(line)
            log.warning(line)


def _check_captions_and_weights(cfg: DictConfig) -> None:
    """``data.caption_mode`` (valid: ``TrainSettings.validate``) and ``render.weights`` against the training."""
    mode = cfg.data.caption_mode
    if mode != "instance_prompt" and not cfg.data.instance_dir:
        raise UserInputError(
            f"data.caption_mode={mode}: the drawn subject has no caption files; set data.instance_dir to a "
            "folder with img.txt / metadata.jsonl captions, or use data.caption_mode=instance_prompt."
        )
    weights = cfg.render.weights
    if weights not in RENDER_WEIGHTS:
        raise UserInputError(f"render.weights={weights}: use one of {', '.join(RENDER_WEIGHTS)}.")
    if weights != "raw" and not cfg.train.ema_decay:
        raise UserInputError(
            f"render.weights={weights}: the training keeps no EMA (train.ema_decay={cfg.train.ema_decay}); "
            "set train.ema_decay (e.g. 0.999) or render.weights=raw."
        )


def _checkpoint_axis(cfg: DictConfig, max_train_steps: int) -> tuple[list[int], int | None]:
    """``render.steps`` below the last step (sorted) and ``sweep.stop_at_step``, checked."""
    steps = [int(s) for s in cfg.render.steps]
    if any(s < 1 or s > max_train_steps for s in steps):
        raise UserInputError(
            f"render.steps={steps}: every step must be between 1 and train.max_train_steps ({max_train_steps})."
        )
    stop_at = cfg.sweep.stop_at_step
    if stop_at is not None and not 1 <= stop_at <= max_train_steps:
        raise UserInputError(
            f"sweep.stop_at_step={stop_at}: must be between 1 and train.max_train_steps ({max_train_steps})."
        )
    below_last = sorted({s for s in steps if s < max_train_steps})
    return below_last, stop_at if stop_at is not None and stop_at < max_train_steps else None


# Config sections whose values never change what is trained or rendered.
_IGNORED_SECTIONS = ("tracking", "sweep", "experiment", "eval", "hydra")
_PATH_KEYS = ("data.instance_dir", "model.path", "model.single_file_config")


def naming_values(cfg: DictConfig) -> dict:
    """Values that can vary between the jobs of a sweep and so may name their folders.

    Args:
        cfg: A job's composed config.

    Returns:
        ``{"learning_rate": 1e-4, ..., "lora.name": "attn", "data.instance_dir": "dog", ...}``.
    """
    flat: dict = {}
    for section in cfg:
        if section in _IGNORED_SECTIONS or not OmegaConf.is_dict(cfg[section]):
            continue
        values = OmegaConf.to_container(cfg[section], resolve=True)
        for key, value in _flat_items(values) if section == "train" else values.items():
            name = short_key(f"{section}.{key}")
            flat[name] = Path(value).name if name in _PATH_KEYS and value else value
    return flat


def _flat_items(values: dict, prefix: str = ""):
    """Nested options as dotted keys: ``optim.prodigy.d_coef`` (what the command line sets)."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check_outputs(cfg: DictConfig) -> None:
    """Values used only after training (scoring, sheets): checked now, so a typo costs seconds, not a run."""
    from sweeper.search.objective import parse_objective
    from sweeper.views.drawing import MIN_THUMB

    parse_objective(cfg.eval.objective)
    if cfg.eval.batch_size < 1:
        raise UserInputError(f"eval.batch_size={cfg.eval.batch_size}: use 1 or more.")
    if cfg.render.sheet_thumb < MIN_THUMB:
        raise UserInputError(f"render.sheet_thumb={cfg.render.sheet_thumb}: use {MIN_THUMB} pixels or more.")


def _model_source(cfg: DictConfig) -> ModelSource:
    m = cfg.model
    if not str(m.path).strip():
        raise UserInputError(
            "model.path: empty; give a hub id, a local folder, a .safetensors file or 'tiny'."
        )
    if m.resolution < 8 or m.resolution % 8:
        raise UserInputError(f"model.resolution={m.resolution}: must be a positive multiple of 8.")
    return ModelSource(
        path=m.path,
        revision=m.revision,
        variant=m.variant,
        dtype=m.dtype,
        device=m.device,
        single_file_config=m.single_file_config,
        local_files_only=m.local_files_only,
    )


def _class_spec(cfg: DictConfig, settings: TrainSettings) -> ClassImageSpec | None:
    if not settings.with_prior_preservation:
        return None
    return ClassImageSpec(
        prompt=settings.class_prompt,
        count=settings.num_class_images,
        resolution=settings.resolution,
        num_inference_steps=settings.class_sample_steps,
        guidance_scale=settings.class_guidance,
        seed=settings.seed,
    )
