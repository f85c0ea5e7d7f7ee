"""Per-picture captions: sidecar files, metadata.jsonl, placeholders, and one clear line per bad file."""

import json

import pytest
from PIL import Image

from lora_core.data.captions import captions_digest, read_captions
from lora_core.data.order import caption_dropped
from lora_core.data.subject import list_subject_images
from lora_core.errors import UserInputError

PROMPT = "a photo of ktn cat"


def _folder(tmp_path, names=("a.png", "b.png", "c.png")):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in names:
        Image.new("RGB", (8, 8), "red").save(folder / name)
    return folder


def _captions(folder, mode="sidecar_or_instance"):
    return read_captions(folder, list_subject_images(folder), mode, "ktn", "cat", PROMPT)


def _refused(folder, *needles, mode="sidecar_or_instance"):
    with pytest.raises(UserInputError) as info:
        _captions(folder, mode)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_sidecar_captions_fill_token_and_class(tmp_path):
    folder = _folder(tmp_path)
    (folder / "a.txt").write_text("{token} {class} on the beach\n")
    (folder / "b.txt").write_text("a drawing of {token}\nsmiling")  # line breaks become spaces
    assert _captions(folder) == ["ktn cat on the beach", "a drawing of ktn smiling", PROMPT]


def test_metadata_jsonl_captions_pictures_and_a_sidecar_wins(tmp_path):
    folder = _folder(tmp_path)
    lines = [{"file_name": "a.png", "text": "{token} in snow"}, {"file_name": "b.png", "text": "b meta"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    (folder / "b.txt").write_text("b sidecar")
    assert _captions(folder) == ["ktn in snow", "b sidecar", PROMPT]


def test_instance_prompt_mode_reads_no_caption_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "a.txt").write_text("{tokn} broken, but never read")
    assert _captions(folder, "instance_prompt") == [PROMPT] * 3


def test_caption_files_are_not_reported_as_stray_files(tmp_path, caplog):
    folder = _folder(tmp_path)
    (folder / "a.txt").write_text("x")
    (folder / "metadata.jsonl").write_text("")
    (folder / "notes.txt").write_text("x")  # captions no picture: a stray file
    assert [p.name for p in list_subject_images(folder)] == ["a.png", "b.png", "c.png"]
    assert "notes.txt" in caplog.text and "a.txt" not in caplog.text and "metadata" not in caplog.text


def test_sidecar_mode_names_a_picture_without_caption(tmp_path):
    folder = _folder(tmp_path, ("a.png", "b.png"))
    (folder / "a.txt").write_text("ok")
    _refused(folder, "b.png", "no caption", "sidecar_or_instance", mode="sidecar")


def test_an_empty_caption_file_is_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "b.txt").write_text("  \n")
    _refused(folder, "b.txt", "empty caption")


def test_a_caption_that_is_not_utf8_is_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "c.txt").write_bytes("un caf\xe9".encode("latin-1"))
    _refused(folder, "c.txt", "not UTF-8", "save it as UTF-8")


def test_an_unknown_placeholder_is_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "a.txt").write_text("a photo of {tokn} {class}")
    _refused(folder, "a.txt", "unknown placeholder {tokn}", "{token} and {class}")


@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ('{"file_name": "a.png"}', ("metadata.jsonl:2", "no text")),
        ('{"text": "x"}', ("metadata.jsonl:2", "no file_name")),
        ('["a.png", "x"]', ("metadata.jsonl:2", "no file_name")),
        ("{not json", ("metadata.jsonl:2", "not a JSON object")),
        ('{"file_name": "gone.png", "text": "x"}', ("metadata.jsonl:2", "'gone.png' is not a picture")),
        ('{"file_name": "b.png", "text": "{clas}"}', ("metadata.jsonl:2", "unknown placeholder {clas}")),
        ('{"file_name": "b.png", "text": ""}', ("metadata.jsonl:2", "empty caption")),
        (
            '{"file_name": "a.png", "text": "again"}',
            ("metadata.jsonl:2", "captioned twice", "metadata.jsonl:1"),
        ),
    ],
)
def test_a_bad_metadata_line_is_named_with_its_number(tmp_path, line, needles):
    folder = _folder(tmp_path)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "fine"}\n' + line + "\n")
    _refused(folder, *needles)


def test_an_unknown_caption_mode_is_named(settings):
    with pytest.raises(UserInputError) as info:
        settings(caption_mode="kohya").validate()
    message = str(info.value)
    assert "data.caption_mode='kohya': use one of instance_prompt, sidecar" in message and "\n" not in message


def test_caption_dropout_is_a_pure_function_of_seed_and_step():
    draws = [caption_dropped(step, 4, seed=3, probability=0.3) for step in range(500)]
    assert draws == [caption_dropped(step, 4, seed=3, probability=0.3) for step in range(500)]
    rate = sum(map(sum, draws)) / 2000
    assert 0.25 < rate < 0.35
    assert draws != [caption_dropped(step, 4, seed=4, probability=0.3) for step in range(500)]
    assert not any(any(caption_dropped(step, 4, 3, 0.0)) for step in range(50))


def test_the_captions_digest_changes_with_any_caption_or_their_order():
    base = captions_digest(["a", "b"])
    assert base == captions_digest(["a", "b"])
    assert len({base, captions_digest(["a", "c"]), captions_digest(["b", "a"])}) == 3
