"""Plan a multirun before any job starts: compose every job's config, check it, name its folder.

Run in the launching process (from the sweep callback), so every mistake — a bad value in one job, a
missing subject folder, two jobs that would write the same folder — stops the sweep before any training,
whichever launcher runs the jobs. The plan is written to ``<sweep>/sweep.json``; each job reads the keys
that vary (for its folder name) and the steps it should checkpoint for the others (step-axis reuse).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from lora_core.atomic import write_text_atomic
from lora_core.embedded.world_weights import verified_world_dir
from lora_core.errors import UserInputError
from lora_core.settings import STEP_INDEPENDENT_SCHEDULERS
from sweeper.config.embedded_models import TINY_SPECS, WORLD
from sweeper.config.spec import JobSpec, build_job
from sweeper.disk.layout import PLAN_FILE
from sweeper.disk.naming import differing_keys
from sweeper.planning.packs import describe_packs, pack_size_setting, plan_packs, split_packs

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class TrackingIds:
    """Where a sweep is logged in MLflow, kept in ``sweep.json`` by whoever opened its parent run.

    Attributes:
        uri: The tracking URI, None when the sweep is not logged.
        experiment_id: The sweep's MLflow experiment.
        parent_run_id: The sweep's own run (``sweep_role=parent``); job runs point to it.
    """

    uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None

    def parent_in(self, uri: str) -> str | None:
        """The parent run id when it lives in the store ``uri`` (a run of another store cannot be reused)."""
        return self.parent_run_id if self.uri == uri else None

    def to_json(self) -> dict:
        """The ids that are set, as ``sweep.json`` holds them (``{}`` for a sweep not logged)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class SweepPlan:
    """What the launching process decided for the jobs of one multirun.

    Attributes:
        name: Sweep name.
        varying: Config keys whose value differs between jobs (``train.`` keys by their short name).
        jobs: Run folder name -> {"overrides": [...], "extra_checkpoint_steps": [...]}.
        tracking: MLflow ids, filled by the callback (or by ``python -m sweeper.tracking``).
        packs: The jobs the sweeper launches: run folder names trained together (one each when alone);
            empty when the sweeper launches every job by itself (``sweeper.planning.packs``).
        alone: Run folder name -> why it trains alone though packing is on.
        pack_groups: The configurations that may share a pack (``plan_packs``), for the sweepers that
            choose their jobs as they go (a halving rung packs its survivors again).
    """

    name: str
    varying: list[str]
    jobs: dict[str, dict] = field(default_factory=dict)
    tracking: TrackingIds = field(default_factory=TrackingIds)
    packs: list[list[str]] = field(default_factory=list)
    alone: dict[str, str] = field(default_factory=dict)
    pack_groups: list[dict] = field(default_factory=list)

    def pack_of(self, name: str) -> tuple[int, list[str]] | None:
        """The pack a run folder trains in (its index and members) when it has companions, else None."""
        for index, members in enumerate(self.packs):
            if name in members and len(members) > 1:
                return index, members
        return None

    @property
    def parent_run_id(self) -> str | None:
        """The sweep's MLflow parent run, None when it has none."""
        return self.tracking.parent_run_id or None

    def save(self, sweep_dir: Path) -> None:
        """Write ``sweep.json`` atomically."""
        data = {**self.__dict__, "tracking": self.tracking.to_json()}
        for key in ("packs", "alone", "pack_groups"):  # written when packing planned something
            if not data[key]:
                del data[key]
        write_text_atomic(sweep_dir / PLAN_FILE, json.dumps(data, indent=2))

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepPlan | None:
        """Read ``sweep.json``, or None when the folder has none."""
        path = Path(sweep_dir) / PLAN_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{**data, "tracking": TrackingIds(**data.get("tracking", {}))})


def pack_record(plan: SweepPlan, name: str) -> dict | None:
    """What ``run.json`` and MLflow say of a job's pack: its index, size and members, or why it ran alone."""
    found = plan.pack_of(name)
    if found is not None:
        index, members = found
        return {"index": index, "size": len(members), "members": members}
    return {"alone": plan.alone[name]} if name in plan.alone else None


def pack_tags(pack: dict | None) -> dict[str, str]:
    """A job's MLflow tags of its pack (``pack``: its index, or ``alone``; ``pack_size``)."""
    if not pack:
        return {}
    if "alone" in pack:
        return {"pack": "alone"}
    return {"pack": str(pack["index"]), "pack_size": str(pack["size"])}


def parent_run_of(sweep_dir: Path) -> str | None:
    """The MLflow parent run of the sweep in ``sweep_dir``, None without a plan or a logged sweep."""
    plan = SweepPlan.load(sweep_dir)
    return plan.parent_run_id if plan else None


def expand_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of every job, as Hydra's basic sweeper will launch them (same order).

    Args:
        config: The multirun's master config (with its ``hydra`` node).

    Returns:
        One override list per job.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return [list(job) for batch in batches for job in batch]


def compose_job(config: DictConfig, overrides: list[str]) -> DictConfig:
    """Compose one job's config exactly as the launcher will."""
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)


def pack_job_overrides(
    plan: SweepPlan, packs: list[list[str]], extra: list[str] | None = None
) -> list[list[str]]:
    """The jobs that train ``packs``: each its first configuration's overrides, ``extra``, and its members.

    A pack of one is that configuration's own job; a larger one names its members in ``sweep.pack_members``
    (``sweeper.job.pack`` composes the others' configs from their overrides in the plan).
    """
    out = []
    for members in packs:
        overrides = [*plan.jobs[members[0]]["overrides"], *(extra or [])]
        if len(members) > 1:
            quoted = ",".join("'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'" for name in members)
            overrides.append(f"sweep.pack_members=[{quoted}]")
        out.append(overrides)
    return out


