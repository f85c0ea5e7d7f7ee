"""How a SLURM sweep that ends without every job's result says so: one line, the exit status, nothing lost.

These run anywhere: submitit's local executor makes real failed and cancelled jobs, and a stand-in
``sbatch`` on PATH refuses a submission after accepting its ``--test-only`` check (as a real one does for
a QOS or array-size limit). ``tests/test_slurm.py`` runs the same paths on a real cluster.
"""

import os
import signal
import stat
import time
from pathlib import Path

import pytest
import submitit
from sweep_cli import FAST, sweep

from sweeper.launch.slurm import describe_failure

QOS = "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit)"


def test_a_failed_job_is_one_line_with_its_error_and_its_log(tmp_path):
    job = submitit.LocalExecutor(folder=tmp_path).submit(
        int, "abc"
    )  # a module the job's process imports: ValueError
    with pytest.raises(submitit.core.utils.FailedJobError) as failed:
        job.result()
    code, line = describe_failure(failed.value, {})
    assert code == 1 and "\n" not in line
    assert "ValueError: invalid literal for int() with base 10: 'abc'" in line
    log = line.split("its log: ")[1].split(")")[0]
    assert "invalid literal" in Path(log).read_text()
    assert "the same command continues" in line


def _job_started(job) -> bool:
    """The job's process runs and its task has started Python (submitit logs the pickle it loads)."""
    log = job.paths.stdout
    return job.state == "RUNNING" and log.exists() and "Loading pickle" in log.read_text()


@pytest.mark.slow  # the local job's controller waits for its task to stop after the cancel
def test_a_cancelled_job_is_one_line_with_its_state(tmp_path):
    executor = submitit.LocalExecutor(folder=tmp_path)
    executor.update_parameters(timeout_min=3)
    # submitit cancels a local job with SIGINT; a shell's background job (make test &) ignores SIGINT, and the
    # job's process would inherit that: give it Python's default handling
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        job = executor.submit(time.sleep, 60)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 30
    while not _job_started(job):
        assert time.monotonic() < deadline, "the local job never started"
        time.sleep(0.05)
    job.cancel()
    with pytest.raises(submitit.core.utils.UncompletedJobError) as cancelled:
        job.result()
    code, line = describe_failure(cancelled.value, {})
    assert code == 1 and "\n" not in line
    assert f"SLURM job {job.job_id} ended without a result (state: INTERRUPTED)" in line


def _stand_ins(folder):
    """``sbatch`` that passes ``--test-only`` and refuses the real submission; ``sinfo`` of one CPU node."""
    scripts = {
        "sbatch": f'if [ "$1" = --test-only ]; then echo "sbatch: Job 1 to start at now" >&2; exit 0; fi\n'
        f'echo "{QOS}" >&2; exit 1\n',
        "sinfo": 'echo "debug*|(null)"\n',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_a_submission_sbatch_refuses_after_its_check_is_one_line_and_exit_2(tmp_path, cache_dir):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_ins(bin_dir)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = [
        "experiment=quickstart",
        *FAST,
        "launcher=submitit_slurm",
        "tracking.enabled=false",
    ]  # no store set-up lines
    result = sweep(tmp_path, *args, env=env, timeout=300)
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: sbatch refused the jobs of this sweep: ") and QOS in line
    assert "hydra.launcher.cpus_per_task=8" in line, "names the request"
    assert "Traceback" not in result.output
    assert (tmp_path / "quickstart" / "sweep.json").is_file(), "the plan is kept: the same command retries"
