"""The drawn world: an endless, seeded stream of captioned 64 px scenes the embedded model learns from.

A scene is one object (10 classes) of one colour (7) in one place (6), optionally small or big, drawn with
Pillow from a seed: same seed, same pixels. Every object is an *individual*: its look (exact shade,
patches, eye colour, collar, proportions) comes from its own seed, so a model can be taught that two
pictures show the same individual (``identity`` pairs) as well as what a caption says.

Some (object, colour, place) combinations are held out: pretraining never draws them, so prompt following
can be measured on compositions the model has never seen (``held_out_combinations``).

The world's cats never have the drawn subject's markings (teal eyes, a blue scarf with a yellow star, a
striped tail, a cream muzzle): that individual exists only in ``drawn_subject``, so a DreamBooth LoRA has
something new to learn and ``class_name=cat`` is meaningful for prior preservation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 64
_SUPER = 2  # drawn at 2x and downsampled: smooth edges, as a photo has

OBJECTS = ("cat", "dog", "ball", "tree", "house", "car", "bird", "fish", "cup", "flower")
COLOURS = {
    "red": (214, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 40),
    "green": (60, 170, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
}
PLACES = {
    "beach": "on the beach",
    "snow": "in the snow",
    "forest": "in the forest",
    "grass": "on the grass",
    "night": "under the night sky",
    "pub": "in the pub",
}
SIZES = ("small", "big")
ANIMALS = ("cat", "dog", "bird", "fish")
_PREFIXES = ("a ", "a photo of a ", "a picture of a ", "a drawing of a ")
_HELD_OUT_FRACTION = 0.15
_INK = (35, 30, 30)
# Eye colours world animals can have; teal is the drawn subject's alone.
_EYES = ((20, 20, 20), (110, 70, 30), (60, 140, 60), (200, 160, 40))


@dataclass(frozen=True)
class Scene:
    """What one picture shows.

    Attributes:
        obj: Object class (one of ``OBJECTS``).
        colour: Colour name (a key of ``COLOURS``).
        place: Place name (a key of ``PLACES``).
        size: ``small``, ``big`` or ``""`` (unspecified: in between).
        individual: Seed of the object's look; the same seed draws the same individual.
    """

    obj: str
    colour: str
    place: str
    size: str = ""
    individual: int = 0


def held_out_combinations(seed: int = 0) -> frozenset[tuple[str, str, str]]:
    """The (object, colour, place) triples pretraining never draws: 15 % of all, fixed by ``seed``."""
    triples = [(o, c, p) for o in OBJECTS for c in COLOURS for p in PLACES]
    rng = random.Random(f"held-out-{seed}")
    return frozenset(rng.sample(triples, round(len(triples) * _HELD_OUT_FRACTION)))


def sample_scene(rng: random.Random, exclude: frozenset = frozenset()) -> Scene:
    """A random scene whose (object, colour, place) is not in ``exclude``."""
    while True:
        obj, colour, place = rng.choice(OBJECTS), rng.choice(list(COLOURS)), rng.choice(list(PLACES))
        if (obj, colour, place) not in exclude:
            break
    size = rng.choice(("", "", "small", "big"))
    return Scene(obj, colour, place, size, rng.randrange(2**31))


def caption(scene: Scene, rng: random.Random | None = None, full: bool = False) -> str:
    """The caption of a scene; with ``rng`` (and not ``full``) parts may be left out, as real captions do.

    Args:
        scene: What the picture shows.
        rng: Chooses the wording; None gives the plain full caption (``a red ball on the beach``).
        full: Always name colour and place.

    Returns:
        A lower-case English caption.
    """
    if rng is None:
        return f"a {_noun_phrase(scene, True)} {PLACES[scene.place]}"
    with_colour = full or rng.random() > 0.15
    with_place = full or rng.random() > 0.15
    prefix = rng.choice(_PREFIXES)
    text = prefix + _noun_phrase(scene, with_colour)
    if scene.obj in ("cat", "dog") and rng.random() < 0.25:
        text += " sitting"
    if with_place:
        text += " " + PLACES[scene.place]
    return text


def _noun_phrase(scene: Scene, with_colour: bool) -> str:
    words = [scene.size] if scene.size else []
    if with_colour:
        words.append(scene.colour)
    words.append(scene.obj)
    return " ".join(words)


def vocabulary_words() -> list[str]:
    """Every word a world caption can use (the world tokenizer gives each its own token)."""
    words = {w for text in (*_PREFIXES, *PLACES.values()) for w in text.split()}
    words |= {*OBJECTS, *COLOURS, *SIZES, "sitting"}
    return sorted(words)


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """Draw ``scene``: the place, then the individual in a random pose, position and scale.

    Args:
        scene: What to draw.
        rng: Pose, position and background variation (not the individual's look).

    Returns:
        A ``SIZE`` x ``SIZE`` RGB image.
    """
    big = SIZE * _SUPER
    img = draw_place(scene.place, rng, big)
    lo, hi = {"small": (0.28, 0.38), "big": (0.62, 0.75), "": (0.42, 0.58)}[scene.size]
    extent = rng.uniform(lo, hi) * big
    cx = big / 2 + rng.uniform(-0.5, 0.5) * (big - extent) * 0.8
    cy = big * 0.62 + rng.uniform(-0.1, 0.1) * big - (0.1 * big if scene.obj == "bird" else 0)
    cy = min(cy, big - extent / 2)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    look = random.Random(scene.individual)
    _DRAW[scene.obj](draw, look, COLOURS[scene.colour], cx, cy, extent / 100)
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.alpha_composite(layer)
    return img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX)


def draw_place(place: str, rng: random.Random, size: int) -> Image.Image:
    """Draw the background of ``place`` (a key of ``PLACES``) as an RGBA image of ``size`` px."""
    img = Image.new("RGBA", (size, size))
    d = ImageDraw.Draw(img)
    horizon = int(size * rng.uniform(0.45, 0.6))
    j = rng.randint(-12, 12)

    def shade(rgb, k=j):
        return tuple(max(0, min(255, c + k)) for c in rgb)

    if place == "beach":
        d.rectangle([0, 0, size, horizon], fill=shade((135, 200, 245)))
        d.rectangle([0, horizon - size // 8, size, horizon], fill=shade((30, 110, 190)))
        d.rectangle([0, horizon, size, size], fill=shade((235, 210, 150)))
        d.ellipse(_circle(rng.uniform(0.1, 0.9) * size, size * 0.12, size * 0.07), fill=(255, 240, 120))
    elif place == "snow":
        d.rectangle([0, 0, size, horizon], fill=shade((175, 185, 200)))
        d.rectangle([0, horizon, size, size], fill=shade((245, 248, 252), k=j // 3))
        for _ in range(rng.randint(8, 14)):
            x, y = rng.uniform(0, size), rng.uniform(0, horizon)
            d.ellipse(_circle(x, y, size * 0.015), fill=(255, 255, 255))
    elif place == "forest":
        d.rectangle([0, 0, size, size], fill=shade((30, 75, 40)))
        for _ in range(rng.randint(4, 6)):
            x = rng.uniform(0, size)
            w = size * rng.uniform(0.04, 0.07)
            d.rectangle([x - w, 0, x + w, horizon + size * 0.05], fill=shade((85, 55, 30)))
        d.rectangle([0, horizon, size, size], fill=shade((55, 95, 35)))
    elif place == "grass":
        d.rectangle([0, 0, size, horizon], fill=shade((120, 185, 250)))
        d.rectangle([0, horizon, size, size], fill=shade((95, 200, 70)))
        for _ in range(2):
            x, y = rng.uniform(0, size), rng.uniform(0.05, 0.3) * size
            d.ellipse(
                [x - size * 0.12, y - size * 0.04, x + size * 0.12, y + size * 0.04], fill=(250, 250, 250)
            )
    elif place == "night":
        d.rectangle([0, 0, size, horizon], fill=shade((15, 20, 60)))
        d.rectangle([0, horizon, size, size], fill=shade((25, 35, 45)))
        for _ in range(rng.randint(10, 16)):
            x, y = rng.uniform(0, size), rng.uniform(0, horizon * 0.9)
            d.ellipse(_circle(x, y, size * 0.012), fill=(255, 250, 200))
        mx, my, r = rng.uniform(0.15, 0.85) * size, size * 0.15, size * 0.08
        d.ellipse(_circle(mx, my, r), fill=(245, 240, 210))
    elif place == "pub":
        d.rectangle([0, 0, size, horizon], fill=shade((120, 70, 35)))
        for y in range(0, horizon, max(1, size // 10)):
            d.line([(0, y), (size, y)], fill=shade((90, 50, 25)), width=max(1, size // 64))
        lamp = rng.uniform(0.2, 0.8) * size
        d.ellipse(_circle(lamp, size * 0.12, size * 0.06), fill=(255, 200, 90))
        d.rectangle([0, horizon, size, size], fill=shade((70, 40, 25)))
        d.rectangle([0, horizon - size * 0.08, size, horizon], fill=shade((160, 100, 50)))
    else:
        raise ValueError(f"unknown place {place!r}; one of {', '.join(PLACES)}")
    return img


def _circle(x: float, y: float, r: float) -> list[float]:
    return [x - r, y - r, x + r, y + r]


def _tone(rgb: tuple[int, int, int], look: random.Random) -> tuple[int, ...]:
    """The individual's own shade of its colour name: the name fits, the exact colour is its own."""
    k = look.uniform(-30, 30)
    return tuple(max(0, min(255, int(c + k + look.uniform(-12, 12)))) for c in rgb)


def _mix(a, b, t: float) -> tuple[int, ...]:
    return tuple(int(x + (y - x) * t) for x, y in zip(a, b, strict=True))


def _draw_cat(d, look, rgb, cx, cy, s):
    body = _tone(rgb, look)
    patch = _mix(body, (255, 255, 255), look.uniform(0.2, 0.6)) if look.random() < 0.5 else body
    eye = look.choice(_EYES)
    collar = _tone(look.choice(list(COLOURS.values())), look) if look.random() < 0.4 else None
    ear = look.uniform(0.8, 1.25)
    d.ellipse([cx - 30 * s, cy - 5 * s, cx + 30 * s, cy + 45 * s], fill=body)  # body
    d.ellipse([cx - 15 * s, cy + 10 * s, cx + 15 * s, cy + 42 * s], fill=patch)
    d.line([(cx + 28 * s, cy + 35 * s), (cx + 48 * s, cy + 5 * s)], fill=body, width=int(8 * s))  # tail
    hx, hy = cx, cy - 18 * s
    for side in (-1, 1):
        d.polygon(
            [
                (hx + side * 8 * s, hy - 18 * s),
                (hx + side * 24 * s, hy - 30 * s * ear),
                (hx + side * 26 * s, hy - 4 * s),
            ],
            fill=body,
        )
    d.ellipse(_circle(hx, hy, 24 * s), fill=body)
    for side in (-1, 1):
        d.ellipse(_circle(hx + side * 9 * s, hy - 3 * s, 4.5 * s), fill=eye)
    d.polygon([(hx - 3 * s, hy + 6 * s), (hx + 3 * s, hy + 6 * s), (hx, hy + 10 * s)], fill=_INK)
    if collar:
        d.rectangle([hx - 16 * s, hy + 20 * s, hx + 16 * s, hy + 25 * s], fill=collar)


def _draw_dog(d, look, rgb, cx, cy, s):
    body = _tone(rgb, look)
    ears = _mix(body, _INK, look.uniform(0.2, 0.6))
    eye = look.choice(_EYES[:2])
    collar = _tone(look.choice(list(COLOURS.values())), look) if look.random() < 0.5 else None
    long = look.uniform(0.9, 1.2)
    d.ellipse([cx - 38 * s * long, cy, cx + 30 * s, cy + 32 * s], fill=body)  # body
    for x in (-28, -12, 10, 22):
        d.rectangle([cx + x * s, cy + 22 * s, cx + (x + 7) * s, cy + 48 * s], fill=body)
    d.line([(cx - 36 * s * long, cy + 8 * s), (cx - 50 * s * long, cy - 8 * s)], fill=body, width=int(6 * s))
    hx, hy = cx + 28 * s, cy - 8 * s
    d.ellipse(_circle(hx, hy, 20 * s), fill=body)
    d.ellipse(
        [hx + 8 * s, hy - 2 * s, hx + 32 * s, hy + 14 * s], fill=_mix(body, (255, 255, 255), 0.3)
    )  # snout
    d.ellipse(_circle(hx + 30 * s, hy + 3 * s, 4 * s), fill=_INK)
    d.ellipse([hx - 22 * s, hy - 16 * s, hx - 8 * s, hy + 18 * s], fill=ears)  # floppy ear
    d.ellipse(_circle(hx + 6 * s, hy - 6 * s, 3.5 * s), fill=eye)
    if collar:
        d.rectangle([hx - 12 * s, hy + 15 * s, hx + 8 * s, hy + 21 * s], fill=collar)


def _draw_ball(d, look, rgb, cx, cy, s):
    main = _tone(rgb, look)
    r = 40 * s
    d.ellipse(_circle(cx, cy, r), fill=main)
    if look.random() < 0.6:  # a band of another shade
        band = _mix(main, (255, 255, 255), 0.55) if look.random() < 0.5 else _mix(main, _INK, 0.4)
        d.chord(_circle(cx, cy, r), 200, 340, fill=band)
    d.ellipse(_circle(cx - 14 * s, cy - 14 * s, 8 * s), fill=_mix(main, (255, 255, 255), 0.7))


def _draw_tree(d, look, rgb, cx, cy, s):
    crown = _tone(rgb, look)
    trunk = _tone((110, 70, 35), look)
    d.rectangle([cx - 7 * s, cy - 5 * s, cx + 7 * s, cy + 50 * s], fill=trunk)
    n = look.randint(3, 5)
    for i in range(n):
        a = math.pi * (0.15 + 0.7 * i / max(1, n - 1))
        x, y = cx - 22 * s * math.cos(a), cy - 20 * s - 18 * s * math.sin(a)
        d.ellipse(_circle(x, y, 20 * s), fill=crown)
    d.ellipse(_circle(cx, cy - 25 * s, 22 * s), fill=crown)


def _draw_house(d, look, rgb, cx, cy, s):
    wall = _tone(rgb, look)
    roof = _tone(look.choice(((150, 40, 30), (60, 60, 70), (90, 60, 40))), look)
    w = 38 * s * look.uniform(0.9, 1.15)
    d.rectangle([cx - w, cy - 10 * s, cx + w, cy + 45 * s], fill=wall)
    d.polygon([(cx - w - 8 * s, cy - 10 * s), (cx, cy - 45 * s), (cx + w + 8 * s, cy - 10 * s)], fill=roof)
    d.rectangle([cx - 8 * s, cy + 18 * s, cx + 8 * s, cy + 45 * s], fill=_mix(wall, _INK, 0.6))
    for side in (-1, 1):
        x = cx + side * w * 0.6
        d.rectangle([x - 7 * s, cy + 2 * s, x + 7 * s, cy + 16 * s], fill=(240, 240, 200))


def _draw_car(d, look, rgb, cx, cy, s):
    paint = _tone(rgb, look)
    d.rounded_rectangle([cx - 48 * s, cy, cx + 48 * s, cy + 26 * s], radius=int(8 * s), fill=paint)
    roof = look.uniform(0.5, 0.8)
    d.polygon(
        [
            (cx - 30 * s, cy),
            (cx - 20 * s, cy - 22 * s * roof - 6 * s),
            (cx + 20 * s, cy - 22 * s * roof - 6 * s),
            (cx + 32 * s, cy),
        ],
        fill=paint,
    )
    d.polygon(
        [
            (cx - 22 * s, cy - 2 * s),
            (cx - 15 * s, cy - 20 * s * roof),
            (cx + 16 * s, cy - 20 * s * roof),
            (cx + 24 * s, cy - 2 * s),
        ],
        fill=(190, 220, 240),
    )
    for x in (-28, 28):
        d.ellipse(_circle(cx + x * s, cy + 26 * s, 11 * s), fill=_INK)
        d.ellipse(_circle(cx + x * s, cy + 26 * s, 4 * s), fill=(170, 170, 170))


def _draw_bird(d, look, rgb, cx, cy, s):
    body = _tone(rgb, look)
    wing = _mix(body, _INK, look.uniform(0.15, 0.45))
    d.ellipse([cx - 32 * s, cy - 18 * s, cx + 22 * s, cy + 20 * s], fill=body)
    d.polygon([(cx - 28 * s, cy), (cx - 50 * s, cy - 12 * s), (cx - 48 * s, cy + 10 * s)], fill=body)  # tail
    d.ellipse(_circle(cx + 22 * s, cy - 16 * s, 14 * s), fill=body)
    d.polygon(
        [(cx + 34 * s, cy - 20 * s), (cx + 48 * s, cy - 14 * s), (cx + 34 * s, cy - 10 * s)],
        fill=(250, 160, 30),
    )
    d.ellipse(_circle(cx + 26 * s, cy - 19 * s, 3 * s), fill=_INK)
    d.chord([cx - 22 * s, cy - 14 * s, cx + 12 * s, cy + 16 * s], 180, 360, fill=wing)
    for x in (-6, 4):
        d.line([(cx + x * s, cy + 18 * s), (cx + x * s, cy + 30 * s)], fill=(250, 160, 30), width=int(3 * s))


def _draw_fish(d, look, rgb, cx, cy, s):
    body = _tone(rgb, look)
    fin = _mix(body, (255, 255, 255), look.uniform(0.2, 0.5))
    d.polygon([(cx - 30 * s, cy), (cx - 52 * s, cy - 20 * s), (cx - 52 * s, cy + 20 * s)], fill=fin)  # tail
    d.ellipse([cx - 38 * s, cy - 22 * s, cx + 42 * s, cy + 22 * s], fill=body)
    if look.random() < 0.5:
        for x in (-12, 4):
            d.line([(cx + x * s, cy - 18 * s), (cx + x * s, cy + 18 * s)], fill=fin, width=int(4 * s))
    d.ellipse(_circle(cx + 24 * s, cy - 5 * s, 5 * s), fill=(250, 250, 250))
    d.ellipse(_circle(cx + 25 * s, cy - 5 * s, 2.5 * s), fill=_INK)


def _draw_cup(d, look, rgb, cx, cy, s):
    glaze = _tone(rgb, look)
    d.ellipse([cx + 14 * s, cy - 16 * s, cx + 44 * s, cy + 16 * s], outline=glaze, width=int(7 * s))  # handle
    d.polygon(
        [
            (cx - 30 * s, cy - 28 * s),
            (cx + 30 * s, cy - 28 * s),
            (cx + 22 * s, cy + 32 * s),
            (cx - 22 * s, cy + 32 * s),
        ],
        fill=glaze,
    )
    d.ellipse([cx - 30 * s, cy - 34 * s, cx + 30 * s, cy - 22 * s], fill=_mix(glaze, _INK, 0.5))
    if look.random() < 0.5:
        d.rectangle(
            [cx - 26 * s, cy - 4 * s, cx + 26 * s, cy + 4 * s], fill=_mix(glaze, (255, 255, 255), 0.6)
        )


def _draw_flower(d, look, rgb, cx, cy, s):
    petal = _tone(rgb, look)
    d.line([(cx, cy), (cx, cy + 50 * s)], fill=(50, 140, 50), width=int(5 * s))
    d.ellipse([cx, cy + 20 * s, cx + 20 * s, cy + 30 * s], fill=(50, 140, 50))
    n = look.randint(5, 8)
    for i in range(n):
        a = 2 * math.pi * i / n
        d.ellipse(_circle(cx + 18 * s * math.cos(a), cy - 10 * s + 18 * s * math.sin(a), 12 * s), fill=petal)
    d.ellipse(_circle(cx, cy - 10 * s, 10 * s), fill=(250, 200, 40) if look.random() < 0.7 else (110, 70, 30))


_DRAW = {
    "cat": _draw_cat,
    "dog": _draw_dog,
    "ball": _draw_ball,
    "tree": _draw_tree,
    "house": _draw_house,
    "car": _draw_car,
    "bird": _draw_bird,
    "fish": _draw_fish,
    "cup": _draw_cup,
    "flower": _draw_flower,
}
