"""SDXL and SD 2.x: training (two text encoders, size and crop conditioning, v-prediction), rendering, exports."""

import numpy as np
import pytest
import torch
from conftest import SIZE, kohya_name, kohya_rebuild, render_alone_and_together
from PIL import Image
from safetensors.torch import load_file

from lora_core.adapters import KOHYA_FILE, LORA_FILE
from lora_core.training import LoraTrainer, train_lora
from lora_core.training.objective import denoising_target


@pytest.fixture(scope="module")
def xl(cache_dir):
    """The tiny SDXL pipeline (two text encoders, text_time conditioning), loaded as a job loads it."""
    from lora_core.models import ModelSource, load_pipeline
    from sweeper.config.embedded_models import base_model

    return load_pipeline(base_model(ModelSource(path="tiny-sdxl", device="cpu"), cache_dir=cache_dir))


@pytest.fixture(scope="module")
def sd2(cache_dir):
    """The tiny SD 2.x pipeline (its scheduler predicts the velocity)."""
    from lora_core.models import ModelSource, load_pipeline
    from sweeper.config.embedded_models import base_model

    return load_pipeline(base_model(ModelSource(path="tiny-sd2", device="cpu"), cache_dir=cache_dir))


@pytest.fixture(scope="module")
def wide_subject(tmp_path_factory):
    """Two pictures: one 160 x 128 (cropped at the sides), one 128 x 128."""
    folder = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (160, 128)), ("b.png", (128, 128))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    from lora_core.data.subject import load_subject_images

    return load_subject_images(folder, SIZE)


