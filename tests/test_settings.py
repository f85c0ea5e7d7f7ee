import pytest

from lora_core.errors import UserInputError
from lora_core.settings import SCHEDULERS, TrainSettings


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"learning_rate": 0}, "train.learning_rate=0"),
        ({"learning_rate": -1e-4}, "train.learning_rate"),
        ({"learning_rate": float("nan")}, "train.learning_rate"),
        ({"text_encoder_lr": -1.0}, "train.text_encoder_lr"),
        ({"lr_scheduler": "cosine_annealing"}, "train.lr_scheduler='cosine_annealing'"),
        ({"max_train_steps": 0}, "train.max_train_steps"),
        ({"resolution": 100}, "train.resolution"),
        ({"rank": 0}, "train.rank"),
        ({"alpha": -2.0}, "train.alpha"),
        ({"dropout": 1.0}, "train.dropout"),
        ({"mixed_precision": "fp8"}, "train.mixed_precision"),
        ({"instance_prompt": "  "}, "train.instance_prompt"),
        ({"with_prior_preservation": True, "class_prompt": ""}, "train.class_prompt"),
        ({"checkpoint_steps": (600,), "max_train_steps": 500}, "train.checkpoint_steps"),
        ({"lr_warmup_steps": 900, "max_train_steps": 500}, "train.lr_warmup_steps"),
        ({"snr_gamma": 0.0}, "train.snr_gamma"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(UserInputError) as err:
        TrainSettings(**({"resolution": 512} | overrides)).validate()
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)


def test_defaults_are_valid_once_the_resolution_is_known():
    TrainSettings(resolution=512).validate()
    with pytest.raises(UserInputError, match=r"^train\.resolution=None"):
        TrainSettings().validate()  # the sweep fills in the model's side; training needs a number


def test_unknown_key_is_an_error():
    with pytest.raises(UserInputError, match=r"train\.learning_rte"):
        TrainSettings.from_dict({"learning_rte": 1e-4})


def test_constant_schedules_can_continue_across_step_counts():
    short, long = TrainSettings(max_train_steps=100), TrainSettings(max_train_steps=500)
    assert long.can_continue_from(short)
    assert TrainSettings(max_train_steps=500, checkpoint_every=50).can_continue_from(short)
    assert not TrainSettings(max_train_steps=500, learning_rate=3e-4).can_continue_from(short)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULERS if s not in ("constant", "constant_with_warmup")])
def test_schedules_that_depend_on_the_total_cannot(schedule):
    short = TrainSettings(max_train_steps=100, lr_scheduler=schedule)
    assert not TrainSettings(max_train_steps=500, lr_scheduler=schedule).can_continue_from(short)
    assert TrainSettings(max_train_steps=100, lr_scheduler=schedule).can_continue_from(short)
