"""val_loss rows of the loss log reach MLflow's metrics, loss_curves.png and report.md."""

import json

from sweeper.disk.layout import RunFolder
from sweeper.disk.results import RunResult, load_run
from sweeper.tracking.replay import step_metrics
from sweeper.views.plots import plot_losses
from sweeper.views.report import report_markdown

VAL = {10: 0.50, 20: 0.40, 30: 0.35, 40: 0.38, 50: 0.45}  # lowest at 30, rising after


def _run_dir(tmp_path, val=VAL):
    run_dir = tmp_path / "1e-4;1e-5"
    (run_dir / "lora").mkdir(parents=True)
    rows = []
    for step in range(1, 51):
        row = {"step": step, "loss": 1.0 / step, "lr": 1e-4, "text_encoder_lr": None}
        if step in val:
            row["val_loss"] = val[step]
        rows.append(json.dumps(row))
    (run_dir / "lora" / "loss_log.jsonl").write_text("\n".join(rows) + "\n")
    return run_dir


def test_validation_loss_is_an_mlflow_step_metric(tmp_path):
    metrics = step_metrics(RunFolder(_run_dir(tmp_path)))
    assert [(v, s) for k, v, s in metrics if k == "val_loss"] == [(VAL[s], s) for s in sorted(VAL)]
    assert sum(k == "loss" for k, _, _ in metrics) == 50


def test_run_result_finds_where_validation_starts_rising(tmp_path):
    run = load_run(_run_dir(tmp_path))
    assert run.val_loss == sorted(VAL.items()) and run.val_rise_step == 30
    falling = RunResult(tmp_path, {}, [], val_loss=[(10, 0.5), (20, 0.4)])
    assert falling.val_rise_step is None


def test_report_shows_the_rising_step_and_plots_validation(tmp_path):
    run = load_run(_run_dir(tmp_path))
    plot = plot_losses([run], tmp_path / "loss_curves.png")
    text = report_markdown(tmp_path, [run], "dino+clip_t", plot)
    assert "| `1e-4;1e-5` | 0.3500 | 30 |" in text
    assert plot.is_file() and plot.stat().st_size > 0


def test_report_without_validation_has_no_validation_section(tmp_path):
    run = load_run(_run_dir(tmp_path, val={}))
    assert "Validation loss" not in report_markdown(tmp_path, [run], "dino+clip_t", None)
