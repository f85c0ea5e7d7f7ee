"""The MLflow UI as a person opens it after a sweep: the printed link, a real ``mlflow ui``, a real browser."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ARTIFACTS
from sweep_cli import REPO, mlflow_runs

from sweeper.tracking.tags import JOB_FILTER
from sweeper.tracking.ui import VIEW_TAG, experiment_link, view_state

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(quickstart_sweep):
    """``python -m sweeper.tracking.ui`` (what ``make ui`` runs) on the finished quickstart's store."""
    root, result = quickstart_sweep
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweeper.tracking.ui",
            "--store",
            str(root / "mlflow.db"),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    printed = proc.stdout.readline()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow ui did not answer on /health within 90 s")
    yield port, printed, result.stdout
    os.killpg(proc.pid, signal.SIGTERM)  # the server, its web worker and its job runners
    proc.wait(timeout=30)


def _wait_for_text(driver, texts, timeout=60) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.execute_script("return document.body.innerText")
        if all(t in body for t in texts):
            return body
        time.sleep(1)
    return body


def test_the_view_filters_to_the_jobs_and_shows_their_columns_and_charts():
    state = view_state(["max_train_steps"], ["ph", "be"])
    assert state["searchFilter"] == JOB_FILTER
    assert "params.`train.max_train_steps`" in state["selectedColumns"]
    assert "metrics.`objective`" in state["selectedColumns"]
    kinds = [(c["type"], c.get("metricKey") or c["imageKeys"][0]) for c in state["compareRunCharts"]]
    assert ("LINE", "loss") in kinds and ("BAR", "dino") in kinds and ("IMAGE", "grid/be") in kinds


def test_the_sweep_experiment_is_model_training_with_flat_job_runs(quickstart_sweep):
    from mlflow.tracking import MlflowClient

    root, _ = quickstart_sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(experiment.tags[VIEW_TAG])["searchFilter"] == JOB_FILTER
    runs = mlflow_runs(root, "quickstart")
    parent = next(r for r in runs if r.data.tags.get("sweep_role") == "parent")
    jobs = [r for r in runs if r.data.tags.get("sweep_role") == "job"]
    assert all("mlflow.parentRunId" not in r.data.tags for r in jobs), "the UI would fold them away"
    assert all(r.data.tags["sweep_parent"] == parent.info.run_id for r in jobs)
    assert parent.data.params["space.train.learning_rate"].count(",") == 1
    assert parent.data.tags["best_configuration"] in {r.info.run_name for r in jobs}
    assert "Best configuration" in parent.data.tags["mlflow.note.content"]
    assert all("Image chart `grid/ph`, step = cell: 0: " in r.data.tags["mlflow.note.content"] for r in jobs)


def test_the_printed_link_opens_the_jobs_their_curves_and_pictures(
    mlflow_ui, quickstart_sweep, browser, tmp_path
):
    from selenium.webdriver.common.by import By

    port, printed, summary = mlflow_ui
    root, _ = quickstart_sweep
    jobs = [r for r in mlflow_runs(root, "quickstart") if r.data.tags.get("sweep_role") == "job"]
    names = sorted(r.info.run_name for r in jobs)
    experiment_id = jobs[0].info.experiment_id
    link = experiment_link(f"http://127.0.0.1:{port}", experiment_id)
    assert printed.strip() == f"quickstart: {link}"
    assert experiment_link("http://127.0.0.1:5000", experiment_id) in summary, (
        "the sweep's summary gives the link"
    )

    # the server's REST API (what the UI and any client read) serves the jobs with their params
    search = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 50}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    served = {r["info"]["run_name"]: r for r in json.load(urllib.request.urlopen(search, timeout=10))["runs"]}
    assert set(names) <= set(served)
    for job in jobs:
        params = {p["key"]: p["value"] for p in served[job.info.run_name]["data"]["params"]}
        assert params["train.learning_rate"] == job.data.params["train.learning_rate"]

    browser.set_window_size(2600, 1400)  # the runs table renders only the columns in view
    browser.get(link)
    body = _wait_for_text(browser, [*names, "train.learning_rate", "objective"])
    for name in names:
        assert name in body, f"job {name} is a row of the table"
    assert "Model training" in body and "train.learning_rate" in body and "objective" in body
    for lr in {r.data.params["train.learning_rate"] for r in jobs}:
        assert lr in body
    browser.save_screenshot(str(tmp_path / "mlflow_runs.png"))

    browser.set_window_size(1600, 2400)
    browser.get(experiment_link(f"http://127.0.0.1:{port}", experiment_id, charts=True))
    body = _wait_for_text(browser, ["Training curves", "loss", "Pictures", "grid/ph"])
    assert "Training curves" in body and "Scores" in body and "Pictures" in body
    pictures = browser.find_element(By.XPATH, "//*[text()='Pictures']")
    browser.execute_script("arguments[0].scrollIntoView()", pictures)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        images = [i.get_attribute("src") for i in browser.find_elements(By.TAG_NAME, "img")]
        if sum("grid~ph" in (src or "") for src in images) >= len(names):
            break
        time.sleep(1)
    assert sum("grid~ph" in (src or "") for src in images) >= len(names), (
        "one picture per job in the image chart"
    )
    browser.save_screenshot(str(tmp_path / "mlflow_charts.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in ("mlflow_runs.png", "mlflow_charts.png"):
        (ARTIFACTS / name).write_bytes((tmp_path / name).read_bytes())
