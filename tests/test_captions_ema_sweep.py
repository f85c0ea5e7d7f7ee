"""Captions and EMA through the sweep, as a user runs them (tiny model, a few steps)."""

import json

import pytest
from PIL import Image
from sweep_cli import FAST, mlflow_runs, planned_refusal, refused, run_records, sweep

TINY = ["model=tiny", *FAST, "train.learning_rate=1e-2", "eval.enabled=false"]


def _pictures(tmp_path, captions: dict[str, str]):
    folder = tmp_path / "pics"
    folder.mkdir()
    for index, name in enumerate(("a.png", "b.png", "c.png")):
        Image.new("RGB", (64, 64), (80 * index, 120, 200)).save(folder / name)
    for name, text in captions.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.slow
def test_render_weights_both_renders_the_raw_and_the_ema_grid_apart(tmp_path, cache_dir):
    args = [
        *TINY,
        "train.ema_decay=0.5",
        "render.weights=both",
        "render.steps=[3]",
        "render.unet_scales=[0,1]",
        "sweep.name=ema",
        "eval.enabled=true",
    ]
    result = sweep(tmp_path, *args, multirun=False)
    assert result.returncode == 0, result.output
    run = tmp_path / "ema" / "0.01;1e-5"
    names = {"ph_0;1;7.5.png", "ph_1;1;7.5.png"}
    for folder in (run, run / "ema", run / "step-000003", run / "step-000003" / "ema"):
        assert {p.name for p in folder.glob("*.png")} == names, folder
    assert (run / "ema" / "scores.csv").is_file() and (run / "ema" / "sheets" / "ph_g7.5.png").is_file()
    assert (run / "sheets" / "weights_ph.png").is_file()
    assert (run / "lora" / "ema" / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "lora" / "ema" / "lora_kohya.safetensors").is_file()
    raw, ema = (Image.open(folder / "ph_1;1;7.5.png").tobytes() for folder in (run, run / "ema"))
    assert raw != ema, "the EMA grid is rendered with the EMA weights"
    assert run_records(tmp_path / "ema")["0.01;1e-5"]["render_weights"] == "both"
    (job,) = [r for r in mlflow_runs(tmp_path, "ema") if r.data.tags.get("sweep_role") == "job"]
    assert job.data.params["render.weights"] == "both" and job.data.params["train.ema_decay"] == "0.5"
    assert {"dino", "ema_dino"} <= set(job.data.metrics)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    ema_files = {a.path for a in client.list_artifacts(job.info.run_id, "0.01;1e-5/ema")}
    assert "0.01;1e-5/ema/ph_1;1;7.5.png" in ema_files
    assert {a.path for a in client.list_artifacts(job.info.run_id, "lora/ema")} >= {
        "lora/ema/pytorch_lora_weights.safetensors"
    }


@pytest.mark.slow
def test_the_ema_of_a_loha_adapter_renders_from_its_own_file(tmp_path, cache_dir):
    # LoHa has no diffusers file: the EMA is kept, found and rendered in peft naming like the raw weights
    args = [*TINY, "lora.kind=loha", "train.ema_decay=0.5", "render.weights=ema", "sweep.name=loha_ema"]
    result = sweep(tmp_path, *args, multirun=False)
    assert result.returncode == 0, result.output
    run = tmp_path / "loha_ema" / "0.01;1e-5"
    assert (run / "lora" / "ema" / "adapter_peft.safetensors").is_file()
    assert not (run / "lora" / "ema" / "pytorch_lora_weights.safetensors").exists()
    assert {p.name for p in run.glob("*.png")} == {"ph_1;1;7.5.png"}
    result_file = json.loads((run / "lora" / "train_result.json").read_text())
    assert result_file["ema_lora_path"].endswith("ema/adapter_peft.safetensors")


def test_render_weights_ema_without_ema_is_refused_before_training(tmp_path, capsys):
    result = planned_refusal(
        capsys,
        tmp_path,
        *TINY,
        "render.weights=ema",
        "train.learning_rate=1e-3,3e-3",
        "tracking.enabled=false",
    )
    refused(result, "render.weights=ema", "train.ema_decay")
    assert not list(tmp_path.rglob("lora"))


def test_a_bad_caption_file_stops_the_sweep_before_training(tmp_path, capsys):
    pictures = _pictures(tmp_path, {"a.txt": "a photo of {tokn} {class}", "b.txt": "fine"})
    args = [
        *TINY,
        f"data.instance_dir={pictures}",
        "data.caption_mode=sidecar_or_instance",
        "train.learning_rate=1e-3,3e-3",
        "tracking.enabled=false",
    ]
    result = planned_refusal(capsys, tmp_path, *args)
    refused(result, "a.txt", "unknown placeholder {tokn}")
    assert not list(tmp_path.rglob("lora"))


@pytest.mark.slow
def test_a_captioned_run_records_its_captions_and_refuses_changed_ones(tmp_path):
    pictures = _pictures(tmp_path, {"a.txt": "{token} {class} on the beach", "b.txt": "{token} in snow"})
    args = [
        *TINY,
        f"data.instance_dir={pictures}",
        "data.caption_mode=sidecar_or_instance",
        "train.caption_dropout=0.2",
        "sweep.name=cap",
        "tracking.enabled=false",
    ]
    first = sweep(tmp_path, *args, multirun=False)
    assert first.returncode == 0, first.output
    record = run_records(tmp_path / "cap")["0.01;1e-5"]
    assert record["captions"] == {
        "a.png": "ktn cat on the beach",
        "b.png": "ktn in snow",
        "c.png": "a photo of ktn cat",
    }
    assert (
        record["settings"]["caption_mode"] == "sidecar_or_instance"
        and record["settings"]["caption_dropout"] == 0.2
    )
    (pictures / "b.txt").write_text("{token} under the night sky")
    again = sweep(tmp_path, *args, multirun=False)
    refused(again, "captions", "Nothing was changed")
    assert (
        json.loads((tmp_path / "cap" / "0.01;1e-5" / "run.json").read_text())["captions"]["b.png"]
        == "ktn in snow"
    )
