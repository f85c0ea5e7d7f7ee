"""What the UNet is trained to predict: the noise drawn for a step, the target, the loss, the Min-SNR weights."""

from __future__ import annotations


def denoising_target(scheduler, latents, noise, timesteps):
    """The UNet's target for ``latents`` noised with ``noise`` at ``timesteps``.

    Args:
        scheduler: The noise scheduler (its ``prediction_type`` decides).
        latents: The clean latents.
        noise: The noise added.
        timesteps: The timesteps, one per sample.

    Returns:
        The velocity under ``v_prediction``, else the noise.
    """
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


class SnrWeights:
    """Min-SNR loss weights (Hang et al. 2023): ``min(SNR, gamma) / SNR``, or ``/ (SNR + 1)`` under v-prediction.

    Args:
        scheduler: The noise scheduler.
        gamma: ``train.snr_gamma``.
    """

    def __init__(self, scheduler, gamma: float):
        self.scheduler, self.gamma = scheduler, gamma
        self.table = None  # by timestep, made on first use

    def __call__(self, timesteps):
        """The weight of each sample at ``timesteps``."""
        import torch
        from diffusers.training_utils import compute_snr

        if self.table is None:
            # Once for every timestep: compute_snr copies the scheduler's table to the device on each call.
            every = torch.arange(self.scheduler.config.num_train_timesteps, device=timesteps.device)
            self.table = compute_snr(self.scheduler, every)
        snr = self.table[timesteps]
        clipped = torch.clamp(snr, max=self.gamma)
        if self.scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr


def draw_noise(latents, scheduler, noise_offset: float, generator, device):
    """The noise and timesteps of one micro-batch, drawn from the training's generator in a fixed order.

    Args:
        latents: The micro-batch's clean latents.
        scheduler: The noise scheduler (its number of training timesteps).
        noise_offset: ``train.noise_offset`` (0: none).
        generator: The training's generator (CPU), so the draws do not depend on the device.
        device: Where the tensors go.

    Returns:
        ``(noise, timesteps)`` on ``device``.
    """
    import torch

    from lora_core.training.device import to_device

    noise = torch.randn(latents.shape, generator=generator)
    if noise_offset:
        noise += noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    )
    return to_device(noise, device), to_device(timesteps, device)


def denoising_loss_of(pred, target, timesteps, snr_weights, prior_loss_weight: float | None):
    """One training's loss: the mean over its samples (Min-SNR weighted), the prior loss added.

    ``pack_losses`` for a pack of one.

    Args:
        pred: The UNet's prediction for the training's samples.
        target: ``denoising_target`` of them.
        timesteps: Their timesteps.
        snr_weights: ``SnrWeights`` or None.
        prior_loss_weight: With prior preservation, the class half's weight (the batch is subject samples,
            then as many class samples); None without.
    """
    prior = None if prior_loss_weight is None else [prior_loss_weight]
    return pack_losses(pred, target, timesteps, 1, [snr_weights], prior)[0]


def pack_losses(pred, target, timesteps, configs: int, snr_weights: list, prior_loss_weights: list | None):
    """Each configuration's ``denoising_loss_of`` for a pack's batch, in one pass over all of it.

    Args:
        pred: The UNet's prediction for the whole batch: ``configs`` equal, contiguous slices.
        target: ``denoising_target`` of it.
        timesteps: Its timesteps.
        configs: The number of slices.
        snr_weights: Each configuration's ``SnrWeights`` or None.
        prior_loss_weights: With prior preservation, each configuration's class-half weight; None without.

    Returns:
        The ``(configs,)`` losses.
    """
    import torch
    import torch.nn.functional as F

    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    per_config = per_sample.view(configs, -1)
    if any(w is not None for w in snr_weights):
        steps = timesteps.view(configs, -1)
        per_config = torch.stack(
            [
                row if w is None else row * w(t)
                for row, w, t in zip(per_config, snr_weights, steps, strict=True)
            ]
        )
    if prior_loss_weights is None:
        return per_config.mean(dim=1)
    half = per_config.shape[1] // 2
    weights = torch.tensor(prior_loss_weights, dtype=per_config.dtype, device=per_config.device)
    return per_config[:, :half].mean(dim=1) + weights * per_config[:, half:].mean(dim=1)
