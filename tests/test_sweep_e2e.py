"""End to end, as a user runs it: ``python -m sweeper -m experiment=quickstart ...`` in a subprocess."""

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_weights
from PIL import Image
from sweep_cli import FAST, REPO, mlflow_runs, probe_env, probed_processes, run_records, start_sweep, sweep

pytestmark = pytest.mark.slow

RUNS = {"2e-3;1e-4", "2e-3;1e-5", "1e-5;1e-4", "1e-5;1e-5"}  # the quickstart's learning rates
PICTURES = {f"{p}_{u};{t};4.png" for p in ("ph", "be") for u in ("0", "0.5", "1") for t in ("0", "1")}


@pytest.fixture
def quickstart(quickstart_sweep):
    return quickstart_sweep


def test_the_2x2_sweep_writes_the_exact_folder_and_file_names(quickstart):
    root, _ = quickstart
    sweep_dir = root / "quickstart"
    assert {
        p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    } == RUNS | {"sheets"}
    for run in RUNS:
        assert {p.name for p in (sweep_dir / run).glob("*.png")} == PICTURES
        assert (sweep_dir / run / "lora" / "pytorch_lora_weights.safetensors").is_file()
        assert (sweep_dir / run / "lora" / "lora_kohya.safetensors").is_file()
    assert {p.name for p in (sweep_dir / "sheets").iterdir()} == {"ph.png", "be.png"}
    assert not list(sweep_dir.rglob("*.part")), "no half-written files"


def test_each_run_trained_with_its_own_learning_rates(quickstart):
    root, _ = quickstart
    for name, record in run_records(root / "quickstart").items():
        lr, text_lr = (float(v) for v in name.split(";"))
        assert record["settings"]["learning_rate"] == lr and record["settings"]["text_encoder_lr"] == text_lr
        assert record["status"] == "done" and record["result"]["images_total"] == 12


