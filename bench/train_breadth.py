"""Seconds per step of each optimizer against AdamW, and the validation loss's cost, in one process.

Every configuration trains the same LoRA on the same model and pictures; they run in interleaved rounds
(A B C ... A B C ...) so a burst of another process on a shared machine hits all of them alike, and every
figure is a ratio to the AdamW baseline measured in the same run. s/step is the mean over the steps after
the first (the validation loss costs one forward of its triples every ``validation_every`` steps: a
mean, not a median, is what shows it).

``python -m bench train_breadth [--model tiny|world] [--steps 100] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

# name -> training settings beyond the common ones
CONFIGS = {
    "adamw": {},
    "prodigy": {"optimizer": "prodigy"},
    "adafactor": {"optimizer": "adafactor"},
    "schedulefree_adamw": {"optimizer": "schedulefree_adamw"},
    "adamw + validation_every=50": {"validation_every": 50},
}


# What every training bench trains: a rank-4 LoRA at 64 px, UNet rate 1e-4, seed 0, every step logged.
COMMON = dict(resolution=64, learning_rate=1e-4, rank=4, seed=0, progress_bar=False, log_every=1)


def bench_model(model: str) -> tuple:
    """The pipeline of ``model`` (tiny or world) on the CPU and the drawn kitten's five pictures at 64 px."""
    from lora_core.cache import default_cache_dir
    from lora_core.data.subject import load_subject_images
    from lora_core.embedded.drawn_subject import ensure_drawn_subject
    from lora_core.models import ModelSource, load_pipeline
    from sweeper.config.embedded_models import base_model

    cache = default_cache_dir()
    pipe = load_pipeline(base_model(ModelSource(path=model, device="cpu"), cache_dir=cache))
    images = load_subject_images(ensure_drawn_subject(cache, count=5, seed=0), COMMON["resolution"])
    return pipe, images


def seconds_per_step(pipe, images, settings, out: Path) -> float:
    from lora_core.training import train_lora

    ends: list[float] = []
    train_lora(pipe, images, settings, out, on_step=lambda record: ends.append(record.seconds))
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def main(argv: list[str] | None = None) -> int:
    """Print s/step of each configuration and its ratio to AdamW + LoRA."""
    parser = argparse.ArgumentParser(prog="python -m bench train_breadth")
    parser.add_argument("--model", default="tiny", help="tiny (offline) or world (the shipped model)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from lora_core.settings import TrainSettings

    pipe, images = bench_model(args.model)
    common = dict(COMMON, text_encoder_lr=0.0, max_train_steps=args.steps)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, extra in CONFIGS.items():
                settings = TrainSettings(**common, **extra)
                times[name].append(seconds_per_step(pipe, images, settings, Path(tmp) / f"{r}-{name}"))
    base = statistics.median(times["adamw"])
    print(f"model={args.model} steps={args.steps} rounds={args.rounds} (s/step: median over rounds)")
    print(f"{'configuration':<30} {'s/step':>8} {'vs adamw':>9}")
    for name, values in times.items():
        value = statistics.median(values)
        print(f"{name:<30} {value:8.4f} {value / base:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
