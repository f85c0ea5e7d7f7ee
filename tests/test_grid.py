import re

import pytest
from omegaconf import OmegaConf

from lora_core.errors import UserInputError
from sweeper.config.schema import RenderConfig
from sweeper.planning.grid import grid_cells, resolve_prompts


def _render(**overrides):
    cfg = OmegaConf.structured(RenderConfig)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_full_grid_is_the_product_of_every_axis():
    cells = grid_cells(
        _render(
            prompts={"sf": "smile face", "fc": "falling"},
            unet_scales=[0.5, 1],
            text_scales=[0, 1],
            guidance_scales=[3, 5],
        ),
        "ktn",
        "cat",
    )
    assert len(cells) == 2 * 2 * 2 * 2
    assert cells[0].file_name == "sf_0.5;0;3.png"
    assert {c.seed for c in cells} == {0}


def test_placeholders_are_filled_from_the_data_config():
    prompts = resolve_prompts({"ks": "A {token} {class} is smiling"}, "ktn", "dog")
    assert prompts == {"ks": "A ktn dog is smiling"}


def test_plain_prompt_lists_get_derived_short_names():
    prompts = resolve_prompts(["smile face", "A {token} is smiling", "smile face again"], "ktn", "cat")
    assert list(prompts) == ["sf", "ks", "sfa"]


def test_named_and_plain_prompts_mix_in_one_list():
    prompts = resolve_prompts([{"sf": "smile face"}, "falling from the cliff"], "ktn", "cat")
    assert prompts == {"sf": "smile face", "fc": "falling from the cliff"}


def test_explicit_cells_replace_the_product():
    cells = grid_cells(
        _render(
            prompts={"sf": "smile face"},
            cells={
                "sf": [{"unet": 0.9, "text": 0.5, "guidance": 1}, {"unet": 0.7, "text": 0.3, "guidance": 2}]
            },
        ),
        "ktn",
        "cat",
    )
    assert [c.file_name for c in cells] == ["sf_0.9;0.5;1.png", "sf_0.7;0.3;2.png"]


def test_several_seeds_and_images_per_cell_get_suffixes():
    cells = grid_cells(_render(prompts={"sf": "smile"}, seeds=[1, 2], images_per_cell=2), "ktn", "cat")
    assert [c.stem for c in cells] == ["sf_1;1;7.5_1-0", "sf_1;1;7.5_1-1", "sf_1;1;7.5_2-0", "sf_1;1;7.5_2-1"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"prompts": {}}, "render.prompts"),
        ({"prompts": {"sf": " "}}, "render.prompts.sf"),
        ({"prompts": {"../x": "p"}}, "render.prompts"),
        ({"prompts": [{"a": "x"}, {"a": "y"}]}, "render.prompts.a"),
        ({"unet_scales": [9]}, "render.unet_scales"),
        ({"guidance_scales": []}, "render.guidance_scales"),
        ({"seeds": []}, "render.seeds"),
        ({"cells": {"zz": [{"unet": 1, "text": 1, "guidance": 3}]}}, "render.cells.zz"),
        ({"cells": {"ph": [{"unet": 1, "guidance": 3}]}}, r"render.cells.ph\[0\]"),
        ({"image_name": "{pr}_{unet}"}, "two cells"),
        ({"image_name": "../{pr}"}, "render.image_name"),
    ],
)
def test_bad_grids_are_refused_with_the_key(overrides, key):
    base = {"text_scales": [0.5, 1]}
    with pytest.raises(UserInputError, match=key):
        grid_cells(_render(**{**base, **overrides}), "ktn", "cat")


def test_prompt_text_never_reaches_a_file_name():
    cells = grid_cells(_render(prompts=["../../etc/passwd", "a/b\\c"]), "ktn", "cat")
    assert all("/" not in c.file_name and "\\" not in c.file_name and ".." not in c.file_name for c in cells)