def _places(sheet: Image.Image, picture: Image.Image) -> list[tuple[float, int, int]]:
    """Where ``picture`` (already at thumbnail size) sits in ``sheet``, best first: (error, x, y) of each place."""
    import numpy as np

    big = np.asarray(sheet.convert("L"), dtype=np.float32)
    small = np.asarray(picture.convert("L"), dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(big, small.shape)
    coarse = np.abs(windows[:, :, ::8, ::8] - small[::8, ::8]).mean(axis=(2, 3))  # every 8th pixel first
    errors = (
        (float(np.abs(windows[y, x] - small).mean()), int(x), int(y))
        for y, x in zip(*np.nonzero(coarse < 4.0), strict=True)
    )
    return sorted(e for e in errors if e[0] < 2.0)


def _locate(sheet: Image.Image, picture: Image.Image) -> tuple[int, int]:
    """Where ``picture`` sits in ``sheet``: the top-left corner of its best match."""
    places = _places(sheet, picture)
    assert places, "picture not found in the sheet"
    return places[0][1:]


def test_contact_sheets_hold_each_picture_in_its_row_and_column(quickstart):
    """The run sheet has the UNet scales as rows and the text scales as columns, each picture once, in
    order, below a title and right of the row labels; the sweep sheet has a row per run."""
    root, _ = quickstart
    run_dir = root / "quickstart" / "2e-3;1e-4"  # the run whose cells differ most after debug=fast's 6 steps
    sheet = Image.open(run_dir / "sheets" / "ph_g4.png")
    unets, texts = ("0", "0.5", "1"), ("0", "1")
    where = {(u, t): _locate(sheet, Image.open(run_dir / f"ph_{u};{t};4.png")) for u in unets for t in texts}
    xs = [sorted({where[u, t][0] for u in unets}) for t in texts]
    ys = [sorted({where[u, t][1] for t in texts}) for u in unets]
    assert all(len(x) == 1 for x in xs) and all(len(y) == 1 for y in ys), where  # aligned columns and rows
    assert xs[0][0] < xs[1][0] and ys[0][0] < ys[1][0] < ys[2][0]  # text scale left to right, UNet down
    assert ys[0][0] > 0 and xs[0][0] > 0  # room for the title above and the row labels left
    assert sheet.width < 2 * 64 + 400 and sheet.height < 3 * 64 + 300  # thumbnails at 64 px, not larger
    sweep_sheet = Image.open(root / "quickstart" / "sheets" / "be.png")
    # at debug=fast's 6 steps both 1e-5 runs draw the same picture, so a picture may sit in several rows
    found = {
        run: {y for *_, y in _places(sweep_sheet, Image.open(root / "quickstart" / run / "be_1;1;4.png"))}
        for run in RUNS
    }
    rows = sorted(set().union(*found.values()))
    assert len(rows) == len(RUNS), found  # one row per run
    assert all(y in found[run] for run, y in zip(sorted(RUNS), rows, strict=True)), found  # in name order


def test_the_summary_says_where_everything_is(quickstart):
    root, result = quickstart
    assert "Sweep 'quickstart': 4 finished runs" in result.stdout
    assert f"sqlite:///{root.resolve() / 'mlflow.db'}" in result.stdout
    assert "make ui" in result.stdout and "--host 127.0.0.1" in result.stdout


def test_mlflow_has_a_parent_run_and_a_run_per_job(quickstart):
    root, _ = quickstart
    runs = mlflow_runs(root, "quickstart")
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep_role") == "job"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.info.run_name for r in children} == RUNS
    assert all(r.data.tags["sweep_parent"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)


def test_child_runs_hold_params_metrics_and_artifacts(quickstart):
    from mlflow.tracking import MlflowClient

    root, _ = quickstart
    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    child = next(r for r in mlflow_runs(root, "quickstart") if r.info.run_name == "1e-5;1e-5")
    params = child.data.params
    assert float(params["train.learning_rate"]) == 1e-5 and float(params["train.text_encoder_lr"]) == 1e-5
    assert params["model.path"] == "world" and params["render.num_inference_steps"] == "3"
    assert params["model.identity"].startswith("world-"), "the shipped weights' content hash"
    loss = client.get_metric_history(child.info.run_id, "loss")
    assert sorted(m.step for m in loss) == list(range(1, 7))
    for key in ("steps_per_second", "peak_memory_mb", "render_seconds", "lr", "text_encoder_lr"):
        assert key in child.data.metrics, key
    top = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"1e-5;1e-5", "sheets", "lora", "config", "images"} <= top
    pictures = {a.path.split("/")[-1] for a in client.list_artifacts(child.info.run_id, "1e-5;1e-5")}
    assert pictures == PICTURES
    lora = {a.path for a in client.list_artifacts(child.info.run_id, "lora")}
    assert {
        "lora/pytorch_lora_weights.safetensors",
        "lora/lora_kohya.safetensors",
        "lora/loss_log.jsonl",
    } <= lora
    assert {"config/config.yaml", "config/overrides.yaml"} <= {
        a.path for a in client.list_artifacts(child.info.run_id, "config")
    }


def _moved_sweep_root(source: Path, target: Path) -> Path:
    """A copy of a finished sweep root at ``target``, as if it had run there: its records and its MLflow store
    name the new place (absolute paths), so running it again leaves ``source`` untouched."""
    shutil.copytree(source, target, symlinks=True)
    old, new = str(source.resolve()), str(target.resolve())
    for record in target.rglob("*.json"):
        text = record.read_text()
        if old in text:
            record.write_text(text.replace(old, new))
    with contextlib.closing(sqlite3.connect(target / "mlflow.db")) as store, store:
        store.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new)
        )
        store.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    return target


def test_rerunning_the_sweep_skips_everything_finished(quickstart, tmp_path):
    # its own copy: the session's sweep is read by other tests (test_mlflow_ui, test_compare_page)
    root = _moved_sweep_root(quickstart[0], tmp_path / "root")
    sweep_dir = root / "quickstart"
    # the finished work: pictures and adapters (sheets, report and compare page are views, redrawn at the end)
    files = [
        p
        for run in RUNS
        for pattern in ("*.png", "lora/*.safetensors", "scores.csv")
        for p in (sweep_dir / run).glob(pattern)
    ]
    assert len(files) > 40
    stamps = {p: p.stat().st_mtime_ns for p in files}
    result = sweep(root, "experiment=quickstart", *FAST)
    assert result.returncode == 0, result.output
    assert "LoRA already trained" in result.output and "render " not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in files} == stamps, "nothing finished is rewritten"
    children = [r for r in mlflow_runs(root, "quickstart") if r.data.tags.get("sweep_role") == "job"]
    assert len(children) == 4, "no duplicate MLflow runs"


