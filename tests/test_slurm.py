"""Sweeps through a real SLURM (sbatch, squeue, scancel): ``scripts/slurm_cluster.sh start`` starts one.

Skipped, with the reason, where ``sbatch`` is missing or the cluster does not answer; ``.ci/run`` starts the
cluster before the test command and stops it afterwards.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import assert_same_weights
from sweep_cli import FAST, mlflow_runs, probe_env, probed_processes, run_records, start_sweep, sweep

PICTURES = {f"{p}_{u};{t};4.png" for p in ("ph", "be") for u in ("0", "0.5", "1") for t in ("0", "1")}
LORA = "lora/pytorch_lora_weights.safetensors"


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return (
            "sbatch is not installed: scripts/slurm_cluster.sh start installs and starts a single-node SLURM"
        )
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo does not answer ({err}): scripts/slurm_cluster.sh start"
    if out.returncode != 0 or not {"idle", "mix", "alloc"} & set(out.stdout.split()):
        said = (out.stderr or out.stdout).strip().splitlines()[:1]
        return f"no SLURM node is up (sinfo: {said}): scripts/slurm_cluster.sh start"
    return None


PROBLEM = _cluster_problem()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM)),
]

# Jobs share this machine's cores: one thread each keeps two jobs from oversubscribing them.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# What a CPU-only partition needs: no GPU (the preset's default there), a request the node can meet.
SLURM = ["launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4"]
# One job that trains long enough to be interrupted (120 steps, a few seconds to a minute here).
LONG = [
    "train.learning_rate=1e-3",
    "train.max_train_steps=120",
    "train.checkpoint_every=10",
    "render.enabled=false",
    "tracking.enabled=false",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    """The LoRA of ``LONG`` at text-encoder lr 1e-4, trained in one go in this process's launcher."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = sweep(root, "experiment=quickstart", *FAST, *LONG, "train.text_encoder_lr=1e-4", env=ENV)
    assert result.returncode == 0, result.output
    return root / "quickstart" / "1e-3;1e-4" / LORA


def _start(root, *args):
    return start_sweep(root, *args, capture=True, env=ENV)


def _wait_for(condition, process, what, limit=600, allow_exit=False):
    deadline = time.monotonic() + limit
    while not condition():
        if (process.poll() is not None and not allow_exit) or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{what} did not happen; the sweep said:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)


def _job_ids(sweep_dir):
    """SLURM ids of the sweep's jobs (submitit's folders ``<id>`` or ``<array>_<index>``)."""
    return sorted(p.name for p in sweep_dir.glob("_hydra/multirun-*/.submitit/*") if p.name[0].isdigit())


def _finish(process, timeout=900):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        pytest.fail(f"the sweep did not end:\n{output[-3000:]}")
    return process.returncode, output


def test_a_2_job_sweep_through_sbatch_writes_what_the_local_launcher_writes(tmp_path, cache_dir):
    """The two configurations are one pack: one SLURM job, a fresh process that logs each configuration's
    run live through its MLflow helper process, never importing MLflow itself (sweeper.tracking.helper; the
    probe sees the batch job's submitit process)."""
    env = {**ENV, **probe_env(tmp_path)}
    result = sweep(tmp_path, "experiment=quickstart", *FAST, "train.learning_rate=1e-3", *SLURM, env=env)
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "quickstart"
    assert _job_ids(sweep_dir), "the jobs went through sbatch"
    jobs = [p for p in probed_processes(tmp_path) if p[1][0].endswith("_submit.py")]
    assert len(jobs) == 1 and not any(imported for *_, imported in jobs), probed_processes(tmp_path)
    records = run_records(sweep_dir)
    assert set(records) == {"1e-3;1e-4", "1e-3;1e-5"} and all(r["status"] == "done" for r in records.values())
    for name in records:
        assert {p.name for p in (sweep_dir / name).glob("*.png")} == PICTURES
        assert (sweep_dir / name / LORA).is_file() and (sweep_dir / name / "scores.csv").is_file()
    assert {p.name for p in (sweep_dir / "sheets").iterdir()} == {"ph.png", "be.png"}
    assert (sweep_dir / "report.md").is_file() and (sweep_dir / "compare.html").is_file()
    runs = mlflow_runs(tmp_path, "quickstart")
    children = [r for r in runs if r.data.tags.get("sweep_role") == "job"]
    assert {r.info.run_name for r in children} == set(records)
    assert all(r.info.status == "FINISHED" and "loss" in r.data.metrics for r in children)
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.status == "FINISHED"
    assert all(r.data.tags["sweep_parent"] == parent.info.run_id for r in children)


