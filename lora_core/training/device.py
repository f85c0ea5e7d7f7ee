"""Precision and device placement of a training."""

from __future__ import annotations

import resource

from lora_core.errors import UserInputError


def mixed_precision(unet_dtype, wanted: str, device_type: str) -> str:
    """Accelerate's ``mixed_precision`` for ``train.mixed_precision`` on a model of ``unet_dtype``.

    Args:
        unet_dtype: The UNet's torch dtype.
        wanted: ``train.mixed_precision`` (``auto`` follows the model's dtype).
        device_type: ``cuda`` or ``cpu``.

    Returns:
        ``no``, ``fp16`` or ``bf16``.

    Raises:
        UserInputError: fp16 off CUDA, or a precision other than a half-precision model's own.
    """
    import torch

    by_dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "no"}
    model_mp = by_dtype[unet_dtype]
    if wanted == "auto":
        return model_mp
    if wanted == "fp16" and device_type != "cuda":
        raise UserInputError("train.mixed_precision=fp16 needs a CUDA device; use no or bf16 on the CPU.")
    if model_mp != "no" and wanted != model_mp:
        raise UserInputError(
            f"train.mixed_precision={wanted} does not match the model's dtype {unet_dtype}; "
            f"set model.dtype to float32 or train.mixed_precision to {model_mp} (or auto)."
        )
    return wanted


def peak_memory(device) -> tuple[float, str]:
    """Peak memory of this process so far, in MiB, and what was measured.

    Returns:
        ``(MiB, "cuda_allocated")`` on a CUDA device (the peak since the last reset), else
        ``(MiB, "process_rss")``: the process's peak resident set.
    """
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_rss"


def to_device(tensor, device):
    """A step's host-made tensor (noise, timesteps, indices) on the training device, asynchronously.

    The random numbers are drawn on the CPU so that a run is the same on every device. A plain
    ``.to("cuda")`` of pageable memory waits for the GPU to drain its queue, leaving it idle between
    steps; a pinned copy does not wait (the pinned block is reused only once the copy is done: torch's
    caching host allocator records it on the stream).
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
