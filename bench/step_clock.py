"""Time every optimizer step of a process without touching its code.

torch calls a global hook after every ``Optimizer.step`` (``register_optimizer_step_post_hook``), so the
interval between two hook calls is one whole training-loop iteration — data, forward, backward, clipping,
optimizer, schedule, logging — whatever trainer runs. Our trainer, the compute floor and diffusers'
reference script are all timed this way, so their steps are measured alike.

Timestamps are ``time.monotonic()``, which on Linux is one system-wide clock, so the parent process can
relate them to the moment it launched the child.

Run a script under the clock::

    python -m bench.step_clock --out clock.json -- path/to/script.py --its --own --flags
"""

from __future__ import annotations

import argparse
import atexit
import json
import runpy
import sys
import time
from pathlib import Path


class StepClock:
    """Records the end time of every optimizer step in this process."""

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.step_ends: list[float] = []
        self._handle = register_optimizer_step_post_hook(self._tick)

    def _tick(self, optimizer, args, kwargs) -> None:
        self.step_ends.append(time.monotonic())

    def write(self, path: str | Path, **extra) -> None:
        """Write the step times, the torch version and its thread count as JSON.

        Args:
            path: Output file.
            **extra: More JSON-friendly values to store beside them.
        """
        import torch

        payload = {
            "step_ends": self.step_ends,
            "written_at": time.monotonic(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **extra,
        }
        Path(path).write_text(json.dumps(payload))


def main(argv: list[str] | None = None) -> int:
    """Run a Python script as ``__main__`` with a step clock, then write the clock file.

    Args:
        argv: ``--out FILE -- SCRIPT [ARGS...]``.

    Returns:
        0; a failing script raises as it would on its own.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.step_clock", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the step times")
    parser.add_argument("script", help="Python script to run as __main__")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="the script's own arguments")
    args = parser.parse_args(argv)
    clock = StepClock()
    sys.argv = [args.script, *args.script_args]
    # at exit: also when the script ends the process itself after the exit handlers (``python -m sweeper``)
    atexit.register(clock.write, args.out)
    runpy.run_path(args.script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
