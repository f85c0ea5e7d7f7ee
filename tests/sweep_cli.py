"""Run ``python -m sweeper`` the way a user does, in a subprocess, for the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Small enough to keep each sweep to seconds on 2 CPU cores, large enough to exercise every stage.
FAST = ["debug=fast"]  # conf/debug/fast.yaml


@dataclass
class Result:
    """A finished command."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> Result:
    """Run ``python -m <module> args...`` from the repository root with the test environment."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def sweep(
    root: Path, *args: str, multirun: bool = True, timeout: float = 600, env: dict | None = None
) -> Result:
    """``python -m sweeper [-m] args... sweep.root=<root>``."""
    flags = ["-m"] if multirun else []
    return run_cli("sweeper", *flags, *args, f"sweep.root={root}", timeout=timeout, env=env)


def start_sweep(root: Path, *args: str, capture: bool = False, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m sweeper -m args... sweep.root=<root>`` in its own session, to be killed or waited for.

    ``capture`` pipes stdout and stderr together as text; otherwise both are discarded.
    """
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", "-m", *args, f"sweep.root={root}"],
        cwd=REPO,
        stdout=output,
        stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def refused(result: Result, *needles: str) -> None:
    """Assert a command refused its input: exit status 2 and one ``error:`` line naming each needle."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], result.output


def planned_refusal(capsys, root: Path, *args: str) -> Result:
    """Run the checks ``python -m sweeper -m args... sweep.root=<root>`` makes before any job, in-process.

    The config is composed as Hydra composes a multirun's, and the sweep callback plans and checks it; it
    must stop the command. Returns the exit status and what it printed, as ``sweep`` does.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sweeper.app import CONF_DIR
    from sweeper.planning.callback import SweepCallback

    overrides = [*args, f"sweep.root={root}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config(
            "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        with pytest.raises(SystemExit) as stopped:
            SweepCallback().on_multirun_start(config)
    printed = capsys.readouterr()
    return Result(stopped.value.code, printed.out, printed.err)


def run_records(sweep_dir: Path) -> dict[str, dict]:
    """Each run folder's ``run.json``, by folder name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


def mlflow_runs(root: Path, experiment: str) -> list:
    """Every run of an experiment in the sweep root's SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return client.search_runs([found.experiment_id])


# Every Python process of a sweep run with ``probe_env`` leaves a note at exit: its name, argv, and whether
# it imported mlflow (a job's MLflow belongs in its helper process, sweeper.tracking.helper).
MLFLOW_PROBE = """import atexit, json, multiprocessing, os, sys
def _mark():
    with open(os.path.join(os.environ['PROBE_DIR'], f'process-{os.getpid()}.json'), 'w') as f:
        json.dump([multiprocessing.current_process().name, sys.argv, 'mlflow' in sys.modules], f)
atexit.register(_mark)
"""


def probed_processes(tmp_path) -> list[tuple[str, list[str], bool]]:
    """(process name, argv, imported mlflow) of every Python process of the sweep (``MLFLOW_PROBE``)."""
    return [tuple(json.loads(p.read_text())) for p in tmp_path.glob("process-*.json")]


def probe_env(tmp_path) -> dict[str, str]:
    """Every Python process of the sweep runs the probe at start (``sitecustomize``)."""
    (tmp_path / "sitecustomize.py").write_text(MLFLOW_PROBE)
    return {
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PROBE_DIR": str(tmp_path),
    }