def test_a_halving_sweep_submits_each_rung_as_one_array_and_continues_the_best_from_a_checkpoint(
    tmp_path, cache_dir
):
    """Successive halving on the real cluster: 2 configurations to step 4, the better one on to step 8."""
    halving = [
        "experiment=quickstart",
        "hparams_search=halving",
        *FAST,
        "train.max_train_steps=8",
        "train.learning_rate=1e-3",
        "hydra.sweeper.eta=2",
        "hydra.sweeper.rungs=2",
        "tracking.enabled=false",
    ]
    result = sweep(tmp_path, *halving, *SLURM, env=ENV)
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "quickstart"
    arrays = {job.split("_")[0] for job in _job_ids(sweep_dir)}
    assert len(arrays) == 2, f"one sbatch array per rung: {sorted(_job_ids(sweep_dir))}"
    bracket = json.loads((sweep_dir / "bracket.json").read_text())
    assert bracket["steps"] == [4, 8] and len(bracket["scores"][0]) == 2
    promoted = set(bracket["promoted"][0])
    assert len(promoted) == 1 and set(bracket["scores"][1]) == promoted
    records = run_records(sweep_dir)
    for name in bracket["scores"][0]:
        assert (sweep_dir / name / LORA).is_file() == (name in promoted), name
    for name in promoted:
        resumed = records[name]["result"]["resumed_from"]
        assert records[name]["status"] == "done" and resumed.endswith("step-000004"), resumed
    assert "## Halving bracket" in (sweep_dir / "report.md").read_text()


def _squeue_count() -> int:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return len(out.stdout.split())


def test_a_gpu_request_on_a_partition_without_gpus_fails_in_one_line_before_any_job(tmp_path, cache_dir):
    result = sweep(
        tmp_path, "experiment=quickstart", *FAST, *SLURM, "hydra.launcher.gpus_per_node=1", env=ENV
    )
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "hydra.launcher.gpus_per_node=1" in line and "partition" in line and "no GPUs" in line
    assert "gpus_per_node=0" in line, "says what to do"
    assert not _job_ids(tmp_path / "quickstart") and not (tmp_path / "quickstart" / "sweep.json").exists()


def test_a_request_sbatch_refuses_is_one_line_with_sbatchs_message(tmp_path, cache_dir):
    before = _squeue_count()
    result = sweep(tmp_path, "experiment=quickstart", *FAST, *SLURM, "hydra.launcher.mem_gb=100000", env=ENV)
    assert result.returncode == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "sbatch" in line and "Requested node configuration is not available" in line
    assert "hydra.launcher.mem_gb=100000" in line
    assert _squeue_count() == before and not _job_ids(tmp_path / "quickstart")


def test_a_signalled_job_saves_a_checkpoint_is_requeued_and_ends_with_uninterrupted_weights(
    tmp_path, cache_dir, uninterrupted
):
    # SIGUSR2 is what SLURM sends signal_delay_s before the time limit (and on preemption, where configured);
    # no periodic checkpoints: the one the job continues from is the one the signal made it save
    args = [
        "experiment=quickstart",
        *FAST,
        *LONG,
        "train.checkpoint_every=0",
        "train.text_encoder_lr=1e-4",
        *SLURM,
    ]
    process = _start(tmp_path, *args)
    run = tmp_path / "quickstart" / "1e-3;1e-4"
    _wait_for(lambda: (run / "lora" / "loss_log.jsonl").is_file(), process, "training started")
    (job,) = _job_ids(tmp_path / "quickstart")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    code, output = _finish(process)
    assert code == 0, output
    assert _restarts(job) == 1, "requeued once"
    record = run_records(tmp_path / "quickstart")["1e-3;1e-4"]
    resumed = record["result"]["resumed_from"]
    assert record["status"] == "done" and resumed and 0 < int(resumed.rsplit("-", 1)[1]) < 120
    assert_same_weights(run / LORA, uninterrupted)


