"""Per-picture captions of a subject folder: kohya's sidecar files and the datasets ``metadata.jsonl``.

A picture ``img.png`` is captioned by ``img.txt`` beside it (kohya sd-scripts' convention) or by a line
``{"file_name": "img.png", "text": "..."}`` of the folder's ``metadata.jsonl`` (the Hugging Face
``datasets`` image-folder convention); the sidecar wins when both exist. Captions may name the subject with
``{token}`` and ``{class}`` (``data.token``, ``data.class_name``). Every caption file is read and checked
before any training, so a typo costs one line, not a run. No maintained library reads both conventions
with checks a person can act on, hence this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from lora_core.errors import UserInputError

# instance_prompt: every picture trains under data.instance_prompt (no caption file is read).
# sidecar: every picture must have a caption. sidecar_or_instance: a caption where there is one.
CAPTION_MODES = ("instance_prompt", "sidecar", "sidecar_or_instance")
CAPTION_SUFFIX = ".txt"
METADATA_FILE = "metadata.jsonl"
PLACEHOLDERS = ("token", "class")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def is_caption_file(path: Path, pictures: list[Path]) -> bool:
    """Whether a file of a subject folder is a caption file (not a stray file worth a warning).

    Args:
        path: A file of the folder.
        pictures: The folder's pictures: a ``.txt`` file captions one of them when it shares its stem.
    """
    if path.name == METADATA_FILE:
        return True
    return path.suffix == CAPTION_SUFFIX and any(path == p.with_suffix(CAPTION_SUFFIX) for p in pictures)


def fill_prompt(text: str, token: str, class_name: str) -> str:
    """Replace ``{token}`` and ``{class}`` (other braces are left alone): prompts and captions alike."""
    return text.replace("{token}", token).replace("{class}", class_name)


def fill_caption(text: str, token: str, class_name: str, where: str) -> str:
    """Fill ``{token}`` and ``{class}`` into a caption, refusing any other placeholder.

    Args:
        text: The caption as written (one line: line breaks become spaces).
        token: The identifier (``data.token``).
        class_name: The class noun (``data.class_name``).
        where: The file (and line) the caption comes from, for the message.

    Returns:
        The filled caption.

    Raises:
        UserInputError: The caption is empty or holds an unknown placeholder such as ``{tokn}``.
    """
    text = " ".join(text.split())
    if not text:
        raise UserInputError(
            f"{where}: empty caption. Write the picture's caption (e.g. 'a photo of {{token}} {{class}} "
            "on the beach') or remove it; train.caption_dropout trains with empty captions on purpose."
        )
    unknown = [name for name in _PLACEHOLDER.findall(text) if name not in PLACEHOLDERS]
    if unknown:
        raise UserInputError(
            f"{where}: unknown placeholder {{{unknown[0]}}}; captions may use {{token}} and {{class}} only "
            "(fix the spelling or write the word itself)."
        )
    return fill_prompt(text, token, class_name)


def _read_text(path: Path, what: str = "caption file") -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(
            f"{path}: this {what} is not UTF-8 text ({err.reason}); save it as UTF-8."
        ) from err


def read_metadata(folder: Path, pictures: list[Path]) -> dict[Path, tuple[str, str]]:
    """The captions of a folder's ``metadata.jsonl``, by picture (empty without the file).

    Args:
        folder: The subject folder.
        pictures: Its pictures (``lora_core.data.subject.list_subject_images``).

    Returns:
        Picture -> (caption as written, ``metadata.jsonl:<line>`` for messages).

    Raises:
        UserInputError: A line that is not a JSON object with string ``file_name`` and ``text``, names a
            picture that is not in the folder, or repeats a picture; the message names the line.
    """
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    known = {p.name: p for p in pictures}
    found: dict[Path, tuple[str, str]] = {}
    for number, line in enumerate(_read_text(path, METADATA_FILE).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{where}: not a JSON object ({err.msg}); write {_EXAMPLE_LINE}.") from err
        missing = [
            k for k in ("file_name", "text") if not isinstance(row, dict) or not isinstance(row.get(k), str)
        ]
        if missing:
            raise UserInputError(f"{where}: no {missing[0]} string; each line is {_EXAMPLE_LINE}.")
        name = Path(row["file_name"]).name
        if name not in known or Path(row["file_name"]).parent not in (Path("."), Path("")):
            raise UserInputError(
                f"{where}: file_name {row['file_name']!r} is not a picture of {folder}; fix the name or drop the line."
            )
        if known[name] in found:
            raise UserInputError(
                f"{where}: {name} is captioned twice (also {found[known[name]][1]}); keep one line."
            )
        found[known[name]] = (row["text"], where)
    return found


_EXAMPLE_LINE = '{"file_name": "img.png", "text": "a photo of {token} {class}"}'


def read_captions(
    folder: str | os.PathLike,
    pictures: list[Path],
    mode: str,
    token: str,
    class_name: str,
    instance_prompt: str,
) -> list[str]:
    """One caption per picture, as the training uses it.

    Args:
        folder: The subject folder.
        pictures: Its pictures, in training order (``list_subject_images``).
        mode: One of ``CAPTION_MODES`` (``data.caption_mode``, checked by ``TrainSettings.validate``).
        token: The identifier filled into ``{token}``.
        class_name: The class noun filled into ``{class}``.
        instance_prompt: The filled ``data.instance_prompt``, for pictures without a caption.

    Returns:
        A caption per picture (``instance_prompt`` for every picture in ``instance_prompt`` mode).

    Raises:
        UserInputError: A bad caption file (see ``fill_caption``, ``read_metadata``; empty,
            not UTF-8), or, in ``sidecar`` mode, a picture without a caption. One line naming the file.
    """
    if mode == "instance_prompt":
        return [instance_prompt] * len(pictures)
    folder = Path(folder).expanduser()
    metadata = read_metadata(folder, pictures)
    captions = []
    for picture in pictures:
        sidecar = picture.with_suffix(CAPTION_SUFFIX)
        if sidecar.is_file():
            captions.append(fill_caption(_read_text(sidecar), token, class_name, str(sidecar)))
        elif picture in metadata:
            text, where = metadata[picture]
            captions.append(fill_caption(text, token, class_name, where))
        elif mode == "sidecar":
            raise UserInputError(
                f"{picture}: no caption (no {sidecar.name} beside it, no {METADATA_FILE} line for it), and "
                "data.caption_mode=sidecar needs one per picture. Add it, or use "
                "data.caption_mode=sidecar_or_instance to train it under data.instance_prompt."
            )
        else:
            captions.append(instance_prompt)
    return captions


def captions_digest(captions: list[str]) -> str:
    """A short hash of the captions in picture order.

    Part of a run's identity, so a checkpoint or a trained LoRA is never continued or reused under other
    captions.
    """
    return hashlib.sha256(json.dumps(list(captions)).encode()).hexdigest()[:16]
