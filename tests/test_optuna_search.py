"""Optuna with pruning: trials scored at report steps, weak ones pruned, the study continued from SQLite."""

import math
from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from optuna.trial import TrialState
from sweep_cli import FAST, mlflow_runs, planned_refusal, refused, run_records, sweep

from lora_core.adapters import LORA_FILE
from sweeper.app import CONF_DIR
from sweeper.planning.plan import SweepPlan
from sweeper.search.optuna import run_search

STEPS = 6  # debug=fast's max_train_steps


class Interrupted(Exception):
    pass


class FakeLauncher:
    """Scores a job without training: the closer the learning rate to 1e-3, the better, at every step.

    A pack's job (``sweep.pack_members``) scores each of its trials, by run folder, as the pack job returns.
    """

    def __init__(self, stop_after: int | None = None):
        self.jobs: list[tuple[float, int]] = []
        self.batches: list[int] = []  # trials per launch
        self.packs: list[int] = []  # trials per job
        self.stop_after = stop_after
        self.sweep_dir = None  # set by _search

    def launch(self, batch, initial_job_idx):
        if self.stop_after is not None and len(self.jobs) >= self.stop_after:
            raise Interrupted  # the process dies between two stages
        plan = SweepPlan.load(self.sweep_dir)
        returns, trials = [], 0
        for overrides in batch:
            values = dict(o.split("=", 1) for o in overrides)
            step = int(values.get("sweep.stop_at_step", STEPS))
            members = [n.strip("'") for n in values.get("sweep.pack_members", "").strip("[]").split(",") if n]
            scores = {}
            for name in members or [None]:
                own = dict(o.split("=", 1) for o in plan.jobs[name]["overrides"]) if name else values
                lr = float(own["train.learning_rate"])
                self.jobs.append((lr, step))
                scores[name] = -abs(math.log10(lr) + 3) + step / 1000
            trials += len(scores)
            self.packs.append(len(scores))
            returns.append(SimpleNamespace(return_value=scores if members else scores[None]))
        self.batches.append(trials)
        return returns


def _search(root, launcher, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            return_hydra_config=True,
            overrides=[
                "experiment=optuna_search",
                "model=tiny",
                *FAST,
                f"sweep.root={root}",
                "tracking.enabled=false",
                "hydra.sweeper.report_steps=[2,4]",
                "hydra.sweeper.pruner.n_startup_trials=1",
                *overrides,
            ],
        )
        with open_dict(cfg):  # continuous values: no two trials train the same folder
            cfg.hydra.sweeper.params = {"train.learning_rate": "tag(log, interval(1e-5, 1e-1))"}
        launcher.sweep_dir = root / "optuna_search"
        run_search(cfg, launcher, list(cfg.hydra.overrides.task))
    return optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{root.resolve() / 'optuna.db'}")


def _stages(launcher, lr):
    return [step for value, step in launcher.jobs if value == lr]


