"""The prepared GPU check (``python -m bench gpu``) runs end to end on the CPU, so it cannot rot between
the sessions that have a GPU to run it on."""

import json

import pytest
from sweep_cli import run_cli

pytestmark = pytest.mark.slow

# Stands in for diffusers' train_dreambooth_lora.py (carried to the GPU machine, not installed here): takes
# the reference's flags, records them, and runs optimizer steps the step clock can time.
FAKE_REFERENCE = """
import argparse, json, pathlib, sys, torch
parser = argparse.ArgumentParser()
parser.add_argument("--max_train_steps", type=int)
parser.add_argument("--output_dir")
args, _ = parser.parse_known_args()
pathlib.Path(args.output_dir).mkdir(parents=True, exist_ok=True)
weight = torch.nn.Parameter(torch.ones(4))
optimizer = torch.optim.AdamW([weight])
for _ in range(args.max_train_steps):
    weight.sum().backward()
    optimizer.step()
"""


def test_the_device_check_runs_every_section_on_the_tiny_model(tmp_path):
    script = tmp_path / "reference.py"
    script.write_text(FAKE_REFERENCE)
    out = tmp_path / "out"
    args = ["--tiny", "--out", str(out), "--reference", str(script), "--reference-sdxl", str(script)]
    result = run_cli("bench", "gpu", *args, timeout=900)
    assert result.returncode == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["batch"], r["gradient_checkpointing"]) for r in summary["train"]} == {(2, False), (2, True)}
    assert all(r["ours_s_per_step"] > 0 and r["floor_s_per_step"] > 0 for r in summary["train"])
    assert (
        summary["resume"]["same_keys"] and summary["resume"]["max_abs_diff"] == 0.0
    )  # fp32 on the CPU: exact
    assert summary["grid"]["cells"] == 16 and summary["grid"]["max_pixel_diff"] <= 2  # the real check: 48
    assert summary["sweep"]["green"] and summary["sweep"]["runs_done"] == 2
    assert set(summary["sync"]) == {"ours", "floor"}  # on the CPU: the profiles only, no sync counts
    profile = (out / "profile.txt").read_text()
    assert "== ours" in profile and "== floor" in profile and "aten::" in profile
    # the reference: timed per setting with that setting's flags, its s/step beside ours
    assert len(summary["reference"]) == 2 and all(r["reference_s_per_step"] > 0 for r in summary["reference"])
    for row in summary["reference"]:
        flags = row["flags"]
        assert ("--gradient_checkpointing" in flags) == row["gradient_checkpointing"]
        assert flags[flags.index("--train_batch_size") + 1] == str(row["batch"])
        assert flags[flags.index("--mixed_precision") + 1] == "no", "fp32 on the CPU, fp16 on CUDA"
    for row in summary["train"]:
        assert row["ours_over_reference"] == row["ours_s_per_step"] / row["reference_s_per_step"]
    table = (out / "table.md").read_text()
    assert table.count("\n| ") == 3 and "Device: CPU" in table  # header + 2 training rows
    assert "| ours / reference |" in table and "Resume" in table and "Sweep" in table
    # packs against one configuration alone, with each size's time per configuration-step
    assert [r["size"] for r in summary["pack"]["packs"]] == [1, 2]
    assert all(r["s_per_config_step"] > 0 and r["ratio"] > 0 for r in summary["pack"]["packs"])
    assert summary["pack"]["dtype"] == "torch.float32"  # the CPU's; the GPU's base is fp16 (auto)
    assert "Packs (float32 base" in table
    # SDXL (the tiny SDXL model here), gradient checkpointing off and on, the SDXL reference beside it
    assert [r["gradient_checkpointing"] for r in summary["sdxl"]] == [False, True]
    assert all(r["ours_s_per_step"] > 0 and r["reference_s_per_step"] > 0 for r in summary["sdxl"])
    assert all(
        str(r["flags"][r["flags"].index("--pretrained_model_name_or_path") + 1])
        .split("/")[-1]
        .startswith("tiny-sdxl-")
        for r in summary["sdxl"]
    )
    assert table.count("SDXL 64 px, batch 1") == 2
