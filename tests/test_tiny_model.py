import json

import torch

from lora_core.embedded.tiny_model import (
    TinyModelSpec,
    build_tiny_pipeline,
    byte_level_vocab,
    ensure_tiny_model,
)


def _weights(pipe):
    return {
        f"{name}.{k}": v
        for name in ("unet", "vae", "text_encoder")
        for k, v in getattr(pipe, name).state_dict().items()
    }


def test_same_seed_builds_identical_weights():
    a, b = (
        _weights(build_tiny_pipeline(TinyModelSpec(seed=5))),
        _weights(build_tiny_pipeline(TinyModelSpec(seed=5))),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_builds_other_weights():
    a, b = (
        _weights(build_tiny_pipeline(TinyModelSpec(seed=5))),
        _weights(build_tiny_pipeline(TinyModelSpec(seed=6))),
    )
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_building_does_not_touch_the_global_random_state():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    build_tiny_pipeline(TinyModelSpec())
    assert torch.equal(torch.rand(3), expected)


def test_saved_model_loads_through_from_pretrained_with_the_same_weights(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = ensure_tiny_model(TinyModelSpec(seed=2), tmp_path)
    loaded = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    built = _weights(build_tiny_pipeline(TinyModelSpec(seed=2)))
    assert all(torch.equal(v, built[k]) for k, v in _weights(loaded).items())
    assert json.loads((folder / "tiny_spec.json").read_text())["seed"] == 2


def test_cached_model_is_built_once(tmp_path):
    folder = ensure_tiny_model(TinyModelSpec(), tmp_path)
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_model(TinyModelSpec(), tmp_path) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folders left behind


def test_model_is_a_few_megabytes(tmp_path):
    folder = ensure_tiny_model(TinyModelSpec(), tmp_path)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert 1e6 < size < 20e6


def test_byte_level_tokenizer_encodes_any_text_and_pads_to_77(pipe):
    tok = pipe.tokenizer
    assert tok.model_max_length == 77
    ids = tok("ktn café 🐱", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    vocab = byte_level_vocab()
    assert ids[0] == vocab["<|startoftext|>"]
    assert vocab["<|endoftext|>"] in ids
    assert len(vocab) == 514
    assert tok.decode(tok("a ktn").input_ids, skip_special_tokens=True).replace(" ", "") == "aktn"