def _restarts(job: str) -> int:
    """How often SLURM requeued a job (``scontrol show job``; finished jobs are kept for MinJobAge)."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return int(out.split("Restarts=", 1)[1].split()[0]) if "Restarts=" in out else 0


def test_a_job_past_its_time_limit_is_requeued_and_finishes(tmp_path, cache_dir, uninterrupted):
    # a training of about 100 s at this machine's speed (measured by the uninterrupted run), at a 2-minute limit;
    # SLURM warns 30 s before the limit, or up to 60 s earlier (its event resolution, sbatch --signal): 30 to 90 s
    # in, after the job's start-up, while it trains; the job saves a checkpoint and is requeued. The speed was
    # measured while other tests shared the cores: a job that ends before the warning is run again, 3x longer.
    speed = json.loads((uninterrupted.parent / "train_result.json").read_text())["steps_per_second"]
    steps = max(300, int(speed * 100))
    for attempt in range(3):
        root = tmp_path / f"attempt-{attempt}"
        process = _start(
            root,
            "experiment=quickstart",
            *FAST,
            "train.learning_rate=1e-3",
            "train.text_encoder_lr=1e-4",
            f"train.max_train_steps={steps}",
            "render.enabled=false",
            "tracking.enabled=false",
            *SLURM,
            "hydra.launcher.timeout_min=2",
            "hydra.launcher.signal_delay_s=30",
        )
        sweep_dir = root / "quickstart"

        def requeued_or_ended(sweep_dir=sweep_dir, process=process):
            requeued = _job_ids(sweep_dir) and _restarts(_job_ids(sweep_dir)[0]) >= 1
            return requeued or process.poll() is not None

        _wait_for(requeued_or_ended, process, "a requeue or the end", allow_exit=True)
        ids = _job_ids(sweep_dir)
        if ids and _restarts(ids[0]) >= 1:
            break
        code, output = _finish(process)
        assert code == 0 and ids, output  # it trained to the end before SLURM's warning: train longer
        steps *= 3
    else:
        pytest.fail(f"no requeue: {steps // 3} steps ended before the time limit's warning three times")
    # the requeued job gets the time to finish (else each 2-minute attempt would add a few steps)
    (job,) = _job_ids(sweep_dir)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=20"], check=True)
    code, output = _finish(process)
    assert code == 0, output
    record = run_records(sweep_dir)["1e-3;1e-4"]
    resumed = record["result"]["resumed_from"]
    assert record["status"] == "done" and resumed and 0 < int(resumed.rsplit("-", 1)[1]) < steps
    assert _restarts(job) >= 1


def test_a_cancelled_pack_run_again_continues_each_configuration_from_its_own_checkpoint(tmp_path, cache_dir):
    # one pack: 60 steps finish while 120 train on, then the job is cancelled
    args = [
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        "train.lr_scheduler=linear",  # the step counts do not share a training (no step-axis reuse)
        "train.max_train_steps=60,120",
        "train.text_encoder_lr=1e-4",
        "train.checkpoint_every=10",
        "render.enabled=false",
        "tracking.enabled=false",
        "sweep.run_dir_template='{learning_rate};{text_encoder_lr};{max_train_steps}'",
    ]
    process = _start(tmp_path, *args, *SLURM)
    sweep_dir = tmp_path / "quickstart"
    checkpoints = sweep_dir / "1e-3;1e-4;120" / "lora" / "checkpoints"
    _wait_for(
        lambda: (checkpoints / "step-000070").is_dir(), process, "a checkpoint past the short one's end"
    )
    finished = sweep_dir / "1e-3;1e-4;60" / LORA
    assert finished.is_file()
    stamp = finished.stat().st_mtime_ns
    subprocess.run(["scancel", _job_ids(sweep_dir)[0].split("_")[0]], check=True)
    code, output = _finish(process)
    assert code == 1, output
    assert "Traceback" not in output, "one line, not a traceback"
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "stopped at step" in line and "run the same command again" in line
    assert not (checkpoints.parent / "pytorch_lora_weights.safetensors").exists()
    rerun = sweep(tmp_path, *args, *SLURM, env=ENV)
    assert rerun.returncode == 0, rerun.output
    records = run_records(sweep_dir)
    assert records["1e-3;1e-4;60"]["result"]["trained"] is False, (
        "the finished configuration is not trained again"
    )
    assert finished.stat().st_mtime_ns == stamp
    resumed = records["1e-3;1e-4;120"]["result"]["resumed_from"]
    assert resumed and int(resumed.rsplit("-", 1)[1]) >= 70
    assert all(r["pack"]["size"] == 2 for r in records.values())
    assert (sweep_dir / "1e-3;1e-4;120" / LORA).is_file()  # bit for bit as uninterrupted: test_pack_sweeps.py
    assert all(r["status"] == "done" for r in records.values())