def test_step_axis_reuse_equals_separate_training(tmp_path, cache_dir):
    base = [
        "experiment=quickstart",
        *FAST,
        "render.enabled=false",
        "tracking.enabled=false",
        "train.learning_rate=1e-3",
        "train.text_encoder_lr=1e-4",
    ]
    shared = sweep(tmp_path / "shared", *base, "train.max_train_steps=8,4,12")
    assert shared.returncode == 0, shared.output
    records = run_records(tmp_path / "shared" / "quickstart")
    assert set(records) == {"1e-3;1e-4;4", "1e-3;1e-4;8", "1e-3;1e-4;12"}
    # One job trains the three (a pack): 12 trains, checkpointing at 4 and 8; 4 and 8 take those checkpoints.
    assert records["1e-3;1e-4;12"]["result"]["resumed_from"] is None
    for steps in (4, 8):
        assert records[f"1e-3;1e-4;{steps}"]["result"]["resumed_from"].endswith(
            f"1e-3;1e-4;12/lora/checkpoints/step-{steps:06d}"
        )
    for steps in (4, 12):
        alone = sweep(
            tmp_path / f"alone{steps}", *base, f"train.max_train_steps={steps}", "sweep.reuse_steps=false"
        )
        assert alone.returncode == 0, alone.output
        (separate,) = (tmp_path / f"alone{steps}" / "quickstart").glob(
            "*/lora/pytorch_lora_weights.safetensors"
        )
        reused = tmp_path / "shared" / "quickstart" / f"1e-3;1e-4;{steps}" / "lora" / separate.name
        assert_same_weights(reused, separate)


def test_schedules_that_depend_on_the_total_train_separately(tmp_path, cache_dir):
    result = sweep(
        tmp_path,
        "experiment=quickstart",
        *FAST,
        "render.enabled=false",
        "tracking.enabled=false",
        "train.learning_rate=1e-3",
        "train.text_encoder_lr=1e-4",
        "train.lr_scheduler=linear",
        "train.max_train_steps=4,8",
    )
    assert result.returncode == 0, result.output
    records = run_records(tmp_path / "quickstart")
    assert all(r["result"]["resumed_from"] is None and r["result"]["trained"] for r in records.values())


def test_a_killed_sweep_resumes_from_its_last_checkpoint(tmp_path, cache_dir):
    args = [
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        "train.text_encoder_lr=1e-4",
        "train.max_train_steps=60",
        "train.checkpoint_every=10",
        "render.enabled=false",
    ]
    process = start_sweep(tmp_path, *args)
    checkpoints = tmp_path / "quickstart" / "1e-3;1e-4" / "lora" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-000020")):
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (checkpoints.parent / "pytorch_lora_weights.safetensors").exists()
    resumed = sweep(tmp_path, *args)
    assert resumed.returncode == 0, resumed.output
    record = run_records(tmp_path / "quickstart")["1e-3;1e-4"]
    step = int(record["result"]["resumed_from"].rsplit("-", 1)[1])
    assert step >= 20 and record["status"] == "done"
    fresh = sweep(tmp_path / "fresh", *args, "train.checkpoint_every=0")
    assert fresh.returncode == 0, fresh.output
    fresh_lora = tmp_path / "fresh" / "quickstart" / "1e-3;1e-4" / "lora" / "pytorch_lora_weights.safetensors"
    assert_same_weights(checkpoints.parent / "pytorch_lora_weights.safetensors", fresh_lora)
    # the interrupted attempt's MLflow run was replaced: one finished child run for the folder
    children = [r for r in mlflow_runs(tmp_path, "quickstart") if r.info.run_name == "1e-3;1e-4"]
    assert [r.info.status for r in children] == ["FINISHED"]


