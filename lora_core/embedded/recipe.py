"""The recipe of the embedded world model: a tiny SD-1.x pipeline, a world CLIP and an identity model.

``python -m lora_core.embedded.recipe build --out DIR`` trains, on the drawn world
(``lora_core.embedded.world``) and from nothing but a seed, in four stages that each leave a folder (a
rerun skips finished stages):

1. ``vae``: an ``AutoencoderKL`` 64 px -> 16 x 16 x 4 (mostly on 32 px crops, which cost a sixth; the
   VAE is convolutional), with its own latent ``scaling_factor`` (SD's 0.18215 is SD's VAE's).
2. ``clip``: a ``CLIPModel`` (text and vision towers) trained contrastively on the world's captions: the
   UNet's text encoder and the evaluation CLIP, as SD 1.x conditions on CLIP's text tower. Its
   tokenizer giving every world word one token (a real BPE vocabulary with merges, like SD's), the
   identifier ``ktn`` a token that no caption uses — as a rare token is in SD 1.5.
3. ``identity``: a ViT (``ViTModel``, the DINO architecture) trained so that two pictures of the same
   individual (same look, other place, pose and size) are close: the DINO metric of the world. DINO's
   self-distillation would need far more steps than this budget; an identity objective asks directly
   for what the DreamBooth paper uses DINO for (telling one individual from others of its class).
4. ``unet``: a ``UNet2DConditionModel`` with cross-attention, conditioned on the frozen CLIP text tower's
   last hidden state as SD 1.x is on CLIP's, epsilon prediction, SD 1.5's noise schedule, 10 % caption
   dropout (so classifier-free guidance works), min-SNR weighting and an EMA of the weights (saved).

The result is a regular diffusers pipeline folder (``sd/``), a transformers CLIP folder (``clip/``) and a
ViT folder (``identity/``), plus ``manifest.json`` (recipe, measurements, sha256 of every weight file).
Deterministic given the seed and the thread count. Hand-written because no library trains an SD-shaped
pipeline from scratch; every part (models, schedulers, optimizers, losses) is the libraries' own.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lora_core.atomic import atomic_dir
from lora_core.embedded import world
from lora_core.embedded.tiny_model import byte_level_vocab, sd15_scheduler

log = logging.getLogger(__name__)

RARE_TOKENS = ("ktn", "sks", "zwx", "pll", "vbn")  # one token each, in no caption: DreamBooth identifiers
_LONG_TAIL = 800  # more never-seen words: the vocabulary's rare end, as SD's 49k-token CLIP vocabulary has
_NORM = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


@dataclass(frozen=True)
class Recipe:
    """Every number of the recipe; ``scaled(f)`` shortens all stages (tests run a few steps)."""

    seed: int = 0
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_crop_steps: int = 3000
    vae_full_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_eval_pictures: int = 256  # fresh pictures for the latent scaling factor and the held-out PSNR
    width: int = 128  # text hidden size = cross-attention width = vision width
    text_layers: int = 4
    clip_steps: int = 4000
    clip_batch: int = 128
    clip_lr: float = 1e-3
    clip_pool: int = 30000  # pictures drawn once (drawing in the loop doubles a step), mirrored at random
    clip_object_only: float = 0.7  # share of captions that name only the object (see train_clip)
    identity_steps: int = 2400
    identity_batch: int = 64  # individuals per step, two pictures each
    identity_lr: float = 1e-3
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_steps: int = 10000
    unet_batch: int = 32
    unet_lr: float = 6e-4
    unet_pool: int = 40000  # pictures encoded once; captions are re-worded every time they are drawn
    caption_dropout: float = 0.1
    ema_decay: float = 0.9995
    eval_every: int = 2500
    eval_inference_steps: int = 25

    def scaled(self, factor: float) -> Recipe:
        """The same recipe with every step count (and the picture pools) multiplied by ``factor``."""
        steps = {k: max(2, int(v * factor)) for k, v in asdict(self).items() if k.endswith("_steps")}
        pools = {k: max(self.unet_batch, int(getattr(self, k) * factor)) for k in ("unet_pool", "clip_pool")}
        evaluated = max(16, int(self.vae_eval_pictures * factor))
        return replace(self, **steps, **pools, eval_every=steps["unet_steps"], vae_eval_pictures=evaluated)


# ---------------------------------------------------------------------------------------------- data


def world_tokenizer():
    """A CLIP tokenizer whose vocabulary has one token per world word and per ``RARE_TOKENS`` entry.

    Like CLIP's, the vocabulary is ordered by merge rank: bytes, then the world's words (the frequent
    ones), then a long tail of 3-letter words no caption uses, ``RARE_TOKENS`` last. So the identifier
    tools (``lora_core.identifiers``) find the rare end where they look for it on SD 1.5. Bytes stay in
    the vocabulary, so every string still encodes (unknown words as characters).
    """
    from transformers import CLIPTokenizer

    vocab = dict(byte_level_vocab())
    merges: list[tuple[str, str]] = []
    for word in [*world.vocabulary_words(), *_long_tail(), *RARE_TOKENS]:
        # Join the pieces the merges so far make of the word, left to right. A merge added later ranks
        # lower, so it never changes how an earlier word splits.
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _long_tail() -> list[str]:
    """``_LONG_TAIL`` made-up 3-letter words, none a world word or a ``RARE_TOKENS`` entry (fixed seed)."""
    rng, taken = random.Random("long-tail"), {*world.vocabulary_words(), *RARE_TOKENS}
    words: list[str] = []
    while len(words) < _LONG_TAIL:
        word = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(3))  # no vowel: no English word
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word as CLIP's tokenizer does it: the best-ranked pair merges first."""
    rank = {m: i for i, m in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get(p, math.inf), i) for i, p in enumerate(itertools.pairwise(pieces))]
        best, i = min(pairs)
        if best == math.inf:
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def world_batch(rng: random.Random, n: int, exclude=frozenset()):
    """``n`` random world pictures as a (n, 3, 64, 64) tensor in [-1, 1], with their scenes."""
    import numpy as np
    import torch

    scenes = [world.sample_scene(rng, exclude) for _ in range(n)]
    pixels = np.stack([np.asarray(world.draw_scene(s, rng)) for s in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1), scenes


def _to_tensor(images):
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 127.5 - 1


def _schedule(opt, warmup: int, total: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, warmup, total)


def _progress(stage: str, step: int, total: int, loss: float, started: float, every: int = 100) -> None:
    if step % every == 0 or step == total:
        rate = (time.time() - started) / step
        log.info(
            "%s %d/%d loss %.4f (%.2f s/step, %.0f s left)",
            stage,
            step,
            total,
            loss,
            rate,
            rate * (total - step),
        )


# ---------------------------------------------------------------------------------------------- stages


def train_vae(recipe: Recipe, out: Path) -> dict:
    """Stage 1: the autoencoder, then its latent scaling factor and held-out PSNR."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(recipe.seed)
    rng = random.Random(f"vae-{recipe.seed}")
    n = len(recipe.vae_channels)
    vae = AutoencoderKL(
        block_out_channels=recipe.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=world.SIZE,
    )
    opt = torch.optim.AdamW(vae.parameters(), recipe.vae_lr, weight_decay=0.0)
    total = recipe.vae_crop_steps + recipe.vae_full_steps
    sched, started = _schedule(opt, 100, total), time.time()
    for step in range(1, total + 1):
        x, _ = world_batch(rng, recipe.vae_batch)
        if step <= recipe.vae_crop_steps:  # a random 32 px crop of each picture
            i, j = rng.randrange(33), rng.randrange(33)
            x = x[:, :, i : i + 32, j : j + 32]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = (recon - x).pow(2).mean() + 1e-6 * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        _progress("vae", step, total, loss.item(), started)
    vae.eval()
    with torch.no_grad():
        x, _ = world_batch(random.Random(f"vae-eval-{recipe.seed}"), recipe.vae_eval_pictures)
        vae.register_to_config(scaling_factor=float(1.0 / vae.encode(x).latent_dist.mode().std()))
    vae.save_pretrained(out)
    return {
        "psnr_db": vae_psnr(vae, recipe.seed, recipe.vae_eval_pictures),
        "scaling_factor": vae.config.scaling_factor,
        "steps": total,
    }


def vae_psnr(vae, seed: int, n: int = 256) -> float:
    """Mean reconstruction PSNR (dB, 2 decimals) of ``n`` fresh world pictures through ``vae``'s latent mode."""
    import torch

    with torch.no_grad():
        x, _ = world_batch(random.Random(f"vae-eval-{seed}"), n)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean(dim=(1, 2, 3))
    return round(float((10 * torch.log10(1.0 / mse)).mean()), 2)


def _clip_config(recipe: Recipe, tokenizer):
    from transformers import CLIPConfig

    w = recipe.width
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": w,
        "intermediate_size": 4 * w,
        "num_hidden_layers": recipe.text_layers,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "image_size": world.SIZE,
        "patch_size": 8,
        "hidden_size": w,
        "intermediate_size": 4 * w,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=w)


