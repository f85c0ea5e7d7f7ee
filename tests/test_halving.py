"""Successive halving: rungs that continue exactly, the bracket's arithmetic, and its refusals."""

import json
import os
import signal
import time

import pytest
from conftest import assert_same_weights
from sweep_cli import FAST, mlflow_runs, planned_refusal, refused, start_sweep, sweep

from lora_core.adapters import LORA_FILE
from lora_core.training import list_checkpoints, train_lora
from sweeper.search.halving import given_rung_steps, rung_steps, survivors

# The quickstart's 2 x 2 learning rates on the tiny model, halved once: rungs at 4 and 8 steps.
HALVING = [
    "experiment=quickstart",
    "hparams_search=halving",
    "model=tiny",
    *FAST,
    "train.max_train_steps=8",
    "hydra.sweeper.eta=2",
    "hydra.sweeper.rungs=2",
]


def test_rungs_resumed_from_checkpoints_end_with_the_weights_of_one_straight_run(
    pipe, subject_images, settings, tmp_path
):
    # a schedule that depends on the total: each rung must continue the 9-step run, not a shorter one
    common = dict(max_train_steps=9, text_encoder_lr=5e-4, lr_scheduler="linear", random_flip=True)
    straight = train_lora(
        pipe, subject_images, settings(**common, checkpoint_steps=(3,)), tmp_path / "straight"
    )
    rungs = settings(**common)
    first = train_lora(pipe, subject_images, rungs, tmp_path / "rungs", until=1)
    second = train_lora(pipe, subject_images, rungs, tmp_path / "rungs", resume_from="latest", until=3)
    assert (first.name, second.name) == ("step-000001", "step-000003")
    assert not (tmp_path / "rungs" / LORA_FILE).exists(), "a rung writes a checkpoint, not a final LoRA"
    assert_same_weights(straight.checkpoints[3] / LORA_FILE, second / LORA_FILE)
    top = train_lora(pipe, subject_images, rungs, tmp_path / "rungs", resume_from="latest")
    assert top.resumed_from_step == 3
    assert_same_weights(straight.lora_path, top.lora_path)
    assert set(list_checkpoints(tmp_path / "rungs")) == {1, 3}


def test_rungs_grow_by_eta_up_to_max_train_steps():
    assert rung_steps(900, 3, 3) == [100, 300, 900]
    assert rung_steps(8, 2, 2) == [4, 8]


def test_rungs_given_by_hand_end_at_max_train_steps():
    assert given_rung_steps(900, 3, [100]) == [100, 900]
    assert given_rung_steps(900, 3, [50, 300]) == [50, 300, 900]


def test_the_best_one_in_eta_go_on_and_unscored_ones_never_do():
    scores = {"a": 0.1, "b": 0.9, "c": None, "d": 0.5, "e": float("nan"), "f": 0.7}
    assert survivors(scores, 3) == ["b", "f"]
    assert survivors({"a": None, "b": 0.2}, 3) == ["b"], "at least one goes on"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["hydra.sweeper.eta=1"], "hydra.sweeper.eta=1"),
        (["hydra.sweeper.rungs=5"], "hydra.sweeper.rungs=5"),  # 8 / 2^4 = 0.5 steps
        (["hydra.sweeper.rungs=two"], "hydra.sweeper.rungs=two: give a whole number"),
        (["eval.objective=dino+sharpness"], "eval.objective="),
        (["train.learning_rate=1e-3", "train.text_encoder_lr=1e-4"], "one configuration"),
        (["hydra.sweeper.steps=[8]"], "hydra.sweeper.steps=[8]"),  # at the top rung, not below it
        (["hydra.sweeper.steps=[4,2]"], "hydra.sweeper.steps=[4, 2]"),
        (["hydra.sweeper.steps=[0]"], "hydra.sweeper.steps=[0]"),
        (["hydra.sweeper.steps=[2,4]"], "hydra.sweeper.rungs=2 and hydra.sweeper.steps=[2, 4] disagree"),
    ],
)
def test_bad_halving_input_is_one_line_before_anything_trains(tmp_path, capsys, args, named):
    refused(planned_refusal(capsys, tmp_path, *HALVING, *args), named)
    assert not list(tmp_path.rglob("lora")), "nothing trained"


def test_the_halving_sweeper_command_refuses_bad_input_with_exit_2_and_one_line(tmp_path):
    refused(
        sweep(tmp_path, *HALVING, "hydra.sweeper.rungs=two"), "hydra.sweeper.rungs=two: give a whole number"
    )
    assert not list(tmp_path.rglob("lora")), "nothing trained"


