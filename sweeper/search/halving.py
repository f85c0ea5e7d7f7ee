"""Successive halving over a sweep's configurations: train all a little, continue the best.

Every configuration trains to the first rung (``max_train_steps / eta^(rungs-1)`` steps, or the first of
``hydra.sweeper.steps``), renders the
preview grid there (``hydra.sweeper.preview``) and is scored by ``eval.objective``; the best ``1/eta``
continue from their checkpoints to the next rung (``eta`` times longer), and so on until the last rung
trains to ``max_train_steps`` and renders the experiment's own grid. A rung is one batch of jobs for
whichever launcher is configured. Each job continues its run exactly (the training schedule is always
the one of ``max_train_steps``), so a configuration that reaches the top has the weights of one
uninterrupted run.

``<sweep>/bracket.json`` records each rung's scores and decisions as they are made; a rerun of the same
command continues the bracket from there (jobs inside an interrupted rung continue from their own
checkpoints and pictures).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_core.errors import UserInputError
from sweeper.disk.layout import SweepFolder
from sweeper.disk.naming import override_value
from sweeper.search.objective import known_objective

log = logging.getLogger(__name__)

# render.* keys a preview may not set: the grid's prompts and explicit cells stay the experiment's.
_NOT_PREVIEW = ("prompts", "cells", "steps")
DEFAULT_RUNGS = 3  # hydra.sweeper.rungs when neither it nor hydra.sweeper.steps is given


@dataclass
class Bracket:
    """One halving bracket, as saved in ``bracket.json``.

    Attributes:
        eta: Keep the best ``1/eta`` of each rung.
        steps: The training step of each rung, the last one ``max_train_steps``.
        configurations: Run folder names, in plan order.
        preview: The render values of the rungs below the top.
        scores: Per rung (as a list), run folder name -> objective (None: no score).
        promoted: Per decided rung, the run folder names that go on.
    """

    eta: int
    steps: list[int]
    configurations: list[str]
    preview: dict = field(default_factory=dict)
    scores: list[dict] = field(default_factory=list)
    promoted: list[list[str]] = field(default_factory=list)

    def save(self, sweep_dir: Path) -> None:
        """Write ``bracket.json`` atomically."""
        SweepFolder(sweep_dir).write_bracket(asdict(self))

    @classmethod
    def load(cls, sweep_dir: Path) -> Bracket | None:
        """Read ``bracket.json``, or None."""
        data = SweepFolder(Path(sweep_dir)).read_bracket()
        return cls(**data) if data is not None else None

    def same_bracket(self, other: Bracket) -> bool:
        """Whether ``other`` is this bracket's plan (eta, steps, configurations, preview)."""
        keys = ("eta", "steps", "configurations", "preview")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def candidates(self, rung: int) -> list[str]:
        """The configurations that run rung ``rung``."""
        return self.configurations if rung == 0 else self.promoted[rung - 1]

    def decision(self, name: str) -> tuple[int, str]:
        """(last rung reached, what happened there) for one configuration."""
        reached = max((k for k, s in enumerate(self.scores) if name in s), default=-1)
        if reached < 0:
            return -1, "not run"
        if reached == len(self.steps) - 1:
            return reached, "finished"
        if reached < len(self.promoted) and name not in self.promoted[reached]:
            return reached, "stopped"
        return reached, "promoted"


def rung_steps(max_train_steps: int, eta: int, rungs: int) -> list[int]:
    """The training step of each rung: ``max_train_steps / eta^(rungs-1-k)``, rounded.

    Raises:
        UserInputError: eta below 2, no rung, a rung below one step, or two rungs at the same step.
    """
    if eta < 2:
        raise UserInputError(
            f"hydra.sweeper.eta={eta}: use 2 or more (each rung keeps the best 1/eta; 3 is usual)."
        )
    if rungs < 1:
        raise UserInputError(f"hydra.sweeper.rungs={rungs}: use 1 or more.")
    exact = [max_train_steps / eta ** (rungs - 1 - k) for k in range(rungs)]
    if exact[0] < 1:
        raise UserInputError(
            f"hydra.sweeper.rungs={rungs}: with eta={eta} and train.max_train_steps={max_train_steps} the first "
            f"rung would be {exact[0]:.2g} steps, below one; use fewer rungs or more steps."
        )
    steps = [max(1, round(s)) for s in exact]
    if len(set(steps)) < len(steps):
        raise UserInputError(
            f"hydra.sweeper.rungs={rungs}: with eta={eta} and train.max_train_steps={max_train_steps} two rungs "
            f"fall on the same step ({steps}); use fewer rungs or more steps."
        )
    return steps