def train_clip(recipe: Recipe, out: Path) -> dict:
    """Stage 2: the world CLIP, contrastive on a pool of pictures drawn once, with their captions.

    One CLIP serves twice, as in SD 1.x: its text tower is what the UNet conditions on, and the whole model
    is the evaluation CLIP (CLIP-I, CLIP-T, the prompt-following reading). Colour and place are global
    features a CLIP learns first; shapes come later. ``clip_object_only`` of the captions name only the
    object ("a photo of a dog"), which makes the object the one thing those pictures can be told apart
    by, and the loss (``_clip_loss``) lets the many pictures of one such caption all be its positives. A
    text tower that does not tell the objects apart leaves the UNet nothing to draw them from.
    """
    import torch
    from transformers import CLIPModel

    torch.manual_seed(recipe.seed + 1)
    tokenizer = world_tokenizer()
    model = CLIPModel(_clip_config(recipe, tokenizer))
    rng = random.Random(f"clip-{recipe.seed}")
    pool, scenes = _picture_pool(rng, recipe.clip_pool, world.held_out_combinations(recipe.seed))

    def caption(scene, rng):
        return (
            f"a photo of a {scene.obj}"
            if rng.random() < recipe.clip_object_only
            else world.caption(scene, rng)
        )

    opt = torch.optim.AdamW(model.parameters(), recipe.clip_lr, weight_decay=0.05)
    sched, started = _schedule(opt, 200, recipe.clip_steps), time.time()
    real = _real_pictures(recipe.seed, per_triple=3)
    model.train()
    for step in range(1, recipe.clip_steps + 1):
        idx = [rng.randrange(len(scenes)) for _ in range(recipe.clip_batch)]
        x = pool[idx].float().div(127.5).sub(1)
        if rng.random() < 0.5:
            x = x.flip(3)  # no caption says left or right
        captions = [caption(scenes[i], rng) for i in idx]
        loss = _clip_loss(model, tokenizer(captions, padding=True, return_tensors="pt"), x, captions)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        _progress("clip", step, recipe.clip_steps, loss.item(), started)
        if step % recipe.eval_every == 0 and step < recipe.clip_steps:
            model.eval()
            log.info(
                "clip %d: zero-shot on held-out pictures %s",
                step,
                zero_shot_accuracy(model, tokenizer, *real),
            )
            model.train()
    model.eval()
    return {"steps": recipe.clip_steps, **_save_clip(model, tokenizer, out, real)}


