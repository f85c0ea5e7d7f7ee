import pytest
from transformers import CLIPTokenizer

from lora_core.embedded.tiny_model import byte_level_vocab
from lora_core.identifiers import encode, identifier_warnings, rare_identifiers


@pytest.fixture(scope="module")
def bpe():
    """A byte-level CLIP tokenizer with a few merges: 'the' early (common), 'zq' and 'vox' late (rare)."""
    vocab = byte_level_vocab()
    merges = [("t", "h"), ("th", "e</w>"), ("z", "q</w>"), ("o", "x</w>"), ("v", "ox</w>"), ("u", "x</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def test_candidates_are_single_rare_tokens_rarest_first(bpe):
    size = len(bpe.get_vocab())
    found = rare_identifiers(bpe, count=5, rare_from=(encode(bpe, "the")[0] + 1) / size)
    texts = [c.text for c in found]
    assert texts == ["ux", "vox", "ox", "zq"]  # latest merges first; "the", the earliest merge, is left out
    for c in found:
        assert encode(bpe, c.text) == [c.token_id] and len(c.text) <= 3 and c.text.isalpha()
    ids = [c.token_id for c in found]
    assert ids == sorted(ids, reverse=True)


def test_an_identifier_that_splits_is_warned_about(bpe):
    (warning,) = identifier_warnings(bpe, "ktn")
    assert "splits into 3 tokens" in warning and "'k'" in warning


def test_a_common_word_is_warned_about(bpe):
    vocab_size = len(bpe.get_vocab())
    (warning,) = identifier_warnings(bpe, "the", common_below=encode(bpe, "the")[0] / vocab_size + 0.01)
    assert "common token" in warning


def test_a_rare_single_token_passes(bpe):
    assert identifier_warnings(bpe, "vox") == []


def test_the_world_model_knows_ktn_as_one_rare_token(cache_dir, capsys):
    from sweeper.tools.identifiers import main

    assert main(["--count", "3", "data.token=ktn"]) == 0
    printed = capsys.readouterr().out
    assert "Identifier candidates for world" in printed
    assert "data.token='ktn' is a single rare token: good." in printed


def test_the_command_lists_candidates_for_the_configured_model(cache_dir, capsys):
    from sweeper.tools.identifiers import main

    assert main(["--count", "3", "data.token=ktn", "model=tiny"]) == 0
    printed = capsys.readouterr().out
    assert "Identifier candidates for tiny" in printed
    assert len([line for line in printed.splitlines() if "token " in line and "rank" in line]) == 3
    assert "warning: identifier 'ktn' splits into 3 tokens" in printed


def test_the_command_refuses_a_bad_value_with_exit_2_and_one_line():
    from sweep_cli import refused, run_cli

    refused(
        run_cli("sweeper.tools.identifiers", "train.learning_rate=-1"),
        "train.learning_rate=-1.0: must be > 0",
    )
