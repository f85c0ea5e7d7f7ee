"""Build, save, export, load and inspect adapters of every kind (``lora.kind``): LoRA, DoRA, LoHa, LoKr.

``config``: the kinds, their peft configs and file names; ``files``: diffusers' and peft's files, saved and
read back; ``kohya``: the kohya / LyCORIS export for A1111 and ComfyUI.
"""

from lora_core.adapters.config import (
    ADAPTER_KINDS,
    DIFFUSERS_KINDS,
    KOHYA_FILE,
    LORA_FILE,
    PEFT_FILE,
    TRAINING_METADATA_KEY,
    AdapterWeights,
    adapter_config,
    find_weights_file,
    format_notes,
    weights_file_name,
)
from lora_core.adapters.files import (
    adapter_weights,
    is_peft_adapter_file,
    load_peft_adapter,
    peft_state_dict,
    read_training_metadata,
    save_diffusers_lora,
    save_peft_adapter,
    write_adapter_files,
)
from lora_core.adapters.kohya import save_kohya_lora

__all__ = [
    "ADAPTER_KINDS",
    "DIFFUSERS_KINDS",
    "KOHYA_FILE",
    "LORA_FILE",
    "PEFT_FILE",
    "TRAINING_METADATA_KEY",
    "AdapterWeights",
    "adapter_config",
    "adapter_weights",
    "find_weights_file",
    "format_notes",
    "is_peft_adapter_file",
    "load_peft_adapter",
    "peft_state_dict",
    "read_training_metadata",
    "save_diffusers_lora",
    "save_kohya_lora",
    "save_peft_adapter",
    "weights_file_name",
    "write_adapter_files",
]