def _picture_pool(rng: random.Random, n: int, held_out: frozenset):
    """``n`` world pictures (none of ``held_out``) as a uint8 (n, 3, 64, 64) tensor, and their scenes."""
    import torch

    chunks, scenes = [], []
    for start in range(0, n, 500):
        x, batch = world_batch(rng, min(500, n - start), held_out)
        chunks.append(x.add(1).mul(127.5).round().to(torch.uint8))
        scenes += batch
    return torch.cat(chunks), scenes


def _clip_loss(model, tokens, pixels, captions: list[str]):
    """CLIP's symmetric loss where pictures that share a caption are all positives of it.

    With short captions ("a photo of a cat") a batch holds many pictures of one caption; CLIP's own loss
    would push each away from the others' identical captions. Here each distinct caption is one class:
    picture -> caption is a cross-entropy over the batch's distinct captions, caption -> picture a
    cross-entropy against the uniform distribution over its pictures.
    """
    import torch
    import torch.nn.functional as F

    distinct = sorted(set(captions))
    index = torch.tensor([distinct.index(c) for c in captions])
    first = [captions.index(c) for c in distinct]
    t = F.normalize(
        _features(
            model.get_text_features(
                input_ids=tokens.input_ids[first], attention_mask=tokens.attention_mask[first]
            )
        ),
        dim=-1,
    )
    v = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
    logits = model.logit_scale.exp() * v @ t.T  # (pictures, distinct captions)
    positives = F.one_hot(index, len(distinct)).float().T  # (captions, pictures)
    to_text = F.cross_entropy(logits, index)
    to_image = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (to_text + to_image) / 2


