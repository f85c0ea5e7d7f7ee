"""What differs between the model families: SD 1.x / 2.x and SDXL.

SD 1.x and 2.x have one CLIP text encoder whose last hidden state the UNet attends to (SD 2.x predicts the
velocity where its scheduler says ``v_prediction``: ``lora_core.training.objective``). SDXL has two text
encoders: the UNet attends to their penultimate hidden states side by side, and gets the second one's pooled
(projected) embedding and six "time ids" (original size, crop top-left, target size) as added conditioning,
as diffusers' ``StableDiffusionXLPipeline`` and its DreamBooth LoRA script compute them.
"""

from __future__ import annotations

# The pipelines' text encoders, in order (SDXL has both).
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
SD, SDXL = "sd", "sdxl"
FAMILY_WORDS = {SD: "an SD 1.x / 2.x", SDXL: "an SDXL"}


def family_of(pipe) -> str:
    """``sdxl`` for a pipeline with a second text encoder, ``sd`` for SD 1.x / 2.x."""
    return SDXL if getattr(pipe, "text_encoder_2", None) is not None else SD


def text_encoders(pipe) -> list[tuple[str, object]]:
    """``(component name, model)`` of each text encoder the pipeline has, in order."""
    return [(name, getattr(pipe, name)) for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None]


def tokenizers(pipe) -> list:
    """The tokenizer of each text encoder (``tokenizer``, ``tokenizer_2``), in the same order."""
    return [getattr(pipe, "tokenizer" + name[len("text_encoder") :]) for name, _ in text_encoders(pipe)]


def tokenize(pipe, prompts: list[str], device) -> list:
    """Each text encoder's token ids of ``prompts`` (padded to 77, truncated), on ``device``."""
    return [
        tok(
            prompts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        for tok in tokenizers(pipe)
    ]


def encode(encoders: list, ids: list):
    """The UNet's text conditioning of token ids: ``(embeddings, pooled)``.

    One encoder (SD 1.x / 2.x): its last hidden state, pooled None. Two (SDXL): both encoders' penultimate
    hidden states concatenated, and the second one's projected pooled embedding.
    """
    import torch

    if len(encoders) == 1:
        return encoders[0](ids[0])[0], None
    hidden, pooled = [], None
    for encoder, part in zip(encoders, ids, strict=True):
        out = encoder(part, output_hidden_states=True)
        pooled = out[0]  # the last encoder's (CLIPTextModelWithProjection: text_embeds)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def picture_time_ids(pictures: list, resolution: int):
    """SDXL's six size and crop conditioning numbers of each picture: original (h, w), crop (top, left), target.

    A picture's own come from its ``info`` (``lora_core.data.subject.fit_to_resolution`` keeps them); one
    without (a generated class picture) was drawn at ``resolution``, uncropped.

    Returns:
        A float32 CPU tensor, one row of six per picture.
    """
    import torch

    rows = [
        [
            *p.info.get("original_size", (resolution, resolution)),
            *p.info.get("crop_top_left", (0, 0)),
            resolution,
            resolution,
        ]
        for p in pictures
    ]
    return torch.tensor(rows, dtype=torch.float32)


def training_time_ids(pipe, pictures: list, resolution: int, device):
    """The time ids of a training's pictures (``picture_time_ids``) on ``device``; None for SD 1.x / 2.x."""
    return picture_time_ids(pictures, resolution).to(device) if family_of(pipe) == SDXL else None


def crop_conditioning(size: tuple[int, int], resolution: int, center_crop: bool) -> tuple[tuple, tuple]:
    """What a picture of ``size`` (w, h) resized and cropped to ``resolution`` tells SDXL about itself.

    As diffusers' SDXL DreamBooth script: the original size (h, w), and the crop's top-left corner in the
    picture resized so that its shorter side is ``resolution`` ((0, 0) when the picture is stretched).
    """
    w, h = size
    if not center_crop:
        return (h, w), (0, 0)
    scale = resolution / min(w, h)
    rh, rw = round(h * scale), round(w * scale)
    return (h, w), (max(0, round((rh - resolution) / 2)), max(0, round((rw - resolution) / 2)))
