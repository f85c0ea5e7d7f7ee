"""What a SLURM partition offers, and whether the sweep's request fits it, asked before any job is submitted.

``launcher=submitit_slurm`` asks for GPUs only where the partition has them (``${slurm_gpus:...}`` in
``conf/launcher/submitit_slurm.yaml``, read from ``sinfo``). An explicit request the partition cannot meet,
or any other request ``sbatch`` refuses, stops the sweep in the planning step with one line that names the
partition, the request and sbatch's own words: ``sbatch --test-only`` checks the very script submitit would
submit, and submits nothing.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile

from lora_core.errors import UserInputError
from sweeper.errors import FAILURE_EXIT, USER_ERROR_EXIT
from sweeper.plugins import SLURM_LAUNCHERS

_GPU = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")  # gres "gpu:4", "gpu:a100:4(S:0-1)"; a bare "gpu" counts 1


def _sinfo_partitions() -> list[tuple[str, str]] | None:
    """(partition, gres) per node group, default partition marked ``*``; None without a SLURM to ask."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [tuple(line.split("|", 1)) for line in out.stdout.splitlines() if "|" in line]


def gres_gpus(gres: str) -> int:
    """GPUs per node in a ``sinfo`` gres field (``(null)``, ``gpu:2``, ``gpu:a100:4(S:0-1),shard:8``)."""
    total = 0
    for item in gres.split(","):
        item = item.strip()
        match = _GPU.match(item)
        total += int(match.group(1)) if match else int(item == "gpu")
    return total


def default_partition() -> str | None:
    """The cluster's default partition (``sinfo`` marks it ``*``), or None."""
    rows = _sinfo_partitions() or []
    return next((name.rstrip("*") for name, _ in rows if name.endswith("*")), None)


def partition_gpus(partition: str | None) -> int | None:
    """The most GPUs a node of ``partition`` (None: the default partition) has.

    Returns:
        The count (0 for a partition without GPUs), or None when ``sinfo`` is missing, fails, or does not
        know the partition.
    """
    rows = _sinfo_partitions()
    if rows is None:
        return None
    if partition is None:
        found = [gres for name, gres in rows if name.endswith("*")]
    else:
        found = [gres for name, gres in rows if name.rstrip("*") == partition]
    return max((gres_gpus(g) for g in found), default=None)


def slurm_gpus(partition: str | None, wanted: int = 1) -> int:
    """``${slurm_gpus:${hydra.launcher.partition},1}``: ``wanted`` GPUs where the partition has them, else 0.

    Without ``sinfo`` (not on a SLURM login node) the request stays ``wanted``; the planning step then says
    that sbatch is missing.
    """
    have = partition_gpus(None if partition in (None, "") else str(partition))
    return int(wanted) if have is None else min(int(wanted), have)


def _requested_gpus(launcher: dict) -> tuple[str, int] | None:
    """The launcher's GPU request as (key=value, GPUs per node), or None when it asks for none."""
    for key in ("gpus_per_node", "gpus_per_task"):
        if launcher.get(key):
            return f"hydra.launcher.{key}={launcher[key]}", int(launcher[key])
    gres = launcher.get("gres") or ""
    if gres_gpus(gres):
        return f"hydra.launcher.gres={gres}", gres_gpus(gres)
    return None


