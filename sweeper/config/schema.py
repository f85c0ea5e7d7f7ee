"""Typed config schema: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files in ``conf/`` extend these (``defaults: [base_config, ...]``), so a typo in a YAML file or on
the command line (``train.lerning_rate=...``) or a wrong type (``train.max_train_steps=abc``) is an error
before anything runs. Value ranges are checked in ``sweeper.config.spec`` before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from lora_core.render import RenderOptions
from lora_core.settings import TEXT_ATTENTION, UNET_ATTENTION, Hyperparameters
from sweeper.search.objective import DEFAULT_OBJECTIVE


@dataclass
class ModelConfig:
    """Base model (``model=world|tiny|sd15``); the defaults are the embedded world model's."""

    name: str = "world"
    # "world" (embedded), "tiny" (random, offline), a hub id, a local diffusers folder, or a .safetensors file
    path: str = "world"
    revision: str | None = None
    variant: str | None = None
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    device: str = "auto"
    single_file_config: str | None = None
    local_files_only: bool = False
    resolution: int = 64  # native resolution; train/render default to it
    tiny_seed: int = 0  # model=tiny: seed of its random weights


@dataclass
class DataConfig:
    """Subject pictures and the words that name the subject."""

    instance_dir: str | None = None  # None: the drawn default subject
    token: str = "ktn"
    class_name: str = "cat"
    kind: str = "object"  # object | live (DreamBooth prompt set)
    instance_prompt: str = "a photo of {token} {class}"
    class_prompt: str = "a photo of a {class}"
    center_crop: bool = True
    # instance_prompt: every picture under instance_prompt; sidecar: each picture's img.txt or metadata.jsonl
    # line (all must have one); sidecar_or_instance: a caption where there is one (lora_core/data/captions.py).
    caption_mode: str = "instance_prompt"
    drawn_count: int = 5
    drawn_seed: int = 0


@dataclass
class LoraTargetsConfig:
    """Which adapter, on which layers (``lora=attn|attn_ff|attn_ff_conv``, ``lora.kind=lora|dora|loha|lokr``)."""

    name: str = "attn"
    unet_target_modules: list[str] = field(default_factory=lambda: list(UNET_ATTENTION))
    text_target_modules: list[str] = field(default_factory=lambda: list(TEXT_ATTENTION))
    kind: str = "lora"  # lora | dora | loha | lokr, each from peft (lora_core.adapters.adapter_config)
    conv_target_modules: list[str] = field(default_factory=list)  # UNet convolutions (LoCon); [] = none
    conv_rank: int | None = None  # None: train.rank
    conv_alpha: float | None = None  # None: conv rank (scale 1)


@dataclass
class RenderConfig:
    """The inference grid rendered for every trained LoRA: prompts x scales x guidance x seeds.

    The settings shared by every cell (``num_inference_steps``, ``scheduler``, ``negative_prompt``,
    ``batch_size``, ``fuse``) take their defaults from ``lora_core.render.RenderOptions``, which
    ``sweeper.config.spec.build_job`` builds from this node; ``resolution`` is None here (the training
    resolution) and a number there.
    """

    # A list of prompts, each plain (short name derived: initials) or {short_name: prompt}; {token}/{class}
    # filled in.
    prompts: Any = field(default_factory=lambda: [{"ph": "a photo of {token} {class}"}])
    unet_scales: list[float] = field(default_factory=lambda: [1.0])
    text_scales: list[float] = field(default_factory=lambda: [1.0])
    # SDXL: its second text encoder's scales, an axis of their own (``;t2=0.5`` in a name when several);
    # None: each cell's text scale drives both text encoders.
    text_2_scales: list[float] | None = None
    guidance_scales: list[float] = field(default_factory=lambda: [7.5])
    # The same seeds for every cell: cells differ only by the swept values.
    seeds: list[int] = field(default_factory=lambda: [0])
    # Instead of the full product: {short_name: [{unet: .., text: .., guidance: ..}, ...]}
    cells: Any = None
    num_inference_steps: int = RenderOptions.num_inference_steps
    # default: the model's own; or ddim, euler, euler_a, dpmpp_2m, ... (lora_core.render.SCHEDULERS)
    scheduler: str = RenderOptions.scheduler
    # Grid axes of the X/Y/Z plot, crossed with the others in one job's grid (the LoRA trains once):
    # samplers (replaces scheduler), sampling steps (replaces num_inference_steps), and prompt S/R: the
    # first value is a word or phrase of the prompts, each other value replaces it (a prompt per value).
    samplers: list[str] | None = None
    sampling_steps: list[int] | None = None
    prompt_sr: list[str] | None = None
    resolution: int | None = None  # None: the training resolution
    negative_prompt: str = RenderOptions.negative_prompt
    images_per_cell: int = 1
    batch_size: int = RenderOptions.batch_size  # images per pipeline call; 0: automatic
    fuse: bool = RenderOptions.fuse  # fuse the UNet LoRA at each scale (faster; same pictures)
    image_name: str = "{pr}_{unet};{text};{guidance}"
    sheet_thumb: int = 256
    # A run's sheet per prompt: which two axes are its rows and columns (unet, text, text_2, guidance,
    # sampler, steps); one sheet per value of the others that have several.
    sheet_rows: str = "unet"
    sheet_cols: str = "text"
    enabled: bool = True
    # The checkpoint axis: also render the grid at these training steps (each in <run>/step-<n>/), with a
    # sheet per prompt whose rows are the steps, and the best step in report.md.
    steps: list[int] = field(default_factory=list)
    # Which LoRA weights render the grid: raw (the trained weights), ema (their moving average,
    # train.ema_decay), or both: the run folder holds the raw grid and <run>/ema/ the EMA grid.
    weights: str = "raw"


