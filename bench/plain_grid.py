"""What users do today after training: load the pipeline and the LoRA in a fresh process, then one
``set_adapters`` and one pipeline call per cell, saving each picture. The baseline of ``bench.sweep``.

``python -m bench.plain_grid --model DIR --lora DIR --out DIR [--steps 25]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.render import PROMPTS, SCALES


def main(argv: list[str] | None = None) -> int:
    """Render the 48-cell grid the plain way."""
    parser = argparse.ArgumentParser(prog="python -m bench.plain_grid")
    parser.add_argument("--model", required=True)
    parser.add_argument("--lora", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(args.lora, adapter_name="mine")
    args.out.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(PROMPTS):
        for u in SCALES:
            for t in SCALES:
                pipe.set_adapters(["mine"], adapter_weights=[{"unet": u, "text_encoder": t}])
                image = pipe(
                    prompt,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    height=64,
                    width=64,
                    generator=torch.Generator().manual_seed(123),
                ).images[0]
                image.save(args.out / f"p{i}_{u};{t};{args.guidance}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
