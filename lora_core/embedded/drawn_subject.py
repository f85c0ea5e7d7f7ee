"""The embedded default subject: a cartoon kitten the project draws itself, so a run needs no data.

Five pictures of the same distinctive character (orange head with cream muzzle, teal eyes, a blue scarf
with a yellow star, a striped tail) in different places of the drawn world (``lora_core.embedded.world``),
sizes, tilts and poses — the kind of variation a person's 3-5 photos of one subject have. The world's own cats
never have these markings, so the embedded world model has never seen this individual. Drawn with Pillow
from a seed: same seed, same pixels.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from lora_core.atomic import atomic_dir
from lora_core.embedded.world import PLACES, draw_place

_VERSION = 2  # bump when the drawing changes, so cached folders are redrawn
_SUPERSAMPLE = 2

ORANGE = (236, 132, 46)
DARK_ORANGE = (190, 92, 28)
CREAM = (252, 234, 200)
TEAL = (38, 170, 170)
SCARF = (40, 80, 200)
STAR = (255, 214, 40)
PINK = (240, 120, 150)
INK = (40, 28, 24)


def draw_subject_image(rng: random.Random, size: int = 512) -> Image.Image:
    """Draw one picture of the kitten with a random placement, pose and background.

    Args:
        rng: Source of the variation.
        size: Side of the square picture in pixels.

    Returns:
        An RGB image.
    """
    big = size * _SUPERSAMPLE
    place = rng.choice(list(PLACES))
    img = draw_place(place, rng, big)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    scale = rng.uniform(0.55, 0.8) * big / 512
    cx = big / 2 + rng.uniform(-0.12, 0.12) * big
    cy = big / 2 + rng.uniform(-0.05, 0.12) * big
    _kitten(ImageDraw.Draw(layer), rng, cx, cy, scale)
    layer = layer.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC, center=(cx, cy))
    shadow = layer.split()[3].filter(ImageFilter.GaussianBlur(12 * scale))
    img.paste((0, 0, 0), (int(8 * scale), int(10 * scale)), shadow.point(lambda a: a * 0.25))
    img.alpha_composite(layer)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def _kitten(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float) -> None:
    def box(x, y, rx, ry):
        return [cx + (x - rx) * s, cy + (y - ry) * s, cx + (x + rx) * s, cy + (y + ry) * s]

    def pt(x, y):
        return (cx + x * s, cy + y * s)

    # Striped tail, its angle is the pose's most visible change.
    angle = math.radians(rng.uniform(-70, 10))
    for i in range(7):
        r = 90 + i * 18
        x, y = 110 + r * math.cos(angle - i * 0.12) * 0.6, 120 + r * math.sin(angle - i * 0.12) * 0.6
        draw.ellipse(box(x, y, 16, 16), fill=DARK_ORANGE if i % 2 else ORANGE)
    draw.ellipse(box(0, 130, 105, 85), fill=ORANGE, outline=INK, width=int(4 * s))  # body
    draw.ellipse(box(0, 150, 60, 55), fill=CREAM)  # belly
    for side in (-1, 1):  # paws
        draw.ellipse(box(side * 55, 205, 30, 18), fill=CREAM, outline=INK, width=int(3 * s))
    tilt = rng.uniform(-12, 12)
    for side in (-1, 1):  # ears
        tip = pt(side * 78 + tilt * side * 0.5, -150 - rng.uniform(0, 15))
        draw.polygon([pt(side * 30, -95), tip, pt(side * 95, -40)], fill=ORANGE, outline=INK)
        draw.polygon([pt(side * 45, -88), pt(side * 76, -130), pt(side * 85, -55)], fill=PINK)
    draw.ellipse(box(0, -20, 110, 95), fill=ORANGE, outline=INK, width=int(4 * s))  # head
    for dx in (-22, 0, 22):  # forehead stripes
        draw.polygon([pt(dx - 8, -112), pt(dx + 8, -112), pt(dx, -75)], fill=DARK_ORANGE)
    draw.ellipse(box(0, 25, 60, 40), fill=CREAM)  # muzzle
    look = rng.uniform(-8, 8)
    for side in (-1, 1):  # eyes
        draw.ellipse(box(side * 45, -20, 24, 28), fill="white", outline=INK, width=int(3 * s))
        draw.ellipse(box(side * 45 + look, -16, 15, 19), fill=TEAL)
        draw.ellipse(box(side * 45 + look, -14, 7, 9), fill=INK)
        draw.ellipse(box(side * 45 + look + 5, -22, 4, 4), fill="white")
    draw.polygon([pt(-11, 10), pt(11, 10), pt(0, 22)], fill=PINK)  # nose
    draw.arc(box(-10, 26, 10, 8), 0, 180, fill=INK, width=int(3 * s))
    draw.arc(box(10, 26, 10, 8), 0, 180, fill=INK, width=int(3 * s))
    for side in (-1, 1):  # whiskers
        for k in (-1, 0, 1):
            draw.line([pt(side * 55, 28 + k * 8), pt(side * 120, 22 + k * 16)], fill=INK, width=int(2 * s))
    draw.rounded_rectangle(box(0, 72, 85, 16), radius=int(14 * s), fill=SCARF, outline=INK, width=int(3 * s))
    draw.polygon([pt(40, 80), pt(70, 80), pt(80, 140), pt(45, 130)], fill=SCARF, outline=INK)  # scarf end
    _star(draw, pt(-35, 72), 13 * s)


def _star(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float) -> None:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        points.append((centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)))
    draw.polygon(points, fill=STAR)


def ensure_drawn_subject(
    cache_dir: str | os.PathLike, count: int = 5, seed: int = 0, size: int = 512
) -> Path:
    """Return a folder with ``count`` drawn pictures of the kitten, drawing them on first use.

    Args:
        cache_dir: Parent folder of the drawn subject folders.
        count: Number of pictures.
        seed: Seed of the variation; the same seed gives the same pictures.
        size: Side of each square picture in pixels.

    Returns:
        A folder of ``00.png``, ``01.png``, ... usable as ``data.instance_dir``.
    """
    target = Path(cache_dir) / f"drawn-kitten-v{_VERSION}-n{count}-s{seed}-{size}px"
    if target.is_dir() and len(list(target.glob("*.png"))) == count:
        return target
    with atomic_dir(target, replace=False) as tmp:
        for i in range(count):
            draw_subject_image(random.Random(f"{seed}-{i}"), size).save(tmp / f"{i:02d}.png")
    return target