def _save_clip(model, tokenizer, out: Path, real: tuple) -> dict:
    """Save the CLIP with its tokenizer and processor; its zero-shot reading of ``real`` (``_real_pictures``)."""
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(
        size={"shortest_edge": world.SIZE},
        crop_size={"height": world.SIZE, "width": world.SIZE},
        image_mean=_NORM[0],
        image_std=_NORM[1],
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return {"zero_shot_on_world_pictures": zero_shot_accuracy(model, tokenizer, *real)}


def train_identity(recipe: Recipe, out: Path) -> dict:
    """Stage 3: a ViT whose CLS embedding puts pictures of one individual together (InfoNCE on pairs)."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(recipe.seed + 2)
    rng = random.Random(f"identity-{recipe.seed}")
    w = recipe.width
    vit = ViTModel(
        ViTConfig(
            image_size=world.SIZE,
            patch_size=8,
            hidden_size=w,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=4 * w,
        ),
        add_pooling_layer=False,
    )
    head = torch.nn.Sequential(torch.nn.Linear(w, w), torch.nn.GELU(), torch.nn.Linear(w, w))
    params = [*vit.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, recipe.identity_lr, weight_decay=0.05)
    sched, started = _schedule(opt, 100, recipe.identity_steps), time.time()
    n = recipe.identity_batch
    for step in range(1, recipe.identity_steps + 1):
        a, b = _identity_pairs(rng, n)
        z = torch.nn.functional.normalize(
            head(vit(pixel_values=torch.cat([a, b])).last_hidden_state[:, 0]), dim=-1
        )
        logits = z[:n] @ z[n:].T / 0.1
        target = torch.arange(n)
        loss = (
            torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        _progress("identity", step, recipe.identity_steps, loss.item(), started)
    vit.eval()
    vit.save_pretrained(out)
    ViTImageProcessorPil(
        size={"height": world.SIZE, "width": world.SIZE}, image_mean=_NORM[0], image_std=_NORM[1]
    ).save_pretrained(out)
    return {"steps": recipe.identity_steps, "retrieval_top1": identity_retrieval(vit, recipe.seed)}


def _identity_pairs(rng: random.Random, n: int):
    """Two pictures of each of ``n`` individuals: same look, other place, size, pose and position."""
    a, b = [], []
    for _ in range(n):
        scene = world.sample_scene(rng)
        a.append(world.draw_scene(scene, rng))
        other = replace(scene, place=rng.choice(list(world.PLACES)), size=rng.choice(("", "small", "big")))
        b.append(world.draw_scene(other, rng))
    return _to_tensor(a), _to_tensor(b)


def identity_retrieval(vit, seed: int, n: int = 200) -> float:
    """Share of ``n`` individuals whose second picture's nearest CLS embedding is its first picture."""
    import torch

    a, b = _identity_pairs(random.Random(f"identity-eval-{seed}"), n)
    with torch.no_grad():
        za = torch.nn.functional.normalize(vit(pixel_values=a).last_hidden_state[:, 0], dim=-1)
        zb = torch.nn.functional.normalize(vit(pixel_values=b).last_hidden_state[:, 0], dim=-1)
    return round(float(((zb @ za.T).argmax(dim=1) == torch.arange(n)).float().mean()), 3)


def _text_embeddings(text_model, tokenizer, captions: list[str]):
    tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return text_model(tokens.input_ids).last_hidden_state


def train_unet(recipe: Recipe, out: Path, vae_dir: Path, clip_dir: Path) -> dict:
    """Stage 4: the UNet, on a pool of pictures encoded once by the trained VAE, text from the frozen CLIP."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    torch.manual_seed(recipe.seed + 3)
    rng = random.Random(f"unet-{recipe.seed}")
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    text_model, tokenizer = _text_encoder(clip_dir), CLIPTokenizer.from_pretrained(clip_dir)
    latents, scenes = _encode_pool(vae, recipe, rng)
    unet = _make_unet(recipe)
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_sched = _noise_scheduler()
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    opt = torch.optim.AdamW(unet.parameters(), recipe.unet_lr, weight_decay=0.01)
    sched, started, history = _schedule(opt, 200, recipe.unet_steps), time.time(), []
    for step in range(1, recipe.unet_steps + 1):
        idx = [rng.randrange(len(scenes)) for _ in range(recipe.unet_batch)]
        words = ["" if rng.random() < recipe.caption_dropout else world.caption(scenes[i], rng) for i in idx]
        with torch.no_grad():
            cond = _text_embeddings(text_model, tokenizer, words)
        z0 = latents[idx]
        noise = torch.randn_like(z0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),))
        pred = unet(noise_sched.add_noise(z0, noise, t), t, cond).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 (Hang et al. 2023): faster convergence
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        _progress("unet", step, recipe.unet_steps, loss.item(), started)
        if step % recipe.eval_every == 0 or step == recipe.unet_steps:
            pipe = assemble_pipeline(ema, vae, text_model, tokenizer)
            measured = prompt_following(pipe, clip_dir, recipe.seed, steps=recipe.eval_inference_steps)
            history.append({"step": step, **measured})
            log.info("unet step %d: %s", step, history[-1])
            ema.save_pretrained(out)  # a usable model at every evaluation, not only at the end
    ema.save_pretrained(out)
    return {"steps": recipe.unet_steps, "history": history, **history[-1]}


def _text_encoder(clip_dir: Path):
    """The CLIP text tower as a ``CLIPTextModel`` (the class SD 1.x pipelines hold)."""
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(clip_dir).eval().requires_grad_(False)


def _make_unet(recipe: Recipe):
    from diffusers import UNet2DConditionModel

    n = len(recipe.unet_channels) - 1
    return UNet2DConditionModel(
        sample_size=world.SIZE // 4,
        block_out_channels=recipe.unet_channels,
        layers_per_block=1,
        cross_attention_dim=recipe.width,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D",) * n + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * n,
        norm_num_groups=16,
    )


def _noise_scheduler():
    """SD 1.5's training noise schedule; ``clip_sample=False`` (clipping in latent space ruins sampling)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
    )


