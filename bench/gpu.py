"""The prepared device check: real-size training, resume, grid and a whole sweep, in one call.

``python -m bench gpu [--out DIR]`` on a machine with CUDA (about 5 minutes on one H100; see
``docs/gpu_check.md`` for the wheels to carry where diffusers, Hydra, OmegaConf or MLflow are missing):

1. **train** — an SD-1.5-shaped model with random weights (built from config on the machine, no
   download), 512 px, rank 16, fp16 mixed precision with fp32 LoRA weights, text encoder frozen; batch 1
   and 4, gradient checkpointing off and on: s/step (median step after the warm-up) and peak GPU memory
   of ``lora_core.train_lora``, against the project's compute floor (``bench.train_floor``: forward,
   backward, clipping and AdamW on pre-made tensors with the same dtype policy) measured in the same call.
2. **resume** — N steps straight against N/2 steps, a checkpoint and N/2 more: the largest difference
   between the two LoRAs' weights (fp16 compute: equal within the stated tolerance, not bit for bit).
3. **grid** — the 48-cell grid (3 prompts x 4 UNet scales x 4 text scales) at 512 px, 25 steps: images/s
   of ``GridRenderer`` against the plain ``set_adapters`` loop, and the largest pixel difference.
4. **sweep** — ``python -m sweeper -m`` on that model, two learning rates, MLflow on SQLite: ends green.
5. **pack** — packs of 1, 4, 8, 16 configurations (``lora_core.packs``, fp16 base on the GPU: each
   configuration with its own gradient scaler) against one configuration alone (``train_lora``): s per
   configuration-step, the ratio, and peak GPU memory per pack size.

``--tiny`` runs the same code on the tiny model at 64 px with a few steps: the CPU path the tests run, so
the check cannot rot between GPU sessions. Results: ``summary.json`` and ``table.md`` in ``--out``
(default ``$OUT`` where set, else ``bench/results/gpu``). Nothing is asserted here; the figures go to
``docs/gpu_check.md`` with the card named.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Size:
    """How big the check is: real (the GPU) or tiny (the CPU test); ``packs``: the pack section's sizes."""

    resolution: int
    rank: int
    batches: tuple[int, ...]
    warmup: int
    steps: int
    resume_steps: int
    grid_steps: int
    sweep_steps: int
    packs: tuple[int, ...] = (1, 4, 8, 16)
    grid_cells: int = 48  # the grid section's cells (bench.render's 48-cell grid, or its first prompt's)
    sdxl_resolution: int = 1024  # the SDXL section's (SDXL's own resolution; the tiny SDXL model's 64 px)


REAL = Size(
    resolution=512,
    rank=16,
    batches=(1, 4),
    warmup=3,
    steps=20,
    resume_steps=20,
    grid_steps=25,
    sweep_steps=20,
)
TINY = Size(
    resolution=64,
    rank=4,
    batches=(2,),  # one batch size, not 1: the reference must get the batch flag it asks for
    warmup=1,
    steps=3,
    resume_steps=4,
    grid_steps=2,
    sweep_steps=4,
    packs=(1, 2),
    grid_cells=16,
    sdxl_resolution=64,
)


def _settings(size: Size, **values):
    from lora_core.settings import TrainSettings

    base = dict(
        instance_prompt="a photo of ktn cat",
        resolution=size.resolution,
        learning_rate=1e-4,
        text_encoder_lr=0.0,
        rank=size.rank,
        seed=0,
        progress_bar=False,
        log_every=10,
    )
    settings = TrainSettings(**(base | values))
    settings.validate()
    return settings


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _median_step(step_ends: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in itertools.pairwise(step_ends)]
    return statistics.median(gaps[warmup:] or gaps)


