"""The training's inputs, encoded once: the prompt table (embeddings of every caption) and the latent cache."""

from __future__ import annotations

from lora_core.data.order import caption_dropped, class_picture_rows, picture_indices
from lora_core.training.device import to_device


def training_prompts(settings, captions: list[str], with_class: bool, dropped: bool) -> list[str]:
    """Every prompt a training uses, in row order.

    The instance prompt, the captions, the class prompt (prior preservation), and ``""`` (a dropped caption)
    when ``dropped``.
    """
    return [
        settings.instance_prompt,
        *captions,
        *([settings.class_prompt] if with_class else []),
        *([""] if dropped else []),
    ]


class PromptTable:
    """Every prompt the training uses, tokenized once and, while the text encoders are frozen, encoded once.

    The table is keyed by the caption text itself: a picture's row is its caption's, so a changed caption
    can only ever meet its own embedding. SDXL's two text encoders are encoded together
    (``lora_core.family.encode``), with the pooled embedding its UNet also takes.

    Args:
        pipe: The pipeline (tokenizers and text encoders).
        device: The training device.
        prompts: The prompts, in row order (duplicates are dropped).
        captions: One caption per subject picture (each among ``prompts``).
        encode: Encode the prompts now (the text encoders are frozen); else on every use.
    """

    def __init__(self, pipe, device, prompts: list[str], captions: list[str], encode: bool):
        import torch

        from lora_core.family import text_encoders, tokenize

        self.encoders = [model for _, model in text_encoders(pipe)]
        self.text_encoder, self.device = self.encoders[0], device
        prompts = list(dict.fromkeys(prompts))
        self.rows = {prompt: row for row, prompt in enumerate(prompts)}
        self.picture_rows = [self.rows[c] for c in captions]
        self.token_ids = tokenize(pipe, prompts, device)
        self.ids = self.token_ids[0]
        self.embeds = self.pooled = None
        if encode:
            with torch.no_grad():
                self.embeds, self.pooled = self._encode(None)

    def embeddings(self, rows: list[int]):
        """The embeddings of the prompts at ``rows`` (through the text encoders when they train)."""
        return self.conditioning(rows)[0]

    def conditioning(self, rows: list[int]):
        """``(embeddings, pooled)`` of the prompts at ``rows``; pooled is None but for SDXL."""
        import torch

        # A list index would be copied to the device with a synchronising copy: pass a device tensor.
        index = to_device(torch.tensor(rows, dtype=torch.long), self.device)
        if self.embeds is not None:
            return self.embeds[index], None if self.pooled is None else self.pooled[index]
        return self._encode(index)

    def _encode(self, index):
        from lora_core.family import encode

        ids = self.token_ids if index is None else [part[index] for part in self.token_ids]
        return encode(self.encoders, ids)


class LatentCache:
    """VAE latent distributions of the training pictures, each encoded the first time a step draws it.

    Args:
        vae: The pipeline's VAE.
        device: The training device.
        pictures: Subject pictures, then class pictures.
        random_flip: Whether steps also draw the mirrored pictures.
    """

    def __init__(self, vae, device, pictures: list, random_flip: bool):
        self.vae, self.device, self.pictures, self.random_flip = vae, device, pictures, random_flip
        self.encoded: dict[tuple[int, int], tuple] = {}  # (flipped, picture) -> (mean, std)

    def stats(self, flips: list[int], rows: list[int]):
        """Latent mean and std of each (orientation, picture), encoding the ones no step has drawn yet.

        Each picture is encoded on its own, so its latents are the same whichever pictures a step draws
        with it and whether the run was resumed (batched convolutions may round differently).
        """
        import torch

        for key in dict.fromkeys(zip(flips, rows, strict=True)):
            if key not in self.encoded:
                self.encoded[key] = self.encode_one(self.pictures[key[1]], bool(key[0]))
        pairs = [self.encoded[key] for key in zip(flips, rows, strict=True)]
        return torch.stack([m for m, _ in pairs]), torch.stack([sd for _, sd in pairs])

    def encode_one(self, picture, flip: bool = False):
        """One picture's latent distribution (mean, std), encoded on its own."""
        import torch

        from lora_core.data.subject import to_tensor

        vae, pixels = self.vae, to_tensor(picture)[None]
        with torch.no_grad():
            dist = vae.encode((pixels.flip(-1) if flip else pixels).to(self.device, vae.dtype)).latent_dist
        return dist.mean[0], dist.std[0]

    def sample(self, rows: list[int], generator):
        """Latents of the pictures at ``rows``, scaled as the UNet expects.

        Draws from ``generator`` the flips (with ``random_flip``), then one sample of each distribution.
        """
        import torch

        n = len(rows)
        flips = torch.randint(0, 2, (n,), generator=generator).tolist() if self.random_flip else [0] * n
        mean, std = self.stats(flips, rows)
        eps = to_device(torch.randn(mean.shape, generator=generator), self.device).to(mean.dtype)
        return ((mean + std * eps) * self.vae.config.scaling_factor).float()

    @property
    def mean(self):
        """Every picture's latent mean, (orientations, pictures, C, H, W), encoding what is not yet."""
        return self._all()[0]

    @property
    def std(self):
        """Every picture's latent std, shaped as ``mean``."""
        return self._all()[1]

    def _all(self):
        orientations = (0, 1) if self.random_flip else (0,)
        n = len(self.pictures)
        mean, std = self.stats(
            [f for f in orientations for _ in range(n)], list(range(n)) * len(orientations)
        )
        return mean.unflatten(0, (len(orientations), n)), std.unflatten(0, (len(orientations), n))


class MicroBatches:
    """Draws each micro-batch: subject pictures, then as many class pictures (prior preservation).

    The pictures and dropped captions are pure functions of the step (``lora_core.data.order``); flips and
    latent samples come from the training's generator.

    Args:
        settings: The training settings (batch size, seed, caption dropout, class prompt).
        prompts: The prompt table.
        latents: The latent cache: subject pictures first, then class pictures.
        n_instance: Subject pictures.
        n_class: Class pictures (0 without prior preservation).
    """

    def __init__(self, settings, prompts: PromptTable, latents: LatentCache, n_instance: int, n_class: int):
        self.settings, self.prompts, self.latents = settings, prompts, latents
        self.n_instance, self.n_class = n_instance, n_class

    def pictures(self, micro_step: int) -> list[int]:
        """The rows of the latent cache micro-batch ``micro_step`` draws (subject, then class pictures)."""
        s = self.settings
        rows = picture_indices(micro_step, s.train_batch_size, self.n_instance, s.seed)
        if self.n_class:
            rows += class_picture_rows(micro_step, s.train_batch_size, self.n_instance, self.n_class)
        return rows

    def draw(self, micro_step: int, generator):
        """``(latents, prompt rows)`` of micro-batch ``micro_step``."""
        s = self.settings
        rows = picture_indices(micro_step, s.train_batch_size, self.n_instance, s.seed)
        dropped = caption_dropped(micro_step, len(rows), s.seed, s.caption_dropout)
        prompt_rows = [
            self.prompts.rows[""] if drop else self.prompts.picture_rows[row]
            for row, drop in zip(rows, dropped, strict=True)
        ]
        if self.n_class:
            rows += class_picture_rows(micro_step, s.train_batch_size, self.n_instance, self.n_class)
            prompt_rows += [self.prompts.rows[s.class_prompt]] * s.train_batch_size
        return self.latents.sample(rows, generator), prompt_rows
