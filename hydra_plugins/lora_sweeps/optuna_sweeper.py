"""``hydra/sweeper=lora_optuna``: Optuna with pruning at checkpoints and a study in SQLite (Hydra sweeper plugin).

Hydra only instantiates sweepers defined under ``hydra_plugins``; this class is the thin plugin, the search
itself is ``sweeper.search.optuna``.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


# Hydra loads plugin modules outside sys.modules: plain annotations only (no __future__ import).
@dataclass
class SamplerConf:
    """``hydra.sweeper.sampler``: how Optuna picks each trial's values."""

    name: str = "tpe"  # tpe | random
    seed: Optional[int] = None  # noqa: UP045  (OmegaConf reads Optional, not `int | None`, on Python 3.10)


@dataclass
class PrunerConf:
    """``hydra.sweeper.pruner``: when a trial stops early (at its report steps)."""

    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 2  # median: no pruning until this many trials completed
    n_warmup_steps: int = 0  # median: no pruning at report steps below this training step
    reduction_factor: int = 3  # hyperband: keep about 1/reduction_factor at each rung


@dataclass
class LoraOptunaSweeperConf:
    """``hydra.sweeper.*`` of an Optuna search (see ``conf/hparams_search/optuna.yaml``)."""

    _target_: str = "hydra_plugins.lora_sweeps.optuna_sweeper.LoraOptunaSweeper"
    direction: str = "maximize"  # of eval.objective
    study_name: Optional[str] = None  # noqa: UP045  (None: sweep.name)
    storage: Optional[str] = None  # noqa: UP045  (None: sqlite:///<sweep.root>/optuna.db)
    n_trials: int = 20  # trials in the study in all, those of earlier runs of the same command included
    n_jobs: int = 1  # trials run at once (one batch for the launcher)
    report_steps: Any = field(default_factory=list)  # training steps where a trial is scored and may stop
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    preview: Any = field(default_factory=dict)  # render.* values of the grid at the report steps
    params: Any = None  # the search space: choice(...), interval(...), tag(log, interval(...)), range(...)


ConfigStore.instance().store(
    group="hydra/sweeper", name="lora_optuna", node=LoraOptunaSweeperConf, provider="lora-sweeps"
)


class LoraOptunaSweeper(Sweeper):
    """Asks Optuna for trials, runs each to its report steps and the end as jobs, tells Optuna the result."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher that runs each batch of jobs."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study (the callback has checked the settings and the values outside the space)."""
        from sweeper.search.optuna import run_search

        return run_search(self.config, self.launcher, arguments)
