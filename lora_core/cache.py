"""The cache folder every job shares: built models, the drawn subject, generated class images."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Folder for built models and generated class images.

    ``LORA_SWEEPS_CACHE`` overrides it; otherwise ``$XDG_CACHE_HOME/lora-sweeps`` (``~/.cache/lora-sweeps``).
    """
    if env := os.environ.get("LORA_SWEEPS_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lora-sweeps"