def test_an_unreachable_tracking_server_does_not_stop_the_sweep(tmp_path, cache_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    args = [
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        f"tracking.uri=http://127.0.0.1:{port}",
    ]
    result = sweep(tmp_path, *args)
    assert result.returncode == 0, result.output
    assert "cannot reach the MLflow store" in result.output and "python -m sweeper.tracking" in result.output
    sweep_dir = tmp_path / "quickstart"
    assert (sweep_dir / "MLFLOW_PENDING").is_file()
    assert len(run_records(sweep_dir)) == 2 and all(
        len(list((sweep_dir / r).glob("*.png"))) == 12 for r in run_records(sweep_dir)
    )
    store = f"sqlite:///{tmp_path.resolve() / 'later.db'}"
    logged = subprocess.run(
        [sys.executable, "-m", "sweeper.tracking", str(sweep_dir), "--tracking-uri", store],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert logged.returncode == 0, logged.stdout + logged.stderr
    assert "Logged 2 runs" in logged.stdout
    assert not (sweep_dir / "MLFLOW_PENDING").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep_role") == "job"]
    assert {r.info.run_name for r in children} == {"1e-3;1e-4", "1e-3;1e-5"}
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 6 for r in children)


def joblib_sweep(tmp_path, *args: str, rates: str = "1e-3"):
    """The quickstart's jobs (learning rates ``rates``) on joblib's two workers, their processes probed."""
    return sweep(
        tmp_path,
        "experiment=quickstart",
        *FAST,
        f"train.learning_rate={rates}",
        "launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *args,
        env=probe_env(tmp_path),
    )


def test_the_joblib_launcher_trains_a_pack_in_a_worker(tmp_path, cache_dir):
    """A pack's job runs in a worker process of its own and composes its members' configs there; its live
    MLflow writes go through its helper process (which ends with os._exit, unseen by the probe), so the
    job's process never imports MLflow (sweeper.tracking.helper). How auto spreads packs over the workers:
    tests/test_pack_sweeps.py. submitit's launcher: tests/test_slurm.py runs a sweep through a real SLURM."""
    result = joblib_sweep(tmp_path, "sweep.pack=2")  # one pack of the two, on one worker
    assert result.returncode == 0, result.output
    processes = probed_processes(tmp_path)
    jobs = [p for p in processes if p[0].startswith("Loky")]
    assert jobs and not any(imported for *_, imported in jobs), processes  # yet the runs are logged (below)
    records = run_records(tmp_path / "quickstart")
    assert set(records) == {"1e-3;1e-4", "1e-3;1e-5"}
    assert all(r["status"] == "done" and r["pack"]["size"] == 2 for r in records.values())
    for name in records:
        assert {p.name for p in (tmp_path / "quickstart" / name).glob("*.png")} == PICTURES
    runs = mlflow_runs(tmp_path, "quickstart")
    children = [r for r in runs if r.data.tags.get("sweep_role") == "job"]
    assert {r.info.run_name for r in children} == set(records)
    assert all(r.info.status == "FINISHED" and "loss" in r.data.metrics for r in children)
    assert {r.data.tags["pack_size"] for r in children} == {"2"}
    parent = next(r for r in runs if r.data.tags.get("sweep_role") == "parent")
    assert all(r.data.tags["sweep_parent"] == parent.info.run_id for r in children)


def test_jobs_without_live_tracking_never_import_mlflow_and_the_sweeps_end_logs_the_same_runs(
    tmp_path, cache_dir
):
    """``tracking.live=false``: the jobs (joblib workers) leave MLflow alone; the launching process logs every
    finished run at the sweep's end, with the params, the loss curve, the pictures and the parent link."""
    from mlflow.tracking import MlflowClient

    result = joblib_sweep(tmp_path, "tracking.live=false")
    assert result.returncode == 0, result.output
    # the launching process logs through its own helper process (which ends with os._exit, unseen by the
    # probe): no process that trains or plans imports MLflow
    processes = probed_processes(tmp_path)
    importers = [(name, argv) for name, argv, imported in processes if imported]
    assert importers == [] and "MainProcess" in [p[0] for p in processes], processes
    records = run_records(tmp_path / "quickstart")
    runs = mlflow_runs(tmp_path, "quickstart")
    parent = next(r for r in runs if r.data.tags.get("sweep_role") == "parent")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("sweep_role") == "job"}
    assert set(children) == set(records) == {"1e-3;1e-4", "1e-3;1e-5"}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    for name, child in children.items():
        assert child.info.status == "FINISHED" and child.data.tags["sweep_parent"] == parent.info.run_id
        assert float(child.data.params["train.learning_rate"]) == 1e-3
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == list(
            range(1, 7)
        )
        assert records[name]["mlflow"]["run_id"] == child.info.run_id
    assert not (tmp_path / "quickstart" / "MLFLOW_PENDING").exists()


