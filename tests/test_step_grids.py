"""The checkpoint axis: a run's grid at chosen steps, beside the final one, and the best step."""

import pytest
from sweep_cli import FAST, sweep

pytestmark = pytest.mark.slow


def test_render_steps_renders_the_grid_at_each_checkpoint_and_the_report_names_the_best(tmp_path, cache_dir):
    args = [
        "model=tiny",
        *FAST,
        "render.steps=[2,4]",
        "render.unet_scales=[0,1]",
        "sweep.name=steps",
        "tracking.enabled=false",
        "train.lr_scheduler=cosine",
    ]
    result = sweep(tmp_path, *args, multirun=False)
    assert result.returncode == 0, result.output
    run = tmp_path / "steps" / "1e-4;1e-5"
    final = {p.name for p in run.glob("*.png")}
    assert final == {"ph_0;1;7.5.png", "ph_1;1;7.5.png"}, "the final step keeps the run folder's names"
    for step in ("step-000002", "step-000004"):
        assert {p.name for p in (run / step).glob("*.png")} == final
        assert (run / step / "scores.csv").is_file()
    assert (run / "sheets" / "steps_ph.png").is_file()
    report = (tmp_path / "steps" / "report.md").read_text()
    assert "## Best step per configuration" in report and "steps_fidelity.png" in report
    assert "Under a decaying schedule (`1e-4;1e-5`)" in report, "cosine: the best step is a guide, said so"
    assert (tmp_path / "steps" / "steps_fidelity.png").is_file()
    assert "## Subject against prompt over the UNet scale" in report, "two UNet scales were scored"
    assert (tmp_path / "steps" / "scale_tradeoff.png").is_file()


def test_a_checkpoints_grid_is_the_grid_of_a_run_trained_to_that_step_under_a_constant_schedule(
    tmp_path, cache_dir
):
    """Why the best step from checkpoints agrees with a real max_train_steps sweep when the LR is constant
    (bench/best_step.py measures the decaying schedules, where it need not)."""
    import numpy as np
    from PIL import Image

    common = [
        "model=tiny",
        *FAST,
        "render.unet_scales=[1]",
        "train.lr_scheduler=constant",
        "tracking.enabled=false",
    ]
    long = sweep(
        tmp_path, *common, "sweep.name=long", "train.max_train_steps=6", "render.steps=[3]", multirun=False
    )
    short = sweep(tmp_path, *common, "sweep.name=short", "train.max_train_steps=3", multirun=False)
    assert long.returncode == 0 and short.returncode == 0, long.output + short.output
    at_step = tmp_path / "long" / "1e-4;1e-5" / "step-000003"
    trained_to = tmp_path / "short" / "1e-4;1e-5"
    assert "decaying schedule" not in (tmp_path / "long" / "report.md").read_text()
    names = sorted(p.name for p in trained_to.glob("*.png"))
    assert names and names == sorted(p.name for p in at_step.glob("*.png"))
    for name in names:
        a, b = (np.asarray(Image.open(d / name), dtype=np.int16) for d in (at_step, trained_to))
        assert np.abs(a - b).max() <= 1, name
    final = {p.name: np.asarray(Image.open(p)) for p in (tmp_path / "long" / "1e-4;1e-5").glob("*.png")}
    assert any(not np.array_equal(final[n], np.asarray(Image.open(trained_to / n))) for n in names), (
        "six steps should differ from three: else this test compares nothing"
    )
