import pytest

from lora_core.errors import UserInputError
from sweeper.disk.naming import (
    check_safe_name,
    check_short_name,
    format_number,
    image_stem,
    inside,
    prompt_short_name,
    run_dir_name,
    short_names,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-4, "1e-4"),
        (0.0001, "1e-4"),
        (3e-4, "3e-4"),
        (2.5e-4, "2.5e-4"),
        (1e-5, "1e-5"),
        (0.9, "0.9"),
        (0.01, "0.01"),
        (0.001, "1e-3"),
        (3.0, "3"),
        (3, "3"),
        (3.6, "3.6"),
        (4.5, "4.5"),
        (5000, "5000"),
        (0, "0"),
        (0.0, "0"),
        (1.0, "1"),
        (0.6, "0.6"),
        (True, "true"),
    ],
)
def test_numbers_get_their_shortest_stable_form(value, text):
    assert format_number(value) == text


def test_the_same_value_always_gives_the_same_name():
    assert format_number(float("1e-4")) == format_number(0.0001) == format_number(1e-4) == "1e-4"
    assert format_number(0.30000000000000004) != format_number(0.3)  # different floats stay different


def test_run_dir_is_learning_rate_then_text_encoder_lr():
    values = {"learning_rate": 3e-4, "text_encoder_lr": 1e-5, "max_train_steps": 1000}
    assert run_dir_name("{learning_rate};{text_encoder_lr}{varying}", values, []) == "3e-4;1e-5"


def test_other_varying_keys_follow_in_order():
    values = {
        "learning_rate": 1e-4,
        "text_encoder_lr": 1e-5,
        "max_train_steps": 5000,
        "lr_scheduler": "linear",
    }
    template = "{learning_rate};{text_encoder_lr}{varying}"
    assert run_dir_name(template, values, ["max_train_steps", "lr_scheduler"]) == "1e-4;1e-5;5000;linear"
    assert run_dir_name(template, values, ["learning_rate", "max_train_steps"]) == "1e-4;1e-5;5000"


def test_run_dir_template_is_configurable():
    values = {"learning_rate": 1e-4, "text_encoder_lr": 1e-5, "rank": 16}
    assert run_dir_name("lr{learning_rate}_r{rank}", values, ["rank"]) == "lr1e-4_r16"
    with pytest.raises(UserInputError, match=r"sweep\.run_dir_template"):
        run_dir_name("{learnin_rate}", values, [])


def test_image_names_follow_the_contract():
    assert image_stem("{pr}_{unet};{text};{guidance}", "sf", 0.9, 0.5, 3.6) == "sf_0.9;0.5;3.6"
    assert image_stem("{pr}_{unet};{text};{guidance}", "fc", 1.0, 1.0, 3) == "fc_1;1;3"
    assert (
        image_stem("{pr}_{unet};{text};{guidance}", "sf", 0.9, 0.5, 3.6, seed=7, index=1)
        == "sf_0.9;0.5;3.6_7-1"
    )


@pytest.mark.parametrize(
    ("prompt", "name"),
    [
        ("smile face", "sf"),
        ("falling from the cliff", "fc"),
        ("sitting in the pub", "sp"),
        ("A ktn is smiling", "ks"),
        ("A ktn is sitting in the pub", "ksp"),
        ("the", "t"),
        ("!!!", "p"),
    ],
)
def test_prompt_short_names_are_initials_of_content_words(prompt, name):
    assert prompt_short_name(prompt) == name


def test_derived_short_names_are_made_unique():
    assert short_names(["smile face", "sad frog", "smile face"]) == ["sf", "sf2", "sf3"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "a\\b", "x\0y", "", "con:1"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(UserInputError):
        check_safe_name(bad, "render.image_name")


@pytest.mark.parametrize("bad", ["../etc", "a b", "x/y", "é", ""])
def test_unsafe_prompt_short_names_are_refused(bad):
    with pytest.raises(UserInputError, match=r"render\.prompts"):
        check_short_name(bad, "render.prompts")


def test_paths_stay_inside_the_root(tmp_path):
    assert inside(tmp_path, "a;b", "sf_1;1;3.png") == tmp_path / "a;b" / "sf_1;1;3.png"
    with pytest.raises(UserInputError):
        inside(tmp_path, "..", "x")
