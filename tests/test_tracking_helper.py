"""MLflow in a helper process (``sweeper.tracking.helper``): the job's process never imports MLflow, every
write still lands in the store in order, a dead helper is a store that went away, and bugs still surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_cli import REPO

# Each script runs in a fresh interpreter, as a SLURM or joblib job does: no MLflow imported before.
OPEN = """
import json, os, signal, sys, time
from pathlib import Path
from sweeper.tracking import helper
root = Path(sys.argv[1])
tracker = helper.TrackerProxy(f"sqlite:///{root / 'mlflow.db'}", "exp", root / "sweep")
run, finished = tracker.child_run(None, "1e-4;0", {"sweep": "s"})
helper_pid = helper._helper().submit(os.getpid).result()


def wait_until(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{condition.__name__}: still false after {seconds} s"
        time.sleep(0.01)


def signals_handled():  # none pending: each was ignored, or delivered (and the helper is gone)
    try:
        status = Path(f"/proc/{helper_pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return True
    return all(int(line.split()[1], 16) == 0 for line in status if line.startswith(("SigPnd:", "ShdPnd:")))


def helper_gone():  # reaped by the proxy's reader, which then marks the store gone
    try:
        os.kill(helper_pid, 0)
    except ProcessLookupError:
        return True
    return False
"""


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OPEN + body, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow  # a fresh interpreter and its helper, which imports MLflow and creates a store
def test_the_proxy_logs_in_order_through_the_helper_and_the_job_never_imports_mlflow(tmp_path):
    done = _script(
        tmp_path,
        """
for step in range(1, 8):
    tracker.log_metrics(run, [("loss", 1.0 / step, step)])  # sent without waiting
tracker.log_params(run, {"train.learning_rate": "0.0001"})
tracker.finish(run)
print(json.dumps({"run": run, "finished": finished, "experiment": tracker.experiment_id,
                  "helper_is_another_process": helper_pid != os.getpid(), "mlflow_here": "mlflow" in sys.modules}))
""",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["helper_is_another_process"] and not out["mlflow_here"] and out["finished"] is False
    client = _client(tmp_path)
    run = client.get_run(out["run"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == out["experiment"]
    assert run.data.params["train.learning_rate"] == "0.0001" and run.data.tags["run_dir"] == "1e-4;0"
    history = client.get_metric_history(out["run"], "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, 1.0 / s) for s in range(1, 8)
    ]


@pytest.mark.slow  # a fresh interpreter and its helper, which imports MLflow and creates a store
def test_the_helper_ignores_the_signals_the_job_handles(tmp_path):
    done = _script(
        tmp_path,
        """
for name in ("SIGTERM", "SIGINT", "SIGUSR1"):
    os.kill(helper_pid, getattr(signal, name))
wait_until(signals_handled)
tracker.log_params(run, {"after": "signals"})
tracker.finish(run)
print(json.dumps({"run": run, "active": tracker.active}))
""",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["active"]
    run = _client(tmp_path).get_run(out["run"])
    assert run.info.status == "FINISHED" and run.data.params["after"] == "signals"


@pytest.mark.slow  # a fresh interpreter and its helper, which imports MLflow and creates a store
def test_a_dead_helper_is_a_store_gone_away_one_warning_and_the_pending_note(tmp_path):
    done = _script(
        tmp_path,
        """
os.kill(helper_pid, signal.SIGKILL)
wait_until(helper_gone)
first = tracker.log_params(run, {"a": "1"})
second = tracker.finish(run)
print(json.dumps({"first": first, "second": second, "active": tracker.active}))
""",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "first": None,
        "second": None,
        "active": False,
    }
    assert done.stderr.count("helper process stopped") == 1, done.stderr
    note = (tmp_path / "sweep" / "MLFLOW_PENDING").read_text()
    assert "helper process stopped" in note and "python -m sweeper.tracking" in note


@pytest.mark.slow  # a fresh interpreter and its helper, which imports MLflow and creates a store
def test_a_bug_in_a_call_sent_without_waiting_surfaces_at_the_next_call(tmp_path):
    done = _script(
        tmp_path,
        """
tracker.log_metrics(run, [("loss", "not a number", 1)])
try:
    tracker.finish(run)
except ValueError as err:
    print(json.dumps({"raised": str(err)}))
""",
    )
    assert done.returncode == 0, done.stderr
    assert "could not convert string to float" in json.loads(done.stdout.strip().splitlines()[-1])["raised"]
