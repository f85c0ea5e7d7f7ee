import logging

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_eval_models import HUB_CLIP_PROCESSOR, HUB_DINO_PROCESSOR, hub_style_eval_models
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, ViTModel

from lora_core.metrics import (
    EvalModels,
    EvalModelsUnavailable,
    ImageScorer,
    clip_t_prompt,
    mean_scores,
    try_load_scorer,
)


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    dino, clip = hub_style_eval_models(tmp_path_factory.mktemp("eval-models"))
    return EvalModels(str(dino), str(clip), local_files_only=True)


@pytest.fixture(scope="module")
def scorer(eval_models):
    return ImageScorer(eval_models, batch_size=4)


def _pictures(n, seed=0, size=48):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _dino_cls(folder, pictures):
    """DINO embeddings straight from transformers, without the scorer."""
    model = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    pixels = AutoImageProcessor.from_pretrained(folder, backend="pil")(pictures, return_tensors="pt")
    with torch.no_grad():
        return model(**pixels).last_hidden_state[:, 0].numpy()


def _clip(folder):
    return CLIPModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder, backend="pil")


def test_identical_pictures_score_one_for_dino_and_clip_i(scorer):
    pictures = _pictures(3)
    scorer.set_references([pictures[1]])
    scores = scorer.score([pictures[1]], ["a cat"])
    assert scores[0]["dino"] == pytest.approx(1.0, abs=1e-5)
    assert scores[0]["clip_i"] == pytest.approx(1.0, abs=1e-5)


def test_dino_is_the_mean_cosine_over_every_generated_real_pair(scorer, eval_models):
    generated, real = _pictures(3, seed=1), _pictures(4, seed=2)
    scorer.set_references(real)
    scores = scorer.score(generated, ["a cat"] * 3)
    pairs = (
        _unit(_dino_cls(eval_models.dino_model, generated)) @ _unit(_dino_cls(eval_models.dino_model, real)).T
    )
    np.testing.assert_allclose([s["dino"] for s in scores], pairs.mean(axis=1), atol=1e-5)
    assert mean_scores(scores)["dino"] == pytest.approx(pairs.mean(), abs=1e-5)


def test_clip_i_is_the_mean_cosine_over_every_generated_real_pair(scorer, eval_models):
    generated, real = _pictures(3, seed=3), _pictures(2, seed=4)
    scorer.set_references(real)
    scores = scorer.score(generated, ["a cat"] * 3)
    model, processor = _clip(eval_models.clip_model)
    with torch.no_grad():
        gen, ref = (
            model.get_image_features(**processor(p, return_tensors="pt")).pooler_output
            for p in (generated, real)
        )
    pairs = _unit(gen.numpy()) @ _unit(ref.numpy()).T
    np.testing.assert_allclose([s["clip_i"] for s in scores], pairs.mean(axis=1), atol=1e-5)


def test_clip_t_is_the_cosine_of_each_prompt_and_its_picture(scorer, eval_models):
    pictures, prompts = _pictures(2, seed=5), ["a cat on the beach", "a cat"]
    scorer.set_references(pictures)
    scores = scorer.score(pictures, prompts)
    model, processor = _clip(eval_models.clip_model)
    tokenizer = AutoTokenizer.from_pretrained(eval_models.clip_model)
    with torch.no_grad():
        image = model.get_image_features(**processor(pictures, return_tensors="pt")).pooler_output
        text = [
            model.get_text_features(**tokenizer([p], return_tensors="pt")).pooler_output[0] for p in prompts
        ]
    expected = (_unit(image.numpy()) * _unit(torch.stack(text).numpy())).sum(axis=1)
    np.testing.assert_allclose([s["clip_t"] for s in scores], expected, atol=1e-5)


