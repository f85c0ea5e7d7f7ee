"""Successive halving against the full grid, side by side in one run (issue 12).

    python -m bench halving [--quick] [--root outputs/bench-halving]

Runs ``experiment=halving_search`` (12 configurations, one decision at step 80 on a 2-picture preview, the
48-cell grid at the top) and the same space as a full grid (``hydra.sweeper.steps=null hydra.sweeper.rungs=1``: every configuration
to 900 steps with the 48-cell grid), then prints the halving winner's objective against the full grid's
best, and the compute of each (training steps, rendered pictures, wall time) as ratios. ``--quick`` runs
the tiny model with ``debug=fast`` (mechanics only; the scores mean nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_sweep(root: Path, name: str, overrides: list[str]) -> float:
    """Wall seconds of ``python -m sweeper -m <overrides>`` into ``root/name``; its progress bars stay on the
    terminal (stderr), its summary is left out. Raises when the sweep fails."""
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "sweeper",
        "-m",
        f"sweep.root={root}",
        f"sweep.name={name}",
        "sweep.print_summary=false",
        *overrides,
    ]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _sweep(root: Path, name: str, extra: list[str]) -> float:
    return run_sweep(root, name, ["experiment=halving_search", *extra])


def _compute(sweep_dir: Path) -> tuple[int, int]:
    """(training steps run, pictures rendered) of a sweep folder, from its loss logs and pictures."""
    steps = 0
    for log in sweep_dir.glob("*/lora/loss_log.jsonl"):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps += max((r["step"] for r in rows), default=0)
    pictures = len(list(sweep_dir.glob("*/*.png"))) + len(list(sweep_dir.glob("*/step-*/*.png")))
    return steps, pictures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench halving", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, debug=fast, 9 steps")
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "bench-halving")
    args = parser.parse_args(argv)
    extra = (
        ["model=tiny", "debug=fast", "train.max_train_steps=9", "hydra.sweeper.steps=[3]"]
        if args.quick
        else []
    )
    halving_seconds = _sweep(args.root, "halving", extra)
    full_seconds = _sweep(args.root, "full", [*extra, "hydra.sweeper.steps=null", "hydra.sweeper.rungs=1"])
    bracket = json.loads((args.root / "halving" / "bracket.json").read_text())
    full = json.loads((args.root / "full" / "bracket.json").read_text())["scores"][0]
    top = bracket["scores"][-1]
    winner = max(top, key=lambda n: top[n] if top[n] is not None else float("-inf"))
    best = max(full, key=lambda n: full[n] if full[n] is not None else float("-inf"))
    (h_steps, h_pics), (f_steps, f_pics) = _compute(args.root / "halving"), _compute(args.root / "full")
    print(f"halving winner {winner}: objective {top[winner]:.4f} (in the full grid: {full[winner]:.4f})")
    print(
        f"full grid best {best}: objective {full[best]:.4f}; winner / best = {full[winner] / full[best]:.4f}"
    )
    print(f"training steps  {h_steps} / {f_steps} = {h_steps / f_steps:.3f}")
    print(f"pictures        {h_pics} / {f_pics} = {h_pics / f_pics:.3f}")
    print(
        f"wall time       {halving_seconds:.0f} s / {full_seconds:.0f} s = {halving_seconds / full_seconds:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
