"""``sweep.json``: the plan the launching process writes for the jobs, and reads back."""

import json

from sweeper.disk.layout import PLAN_FILE
from sweeper.planning.plan import SweepPlan, TrackingIds, parent_run_of


def test_a_plan_written_before_the_typed_mlflow_ids_still_loads_and_saves_the_same(tmp_path):
    written = {
        "name": "quickstart",
        "varying": ["learning_rate"],
        "jobs": {"1e-3": {"overrides": ["train.learning_rate=1e-3"], "extra_checkpoint_steps": []}},
        "tracking": {"uri": "sqlite:///x/mlflow.db", "experiment_id": "1", "parent_run_id": "abc"},
    }
    (tmp_path / PLAN_FILE).write_text(json.dumps(written, indent=2))
    plan = SweepPlan.load(tmp_path)
    assert plan.tracking == TrackingIds("sqlite:///x/mlflow.db", "1", "abc")
    assert plan.parent_run_id == parent_run_of(tmp_path) == "abc"
    assert plan.tracking.parent_in("sqlite:///x/mlflow.db") == "abc"
    assert plan.tracking.parent_in("http://elsewhere") is None
    plan.save(tmp_path)
    assert json.loads((tmp_path / PLAN_FILE).read_text()) == written


def test_a_sweep_not_logged_keeps_an_empty_tracking_entry(tmp_path):
    SweepPlan(name="s", varying=[]).save(tmp_path)
    assert json.loads((tmp_path / PLAN_FILE).read_text())["tracking"] == {}
    assert SweepPlan.load(tmp_path).parent_run_id is None
