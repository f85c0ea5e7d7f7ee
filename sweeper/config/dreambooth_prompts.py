"""The evaluation prompts of the DreamBooth dataset (Ruiz et al. 2023; github.com/google/dreambooth, CC BY 4.0).

25 prompts for objects and 25 for live subjects (pets), ``{token}`` and ``{class}`` filled from
``data.token`` and ``data.class_name``. Short names are the prompts' distinguishing words.
"""

from __future__ import annotations

_SHARED = [
    ("jungle", "a {token} {class} in the jungle"),
    ("snow", "a {token} {class} in the snow"),
    ("beach", "a {token} {class} on the beach"),
    ("cobblestone", "a {token} {class} on a cobblestone street"),
    ("pink_fabric", "a {token} {class} on top of pink fabric"),
    ("wooden_floor", "a {token} {class} on top of a wooden floor"),
    ("city", "a {token} {class} with a city in the background"),
    ("mountain", "a {token} {class} with a mountain in the background"),
    ("blue_house", "a {token} {class} with a blue house in the background"),
    ("purple_rug", "a {token} {class} on top of a purple rug in a forest"),
]
_OBJECT = [
    ("wheat_field", "a {token} {class} with a wheat field in the background"),
    ("autumn", "a {token} {class} with a tree and autumn leaves in the background"),
    ("eiffel", "a {token} {class} with the Eiffel Tower in the background"),
    ("water", "a {token} {class} floating on top of water"),
    ("milk", "a {token} {class} floating in an ocean of milk"),
    ("sunflowers", "a {token} {class} on top of green grass with sunflowers around it"),
    ("mirror", "a {token} {class} on top of a mirror"),
    ("sidewalk", "a {token} {class} on top of the sidewalk in a crowded street"),
    ("dirt_road", "a {token} {class} on top of a dirt road"),
    ("white_rug", "a {token} {class} on top of a white rug"),
]
_LIVE = [
    ("red_hat", "a {token} {class} wearing a red hat"),
    ("santa_hat", "a {token} {class} wearing a santa hat"),
    ("rainbow_scarf", "a {token} {class} wearing a rainbow scarf"),
    ("top_hat", "a {token} {class} wearing a black top hat and a monocle"),
    ("chef", "a {token} {class} in a chef outfit"),
    ("firefighter", "a {token} {class} in a firefighter outfit"),
    ("police", "a {token} {class} in a police outfit"),
    ("pink_glasses", "a {token} {class} wearing pink glasses"),
    ("yellow_shirt", "a {token} {class} wearing a yellow shirt"),
    ("wizard", "a {token} {class} in a purple wizard outfit"),
]
_COLOURS = [
    ("red", "a red {token} {class}"),
    ("purple", "a purple {token} {class}"),
    ("shiny", "a shiny {token} {class}"),
    ("wet", "a wet {token} {class}"),
    ("cube", "a cube shaped {token} {class}"),
]

# The paper's Table 1 (Stable Diffusion backbone) and its real-image reference row.
PAPER_FIGURES = {
    "Real images (paper)": {"dino": 0.774, "clip_i": 0.885, "clip_t": None},
    "DreamBooth, Stable Diffusion (paper)": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
}


def dreambooth_prompts(kind: str) -> list[dict[str, str]]:
    """The 25 prompts for ``kind`` (``object`` or ``live``), as ``render.prompts`` entries.

    Raises:
        ValueError: Another kind.
    """
    if kind not in ("object", "live"):
        raise ValueError(f"data.kind={kind}: use object or live")
    middle = _OBJECT if kind == "object" else _LIVE
    return [{name: prompt} for name, prompt in _SHARED + middle + _COLOURS]