@pytest.mark.slow
def test_rungs_given_by_hand_drive_the_bracket(tmp_path, cache_dir):
    result = sweep(tmp_path, *HALVING, "hydra.sweeper.steps=[2]", "tracking.enabled=false")
    assert result.returncode == 0, result.output
    bracket = json.loads((tmp_path / "quickstart" / "bracket.json").read_text())
    assert bracket["steps"] == [2, 8] and len(bracket["scores"][0]) == 4
    (promoted,) = bracket["promoted"]
    assert len(promoted) == 2 and set(bracket["scores"][1]) == set(promoted)
    for name in bracket["configurations"]:
        assert (tmp_path / "quickstart" / name / "step-000002").is_dir(), (
            "every configuration rendered rung 1"
        )


@pytest.fixture(scope="module")
def killed_between_rungs(tmp_path_factory, cache_dir):
    """The halving sweep killed with SIGKILL once the first rung is decided, then run again to the end."""
    root = tmp_path_factory.mktemp("halving")
    process = start_sweep(root, *HALVING)
    bracket_file = root / "quickstart" / "bracket.json"
    deadline = time.monotonic() + 400
    while not (bracket_file.is_file() and json.loads(bracket_file.read_text())["promoted"]):
        assert time.monotonic() < deadline and process.poll() is None, "the first rung was never decided"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    sweep_dir = root / "quickstart"
    first_rung = {
        p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/lora/checkpoints/step-000004/*.safetensors")
    }
    result = sweep(root, *HALVING)
    assert result.returncode == 0, result.output
    return root, json.loads(bracket_file.read_text()), first_rung


@pytest.mark.slow
def test_the_best_half_of_a_rung_goes_on_to_the_final_grid(killed_between_rungs):
    root, bracket, _ = killed_between_rungs
    first = bracket["scores"][0]
    assert len(first) == 4 and bracket["promoted"][0] == sorted(first, key=first.get, reverse=True)[:2]
    for name in first:
        run = root / "quickstart" / name
        assert len(list((run / "step-000004").glob("*.png"))) == 2, "the preview grid: 2 prompts x 1 x 1"
        finished = name in bracket["promoted"][0]
        assert (run / "lora" / LORA_FILE).is_file() == finished
        assert len(list(run.glob("*.png"))) == (12 if finished else 0), "the final grid only at the top"
    assert set(bracket["scores"][1]) == set(bracket["promoted"][0])


@pytest.mark.slow
def test_a_rerun_after_kill_9_continues_the_bracket_without_retraining_a_rung(killed_between_rungs):
    _, _, first_rung = killed_between_rungs
    assert len(first_rung) >= 4
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in first_rung.items())


@pytest.mark.slow
def test_mlflow_shows_each_rung_and_why_a_configuration_stopped(killed_between_rungs):
    from mlflow.tracking import MlflowClient

    root, bracket, _ = killed_between_rungs
    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    jobs = {
        r.info.run_name: r for r in mlflow_runs(root, "quickstart") if r.data.tags.get("sweep_role") == "job"
    }
    assert set(jobs) == set(bracket["configurations"])
    for name, run in jobs.items():
        decision = "finished" if name in bracket["promoted"][0] else "stopped"
        assert run.data.tags["halving.decision"] == decision
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "rung_objective"))
        assert steps == ([4, 8] if decision == "finished" else [4])
    parent = next(r for r in mlflow_runs(root, "quickstart") if r.data.tags.get("sweep_role") == "parent")
    assert "bracket_table.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_rung_is_one_batch_for_the_parallel_launchers(tmp_path, launcher):
    """The same bracket through joblib (2 workers) and submitit (a process per job): every configuration
    scored at the first rung, the best half finished with the final grid, the rest stopped there. submitit
    gets 2 configurations (one learning rate): each of its jobs is a fresh process with its imports."""
    if launcher == "joblib":
        extra, configurations = ["hydra.launcher.n_jobs=2"], 4
    else:
        extra, configurations = ["hydra.launcher.gpus_per_node=0", "train.learning_rate=1e-3"], 2
    result = sweep(tmp_path, *HALVING, f"launcher={launcher}", *extra)
    assert result.returncode == 0, result.output
    bracket = json.loads((tmp_path / "quickstart" / "bracket.json").read_text())
    assert len(bracket["scores"][0]) == configurations and len(bracket["promoted"][0]) == configurations // 2
    for name in bracket["scores"][0]:
        finished = name in bracket["promoted"][0]
        assert (tmp_path / "quickstart" / name / "lora" / LORA_FILE).is_file() == finished, name
