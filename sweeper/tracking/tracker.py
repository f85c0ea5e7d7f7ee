"""``Tracker``: the MLflow writes of one sweep, resilient to a store that goes away; ``StepLogger``: live curves.

One experiment per sweep, one parent run per multirun, one flat run per job. When the store cannot be
reached the sweep goes on without MLflow, says so once, and leaves ``MLFLOW_PENDING`` naming the command
that logs the finished folder later (``python -m sweeper.tracking <sweep folder>``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

from lora_core.training.loss_log import metric_rows
from sweeper.disk.layout import PENDING_FILE, artifacts_dir
from sweeper.tracking.store import (
    client_for,
    experiment_id,
    experiment_name,
    tracking_uri,
    unreachable_reason,
)
from sweeper.tracking.tags import JOB_ROLE, PARENT_ROLE, PARENT_TAG, ROLE_TAG

log = logging.getLogger(__name__)

_METRIC_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
_PARAM_BATCH = 90  # and at most 100 params


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What a store that fails raises: MLflow's own errors, and OS/network errors (requests' are OSErrors).

    Anything else is a bug in this project and must surface, not turn into "MLflow failed".
    """
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def image_key(stem: str) -> str:
    """An MLflow image key for a picture stem (``sf_0.9;0.5;3.6`` -> ``sf_0.9_0.5_3.6``): keys refuse ``;``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", stem)


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.learning_rate": "0.0001", ...}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            out[name] = text[:6000]
    return out


class Tracker:
    """MLflow writes for one sweep, resilient to a store that disappears.

    Every call swallows MLflow errors after the first warning and switches the tracker off, so training
    and rendering never stop because of tracking.

    Args:
        uri: Tracking URI.
        experiment: Experiment name.
        sweep_dir: The sweep folder (for the pending note and the SQLite artifact root).
        timeout: Seconds to wait for a server at start.
    """

    def __init__(self, uri: str, experiment: str, sweep_dir: Path, timeout: float = 5.0):
        self.uri, self.experiment, self.sweep_dir = uri, experiment, Path(sweep_dir)
        self.client = None
        self.experiment_id: str | None = None
        self.warned = False
        reason = unreachable_reason(uri, timeout)
        if reason:
            self._disable(f"cannot reach the MLflow store {uri} ({reason})")
            return
        try:
            self.client = client_for(uri)
            root = artifacts_dir(self.sweep_dir.parent) if uri.startswith("sqlite") else None
            self.experiment_id = experiment_id(self.client, experiment, root)
        except _tracking_errors() as err:
            self._disable(f"MLflow store {uri} failed: {err}")

    @classmethod
    def for_config(cls, config: DictConfig, sweep_dir: Path) -> Tracker:
        """The tracker of a job or sweep: its store, its experiment, its connect timeout."""
        return cls(tracking_uri(config), experiment_name(config), sweep_dir, config.tracking.connect_timeout)

    @property
    def active(self) -> bool:
        """Whether MLflow calls are being made."""
        return self.client is not None

    def _disable(self, why: str) -> None:
        self.client = None
        if self.warned:
            return
        self.warned = True
        command = f"python -m sweeper.tracking {self.sweep_dir} --tracking-uri {self.uri}"
        log.warning(
            "MLflow: %s. The sweep goes on and writes everything to disk; log it later with: %s", why, command
        )
        try:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            (self.sweep_dir / PENDING_FILE).write_text(
                f"{why}\nLog this sweep to MLflow with:\n  {command}\n"
            )
        except OSError as err:  # a read-only sweep folder: the warning above already says what to run
            log.warning("MLflow: could not write %s (%s)", self.sweep_dir / PENDING_FILE, err)

    def call(self, what: str, fn, *args, **kwargs):
        """Run ``fn`` on the client; on failure warn once, switch off and return None."""
        if self.client is None:
            return None
        try:
            return fn(self.client, *args, **kwargs)
        except _tracking_errors() as err:
            self._disable(f"{what} failed ({type(err).__name__}: {err})")
            return None

    # ---- runs --------------------------------------------------------------------------------------------
    def parent_run(self, run_id: str | None, name: str, tags: dict) -> str | None:
        """Reuse ``run_id`` if it still exists (a rerun of the sweep), else create the parent run."""

        def fn(client):
            if run_id:
                from mlflow.exceptions import MlflowException

                try:
                    run = client.get_run(run_id)
                    if run.info.lifecycle_stage == "active":
                        client.update_run(run_id, status="RUNNING")
                        return run_id
                except MlflowException:  # gone from this store (deleted, or another store): start anew
                    pass
            return client.create_run(
                self.experiment_id, tags={**tags, ROLE_TAG: PARENT_ROLE}, run_name=name
            ).info.run_id

        return self.call("creating the parent run", fn)

    def child_run(self, parent_id: str | None, run_dir_name: str, tags: dict) -> tuple[str | None, bool]:
        """The job's child run: an existing finished one is reported (skip), unfinished ones are replaced.

        Returns:
            (run id, already finished).
        """

        def fn(client):
            for run in self.find_children(parent_id, run_dir_name):
                if run.info.status == "FINISHED":
                    return run.info.run_id, True
                client.delete_run(run.info.run_id)  # an interrupted attempt: its data is replayed from disk
            all_tags = {**tags, "run_dir": run_dir_name, ROLE_TAG: JOB_ROLE}
            if parent_id:  # not mlflow.parentRunId: the UI would fold the jobs under the parent (tracking.ui)
                all_tags[PARENT_TAG] = parent_id
            return client.create_run(
                self.experiment_id, tags=all_tags, run_name=run_dir_name
            ).info.run_id, False

        return self.call("creating the job's run", fn) or (None, False)

    def find_children(self, parent_id: str | None, run_dir_name: str) -> list:
        """Runs of this experiment tagged with ``run_dir_name`` (under ``parent_id`` when given)."""
        quoted = run_dir_name.replace("'", "\\'")
        query = f"tags.run_dir = '{quoted}'"
        if parent_id:
            query += f" and tags.{PARENT_TAG} = '{parent_id}'"
        return self.call("searching runs", lambda c: c.search_runs([self.experiment_id], query)) or []

    def unfold_children(self, parent_id: str | None) -> int:
        """Turn runs logged as MLflow children of ``parent_id`` (before sweeps were flat) into flat job runs.

        Returns:
            How many runs were changed.
        """

        def fn(client):
            query = f"tags.mlflow.parentRunId = '{parent_id}'"
            runs = client.search_runs([self.experiment_id], query)
            for run in runs:
                client.set_tag(run.info.run_id, PARENT_TAG, parent_id)
                client.delete_tag(run.info.run_id, "mlflow.parentRunId")
            return len(runs)

        return (self.call("unfolding child runs", fn) or 0) if parent_id else 0

    def set_experiment_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the sweep's experiment (the shared view of ``sweeper.tracking.ui``)."""
        for k, v in tags.items():
            self.call(
                "tagging the experiment", lambda c, k=k, v=v: c.set_experiment_tag(self.experiment_id, k, v)
            )

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Mark a run finished (or FAILED/KILLED)."""
        if run_id:
            self.call("closing a run", lambda c: c.set_terminated(run_id, status=status))

    # ---- data --------------------------------------------------------------------------------------------
    def log_params(self, run_id: str | None, params: dict[str, str]) -> None:
        """Log params in batches (values as strings)."""
        from mlflow.entities import Param

        items = [Param(k[:250], v) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.call(
                "logging params", lambda c, b=items[i : i + _PARAM_BATCH]: c.log_batch(run_id, params=b)
            )

    def log_new_params(self, run_id: str | None, params: dict[str, str]) -> None:
        """Log the params ``run_id`` does not have yet.

        A changed value (a rerun with another space) becomes a tag of the same name: MLflow params
        cannot change.
        """

        def fn(client):
            existing = client.get_run(run_id).data.params
            self.log_params(run_id, {k: v for k, v in params.items() if k not in existing})
            for k, v in params.items():
                if k in existing and existing[k] != v:
                    client.set_tag(run_id, k, v)

        if run_id and params:
            self.call("logging the sweep's space", fn)

    def log_metrics(self, run_id: str | None, rows: Iterable[tuple[str, float, int]]) -> None:
        """Log (key, value, step) metrics in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows if v is not None and v == v]
        for i in range(0, len(metrics), _METRIC_BATCH):
            self.call(
                "logging metrics", lambda c, b=metrics[i : i + _METRIC_BATCH]: c.log_batch(run_id, metrics=b)
            )

    def log_artifact(self, run_id: str | None, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder."""
        if not run_id or not Path(path).exists():
            return
        if Path(path).is_dir():
            self.call("uploading artifacts", lambda c: c.log_artifacts(run_id, str(path), artifact_path))
        else:
            self.call("uploading an artifact", lambda c: c.log_artifact(run_id, str(path), artifact_path))

    def log_image(self, run_id: str | None, image_path: Path, key: str, step: int = 0) -> None:
        """Log a picture under ``key`` at ``step`` so the UI's image charts compare it across runs."""
        from PIL import Image

        if not run_id:
            return
        with Image.open(image_path) as img:
            img.load()
            self.call("logging an image", lambda c: c.log_image(run_id, img, key=key, step=step))

    def set_tags(self, run_id: str | None, tags: dict) -> None:
        """Set tags on a run."""
        for k, v in tags.items():
            self.call("tagging a run", lambda c, k=k, v=v: c.set_tag(run_id, k, v))


class StepLogger:
    """Buffers per-step training metrics and sends them every ``every`` seconds (and at ``flush``).

    Args:
        tracker: The tracker.
        run_id: The job's run.
        every: Seconds between sends.
    """

    def __init__(self, tracker: Tracker, run_id: str | None, every: float = 10.0):
        self.tracker, self.run_id, self.every = tracker, run_id, every
        self.rows: list[tuple[str, float, int]] = []
        self.sent = time.monotonic()

    def __call__(self, record) -> None:
        """Take a ``lora_core.training.StepRecord``."""
        self.rows += metric_rows(record.log_row())
        if time.monotonic() - self.sent > self.every:
            self.flush()

    def add_history(self, rows: Iterable[dict]) -> None:
        """Queue steps a resumed or reused training did not redo (from a checkpoint's loss log)."""
        for row in rows:
            self.rows += metric_rows(row)

    def flush(self) -> None:
        """Send what is buffered."""
        if self.rows and self.run_id:
            self.tracker.log_metrics(self.run_id, self.rows)
        self.rows = []
        self.sent = time.monotonic()
