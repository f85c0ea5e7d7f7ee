"""Scoring benchmark: DreamBooth metrics throughput, and what evaluation adds to a quickstart sweep.

1. Throughput: DINO + CLIP-I + CLIP-T of 96 pictures against 5 subject pictures with the tiny evaluation
   models (``eval=tiny``), batched (``ImageScorer`` with batch 16) against one picture at a time
   (batch 1), in images per second, in the same run; the scores of the two must agree.
2. Overhead: ``make run``'s quickstart sweep (a shortened one with ``--quick``) with evaluation on and
   off, whole-command wall time.

Nothing is asserted. Run::

    python -m bench score            # about 3 minutes
    python -m bench score --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.sweep import timed


def throughput(repeats: int, count: int) -> None:
    """Section 1."""
    import numpy as np
    from PIL import Image

    from lora_core.cache import default_cache_dir
    from lora_core.data.subject import load_subject_images
    from lora_core.embedded.drawn_subject import ensure_drawn_subject
    from lora_core.embedded.tiny_eval import ensure_tiny_clip, ensure_tiny_dino
    from lora_core.metrics import EvalModels, ImageScorer

    models = EvalModels(str(ensure_tiny_dino()), str(ensure_tiny_clip()), local_files_only=True)
    references = load_subject_images(ensure_drawn_subject(default_cache_dir()), 64)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]
    prompts = [f"a cat number {i % 12}" for i in range(count)]
    seconds: dict[int, list[float]] = {1: [], 16: []}
    scores = {}
    for _ in range(repeats):
        for batch in (16, 1):
            scorer = ImageScorer(models, batch_size=batch)
            scorer.set_references(references)
            started = time.perf_counter()
            scores[batch] = scorer.score(pictures, prompts)
            seconds[batch].append(time.perf_counter() - started)
    rate = {b: count / statistics.median(s) for b, s in seconds.items()}
    drift = max(abs(a[m] - b[m]) for a, b in zip(scores[1], scores[16], strict=True) for m in a)
    print(
        f"\nScoring throughput: {count} pictures, 5 references, tiny DINO + CLIP, {repeats} rounds (medians)"
    )
    print(f"  batched (16):  {rate[16]:8.1f} images/s")
    print(f"  one at a time: {rate[1]:8.1f} images/s")
    print(f"  ratio: {rate[16] / rate[1]:.2f}x; largest score difference between the two: {drift:.2e}")


def overhead(quick: bool) -> None:
    """Section 2."""
    extra = ["train.max_train_steps=10", "render.num_inference_steps=5"] if quick else []
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "sweeper", "-m", "experiment=quickstart", *extra]
        on = timed([*base, f"sweep.root={Path(tmp) / 'on'}"])
        off = timed([*base, "eval.enabled=false", f"sweep.root={Path(tmp) / 'off'}"])
    print(f"\nEvaluation overhead on the quickstart sweep{' (shortened)' if quick else ''}:")
    print(
        f"  eval on (tiny models): {on:6.1f} s   eval off: {off:6.1f} s   overhead {on - off:+.1f} s ({on / off - 1:+.0%})"
    )


def main(argv: list[str] | None = None) -> int:
    """Run both sections."""
    parser = argparse.ArgumentParser(prog="python -m bench score", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.count = 1, 32
    throughput(args.repeats, args.count)
    overhead(args.quick)
    return 0
