"""DreamBooth's subject- and prompt-fidelity metrics (Ruiz et al. 2023, section 4.1): DINO, CLIP-I, CLIP-T.

- **DINO**: mean cosine similarity between the ViT-S/16 DINO embedding (CLS token of the last hidden
  state, after the final layer norm) of a generated picture and that of every real subject picture.
- **CLIP-I**: the same with CLIP image embeddings (the projected, pooled CLIP vision output).
- **CLIP-T**: cosine similarity between the CLIP text embedding of the prompt and the CLIP image
  embedding of the generated picture.

A picture's DINO and CLIP-I are means over the real pictures; a run's score is then the mean over its
pictures (``mean_scores``), so the run mean is the mean over every generated × real pair, as in the paper.

How CLIP-T treats the prompt (``clip_t_prompt``): the identifier is taken out and the class noun kept.
``"a ktn cat on the beach"`` is scored as ``"a cat on the beach"``, ``"A ktn is smiling"`` (no class noun
after the identifier) as ``"A cat is smiling"``. The paper defines CLIP-T only as the cosine between
prompt and image CLIP embeddings; it does not say what happens to the identifier. CLIP has never seen
the identifier (it was chosen as a rare token precisely so that it means nothing), so its sub-word
tokens would only pull the text embedding somewhere arbitrary, and by a different amount for every
identifier. The class noun is what the identifier stands for, so CLIP-T measures what it is meant to:
whether the picture follows the prompt's context ("on the beach", "smiling"). Subject identity is what
DINO and CLIP-I measure. Textual Inversion's evaluation likewise leaves its placeholder word out of the
text it scores; keeping the class noun keeps the sentence grammatical.

Models are loaded once: a local folder, else the Hugging Face cache, else the hub; in float32 (both are
small, and float32 keeps a score the same on every device and batch size). The real pictures are
embedded once (``set_references``), prompts once each; generated pictures are scored in batches under
``torch.inference_mode``. Preprocessing is each model's own saved processor config (resize, crop,
normalise), run by transformers' PIL image processors, so no torchvision is needed and the pixels do
not depend on whether torchvision happens to be installed.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lora_core.errors import UserInputError

log = logging.getLogger(__name__)

METRICS = ("dino", "clip_i", "clip_t")
_HUB_PROBE_TIMEOUT_S = 5.0


class EvalModelsUnavailable(UserInputError):
    """The evaluation models cannot be loaded; the message says evaluation is skipped and how to fix it."""


def clip_t_prompt(prompt: str, token: str, class_name: str) -> str:
    """The prompt CLIP-T scores: the identifier taken out, the class noun kept (see the module docstring).

    The identifier is matched as a whole word, in any letter case. Followed by the class noun, it is
    dropped (``"a ktn cat"`` -> ``"a cat"``); standing alone, it is replaced by the class noun
    (``"A ktn is smiling"`` -> ``"A cat is smiling"``). Without a class noun it is dropped.

    Args:
        prompt: The generation prompt (placeholders already filled).
        token: The identifier (``ktn``); empty leaves the prompt unchanged.
        class_name: The class noun (``cat``).

    Returns:
        The evaluation prompt.
    """
    if not token:
        return prompt
    word = rf"(?<!\w){re.escape(token)}(?!\w)"
    if not re.search(word, prompt, flags=re.IGNORECASE):
        return prompt
    if class_name:
        before_class = rf"{word}\s+(?={re.escape(class_name)}(?!\w))"
        text = re.sub(before_class, "", prompt, flags=re.IGNORECASE)
        text = re.sub(word, lambda _: class_name, text, flags=re.IGNORECASE)
    else:
        text = re.sub(rf"{word}\s*", "", prompt, flags=re.IGNORECASE)
    return " ".join(text.split())


@dataclass(frozen=True)
class EvalModels:
    """Where the evaluation models come from.

    Attributes:
        dino_model: Hub id or local folder of a DINO ViT (``facebook/dino-vits16``).
        clip_model: Hub id or local folder of a CLIP model (``openai/clip-vit-base-patch32``).
        local_files_only: Never reach for the network (local folders and the Hugging Face cache only).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    """

    dino_model: str = "facebook/dino-vits16"
    clip_model: str = "openai/clip-vit-base-patch32"
    local_files_only: bool = False
    device: str = "cpu"


class ImageScorer:
    """Scores generated pictures against the real subject pictures and their prompts.

    Args:
        models: Which models to load, and on which device.
        batch_size: Pictures (or prompts) per forward pass; it changes speed, not scores (beyond float
            rounding).

    Raises:
        EvalModelsUnavailable: A model cannot be loaded; the one-line message says how to provide it.
        UserInputError: ``batch_size`` is below 1.
    """

    def __init__(self, models: EvalModels, batch_size: int = 16):
        import torch

        if batch_size < 1:
            raise UserInputError(f"eval.batch_size={batch_size}: use 1 or more.")
        self.models, self.batch_size = models, batch_size
        self.device = models.device
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dino, self.dino_processor = _load_with_fallback(
            "eval.dino_model", models.dino_model, models.local_files_only, _load_dino
        )
        self.clip, self.clip_processor, self.clip_tokenizer = _load_with_fallback(
            "eval.clip_model", models.clip_model, models.local_files_only, _load_clip
        )
        self.dino.to(self.device).eval()
        self.clip.to(self.device).eval()
        self._references = None
        self._text_cache: dict = {}

    def _chunks(self, items: list) -> Iterable[list]:
        for start in range(0, len(items), self.batch_size):
            yield items[start : start + self.batch_size]

    def _embed_images(self, images: list, processor, encode: Callable, width: int):
        """Unit-length rows of ``encode(pixel_values)``, batch by batch, on the CPU."""
        import torch

        rows = [torch.empty(0, width)]
        with torch.inference_mode():
            for batch in self._chunks(images):
                pixels = processor([im.convert("RGB") for im in batch], return_tensors="pt")["pixel_values"]
                features = encode(pixels.to(self.device, torch.float32))
                rows.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(rows)

    def dino_embeddings(self, images: list):
        """L2-normalised DINO embeddings (CLS token of the last hidden state), one row per picture.

        Args:
            images: PIL pictures (any mode; converted to RGB).

        Returns:
            A float32 CPU tensor (pictures, hidden size).
        """
        encode = lambda px: self.dino(pixel_values=px).last_hidden_state[:, 0]  # noqa: E731
        return self._embed_images(images, self.dino_processor, encode, self.dino.config.hidden_size)

    def clip_image_embeddings(self, images: list):
        """L2-normalised CLIP image embeddings, one row per picture.

        Args:
            images: PIL pictures (any mode; converted to RGB).

        Returns:
            A float32 CPU tensor (pictures, projection size).
        """
        encode = lambda px: _features(self.clip.get_image_features(pixel_values=px))  # noqa: E731
        return self._embed_images(images, self.clip_processor, encode, self.clip.config.projection_dim)

    def clip_text_embeddings(self, prompts: list[str]):
        """L2-normalised CLIP text embeddings, one row per prompt (each distinct prompt embedded once).

        Padding does not change a prompt's embedding (CLIP's text encoder is causal and pools at the
        end-of-text token), so batching prompts of different lengths together is safe.

        Args:
            prompts: Prompts as CLIP should read them (see ``clip_t_prompt``).

        Returns:
            A float32 CPU tensor (prompts, projection size).
        """
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        with torch.inference_mode():
            for batch in self._chunks(missing):
                tokens = self.clip_tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
                features = _features(self.clip.get_text_features(**tokens.to(self.device)))
                unit = torch.nn.functional.normalize(features.float(), dim=-1).cpu()
                self._text_cache.update(zip(batch, unit, strict=True))
        if not prompts:
            return torch.empty(0, self.clip.config.projection_dim)
        return torch.stack([self._text_cache[p] for p in prompts])

    def set_references(self, images: list) -> None:
        """Embed the real subject pictures once; every later ``score`` compares against them.

        Args:
            images: The real subject pictures (PIL).

        Raises:
            UserInputError: No pictures.
        """
        if not images:
            raise UserInputError(
                "evaluation needs at least one real subject picture: check the subject folder (data.instance_dir)."
            )
        self._references = (self.dino_embeddings(images), self.clip_image_embeddings(images))

    def score(self, images: list, prompts: list[str]) -> list[dict[str, float]]:
        """DINO, CLIP-I and CLIP-T of each generated picture.

        Args:
            images: Generated pictures (PIL).
            prompts: The CLIP-T prompt of each picture (see ``clip_t_prompt``).

        Returns:
            One ``{"dino": ..., "clip_i": ..., "clip_t": ...}`` per picture, in the order of ``images``.
            DINO and CLIP-I are the mean cosine over all real pictures.

        Raises:
            RuntimeError: ``set_references`` was not called.
            ValueError: Not one prompt per picture.
        """
        if self._references is None:
            raise RuntimeError("call set_references() with the real subject pictures first")
        if len(images) != len(prompts):
            raise ValueError(f"one prompt per picture: {len(images)} pictures, {len(prompts)} prompts")
        if not images:
            return []
        dino_refs, clip_refs = self._references
        dino = (self.dino_embeddings(images) @ dino_refs.T).mean(dim=1)  # (generated, real) cosines
        clip_image = self.clip_image_embeddings(images)
        clip_i = (clip_image @ clip_refs.T).mean(dim=1)
        clip_t = (clip_image * self.clip_text_embeddings(prompts)).sum(dim=-1)
        columns = zip(dino.tolist(), clip_i.tolist(), clip_t.tolist(), strict=True)
        return [dict(zip(METRICS, values, strict=True)) for values in columns]


def mean_scores(rows: Iterable[Mapping], by: str | Callable[[Mapping], object] | None = None) -> dict:
    """Mean of each metric over per-picture score rows: overall, or per group.

    Args:
        rows: Rows holding the metrics (``ImageScorer.score`` output, or table rows with more columns).
        by: None for one mean over all rows; a column name (``"prompt_name"``) or a function of the row
            (a cell key) to group by.

    Returns:
        ``{metric: mean}``, or ``{group: {metric: mean}}`` with groups in first-seen order. Only the
        metrics every row holds are averaged; no rows give ``{}``.
    """
    rows = list(rows)
    if by is None:
        metrics = [m for m in METRICS if rows and all(m in r for r in rows)]
        return {m: statistics.fmean(r[m] for r in rows) for m in metrics}
    key = (lambda r: r[by]) if isinstance(by, str) else by
    groups: dict[object, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return {group: mean_scores(members) for group, members in groups.items()}


def try_load_scorer(models: EvalModels, batch_size: int = 16) -> ImageScorer | None:
    """An ``ImageScorer``, or None after one warning line when its models are not available.

    Args:
        models: Which models to load.
        batch_size: Pictures per forward pass.

    Returns:
        The scorer, or None: the caller skips evaluation and goes on.
    """
    try:
        return ImageScorer(models, batch_size)
    except EvalModelsUnavailable as err:
        log.warning("%s", err)
        return None


# ---- loading ---------------------------------------------------------------------------------------------
_DEFAULTS = {"eval.dino_model": EvalModels.dino_model, "eval.clip_model": EvalModels.clip_model}


def _load_dino(name: str, local_files_only: bool) -> tuple:
    import torch
    from transformers import AutoImageProcessor, ViTModel

    kwargs = {"local_files_only": local_files_only}
    model = ViTModel.from_pretrained(name, add_pooling_layer=False, dtype=torch.float32, **kwargs)
    return model, AutoImageProcessor.from_pretrained(name, backend="pil", **kwargs)


def _load_clip(name: str, local_files_only: bool) -> tuple:
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    kwargs = {"local_files_only": local_files_only}
    model = CLIPModel.from_pretrained(name, dtype=torch.float32, **kwargs)
    processor = AutoImageProcessor.from_pretrained(name, backend="pil", **kwargs)
    return model, processor, AutoTokenizer.from_pretrained(name, **kwargs)


def _load_with_fallback(key: str, name: str, local_files_only: bool, load: Callable) -> tuple:
    """``load(name, local_files_only)``: a local folder or cached copy first, then the hub if allowed.

    Trying the cache first needs no network for a model already downloaded, and probing the hub once
    before a download spares an offline machine huggingface_hub's retries (about 50 s of warnings).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_or_explain(key, name, lambda: load(str(path), True))
    if _looks_like_path(name):
        raise EvalModelsUnavailable(
            f"{key}={name}: no such folder; evaluation is skipped. Set {key} to a folder written by "
            f"save_pretrained, or to a hub id such as {_DEFAULTS[key]}."
        )
    try:
        return load(name, True)
    except (OSError, ValueError) as err:
        if local_files_only or not _hub_reachable():
            why = "eval.local_files_only=true" if local_files_only else "the hub cannot be reached"
            raise EvalModelsUnavailable(
                f"{key}={name}: not in the Hugging Face cache and {why}; evaluation is skipped. Download it "
                f"once where the network is reachable (hf download {name}), or set {key} to a local folder."
            ) from err
    return _load_or_explain(key, name, lambda: load(name, False))


def _load_or_explain(key: str, name: str, load: Callable[[], tuple]) -> tuple:
    try:
        return load()
    except (OSError, ValueError) as err:
        lines = str(err).strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        raise EvalModelsUnavailable(
            f"{key}={name}: cannot load it ({reason}); evaluation is skipped. Set {key} to a hub id or a "
            f"folder holding the model, its preprocessor_config.json and (for CLIP) its tokenizer."
        ) from err


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or "\\" in name


def _hub_reachable() -> bool:
    """One short request to the hub, no retries (huggingface_hub's own retry for about 50 s)."""
    from huggingface_hub import constants, get_session, is_offline_mode

    if is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception:  # whatever the HTTP client raises (httpx2 here; httpx or requests in other versions)
        return False
    return True


def _features(output):
    """The projected embedding: older transformers return a tensor, newer ones an output's ``pooler_output``."""
    return output if hasattr(output, "shape") else output.pooler_output
