"""Seconds per step of each adapter kind (``lora.kind``) against LoRA, measured in the same run.

Every kind trains the same targets on the same model and pictures (attention, and with ``--conv`` the
UNet's convolutions too: LoCon); the kinds run in interleaved rounds (A B C ... A B C ...) so a burst of
another process on a shared machine hits all of them alike, and every figure is a ratio to plain LoRA
measured in the same run. s/step is the mean over the steps after the first.

``python -m bench adapter_kinds [--model tiny|world] [--steps 50] [--rounds 2] [--conv] [--text-encoder]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

KINDS = ("lora", "dora", "loha", "lokr")


def _seconds_per_step(pipe, images, settings, out: Path) -> float:
    from lora_core.training import train_lora

    ends: list[float] = []
    train_lora(pipe, images, settings, out, on_step=lambda record: ends.append(record.seconds))
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def main(argv: list[str] | None = None) -> int:
    """Print s/step of each adapter kind and its ratio to LoRA."""
    parser = argparse.ArgumentParser(prog="python -m bench adapter_kinds")
    parser.add_argument("--model", default="tiny", help="tiny (offline) or world (the shipped model)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conv", action="store_true", help="add the UNet's convolutions (LoCon)")
    parser.add_argument("--text-encoder", action="store_true", help="train the text encoder's adapter too")
    args = parser.parse_args(argv)

    from lora_core.drawn_subject import ensure_drawn_subject
    from lora_core.models import ModelSource, load_pipeline
    from lora_core.settings import UNET_CONV, TrainSettings
    from lora_core.subject import load_subject_images
    from lora_core.tiny_model import default_cache_dir

    cache = default_cache_dir()
    pipe = load_pipeline(ModelSource(path=args.model, device="cpu", cache_dir=str(cache)))
    resolution = 64
    images = load_subject_images(ensure_drawn_subject(cache, count=5, seed=0), resolution)
    common = dict(resolution=resolution, learning_rate=1e-4, text_encoder_lr=1e-5 if args.text_encoder else 0.0,
                  max_train_steps=args.steps, rank=4, seed=0, progress_bar=False, log_every=1,
                  conv_target_modules=UNET_CONV if args.conv else ())  # fmt: skip
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in KINDS:
                settings = TrainSettings(**common, adapter_kind=kind)
                times[kind].append(_seconds_per_step(pipe, images, settings, Path(tmp) / f"{r}-{kind}"))
    base = statistics.median(times["lora"])
    targets = "attention + convolutions (LoCon)" if args.conv else "attention"
    print(f"model={args.model} steps={args.steps} rounds={args.rounds} targets: {targets}"
          f"{', text encoder too' if args.text_encoder else ''} (s/step: median over rounds)")  # fmt: skip
    print(f"{'lora.kind':<10} {'s/step':>8} {'vs lora':>8}")
    for kind, values in times.items():
        value = statistics.median(values)
        print(f"{kind:<10} {value:8.4f} {value / base:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
