"""Run one benchmark child process and measure it from the outside: wall time, peak RSS, step times.

A fresh process per measurement is what a person starting a training sees (imports, model load, first
step), and it keeps one measurement's caches and thread pools out of the next.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Children never reach for the network: every model and picture is local.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class ChildFailed(RuntimeError):
    """A benchmark child exited non-zero; the message holds the end of its log."""


@dataclass
class ChildRun:
    """What one child process did, as seen from outside and from its step clock.

    Attributes:
        wall_s: Launch to exit.
        peak_rss_mb: Peak resident memory of the child (and its own children).
        step_ends: Seconds from launch to the end of each optimizer step.
        clock: Everything else the child's clock file holds (torch version, threads, ...).
    """

    wall_s: float
    peak_rss_mb: float
    step_ends: list[float]
    clock: dict = field(default_factory=dict)

    def seconds_per_step(self, warmup_steps: int) -> float:
        """Steady-state seconds per step: the median step after the first ``warmup_steps + 1``.

        The median, not the mean, so that another process's burst on a shared machine moves it little.
        A cost that comes every k steps (checkpoints, epoch ends) then shows in ``fixed_seconds``.

        Args:
            warmup_steps: Steps after the first one that still count as warm-up.

        Returns:
            Seconds per step, or NaN when fewer than two steps ran.
        """
        intervals = [b - a for a, b in pairwise(self.step_ends)]
        return median(intervals[min(warmup_steps, len(intervals) - 1) :])

    def fixed_seconds(self, per_step: float) -> float:
        """Start-up and shutdown: the wall time that the steps do not explain, ``T(N) - N * per_step``."""
        return self.wall_s - len(self.step_ends) * per_step


def run_child(command: list[str], run_dir: Path, clock_file: Path) -> ChildRun:
    """Run ``command`` in the repository root with its output in ``run_dir/log.txt``.

    Args:
        command: The command; it must write a step-clock JSON file to ``clock_file``.
        run_dir: A folder of this run alone (emptied first).
        clock_file: Where the child writes its step clock.

    Returns:
        The measured run.

    Raises:
        ChildFailed: The child exited non-zero or wrote no clock file.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log_path = run_dir / "log.txt"
    with log_path.open("wb") as log:
        launched = time.monotonic()
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
        )
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix all children of the bench).
        _, status, usage = os.wait4(proc.pid, 0)
        ended = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not clock_file.is_file():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise ChildFailed(f"{' '.join(command[:4])} ... exited {proc.returncode}; end of {log_path}:\n{tail}")
    clock = json.loads(clock_file.read_text())
    step_ends = [t - launched for t in clock.pop("step_ends")]
    return ChildRun(
        wall_s=ended - launched, peak_rss_mb=usage.ru_maxrss / 1024, step_ends=step_ends, clock=clock
    )


def median(values: list[float]) -> float:
    """Median of the values that are numbers (NaN when there are none)."""
    numbers = [v for v in values if v == v]
    return statistics.median(numbers) if numbers else float("nan")
