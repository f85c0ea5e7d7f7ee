"""Grid rendering benchmark: ``lora_core.render.GridRenderer`` against two baselines in the same run.

A 48-cell grid (3 prompts x 4 UNet scales x 4 text-encoder scales, guidance 3, 25 steps, 64 px, the tiny
model, one seed) rendered with a LoRA trained for the purpose (UNet and text encoder), in images per
second:

1. the plain loop a user writes: ``pipe.load_lora_weights`` once, then per cell one
   ``set_adapters(..., adapter_weights=[{"unet": u, "text_encoder": t}])`` and one pipeline call with
   ``generator=torch.Generator().manual_seed(seed)``;
2. the compute floor: only the UNet evaluations the grid needs (cells x steps x 2 for classifier-free
   guidance), on pre-made tensors, at the batch size the renderer uses (one group of cells sharing a
   UNet scale and guidance per call), base weights (a fused LoRA costs what the base does).

Every cell's picture is compared with the plain loop's (mean absolute difference, 0-255 scale).
Targets: at least 1.5x the plain loop and at least 0.9x the floor; differences under 0.5. Contestants run
back to back in each of ``--repeats`` rounds, the order rotated every round; the rates are medians over
rounds, and each ratio is taken within a round (so a shared machine's drifting load cancels) and printed
as its median and range. Nothing is asserted.

``--samplers ddim,euler_a`` renders the grid once per sampler (``render.samplers``): one renderer for all of
them (prompt embeddings and the loaded adapter shared), against the plain loop switching the pipeline's
scheduler per cell.

Run::

    python -m bench render            # about 2 minutes on 2 CPU cores
    python -m bench render --samplers ddim,euler_a
    python -m bench render --repeats 1 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["a photo of ktn cat", "a ktn cat on the beach", "a ktn cat in a spaceship"]
SCALES = [0.25, 0.5, 0.75, 1.0]


def _train_lora(pipe, folder: Path) -> Path:
    from lora_core.cache import default_cache_dir
    from lora_core.data.subject import load_subject_images
    from lora_core.embedded.drawn_subject import ensure_drawn_subject
    from lora_core.settings import TrainSettings
    from lora_core.training import train_lora

    images = load_subject_images(ensure_drawn_subject(default_cache_dir()), 64)
    settings = TrainSettings(
        resolution=64,
        learning_rate=1e-2,
        text_encoder_lr=1e-3,
        max_train_steps=30,
        rank=4,
        progress_bar=False,
    )
    return train_lora(pipe, images, settings, folder).output_dir


def _cells(guidance: float, seed: int, samplers: list[str] | None = None):
    from lora_core.render import RenderCell

    return [
        RenderCell(p, u, t, guidance, seed, sampler=s)
        for s in samplers or [None]
        for p in PROMPTS
        for u in SCALES
        for t in SCALES
    ]


def run_ours(pipe, lora: Path, cells, steps: int, resolution: int = 64) -> tuple[float, dict]:
    """Seconds for the renderer (adapter load included), and the pictures by cell."""
    import numpy as np

    from lora_core.render import GridRenderer, RenderOptions

    started = time.perf_counter()
    with GridRenderer(
        pipe, lora, RenderOptions(num_inference_steps=steps, resolution=resolution)
    ) as renderer:
        pictures = {cell: np.asarray(image, dtype=np.float64) for cell, image in renderer.render(cells)}
    return time.perf_counter() - started, pictures


def run_plain(pipe, lora: Path, cells, steps: int, resolution: int = 64) -> tuple[float, dict]:
    """Seconds for the plain per-cell loop (adapter load included), and the pictures by cell."""
    import numpy as np
    import torch

    from lora_core.render import sampler_of

    own = pipe.scheduler
    started = time.perf_counter()
    pipe.load_lora_weights(str(lora), adapter_name="plain")
    pictures = {}
    for cell in cells:
        if cell.sampler is not None:  # what a user's loop does: switch the pipeline's scheduler
            pipe.scheduler = sampler_of(own, cell.sampler)
        pipe.set_adapters(
            ["plain"], adapter_weights=[{"unet": cell.unet_scale, "text_encoder": cell.text_scale}]
        )
        image = pipe(
            cell.prompt,
            num_inference_steps=steps,
            guidance_scale=cell.guidance,
            height=resolution,
            width=resolution,
            generator=torch.Generator().manual_seed(cell.seed),
        ).images[0]
        pictures[cell] = np.asarray(image, dtype=np.float64)
    seconds = time.perf_counter() - started
    pipe.unload_lora_weights()
    pipe.scheduler = own
    return seconds, pictures


def run_floor(pipe, cells, steps: int, batch: int) -> float:
    """Seconds for just the UNet evaluations of the grid, at the renderer's batch size."""
    import torch

    groups = len({(c.sampler, c.unet_scale, c.guidance) for c in cells})
    per_group = len(cells) // groups
    calls = [min(batch, per_group - i) for i in range(0, per_group, batch)]
    unet = pipe.unet
    side = 64 // pipe.vae_scale_factor
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(groups):
            for size in calls:
                sample = torch.randn(2 * size, unet.config.in_channels, side, side)
                # One embedding per picture and guidance half, as the grid has (an expanded single
                # embedding runs measurably faster than distinct ones, which would flatter the floor).
                embeds = torch.randn(2 * size, 77, unet.config.cross_attention_dim)
                for step in range(steps):
                    unet(sample, torch.tensor(999 - step * 40), embeds)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    import numpy as np
    import torch

    from lora_core.embedded.tiny_model import ensure_tiny_model
    from lora_core.models import ModelSource, load_pipeline

    parser = argparse.ArgumentParser(prog="python -m bench render", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="1 round, 10 steps")
    parser.add_argument(
        "--samplers",
        default="",
        help="a sampler axis, e.g. ddim,euler_a: the grid once per sampler (render.samplers)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 1, 10
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    pipe = load_pipeline(ModelSource(path=str(ensure_tiny_model()), device="cpu"))
    samplers = [s for s in args.samplers.split(",") if s] or None
    cells = _cells(args.guidance, seed=123, samplers=samplers)
    batch = 16  # the renderer's CPU default
    with tempfile.TemporaryDirectory() as tmp:
        lora = _train_lora(pipe, Path(tmp))
        run_ours(pipe, lora, cells[:4], 2)  # warm-up: first-call allocations, lazy imports
        times: dict[str, list[float]] = {"ours": [], "plain": [], "floor": []}
        pictures: dict[str, dict] = {}
        contestants = {
            "ours": lambda: run_ours(pipe, lora, cells, args.steps),
            "plain": lambda: run_plain(pipe, lora, cells, args.steps),
            "floor": lambda: (run_floor(pipe, cells, args.steps, batch), None),
        }
        order = list(contestants)
        for round_ in range(args.repeats):
            for name in order[round_ % 3 :] + order[: round_ % 3]:
                seconds, pictures[name] = contestants[name]()
                times[name].append(seconds)
                print(f"  round {round_ + 1}: {name:<6}{len(cells) / seconds:7.2f} images/s", flush=True)
        # An ancestral sampler (euler_a) draws its noise while sampling: the plain loop from the starting
        # noise's generator, ours from a generator per picture (so a picture does not depend on its batch).
        compared = [c for c in cells if c.sampler not in ("euler_a",)]
        diffs = [float(np.abs(pictures["ours"][c] - pictures["plain"][c]).mean()) for c in compared]
    rate = {k: len(cells) / statistics.median(v) for k, v in times.items()}
    print(
        f"\nGrid rendering: {len(cells)} cells{f' ({len(samplers)} samplers: {args.samplers})' if samplers else ''}, "
        f"{args.steps} steps, 64 px, tiny model, torch threads "
        f"{torch.get_num_threads()}, {args.repeats} rounds (medians)"
    )
    print(f"  {'contestant':<34}{'images/s':>10}")
    print(f"  {'ours (GridRenderer)':<34}{rate['ours']:>10.2f}")
    print(f"  {'plain loop (set_adapters + call)':<34}{rate['plain']:>10.2f}")
    unet_batch = 2 * min(batch, len(cells) // len({(c.sampler, c.unet_scale, c.guidance) for c in cells}))
    print(f"  {f'compute floor (UNet, batch {unet_batch})':<34}{rate['floor']:>10.2f}")
    for other, label, target in (("plain", "ours / plain loop:", 1.5), ("floor", "ours / floor:", 0.9)):
        ratios = sorted(b / a for a, b in zip(times["ours"], times[other], strict=True))
        print(
            f"  {label:<19}{statistics.median(ratios):.2f}x  (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}; "
            f"target >= {target}x)"
        )
    print(
        f"  picture difference vs plain loop ({len(compared)} cells without an ancestral sampler): "
        f"max mean |diff| {max(diffs):.3f} of 255 (target < 0.5)"
    )
    return 0