def test_a_trial_the_median_pruner_stops_trains_no_further_than_its_report(tmp_path):
    launcher = FakeLauncher()
    study = _search(tmp_path, launcher, "hydra.sweeper.n_trials=6")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    for trial in study.trials:
        lr = trial.params["train.learning_rate"]
        if trial.state == TrialState.PRUNED:
            last = max(trial.intermediate_values)
            assert _stages(launcher, lr) == [2, 4][: [2, 4].index(last) + 1], "no job after the pruned step"
            completed = [
                t for t in study.trials if t.state == TrialState.COMPLETE and t.number < trial.number
            ]
            median = sorted(t.intermediate_values[last] for t in completed)[(len(completed) - 1) // 2]
            assert trial.intermediate_values[last] < median + 1e-12
        else:
            assert _stages(launcher, lr) == [2, 4, STEPS]
            assert (
                set(trial.intermediate_values) == {2, 4, STEPS}
                and trial.value == trial.intermediate_values[6]
            )
            assert trial.user_attrs["run_dir"]


def test_no_pruner_runs_every_trial_to_the_end(tmp_path):
    study = _search(tmp_path, FakeLauncher(), "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.name=none")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def test_n_jobs_trials_run_as_one_batch_per_stage_under_hyperband(tmp_path):
    launcher = FakeLauncher()
    study = _search(
        tmp_path,
        launcher,
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner.name=hyperband",
    )
    assert launcher.batches[0] == 2 and max(launcher.batches) == 2
    assert launcher.packs[0] == 2, "the first stage's two trials train as one pack"
    assert len(study.trials) == 5
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in study.trials:  # a trial ran exactly the stages it reported
        assert _stages(launcher, trial.params["train.learning_rate"]) == sorted(trial.intermediate_values)


def test_the_same_search_again_continues_the_study_and_reruns_no_finished_trial(tmp_path):
    first = _search(tmp_path, FakeLauncher(), "hydra.sweeper.n_trials=4")
    before = {t.params["train.learning_rate"] for t in first.trials}
    again = FakeLauncher()
    _search(tmp_path, again, "hydra.sweeper.n_trials=4")
    assert again.jobs == [], "the study is complete: nothing runs"
    more = FakeLauncher()
    study = _search(tmp_path, more, "hydra.sweeper.n_trials=6")
    assert len(study.trials) == 6 and {lr for lr, _ in more.jobs}.isdisjoint(before)
    assert len({lr for lr, _ in more.jobs}) == 2


def test_an_interrupted_trial_resumes_after_its_last_report(tmp_path):
    with pytest.raises(Interrupted):  # trial 0 reported at steps 2 and 4, then the process died
        _search(tmp_path, FakeLauncher(stop_after=2), "hydra.sweeper.n_trials=3")
    study = optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (running,) = study.trials
    assert running.state == TrialState.RUNNING and set(running.intermediate_values) == {2, 4}
    resumed = FakeLauncher()
    study = _search(tmp_path, resumed, "hydra.sweeper.n_trials=3")
    lr = running.params["train.learning_rate"]
    assert _stages(resumed, lr) == [STEPS], "only the stage after its last report"
    assert study.trials[0].state == TrialState.COMPLETE and len(study.trials) == 3


SEARCH = ["experiment=optuna_search", "model=tiny", *FAST, "hydra.sweeper.report_steps=[2,4]"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["hydra.sweeper.pruner.name=percentile"], "hydra.sweeper.pruner.name=percentile"),
        (["hydra.sweeper.report_steps=[]"], "hydra.sweeper.report_steps=[]"),
        (
            ["hydra.sweeper.report_steps=[400,800]"],
            "hydra.sweeper.report_steps=[400, 800]",
        ),  # trials: 100-400
        (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
        (["hydra.sweeper.sampler.name=grid"], "hydra.sweeper.sampler.name=grid"),
        (["train.rank=interval(8,4)"], "train.rank=interval(8,4)"),
    ],
)
def test_bad_optuna_input_is_one_line_before_anything_trains(tmp_path, capsys, args, named):
    refused(planned_refusal(capsys, tmp_path, *SEARCH, *args), named)
    assert not list(tmp_path.rglob("lora")), "nothing trained"


def test_the_optuna_sweeper_command_refuses_bad_input_with_exit_2_and_one_line(tmp_path):
    refused(sweep(tmp_path, *SEARCH, "hydra.sweeper.n_trials=0", timeout=120), "hydra.sweeper.n_trials=0")
    assert not list(tmp_path.rglob("lora")), "nothing trained"


# Three trials of the tiny model scored at step 3 and pruned there by the median of the completed ones.
E2E = [
    "experiment=optuna_search",
    "model=tiny",
    "eval=tiny",
    *FAST,
    "train.max_train_steps=6",
    "hydra.sweeper.report_steps=[3]",
    "hydra.sweeper.pruner.n_startup_trials=1",
    "hydra.sweeper.sampler.seed=0",
]