def train_section(pipe, model_dir: Path, images, size: Size, device: str, work: Path) -> list[dict]:
    """Ours and the floor, for each batch size, with gradient checkpointing off and on."""
    from bench.step_clock import StepClock
    from bench.train_floor import make_step
    from lora_core.training import train_lora

    half = device.startswith("cuda")
    rows = []
    for batch, checkpointing, settings in _training_settings(size):
        clock = StepClock()
        _reset_peak()
        train_lora(pipe, images, settings, work / f"train-b{batch}-gc{int(checkpointing)}")
        ours, ours_mb = _median_step(clock.step_ends, size.warmup), _peak_mb()
        clock.step_ends.clear()
        _reset_peak()
        step = make_step(str(model_dir), settings.to_dict(), device, half=half)
        for _ in range(size.warmup + size.steps + 1):
            step()
        _sync()
        floor, floor_mb = _median_step(clock.step_ends, size.warmup), _peak_mb()
        del step
        rows.append(
            {
                "batch": batch,
                "gradient_checkpointing": checkpointing,
                "ours_s_per_step": ours,
                "floor_s_per_step": floor,
                "ratio": ours / floor,
                "ours_peak_mb": ours_mb,
                "floor_peak_mb": floor_mb,
            }
        )
        print(
            f"  batch {batch}, checkpointing {'on ' if checkpointing else 'off'}: ours {ours:.4f} s/step, "
            f"floor {floor:.4f} ({ours / floor:.2f}x), peak {_fmt_mb(ours_mb)}",
            flush=True,
        )
    return rows


def pack_section(model_dir: Path, images, size: Size, device: str, work: Path) -> dict:
    """Seconds per configuration-step and peak memory of each pack size, against one configuration alone."""
    from bench.step_clock import StepClock
    from lora_core.models import ModelSource, load_pipeline
    from lora_core.packs import train_pack
    from lora_core.training import train_lora

    pipe = load_pipeline(ModelSource(path=str(model_dir), device=device))  # fp16 on CUDA, as users train
    steps = size.warmup + size.steps + 1
    configs = [
        _settings(size, max_train_steps=steps, learning_rate=1e-4 * (1 + k), seed=k)
        for k in range(max(size.packs))
    ]
    clock = StepClock()
    _reset_peak()
    train_lora(pipe, images, configs[0], work / "pack-alone")
    alone, alone_mb = _median_step(clock.step_ends, size.warmup), _peak_mb()
    rows = []
    for n in size.packs:
        ends: list[float] = []
        _reset_peak()
        train_pack(
            pipe,
            images,
            configs[:n],
            [work / f"pack-{n}" / str(k) for k in range(n)],
            on_step=lambda k, record, ends=ends: ends.append(time.perf_counter()) if k == 0 else None,
        )
        per_config = _median_step(ends, size.warmup) / n
        rows.append(
            {"size": n, "s_per_config_step": per_config, "ratio": per_config / alone, "peak_mb": _peak_mb()}
        )
        print(
            f"  pack {n}: {per_config:.4f} s per configuration-step ({per_config / alone:.3f}x alone), "
            f"peak {_fmt_mb(rows[-1]['peak_mb'])}",
            flush=True,
        )
    return {
        "alone_s_per_step": alone,
        "alone_peak_mb": alone_mb,
        "packs": rows,
        "dtype": str(pipe.unet.dtype),
    }


def _training_settings(size: Size):
    """``(batch, checkpointing, settings)`` of every training setting the check times."""
    for batch in size.batches:
        for checkpointing in (False, True):
            yield (
                batch,
                checkpointing,
                _settings(
                    size,
                    train_batch_size=batch,
                    gradient_checkpointing=checkpointing,
                    max_train_steps=size.warmup + size.steps + 1,
                ),
            )


def reference_section(
    model_dir: Path, subject_dir: Path, size: Size, device: str, work: Path, script: Path, python: str
) -> list[dict]:
    """diffusers' reference trainer on the same model, pictures and settings, in a process per setting.

    ``script`` is ``examples/dreambooth/train_dreambooth_lora.py`` (carried: it is not in the diffusers
    wheel), run under ``bench.step_clock`` by ``bench.child.run_child`` with the flags ``bench.train`` uses
    on the CPU, fp16 mixed precision on CUDA and ``--gradient_checkpointing`` where ours has it. Its
    start-up (model load) is outside the timed steps, as ours is.
    """
    from bench.child import ChildFailed, run_child
    from bench.train import reference_args

    rows = []
    for batch, checkpointing, settings in _training_settings(size):
        run_dir = work / f"reference-b{batch}-gc{int(checkpointing)}"
        flags = [
            f.replace("{run_dir}", str(run_dir)) for f in reference_args(settings, model_dir, subject_dir)
        ]
        flags[flags.index("--mixed_precision") + 1] = "fp16" if device == "cuda" else "no"
        flags += ["--gradient_checkpointing"] if checkpointing else []
        clock = run_dir / "clock.json"
        row = {"batch": batch, "gradient_checkpointing": checkpointing, "flags": flags}
        try:
            run = run_child(
                [python, "-m", "bench.step_clock", "--out", str(clock), "--", str(script), *flags],
                run_dir,
                clock,
            )
        except ChildFailed as error:
            print(f"  reference failed: {error}", flush=True)
            rows.append({**row, "error": str(error)})
            continue
        row["reference_s_per_step"] = run.seconds_per_step(size.warmup)
        rows.append(row)
        print(
            f"  batch {batch}, checkpointing {'on ' if checkpointing else 'off'}: reference "
            f"{row['reference_s_per_step']:.4f} s/step ({len(run.step_ends)} steps clocked)",
            flush=True,
        )
    return rows


