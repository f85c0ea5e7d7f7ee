"""Sweep benchmarks: what one ``python -m sweeper -m`` command saves over doing it by hand.

1. Sweep economy: a 4-configuration sweep (2 x 2 learning rates, 200 steps each, text encoder trained,
   the 48-cell grid of ``bench.render``) in one command, against what users do today: diffusers'
   reference trainer run four times (start-up paid four times) and, after each, the plain grid loop in a
   fresh process (``bench.plain_grid``). Target: at most 0.75x the wall time. Needs ``--reference``
   (see ``bench.train`` for setting it up). The reference has a single learning rate for UNet and text
   encoder; its runs use the same step count, rank and pictures, so the compute matches.
2. Step axis: ``train.max_train_steps=N,5N`` (constant schedule) in one command against training both
   separately (two commands), and against the same sweep with ``sweep.reuse_steps=false``. Target: at
   most 0.85x. Rendering is off here: this measures training reuse.

All wall times are whole commands, start-up included, on the tiny model. Nothing is asserted.

Run::

    python -m bench sweep --reference bench/.ref/train_dreambooth_lora.py   # about 10 minutes
    python -m bench sweep --quick                                             # step axis only, small N
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRID = [
    "render.prompts=['a photo of ktn cat','a ktn cat on the beach','a ktn cat in a spaceship']",
    "render.unet_scales=[0.25,0.5,0.75,1]",
    "render.text_scales=[0.25,0.5,0.75,1]",
    "render.guidance_scales=[3]",
    "render.seeds=[123]",
    "render.num_inference_steps=25",
]
LEARNING_RATES = (1e-4, 3e-4)
TEXT_LEARNING_RATES = (1e-5, 5e-5)


def timed(command: list[str], env: dict | None = None) -> float:
    """Wall seconds of a command (run from the repository root); raises if it fails."""
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:6])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return time.perf_counter() - started


def sweeper(*overrides: str) -> list[str]:
    """``python -m sweeper -m experiment=quickstart <overrides>``."""
    return [sys.executable, "-m", "sweeper", "-m", "experiment=quickstart", "train.log_every=50", *overrides]


def economy(args, root: Path) -> None:
    """Section 1: one sweep command against reference trainer + plain grid loop, four times."""
    from bench.train import reference_args
    from lora_core.cache import default_cache_dir
    from lora_core.embedded.drawn_subject import ensure_drawn_subject
    from lora_core.embedded.tiny_model import ensure_tiny_model
    from lora_core.settings import TrainSettings

    steps = args.steps
    ours = timed(
        sweeper(
            *GRID,
            f"train.max_train_steps={steps}",
            "train.rank=4",
            f"train.learning_rate={','.join(map(str, LEARNING_RATES))}",
            f"train.text_encoder_lr={','.join(map(str, TEXT_LEARNING_RATES))}",
            f"sweep.root={root / 'ours'}",
            "sweep.name=economy",
        )
    )
    model, subject = ensure_tiny_model(), ensure_drawn_subject(default_cache_dir())
    today = 0.0
    for i, lr in enumerate(lr for lr in LEARNING_RATES for _ in TEXT_LEARNING_RATES):
        run_dir = root / f"today{i}"
        s = TrainSettings(
            instance_prompt="a photo of ktn cat",
            resolution=64,
            learning_rate=lr,
            text_encoder_lr=lr,
            max_train_steps=steps,
            rank=4,
        )
        flags = [f.replace("{run_dir}", str(run_dir)) for f in reference_args(s, model, subject)]
        today += timed([str(args.reference_python), str(args.reference.resolve()), *flags])
        today += timed(
            [
                sys.executable,
                "-m",
                "bench.plain_grid",
                "--model",
                str(model),
                "--lora",
                str(run_dir / "output"),
                "--out",
                str(run_dir / "grid"),
            ]
        )
    print(f"\nSweep economy: 4 configurations x {steps} steps + 48-cell grid each, tiny model")
    print(f"  one sweep command:                         {ours:8.1f} s")
    print(f"  reference trainer x4 + plain grid loop x4: {today:8.1f} s")
    print(f"  ratio: {ours / today:.2f}x   (target <= 0.75x)")


def step_axis(args, root: Path) -> None:
    """Section 2: N,5N in one command against two commands and against no reuse."""
    n = args.step_n
    common = [
        "render.enabled=false",
        "train.learning_rate=1e-4",
        "train.text_encoder_lr=1e-5",
        "train.rank=4",
        "sweep.name=steps",
    ]
    shared = timed(sweeper(*common, f"train.max_train_steps={n},{5 * n}", f"sweep.root={root / 'shared'}"))
    separate = sum(
        timed(sweeper(*common, f"train.max_train_steps={steps}", f"sweep.root={root / f'alone{steps}'}"))
        for steps in (n, 5 * n)
    )
    no_reuse = timed(
        sweeper(
            *common,
            f"train.max_train_steps={n},{5 * n}",
            "sweep.reuse_steps=false",
            f"sweep.root={root / 'noreuse'}",
        )
    )
    print(
        f"\nStep axis: train.max_train_steps={n},{5 * n}, constant schedule, text encoder trained, tiny model"
    )
    print(f"  one command, reuse on:             {shared:8.1f} s")
    print(
        f"  two commands (trained separately): {separate:8.1f} s   ratio {shared / separate:.2f}x (target <= 0.85x)"
    )
    print(f"  one command, sweep.reuse_steps=false: {no_reuse:5.1f} s   ratio {shared / no_reuse:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the sections."""
    parser = argparse.ArgumentParser(prog="python -m bench sweep", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, default=None, help="train_dreambooth_lora.py (see bench.train)"
    )
    parser.add_argument("--reference-python", type=Path, default=REPO / "bench/.venv-ref/bin/python")
    parser.add_argument("--steps", type=int, default=200, help="steps per configuration (economy)")
    parser.add_argument("--step-n", type=int, default=100, help="N of the step-axis sweep N,5N")
    parser.add_argument("--quick", action="store_true", help="step axis only, N=20")
    args = parser.parse_args(argv)
    if args.quick:
        args.step_n, args.reference = 20, None
    with tempfile.TemporaryDirectory() as tmp:
        if args.reference is not None:
            economy(args, Path(tmp))
        else:
            print(
                "\nSweep economy: skipped (give --reference PATH; `python -m bench train --help` says how to get it)"
            )
        step_axis(args, Path(tmp))
    return 0
