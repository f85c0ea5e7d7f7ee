"""The prepared GPU check (``python -m bench gpu``) runs end to end on the CPU, so it cannot rot between
the sessions that have a GPU to run it on."""

import json

import pytest
from sweep_cli import run_cli

pytestmark = pytest.mark.slow


def test_the_device_check_runs_every_section_on_the_tiny_model(tmp_path):
    result = run_cli("bench", "gpu", "--tiny", "--out", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["batch"], r["gradient_checkpointing"]) for r in summary["train"]} == {
        (1, False), (1, True), (2, False), (2, True)
    }  # fmt: skip
    assert all(r["ours_s_per_step"] > 0 and r["floor_s_per_step"] > 0 for r in summary["train"])
    assert (
        summary["resume"]["same_keys"] and summary["resume"]["max_abs_diff"] == 0.0
    )  # fp32 on the CPU: exact
    assert summary["grid"]["cells"] == 48 and summary["grid"]["max_pixel_diff"] <= 2
    assert summary["sweep"]["green"] and summary["sweep"]["runs_done"] == 2
    assert set(summary["sync"]) == {"ours", "floor"}  # on the CPU: the profiles only, no sync counts
    profile = (tmp_path / "profile.txt").read_text()
    assert "== ours" in profile and "== floor" in profile and "aten::" in profile
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == 5 and "Device: CPU" in table  # header + 4 training rows