@pytest.fixture(scope="module")
def searched_twice(tmp_path_factory, cache_dir):
    """The search run to 3 trials, then the same command with n_trials=4."""
    root = tmp_path_factory.mktemp("optuna")
    first = sweep(root, *E2E, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, first.output
    trials = optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{root / 'optuna.db'}").trials
    stamps = {p: p.stat().st_mtime_ns for p in (root / "optuna_search").glob("*/lora/**/*.safetensors")}
    again = sweep(root, *E2E, "hydra.sweeper.n_trials=4")
    assert again.returncode == 0, again.output
    return root, trials, stamps


@pytest.mark.slow
def test_a_pruned_trial_stops_at_its_report_step_and_a_completed_one_renders_the_grid(searched_twice):
    root, trials, _ = searched_twice
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    records = run_records(root / "optuna_search")
    for trial in trials:
        run = root / "optuna_search" / trial.user_attrs["run_dir"]
        assert set(trial.intermediate_values) <= {3, 6} and 3 in trial.intermediate_values
        assert (run / "lora" / LORA_FILE).is_file() == (trial.state == TrialState.COMPLETE)
        if trial.state == TrialState.PRUNED:
            assert (
                records[run.name]["status"] == "rung"
                and records[run.name]["settings"]["max_train_steps"] == 6
            )
            assert list((run / "step-000003").glob("*.png")) and not list(run.glob("*.png"))


@pytest.mark.slow
def test_the_same_command_continues_the_study_without_rerunning_a_trial(searched_twice):
    root, trials, stamps = searched_twice
    study = optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(trials) == 3 and len(study.trials) == 4, "one more trial, not three"
    assert [t.params for t in study.trials[:3]] == [t.params for t in trials]
    assert [t.intermediate_values for t in study.trials[:3]] == [t.intermediate_values for t in trials]
    assert stamps and all(p.stat().st_mtime_ns == m for p, m in stamps.items()), "no trial retrained"


@pytest.mark.slow
def test_mlflow_shows_each_report_and_whether_the_trial_was_pruned(searched_twice):
    from mlflow.tracking import MlflowClient

    root, _, _ = searched_twice
    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    study = optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{root / 'optuna.db'}")
    jobs = {
        r.info.run_name: r
        for r in mlflow_runs(root, "optuna_search")
        if r.data.tags.get("sweep_role") == "job"
    }
    for trial in study.trials:
        run = jobs[trial.user_attrs["run_dir"]]
        decision = {TrialState.PRUNED: "pruned", TrialState.COMPLETE: "completed"}[trial.state]
        assert run.data.tags["optuna.decision"] == decision and run.data.tags["optuna.trial"] == str(
            trial.number
        )
        history = client.get_metric_history(run.info.run_id, "intermediate_objective")
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)


@pytest.mark.slow
def test_the_report_lists_every_trial_with_its_reports_and_state(searched_twice):
    root, _, _ = searched_twice
    study = optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{root / 'optuna.db'}")
    report = (root / "optuna_search" / "report.md").read_text()
    assert "## Optuna study `optuna_search`" in report
    section = report.split("## Optuna study")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(study.trials) == 4
    completed = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    for t, row in zip(completed, rows, strict=False):  # completed trials first, best first
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == str(t.number) and cells[1] == f"`{t.user_attrs['run_dir']}`"
        assert cells[-1] == "complete" and f"{t.intermediate_values[3]:.4f}" in cells
    for t in study.trials:
        if t.state == TrialState.PRUNED:
            row = next(r for r in rows if r.startswith(f"| {t.number} |"))
            assert row.rstrip(" |").endswith("pruned") and f"{t.intermediate_values[3]:.4f}" in row


@pytest.mark.slow
def test_the_search_writes_its_best_trial_and_each_job_its_objective(searched_twice):
    """Hydra's ``optimization_results.yaml`` holds the study's best trial; every finished job's run.json and
    MLflow run hold its objective."""
    import yaml

    root, _, _ = searched_twice
    study = optuna.load_study(study_name="optuna_search", storage=f"sqlite:///{root / 'optuna.db'}")
    found = sorted((root / "optuna_search" / "_hydra").glob("multirun-*/optimization_results.yaml"))
    best = yaml.safe_load(found[-1].read_text())  # the second command's: the whole study
    assert best["best_value"] == pytest.approx(study.best_value)
    assert best["best_params"] == study.best_params
    done = {n: r for n, r in run_records(root / "optuna_search").items() if r["status"] == "done"}
    assert done and all(isinstance(r["result"]["objective"], float) for r in done.values())
    jobs = {
        r.info.run_name: r
        for r in mlflow_runs(root, "optuna_search")
        if r.data.tags.get("sweep_role") == "job"
    }
    assert all("objective" in jobs[name].data.metrics for name in done)