def test_scores_follow_the_order_of_the_pictures(scorer):
    pictures = _pictures(4, seed=6)
    scorer.set_references(_pictures(2, seed=7))
    forward = scorer.score(pictures, ["a", "b", "c", "d"])
    backward = scorer.score(pictures[::-1], ["d", "c", "b", "a"])
    for a, b in zip(forward, backward[::-1], strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_batch_size_does_not_change_the_scores(eval_models):
    pictures, real = _pictures(4, seed=8), _pictures(2, seed=9)
    prompts = ["a cat", "a cat on the beach at sunset", "a", "a red cat in a box"]  # padding differs
    results = []
    for batch_size in (1, 3):  # one at a time; then a full batch and a partial one
        scorer = ImageScorer(eval_models, batch_size=batch_size)
        scorer.set_references(real)
        results.append(scorer.score(pictures, prompts))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_preprocessing_follows_the_hub_processor_configs(scorer):
    # Three vertical stripes, 96 x 48: CLIP keeps the middle (shortest edge to 32, centre crop 32 x 32),
    # DINO squashes the whole picture to 32 x 32.
    stripes = np.zeros((48, 96, 3), dtype=np.uint8)
    stripes[:, :32], stripes[:, 32:64], stripes[:, 64:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    picture = Image.fromarray(stripes)

    def expected(resized, config):
        pixels = np.asarray(resized, dtype=np.float32) / 255
        return ((pixels - config["image_mean"]) / config["image_std"]).transpose(2, 0, 1)

    dino = scorer.dino_processor([picture], return_tensors="pt")["pixel_values"][0].numpy()
    clip = scorer.clip_processor([picture], return_tensors="pt")["pixel_values"][0].numpy()
    squashed = picture.resize((32, 32), Image.Resampling.BILINEAR)
    middle = picture.resize((64, 32), Image.Resampling.BICUBIC).crop((16, 0, 48, 32))
    np.testing.assert_allclose(dino, expected(squashed, HUB_DINO_PROCESSOR), atol=1e-5)
    np.testing.assert_allclose(clip, expected(middle, HUB_CLIP_PROCESSOR), atol=1e-5)


@pytest.mark.parametrize(
    ("prompt", "token", "class_name", "expected"),
    [
        ("a ktn cat on the beach", "ktn", "cat", "a cat on the beach"),
        ("A ktn is smiling", "ktn", "cat", "A cat is smiling"),
        ("a photo of KTN Cat", "ktn", "cat", "a photo of Cat"),
        ("ktn cat next to a ktn", "ktn", "cat", "cat next to a cat"),
        ("a ktn's hat", "ktn", "cat", "a cat's hat"),
        ("ktnish cat", "ktn", "cat", "ktnish cat"),
        ("smile  face", "ktn", "cat", "smile  face"),
        ("a <ktn> toy", "<ktn>", "toy", "a toy"),
        ("a ktn on the beach", "ktn", "", "a on the beach"),
        ("a ktn cat", "", "cat", "a ktn cat"),
    ],
)
def test_clip_t_prompt_drops_the_identifier_and_keeps_the_class(prompt, token, class_name, expected):
    assert clip_t_prompt(prompt, token, class_name) == expected


def test_mean_scores_average_overall_and_per_group():
    rows = [
        {"prompt_name": "sf", "dino": 0.2, "clip_i": 0.4, "clip_t": 0.1},
        {"prompt_name": "bw", "dino": 0.6, "clip_i": 0.8, "clip_t": 0.3},
        {"prompt_name": "sf", "dino": 0.4, "clip_i": 0.6, "clip_t": 0.2},
    ]
    assert mean_scores(rows) == pytest.approx({"dino": 0.4, "clip_i": 0.6, "clip_t": 0.2})
    grouped = mean_scores(rows, by="prompt_name")
    assert list(grouped) == ["sf", "bw"]
    assert grouped["sf"] == pytest.approx({"dino": 0.3, "clip_i": 0.5, "clip_t": 0.15})
    assert mean_scores(rows, by=lambda r: r["dino"] > 0.3).keys() == {False, True}
    assert mean_scores([]) == {}


def test_a_missing_local_folder_skips_evaluation_with_one_clear_line(tmp_path, eval_models):
    missing = EvalModels(str(tmp_path / "no-dino"), eval_models.clip_model, local_files_only=True)
    with pytest.raises(
        EvalModelsUnavailable, match=r"^eval\.dino_model=.*no-dino: no such folder; evaluation is skipped"
    ):
        ImageScorer(missing)


def test_an_uncached_hub_model_offline_skips_evaluation_with_one_clear_line(eval_models, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub is never asked, whatever the network
    offline = EvalModels(eval_models.dino_model, "someone/not-cached", local_files_only=False)
    with pytest.raises(EvalModelsUnavailable) as raised:
        ImageScorer(offline)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("eval.clip_model=someone/not-cached: not in the Hugging Face cache")
    assert "evaluation is skipped" in message and "local folder" in message


def test_try_load_scorer_returns_none_after_one_warning_line(eval_models, caplog):
    with caplog.at_level(logging.WARNING):
        assert (
            try_load_scorer(EvalModels("someone/not-cached", eval_models.clip_model, local_files_only=True))
            is None
        )
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "eval.dino_model" in lines[0] and "eval.local_files_only=true" in lines[0]


@pytest.mark.slow
def test_the_papers_architectures_at_real_size_score_through_the_same_path(tmp_path_factory):
    """DINO ViT-S/16 and CLIP ViT-B/32, built from their hub configurations with random weights, load through
    the scorer's from_pretrained path and take 224 px input; the metrics keep their meaning (identical
    pictures score 1, a picture's scores equal the embeddings' cosines computed by hand)."""
    from lora_core.embedded.tiny_eval import REAL_SIZE
    from sweeper.config.embedded_models import REAL_SHAPE, resolve_eval_model

    root = tmp_path_factory.mktemp("real-shape")
    dino, clip = (resolve_eval_model(REAL_SHAPE, kind, root) for kind in ("dino", "clip"))
    scorer = ImageScorer(EvalModels(dino, clip, local_files_only=True), batch_size=2)
    assert sum(p.numel() for p in scorer.dino.parameters()) > 21_000_000  # ViT-S/16: 21.7 M
    assert sum(p.numel() for p in scorer.clip.parameters()) > 150_000_000  # ViT-B/32: 151 M
    pictures = _pictures(3, size=512)
    pixels = scorer.clip_processor([pictures[0]], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (REAL_SIZE, REAL_SIZE)
    assert tuple(scorer.dino_embeddings(pictures).shape) == (3, 384)
    assert tuple(scorer.clip_image_embeddings(pictures).shape) == (3, 512)
    scorer.set_references(pictures[:1])
    scores = scorer.score(pictures[:2], ["a ktn cat", "a ktn cat on the beach"])
    assert scores[0]["dino"] == pytest.approx(1.0, abs=1e-5) and scores[0]["clip_i"] == pytest.approx(
        1.0, abs=1e-5
    )
    by_hand = _unit(_dino_cls(dino, pictures[:2]))
    assert scores[1]["dino"] == pytest.approx(float(by_hand[0] @ by_hand[1]), abs=1e-4)
    assert all(abs(s[m]) <= 1 + 1e-5 for s in scores for m in ("dino", "clip_i", "clip_t"))