def sdxl_section(
    size: Size, device: str, work: Path, subject_dir: Path, script: Path | None, python: str
) -> list[dict]:
    """SDXL at batch 1, gradient checkpointing off and on: s/step and peak memory, and diffusers' reference.

    The SDXL-shaped random model (2.6 B-parameter UNet; ``--tiny``: the tiny SDXL model) at
    ``size.sdxl_resolution``, fp16 base weights on CUDA (``model.dtype=auto``), the UNet's LoRA only.
    ``script`` is diffusers' ``examples/dreambooth/train_dreambooth_lora_sdxl.py`` (carried), run with the
    same flags as the SD 1.x reference.
    """
    from bench.child import ChildFailed, run_child
    from bench.step_clock import StepClock
    from bench.train import reference_args
    from lora_core.cache import default_cache_dir
    from lora_core.data.subject import load_subject_images
    from lora_core.embedded.tiny_model import TinySDXLSpec, ensure_tiny_model, sdxl_shaped_spec
    from lora_core.models import ModelSource, clear_pipeline_cache, load_pipeline
    from lora_core.training import train_lora

    tiny = size.sdxl_resolution < 512
    started = time.perf_counter()
    model_dir = ensure_tiny_model(TinySDXLSpec() if tiny else sdxl_shaped_spec(), default_cache_dir())
    print(f"  SDXL-shaped model ready in {time.perf_counter() - started:.0f} s: {model_dir}", flush=True)
    clear_pipeline_cache()  # the SD 1.x model's memory back before SDXL's
    pipe = load_pipeline(ModelSource(path=str(model_dir), device=device))
    images = load_subject_images(subject_dir, size.sdxl_resolution)
    rows = []
    for checkpointing in (False, True):
        settings = _settings(
            size,
            resolution=size.sdxl_resolution,
            train_batch_size=1,
            gradient_checkpointing=checkpointing,
            max_train_steps=size.warmup + size.steps + 1,
        )
        clock = StepClock()
        _reset_peak()
        train_lora(pipe, images, settings, work / f"sdxl-gc{int(checkpointing)}")
        row = {
            "resolution": size.sdxl_resolution,
            "gradient_checkpointing": checkpointing,
            "ours_s_per_step": _median_step(clock.step_ends, size.warmup),
            "ours_peak_mb": _peak_mb(),
        }
        if script is not None:
            run_dir = work / f"sdxl-reference-gc{int(checkpointing)}"
            # the SDXL script has no --pre_compute_text_embeddings: it encodes a frozen text encoder's once itself
            flags = [
                f.replace("{run_dir}", str(run_dir))
                for f in reference_args(settings, model_dir, subject_dir)
                if f != "--pre_compute_text_embeddings"
            ]
            flags[flags.index("--mixed_precision") + 1] = "fp16" if device == "cuda" else "no"
            flags += ["--gradient_checkpointing"] if checkpointing else []
            row["flags"] = flags
            try:
                run = run_child(
                    [
                        python,
                        "-m",
                        "bench.step_clock",
                        "--out",
                        str(run_dir / "clock.json"),
                        "--",
                        str(script),
                        *flags,
                    ],
                    run_dir,
                    run_dir / "clock.json",
                )
                row["reference_s_per_step"] = run.seconds_per_step(size.warmup)
                row["ours_over_reference"] = row["ours_s_per_step"] / row["reference_s_per_step"]
            except ChildFailed as error:
                print(f"  SDXL reference failed: {error}", flush=True)
                row["reference_error"] = str(error)
        rows.append(row)
        ref = f", reference {row['reference_s_per_step']:.4f}" if "reference_s_per_step" in row else ""
        print(
            f"  SDXL {size.sdxl_resolution} px, checkpointing {'on ' if checkpointing else 'off'}: "
            f"ours {row['ours_s_per_step']:.4f} s/step{ref}, peak {_fmt_mb(row['ours_peak_mb'])}",
            flush=True,
        )
    clear_pipeline_cache()
    return rows


