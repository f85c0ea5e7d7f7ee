"""The checkpoint axis: a run's grid at chosen steps, beside the final one, and the best step."""

import pytest
from sweep_cli import FAST, sweep

pytestmark = pytest.mark.slow


def test_render_steps_renders_the_grid_at_each_checkpoint_and_the_report_names_the_best(tmp_path, cache_dir):
    args = ["model=tiny", *FAST, "render.steps=[2,4]", "render.unet_scales=[0,1]", "sweep.name=steps",
            "tracking.enabled=false"]  # fmt: skip
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
    assert (tmp_path / "steps" / "steps_fidelity.png").is_file()
    assert "## Subject against prompt over the UNet scale" in report, "two UNet scales were scored"
    assert (tmp_path / "steps" / "scale_tradeoff.png").is_file()
