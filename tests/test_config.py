"""The config schema and every preset, composed the way Hydra composes a job."""

import importlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from lora_core.errors import UserInputError
from sweeper.app import CONF_DIR
from sweeper.config.spec import build_job

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (Path(CONF_DIR) / "launcher").glob("*.yaml"))


def _compose(*overrides, hydra=False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_there_are_presets_for_the_study_and_the_quickstart():
    assert {"quickstart", "study1", "study2", "study3", "study4"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    cfg = _compose(f"experiment={preset}")
    job = build_job(cfg)
    assert cfg.sweep.name == preset and cfg.experiment == preset
    assert job.cells, "every preset renders a grid"


@pytest.mark.parametrize(
    ("model", "path", "resolution"),
    [
        ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512),
        ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 1024),
        ("sd21", "stabilityai/stable-diffusion-2-1", 768),
    ],
)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_on_another_model_and_subject(preset, model, path, resolution, tmp_path):
    cfg = _compose(
        f"experiment={preset}", f"model={model}", f"data.instance_dir={tmp_path}", "data.token=sks"
    )
    job = build_job(cfg)
    assert job.model.path == path
    assert job.settings.resolution == resolution and job.instance_dir == tmp_path
    assert not any("ktn" in c.prompt for c in job.cells)


def _cells(job):
    return {(c.prompt_name, c.unet_scale, c.text_scale, c.guidance) for c in job.cells}


def test_study1_matches_the_reference_study():
    job = build_job(_compose("experiment=study1"))
    s = job.settings
    assert (s.learning_rate, s.text_encoder_lr, s.lr_scheduler, s.max_train_steps) == (
        3e-4,
        1e-5,
        "constant",
        1000,
    )
    assert (s.rank, s.train_batch_size, s.seed) == (16, 1, 123)
    assert {c.prompt for c in job.cells} == {
        "smile face",
        "falling from the cliff",
        "sitting in the pub",
        "A ktn is smiling",
        "A ktn is falling from the cliff",
        "A ktn is sitting in the pub",
    }
    smiling = {(1, 0.9, 0.5), (3.6, 0.9, 0.6), (4, 0.9, 0.5), (3, 0.9, 0.2), (2, 0.7, 0.3), (3.4, 0.9, 0.6)}
    cliff = {(3.2, 1, 1), (3, 0.9, 0.6), (3.6, 1, 1)}
    pub = {(3, 1, 1), (5, 1, 1), (9, 1, 1)}
    expected = {
        (p, u, t, g)
        for ps, cells in ((("sf", "ksm"), smiling), (("fc", "kfc"), cliff), (("sp", "ksp"), pub))
        for p in ps
        for g, u, t in cells
    }
    assert _cells(job) == expected
    assert {c.seed for c in job.cells} == {123}


def test_study2_is_study1_with_a_linear_schedule_and_three_more_cliff_cells():
    one, two = build_job(_compose("experiment=study1")), build_job(_compose("experiment=study2"))
    assert (two.settings.learning_rate, two.settings.text_encoder_lr, two.settings.lr_scheduler) == (
        1e-4,
        1e-5,
        "linear",
    )
    extra = {(p, u, t, g) for p in ("fc", "kfc") for g, u, t in ((2.6, 1, 1), (3.8, 1, 1), (3, 0.8, 0.2))}
    assert _cells(two) == _cells(one) | extra


@pytest.mark.parametrize(
    ("preset", "lrs", "steps"), [("study3", (4e-4, 5e-5), 1000), ("study4", (1e-4, 1e-5), 5000)]
)
def test_studies_3_and_4_render_the_full_scale_grid(preset, lrs, steps):
    job = build_job(_compose(f"experiment={preset}"))
    assert (job.settings.learning_rate, job.settings.text_encoder_lr) == lrs
    assert job.settings.max_train_steps == steps and job.settings.lr_scheduler == "constant"
    scales = {0, 0.2, 0.4, 0.6, 0.8, 1}
    assert {c.unet_scale for c in job.cells} == scales == {c.text_scale for c in job.cells}
    assert {c.guidance for c in job.cells} == {2, 3, 4.5}
    assert len(job.cells) == 6 * 6 * 3 * 6


def test_quickstart_sweeps_two_by_two_learning_rates():
    cfg = _compose("experiment=quickstart", hydra=True)
    params = cfg.hydra.sweeper.params
    assert (
        len(params["train.learning_rate"].split(",")) == 2
        and len(params["train.text_encoder_lr"].split(",")) == 2
    )
    assert cfg.model.path == "world" and cfg.eval.dino_model == "world" and cfg.data.instance_dir is None


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_preset_composes(launcher):
    cfg = _compose(f"launcher={launcher}", hydra=True)
    module, name = cfg.hydra.launcher._target_.rsplit(".", 1)
    launcher_class = getattr(importlib.import_module(module), name)
    if launcher == "submitit_slurm":  # submitit's own SLURM launcher, subclassed for one-line failures
        # (by name: Hydra's plugin scan may load the plugin modules a second time)
        bases = {f"{c.__module__}.{c.__qualname__}" for c in launcher_class.__mro__}
        assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in bases
    else:
        assert launcher.split("_")[0] in module.lower()


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigCompositionException, match="lerning_rate"):
        _compose("train.lerning_rate=1e-4")