def merge_reference(summary: dict) -> None:
    """Put the reference's s/step beside ours in the training rows (``ours_over_reference``)."""
    by_setting = {(r["batch"], r["gradient_checkpointing"]): r for r in summary.get("reference", [])}
    for row in summary.get("train", []):
        ref = by_setting.get((row["batch"], row["gradient_checkpointing"]), {}).get("reference_s_per_step")
        if ref:
            row["reference_s_per_step"], row["ours_over_reference"] = ref, row["ours_s_per_step"] / ref


def resume_section(pipe, images, size: Size, work: Path) -> dict:
    """Straight to N steps against N/2, checkpoint, resume to N: the LoRA weights' largest difference."""
    from safetensors.torch import load_file

    from lora_core.adapters import LORA_FILE
    from lora_core.training import train_lora

    n, half = size.resume_steps, size.resume_steps // 2
    straight = _settings(size, max_train_steps=n)
    train_lora(pipe, images, straight, work / "straight")
    interrupted = _settings(size, max_train_steps=half, checkpoint_steps=(half,))
    first = train_lora(pipe, images, interrupted, work / "resumed")
    checkpoint = first.checkpoints[half]
    train_lora(pipe, images, _settings(size, max_train_steps=n), work / "resumed", resume_from=checkpoint)
    a, b = load_file(work / "straight" / LORA_FILE), load_file(work / "resumed" / LORA_FILE)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    scale = max(float(a[k].float().abs().max()) for k in a)
    print(
        f"  resume: {n} steps straight vs {half} + {n - half}: max |diff| {diff:.2e} (weights up to {scale:.2e})"
    )
    return {"steps": n, "max_abs_diff": diff, "max_abs_weight": scale, "same_keys": sorted(a) == sorted(b)}


def grid_section(pipe, model_dir: Path, images, size: Size, work: Path) -> dict:
    """The 48-cell grid (16 cells, one prompt, in the tiny check): ours against the plain loop, same pictures."""
    import numpy as np

    from bench.render import _cells, run_ours, run_plain
    from lora_core.training import train_lora

    lora = train_lora(
        pipe, images, _settings(size, text_encoder_lr=1e-4, max_train_steps=2), work / "grid"
    ).output_dir
    cells = _cells(3.0, seed=123)[: size.grid_cells]
    _reset_peak()
    ours_s, ours = run_ours(pipe, lora, cells, size.grid_steps, size.resolution)
    ours_mb = _peak_mb()
    plain_s, plain = run_plain(pipe, lora, cells, size.grid_steps, size.resolution)
    diff = max(float(np.abs(ours[c] - plain[c]).max()) for c in cells)
    mean_diff = max(float(np.abs(ours[c] - plain[c]).mean()) for c in cells)
    row = {
        "cells": len(cells),
        "steps": size.grid_steps,
        "ours_images_per_s": len(cells) / ours_s,
        "plain_images_per_s": len(cells) / plain_s,
        "speed_up": plain_s / ours_s,
        "max_pixel_diff": diff,
        "max_mean_pixel_diff": mean_diff,
        "ours_peak_mb": ours_mb,
    }
    print(
        f"  grid: ours {row['ours_images_per_s']:.2f} img/s, plain {row['plain_images_per_s']:.2f} img/s "
        f"({row['speed_up']:.2f}x), pixel diff: max {diff:.0f}/255, worst cell's mean {mean_diff:.2f}",
        flush=True,
    )
    if half_precision(pipe):
        row["fp16_noise"] = _fp16_noise(pipe, model_dir, lora, cells, plain, size)
    return row