def test_sampler_and_step_axes_cross_the_grid_and_name_only_what_varies():
    """The X/Y/Z plot's sampler and steps axes: crossed with the others in one grid; a picture's name gets
    ``;<sampler>`` / ``;<steps>`` only for an axis with several values, the same value always the same name."""
    both = grid_cells(
        _render(prompts={"sf": "smile"}, samplers=["ddim", "euler_a"], sampling_steps=[10, 30]), "ktn", "cat"
    )
    assert [c.stem for c in both] == [
        "sf_1;1;7.5;ddim;10",
        "sf_1;1;7.5;ddim;30",
        "sf_1;1;7.5;euler_a;10",
        "sf_1;1;7.5;euler_a;30",
    ]
    assert [(c.sampler, c.steps) for c in both] == [
        ("ddim", 10),
        ("ddim", 30),
        ("euler_a", 10),
        ("euler_a", 30),
    ]
    assert both[3].label == "1;1;7.5;euler_a;30" and both[3].label_keys == "unet;text;guidance;sampler;steps"
    assert both[3].render_cell().sampler == "euler_a" and both[3].render_cell().steps == 30
    one_sampler = grid_cells(
        _render(prompts={"sf": "smile"}, samplers=["ddim"], sampling_steps=[10, 30]), "k", "c"
    )
    assert [c.stem for c in one_sampler] == ["sf_1;1;7.5;10", "sf_1;1;7.5;30"]  # one sampler: not in the name
    plain = grid_cells(_render(prompts={"sf": "smile"}, scheduler="euler"), "ktn", "cat")
    assert [(c.stem, c.sampler, c.steps, c.label) for c in plain] == [("sf_1;1;7.5", "euler", 25, "1;1;7.5")]


def test_prompt_search_and_replace_adds_a_prompt_per_value():
    """Prompt S/R: each prompt that holds the first value once more per other value; the rest stay once."""
    cells = grid_cells(
        _render(
            prompts=[{"ph": "a photo of {token}"}, {"be": "a {token} {class} on the beach"}],
            prompt_sr=["beach", "snow", "old pub"],
        ),
        "ktn",
        "cat",
    )
    assert [(c.prompt_name, c.prompt) for c in cells] == [
        ("ph", "a photo of ktn"),
        ("be", "a ktn cat on the beach"),
        ("be-snow", "a ktn cat on the snow"),
        ("be-old+pub", "a ktn cat on the old pub"),
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"samplers": ["ddim", "eulr"]}, "render.samplers: unknown sampler 'eulr'"),
        ({"samplers": ["ddim", "ddim"]}, r"render.samplers=\['ddim', 'ddim'\]: a value is listed twice"),
        ({"samplers": ["ddim"], "scheduler": "euler"}, "render.scheduler=euler and render.samplers"),
        ({"sampling_steps": [10, 0]}, "render.sampling_steps: 0 is outside 1-1000"),
        ({"prompt_sr": ["forest", "snow"]}, "render.prompt_sr: its first value 'forest' is in no prompt"),
        ({"prompt_sr": ["beach"]}, r"render.prompt_sr=\['beach'\]: give the word"),
        ({"prompt_sr": ["beach", "snow!", "snow?"]}, "render.prompt_sr: the variant 'be-snow'"),
        ({"prompt_sr": ["beach", "x"], "prompts": {"be": "on the beach", "be-x": "y"}}, "variant 'be-x'"),
    ],
)
def test_bad_axes_are_refused_in_one_line_naming_the_key(overrides, message):
    base = {"prompts": {"be": "a {token} on the beach"}}
    with pytest.raises(UserInputError, match=message) as refused:
        grid_cells(_render(**{**base, **overrides}), "ktn", "cat")
    assert "\n" not in str(refused.value)


def test_a_grid_with_two_samplers_and_two_step_counts_renders_each_as_its_own_one_sampler_grid(pipe):
    """Cells that differ in sampler or steps share one renderer (prompt embeddings, the loaded adapter) and
    draw the pictures each one-sampler grid draws (the ``render.scheduler`` / ``num_inference_steps`` path)."""
    import numpy as np
    from conftest import SIZE, render

    from lora_core.render import GridRenderer, RenderCell, RenderOptions

    before = render(pipe)
    axes = [("ddim", 2), ("ddim", 3), ("euler_a", 2), ("euler_a", 3)]
    cells = [
        RenderCell("a photo of ktn cat", 1.0, 1.0, g, seed=5, sampler=s, steps=n)
        for s, n in axes
        for g in (1, 4)
    ]
    with GridRenderer(pipe, None, RenderOptions(num_inference_steps=7, resolution=SIZE)) as renderer:
        together = {c: np.asarray(image, dtype=np.float32) for c, image in renderer.render(cells)}
    assert together.keys() == set(cells)
    for sampler, steps in axes:
        options = RenderOptions(num_inference_steps=steps, resolution=SIZE, scheduler=sampler)
        plain = [RenderCell(c.prompt, c.unet_scale, c.text_scale, c.guidance, c.seed) for c in cells[:2]]
        with GridRenderer(pipe, None, options) as renderer:
            for cell, image in renderer.render(plain):
                twin = next(
                    c for c in cells if (c.sampler, c.steps, c.guidance) == (sampler, steps, cell.guidance)
                )
                assert np.abs(np.asarray(image, dtype=np.float32) - together[twin]).max() <= 1  # of 255
    first = {(c.sampler, c.steps): together[c] for c in cells if c.guidance == 4}
    assert np.abs(first[("ddim", 3)] - first[("euler_a", 3)]).max() > 10  # the sampler draws differently
    assert np.abs(first[("ddim", 2)] - first[("ddim", 3)]).max() > 10  # and so do the steps
    np.testing.assert_array_equal(render(pipe), before)  # the pipeline's own sampler is back


