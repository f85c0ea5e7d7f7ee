"""Captions in training: each picture meets its own caption's embedding; caption dropout is reproducible."""

import contextlib

import pytest
import torch

from lora_core.data.order import caption_dropped, picture_indices
from lora_core.training import LoraTrainer

CAPTIONS = ["ktn cat on the beach", "ktn cat in snow", "ktn cat on the beach", "a ktn cat", "ktn in the pub"]


def _encode(pipe, text):
    tok = pipe.tokenizer
    ids = tok(
        [text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0][0]


@pytest.fixture
def trainer_of(pipe, subject_images, settings, tmp_path):
    """``with trainer_of(captions, **settings) as trainer``: a set-up trainer on the shared pipeline, cleaned up
    after (one at a time: the pipeline holds one training adapter)."""

    @contextlib.contextmanager
    def make(captions, **overrides):
        trainer = LoraTrainer(pipe, subject_images, settings(**overrides), tmp_path, captions=captions)
        try:
            trainer.setup()
            yield trainer
        finally:
            trainer.cleanup()

    return make


def test_each_picture_trains_under_its_own_captions_embedding(pipe, trainer_of):
    with trainer_of(CAPTIONS) as trainer:
        for index, caption in enumerate(CAPTIONS):
            row = trainer.prompts.picture_rows[index]
            torch.testing.assert_close(
                trainer.prompts.embeds[row], _encode(pipe, caption), rtol=1e-5, atol=1e-5
            )
        rows = trainer.prompts.picture_rows
        assert rows[0] == rows[2], "one embedding per distinct caption"
        assert not torch.allclose(trainer.prompts.embeds[rows[0]], trainer.prompts.embeds[rows[1]])


def test_a_changed_caption_never_meets_the_old_embedding(pipe, trainer_of):
    with trainer_of(CAPTIONS) as before:
        old = before.prompts.embeds[before.prompts.picture_rows[1]].clone()
    with trainer_of([CAPTIONS[0], "ktn cat under the night sky", *CAPTIONS[2:]]) as after:
        new = after.prompts.embeds[after.prompts.picture_rows[1]]
    assert not torch.allclose(new, old)
    torch.testing.assert_close(new, _encode(pipe, "ktn cat under the night sky"), rtol=1e-5, atol=1e-5)


def test_caption_dropout_trains_the_drawn_pictures_under_the_empty_caption(trainer_of):
    seen_dropped = 0
    with trainer_of(CAPTIONS, caption_dropout=0.4, train_batch_size=2, seed=5) as trainer:
        empty = trainer.prompts.rows[""]
        for micro_step in range(12):
            rows = picture_indices(micro_step, 2, len(CAPTIONS), 5)
            _, prompts = trainer.micro_batch(micro_step)
            dropped = caption_dropped(micro_step, 2, 5, 0.4)
            assert prompts == [
                empty if d else trainer.prompts.picture_rows[r] for r, d in zip(rows, dropped, strict=True)
            ]
            seen_dropped += sum(dropped)
    assert 0 < seen_dropped < 24


def test_caption_dropout_leaves_the_training_random_stream_alone(trainer_of):
    drawn = []
    for dropout in (0.0, 0.5):
        with trainer_of(CAPTIONS, caption_dropout=dropout) as trainer:
            latents = [trainer.micro_batch(micro_step)[0] for micro_step in range(4)]
            drawn.append((latents, trainer.progress.generator.get_state()))
    (plain, plain_state), (dropping, dropping_state) = drawn
    for a, b in zip(plain, dropping, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(plain_state, dropping_state)
