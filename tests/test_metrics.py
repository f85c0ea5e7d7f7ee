import logging

import numpy as np
import pytest
import torch
from PIL import Image

from lora_core.metrics import EvalModels, EvalModelsUnavailable, ImageScorer, clip_t_prompt, try_load_scorer
from lora_core.tiny_eval import ensure_tiny_clip, ensure_tiny_dino


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-models")
    return EvalModels(str(ensure_tiny_dino(root)), str(ensure_tiny_clip(root)), local_files_only=True)


@pytest.fixture(scope="module")
def scorer(eval_models):
    return ImageScorer(eval_models, batch_size=4)


def _pictures(n, seed=0, size=48):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_identical_pictures_score_one_for_dino_and_clip_i(scorer):
    pictures = _pictures(3)
    scorer.set_references([pictures[1]])
    scores = scorer.score([pictures[1]], ["a cat"])
    assert scores[0]["dino"] == pytest.approx(1.0, abs=1e-5)
    assert scores[0]["clip_i"] == pytest.approx(1.0, abs=1e-5)


def test_scores_are_the_mean_over_every_reference(scorer):
    generated, references = _pictures(3, seed=1), _pictures(4, seed=2)
    scorer.set_references(references)
    scores = scorer.score(generated, ["a cat"] * 3)
    gen, ref = scorer.dino_embeddings(generated).numpy(), scorer.dino_embeddings(references).numpy()
    cos = (gen / np.linalg.norm(gen, axis=1, keepdims=True)) @ (
        ref / np.linalg.norm(ref, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose([s["dino"] for s in scores], cos.mean(axis=1), rtol=1e-5, atol=1e-6)
    gen, ref = (
        scorer.clip_image_embeddings(generated).numpy(),
        scorer.clip_image_embeddings(references).numpy(),
    )
    np.testing.assert_allclose(
        [s["clip_i"] for s in scores], (gen @ ref.T).mean(axis=1), rtol=1e-5, atol=1e-6
    )


def test_clip_t_is_the_cosine_of_prompt_and_picture(scorer):
    pictures = _pictures(2, seed=3)
    scorer.set_references(pictures)
    scores = scorer.score(pictures, ["a cat on the beach", "a dog"])
    image = scorer.clip_image_embeddings(pictures)
    text = scorer.clip_text_embeddings(["a cat on the beach", "a dog"])
    expected = torch.nn.functional.cosine_similarity(image, text).numpy()
    np.testing.assert_allclose([s["clip_t"] for s in scores], expected, rtol=1e-5, atol=1e-6)


def test_scores_follow_the_order_of_the_pictures(scorer):
    pictures = _pictures(4, seed=4)
    scorer.set_references(_pictures(2, seed=5))
    forward = scorer.score(pictures, ["a", "b", "c", "d"])
    backward = scorer.score(pictures[::-1], ["d", "c", "b", "a"])
    for a, b in zip(forward, backward[::-1], strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_batch_size_does_not_change_the_scores(eval_models):
    pictures, references = _pictures(5, seed=6), _pictures(3, seed=7)
    results = []
    for batch_size in (1, 2, 5):
        scorer = ImageScorer(eval_models, batch_size=batch_size)
        scorer.set_references(references)
        results.append(scorer.score(pictures, ["a cat"] * 5))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a ktn cat on the beach", "a cat on the beach"), ("A ktn is smiling", "A cat is smiling"),
     ("smile face", "smile face"), ("a photo of ktn cat", "a photo of cat"), ("ktnish cat", "ktnish cat")],
)  # fmt: skip
def test_clip_t_prompt_drops_the_identifier_and_keeps_the_class(prompt, expected):
    assert clip_t_prompt(prompt, "ktn", "cat") == expected


def test_unavailable_models_skip_evaluation_with_one_clear_line(tmp_path, caplog, eval_models):
    missing = EvalModels(
        dino_model=str(tmp_path / "no-dino"), clip_model=eval_models.clip_model, local_files_only=True
    )
    with pytest.raises(EvalModelsUnavailable, match=r"eval\.dino_model=.*no-dino.*evaluation is skipped"):
        ImageScorer(missing)
    with caplog.at_level(logging.WARNING):
        assert (
            try_load_scorer(EvalModels("someone/not-cached", eval_models.clip_model, local_files_only=True))
            is None
        )
    lines = [r for r in caplog.records if "eval.dino_model" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