def _draw(pipe, seed: int = 7):
    """One ``SIZE`` px picture in [0, 1], 3 steps, the pipeline's own call."""
    out = pipe(
        "a photo of ktn cat",
        negative_prompt="",
        num_inference_steps=3,
        height=SIZE,
        width=SIZE,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.images[0]


def _trained_modules(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _kohya_rebuilds(pipe, exported: dict) -> set[str]:
    """Check that every kohya module rebuilds its live adapted weight; returns the modules checked."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lora_core.training.recipe import ADAPTER_NAME

    checked, untrained = set(), set()
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    for component, prefix in prefixes.items():
        for module_name, module in getattr(pipe, component).named_modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            base = module.get_base_layer().weight.detach().clone()
            module.merge(adapter_names=[ADAPTER_NAME])  # peft's own adapted weight
            adapted = module.get_base_layer().weight.detach().clone()
            module.unmerge()
            name = kohya_name(prefix, module_name)
            rebuilt = kohya_rebuild(exported, name, base).float()
            torch.testing.assert_close(rebuilt, adapted, atol=2e-6, rtol=1e-5, msg=name)
            if torch.equal(adapted, base):
                untrained.add(name)
            checked.add(name)
    # SDXL takes the first text encoder's penultimate hidden state: its last layer gets no gradient (as in
    # diffusers' script); every other module trained, so the check could fail
    last = pipe.text_encoder.config.num_hidden_layers - 1
    assert untrained == {n for n in checked if n.startswith(f"lora_te1_text_model_encoder_layers_{last}_")}
    return checked


@pytest.fixture(scope="module")
def xl_lora(xl, wide_subject, tmp_path_factory):
    """One SDXL LoRA trained on both text encoders at their own rates, alpha 8 on rank 4, checked live.

    Returns what the tests look at: its folder, the live adapter's picture, the learning rates of the
    optimizer's groups, the time ids the UNet got, which models' adapters moved and the kohya modules rebuilt.
    """
    from lora_core.settings import TrainSettings

    folder = tmp_path_factory.mktemp("xl_lora")
    s = TrainSettings(
        instance_prompt="a photo of ktn cat",
        resolution=SIZE,
        learning_rate=1e-3,
        text_encoder_lr=1e-3,
        text_encoder_2_lr=2e-3,
        rank=4,
        alpha=8.0,  # alpha != rank: the scale 2 must survive the files
        max_train_steps=6,
        train_batch_size=2,
        seed=3,
        progress_bar=False,
    )
    seen = []

    def spy(module, args, kwargs):
        seen.extend(tuple(int(v) for v in row) for row in kwargs["added_cond_kwargs"]["time_ids"].tolist())

    trainer = LoraTrainer(xl, wide_subject, s, folder)
    hook = xl.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        trainer.setup()
        rates = [g["lr"] for g in trainer.optimizer.param_groups]
        models = (xl.unet, xl.text_encoder, xl.text_encoder_2)
        before = [_trained_modules(m) for m in models]
        trainer.train()
        hook.remove()  # the training's forwards only
        moved = [
            any(not torch.equal(a[k], b[k]) for k in a)
            for a, b in zip(before, map(_trained_modules, models), strict=True)
        ]
        for model in trainer.models:
            model.eval()
        live = _draw(xl)
        trainer.save_final()
        rebuilt = _kohya_rebuilds(xl, load_file(str(folder / KOHYA_FILE)))
    finally:
        hook.remove()
        trainer.cleanup()
    return {"folder": folder, "live": live, "rates": rates, "seen": seen, "moved": moved, "rebuilt": rebuilt}


def test_sdxl_trains_both_text_encoders_at_their_own_rates_with_each_pictures_size_and_crop(xl, xl_lora):
    """Each text encoder gets its LoRA and learning rate (``train.text_encoder_2_lr``); the UNet is told each
    picture's original size and crop as diffusers' SDXL script computes them."""
    assert xl_lora["rates"] == [1e-3, 1e-3, 2e-3]  # UNet, text encoder, second text encoder
    assert xl_lora["moved"] == [True, True, True]  # every model's adapter trained
    # 160 x 128 resized to a height of SIZE (40 x 32 at 32 px), its centre cropped at 4 px from the left
    left = round((160 * SIZE / 128 - SIZE) / 2)
    assert left > 0 and set(xl_lora["seen"]) == {
        (128, 160, 0, left, SIZE, SIZE),
        (128, 128, 0, 0, SIZE, SIZE),
    }
    keys = load_file(str(xl_lora["folder"] / LORA_FILE)).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    assert not any("lora_" in n for n, _ in xl.text_encoder_2.named_parameters())  # cleanup took it out


def test_the_sdxl_files_load_back_to_the_same_pictures_and_kohya_rebuilds_every_weight(xl, xl_lora):
    """``StableDiffusionXLPipeline.load_lora_weights`` reads the diffusers file and the kohya file back to the
    pictures of the live adapter; every kohya module (``lora_unet_``, ``lora_te1_``, ``lora_te2_``, true alpha)
    rebuilt its live adapted weight."""
    folder, live = xl_lora["folder"], xl_lora["live"]
    exported = load_file(str(folder / KOHYA_FILE))
    assert {k.split(".")[0] for k in exported} == xl_lora["rebuilt"]  # nothing exported that no module holds
    assert {name.split("_")[1] for name in xl_lora["rebuilt"]} == {"unet", "te1", "te2"}
    for file in (LORA_FILE, KOHYA_FILE):
        xl.load_lora_weights(str(folder), weight_name=file, adapter_name="r")
        try:
            reloaded = _draw(xl)
        finally:
            xl.unload_lora_weights()
        np.testing.assert_allclose(reloaded, live, atol=1e-5, err_msg=file)
    assert np.abs(_draw(xl) - live).max() > 0.01  # the base model draws otherwise: the check could fail


def test_the_grid_renderer_draws_sdxl_cells_as_the_plain_per_cell_loop(xl, xl_lora):
    """Batched, fused and with shared prompt embeddings, each cell is the picture of its own pipeline call."""
    from lora_core.render import GridRenderer, RenderCell, RenderOptions, initial_noise

    tmp_path = xl_lora["folder"]
    cells = [RenderCell("a photo of ktn cat", u, t, 4.0, seed=5) for u in (0.0, 1.0) for t in (0.0, 1.0)]
    cells += [RenderCell("a photo of ktn cat", 1.0, 1.0, 4.0, seed=5, text_2_scale=0.0)]  # the encoders apart
    options = RenderOptions(num_inference_steps=3, resolution=SIZE)
    with GridRenderer(xl, tmp_path, options) as renderer:
        grid = {c: np.asarray(image, dtype=np.float32) for c, image in renderer.render(cells)}
    xl.load_lora_weights(str(tmp_path), adapter_name="p")
    try:
        for cell in cells:
            text, text_2 = cell.text_scales
            weights = {"unet": cell.unet_scale, "text_encoder": text, "text_encoder_2": text_2}
            xl.set_adapters(["p"], adapter_weights=[weights])
            shape = (xl.unet.config.in_channels, SIZE // xl.vae_scale_factor, SIZE // xl.vae_scale_factor)
            plain = xl(
                cell.prompt,
                negative_prompt="",
                latents=initial_noise(cell, shape)[None],
                guidance_scale=cell.guidance,
                num_inference_steps=3,
                height=SIZE,
                width=SIZE,
                generator=torch.Generator().manual_seed(cell.seed),
            ).images[0]
            assert np.abs(np.asarray(plain, dtype=np.float32) - grid[cell]).max() <= 1, cell  # of 255
    finally:
        xl.unload_lora_weights()
    scales = {(c.unet_scale, *c.text_scales): grid[c] for c in cells}
    assert np.abs(scales[1.0, 1.0, 1.0] - scales[0.0, 0.0, 0.0]).max() > 5  # the LoRA changes the picture
    assert np.abs(scales[1.0, 1.0, 1.0] - scales[1.0, 1.0, 0.0]).max() > 1  # and so does the second encoder's


@pytest.mark.slow  # three SDXL configurations trained in a pack and alone, their grids rendered both ways
def test_sdxl_configurations_pack_and_render_together_as_each_alone(xl, wide_subject, tmp_path):
    """An SDXL pack: each configuration trains the text encoders it trains alone (the one it leaves frozen
    runs its base layers for it), with each picture's own time ids and pooled embedding; its grid renders
    with the others' in shared batches, both text encoders' scales its own."""
    from itertools import product

    from test_packs import assert_trained_alike

    from lora_core.packs import train_pack
    from lora_core.render import RenderCell, RenderOptions
    from lora_core.settings import TrainSettings

    common = dict(
        instance_prompt="a photo of ktn cat", resolution=SIZE, max_train_steps=5, progress_bar=False, seed=3
    )
    configs = [
        dict(learning_rate=1e-3, text_encoder_lr=1e-3, text_encoder_2_lr=0.0),  # the first text encoder only
        dict(learning_rate=3e-3, text_encoder_lr=0.0, text_encoder_2_lr=2e-3, rank=8, seed=5, dropout=0.1),
        dict(learning_rate=3e-3, text_encoder_lr=0.0, validation_every=2, train_batch_size=1),
    ]
    settings = [TrainSettings(**common | c) for c in configs]
    packed = train_pack(xl, wide_subject, settings, [tmp_path / f"pack-{i}" for i in range(3)])
    alone = [train_lora(xl, wide_subject, s, tmp_path / f"alone-{i}") for i, s in enumerate(settings)]
    for config, p, a in zip(configs, packed, alone, strict=True):
        rates = [config["learning_rate"], config["text_encoder_lr"], config.get("text_encoder_2_lr", 0.0)]
        assert_trained_alike(p.lora_path, a.lora_path, max(rates))
        np.testing.assert_allclose(p.loss_history, a.loss_history, rtol=1e-4)
        np.testing.assert_allclose(list(p.val_losses.values()), list(a.val_losses.values()), rtol=1e-4)
    parts = [{k.split(".")[0] for k in load_file(str(p.lora_path))} for p in packed]
    assert parts == [{"unet", "text_encoder"}, {"unet", "text_encoder_2"}, {"unet"}]
    # a pack's checkpoint names each configuration's tensors as its lone run does: the second one's are
    # the UNet's and (index 1) the second text encoder's, and a lone run continues from them
    stopped = train_pack(xl, wide_subject, settings[:2], [tmp_path / f"stop-{i}" for i in range(2)], until=3)
    assert stopped == [None, None]
    continued = train_lora(
        xl,
        wide_subject,
        settings[1],
        tmp_path / "stop-1",
        resume_from=tmp_path / "stop-1/checkpoints/step-000003",
    )
    assert_trained_alike(continued.lora_path, alone[1].lora_path, 3e-3)
    assert packed[2].val_losses  # the validation loss, with the time ids of its held-out pictures

    options = RenderOptions(num_inference_steps=3, resolution=SIZE)
    cells = [
        RenderCell("a photo of ktn cat", u, t, 4, seed=11, text_2_scale=t2)
        for u, t, t2 in product([0, 1], [0, 1], [None, 0.5])
    ]
    drawn_alone, together = render_alone_and_together(xl, [p.output_dir for p in packed], cells, options)
    assert together.keys() == drawn_alone.keys()
    assert max(np.abs(together[key] - drawn_alone[key]).max() for key in together) <= 1  # of 255
    # the second text encoder's scale is its own: it draws otherwise for the configuration that trained it
    t2 = [RenderCell("a photo of ktn cat", 1, 1, 4, seed=11, text_2_scale=v) for v in (None, 0.5)]
    assert np.abs(together[(1, t2[0])] - together[(1, t2[1])]).max() > 0


def test_the_v_prediction_target_is_the_velocity():
    """Under ``prediction_type=v_prediction`` the UNet learns v = sqrt(abar) noise - sqrt(1 - abar) x0."""
    from diffusers import DDPMScheduler

    common = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    v_scheduler = DDPMScheduler(prediction_type="v_prediction", **common)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 400, 999])
    abar = v_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(denoising_target(v_scheduler, latents, noise, t), expected)
    assert torch.equal(denoising_target(DDPMScheduler(**common), latents, noise, t), noise)


def test_sd2_trains_on_the_velocity_its_scheduler_names_and_samples_with_it(
    sd2, subject_images, settings, tmp_path
):
    from lora_core.render import sampler_of
    from lora_core.training import recipe

    targets = []
    real = recipe.denoising_target

    def spy(scheduler, latents, noise, timesteps):
        out = real(scheduler, latents, noise, timesteps)
        abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].view(-1, 1, 1, 1)
        targets.append((out, abar.sqrt() * noise - (1 - abar).sqrt() * latents, noise))
        return out

    recipe.denoising_target = spy
    try:
        train_lora(sd2, subject_images, settings(max_train_steps=2), tmp_path)
    finally:
        recipe.denoising_target = real
    assert len(targets) == 2
    for out, velocity, noise in targets:
        torch.testing.assert_close(out, velocity)
        assert not torch.allclose(out, noise)
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    for name in ("euler_a", "ddim", "dpmpp_2m"):  # a grid's other samplers keep the model's prediction type
        assert sampler_of(sd2.scheduler, name).config.prediction_type == "v_prediction"


def test_an_sdxl_training_killed_at_a_checkpoint_resumes_to_the_uninterrupted_weights(
    xl, wide_subject, settings, tmp_path
):
    from conftest import assert_same_weights, train_killed_then_resumed

    common = dict(max_train_steps=4, text_encoder_lr=1e-3, text_encoder_2_lr=5e-4, validation_every=2)
    full = train_lora(xl, wide_subject, settings(**common), tmp_path / "full")
    part = settings(**common, checkpoint_steps=(2,))
    resumed = train_killed_then_resumed(xl, wide_subject, part, tmp_path / "resumed")
    assert resumed.resumed_from_step == 2
    assert_same_weights(full.lora_path, resumed.lora_path)
    assert {k.split(".")[0] for k in load_file(str(resumed.lora_path))} == {
        "unet",
        "text_encoder",
        "text_encoder_2",
    }


@pytest.mark.parametrize(
    ("model", "saved", "words"), [("tiny_sdxl", "sd", "an SD 1.x / 2.x"), ("tiny", "sdxl", "an SDXL")]
)
def test_a_lora_folder_of_the_other_family_is_refused_before_anything_trains(
    model, saved, words, tmp_path, cache_dir
):
    """An SD 1.x LoRA's run folder rerun under an SDXL model (or the reverse) stops with one line."""
    import json

    from hydra import compose, initialize_config_dir

    from lora_core.errors import UserInputError
    from sweeper.app import CONF_DIR  # registers the schema
    from sweeper.config.spec import build_job
    from sweeper.disk.layout import RunFolder
    from sweeper.job.context import JobContext
    from sweeper.job.training import JobTraining

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"sweep.root={tmp_path}"])
    folder = RunFolder(tmp_path / "run")
    folder.lora_dir.mkdir(parents=True)
    identity = {"base_model": "the other", **({"family": saved} if saved != "sd" else {})}
    (folder.lora_dir / "train_identity.json").write_text(json.dumps(identity))
    training = JobTraining(JobContext(build_job(cfg), cfg, folder))
    with pytest.raises(UserInputError, match=f"holds {words} training") as refused:
        training.check_folder_matches()
    assert "\n" not in str(refused.value) and "Nothing was changed" in str(refused.value)


