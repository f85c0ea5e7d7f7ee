"""Seconds per step with the EMA of the LoRA weights on against off, in one process.

Both train the same LoRA on the same model and pictures, in interleaved rounds (off, on, off, on, ...) in an
order reversed every other round, so a burst or a drift of another process's load on a shared machine hits
both alike; each round's on/off ratio is taken and the median and range printed. The EMA update alone is
timed too (``EMAModel.step`` on the trainer's LoRA weights, a few hundred times): the cost a loaded machine
cannot blur. With the text encoder trained too, the EMA covers more weights (its LoRA as
well). The EMA update is one fused ``torch._foreach`` lerp over the LoRA weights per optimizer step
(diffusers' ``EMAModel`` with ``foreach=True``); only that and the EMA's files at checkpoints differ.

``python -m bench ema [--model tiny|world] [--steps 100] [--rounds 3] [--ema-decay 0.999]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.train_breadth import COMMON, bench_model, seconds_per_step


def main(argv: list[str] | None = None) -> int:
    """Print s/step with EMA off and on, UNet only and with the text encoder, and their ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench ema")
    parser.add_argument("--model", default="tiny", help="tiny (offline) or world (the shipped model)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--quick", action="store_true", help="30 steps, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 30, 2

    from lora_core.settings import TrainSettings

    pipe, images = bench_model(args.model)
    common = dict(COMMON, max_train_steps=args.steps)
    groups = {"unet": 0.0, "unet + text encoder": 1e-5}
    times = {(group, ema): [] for group in groups for ema in (False, True)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for group, ema in list(times)[:: 1 if r % 2 == 0 else -1]:
                values = times[(group, ema)]
                settings = TrainSettings(
                    **common, text_encoder_lr=groups[group], ema_decay=args.ema_decay if ema else None
                )
                values.append(seconds_per_step(pipe, images, settings, Path(tmp) / f"{r}-{group}-{ema}"))
    print(f"model={args.model} steps={args.steps} rounds={args.rounds} ema_decay={args.ema_decay}")
    print(f"{'LoRA on':<22} {'off s/step':>10} {'on s/step':>10} {'on/off':>7} {'range':>13}")
    for group in groups:
        off, on = times[(group, False)], times[(group, True)]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        print(
            f"{group:<22} {statistics.median(off):10.4f} {statistics.median(on):10.4f} "
            f"{statistics.median(ratios):7.3f} {min(ratios):6.3f}-{max(ratios):.3f}"
        )
    for group, text_lr in groups.items():
        settings = TrainSettings(**common, text_encoder_lr=text_lr, ema_decay=args.ema_decay)
        count, ms = _ema_update_ms(pipe, images, settings)
        print(f"EMA update alone, {group}: {ms:.3f} ms per step over {count} LoRA weights")
    return 0


def _ema_update_ms(pipe, images, settings, repeats: int = 300) -> tuple[int, float]:
    """The trainer's EMA update on its own: (number of LoRA weights, milliseconds per update)."""
    import time

    from lora_core.training import LoraTrainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = LoraTrainer(pipe, images, settings, tmp)
        try:
            trainer.setup()
            started = time.perf_counter()
            for _ in range(repeats):
                trainer.ema.step(trainer.trainable_params)
            seconds = (time.perf_counter() - started) / repeats
            return sum(p.numel() for p in trainer.trainable_params), seconds * 1e3
        finally:
            trainer.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
