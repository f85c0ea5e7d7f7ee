"""``hydra/sweeper=packs`` (the default): the basic sweeper's jobs, launched one job per pack.

The sweep callback plans every configuration and groups them into packs (``sweep.pack``, see
``sweeper.planning.packs``) before this sweeper runs; each pack of several configurations is one job for the
configured launcher (in this process, a joblib worker, a SLURM array task), and that job trains its
configurations together. With ``sweep.pack=1`` the jobs are exactly the basic sweeper's.
"""

from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class PackSweeperConf:
    """``hydra.sweeper.*``: the basic sweeper's (its comma lists under ``params``)."""

    _target_: str = "hydra_plugins.lora_sweeps.pack_sweeper.PackSweeper"
    max_batch_size: Any = None
    # Hydra loads plugin modules outside sys.modules: plain annotations only (no __future__ import).
    params: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="packs", node=PackSweeperConf, provider="lora-sweeps"
)


class PackSweeper(BasicSweeper):
    """Launches the plan's packs: one job per pack, the pack's first configuration's overrides naming it."""

    def sweep(self, arguments: list[str]) -> Any:
        """Launch every pack as one batch of jobs (the callback has planned and checked them already)."""
        from sweeper.config.spec import sweep_dir_of
        from sweeper.planning.plan import SweepPlan, pack_job_overrides

        plan = SweepPlan.load(sweep_dir_of(self.config))
        jobs = pack_job_overrides(plan, plan.packs)
        if not jobs:
            return []
        results = self.launcher.launch(jobs, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # a failed job raises here, as under the basic sweeper
        return [results]