def _encode_pool(vae, recipe: Recipe, rng: random.Random):
    import torch

    held_out = world.held_out_combinations(recipe.seed)
    chunks, scenes = [], []
    with torch.no_grad():
        for start in range(0, recipe.unet_pool, 256):
            x, batch = world_batch(rng, min(256, recipe.unet_pool - start), held_out)
            chunks.append(vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
            scenes += batch
    return torch.cat(chunks), scenes


def assemble_pipeline(unet, vae, text_encoder, tokenizer):
    """A ``StableDiffusionPipeline`` of the world parts, with SD 1.5's inference scheduler (PNDM)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- measurements


def _real_pictures(seed: int, per_triple: int = 1):
    """World pictures of every held-out (object, colour, place), drawn (the ceiling of prompt following)."""
    rng = random.Random(f"real-{seed}")
    triples = sorted(world.held_out_combinations(seed))
    images = [
        world.draw_scene(world.Scene(*t, individual=rng.randrange(2**31)), rng)
        for t in triples
        for _ in range(per_triple)
    ]
    return images, [t for t in triples for _ in range(per_triple)]


def zero_shot_read(clip, tokenizer, images) -> list[tuple[str, str, str]]:
    """The world CLIP's reading of each picture: the (object, colour, place) of its best-matching caption.

    Each picture is matched against every full caption ``a <colour> <object> <place>``, so object, colour
    and place are chosen jointly and no partial prompt is needed.
    """
    import torch

    combos = [(o, c, p) for o in world.OBJECTS for c in world.COLOURS for p in world.PLACES]
    texts = [world.caption(world.Scene(*t)) for t in combos]
    with torch.no_grad():
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        t = torch.nn.functional.normalize(_features(clip.get_text_features(**tokens)), dim=-1)
        pixels = _to_tensor(images)  # the processor's normalisation (mean 0.5, std 0.5) at the model's size
        v = torch.nn.functional.normalize(_features(clip.get_image_features(pixel_values=pixels)), dim=-1)
    return [combos[i] for i in (v @ t.T).argmax(dim=1).tolist()]


def zero_shot_accuracy(clip, tokenizer, images, truths) -> dict:
    """Share of ``images`` whose ``zero_shot_read`` is right on object, colour and place."""
    read = zero_shot_read(clip, tokenizer, images)
    return {
        part: round(sum(b[k] == r[k] for b, r in zip(read, truths, strict=True)) / len(truths), 3)
        for k, part in enumerate(("object", "colour", "place"))
    }


def _features(output):
    from lora_core.metrics import _features as projected

    return projected(output)


def prompt_following(pipe, clip_dir: Path, seed: int, guidance: float = 4.0, steps: int = 25) -> dict:
    """Generate every held-out caption once and read the pictures back with the world CLIP."""
    import torch
    from diffusers import DDIMScheduler
    from transformers import CLIPModel, CLIPTokenizer

    triples = sorted(world.held_out_combinations(seed))
    captions = [world.caption(world.Scene(*t)) for t in triples]
    old = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(old.config)  # clip_sample false, from the config
    generator = torch.Generator().manual_seed(seed)
    images = pipe(
        captions,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        height=world.SIZE,
        width=world.SIZE,
    ).images
    pipe.scheduler = old
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    return zero_shot_accuracy(clip, CLIPTokenizer.from_pretrained(clip_dir), images, triples)


# ---------------------------------------------------------------------------------------------- build


STAGES = ("vae", "clip", "identity", "unet")


def build(out: Path, recipe: Recipe, stages: tuple[str, ...] = STAGES) -> dict:
    """Run the recipe's stages into ``out`` (finished stages are kept) and write ``sd/`` and the manifest.

    Args:
        out: Folder of the world model (``sd/``, ``clip/``, ``identity/``, ``manifest.json``).
        recipe: The numbers.
        stages: Stages to run when their folder is missing.

    Returns:
        The manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    work = out / "stages"
    report_path = out / "recipe_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    steps = {
        "vae": lambda d: train_vae(recipe, d),
        "clip": lambda d: train_clip(recipe, d),
        "identity": lambda d: train_identity(recipe, d),
        "unet": lambda d: train_unet(recipe, d, work / "vae", work / "clip"),
    }
    for stage in stages:
        if (work / stage / "config.json").is_file():
            continue
        log.info("stage %s", stage)
        started = time.time()
        with atomic_dir(work / stage) as tmp:
            report[stage] = {**steps[stage](tmp), "seconds": round(time.time() - started)}
        report_path.write_text(json.dumps(report, indent=2))
    return assemble(out, recipe, report)


