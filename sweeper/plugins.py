"""Which Hydra sweeper and launcher run a sweep, known by the ``_target_`` of their conf dataclasses.

Each identity is the default ``_target_`` of the plugin's own conf (so a renamed plugin class cannot go
unnoticed here), and each question ("does the job run in this process?", "is this a halving sweep?") is a
lookup in one table, not a substring test.
"""

from __future__ import annotations

import os
from enum import StrEnum

from hydra._internal.core_plugins.basic_launcher import BasicLauncherConf
from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

from hydra_plugins.lora_sweeps.halving_sweeper import HalvingSweeperConf
from hydra_plugins.lora_sweeps.optuna_sweeper import LoraOptunaSweeperConf
from hydra_plugins.lora_sweeps.pack_sweeper import PackSweeperConf
from hydra_plugins.lora_sweeps.slurm_launcher import LoraSlurmQueueConf


class SweeperKind(StrEnum):
    """What decides the jobs of a multirun."""

    BASIC = "basic"  # Hydra's own: every combination of the command line's comma lists
    HALVING = "halving"  # hydra/sweeper=halving: successive halving over those combinations
    OPTUNA = "optuna"  # hydra/sweeper=lora_optuna: trials asked of Optuna, pruned at report steps
    OTHER = "other"  # any other search: its trials are not known before they run


class LauncherKind(StrEnum):
    """Where the jobs of a multirun run."""

    BASIC = "basic"  # one after the other in the command's own process
    JOBLIB = "joblib"  # worker processes on this machine
    SLURM = "slurm"  # SLURM jobs, submitted by submitit
    OTHER = "other"


BASIC_SWEEPER = BasicSweeperConf._target_
PACK_SWEEPER = PackSweeperConf._target_  # the default: the basic sweeper's jobs, in packs (sweep.pack)
HALVING_SWEEPER = HalvingSweeperConf._target_
LORA_OPTUNA_SWEEPER = LoraOptunaSweeperConf._target_
SLURM_LAUNCHERS = (
    SlurmQueueConf._target_,
    LoraSlurmQueueConf._target_,
)  # submitit's, and ours (one-line errors)

SWEEPER_KINDS = {
    BASIC_SWEEPER: SweeperKind.BASIC,
    PACK_SWEEPER: SweeperKind.BASIC,
    HALVING_SWEEPER: SweeperKind.HALVING,
    LORA_OPTUNA_SWEEPER: SweeperKind.OPTUNA,
}
LAUNCHER_KINDS = {
    BasicLauncherConf._target_: LauncherKind.BASIC,
    JobLibLauncherConf._target_: LauncherKind.JOBLIB,
    **dict.fromkeys(SLURM_LAUNCHERS, LauncherKind.SLURM),
}


def sweeper_kind(hydra_cfg) -> SweeperKind:
    """The kind of ``hydra.sweeper``.

    Args:
        hydra_cfg: The ``hydra`` node of the config; None when the job is called without Hydra, which
            runs it as the basic sweeper does.
    """
    if hydra_cfg is None:
        return SweeperKind.BASIC
    return SWEEPER_KINDS.get(str(hydra_cfg.sweeper.get("_target_", "")), SweeperKind.OTHER)


def launcher_kind(hydra_cfg) -> LauncherKind:
    """The kind of ``hydra.launcher``.

    Args:
        hydra_cfg: The ``hydra`` node of the config; None when the job is called without Hydra, which
            runs it in this process as the basic launcher does.
    """
    if hydra_cfg is None:
        return LauncherKind.BASIC
    return LAUNCHER_KINDS.get(str(hydra_cfg.launcher.get("_target_", "")), LauncherKind.OTHER)


def launches_packs(hydra_cfg) -> bool:
    """Whether the sweeper launches one job per pack (``hydra/sweeper=packs``, the default)."""
    return hydra_cfg is not None and str(hydra_cfg.sweeper.get("_target_", "")) == PACK_SWEEPER


def parallel_jobs(hydra_cfg) -> int:
    """Jobs the launcher runs at once on this node (joblib's n_jobs; 1 otherwise)."""
    if launcher_kind(hydra_cfg) != LauncherKind.JOBLIB:
        return 1
    n_jobs = int(hydra_cfg.launcher.get("n_jobs") or 1)
    return n_jobs if n_jobs > 0 else os.cpu_count() or 1
