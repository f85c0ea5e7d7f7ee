"""A metric-driven search with Optuna: trials scored at checkpoints, weak ones pruned, the study in SQLite.

Optuna (ask/tell) samples a batch of ``n_jobs`` trials from ``hydra.sweeper.params`` (the syntax of
Hydra's Optuna sweeper: ``choice(...)``, ``interval(a, b)``, ``tag(log, interval(a, b))``, ``range(a, b)``).
Each trial trains in stages, one batch of jobs per stage for whichever launcher is configured: to each of
``hydra.sweeper.report_steps`` below its ``train.max_train_steps`` (a ``sweep.stop_at_step`` job that
renders the preview grid into ``<run>/step-<n>/`` and is scored by ``eval.objective``, as a halving rung),
then to the end. After each stage the trial reports its objective at that training step and the pruner
(median or Hyperband) decides whether it goes on; each stage continues the run from its checkpoint, so a
trial that finishes has the weights of one straight run.

The study lives in ``sqlite:///<sweep.root>/optuna.db`` (beside the MLflow store) under the sweep's name:
the same command run again continues it. Finished trials count towards ``n_trials`` and are not rerun;
a trial that was running resumes from the steps it reported (and its jobs from their checkpoints).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_core.errors import UserInputError
from sweeper.disk.layout import OPTUNA_FILE, SweepFolder
from sweeper.disk.naming import override_value, train_short_keys
from sweeper.search.objective import known_objective

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
RUN_DIR_ATTR = "run_dir"  # a trial's user attribute: its run folder's name


@dataclass
class SearchSpace:
    """``hydra.sweeper.params`` and the command line's sweeps, split.

    Attributes:
        distributions: Searched key -> Optuna distribution.
        fixed: Overrides every trial gets (the command line's single values, ``params`` entries that are not
            sweeps).
    """

    distributions: dict = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: dict) -> list[str]:
        """A trial's overrides: the fixed ones, then its sampled values."""
        return [*self.fixed, *(f"{key}={override_value(value)}" for key, value in params.items())]

    def train_keys(self) -> list[str]:
        """The searched ``train.`` keys by their short name (they name the run folders)."""
        return train_short_keys(self.distributions)

    def largest(self, key: str, default: int) -> int:
        """The largest value a searched integer key can take (``default`` when it is not searched)."""
        return int(_bounds(self.distributions[key])[1]) if key in self.distributions else default


def _bounds(distribution) -> tuple[float, float]:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return min(distribution.choices), max(distribution.choices)
    return distribution.low, distribution.high


def _distribution(line: str, sweep):
    """The Optuna distribution of one Hydra sweep (``choice``, ``range``, ``interval``, with ``log``)."""
    log_scale = "log" in sweep.tags
    try:
        return _make_distribution(sweep, log_scale)
    except ValueError as err:  # Optuna's own check: low above high, log of zero, an empty range
        raise UserInputError(f"{line}: {err} (in hydra.sweeper.params or on the command line).") from None


def _make_distribution(sweep, log_scale: bool):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    if isinstance(sweep, RangeSweep):
        values = [
            sweep.start + k * sweep.step for k in range(math.ceil((sweep.stop - sweep.start) / sweep.step))
        ]
        if all(isinstance(v, int) for v in values) and values:
            return IntDistribution(values[0], values[-1], step=sweep.step)
        return CategoricalDistribution(values)
    raise ValueError("use choice(...), interval(a, b) or range(a, b)")


def search_space(config: DictConfig, arguments: list[str]) -> SearchSpace:
    """The search space of ``hydra.sweeper.params`` and the command line (a sweep there wins).

    Raises:
        UserInputError: A sweep Optuna cannot sample (``glob``), an empty choice or interval.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space = SearchSpace()
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            space.distributions[key] = _distribution(override.input_line, override.value())
            fixed.pop(key, None)
        else:
            fixed[key] = override.input_line
            space.distributions.pop(key, None)
    space.fixed = list(fixed.values())
    return space


@dataclass
class SearchSettings:
    """``hydra.sweeper`` of an Optuna search, checked."""

    direction: str
    study_name: str
    storage: str
    n_trials: int
    n_jobs: int
    report_steps: list[int]
    sampler: dict
    pruner: dict
    preview: dict


def default_storage(sweep_root: str | Path) -> str:
    """``sqlite:///<sweep.root>/optuna.db`` (absolute), beside MLflow's default store."""
    return f"sqlite:///{Path(sweep_root).resolve() / OPTUNA_FILE}"