def test_every_picture_is_scored_and_the_scores_reach_mlflow_and_the_report(quickstart):
    import csv

    root, _ = quickstart
    for run in RUNS:
        with (root / "quickstart" / run / "scores.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert {r["file"] for r in rows} == PICTURES
        assert all(0 < float(r["dino"]) <= 1.0001 and -1 <= float(r["clip_t"]) <= 1 for r in rows)
    child = next(r for r in mlflow_runs(root, "quickstart") if r.info.run_name == "2e-3;1e-4")
    for key in ("dino", "clip_i", "clip_t", "dino/ph", "clip_t/be", "dino/cell/ph_1_0_4", "real_dino"):
        assert key in child.data.metrics, key
    report = (root / "quickstart" / "report.md").read_text()
    assert (
        "## DreamBooth metrics" in report
        and "| DreamBooth, Stable Diffusion (paper) | 0.668 | 0.803 | 0.305 |" in report
    )
    parent = next(r for r in mlflow_runs(root, "quickstart") if r.data.tags.get("sweep_role") == "parent")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    assert {"report.md", "compare.html", "loss_curves.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


def test_missing_evaluation_models_skip_evaluation_with_one_line(tmp_path, cache_dir):
    result = sweep(
        tmp_path,
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        "train.text_encoder_lr=1e-4",
        "eval.dino_model=someone/not-downloaded",
        "eval.local_files_only=true",
        multirun=False,
    )
    assert result.returncode == 0, result.output
    skipped = [line for line in result.output.splitlines() if "evaluation is skipped" in line]
    assert len(skipped) == 1 and "eval.dino_model=someone/not-downloaded" in skipped[0]
    run = tmp_path / "quickstart" / "1e-3;1e-4"
    assert len(list(run.glob("*.png"))) == 12 and not (run / "scores.csv").exists()


def test_a_rerun_with_more_cells_renders_and_logs_only_the_new_ones(tmp_path, cache_dir):
    from mlflow.tracking import MlflowClient

    args = [
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        "train.text_encoder_lr=1e-4",
        "render.prompts=[{ph: 'a photo of {token} {class}'}]",
        "render.unet_scales=[1]",
        "render.text_scales=[1]",
    ]
    first = sweep(tmp_path, *args, "render.guidance_scales=[3]", multirun=False)
    assert first.returncode == 0, first.output
    # a single run (no -m) ends as a multirun does: report, compare page, and the MLflow link
    assert (tmp_path / "quickstart" / "report.md").is_file() and (
        tmp_path / "quickstart" / "compare.html"
    ).is_file()
    assert "viewStateShareKey=sweep" in first.stdout
    run = tmp_path / "quickstart" / "1e-3;1e-4"
    stamp = (run / "ph_1;1;3.png").stat().st_mtime_ns
    second = sweep(tmp_path, *args, "render.guidance_scales=[3,5]", multirun=False)
    assert second.returncode == 0, second.output
    assert "LoRA already trained" in second.output
    assert (run / "ph_1;1;3.png").stat().st_mtime_ns == stamp and (run / "ph_1;1;5.png").is_file()
    (child,) = mlflow_runs(tmp_path, "quickstart")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    logged = {a.path.split("/")[-1] for a in client.list_artifacts(child.info.run_id, "1e-3;1e-4")}
    assert logged == {"ph_1;1;3.png", "ph_1;1;5.png"} and child.info.status == "FINISHED"
