"""Typed config schema: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files in ``conf/`` extend these (``defaults: [base_config, ...]``), so a typo in a YAML file or on
the command line (``train.lerning_rate=...``) or a wrong type (``train.max_train_steps=abc``) is an error
before anything runs. Value ranges are checked in ``sweeper.job_spec`` before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from lora_core.settings import TEXT_ATTENTION, UNET_ATTENTION, Hyperparameters


@dataclass
class ModelConfig:
    """Base model (``model=tiny|sd15``)."""

    name: str = "tiny"
    path: str = "tiny"  # "tiny", a hub id, a local diffusers folder, or a .safetensors checkpoint
    revision: str | None = None
    variant: str | None = None
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    device: str = "auto"
    single_file_config: str | None = None
    local_files_only: bool = False
    resolution: int = 64  # native resolution; train/render default to it
    tiny_seed: int = 0


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
    """The inference grid rendered for every trained LoRA."""

    # A list of prompts, each plain (short name derived) or {short_name: prompt}; {token}/{class} filled in.
    prompts: Any = field(default_factory=lambda: [{"ph": "a photo of {token} {class}"}])
    unet_scales: list[float] = field(default_factory=lambda: [1.0])
    text_scales: list[float] = field(default_factory=lambda: [1.0])
    guidance_scales: list[float] = field(default_factory=lambda: [7.5])
    seeds: list[int] = field(default_factory=lambda: [0])
    # Instead of the full product: {short_name: [{unet: .., text: .., guidance: ..}, ...]}
    cells: Any = None
    num_inference_steps: int = 25
    scheduler: str = "default"
    resolution: int | None = None  # None: the training resolution
    negative_prompt: str = ""
    images_per_cell: int = 1
    batch_size: int = 0  # images per pipeline call; 0: automatic
    fuse: bool = True  # fuse the UNet LoRA at each scale (faster; same pictures)
    image_name: str = "{pr}_{unet};{text};{guidance}"
    sheet_thumb: int = 256
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
    uri: str | None = None  # None: sqlite:///<sweep.root>/mlflow.db
    experiment: str | None = None  # None: sweep.name
    log_images: bool = True
    log_adapters: bool = True
    connect_timeout: float = 5.0
    # true: each job logs its own run as it trains (live loss curves in the UI). false: jobs never import
    # MLflow (about 2.5 s less per job, which counts on SLURM where every job is a process); the sweep's
    # end logs every finished run from its folder, so the store ends up the same.
    live: bool = True


@dataclass
class EvalConfig:
    """DreamBooth metrics (DINO, CLIP-I, CLIP-T) on every rendered picture."""

    enabled: bool = True
    dino_model: str = "facebook/dino-vits16"  # hub id, local folder, or "tiny" (random, offline)
    clip_model: str = "openai/clip-vit-base-patch32"
    local_files_only: bool = False
    device: str = "auto"  # auto: the model's device
    batch_size: int = 16
    objective: str = (
        "dino+clip_t"  # what "best" means in the report and what a metric-driven search maximises
    )


@dataclass
class SweepConfig:
    """Where a sweep writes and how its folders are named."""

    name: str = "default"
    root: str = "outputs"
    run_dir_template: str = "{learning_rate};{text_encoder_lr}{varying}"
    reuse_steps: bool = True  # sweeps over max_train_steps train once under step-independent schedules
    print_summary: bool = True
    # Train only to this step (checkpointed) and render the grid there, in <run>/step-<n>/: one rung of
    # hydra/sweeper=halving, which sets it. null: train to train.max_train_steps.
    stop_at_step: int | None = None


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
    experiment: str | None = None  # name of the preset in use (set by each experiment file)


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (``base_config``); idempotent."""
    ConfigStore.instance().store(name="base_config", node=Config)
