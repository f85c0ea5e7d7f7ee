"""Mistakes a user makes on the command line stop the sweep before any training, with one clear line."""

import pytest
from sweep_cli import FAST, planned_refusal, refused, sweep


def test_two_jobs_sharing_a_folder_are_refused_before_training(tmp_path, capsys):
    result = planned_refusal(
        capsys,
        tmp_path,
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        "train.text_encoder_lr=1e-4",
        "train.seed=1,2",
        "sweep.run_dir_template='{learning_rate}'",
    )
    refused(result, "would both write 1e-3/")
    assert not list(tmp_path.glob("quickstart/*/lora"))


def test_sweeping_a_render_setting_is_refused(tmp_path, capsys):
    result = planned_refusal(
        capsys, tmp_path, "experiment=quickstart", *FAST, "render.num_inference_steps=3,4"
    )
    refused(result, "render.num_inference_steps", "one job's grid")


@pytest.mark.slow
def test_unsafe_prompt_names_and_sweep_names_are_refused(tmp_path):
    refused(sweep(tmp_path, *FAST, "render.prompts=[{../../x: hello}]", multirun=False), "render.prompts")
    refused(sweep(tmp_path, *FAST, "sweep.name=../escape", multirun=False), "sweep.name")
    assert not (tmp_path.parent / "escape").exists()


def test_a_bad_value_in_one_job_names_that_job(tmp_path, capsys):
    result = planned_refusal(capsys, tmp_path, "experiment=quickstart", *FAST, "train.learning_rate=1e-3,-1")
    refused(result, "job 2 (train.learning_rate=-1 train.text_encoder_lr=1e-05)", "must be > 0")
    assert not list(tmp_path.glob("quickstart/*/lora"))


def test_the_command_refuses_a_bad_value_with_exit_2_and_one_line(tmp_path):
    result = sweep(tmp_path, "experiment=quickstart", *FAST, "train.learning_rate=1e-3,-1")
    refused(result, "job 2 (train.learning_rate=-1 train.text_encoder_lr=1e-05)", "must be > 0")
    assert not list(tmp_path.glob("quickstart/*/lora"))


def test_a_missing_subject_folder_is_named(tmp_path, capsys):
    missing = tmp_path / "no-pictures-here"
    result = planned_refusal(
        capsys, tmp_path, *FAST, f"data.instance_dir={missing}", "train.learning_rate=1e-3,3e-3"
    )
    refused(result, "no-pictures-here", "no such folder")


def test_a_corrupt_picture_is_named_before_training(tmp_path, capsys):
    from PIL import Image

    pictures = tmp_path / "pics"
    pictures.mkdir()
    Image.new("RGB", (64, 64), "red").save(pictures / "good.png")
    (pictures / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = planned_refusal(
        capsys, tmp_path, *FAST, f"data.instance_dir={pictures}", "train.learning_rate=1e-3,3e-3"
    )
    refused(result, "broken.jpg")
    assert not list(tmp_path.glob("default/*/lora"))


@pytest.mark.slow
def test_a_typo_in_a_key_is_an_error(tmp_path):
    result = sweep(tmp_path, "train.lerning_rate=1e-4", multirun=False)
    assert result.returncode != 0 and "lerning_rate" in result.output


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("eval.objective=dino+beauty", "eval.objective"),
        ("eval.batch_size=0", "eval.batch_size=0"),
        ("render.sheet_thumb=3", "render.sheet_thumb=3"),
        ("data.kind=plant", "data.kind=plant"),
    ],
)
@pytest.mark.parametrize("search", ["experiment=quickstart launcher=joblib", "experiment=optuna_search"])
def test_values_used_after_training_are_checked_before_any_job(tmp_path, capsys, value, named, search):
    refused(planned_refusal(capsys, tmp_path, *search.split(), "model=tiny", value), named)
    assert not list(tmp_path.rglob("lora"))


def test_an_output_root_that_cannot_be_written_is_one_line_naming_sweep_root(capsys):
    from hydra import compose, initialize_config_dir

    from sweeper.app import CONF_DIR
    from sweeper.errors import USER_ERROR_EXIT
    from sweeper.planning.callback import SweepCallback

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            return_hydra_config=True,
            overrides=["experiment=quickstart", "model=tiny", *FAST, "sweep.root=/proc/nope"],
        )
        with pytest.raises(SystemExit) as stopped:  # the jobs are expanded with Hydra's config loader
            SweepCallback().on_multirun_start(cfg)
    assert stopped.value.code == USER_ERROR_EXIT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: sweep.root=/proc/nope: "), lines
