"""Real-size SDXL on the CPU: one training step and one picture with a 2.6 B-parameter UNet.

``python -m bench sdxl_cpu`` builds an SDXL-shaped pipeline with random weights (the real SDXL base
architecture, ``lora_core.embedded.tiny_model.sdxl_shaped_spec``) in bfloat16 into the cache once, then runs
what a user types, ``python -m sweeper -m model=sdxl model.path=<that folder>``, for one configuration: one
training step of the UNet and both text encoders' LoRAs with gradient checkpointing, and a grid of one
picture. It prints the build time, the sweep's wall time and the peak resident memory of its processes.
The pictures of random weights mean nothing; this is about fitting and running at real size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build(folder: Path) -> float:
    """Build the bfloat16 SDXL-shaped pipeline into ``folder`` unless it is there; returns the seconds taken."""
    import torch

    from lora_core.atomic import atomic_dir
    from lora_core.embedded.tiny_model import build_tiny_pipeline, sdxl_shaped_spec

    if (folder / "model_index.json").is_file():
        return 0.0
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # the weights are drawn in bfloat16: 7 GB, not 14
    try:
        pipe = build_tiny_pipeline(sdxl_shaped_spec())
    finally:
        torch.set_default_dtype(previous)
    with atomic_dir(folder, replace=False) as tmp:
        pipe.save_pretrained(tmp)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sdxl_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="where the model is built (default: cache)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/sdxl_cpu"), help="sweep.root of the run")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--sampling-steps", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    from lora_core.cache import default_cache_dir

    folder = args.folder or default_cache_dir() / "sdxl-shaped-bf16"
    build_seconds = build(folder)
    print(
        f"model: {folder} (built in {build_seconds:.0f} s)" if build_seconds else f"model: {folder}",
        flush=True,
    )
    command = [
        sys.executable,
        "-m",
        "sweeper",
        "-m",
        "experiment=quickstart",
        "model=sdxl",
        f"model.path={folder}",
        f"model.dtype={args.dtype}",
        f"model.resolution={args.resolution}",
        "model.device=cpu",
        "train.learning_rate=1e-4",
        "train.text_encoder_lr=1e-5",
        "train.max_train_steps=1",
        "train.gradient_checkpointing=true",
        "render.prompts=[{ph: 'a photo of {token} {class}'}]",
        "render.unet_scales=[1]",
        "render.text_scales=[1]",
        "render.guidance_scales=[5]",
        f"render.num_inference_steps={args.sampling_steps}",
        "eval.enabled=false",
        "sweep.name=sdxl_cpu",
        f"sweep.root={args.root}",
    ]
    print(" ".join(command[1:]), flush=True)
    started = time.perf_counter()
    code = subprocess.call(command, cwd=REPO)
    wall = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    run = args.root / "sdxl_cpu" / "1e-4;1e-5"
    timings = (
        json.loads((run / "run.json").read_text())["result"]["timings"]
        if (run / "run.json").is_file()
        else {}
    )
    summary = {
        "exit": code,
        "wall_seconds": round(wall, 1),
        "peak_rss_gib": round(peak_gib, 2),
        "resolution": args.resolution,
        "dtype": args.dtype,
        **{k: round(v, 1) for k, v in timings.items() if isinstance(v, int | float)},
    }
    print(json.dumps(summary, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
