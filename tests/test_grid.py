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