def test_a_rerun_that_draws_otherwise_goes_to_a_second_grid_named_by_what_differs(tmp_path):
    """A run folder's pictures were drawn one way (``render.json``): a rerun that would draw them otherwise
    (a sampler, a sampler axis, steps, a negative prompt) gets its own ``grid-<what differs>/`` beside them;
    the batch size draws the same pictures and stays in the first grid; another base model is refused."""
    from types import SimpleNamespace

    from PIL import Image

    from lora_core.models import ModelSource
    from lora_core.render import RenderOptions
    from sweeper.disk.layout import RunFolder
    from sweeper.job.grids import JobGrids

    folder = RunFolder(tmp_path)

    def grid(model="hub/model", negative="", **render):
        cells = grid_cells(_render(prompts={"sf": "smile"}, **render), "ktn", "cat")
        options = RenderOptions(
            scheduler=cells[0].sampler, num_inference_steps=cells[0].steps, negative_prompt=negative
        )
        spec = SimpleNamespace(render=options, weights="raw", cells=cells)
        job = SimpleNamespace(spec=spec, model=ModelSource(path=model), folder=folder, run_dir=tmp_path)
        return JobGrids(job)

    assert grid().home == folder  # nothing drawn yet: the run folder
    Image.new("RGB", (8, 8)).save(tmp_path / "sf_1;1;7.5.png")  # the first grid's picture
    first = folder.render_file.read_bytes()
    assert grid(batch_size=3).home == folder
    for change, name, label in (
        ({"scheduler": "euler_a"}, "grid-euler_a", "render.scheduler=euler_a"),
        ({"num_inference_steps": 30}, "grid-30steps", "render.num_inference_steps=30"),
        (
            {"samplers": ["ddim", "euler_a"]},
            "grid-ddim-euler_a",
            "render.samplers=[ddim,euler_a]",
        ),
        (
            {"sampling_steps": [10, 20]},
            "grid-10-20steps",
            "render.sampling_steps=[10,20]",
        ),
        ({"negative": "blurry, dark"}, "grid-neg-", "render.negative_prompt='blurry, dark'"),
    ):
        second = grid(**change).home
        assert second.path.parent == tmp_path and second.name.startswith(name), second.name
        assert second.grid_label() == label
        assert second.read_render() != folder.read_render()
        assert [c["stem"] for c in second.cells()] == [c.stem for c in grid(**change).job.spec.cells]
    assert folder.render_file.read_bytes() == first  # the first grid's settings are kept
    assert (
        set(folder.other_grids()) == {p.name for p in tmp_path.glob("grid-*")}
        and len(folder.other_grids()) == 5
    )
    assert grid(scheduler="euler_a").home.name == "grid-euler_a"  # the same settings find the same folder
    with pytest.raises(
        UserInputError,
        match=re.escape("rendered from model 'hub/model@main:full', not 'hub/other@main:full'"),
    ) as refused:
        _ = grid(model="hub/other").home
    assert "\n" not in str(refused.value)
    # a second grid whose folder holds pictures drawn otherwise is refused, not mixed
    second = folder.other_grid("grid-euler_a")
    Image.new("RGB", (8, 8)).save(second.path / "sf_1;1;7.5.png")
    second.write_render({**second.read_render(), "resolution": 64})
    with pytest.raises(
        UserInputError, match=re.escape("grid-euler_a: its pictures were rendered with render.resolution=64")
    ):
        _ = grid(scheduler="euler_a").home
    assert (tmp_path / "sf_1;1;7.5.png").is_file() and (second.path / "sf_1;1;7.5.png").is_file()


def test_the_mlflow_run_note_names_the_axes_of_each_best_cell():
    from sweeper.tracking.ui import note_for_job

    note = note_for_job("r", {}, [], {"be": ("1;0;4;euler_a;30", 0.5), "ph": ("1;0;4", 0.4)}, {})
    assert "Best cell for `be` (unet;text;guidance;sampler;steps): `1;0;4;euler_a;30`" in note
    assert "Best cell for `ph` (unet;text;guidance): `1;0;4`" in note
