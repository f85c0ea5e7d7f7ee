"""Where a job runs when a launcher runs several at once on one node: its own GPU, a fair share of CPU.

joblib's loky workers are long-lived processes; each claims the first free GPU index with an exclusive
file lock that it holds until it exits, and every job it runs uses that GPU. Jobs launched one per
process with their own ``CUDA_VISIBLE_DEVICES`` (submitit, SLURM) see one GPU and need nothing here.
On the CPU, n jobs at once each get cores / n threads: two jobs each running torch's default thread pool
on the same cores spin against each other and run many times slower than one after the other.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_claimed: tuple[int, object] | None = None  # (index, open lock file) for this process's lifetime


def claim_gpu(lock_dir: Path, count: int) -> int | None:
    """Claim a free GPU index for this process (idempotent).

    Args:
        lock_dir: Folder of the lock files, shared by the sweep's workers.
        count: Number of GPUs.

    Returns:
        The index, or None when all are taken by other live processes.
    """
    global _claimed
    if _claimed is not None:
        return _claimed[0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        handle = open(lock_dir / f"gpu-{index}.lock", "w")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.write(str(os.getpid()))
        handle.flush()
        _claimed = (index, handle)
        return index
    return None


def place_job(device: str, lock_dir: Path, parallel_jobs: int) -> str:
    """Pin this worker to a GPU (several visible, device auto) and share the CPU between parallel jobs.

    Args:
        device: ``model.device`` as configured.
        lock_dir: Folder of the GPU claim locks, shared by the sweep's workers.
        parallel_jobs: Jobs the launcher runs at once on this node (1 for in-process launchers).

    Returns:
        The device the job runs on: ``cuda:N`` for a claimed GPU, else ``device`` unchanged.
    """
    import torch

    if parallel_jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel_jobs))
    if device != "auto":
        return device
    count = torch.cuda.device_count()
    if count < 2:
        return device
    index = claim_gpu(lock_dir, count)
    if index is None:
        log.warning("All %d GPUs are claimed by other workers; this job shares GPU 0.", count)
        index = 0
    torch.cuda.set_device(index)
    return f"cuda:{index}"