def search_settings(config: DictConfig) -> SearchSettings:
    """Read and check ``hydra.sweeper`` (values only; ``check_search`` checks them against the space).

    Raises:
        UserInputError: An unknown direction, sampler or pruner, n_trials or n_jobs below one, a report step
            below one, no report step with a pruner.
    """
    s = config.hydra.sweeper

    def one_of(key: str, value: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise UserInputError(f"hydra.sweeper.{key}={value}: use one of {', '.join(allowed)}.")
        return value

    for key in ("n_trials", "n_jobs"):
        if int(s[key]) < 1:
            raise UserInputError(f"hydra.sweeper.{key}={s[key]}: use 1 or more.")
    steps = sorted({int(v) for v in (s.report_steps or [])})
    if steps and steps[0] < 1:
        raise UserInputError(f"hydra.sweeper.report_steps={steps}: training steps are 1 or more.")
    pruner = OmegaConf.to_container(s.pruner, resolve=True)
    one_of("pruner.name", str(pruner["name"]), PRUNERS)
    if pruner["name"] != "none" and not steps:
        raise UserInputError(
            f"hydra.sweeper.report_steps=[]: pruner.name={pruner['name']} stops trials at their report "
            "steps; give training steps (e.g. hydra.sweeper.report_steps=[100,200]) or pruner.name=none."
        )
    if int(pruner["reduction_factor"]) < 2:
        raise UserInputError(
            f"hydra.sweeper.pruner.reduction_factor={pruner['reduction_factor']}: use 2 or more."
        )
    sampler = OmegaConf.to_container(s.sampler, resolve=True)
    one_of("sampler.name", str(sampler["name"]), SAMPLERS)
    return SearchSettings(
        direction=one_of("direction", str(s.direction), DIRECTIONS),
        study_name=str(s.study_name or config.sweep.name),
        storage=str(s.storage or default_storage(config.sweep.root)),
        n_trials=int(s.n_trials),
        n_jobs=int(s.n_jobs),
        report_steps=steps,
        sampler=sampler,
        pruner=pruner,
        preview=OmegaConf.to_container(s.preview, resolve=True) if s.preview else {},
    )


def check_search(config: DictConfig, arguments: list[str]) -> SearchSettings:
    """Check an Optuna search before anything trains: its settings, space, and a report-step job.

    Raises:
        UserInputError: Bad settings (``search_settings``), evaluation off, no report step below the
            longest trial's ``max_train_steps``, a bad preview value.
    """
    from sweeper.config.spec import build_job
    from sweeper.planning.plan import compose_job
    from sweeper.search.halving import check_preview, rung_overrides

    settings = search_settings(config)
    space = search_space(config, arguments)
    base = compose_job(config, space.fixed)
    if not base.eval.enabled:
        raise UserInputError("eval.enabled=false: Optuna maximises eval.objective; turn evaluation on.")
    check_preview(settings.preview)
    longest = space.largest("train.max_train_steps", int(base.train.max_train_steps))
    if settings.report_steps and settings.report_steps[0] >= longest:
        raise UserInputError(
            f"hydra.sweeper.report_steps={settings.report_steps}: no intermediate step below "
            f"train.max_train_steps ({longest}); use steps below it."
        )
    if settings.report_steps:  # a report-step job of the fixed values (and the longest trial) composes
        first = rung_overrides(settings.report_steps[0], False, settings.preview)
        build_job(compose_job(config, [*space.fixed, f"train.max_train_steps={longest}", *first]))
    return settings


def open_study(settings: SearchSettings, first_step: int, last_step: int, seed_offset: bool = True):
    """Create or load the study in its storage, with the configured sampler and pruner.

    Args:
        settings: The checked ``hydra.sweeper``.
        first_step: The first report step (Hyperband's smallest resource).
        last_step: The longest trial's ``max_train_steps`` (Hyperband's largest resource).
        seed_offset: Seed the sampler with ``seed + trials so far``, so a continued study does not draw
            the values of its first trials again.
    """
    import optuna

    if settings.storage.startswith("sqlite:///"):
        Path(settings.storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    pruner = settings.pruner
    if pruner["name"] == "median":
        chosen = optuna.pruners.MedianPruner(
            n_startup_trials=int(pruner["n_startup_trials"]), n_warmup_steps=int(pruner["n_warmup_steps"])
        )
    elif pruner["name"] == "hyperband":
        chosen = optuna.pruners.HyperbandPruner(
            min_resource=first_step, max_resource=last_step, reduction_factor=int(pruner["reduction_factor"])
        )
    else:
        chosen = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=settings.storage,
        study_name=settings.study_name,
        pruner=chosen,
        direction=settings.direction,
        load_if_exists=True,
    )
    seed = settings.sampler["seed"]
    if seed is not None and seed_offset:
        seed = int(seed) + len(study.trials)
    make = optuna.samplers.TPESampler if settings.sampler["name"] == "tpe" else optuna.samplers.RandomSampler
    study.sampler = make(seed=seed)
    return study


@dataclass
class _Trial:
    """One trial on its way: its overrides, its stages (report steps below its length, then its length)."""

    trial: object  # optuna.trial.Trial
    overrides: list[str]
    steps: list[int]
    name: str
    stage: int = 0
    spec: object = None  # its checked values (sweeper.config.spec.JobSpec): what its pack shares

    def stage_overrides(self, preview: dict) -> tuple[str, ...]:
        from sweeper.search.halving import rung_overrides

        top = self.stage == len(self.steps) - 1
        return (*self.overrides, *rung_overrides(self.steps[self.stage], top, preview))


def _start_trial(
    trial,
    reported: dict,
    config: DictConfig,
    space: SearchSpace,
    settings: SearchSettings,
    varying: list[str],
) -> _Trial:
    from sweeper.config.spec import build_job
    from sweeper.planning.plan import compose_job

    overrides = space.overrides(trial.params)
    cfg = compose_job(config, overrides)
    spec = build_job(cfg)
    total = spec.settings.max_train_steps
    steps = [s for s in settings.report_steps if s < total] + [total]
    name = spec.run_dir(cfg.sweep.run_dir_template, varying).name
    trial.set_user_attr(RUN_DIR_ATTR, name)
    stage = sum(1 for s in steps[:-1] if s in reported)  # a resumed trial goes on after its last report
    return _Trial(trial=trial, overrides=overrides, steps=steps, name=name, stage=stage, spec=spec)


def run_search(config: DictConfig, launcher, arguments: list[str]) -> list:
    """Run (or continue) the study through ``launcher`` until it holds ``n_trials`` finished trials.

    Args:
        config: The multirun's master config.
        launcher: The configured Hydra launcher.
        arguments: The command line's task overrides (its sweeps join the search space).

    Returns:
        Every job's ``JobReturn``.
    """
    import optuna
    from optuna.trial import TrialState

    from sweeper.config.spec import sweep_dir_of
    from sweeper.planning.plan import SweepPlan, compose_job

    settings, space = search_settings(config), search_space(config, arguments)
    base_steps = int(compose_job(config, space.fixed).train.max_train_steps)
    last = space.largest("train.max_train_steps", base_steps)
    study = open_study(settings, (settings.report_steps or [1])[0], last)
    sweep_dir = sweep_dir_of(config)
    plan = SweepPlan.load(sweep_dir)
    varying = plan.varying if plan else space.train_keys()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        log.info(
            "Study %s: resuming trials %s", settings.study_name, ", ".join(str(t.number) for t in running)
        )
    resumed = [(optuna.trial.Trial(study, t._trial_id), t.intermediate_values) for t in running]
    returns: list = []
    job_index = sum(len(t.intermediate_values) + 1 for t in study.trials)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    while True:
        room = settings.n_trials - len(study.get_trials(deepcopy=False, states=finished)) - len(resumed)
        batch, resumed = resumed, []
        new = max(0, min(settings.n_jobs - len(batch), room))
        batch += [(study.ask(space.distributions), {}) for _ in range(new)]
        if not batch:
            break
        trials = []
        for trial, reported in batch:
            try:
                trials.append(_start_trial(trial, reported, config, space, settings, varying))
            except UserInputError as err:  # a sampled value the job refuses: the trial fails, not the study
                log.warning("Trial %d failed before training: %s", trial.number, err)
                study.tell(trial, state=TrialState.FAIL)
        done, job_index = _run_trials(config, study, launcher, trials, settings, job_index)
        returns += done
    write_results(config, study)
    return returns


def _run_trials(
    config: DictConfig, study, launcher, trials: list[_Trial], settings: SearchSettings, job_index: int
) -> tuple[list, int]:
    """Run a batch of trials stage by stage; each stage is one launch.

    Trials of the same folder share a job; trials at the same stage that can share a pack train together
    (``sweep.pack``), each reporting its own objective and pruned on its own.
    """
    returns: list = []
    alive = [t for t in trials if not (t.stage and _decide_pruned(config, study, t, settings))]
    while alive:
        packs, jobs = _stage_jobs(config, alive, settings)
        log.info(
            "Optuna: %d trials, %d jobs (%s)",
            len(alive),
            len(jobs),
            ", ".join(f"{t.trial.number}: step {t.steps[t.stage]}" for t in alive),
        )
        done = launcher.launch(jobs, initial_job_idx=job_index)
        job_index += len(jobs)
        returns += list(done)
        values: dict[str, object] = {}
        for pack, job in zip(packs, done, strict=True):
            value = job.return_value  # a failed job raises here
            values |= value if isinstance(value, dict) else {pack[0]: value}  # a pack's: by run folder
        going_on = []
        for t in alive:
            if _decide(config, study, t, values.get(t.name), settings):
                t.stage += 1
                going_on.append(t)
        alive = going_on
    return returns, job_index


def _stage_jobs(config: DictConfig, alive: list[_Trial], settings: SearchSettings) -> tuple[list, list]:
    """This stage's packs (run folder names) and the jobs that run them.

    The trials enter the plan (``sweep.json``) so that a pack's job composes each one's config; trials at
    the same step whose settings can share a pack are packed as the plan packs a grid.
    """
    from sweeper.config.spec import sweep_dir_of
    from sweeper.planning.packs import pack_size_setting, plan_packs, split_packs
    from sweeper.planning.plan import SweepPlan, pack_job_overrides
    from sweeper.plugins import parallel_jobs

    sweep_dir = sweep_dir_of(config)
    plan = SweepPlan.load(sweep_dir) or SweepPlan(name=str(config.sweep.name), varying=[])
    by_name = {t.name: t for t in alive}  # trials of one folder share its job
    by_step: dict[tuple, list[str]] = {}
    for name, t in by_name.items():
        plan.jobs[name] = {"overrides": list(t.overrides), "extra_checkpoint_steps": []}
        by_step.setdefault(t.stage_overrides(settings.preview)[len(t.overrides) :], []).append(name)
    plan.save(sweep_dir)
    size = pack_size_setting(config.sweep.pack)
    packs, jobs = [], []
    for extra, names in by_step.items():
        specs = [by_name[n].spec for n in names]
        groups, _alone = plan_packs(specs, names, size, parallel_jobs(config.hydra))
        for pack in split_packs(groups, names):
            packs.append(pack)
            jobs += pack_job_overrides(plan, [pack], list(extra))
    return packs, jobs


def _decide(config: DictConfig, study, t: _Trial, value, settings: SearchSettings) -> bool:
    """Report a stage's objective; tell Optuna the trial's end. Returns whether the trial goes on."""
    from optuna.trial import TrialState

    step, top = t.steps[t.stage], t.stage == len(t.steps) - 1
    value = known_objective(value)
    if value is None:
        log.warning(
            "Trial %d has no objective at step %d: Optuna records it as failed.", t.trial.number, step
        )
        study.tell(t.trial, state=TrialState.FAIL)
        _log_trial(config, study, t, "failed")
        return False
    t.trial.report(float(value), step)
    if top:
        study.tell(t.trial, float(value))
        log.info("Trial %d completed at step %d: %.4f", t.trial.number, step, value)
        _log_trial(config, study, t, "completed")
        return False
    return not _decide_pruned(config, study, t, settings)


def _decide_pruned(config: DictConfig, study, t: _Trial, settings: SearchSettings) -> bool:
    """Ask the pruner after the trial's last report; tell Optuna it was pruned if so."""
    from optuna.trial import TrialState

    if settings.pruner["name"] == "none" or not t.trial.should_prune():
        return False
    study.tell(t.trial, state=TrialState.PRUNED)
    log.info("Trial %d pruned at step %d (%s)", t.trial.number, max(_reported(study, t)), t.name)
    _log_trial(config, study, t, "pruned")
    return True


def _reported(study, t: _Trial) -> dict[int, float]:
    """The trial's reports so far, training step -> objective."""
    return next(f for f in study.get_trials(deepcopy=False) if f.number == t.trial.number).intermediate_values


def _log_trial(config: DictConfig, study, t: _Trial, decision: str) -> None:
    from sweeper.config.spec import sweep_dir_of
    from sweeper.tracking.trials import log_trial

    log_trial(config, sweep_dir_of(config), t.name, _reported(study, t), decision, t.trial.number)
    save_trials(study, sweep_dir_of(config))


def save_trials(study, sweep_dir: Path) -> None:
    """``trials.json``: every trial of the study, its run folder, values, reports and state (for report.md)."""
    rows = [
        {
            "number": t.number,
            "run": t.user_attrs.get(RUN_DIR_ATTR),
            "params": t.params,
            "reports": {str(step): v for step, v in sorted(t.intermediate_values.items())},
            "state": t.state.name.lower(),
            "value": t.value,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    SweepFolder(sweep_dir).write_trials(study.study_name, rows)


def write_results(config: DictConfig, study) -> None:
    """``optimization_results.yaml`` in the multirun's Hydra folder: the best trial's values and objective."""
    from optuna.trial import TrialState

    from sweeper.config.spec import sweep_dir_of

    save_trials(study, sweep_dir_of(config))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.warning("Study %s: no trial completed yet.", study.study_name)
        return
    best = study.best_trial
    results = {
        "name": "optuna",
        "study": study.study_name,
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
        "run_dir": best.user_attrs.get(RUN_DIR_ATTR),
    }
    folder = Path(config.hydra.sweep.dir)
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), folder / "optimization_results.yaml")
    log.info("Best trial %d (%s): %.4f", best.number, results["run_dir"], best.value)