def plan_sweep(
    config: DictConfig, job_overrides: list[list[str]], packing: bool = False, parallel: int = 1
) -> SweepPlan:
    """Check every job, name its folder, and (with ``packing``) group the jobs into packs.

    Args:
        config: The multirun's master config.
        job_overrides: Each job's overrides (``expand_jobs``).
        packing: The sweeper launches packs (``hydra/sweeper=packs``): plan them by ``sweep.pack``.
        parallel: Jobs the launcher runs at once (``auto`` makes at least that many packs).

    Returns:
        The plan (not yet saved).

    Raises:
        UserInputError: A bad value in any job (the message names the job), a missing model or subject
            folder, or two jobs that would write the same folder.
    """
    composed, specs = [], []
    for index, overrides in enumerate(job_overrides):
        cfg = compose_job(config, overrides)
        try:
            specs.append(build_job(cfg))
        except UserInputError as err:
            own = [o for o in overrides if not all(o in other for other in job_overrides)] or overrides
            raise UserInputError(f"job {index} ({' '.join(own) or 'no overrides'}): {err}") from None
        composed.append(cfg)
    check_inputs(specs)
    varying = differing_keys([spec.name_values for spec in specs])
    _refuse_render_only_differences(varying)
    sweep = composed[0].sweep if composed else config.sweep
    names = [spec.run_dir(sweep.run_dir_template, varying).name for spec in specs]
    _refuse_collisions(names, job_overrides)
    extra = _extra_checkpoints(specs) if sweep.reuse_steps else [[] for _ in specs]
    jobs = {
        name: {"overrides": ov, "extra_checkpoint_steps": ex}
        for name, ov, ex in zip(names, job_overrides, extra, strict=True)
    }
    plan = SweepPlan(name=str(sweep.name), varying=varying, jobs=jobs)
    size = pack_size_setting(sweep.pack)  # checked whatever the sweeper: a bad value stops the sweep
    if packing:
        plan.pack_groups, plan.alone = plan_packs(specs, names, size, parallel)
        plan.packs = split_packs(plan.pack_groups, names)
        for line in describe_packs(plan.packs, plan.alone):
            log.info(line)
    return plan


def _refuse_render_only_differences(varying: list[str]) -> None:
    render = [k for k in varying if k.startswith("render.")]
    if render:
        raise UserInputError(
            f"{render[0]} differs between the jobs of this sweep, but render settings belong in one job's grid "
            "(render.unet_scales=[..], render.guidance_scales=[..]) or in separate sweeps (sweep.name=...): "
            "sweeping them would train the same LoRA again for every value."
        )


def _refuse_collisions(names: list[str], job_overrides: list[list[str]]) -> None:
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            other = first[name]
            a, b = job_overrides[other], job_overrides[index]
            only_a, only_b = [o for o in a if o not in b], [o for o in b if o not in a]
            raise UserInputError(
                f"jobs {other} ({' '.join(only_a)}) and {index} ({' '.join(only_b)}) would both write {name}/. "
                "Add the differing key to sweep.run_dir_template (or keep {varying} in it)."
            )
        first[name] = index


def check_inputs(specs: list[JobSpec]) -> None:
    """Check models and subject folders once per distinct value, before anything trains.

    Raises:
        UserInputError: The world model's weights missing or corrupt, a local model path that does not exist, a malformed hub id, or a subject folder
            that is missing, empty, or holds an unreadable picture or a bad caption file.
    """
    from lora_core.data.subject import load_subject_images

    for path in sorted({spec.model.path for spec in specs}):
        if path == WORLD:
            verified_world_dir()  # missing or corrupt weights stop the sweep here, named
            continue
        if path in TINY_SPECS or Path(path).expanduser().exists():
            continue
        if (
            path.startswith((".", "/", "~"))
            or path.endswith((".safetensors", ".ckpt"))
            or not _HUB_ID.match(path)
        ):
            raise UserInputError(f"model.path={path}: no such file or folder, and not a hub id (owner/name).")
    seen, captioned = set(), set()
    for spec in specs:
        key = (spec.instance_dir, spec.settings.resolution)
        if spec.instance_dir is not None and key not in seen:
            seen.add(key)
            load_subject_images(spec.instance_dir, spec.settings.resolution, spec.settings.center_crop)
        s = spec.settings
        key = (spec.instance_dir, s.caption_mode, spec.token, spec.class_name, s.instance_prompt)
        if spec.instance_dir is not None and key not in captioned:
            captioned.add(key)
            spec.read_captions(spec.instance_dir)  # a bad caption file stops the sweep here, named


def _extra_checkpoints(specs: list[JobSpec]) -> list[list[int]]:
    """For each job, the step counts of its step group up to its own, to save checkpoints at.

    A step group is the jobs that differ only in ``max_train_steps`` under a step-independent schedule:
    a longer run passes through the shorter runs' final states. Each job checkpoints at the group's step
    counts up to its own, so a shorter job takes its LoRA from a longer one's checkpoint without training,
    and a longer job continues from a shorter one's final state, whichever runs first.
    """
    groups: dict[str, set[int]] = {}
    keys = []
    for spec in specs:
        key = None
        if spec.settings.lr_scheduler in STEP_INDEPENDENT_SCHEDULERS:
            weights = {k: v for k, v in spec.settings.weights_key().items() if k != "max_train_steps"}
            key = json.dumps([weights, spec.model.path, str(spec.instance_dir)], sort_keys=True, default=str)
            groups.setdefault(key, set()).add(spec.settings.max_train_steps)
        keys.append(key)
    return [
        sorted(s for s in groups[key] if s <= spec.settings.max_train_steps)
        if key and len(groups[key]) > 1
        else []
        for spec, key in zip(specs, keys, strict=True)
    ]
