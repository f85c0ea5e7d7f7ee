"""The validation loss (denoising loss on fixed picture, timestep and noise triples) and ``denoising_loss``.

``denoising_loss`` is the same measure for any pipeline on any pictures.
"""

from __future__ import annotations

from lora_core.family import picture_time_ids
from lora_core.training.objective import denoising_target


class ValidationSet:
    """The fixed (picture, timestep, noise) triples of the validation loss, drawn once.

    They come from a generator of their own, so measuring never moves the training's random state; the
    timesteps are spread evenly over the schedule so each measurement weighs every noise level alike.

    Args:
        settings: The training settings (``seed``, ``validation_samples``).
        latents: The training's ``LatentCache``.
        scheduler: The training's noise scheduler.
        n_instance: Number of subject pictures (first in the cache).
        picture_rows: Each subject picture's row in the prompt table.
        images: Held-out pictures, scored under the instance prompt (row 0); None scores the subject
            pictures under their own captions.
    """

    def __init__(self, settings, latents, scheduler, n_instance: int, picture_rows: list[int], images=None):
        import torch

        if images:
            pairs = [latents.encode_one(picture) for picture in images]
            mean, std = torch.stack([m for m, _ in pairs]), torch.stack([sd for _, sd in pairs])
        else:
            mean, std = latents.mean[0, :n_instance], latents.std[0, :n_instance]
        device = latents.device
        gen = torch.Generator("cpu").manual_seed(settings.seed + 7_919)
        rows = [k % mean.shape[0] for k in range(settings.validation_samples)]
        eps = torch.randn(mean[rows].shape, generator=gen).to(device, mean.dtype)
        self.latents = ((mean[rows] + std[rows] * eps) * latents.vae.config.scaling_factor).float()
        total = scheduler.config.num_train_timesteps
        self.timesteps = torch.tensor([int((k + 0.5) * total / len(rows)) for k in range(len(rows))]).to(
            device
        )
        self.noise = torch.randn(self.latents.shape, generator=gen).to(device)
        self.prompts = [0] * len(rows) if images else [picture_rows[r] for r in rows]
        self.scheduler = scheduler
        self.sources = rows  # each triple's picture: a held-out one, else a subject picture
        # SDXL's size and crop conditioning of the held-out pictures (the subject's are the training's)
        self.held_out = picture_time_ids(images, settings.resolution) if images else None

    def loss(self, unet, unet_dtype, prompts, time_ids=None) -> float:
        """Denoising loss of ``unet`` (as it is: the caller holds the weights and modes) on the triples.

        Args:
            unet: The UNet.
            unet_dtype: Its dtype.
            prompts: The training's ``PromptTable``.
            time_ids: SDXL's time ids of the training pictures (``recipe.picture_time_ids``); a validation
                triple takes its picture's (held-out pictures: the first training picture's). None: SD.

        Returns:
            The mean squared error of the predicted noise (or velocity), without loss weighting.
        """
        import torch
        import torch.nn.functional as F

        latents, noise, timesteps = self.latents, self.noise, self.timesteps
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = denoising_target(self.scheduler, latents, noise, timesteps)
        total = 0.0
        for rows in torch.arange(latents.shape[0]).split(8):
            embeds, pooled = prompts.conditioning([self.prompts[r] for r in rows.tolist()])
            added = None
            if time_ids is not None:
                table = time_ids if self.held_out is None else self.held_out.to(time_ids.device)
                sources = [self.sources[r] for r in rows.tolist()]
                added = {"text_embeds": pooled.to(unet_dtype), "time_ids": table[sources].to(unet_dtype)}
            pred = unet(
                noisy[rows].to(unet_dtype), timesteps[rows], embeds.to(unet_dtype), added_cond_kwargs=added
            ).sample
            total = total + F.mse_loss(pred.float(), target[rows].float(), reduction="sum")
        return (total / target.numel()).item()


def denoising_loss(pipe, images: list, prompt: str, seed: int = 0, samples_per_image: int = 4) -> float:
    """Mean denoising loss of ``pipe`` on ``images`` under fixed noise and timesteps.

    The same seed gives the same noise, timesteps and latent samples, so two calls compare models, not
    luck: the loss before and after training tells whether training fitted the pictures.

    Args:
        pipe: A pipeline (any adapters active are used).
        images: Pictures at the training resolution.
        prompt: The prompt the pictures are scored under.
        seed: Seed of the noise and timesteps.
        samples_per_image: (noise, timestep) draws per picture.

    Returns:
        The mean squared error of the predicted noise (or velocity).
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from lora_core.data.subject import to_tensor

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    gen = torch.Generator("cpu").manual_seed(seed)
    ids = pipe.tokenizer(
        [prompt],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    with torch.no_grad():
        embeds = pipe.text_encoder(ids)[0]
        pixels = torch.stack([to_tensor(img) for img in images]).repeat(samples_per_image, 1, 1, 1)
        dist = pipe.vae.encode(pixels.to(device, dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=gen).to(device, dtype)
        latents = (dist.mean + dist.std * eps) * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device, dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(
            device
        )
        pred = pipe.unet(
            scheduler.add_noise(latents, noise, t), t, embeds.expand(latents.shape[0], -1, -1)
        ).sample
        target = denoising_target(scheduler, latents, noise, t)
        return F.mse_loss(pred.float(), target.float()).item()
