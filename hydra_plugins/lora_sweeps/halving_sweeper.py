"""``hydra/sweeper=halving``: successive halving over the configurations of a sweep (Hydra sweeper plugin).

Hydra only instantiates sweepers defined under ``hydra_plugins``; this class is the thin plugin, the
bracket itself is ``sweeper.search.halving``.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class HalvingSweeperConf:
    """``hydra.sweeper.*`` of a halving sweep (see ``conf/hparams_search/halving.yaml``)."""

    _target_: str = "hydra_plugins.lora_sweeps.halving_sweeper.HalvingSweeper"
    eta: int = 3  # keep the best 1/eta of each rung; the rungs are eta times longer each
    rungs: Any = None  # rung steps: max_train_steps / eta^(rungs-1), ..., max_train_steps (3 when null)
    steps: Any = None  # or the rungs below the top by hand ([100]: one decision at step 100); not with rungs
    # Hydra loads plugin modules outside sys.modules: plain annotations only (no __future__ import).
    preview: Any = field(default_factory=dict)  # render.* values of the rungs below the top
    params: Any = None  # the search space, as comma lists (like the basic sweeper's)


ConfigStore.instance().store(
    group="hydra/sweeper", name="halving", node=HalvingSweeperConf, provider="lora-sweeps"
)


class HalvingSweeper(Sweeper):
    """Runs every configuration to the first rung, then the best ``1/eta`` to the next, up to the top."""

    def __init__(self, eta: int, rungs: Any, preview: DictConfig, params: Any, steps: Any = None) -> None:
        self.eta, self.rungs, self.preview, self.params, self.steps = eta, rungs, preview, params, steps
        self.config = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher that runs each rung's batch of jobs."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: Any) -> Any:
        """Run the bracket (the callback has planned and checked every configuration already)."""
        from sweeper.search.halving import run_bracket

        return run_bracket(self.config, self.launcher)
