"""Compute core: build/load Stable Diffusion 1.x models, read subject images, train and save LoRA adapters.

Nothing here imports Hydra or MLflow: callers pass plain dataclasses and values.
"""

import logging

from lora_core.errors import UserInputError

# transformers warns on import of every image-processor name that it falls back to the PIL backend
# when torchvision is absent. This project needs no torchvision, so the warning only confuses; every
# other transformers warning still shows.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision" not in record.getMessage()
)

__all__ = ["UserInputError"]
