"""Where a sweep's MLflow store is and whether it answers: the one place the tracking URI is decided."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import DictConfig

from sweeper.disk.layout import default_store
from sweeper.tracking.tags import KIND, KIND_TAG

# A dead server should cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def default_uri(root: str | os.PathLike) -> str:
    """The default store: SQLite at ``<root>/mlflow.db`` (an absolute URI)."""
    return f"sqlite:///{default_store(root).resolve()}"


def unreachable_reason(uri: str, timeout: float) -> str | None:
    """Why the store cannot be used, or None when it can.

    Args:
        uri: A tracking URI (``sqlite:///...``, ``http(s)://...``, ``file:...``).
        timeout: Seconds to wait for a server.

    Returns:
        A short reason, or None.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            return str(getattr(err, "reason", err))
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return str(err)
        return None if os.access(folder, os.W_OK) else f"{folder} is not writable"
    return None


def client_for(uri: str):
    """An ``MlflowClient`` on ``uri``; for SQLite, the database (and its tables) are created here."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)  # creates and migrates a fresh SQLite store
    return client


def experiment_id(client, name: str, artifact_root: Path | None) -> str:
    """The experiment named ``name`` (a model-training experiment), created (artifacts under ``artifact_root``) if missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if found.tags.get(KIND_TAG) != KIND:  # a store logged before experiments were marked
            client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root is not None else None
    try:
        # A model-training experiment: the UI's runs, charts and images, not GenAI's traces and judges.
        return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND})
    except MlflowException:  # another job created it first
        return client.get_experiment_by_name(name).experiment_id


def tracking_uri(config: DictConfig) -> str:
    """A job's or sweep's store: ``tracking.uri``, else SQLite at ``<sweep.root>/mlflow.db``."""
    return config.tracking.uri or default_uri(config.sweep.root)


def experiment_name(config: DictConfig) -> str:
    """The sweep's MLflow experiment: ``tracking.experiment``, else the sweep's name."""
    return config.tracking.experiment or config.sweep.name
