"""Our training as a person starts it, in a fresh process: import lora_core, load the pipeline, read the
subject pictures, ``train_lora``, exit. The bench times it from outside and, through the step clock, every
optimizer step inside. Usage::

    python -m bench.train_runner --model DIR --subject DIR --settings '{"rank": 4, ...}' \\
        --output-dir DIR --out clock.json
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.step_clock import StepClock


def main(argv: list[str] | None = None) -> int:
    """Train once with ``lora_core`` and write the step clock, with the trainer's own figures beside it.

    Args:
        argv: Command-line arguments (see the module docstring).

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.train_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusers Stable Diffusion folder")
    parser.add_argument("--subject", required=True, help="folder of subject pictures")
    parser.add_argument("--settings", required=True, help="TrainSettings.to_dict() as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", required=True, help="training folder")
    parser.add_argument("--out", required=True, help="JSON file for the step clock")
    args = parser.parse_args(argv)
    clock = StepClock()

    from lora_core.data.subject import load_subject_images
    from lora_core.models import ModelSource, load_pipeline
    from lora_core.settings import TrainSettings
    from lora_core.training import train_lora

    settings = TrainSettings.from_dict(json.loads(args.settings))
    source = ModelSource(path=args.model, device=args.device, dtype="float32", local_files_only=True)
    pipe = load_pipeline(source)
    images = load_subject_images(args.subject, settings.resolution, settings.center_crop)
    result = train_lora(pipe, images, settings, args.output_dir)
    clock.write(
        args.out,
        trainer_steps_per_second=result.steps_per_second,
        trainer_peak_memory_mb=result.peak_memory_mb,
        trainer_memory_kind=result.memory_kind,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
