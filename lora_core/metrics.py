"""DreamBooth's subject- and prompt-fidelity metrics (Ruiz et al. 2023, section 4.1): DINO, CLIP-I, CLIP-T.

- **DINO**: mean cosine similarity between the ViT-S/16 DINO embeddings (CLS token of the last hidden
  state) of a generated picture and of every real subject picture.
- **CLIP-I**: the same with CLIP image embeddings.
- **CLIP-T**: cosine similarity between the CLIP text embedding of the prompt and the CLIP image
  embedding of the generated picture.

How CLIP-T treats the prompt: the identifier is taken out and the class noun kept —
``"a ktn cat on the beach"`` is scored as ``"a cat on the beach"``, and ``"A ktn is smiling"`` (no class
noun) as ``"A cat is smiling"``. CLIP has never seen the identifier (that is why it was chosen: a rare
token), so its tokens would only add noise to the text embedding; the class noun says what the
identifier stands for, and CLIP-T is meant to measure whether the picture follows the rest of the
prompt (the context: "on the beach", "smiling"). Subject fidelity is what DINO and CLIP-I measure.

Models are loaded once (``from_pretrained`` on a hub id or a local folder); real-picture embeddings are
computed once and cached; generated pictures and prompts are scored in batches under inference mode.
Preprocessing follows each model's saved processor config (the PIL processors: no torchvision needed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lora_core.errors import UserInputError

log = logging.getLogger(__name__)

METRICS = ("dino", "clip_i", "clip_t")


class EvalModelsUnavailable(UserInputError):
    """The evaluation models cannot be loaded (offline and not in a local folder)."""


def clip_t_prompt(prompt: str, token: str, class_name: str) -> str:
    """The prompt CLIP-T scores: the identifier removed, the class noun kept (see the module docstring).

    Args:
        prompt: The generation prompt (placeholders already filled).
        token: The identifier (``ktn``).
        class_name: The class noun (``cat``).

    Returns:
        ``"a ktn cat on the beach"`` -> ``"a cat on the beach"``; ``"A ktn is smiling"`` -> ``"A cat is smiling"``.
    """
    if not token:
        return prompt
    with_class = re.compile(rf"\b{re.escape(token)}\s+{re.escape(class_name)}\b") if class_name else None
    if with_class is not None and with_class.search(prompt):
        return with_class.sub(class_name, prompt)
    return re.sub(rf"\b{re.escape(token)}\b", class_name, prompt) if class_name else prompt


@dataclass(frozen=True)
class EvalModels:
    """Where the evaluation models come from.

    Attributes:
        dino_model: Hub id or local folder of a DINO ViT (``facebook/dino-vits16``).
        clip_model: Hub id or local folder of a CLIP model (``openai/clip-vit-base-patch32``).
        local_files_only: Never reach for the network.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    dino_model: str = "facebook/dino-vits16"
    clip_model: str = "openai/clip-vit-base-patch32"
    local_files_only: bool = False
    device: str = "cpu"


