"""Training time per configuration: packs of 1, 2, 4, 8 configurations against one configuration alone.

Each pack size trains that many configurations of a learning-rate and seed sweep together
(``lora_core.packs``); the baseline is today's one-configuration training (``LoraTrainer``), in the same
process, in interleaved rounds whose order is reversed every other round, so a drift of the machine's load
hits every size alike. The time is the steady-state step loop (first step left out) divided by the pack's
size; each round's ratio to the baseline of that round is taken, and the median and range printed.

``python -m bench pack [--model world|tiny] [--sizes 1,2,4,8] [--steps 30] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.train_breadth import COMMON, bench_model, seconds_per_step


def pack_seconds_per_step(pipe, images, settings: list, out: Path) -> float:
    """Steady-state seconds per step of the whole pack (its first step left out)."""
    from lora_core.packs import train_pack

    ends: list[float] = []

    def note(index, record):
        if index == 0:
            ends.append(record.seconds)

    train_pack(pipe, images, settings, [out / str(i) for i in range(len(settings))], on_step=note)
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def main(argv: list[str] | None = None) -> int:
    """Print seconds per configuration-step at each pack size and the ratio to one configuration alone."""
    parser = argparse.ArgumentParser(prog="python -m bench pack")
    parser.add_argument("--model", default="world", help="world (the shipped model) or tiny (offline)")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 round, sizes 1,4")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.sizes = 10, 1, "1,4"
    sizes = [int(v) for v in args.sizes.split(",")]

    from lora_core.settings import TrainSettings

    pipe, images = bench_model(args.model)
    common = dict(COMMON, max_train_steps=args.steps, text_encoder_lr=0.0)

    def configs(n: int) -> list:
        return [TrainSettings(**common | {"learning_rate": 1e-4 * (1 + i), "seed": i}) for i in range(n)]

    alone: list[float] = []
    per_config: dict[int, list[float]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["alone", *sizes]
            for what in order[:: 1 if r % 2 == 0 else -1]:
                out = Path(tmp) / f"{r}-{what}"
                if what == "alone":
                    alone.append(seconds_per_step(pipe, images, configs(1)[0], out))
                else:
                    per_config[what].append(pack_seconds_per_step(pipe, images, configs(what), out) / what)
    print(f"model={args.model} steps={args.steps} rounds={args.rounds} resolution={common['resolution']}")
    print(f"one configuration alone: {statistics.median(alone) * 1e3:.1f} ms/step")
    print(f"{'pack':>4} {'ms/step':>8} {'ms/config-step':>14} {'vs alone':>9} {'range':>13}")
    for n in sizes:
        ratios = [p / a for p, a in zip(per_config[n], alone, strict=True)]
        print(
            f"{n:>4} {statistics.median(per_config[n]) * n * 1e3:8.1f} "
            f"{statistics.median(per_config[n]) * 1e3:14.1f} {statistics.median(ratios):9.3f} "
            f"{min(ratios):6.3f}-{max(ratios):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
