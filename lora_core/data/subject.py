"""Read a folder of subject images into training-ready pictures, with checks a person can act on."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_core.data.captions import is_caption_file
from lora_core.errors import UserInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# An image whose shorter side is below this fraction of the resolution is upscaled so much that it
# teaches the model blur; warn, as kohya's and diffusers' trainers do not.
SMALL_IMAGE_FRACTION = 0.5


def list_subject_images(folder: str | os.PathLike) -> list[Path]:
    """List the image files of a subject folder, sorted by name; other files are skipped with a warning.

    Caption files (``img.txt`` beside ``img.png``, ``metadata.jsonl``: ``lora_core.data.captions``) are skipped
    silently.

    Args:
        folder: The subject folder.

    Returns:
        Paths of the files with an image suffix (jpg, jpeg, png, webp; any case).

    Raises:
        UserInputError: The folder is missing, not a folder, empty, or holds no image file.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise UserInputError(
            f"data.instance_dir={folder}: no such folder. Point it at a folder of 3-5 subject images."
        )
    if not root.is_dir():
        raise UserInputError(f"data.instance_dir={folder}: this is a file, not a folder of images.")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise UserInputError(
            f"data.instance_dir={folder}: the folder is empty. Put 3-5 jpg/png/webp images of the subject in it."
        )
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    for skipped in sorted(set(entries) - set(images) - {p for p in entries if is_caption_file(p, images)}):
        log.warning("Skipping %s: not a %s image file.", skipped, "/".join(s[1:] for s in IMAGE_SUFFIXES))
    if not images:
        raise UserInputError(
            f"data.instance_dir={folder}: no image file in it ({len(entries)} other entries). "
            "Supported: jpg, jpeg, png, webp."
        )
    return images


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image fully, apply its EXIF orientation and convert it to 8-bit RGB.

    Transparent pixels are composited onto white (dropping alpha would turn them black); 16-bit and
    float images are rescaled to 8 bits rather than clipped.

    Args:
        path: Image file.

    Returns:
        An RGB image, loaded into memory.

    Raises:
        UserInputError: The file is not a readable image or is truncated.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserInputError(
            f"{path}: cannot read this image ({err}). It may be corrupt or truncated: re-export it or remove it from the folder."
        ) from err
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_depth_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif img.mode.startswith("I;16") or values.max(initial=0) > 255:
        top = 65535.0
    else:
        top = 255.0
    scaled = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def fit_to_resolution(img: Image.Image, resolution: int, center_crop: bool = True) -> Image.Image:
    """Resize the shorter side to ``resolution`` and crop the centre square (or stretch when not cropping).

    Args:
        img: An RGB image.
        resolution: Side of the square output, in pixels.
        center_crop: Crop the centre; when False the whole picture is resized to a square.

    Returns:
        A ``resolution`` × ``resolution`` RGB image; its ``info`` holds ``original_size`` (h, w) and
        ``crop_top_left`` (SDXL's size and crop conditioning: ``lora_core.family.crop_conditioning``).
    """
    from lora_core.family import crop_conditioning

    if not center_crop:
        out = img.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=3.0)
    else:
        out = ImageOps.fit(img, (resolution, resolution), Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    out.info["original_size"], out.info["crop_top_left"] = crop_conditioning(
        img.size, resolution, center_crop
    )
    return out


def load_subject_images(
    folder: str | os.PathLike, resolution: int, center_crop: bool = True
) -> list[Image.Image]:
    """Read and check every image of a subject folder before any training starts.

    Args:
        folder: The subject folder.
        resolution: Training resolution in pixels.
        center_crop: Crop to the centre square (else stretch).

    Returns:
        One ``resolution``-square RGB image per file, in file-name order.

    Raises:
        UserInputError: See ``list_subject_images`` and ``open_rgb``; the message names the file.
    """
    pictures = []
    for path in list_subject_images(folder):
        img = open_rgb(path)
        if min(img.size) < resolution * SMALL_IMAGE_FRACTION:
            log.warning(
                "%s is %dx%d, far smaller than the training resolution %d: it will be upscaled and look blurry "
                "to the model. Use a larger picture or a lower resolution.",
                path,
                img.width,
                img.height,
                resolution,
            )
        pictures.append(fit_to_resolution(img, resolution, center_crop))
    return pictures


def to_tensor(img: Image.Image):
    """Convert an RGB image to a ``(3, H, W)`` float tensor in [-1, 1], as the VAE expects.

    Args:
        img: An RGB image.

    Returns:
        A float32 tensor.
    """
    import torch

    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
