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

from bench.train_breadth import COMMON, bench_model, seconds_per_step

KINDS = ("lora", "dora", "loha", "lokr")


def main(argv: list[str] | None = None) -> int:
    """Print s/step of each adapter kind and its ratio to LoRA."""
    parser = argparse.ArgumentParser(prog="python -m bench adapter_kinds")
    parser.add_argument("--model", default="tiny", help="tiny (offline) or world (the shipped model)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conv", action="store_true", help="add the UNet's convolutions (LoCon)")
    parser.add_argument("--text-encoder", action="store_true", help="train the text encoder's adapter too")
    args = parser.parse_args(argv)

    from lora_core.settings import UNET_CONV, TrainSettings

    pipe, images = bench_model(args.model)
    common = dict(
        COMMON,
        text_encoder_lr=1e-5 if args.text_encoder else 0.0,
        max_train_steps=args.steps,
        conv_target_modules=UNET_CONV if args.conv else (),
    )
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in KINDS:
                settings = TrainSettings(**common, adapter_kind=kind)
                times[kind].append(seconds_per_step(pipe, images, settings, Path(tmp) / f"{r}-{kind}"))
    base = statistics.median(times["lora"])
    targets = "attention + convolutions (LoCon)" if args.conv else "attention"
    print(
        f"model={args.model} steps={args.steps} rounds={args.rounds} targets: {targets}"
        f"{', text encoder too' if args.text_encoder else ''} (s/step: median over rounds)"
    )
    print(f"{'lora.kind':<10} {'s/step':>8} {'vs lora':>8}")
    for kind, values in times.items():
        value = statistics.median(values)
        print(f"{kind:<10} {value:8.4f} {value / base:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