def given_rung_steps(max_train_steps: int, eta: int, below: list) -> list[int]:
    """``hydra.sweeper.steps``: the rungs below the top chosen by hand, then ``max_train_steps``.

    Raises:
        UserInputError: eta below 2, a step that is not a whole number of at least one, steps not rising,
            or a step at or past ``max_train_steps``.
    """
    rung_steps(max_train_steps, eta, 1)  # eta's check
    shown = f"hydra.sweeper.steps={list(below)}"
    if not below or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in below):
        raise UserInputError(
            f"{shown}: give the rungs below the top as whole training steps of 1 or more, e.g. [100]."
        )
    if list(below) != sorted(set(below)):
        raise UserInputError(f"{shown}: the rungs must rise, each step once.")
    if below[-1] >= max_train_steps:
        raise UserInputError(
            f"{shown}: every rung must come before train.max_train_steps ({max_train_steps}), the top rung."
        )
    return [*below, max_train_steps]


def survivors(scores: dict[str, float | None], eta: int) -> list[str]:
    """The best ``1/eta`` (at least one) by objective, best first; unscored ones last, ties in given order."""
    order = list(scores)

    def rank(name: str) -> tuple:
        value = known_objective(scores[name])
        return (value is None, 0.0 if value is None else -value, order.index(name))

    return sorted(order, key=rank)[: max(1, len(order) // eta)]


def rung_overrides(step: int, top: bool, preview: dict) -> list[str]:
    """What a configuration's overrides gain at a rung: stop at its step, render the preview grid."""
    if top:
        return []
    return [f"sweep.stop_at_step={step}", *(f"render.{k}={override_value(v)}" for k, v in preview.items())]


def check_preview(preview: dict) -> None:
    """Refuse a preview key that is not a render number (the grid's prompts and cells stay the experiment's).

    Raises:
        UserInputError: Naming the key and the keys a preview can set.
    """
    from sweeper.config.schema import RenderConfig

    allowed = {f.name for f in fields(RenderConfig)} - set(_NOT_PREVIEW)
    for key in preview:
        if key not in allowed:
            raise UserInputError(
                f"hydra.sweeper.preview.{key}: not a render setting a preview can set ({', '.join(sorted(allowed))})."
            )


def _whole_number(value, key: str) -> int:
    """``value`` as an int, or one line naming ``key`` (Hydra reads ``3`` as an int; ``3.0`` and ``abc`` not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{key}={value}: give a whole number, e.g. {key}=3.")
    return value


def plan_halving(config: DictConfig, plan) -> Bracket:
    """Check a halving sweep before anything trains, checkpoint every job at the rungs, open the bracket.

    Args:
        config: The multirun's master config (``hydra.sweeper``: eta, rungs, preview).
        plan: The sweep's plan (``sweeper.planning.plan.plan_sweep``), updated in place.

    Returns:
        The bracket (the saved one when the same sweep is run again).

    Raises:
        UserInputError: One configuration, a varying ``train.max_train_steps``, evaluation off, a bad eta,
            rung count or preview value.
    """
    from sweeper.config.spec import build_job, sweep_dir_of
    from sweeper.planning.plan import compose_job

    names = list(plan.jobs)
    if len(names) < 2:
        raise UserInputError(
            "hydra.sweeper.params: the search space holds one configuration; halving compares several "
            "(give comma lists, e.g. train.learning_rate=1e-4,3e-4)."
        )
    if "max_train_steps" in plan.varying:
        raise UserInputError(
            "train.max_train_steps varies between configurations: under halving it is the top rung's "
            "length, one value; sweep it with the basic sweeper (hydra/sweeper=basic)."
        )
    settings = config.hydra.sweeper
    preview = OmegaConf.to_container(settings.preview, resolve=True) if settings.preview else {}
    check_preview(preview)
    first = plan.jobs[names[0]]["overrides"]
    top = compose_job(config, first)
    if not top.eval.enabled:
        raise UserInputError(
            "eval.enabled=false: halving ranks configurations by eval.objective; turn evaluation on."
        )
    below = (
        OmegaConf.to_container(settings.steps, resolve=True) if settings.get("steps") is not None else None
    )
    eta = int(settings.eta)  # typed int in HalvingSweeperConf: Hydra refuses anything else
    rungs = settings.get("rungs")
    rungs = None if rungs is None else _whole_number(rungs, "hydra.sweeper.rungs")
    if below is None:
        steps = rung_steps(int(top.train.max_train_steps), eta, DEFAULT_RUNGS if rungs is None else rungs)
    else:
        steps = given_rung_steps(int(top.train.max_train_steps), eta, below)
        if rungs is not None and rungs != len(steps):
            raise UserInputError(
                f"hydra.sweeper.rungs={rungs} and hydra.sweeper.steps={below} disagree: those steps and "
                f"train.max_train_steps make {len(steps)} rungs. Give one of the two (rungs=null to use steps)."
            )
    build_job(compose_job(config, [*first, *rung_overrides(steps[0], len(steps) == 1, preview)]))
    for entry in plan.jobs.values():
        entry["extra_checkpoint_steps"] = sorted({*entry["extra_checkpoint_steps"], *steps[:-1]})
    wanted = Bracket(eta=eta, steps=steps, configurations=names, preview=preview)
    sweep_dir = sweep_dir_of(config)
    saved = Bracket.load(sweep_dir)
    bracket = saved if saved is not None and saved.same_bracket(wanted) else wanted
    sweep_dir.mkdir(parents=True, exist_ok=True)
    bracket.save(sweep_dir)
    return bracket


def run_bracket(config: DictConfig, launcher) -> list:
    """Run the bracket rung by rung through ``launcher``; each rung is one batch of jobs (its packs).

    Args:
        config: The multirun's master config.
        launcher: The configured Hydra launcher.

    Returns:
        Every job's ``JobReturn``.
    """
    from sweeper.config.spec import sweep_dir_of
    from sweeper.planning.packs import split_packs
    from sweeper.planning.plan import SweepPlan, pack_job_overrides
    from sweeper.tracking.bracket import log_rung

    sweep_dir = sweep_dir_of(config)
    plan, bracket = SweepPlan.load(sweep_dir), Bracket.load(sweep_dir)
    returns: list = []
    for rung, step in enumerate(bracket.steps):
        top = rung == len(bracket.steps) - 1
        if rung == len(bracket.scores):
            bracket.scores.append({})
        todo = [n for n in bracket.candidates(rung) if n not in bracket.scores[rung]]
        if todo:
            log.info("Halving rung %d (step %d): %d configurations", rung + 1, step, len(todo))
            extra = rung_overrides(step, top, bracket.preview)
            packs = split_packs(plan.pack_groups, todo)  # the rung's configurations, packed again
            batch = pack_job_overrides(plan, packs, extra)
            done = launcher.launch(batch, initial_job_idx=sum(len(s) for s in bracket.scores))
            returns += list(done)
            for pack, job in zip(packs, done, strict=True):
                value = job.return_value  # a failed job raises here, as under the basic sweeper
                values = value if isinstance(value, dict) else {pack[0]: value}  # a pack's: by run folder
                for name in pack:
                    bracket.scores[rung][name] = known_objective(values.get(name))
            bracket.save(sweep_dir)
        if not top and rung == len(bracket.promoted):
            scores = {name: bracket.scores[rung].get(name) for name in bracket.candidates(rung)}
            bracket.promoted.append(survivors(scores, bracket.eta))
            bracket.save(sweep_dir)
            log.info("Rung %d: %s go on", rung + 1, ", ".join(bracket.promoted[rung]))
        log_rung(config, sweep_dir, bracket, rung)
    return returns
