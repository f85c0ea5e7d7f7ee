"""Packs: several configurations of a sweep trained together, one forward and backward a step.

``layers``: ``PackedLinear``, a frozen layer with one adapter per configuration on its batch slice;
``trainer``: ``PackTrainer`` / ``train_pack`` and ``pack_refusal`` (what cannot share a pack, and why);
``memory``: ``pack_capacity``, how many configurations ``sweep.pack=auto`` trains together.
"""

from lora_core.packs.memory import pack_capacity
from lora_core.packs.trainer import PACKABLE_FIELDS, PackTrainer, pack_refusal, train_pack

__all__ = ["PACKABLE_FIELDS", "PackTrainer", "pack_capacity", "pack_refusal", "train_pack"]
