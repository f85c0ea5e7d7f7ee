"""One GPU per worker when a launcher runs several jobs at once on a multi-GPU node.

joblib's loky workers are long-lived processes; each claims the first free GPU index with an exclusive
file lock that it holds until it exits, and every job it runs uses that GPU. Jobs launched one per
process with their own ``CUDA_VISIBLE_DEVICES`` (submitit, SLURM) see one GPU and need nothing here.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

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


def pin_gpu(cfg: DictConfig) -> None:
    """Point ``model.device`` at this worker's GPU when several GPUs are visible and the device is auto."""
    if cfg.model.device != "auto":
        return
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return
    index = claim_gpu(Path(cfg.sweep.root) / ".gpu-locks", count)
    if index is None:
        log.warning("All %d GPUs are claimed by other workers; this job shares GPU 0.", count)
        index = 0
    torch.cuda.set_device(index)
    cfg.model.device = f"cuda:{index}"