def half_precision(pipe) -> bool:
    import torch

    return pipe.unet.dtype == torch.float16


def _fp16_noise(pipe, model_dir: Path, lora: Path, cells, plain: dict, size: Size) -> dict:
    """How far the plain loop's own fp16 pictures are from fp32 ones: the yardstick for ours' differences.

    Random weights over 25 steps amplify rounding, so "same pictures" is judged against this: the plain
    loop in float32 on the first cells of each prompt, against the plain loop in float16.
    """
    import numpy as np
    import torch

    from bench.render import run_plain
    from lora_core.models import ModelSource, load_pipeline

    full = load_pipeline(ModelSource(path=str(model_dir), device=str(pipe.unet.device), dtype="float32"))
    few = cells[:: len(cells) // 3][:3]
    _, exact = run_plain(full, lora, few, size.grid_steps, size.resolution)
    del full
    torch.cuda.empty_cache()
    row = {
        "cells": len(few),
        "max_pixel_diff": max(float(np.abs(exact[c] - plain[c]).max()) for c in few),
        "max_mean_pixel_diff": max(float(np.abs(exact[c] - plain[c]).mean()) for c in few),
    }
    print(
        f"  plain loop fp16 vs fp32 ({len(few)} cells): pixel diff max {row['max_pixel_diff']:.0f}/255, "
        f"worst cell's mean {row['max_mean_pixel_diff']:.2f}",
        flush=True,
    )
    return row


def sync_section(pipe, model_dir: Path, images, size: Size, device: str, work: Path) -> dict:
    """Synchronising CUDA calls per training step (ours and the floor), and a profile of each.

    ``torch.cuda.set_sync_debug_mode`` warns at every call that makes the host wait for the GPU; the
    optimizer-step hook cuts the warnings into steps. The profiles (``torch.profiler``, steps after the
    warm-up, ops by self CPU time) go to ``profile.txt`` in ``--out``. On the CPU only the profiles are
    taken (there is nothing to wait for), so the tiny test runs this code too.
    """
    try:
        return {
            name: _sync_and_profile(name, pipe, model_dir, images, size, device, work)
            for name in ("ours", "floor")
        }
    except Exception as error:  # a diagnostic: the figures above are kept whatever happens here
        import traceback

        traceback.print_exc()
        return {"error": repr(error)}


def _sync_and_profile(name: str, pipe, model_dir: Path, images, size: Size, device: str, work: Path) -> dict:
    import warnings

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bench.train_floor import make_step
    from lora_core.training import train_lora

    cuda = device == "cuda"
    steps = size.warmup + 12
    settings = _settings(size, train_batch_size=1, max_train_steps=steps)
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    )
    profiler = torch.profiler.profile(
        activities=activities, schedule=torch.profiler.schedule(wait=size.warmup + 4, warmup=1, active=6)
    )
    marks: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def tick(*_) -> None:
            marks.append(len(caught))
            profiler.step()

        handle = register_optimizer_step_post_hook(tick)
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        profiler.start()
        try:
            if name == "ours":
                train_lora(pipe, images, settings, work / f"sync-{name}")
            else:
                step = make_step(str(model_dir), settings.to_dict(), device, half=cuda)
                for _ in range(steps):
                    step()
                del step
        finally:
            profiler.stop()
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            handle.remove()
    per_step = [b - a for a, b in itertools.pairwise(marks)][size.warmup :]
    count = statistics.median(per_step) if per_step and cuda else None
    sites: dict[str, int] = {}
    for w in caught[marks[size.warmup] : marks[-1]] if cuda and len(marks) > size.warmup else []:
        key = f"{Path(w.filename).name}:{w.lineno}"
        sites[key] = sites.get(key, 0) + 1
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(f"  {name}: {count} synchronising calls per step; sites {sites}", flush=True)
    return {"syncs_per_step": count, "sync_sites": sites, "profile": f"== {name}\n{table}"}


