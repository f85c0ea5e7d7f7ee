"""Packs: several configurations of a sweep trained together, one forward and backward a step.

``trainer``: ``PackTrainer`` / ``train_pack`` (the recipe) and ``pack_refusal`` (what cannot share a pack);
``stacks``: each configuration's LoRA initialised as alone, packed into stacked tensors, and given back;
``layers``: ``PackedLinear`` / ``PackedConv2d`` (each adapter on its batch slice), their routing and dropout;
``optim``: the flat buffers, ``PackAdamW`` and the clipping; ``prompts``: the frozen and live prompt tables;
``render``: ``PackRenderer``, a pack's grids rendered together; ``memory``: ``pack_capacity`` (``auto``).
"""

from lora_core.packs.memory import pack_capacity
from lora_core.packs.trainer import PACKABLE_FIELDS, PackTrainer, pack_refusal, train_pack

__all__ = ["PACKABLE_FIELDS", "PackTrainer", "pack_capacity", "pack_refusal", "train_pack"]
