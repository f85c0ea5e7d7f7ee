"""How many configurations fit in one pack (``sweep.pack=auto``).

A pack's memory is the frozen model once plus, per configuration, its samples' activations (kept for the
backward pass) and its adapter with its optimizer state. The activations dominate; they grow with the
latent's pixels and the UNet's width. ``per_config_bytes`` estimates them from the UNet's config, with one
constant measured by ``python -m bench pack`` (peak memory against pack size, see ``docs/packs.md``).
``auto`` packs as many as fit in half the memory free when the sweep is planned (the card's on a GPU),
and never more than ``AUTO_MAX``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

AUTO_MAX = 16  # the largest pack the bench measures (bench pack --sizes 1,2,4,8,16)
# Bytes of activations per sample, per latent pixel, per unit of UNet width (sum of block widths x layers
# per block), fp32: measured on the world model at 64 px on the CPU (bench pack's memory part: the peak
# resident memory grows by 10.0 MiB per configuration, 183 bytes per pixel and width), rounded up.
BYTES_PER_PIXEL_WIDTH = 190.0
# The UNet most hub models have (SD 1.x): its widths when the config cannot be read before loading.
SD1_WIDTH = (320 + 640 + 1280 + 1280) * 2
BUDGET_SHARE = 0.5  # of the memory free at planning time


def _config(model_dir, part: str) -> dict | None:
    path = Path(model_dir) / part / "config.json" if model_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def unet_width(model_dir: str | os.PathLike | None) -> int:
    """Sum of the UNet's block widths times its layers per block; SD 1.x's when its config is not local."""
    config = _config(model_dir, "unet")
    if config is None:
        return SD1_WIDTH
    return sum(config["block_out_channels"]) * int(config.get("layers_per_block", 2))


def latent_pixels(resolution: int, model_dir: str | os.PathLike | None) -> int:
    """Pixels of one latent: the VAE halves the side once per block after the first (8x for SD)."""
    config = _config(model_dir, "vae")
    scale = 2 ** (len(config["block_out_channels"]) - 1) if config else 8
    return (resolution // scale) ** 2


def per_config_bytes(settings, model_dir: str | os.PathLike | None) -> float:
    """Estimated memory one more configuration adds to a pack (its samples' activations)."""
    samples = settings.train_batch_size * (2 if settings.with_prior_preservation else 1)
    pixels = latent_pixels(settings.resolution, model_dir)
    return BYTES_PER_PIXEL_WIDTH * pixels * unet_width(model_dir) * samples


def free_memory(device: str) -> int:
    """Bytes free now: on the CUDA device when ``device`` is one (or ``auto`` with a GPU), else system RAM."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        return torch.cuda.mem_get_info(index)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def pack_capacity(settings, model_dir: str | os.PathLike | None, device: str = "auto") -> int:
    """The most configurations of these settings that ``auto`` trains together (1 to ``AUTO_MAX``)."""
    fits = BUDGET_SHARE * free_memory(device) // per_config_bytes(settings, model_dir)
    return int(max(1, min(AUTO_MAX, fits)))