def sweep_section(model_dir: Path | None, size: Size, work: Path, device: str) -> dict:
    """The whole ``python -m sweeper -m`` path, two configurations, MLflow on SQLite."""
    model = (
        ["model=tiny", "debug=fast"]
        if model_dir is None
        else [
            "model=sd15",
            f"model.path={model_dir}",
            "model.resolution=512",
            "eval=real_shape",
            "render.num_inference_steps=10",
            "render.unet_scales=[1]",
            "render.text_scales=[1]",
        ]
    )
    command = [
        sys.executable,
        "-m",
        "sweeper",
        "-m",
        "experiment=quickstart",
        *model,
        "train.learning_rate=1e-4,1e-3",
        "train.text_encoder_lr=0",
        f"train.max_train_steps={size.sweep_steps}",
        f"train.rank={size.rank}",
        f"model.device={device}",
        f"sweep.root={work / 'sweeps'}",
        "sweep.name=gpu",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    seconds = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in (work / "sweeps" / "gpu").glob("*/run.json")]
    finished = sum(r.get("status") == "done" for r in records)
    green = done.returncode == 0 and finished == 2 and (work / "sweeps" / "mlflow.db").is_file()
    print(
        f"  sweep: exit {done.returncode}, {finished}/2 runs done, MLflow store "
        f"{'written' if (work / 'sweeps' / 'mlflow.db').is_file() else 'MISSING'}, {seconds:.0f} s",
        flush=True,
    )
    if not green:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return {"exit_code": done.returncode, "runs_done": finished, "seconds": seconds, "green": green}


def _fmt_mb(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value / 1024:.2f} GiB"


def table(summary: dict) -> str:
    """The table of ``docs/gpu_check.md`` for this check (Markdown)."""
    with_ref = any("reference_s_per_step" in r for r in summary["train"])
    ref_head, ref_rule = (" reference s/step | ours / reference |", "---|---|") if with_ref else ("", "")
    lines = [
        f"Device: {summary['device']} (torch {summary['torch']}, {summary['size']})",
        "",
        f"| batch | grad. checkpointing | ours s/step | floor s/step | ours / floor |{ref_head} peak GPU memory |",
        f"|---|---|---|---|---|{ref_rule}---|",
    ]
    for r in summary["train"]:
        ref = ""
        if with_ref:
            ref = (
                f" {r['reference_s_per_step']:.4f} | {r['ours_over_reference']:.2f} |"
                if "reference_s_per_step" in r
                else " failed | - |"
            )
        lines.append(
            f"| {r['batch']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['ours_s_per_step']:.4f} | "
            f"{r['floor_s_per_step']:.4f} | {r['ratio']:.2f} |{ref} {_fmt_mb(r['ours_peak_mb'])} |"
        )
    lines.append("")
    if res := summary.get("resume"):
        lines.append(
            f"Resume ({res['steps']} steps straight vs half + half): max |Δweight| {res['max_abs_diff']:.2e} "
            f"(weights up to {res['max_abs_weight']:.2e})."
        )
    if grid := summary.get("grid"):
        lines.append(
            f"Grid ({grid['cells']} cells, {grid['steps']} steps): ours {grid['ours_images_per_s']:.2f} img/s, plain loop "
            f"{grid['plain_images_per_s']:.2f} img/s ({grid['speed_up']:.2f}x); pixel difference: max {grid['max_pixel_diff']:.0f}, "
            f"worst cell's mean {grid['max_mean_pixel_diff']:.2f} of 255{_noise_text(grid)}."
        )
    if sweep := summary.get("sweep"):
        lines.append(
            f"Sweep (`python -m sweeper -m`, 2 configurations, MLflow on SQLite): {'green' if sweep['green'] else 'FAILED'} "
            f"in {sweep['seconds']:.0f} s."
        )
    if pack := summary.get("pack"):
        lines.append(
            f"Packs ({pack.get('dtype', 'torch.float32').removeprefix('torch.')} base; one configuration alone {pack['alone_s_per_step']:.4f} s/step, peak "
            f"{_fmt_mb(pack['alone_peak_mb'])}): "
            + "; ".join(
                f"{r['size']}: {r['s_per_config_step']:.4f} s per configuration-step ({r['ratio']:.3f}x), "
                f"peak {_fmt_mb(r['peak_mb'])}"
                for r in pack["packs"]
            )
            + "."
        )
    for row in summary.get("sdxl", []):
        ref = row.get("reference_s_per_step")
        versus = f", reference {ref:.4f} s/step ({row['ours_over_reference']:.2f}x)" if ref else ""
        lines.append(
            f"SDXL {row['resolution']} px, batch 1, gradient checkpointing "
            f"{'on' if row['gradient_checkpointing'] else 'off'}: ours {row['ours_s_per_step']:.4f} s/step, "
            f"peak {_fmt_mb(row['ours_peak_mb'])}{versus}."
        )
    sync = summary.get("sync") or {}
    if sync.get("ours", {}).get("syncs_per_step") is not None:
        lines.append(
            f"Synchronising CUDA calls per step (batch 1): ours {sync['ours']['syncs_per_step']}, "
            f"floor {sync['floor']['syncs_per_step']}."
        )
    return "\n".join(lines) + "\n"