def _pipeline_parts(work: Path) -> tuple:
    """(UNet, VAE, text encoder, tokenizer) of the finished stages, in ``assemble_pipeline``'s order."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    return (
        UNet2DConditionModel.from_pretrained(work / "unet"),
        AutoencoderKL.from_pretrained(work / "vae"),
        _text_encoder(work / "clip"),
        CLIPTokenizer.from_pretrained(work / "clip"),
    )


def assemble(out: Path, recipe: Recipe, report: dict) -> dict:
    """Gather the stages into the shipped layout and write ``manifest.json`` with every file's sha256."""
    from transformers import CLIPModel, ViTModel

    work = out / "stages"
    with atomic_dir(out / "sd") as tmp:
        assemble_pipeline(*_pipeline_parts(work)).save_pretrained(tmp)
        # diffusers records where each part was loaded from (the build's folder): not part of the model
        for config in tmp.glob("*/config.json"):
            saved = json.loads(config.read_text())
            if saved.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    parts = (
        ("clip", CLIPModel, work / "clip", {}),
        ("identity", ViTModel, work / "identity", {"add_pooling_layer": False}),
    )
    for name, cls, source, options in parts:  # (a ViT pooler would be freshly random: other bytes)
        with atomic_dir(out / name) as tmp:
            cls.from_pretrained(source, **options).save_pretrained(tmp)
            for extra in [*source.glob("*.json"), *source.glob("*.txt")]:
                if extra.name != "config.json":
                    (tmp / extra.name).write_bytes(extra.read_bytes())
    files = sorted(p for part in ("sd", "clip", "identity") for p in (out / part).rglob("*") if p.is_file())
    manifest = {
        "recipe": asdict(recipe),
        "report": report,
        "files": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m lora_core.embedded.recipe build --out DIR [--seed N] [--scale F] [--stages ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lora_core.embedded.recipe", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the world model (about 2 hours on 2 CPU cores at --scale 1)")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scale", type=float, default=1.0, help="multiply every step count (tests: 0.002)")
    b.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = Recipe(seed=args.seed)
    if not math.isclose(args.scale, 1.0):
        recipe = recipe.scaled(args.scale)
    manifest = build(args.out, recipe, tuple(args.stages))
    print(json.dumps(manifest["report"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