def test_the_second_text_encoders_scales_are_an_axis_of_sdxl_grids_only():
    """``render.text_2_scales`` crosses the grid (``;t2=<scale>`` in the names when several) and is refused
    in one line for a model with one text encoder."""
    from hydra import compose, initialize_config_dir

    from lora_core.errors import UserInputError
    from sweeper.app import CONF_DIR
    from sweeper.config.spec import build_job

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        xl_cfg = compose("config", overrides=["model=tiny_sdxl", "render.text_2_scales=[0,1]"])
        sd_cfg = compose("config", overrides=["model=tiny", "render.text_2_scales=[0,1]"])
    cells = build_job(xl_cfg).cells
    assert {c.text_2_scale for c in cells} == {0.0, 1.0}
    assert {c.stem.rsplit(";", 1)[-1] for c in cells} == {"t2=0", "t2=1"}
    assert cells[0].label_keys == "unet;text;guidance;text_2"
    with pytest.raises(
        UserInputError, match=r"render\.text_2_scales=\[0\.0, 1\.0\]: model\.path=tiny has one text encoder"
    ) as refused:
        build_job(sd_cfg)
    assert "\n" not in str(refused.value)


@pytest.mark.slow  # a halving search of two configurations on the tiny SDXL model, end to end
def test_a_halving_search_runs_on_the_tiny_sdxl_model_end_to_end(tmp_path, cache_dir):
    """``experiment=quickstart model=tiny_sdxl debug=fast`` searched by halving: every configuration scored
    at the first rung (from its checkpoint), the better one finished with the usual run folder, sheets,
    report and MLflow run."""
    import json

    from sweep_cli import FAST, mlflow_runs, run_records, sweep

    halving = [
        "hparams_search=halving",
        "hydra.sweeper.eta=2",
        "hydra.sweeper.rungs=2",
        "train.max_train_steps=8",
    ]
    grid = ["render.unet_scales=[1]", "render.text_scales=[0,1]"]
    result = sweep(
        tmp_path,
        "experiment=quickstart",
        "model=tiny_sdxl",
        *FAST,
        *halving,
        "train.learning_rate=1e-3",
        *grid,
    )
    assert result.returncode == 0, result.output
    assert "pack 0: 2 configurations trained together" in result.output
    sweep_dir = tmp_path / "quickstart"
    bracket = json.loads((sweep_dir / "bracket.json").read_text())
    first = bracket["scores"][0]
    assert set(first) == {"1e-3;1e-5", "1e-3;1e-4"} and bracket["promoted"][0] == [max(first, key=first.get)]
    (best,) = bracket["promoted"][0]
    for name in first:
        assert list((sweep_dir / name / "step-000004").glob("*.png")), "the rung's preview grid"
        assert (sweep_dir / name / "lora" / LORA_FILE).is_file() == (name == best)
    record, run = run_records(sweep_dir)[best], sweep_dir / best
    assert record["status"] == "done" and record["base_model"].startswith("tiny-sdxl-")
    assert len(list(run.glob("*.png"))) == len(record["cells"]) == 4  # 2 prompts x 2 text scales
    assert {p.name for p in (run / "sheets").glob("*.png")} >= {"ph_g4.png", "be_g4.png"}
    keys = load_file(str(run / "lora" / LORA_FILE)).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    assert f"| `{best}` |" in (sweep_dir / "report.md").read_text()
    jobs = {
        r.info.run_name: r
        for r in mlflow_runs(tmp_path, "quickstart")
        if r.data.tags.get("sweep_role") == "job"
    }
    assert (
        set(jobs) == set(first) and jobs[best].info.status == "FINISHED" and "dino" in jobs[best].data.metrics
    )