def _noise_text(grid: dict) -> str:
    noise = grid.get("fp16_noise")
    if not noise:
        return ""
    return (
        f" (the plain loop's own fp16 against fp32 on {noise['cells']} cells: max "
        f"{noise['max_pixel_diff']:.0f}, worst cell's mean {noise['max_mean_pixel_diff']:.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns 0 when every section ran (figures are reported, not judged)."""
    import torch

    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model at 64 px, a few steps (the CPU test)")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "results" / "gpu")
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["train", "reference", "resume", "grid", "sweep", "sync", "pack", "sdxl"],
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="diffusers' examples/dreambooth/train_dreambooth_lora.py, timed beside ours",
    )
    parser.add_argument(
        "--reference-python",
        default=sys.executable,
        help="the Python that runs it (needs torchvision; default: this one)",
    )
    parser.add_argument(
        "--reference-sdxl",
        type=Path,
        default=None,
        help="diffusers' examples/dreambooth/train_dreambooth_lora_sdxl.py, timed beside the SDXL section",
    )
    args = parser.parse_args(argv)
    from lora_core.cache import default_cache_dir
    from lora_core.data.subject import load_subject_images
    from lora_core.embedded.drawn_subject import ensure_drawn_subject
    from lora_core.embedded.tiny_model import TinyModelSpec, ensure_tiny_model, sd15_shaped_spec
    from lora_core.models import ModelSource, load_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = TINY if args.tiny else REAL
    cache = default_cache_dir()
    started = time.perf_counter()
    print(
        f"GPU check on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'} ({size.resolution} px)",
        flush=True,
    )
    model_dir = ensure_tiny_model(TinyModelSpec() if args.tiny else sd15_shaped_spec(), cache)
    print(f"  model ready in {time.perf_counter() - started:.0f} s: {model_dir}", flush=True)
    pipe = load_pipeline(ModelSource(path=str(model_dir), device=device))
    subject_dir = ensure_drawn_subject(cache, count=5, seed=0, size=512)
    images = load_subject_images(subject_dir, size.resolution)
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU",
        "torch": torch.__version__,
        "size": f"{size.resolution} px, rank {size.rank}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sections = {
            "train": lambda: train_section(pipe, model_dir, images, size, device, work),
            "reference": lambda: reference_section(
                model_dir, subject_dir, size, device, work, args.reference, args.reference_python
            ),
            "resume": lambda: resume_section(pipe, images, size, work),
            "grid": lambda: grid_section(pipe, model_dir, images, size, work),
            "sweep": lambda: sweep_section(None if args.tiny else model_dir, size, work, device),
            "sync": lambda: sync_section(pipe, model_dir, images, size, device, work),
            "pack": lambda: pack_section(model_dir, images, size, device, work),
            "sdxl": lambda: sdxl_section(
                size, device, work, subject_dir, args.reference_sdxl, args.reference_python
            ),
        }
        for name, run in sections.items():
            if name not in args.skip and (name != "reference" or args.reference is not None):
                print(f"{name}:", flush=True)
                summary[name] = run()
    merge_reference(summary)
    summary["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    profiles = [part.pop("profile") for part in summary.get("sync", {}).values() if isinstance(part, dict)]
    if profiles:
        (args.out / "profile.txt").write_text("\n\n".join(profiles))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if "train" in summary:
        text = table(summary)
        (args.out / "table.md").write_text(text)
        print("\n" + text)
    print(f"Done in {summary['seconds']:.0f} s; {args.out}/summary.json", flush=True)
    return 0 if summary.get("sweep", {"green": True})["green"] else 1


if __name__ == "__main__":
    sys.exit(main())
