"""A job's training: train its LoRA (or resume, or reuse a longer run's checkpoint) unless it is on disk.

It also decides what the weights depend on besides the training settings (the job's identity: base model,
pictures, class pictures, captions) and refuses a run folder that holds a LoRA trained otherwise.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from lora_core.adapters import find_weights_file
from lora_core.cache import default_cache_dir
from lora_core.data.captions import captions_digest
from lora_core.errors import UserInputError
from lora_core.family import FAMILY_WORDS, SD
from lora_core.models import dtype_name, model_identity
from lora_core.training import find_checkpoint, incompatibility, list_checkpoints, train_lora
from lora_core.training.checkpoint import read_checkpoint_identity
from lora_core.training.loss_log import read_rows
from sweeper.config.embedded_models import configured_family
from sweeper.disk.layout import SweepFolder
from sweeper.job.context import JobContext
from sweeper.job.preemption import HeldSignals
from sweeper.tracking.tracker import StepLogger

log = logging.getLogger(__name__)


class JobTraining:
    """Trains one job's LoRA into ``<run>/lora/``.

    Args:
        job: The job's values.
    """

    def __init__(self, job: JobContext):
        self.job = job

    def is_trained(self, until: int | None = None) -> bool:
        """Whether the run folder holds this training already (to step ``until`` only, if given)."""
        job = self.job
        if until is not None:
            return until in list_checkpoints(job.lora_dir)
        return job.folder.train_result_file.is_file() and find_weights_file(job.lora_dir) is not None

    def inputs(self, pipe) -> tuple[list, list[str], list | None]:
        """The subject pictures, their captions and the class pictures (generated on first use)."""
        from lora_core.data.subject import load_subject_images

        job, spec = self.job, self.job.spec
        images = load_subject_images(job.instance_dir, spec.settings.resolution, spec.settings.center_crop)
        return images, spec.read_captions(job.instance_dir), self._class_images(pipe)

    def resume_point(self, until: int | None = None) -> Path | None:
        """The checkpoint this training continues from (its own, or a longer run's), or None."""
        return find_checkpoint(self._training_dirs(), self.job.spec.settings, self.identity, up_to=until)

    def note_resume(self, checkpoint: Path | None, steps: StepLogger | None) -> None:
        """Say where the training continues from, and give ``steps`` the history up to there."""
        if checkpoint is not None:
            log.info("%s: continuing from %s", self.job.run_dir.name, checkpoint)
            if steps:
                steps.add_history(read_rows(checkpoint))

    def train(self, pipe, result, steps: StepLogger | None = None, until: int | None = None) -> None:
        """Train the LoRA (to step ``until`` only, if given) unless that is already in the run folder.

        Args:
            pipe: The loaded base pipeline.
            result: The job's ``JobResult``: ``trained``, ``resumed_from`` and the train time are set on it.
            steps: Sends each step's losses to the job's MLflow run (None: not tracked live).
            until: Train to this step only (a halving rung).
        """
        job, spec = self.job, self.job.spec
        if self.is_trained(until):
            what = f"checkpoint at step {until}" if until is not None else "LoRA"
            log.info("%s: %s already trained, skipping training.", job.run_dir.name, what)
            return
        started = time.perf_counter()
        images, captions, class_images = self.inputs(pipe)
        checkpoint = self.resume_point(until)
        self.note_resume(checkpoint, steps)
        result.resumed_from = str(checkpoint) if checkpoint else None
        with HeldSignals() as should_stop:  # a time limit or preemption stops training between two steps
            train_lora(
                pipe,
                images,
                spec.settings,
                job.lora_dir,
                resume_from=checkpoint,
                class_images=class_images,
                on_step=steps,
                metadata=self.lora_metadata(),
                identity=self.identity,
                until=until,
                should_stop=should_stop,
                captions=captions,
            )
        if steps:
            steps.flush()
        result.trained = True
        result.timings["train_seconds"] = time.perf_counter() - started

    def check_folder_matches(self) -> None:
        """Refuse to mix work of other settings into a folder that already holds a trained LoRA.

        Raises:
            UserInputError: The run folder's LoRA was trained with other settings or inputs.
        """
        job = self.job
        self._check_family()
        if find_weights_file(job.lora_dir) is None:
            return
        reason = incompatibility(job.lora_dir, job.spec.settings, self.identity, finished=True)
        if reason:
            raise UserInputError(
                f"{job.run_dir}: holds a LoRA {reason}. "
                "Nothing was changed; choose another sweep.name or move that folder away."
            )

    def _check_family(self) -> None:
        """Refuse a run folder whose LoRA or checkpoints were trained on a model of another family."""
        job = self.job
        mine = self.identity.get("family", SD)
        folders = [job.lora_dir, *list_checkpoints(job.lora_dir).values()]
        for folder in folders:
            saved = read_checkpoint_identity(folder)
            if saved and saved.get("family", SD) != mine:
                raise UserInputError(
                    f"{job.run_dir}: holds {FAMILY_WORDS[saved.get('family', SD)]} training ({folder.name}/), "
                    f"and model.path={job.spec.model.path} is {FAMILY_WORDS[mine]}: a LoRA of one cannot "
                    "continue on the other. Nothing was changed; choose another sweep.name or move that folder away."
                )

    @functools.cached_property
    def identity(self) -> dict:
        """What the weights depend on besides the training settings: base model and pictures."""
        job = self.job
        spec, base = job.spec.class_images, model_identity(job.model)
        identity = {
            "base_model": base,
            "instance_dir": str(job.instance_dir.resolve()),
            "class_images": spec.cache_key(base, dtype_name(job.model)) if spec else None,
        }
        if job.spec.settings.caption_mode != "instance_prompt":  # captions are read from files: hash them
            identity["captions"] = captions_digest(job.spec.read_captions(job.instance_dir))
        family = configured_family(job.spec.model)
        if family != SD:  # SD 1.x / 2.x identities say nothing (as before SDXL)
            identity["family"] = family
        return identity

    def _class_images(self, pipe) -> list | None:
        spec = self.job.spec.class_images
        if spec is None:
            return None
        from lora_core.data.class_images import ensure_class_images
        from lora_core.data.subject import load_subject_images

        paths = ensure_class_images(pipe, spec, model_identity(self.job.model), default_cache_dir())
        return load_subject_images(paths[0].parent, spec.resolution)[: spec.count]

    def _training_dirs(self) -> list[Path]:
        """This run's training folder first, then the other runs' of the sweep (for step-axis reuse)."""
        job = self.job
        others = [
            p.parent for p in SweepFolder(job.spec.sweep_dir).checkpoint_dirs() if p.parent != job.lora_dir
        ]
        return [job.lora_dir, *others] if job.cfg.sweep.reuse_steps else [job.lora_dir]

    def lora_metadata(self) -> dict:
        """What the LoRA files store besides the settings: identity, base model, token, sweep, run folder."""
        cfg = self.job.cfg
        return {
            **{f"identity.{k}": v for k, v in self.identity.items()},
            "base_model_path": self.job.spec.model.path,
            "token": cfg.data.token,
            "class_name": cfg.data.class_name,
            "sweep": cfg.sweep.name,
            "run_dir": self.job.run_dir.name,
        }


def train_together(
    trainings: list[JobTraining],
    pipe,
    results: list,
    loggers: list[StepLogger | None],
    until: int | None = None,
) -> dict[int, str]:
    """Train several jobs' LoRAs in one pack (``lora_core.packs``); what cannot pack trains alone, here.

    Jobs already trained are skipped; a job whose final state is a checkpoint of a longer job of the pack
    (``sweep.reuse_steps``) trains after the pack, from that checkpoint; each continues from its own
    checkpoint where it has one.

    Args:
        trainings: The jobs' trainings (one model, pictures and shared settings: the plan made the pack).
        pipe: The loaded base pipeline.
        results: Each job's ``JobResult``.
        loggers: Each job's MLflow step logger, or None.
        until: Train each to this step only (a halving rung), with a checkpoint there.

    Returns:
        Job index -> why its training failed (a diverged loss); the others trained.
    """
    todo = []
    for i, training in enumerate(trainings):
        if training.is_trained(until):
            log.info("%s: LoRA already trained, skipping training.", training.job.run_dir.name)
        else:
            todo.append(i)
    settings = {i: trainings[i].job.spec.settings for i in todo}
    later = [
        i
        for i in todo
        if any(
            settings[j].max_train_steps > settings[i].max_train_steps
            and settings[i].can_continue_from(settings[j])
            for j in todo
        )
    ]
    packed = [i for i in todo if i not in later]
    failures: dict[int, str] = {}
    # A pack's configurations train packed, even one left alone with a checkpoint: its steps then add up as
    # they did in the pack, and it ends with the weights of an uninterrupted pack. One fresh start alone
    # trains as a job of its own would.
    resume = [trainings[i].resume_point(until) for i in packed]
    alone = len(packed) == 1 and resume[0] is None
    if packed and not alone:
        failures = _train_pack(
            [trainings[i] for i in packed],
            pipe,
            [results[i] for i in packed],
            [loggers[i] for i in packed],
            resume,
            until,
        )
        failures = {packed[k]: reason for k, reason in failures.items()}
    else:
        later = packed + later
    for i in later:
        trainings[i].train(pipe, results[i], loggers[i], until)
    return failures


def _train_pack(
    trainings: list[JobTraining], pipe, results: list, loggers: list, checkpoints: list, until: int | None
) -> dict[int, str]:
    from lora_core.packs import PackTrainer

    lead = trainings[0]
    if any(t.identity != lead.identity for t in trainings):
        raise ValueError("a pack's configurations must share base model and pictures (the plan groups them)")
    started = time.perf_counter()
    images, captions, class_images = lead.inputs(pipe)
    for training, checkpoint, steps in zip(trainings, checkpoints, loggers, strict=True):
        training.note_resume(checkpoint, steps)

    def on_step(k: int, record) -> None:
        if loggers[k]:
            loggers[k](record)

    with HeldSignals() as should_stop:
        trainer = PackTrainer(
            pipe,
            images,
            [t.job.spec.settings for t in trainings],
            [t.job.lora_dir for t in trainings],
            class_images=class_images,
            captions=captions,
            on_step=on_step,
            metadata=[t.lora_metadata() for t in trainings],
            identity=lead.identity,
            should_stop=should_stop,
        )
        try:
            trainer.setup(checkpoints)
            trainer.train(until)
        finally:
            trainer.cleanup()
    seconds = time.perf_counter() - started
    for result, checkpoint, steps in zip(results, checkpoints, loggers, strict=True):
        if steps:
            steps.flush()
        result.trained, result.resumed_from = True, str(checkpoint) if checkpoint else None
        result.timings["train_seconds"] = seconds  # the pack's: its configurations trained together
    return dict(trainer.failures)
