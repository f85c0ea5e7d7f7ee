"""The MLflow tags that mark a sweep's experiment and runs: written by the store and the tracker, read by the UI.

A leaf module (it imports nothing of the project), so the store, the tracker and the UI can share them
without importing each other.
"""

from __future__ import annotations

ROLE_TAG = "sweep_role"  # what a run is in its sweep: PARENT_ROLE or JOB_ROLE
PARENT_ROLE = "parent"  # the sweep's run: report, sheets, best configuration
JOB_ROLE = "job"  # one job's run: its params, curves, scores and pictures
PARENT_TAG = "sweep_parent"  # a job run's parent run id (not mlflow.parentRunId: the UI would fold the jobs)
JOB_FILTER = f"tags.{ROLE_TAG} = '{JOB_ROLE}'"  # the runs search that shows a sweep's jobs
# A model-training experiment: the UI opens its runs, charts and images, not GenAI's traces and judges.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