def test_wrong_type_is_an_error():
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)):
        _compose("train.max_train_steps=many")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.lr_scheduler=cosin", "train.lr_scheduler"),
        ("render.guidance_scales=[100]", "render.guidance_scales"),
        ("render.unet_scales=[]", "render.unet_scales"),
        ("render.prompts=[]", "render.prompts"),
        ("render.scheduler=fast", "render.scheduler"),
        ("data.kind=animal", "data.kind"),
        ("model.resolution=100", "model.resolution"),
        ("sweep.name=../up", "sweep.name"),
        ("render.num_inference_steps=0", "render.num_inference_steps"),
    ],
)
def test_bad_values_are_refused_before_any_model_loads(override, key):
    with pytest.raises(UserInputError) as err:
        build_job(_compose(override))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_prompts_fill_the_token_and_class():
    job = build_job(
        _compose(
            "data.token=sks", "data.class_name=dog", "render.prompts=[{a: 'a {token} {class} on a beach'}]"
        )
    )
    assert [c.prompt for c in job.cells] == ["a sks dog on a beach"]
    assert job.settings.instance_prompt == "a photo of sks dog"


@pytest.mark.parametrize(
    ("kind", "special"),
    [
        ("object", "a {token} {class} floating in an ocean of milk"),
        ("live", "a {token} {class} in a chef outfit"),
    ],
)
def test_dreambooth_eval_renders_the_papers_25_prompts_4_times(kind, special):
    job = build_job(
        _compose("experiment=dreambooth_eval", f"data.kind={kind}", "data.token=sks", "data.class_name=dog")
    )
    prompts = {c.prompt for c in job.cells}
    assert len(prompts) == 25 and special.replace("{token}", "sks").replace("{class}", "dog") in prompts
    assert len(job.cells) == 100 and {c.count for c in job.cells} == {4}
    assert {(c.unet_scale, c.text_scale) for c in job.cells} == {(1.0, 1.0)}


def test_the_dreambooth_dataset_presets_point_at_the_shared_copy(monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_DATA", "/data/dreambooth")
    cfg = _compose("data=dreambooth_dog")
    assert (
        cfg.data.instance_dir == "/data/dreambooth/dog"
        and cfg.data.kind == "live"
        and cfg.data.class_name == "dog"
    )


def test_every_train_key_reaches_the_training_settings():
    """Values set on the command line arrive in TrainSettings unchanged; the data/lora groups fill the rest."""
    cfg = _compose(
        "train.learning_rate=7e-4",
        "train.text_encoder_lr=3e-5",
        "train.rank=8",
        "train.seed=11",
        "train.max_train_steps=17",
        "train.lr_scheduler=cosine",
        "train.class_guidance=5.5",
        "train.checkpoint_steps=[5,10]",
        "data.center_crop=false",
        "lora=attn_ff",
    )
    settings = build_job(cfg).settings
    assert (settings.learning_rate, settings.text_encoder_lr, settings.rank, settings.seed) == (
        7e-4,
        3e-5,
        8,
        11,
    )
    assert (settings.max_train_steps, settings.lr_scheduler, settings.class_guidance) == (17, "cosine", 5.5)
    assert settings.checkpoint_steps == (5, 10)
    assert settings.resolution == cfg.model.resolution  # train.resolution null: the model's side
    assert settings.center_crop is False and "ff.net.2" in settings.unet_target_modules
    assert settings.instance_prompt == "a photo of ktn cat"


def test_study2_extends_study1_and_study4_extends_study3():
    study1, study2 = _compose("experiment=study1"), _compose("experiment=study2")
    assert study2.render.cells.sf == study1.render.cells.sf and study2.render.prompts == study1.render.prompts
    assert (
        list(study2.render.cells.fc)[:3] == list(study1.render.cells.fc) and len(study2.render.cells.fc) == 6
    )
    assert (study2.train.learning_rate, study2.train.lr_scheduler, study2.sweep.name) == (
        1e-4,
        "linear",
        "study2",
    )
    study3, study4 = _compose("experiment=study3"), _compose("experiment=study4")
    assert (
        study4.render == study3.render
        and study4.train.max_train_steps == 5000
        and study4.sweep.name == "study4"
    )


def test_any_experiment_can_be_searched_with_optuna():
    cfg = _compose("experiment=study3", "hparams_search=optuna", hydra=True)
    assert "optuna" in cfg.hydra.sweeper._target_.lower() and cfg.hydra.sweeper.direction == "maximize"
    assert "train.learning_rate" in cfg.hydra.sweeper.params
    assert cfg.sweep.name == "study3" and list(cfg.render.unet_scales) == [0, 0.2, 0.4, 0.6, 0.8, 1]


@pytest.mark.parametrize(
    ("overrides", "sweeper", "launcher"),
    [
        ((), "basic", "basic"),
        (("launcher=joblib",), "basic", "joblib"),
        (("launcher=submitit_slurm",), "basic", "slurm"),
        (("launcher=submitit_local",), "basic", "other"),
        (("hparams_search=halving",), "halving", "basic"),
        (("hparams_search=optuna",), "optuna", "basic"),
    ],
)
def test_the_presets_sweeper_and_launcher_are_known_by_their_plugin(overrides, sweeper, launcher):
    from sweeper.plugins import launcher_kind, sweeper_kind

    cfg = _compose(*overrides, hydra=True)
    assert (sweeper_kind(cfg.hydra), launcher_kind(cfg.hydra)) == (sweeper, launcher)
    assert (sweeper_kind(None), launcher_kind(None)) == ("basic", "basic")  # a plain call: in this process
