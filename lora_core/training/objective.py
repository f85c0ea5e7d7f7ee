"""What the UNet is trained to predict, and the Min-SNR loss weights."""

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
