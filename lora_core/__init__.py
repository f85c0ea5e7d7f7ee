"""Compute core: build/load Stable Diffusion 1.x models, read subject images, train and save LoRA adapters.

Nothing here imports Hydra or MLflow: callers pass plain dataclasses and values.
"""

from lora_core.errors import UserInputError

__all__ = ["UserInputError"]
