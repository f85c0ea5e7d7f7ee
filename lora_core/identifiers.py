"""Choosing the identifier: short strings that the tokenizer encodes as one rarely used token.

DreamBooth binds the subject to a rare token, so the model has little prior meaning to unlearn (Ruiz et
al. 2023, section 3.2: "rare-token identifiers"). A CLIP BPE vocabulary is ordered by merge rank —
frequent pieces first — so whole-word tokens (``...</w>``) from the upper part of the vocabulary are the
rarely used ones; an identifier should encode to exactly one of them. A made-up word like ``ktn`` that
splits into several tokens works, but each piece drags its own prior meaning in.
"""

from __future__ import annotations

from dataclasses import dataclass

WORD_END = "</w>"


@dataclass(frozen=True)
class Candidate:
    """An identifier candidate.

    Attributes:
        text: What to write in prompts (``data.token``).
        token_id: Its single token id.
        rank: Position in the vocabulary as a fraction (0 = most frequent merge, 1 = rarest).
    """

    text: str
    token_id: int
    rank: float


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without the start/end tokens."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def rare_identifiers(
    tokenizer, count: int = 20, max_length: int = 3, rare_from: float = 0.6
) -> list[Candidate]:
    """Short lowercase strings that encode to one token from the rarely used part of the vocabulary.

    Args:
        tokenizer: A CLIP tokenizer (any BPE tokenizer with ``</w>`` word ends works).
        count: How many candidates to return.
        max_length: Longest candidate, in characters.
        rare_from: Where the rare part of the vocabulary starts, as a fraction of its size.

    Returns:
        Candidates from the rarest end of the range, each verified to encode to exactly its one token.
    """
    vocab = tokenizer.get_vocab()
    size = len(vocab)
    found: list[Candidate] = []
    for token, token_id in sorted(vocab.items(), key=lambda item: -item[1]):
        if len(found) >= count or token_id < rare_from * size:
            break
        word = token[: -len(WORD_END)] if token.endswith(WORD_END) else None
        if not word or len(word) > max_length or not (word.isascii() and word.isalpha() and word.islower()):
            continue
        if encode(tokenizer, word) == [token_id]:
            found.append(Candidate(word, token_id, token_id / size))
    return found


def identifier_warnings(tokenizer, token: str, common_below: float = 0.3) -> list[str]:
    """Problems with a chosen identifier, as sentences (empty when it is a single rare token).

    Args:
        tokenizer: The model's tokenizer.
        token: The identifier (``data.token``).
        common_below: Single tokens ranked below this fraction of the vocabulary count as common words.

    Returns:
        Warnings: it splits into several tokens (listed), or it is a common word.
    """
    ids = encode(tokenizer, token)
    if len(ids) > 1:
        pieces = [tokenizer.convert_ids_to_tokens(i).replace(WORD_END, "") for i in ids]
        return [
            f"identifier {token!r} splits into {len(ids)} tokens {pieces}; each piece brings its own meaning. "
            "A single rare token binds the subject more cleanly (see the candidates)."
        ]
    size = len(tokenizer.get_vocab())
    if ids and ids[0] < common_below * size:
        return [
            f"identifier {token!r} is a common token (id {ids[0]} of {size}); the model already knows a meaning "
            "for it, which training has to overwrite. Prefer a rare one."
        ]
    return []
