import logging

import numpy as np
import pytest
from PIL import Image

from lora_core.data.subject import (
    fit_to_resolution,
    list_subject_images,
    load_subject_images,
    open_rgb,
    to_tensor,
)
from lora_core.errors import UserInputError


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = open_rgb(_save(img, tmp_path / "a.jpg", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    top = np.asarray(loaded)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the blue strip is now on top


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Image.new("L", (8, 8), 100), (100, 100, 100)),
        (lambda: Image.new("LA", (8, 8), (50, 0)), (255, 255, 255)),
        (lambda: Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)),
        (lambda: Image.new("RGBA", (8, 8), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("I;16", (8, 8), 65535), (255, 255, 255)),
        (lambda: Image.new("I;16", (8, 8), 32896), (128, 128, 128)),
    ],
    ids=[
        "grayscale",
        "grayscale-alpha",
        "transparent-rgba",
        "opaque-rgba",
        "cmyk",
        "16bit-white",
        "16bit-mid",
    ],
)
def test_every_mode_becomes_rgb_with_the_right_colour(tmp_path, make, expected):
    img = make()
    suffix = ".jpg" if img.mode == "CMYK" else ".png"
    loaded = open_rgb(_save(img, tmp_path / f"x{suffix}"))
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded)[4, 4].astype(int) - expected).max() <= 2


def test_palette_image_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    img.paste(0, (0, 0, 4, 8))
    loaded = open_rgb(_save(img, tmp_path / "p.png", transparency=0))
    assert tuple(np.asarray(loaded)[4, 1]) == (255, 255, 255)
    assert tuple(np.asarray(loaded)[4, 6]) == (200, 0, 0)


def test_webp_is_read(tmp_path):
    loaded = open_rgb(_save(Image.new("RGB", (16, 16), (0, 200, 0)), tmp_path / "g.webp", lossless=True))
    assert tuple(np.asarray(loaded)[8, 8]) == (0, 200, 0)


def test_resize_and_center_crop_to_square():
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 200, 100))  # white centre third
    out = fit_to_resolution(img, 64)
    assert out.size == (64, 64)
    assert np.asarray(out).mean() > 250  # only the centre survives the crop


def test_to_tensor_range_and_layout():
    t = to_tensor(Image.new("RGB", (4, 2), (255, 0, 128)))
    assert tuple(t.shape) == (3, 2, 4)
    assert t[0].min() == 1.0 and t[1].max() == -1.0 and abs(t[2].mean().item()) < 0.01


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(UserInputError, match="no such folder") as err:
        list_subject_images(tmp_path / "nope")
    assert "nope" in str(err.value)


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(UserInputError, match="empty") as err:
        list_subject_images(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserInputError, match="no image file"):
        list_subject_images(tmp_path)


def test_non_image_files_are_skipped_with_a_warning(tmp_path, caplog):
    _save(Image.new("RGB", (64, 64)), tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("hi")
    with caplog.at_level(logging.WARNING):
        found = list_subject_images(tmp_path)
    assert [p.name for p in found] == ["a.png"]
    assert "notes.txt" in caplog.text


def test_corrupt_image_is_named(tmp_path):
    _save(Image.new("RGB", (64, 64)), tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(UserInputError, match=r"bad\.png"):
        load_subject_images(tmp_path, 64)


def test_truncated_image_is_named(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)), tmp_path / "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"cut\.jpg.*(truncated|corrupt)"):
        load_subject_images(tmp_path, 64)


def test_far_smaller_image_gives_a_warning(tmp_path, caplog):
    _save(Image.new("RGB", (20, 20)), tmp_path / "tiny.png")
    with caplog.at_level(logging.WARNING):
        pictures = load_subject_images(tmp_path, 64)
    assert "tiny.png" in caplog.text and "smaller" in caplog.text
    assert pictures[0].size == (64, 64)


def test_drawn_subject_is_deterministic_and_varied(tmp_path):
    from lora_core.embedded.drawn_subject import ensure_drawn_subject

    a = ensure_drawn_subject(tmp_path / "a", count=5, seed=1, size=64)
    b = ensure_drawn_subject(tmp_path / "b", count=5, seed=1, size=64)
    pics_a = [np.asarray(Image.open(p)) for p in sorted(a.glob("*.png"))]
    pics_b = [np.asarray(Image.open(p)) for p in sorted(b.glob("*.png"))]
    assert len(pics_a) == 5
    assert all(np.array_equal(x, y) for x, y in zip(pics_a, pics_b, strict=True))
    diffs = [np.abs(pics_a[0].astype(int) - p.astype(int)).mean() for p in pics_a[1:]]
    assert min(diffs) > 5  # every picture differs noticeably from the first


def test_drawn_subject_loads_as_training_pictures(subject_dir):
    pictures = load_subject_images(subject_dir, 64)
    assert len(pictures) == 5 and all(p.size == (64, 64) and p.mode == "RGB" for p in pictures)