class ImageScorer:
    """Scores generated pictures against the real subject pictures and their prompts.

    Args:
        models: Which models to load.
        batch_size: Pictures per forward pass (does not change the scores beyond float rounding).

    Raises:
        EvalModelsUnavailable: A model cannot be loaded; the message says how to provide it.
    """

    def __init__(self, models: EvalModels, batch_size: int = 16):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, ViTModel

        self.models, self.batch_size, self.device = models, batch_size, models.device
        kwargs = {"local_files_only": models.local_files_only}
        try:
            self.dino = ViTModel.from_pretrained(models.dino_model, add_pooling_layer=False, **kwargs)
            self.dino_processor = AutoImageProcessor.from_pretrained(models.dino_model, **kwargs)
        except (OSError, ValueError) as err:
            raise EvalModelsUnavailable(_unavailable("eval.dino_model", models.dino_model, err)) from err
        try:
            self.clip = CLIPModel.from_pretrained(models.clip_model, **kwargs)
            self.clip_processor = AutoImageProcessor.from_pretrained(models.clip_model, **kwargs)
            self.clip_tokenizer = AutoTokenizer.from_pretrained(models.clip_model, **kwargs)
        except (OSError, ValueError) as err:
            raise EvalModelsUnavailable(_unavailable("eval.clip_model", models.clip_model, err)) from err
        self.dino.to(self.device).eval()
        self.clip.to(self.device).eval()
        self._references: tuple | None = None
        self._text_cache: dict[str, object] = {}

    # ---- embeddings --------------------------------------------------------------------------------------
    def _batches(self, images: list):
        for start in range(0, len(images), self.batch_size):
            yield images[start : start + self.batch_size]

    def dino_embeddings(self, images: list):
        """L2-normalised DINO CLS embeddings, one row per picture."""
        import torch

        rows = []
        with torch.inference_mode():
            for batch in self._batches(images):
                pixels = self.dino_processor([im.convert("RGB") for im in batch], return_tensors="pt")[
                    "pixel_values"
                ]
                hidden = self.dino(pixel_values=pixels.to(self.device)).last_hidden_state
                rows.append(torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1))
        return torch.cat(rows)

    def clip_image_embeddings(self, images: list):
        """L2-normalised CLIP image embeddings, one row per picture."""
        import torch

        rows = []
        with torch.inference_mode():
            for batch in self._batches(images):
                pixels = self.clip_processor([im.convert("RGB") for im in batch], return_tensors="pt")[
                    "pixel_values"
                ]
                features = _features(self.clip.get_image_features(pixel_values=pixels.to(self.device)))
                rows.append(torch.nn.functional.normalize(features.float(), dim=-1))
        return torch.cat(rows)

    def clip_text_embeddings(self, prompts: list[str]):
        """L2-normalised CLIP text embeddings (cached per prompt)."""
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.inference_mode():
                tokens = self.clip_tokenizer(missing, padding=True, truncation=True, return_tensors="pt").to(
                    self.device
                )
                features = _features(self.clip.get_text_features(**tokens))
                for prompt, row in zip(
                    missing, torch.nn.functional.normalize(features.float(), dim=-1), strict=True
                ):
                    self._text_cache[prompt] = row
        return torch.stack([self._text_cache[p] for p in prompts])

    # ---- scores ------------------------------------------------------------------------------------------
    def set_references(self, images: list) -> None:
        """Embed the real subject pictures once; every later score compares against them."""
        if not images:
            raise UserInputError("evaluation needs at least one real subject picture.")
        self._references = (self.dino_embeddings(images), self.clip_image_embeddings(images))

    def score(self, images: list, prompts: list[str]) -> list[dict[str, float]]:
        """DINO, CLIP-I and CLIP-T of each generated picture.

        Args:
            images: Generated pictures (PIL).
            prompts: The CLIP-T prompt of each picture (see ``clip_t_prompt``).

        Returns:
            One ``{"dino", "clip_i", "clip_t"}`` per picture, in order.
        """
        if self._references is None:
            raise RuntimeError("call set_references() with the real subject pictures first")
        if len(images) != len(prompts):
            raise ValueError("one prompt per picture")
        if not images:
            return []
        dino_refs, clip_refs = self._references
        dino = self.dino_embeddings(images) @ dino_refs.T  # (generated, references) cosines
        clip_image = self.clip_image_embeddings(images)
        clip_i = clip_image @ clip_refs.T
        clip_t = (clip_image * self.clip_text_embeddings(prompts)).sum(dim=-1)
        return [
            {"dino": float(d), "clip_i": float(c), "clip_t": float(t)}
            for d, c, t in zip(dino.mean(dim=1), clip_i.mean(dim=1), clip_t, strict=True)
        ]


def _features(output):
    """``get_*_features`` returns a tensor (or, in newer transformers, an output with ``pooler_output``)."""
    return output if hasattr(output, "shape") else output.pooler_output


def _unavailable(key: str, name: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"{key}={name}: cannot load it ({first}); evaluation is skipped. Download it once with network "
        f"access, or point {key} at a local folder (eval.local_files_only=true to stay offline)."
    )


def try_load_scorer(models: EvalModels, batch_size: int = 16) -> ImageScorer | None:
    """An ``ImageScorer``, or None after one warning line when the models are not available."""
    try:
        return ImageScorer(models, batch_size)
    except EvalModelsUnavailable as err:
        log.warning("%s", err)
        return None