@dataclass
class TrackingConfig:
    """MLflow."""

    enabled: bool = True
    # None: sqlite:///<sweep.root>/mlflow.db (`make ui` opens it); or a tracking server, http://host:5000
    uri: str | None = None
    experiment: str | None = None  # None: sweep.name
    log_images: bool = True  # also as MLflow images, which the UI compares across runs
    log_adapters: bool = True
    connect_timeout: float = 5.0
    # true: each job logs its own run as it trains (live loss curves in the UI). false: jobs never import
    # MLflow (a faster start per job, which counts on SLURM where every job is a process); the sweep's
    # end logs every finished run from its folder, so the store ends up the same.
    live: bool = True


@dataclass
class EvalConfig:
    """DreamBooth metrics (DINO, CLIP-I, CLIP-T) on every rendered picture.

    The defaults are the world model's evaluators (``eval=world``, which ``model=world`` picks); ``eval=default``
    (``model=sd15``) sets the paper's hub models, ``eval=tiny`` and ``eval=real_shape`` random ones.
    """

    enabled: bool = True
    # "world" (shipped), a hub id, a local folder, "tiny" or "real-shape" (random, offline)
    dino_model: str = "world"
    clip_model: str = "world"
    local_files_only: bool = False
    device: str = "auto"  # auto: the model's device
    batch_size: int = 16
    # What "best" means in the report and what a metric-driven search maximises; e.g. 0.5*dino+clip_i+clip_t
    objective: str = DEFAULT_OBJECTIVE


@dataclass
class SweepConfig:
    """Where a sweep writes and how its folders are named."""

    name: str = "${experiment}"  # outputs go to <root>/<name>/; by default the preset's name
    root: str = "outputs"
    run_dir_template: str = "{learning_rate};{text_encoder_lr}{varying}"
    reuse_steps: bool = True  # sweeps over max_train_steps train once under step-independent schedules
    print_summary: bool = True
    # Train only to this step (checkpointed) and render the grid there, in <run>/step-<n>/: one rung of
    # hydra/sweeper=halving, which sets it. null: train to train.max_train_steps.
    stop_at_step: int | None = None
    # The most configurations trained together in one process, one forward and backward a step for all
    # (docs/packs.md): a positive integer (1: each alone) or auto (as many as fit in memory, up to 16).
    pack: Any = "auto"
    # Set by the sweep for a job that trains a pack: its configurations' run folders (never set it by hand).
    pack_members: list[str] | None = None


@dataclass
class Config:
    """The whole composed config of one job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraTargetsConfig = field(default_factory=LoraTargetsConfig)
    train: Hyperparameters = field(default_factory=Hyperparameters)  # defined once, in lora_core.settings
    render: RenderConfig = field(default_factory=RenderConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    experiment: str = "default"  # name of the preset in use (set by each experiment file)


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (``base_config``); idempotent."""
    ConfigStore.instance().store(name="base_config", node=Config)