def _sbatch_script(launcher: dict, folder: str) -> str:
    """The sbatch script submitit writes for one job of this launcher config (Hydra's parameter mapping)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    params = {k if k in shared else f"slurm_{k}": v for k, v in launcher.items() if k not in skip}
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**params)
    return executor._executor._make_submission_file_text("true", "check")


def check_slurm_request(launcher: dict) -> None:
    """Refuse a SLURM request before any job is submitted.

    Args:
        launcher: The resolved ``hydra.launcher`` config; anything but submitit's SLURM launcher passes.

    Raises:
        UserInputError: ``sbatch`` is not on PATH, the partition has no GPUs for a GPU request, or
            ``sbatch --test-only`` refuses the jobs' script (its message is quoted).
    """
    if launcher.get("_target_") not in SLURM_LAUNCHERS:
        return
    partition = launcher.get("partition")
    where = f"partition {partition}" if partition else f"the default partition ({default_partition()})"
    if shutil.which("sbatch") is None:
        raise UserInputError(
            "launcher=submitit_slurm: sbatch is not on PATH; run the sweep where SLURM's commands are "
            "(a login node of the cluster), or use launcher=submitit_local on this machine."
        )
    gpus = _requested_gpus(launcher)
    if gpus is not None and partition_gpus(partition) == 0:
        raise UserInputError(
            f"{gpus[0]}: {where} has no GPUs (sinfo lists no gpu gres). Add hydra.launcher.gpus_per_node=0 "
            "to run on its CPUs, or choose a partition with GPUs (hydra.launcher.partition=<name>; sinfo -o '%P %G' lists them)."
        )
    with tempfile.TemporaryDirectory(prefix="sbatch-check-") as folder:
        script = f"{folder}/check.sh"
        with open(script, "w") as f:
            f.write(_sbatch_script(launcher, folder))
        out = subprocess.run(["sbatch", "--test-only", script], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        message = " ".join(line.strip() for line in out.stderr.splitlines() if line.strip())
        raise UserInputError(
            f"sbatch refuses the jobs of this sweep on {where}: {message}. {_request(launcher)}"
        )


def _request(launcher: dict) -> str:
    keys = ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "nodes", "tasks_per_node")
    asked = " ".join(f"hydra.launcher.{k}={launcher[k]}" for k in keys if launcher.get(k) is not None)
    return (
        f"The request: {asked}; change what the partition cannot give (sinfo -o '%P %c %m %G %l' shows it)."
    )


_LOG = re.compile(r"^\s*- (\S+_log\.err)\s*$", re.MULTILINE)
_NO_RESULT = re.compile(r"Job (\S+) \(task: \d+\).*?\(state: ([^)]*)\)", re.DOTALL)


def describe_failure(err: Exception, launcher: dict) -> tuple[int, str]:
    """One line (and the exit status) for a SLURM sweep that ended without every job's result.

    Args:
        err: What submitit raised while submitting the jobs or collecting their results.
        launcher: The launcher's parameters (named in the line when sbatch refused them).

    Returns:
        (2, line) when ``sbatch`` refused the submission (bad input: the request), (1, line) when a job was
        cancelled, ended without a result or failed (the job's log is named). Either way finished runs and
        checkpoints are kept, and the same command continues the sweep.
    """
    import subprocess

    text = str(err).strip()
    cause = err.__cause__
    again = "finished runs are kept; the same command continues the others from their last checkpoints"
    if isinstance(cause, subprocess.CalledProcessError) and "sbatch" in str(cause.cmd):
        said = " ".join(line.strip() for line in (cause.stderr or text).splitlines() if line.strip())
        return USER_ERROR_EXIT, f"sbatch refused the jobs of this sweep: {said}. {_request(launcher)}"
    if (match := _NO_RESULT.search(text)) is not None:
        job, state = match.groups()
        return FAILURE_EXIT, f"SLURM job {job} ended without a result (state: {state.strip()}); {again}."
    log = _LOG.search(text)
    trace = [line.strip() for line in text.split("You can check full logs")[0].splitlines() if line.strip()]
    last = next((line for line in reversed(trace) if not set(line) <= {"-"}), text)
    where = (
        f"its log: {shlex.quote(log.group(1))}"
        if log
        else "its log is in the sweep's _hydra/.submitit folder"
    )
    return FAILURE_EXIT, f"a SLURM job failed: {last} ({where}); {again}."


def describe_stopped(returns) -> tuple[int, list[str]] | None:
    """Lines (and the exit status) for jobs that ended on a signal or on bad input, None if none did.

    A job that SLURM cancelled, preempted or timed out past its requeues saved a checkpoint and returned
    ``TrainingStopped``; a job that found bad input returned ``UserInputError``. Each is one line; any other
    failure is a bug and is left to Hydra (None), traceback and all.

    Args:
        returns: The launcher's ``JobReturn`` of every job.

    Returns:
        (2 if every failure is bad input else 1, one line per failed job), or None.
    """
    from hydra.core.utils import JobStatus

    from lora_core.training import TrainingStopped

    failed = [getattr(r, "_return_value", None) for r in returns if r.status == JobStatus.FAILED]
    if not failed or not all(isinstance(e, TrainingStopped | UserInputError) for e in failed):
        return None
    lines = []
    for err in failed:
        if isinstance(err, TrainingStopped):
            step, checkpoint = err.args
            lines.append(
                f"a SLURM job stopped at step {step} (cancelled, preempted, or out of requeues) and saved "
                f"{checkpoint}; run the same command again to continue from it."
            )
        else:
            lines.append(str(err))
    return (USER_ERROR_EXIT if all(isinstance(e, UserInputError) for e in failed) else FAILURE_EXIT), lines
