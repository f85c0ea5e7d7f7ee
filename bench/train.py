"""Training benchmark: our LoRA trainer against two baselines measured in the same run.

What it measures, on the tiny model at 64 px (``TinyModelSpec`` defaults) with the text encoder frozen
(``text_encoder_lr=0``) and trained (``text_encoder_lr = learning_rate``, as the reference has one rate):

- steady-state seconds per optimizer step, and
- start-up: a fresh process's fixed cost ``T(N) - N * s/step`` (imports, model load, caching, first-step
  warm-up, final save), with launch-to-first-step and last-step-to-exit beside it, and peak RSS.

Against, with the same hyperparameters (rank, alpha = rank, UNet/text target modules, batch 1, lr,
AdamW betas/eps/weight decay, clipping, resolution, seed):

1. the compute floor (``bench.train_floor``): UNet forward + backward (+ the text encoder's when it
   trains) + clipping + AdamW on pre-made tensors, LoRA and optimizer built as ``lora_core`` builds them;
2. diffusers' reference trainer ``examples/dreambooth/train_dreambooth_lora.py`` (``--reference``), run in
   its own environment (``--reference-python``), plus the floor again in that environment, because it has
   another torch.

Every contestant runs as its own process; a global optimizer-step hook (``bench.step_clock``) timestamps
every step, so s/step is the median step after the warm-up and start-up is what the steps do not
explain. The contestants run one after another in rounds (order rotated each round); the table shows
medians over rounds and each ratio is taken round by round, then its median (and range) printed, which
cancels most of a shared machine's drifting load. Ratios are printed next to the targets; nothing is
asserted (timings on a shared 2-core machine are noisy: read the range, run again when it is wide).

``--real-size`` adds the same training on an SD-1.5-shaped model with random weights (built offline
once, ~4.3 GB in the cache) at 512 px: a few steps, seconds per step and peak RSS.

Run::

    python -m bench train --quick                      # about a minute (also with --reference)
    python -m bench train --reference bench/.ref/train_dreambooth_lora.py
    python -m bench train --reference bench/.ref/train_dreambooth_lora.py --real-size

Setting up the reference (once; ``bench/.ref/`` and ``bench/.venv-ref/`` are git-ignored, never commit
or vendor the script)::

    # 1. the script, from the diffusers release matching the installed diffusers (v0.42.1); an older
    #    release's script works too as long as its check_min_version() is <= the installed diffusers
    mkdir -p bench/.ref
    curl -L -o bench/.ref/train_dreambooth_lora.py \\
      https://raw.githubusercontent.com/huggingface/diffusers/v0.42.1/examples/dreambooth/train_dreambooth_lora.py
    # 2. an environment with torchvision, which cannot import beside the project's CPU torch 2.13;
    #    torch 2.14.1 + torchvision 0.29.1 are a matching pair (on this kind of machine, from its disk)
    python3 -m venv bench/.venv-ref
    bench/.venv-ref/bin/pip install torch==2.14.1 torchvision==0.29.1
    bench/.venv-ref/bin/pip install -c constraints.txt diffusers transformers peft accelerate

The reference is run with ``--mixed_precision no``, ``--lr_scheduler constant``, no validation prompt, no
checkpoints within the run, ``--center_crop``, seed 0, and with the text encoder frozen also with
``--pre_compute_text_embeddings`` (its own fast path for that case, as ours caches the embeddings). It
has no ``--report_to none``: its default, tensorboard, is skipped with a warning because the reference
environment does not install tensorboard.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.child import REPO_ROOT, ChildFailed, ChildRun, median, run_child

PROMPT = "a photo of ktn cat"
DEFAULT_REFERENCE_PYTHON = REPO_ROOT / "bench" / ".venv-ref" / "bin" / "python"
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results" / "train"
TARGET_OVER_FLOOR = 1.10  # ours per step within 10% of the floor: the trainer adds next to nothing
TARGET_OVER_REFERENCE = 1.00  # no slower than diffusers' reference, per step and start-up
TARGET_JOB_OVER_REFERENCE = 1.20  # a whole sweeper job's fixed cost (Hydra, MLflow, records) vs the reference
TARGET_SWEEP_OVER_REFERENCE = 1.30  # a one-configuration `python -m sweeper -m`'s fixed cost vs the reference
# The issue's figures, measured on this kind of machine on the same tiny model (context, not a target).
ISSUE_FIGURES = (
    "reference 0.049-0.056 s/step (text encoder frozen), floor ~0.048 s/step, reference start-up ~4.8 s"
)


@dataclass(frozen=True)
class Plan:
    """How much to run.

    Attributes:
        steps: Training steps per run of ours and of the reference.
        repeats: Runs of each contestant (interleaved); medians are reported.
        floor_steps: Timed steps per floor run.
        warmup: Steps after the first that are left out of the per-step time.
    """

    steps: int
    repeats: int
    floor_steps: int
    warmup: int


@dataclass(frozen=True)
class Contestant:
    """One thing to time: a name and the command of one run (``{out}`` and ``{run_dir}`` filled per run)."""

    name: str
    command: tuple[str, ...]
    warmup: int
    has_start_up: bool = True


@dataclass
class Measured:
    """The runs of one contestant, one per round, and their medians."""

    name: str
    warmup: int
    has_start_up: bool
    runs: list[ChildRun] = field(default_factory=list)

    def per_step_runs(self) -> list[float]:
        """Steady-state seconds per step of each run."""
        return [run.seconds_per_step(self.warmup) for run in self.runs]

    def start_up_runs(self) -> list[float]:
        """``T(N) - N * s/step`` of each run."""
        return [run.fixed_seconds(run.seconds_per_step(self.warmup)) for run in self.runs]

    def summary(self) -> dict:
        """Medians over runs and the peak memory, JSON-friendly."""
        return {
            "seconds_per_step": median(self.per_step_runs()),
            "start_up_seconds": median(self.start_up_runs()) if self.has_start_up else None,
            "first_step_done_seconds": median([run.step_ends[0] for run in self.runs]),
            "after_last_step_seconds": median([run.wall_s - run.step_ends[-1] for run in self.runs]),
            "peak_rss_mb": max(run.peak_rss_mb for run in self.runs),
            "torch": self.runs[0].clock.get("torch"),
            "threads": self.runs[0].clock.get("threads"),
            "runs": [asdict(run) for run in self.runs],
        }


def paired_ratio(mine: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """Ratio of two contestants' figures round by round (runs of a round ran back to back).

    Pairing by round cancels most of the drift of a shared machine's load, which a ratio of two
    medians would keep.

    Args:
        mine: One figure per round.
        theirs: The other contestant's figure of the same rounds.

    Returns:
        ``(median, lowest, highest)`` of the per-round ratios.
    """
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    return median(ratios), min(ratios), max(ratios)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the command line; ``--quick`` fills the step counts and repeats left unset."""
    parser = argparse.ArgumentParser(
        prog="python -m bench train",
        description=__doc__.split("\n\n")[0],
        epilog="Setup of the reference: see bench/README.md or this module's docstring.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="few steps, one run each: about a minute")
    add("--steps", type=int, help="training steps per run (default 60; quick 15)")
    add("--repeats", type=int, help="runs of each contestant, interleaved (default 3; quick 1)")
    add("--floor-steps", type=int, help="timed floor steps per run (default: --steps)")
    add("--warmup", type=int, help="steps after the first left out of s/step (default 5; quick 3)")
    add(
        "--variants",
        default="frozen,trained",
        help="frozen, trained, both (default) or none (only --real-size)",
    )
    add("--rank", type=int, default=4, help="LoRA rank; alpha = rank as in the reference (default 4)")
    add("--learning-rate", type=float, default=1e-4, help="UNet (and text encoder) learning rate")
    add("--resolution", type=int, default=64, help="training side in pixels (default 64)")
    add("--device", default="auto", help="auto, cpu or cuda (default auto)")
    add("--reference", type=Path, help="diffusers' examples/dreambooth/train_dreambooth_lora.py")
    add(
        "--reference-python",
        type=Path,
        default=DEFAULT_REFERENCE_PYTHON,
        help=f"interpreter with torchvision for the reference (default {DEFAULT_REFERENCE_PYTHON.relative_to(REPO_ROOT)})",
    )
    add("--real-size", action="store_true", help="also train an SD-1.5-shaped model at 512 px (minutes)")
    add("--real-size-steps", type=int, default=3, help="steps of the real-size runs (default 3)")
    add("--real-size-repeats", type=int, default=1, help="runs of each real-size contestant (default 1)")
    add(
        "--cache-dir",
        type=Path,
        help="where the models and the drawn subject are built (default: lora_core's cache)",
    )
    add("--results-dir", type=Path, default=DEFAULT_RESULTS, help="logs of every run and summary.json")
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (15 if quick else 60)
    args.repeats = args.repeats or (1 if quick else 3)
    args.floor_steps = args.floor_steps or args.steps
    args.warmup = args.warmup if args.warmup is not None else (3 if quick else 5)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip() not in ("", "none")]
    if set(args.variants) - {"frozen", "trained"}:
        parser.error(f"--variants={','.join(args.variants)}: use frozen, trained, frozen,trained or none")
    if args.reference is not None and not args.reference.is_file():
        parser.error(f"--reference={args.reference}: no such file (see bench/README.md for how to get it)")
    if args.reference is not None and not args.reference_python.is_file():
        parser.error(f"--reference-python={args.reference_python}: no such interpreter (see bench/README.md)")
    return args


def training_settings(args: argparse.Namespace, trains_text: bool, steps: int, resolution: int):
    """The ``TrainSettings`` every contestant shares (the library defaults for everything not named)."""
    from lora_core.settings import TrainSettings

    settings = TrainSettings(
        instance_prompt=PROMPT,
        resolution=resolution,
        center_crop=True,
        random_flip=False,
        learning_rate=args.learning_rate,
        text_encoder_lr=args.learning_rate if trains_text else 0.0,
        lr_scheduler="constant",
        max_train_steps=steps,
        train_batch_size=1,
        rank=args.rank,
        alpha=None,
        seed=0,
        mixed_precision="no",
        log_every=1,
    )
    settings.validate()
    return settings


def reference_args(settings, model_dir: Path, subject_dir: Path) -> list[str]:
    """Flags of ``train_dreambooth_lora.py`` for the same training (``{run_dir}`` is the run's folder)."""
    s = settings
    flags = [
        "--pretrained_model_name_or_path",
        str(model_dir),
        "--instance_data_dir",
        str(subject_dir),
        "--instance_prompt",
        s.instance_prompt,
        "--output_dir",
        "{run_dir}/output",
        "--seed",
        str(s.seed),
        "--resolution",
        str(s.resolution),
        "--center_crop",
        "--train_batch_size",
        str(s.train_batch_size),
        "--max_train_steps",
        str(s.max_train_steps),
        "--checkpointing_steps",
        str(s.max_train_steps + 1),
        "--learning_rate",
        str(s.learning_rate),
        "--lr_scheduler",
        s.lr_scheduler,
        "--lr_warmup_steps",
        "0",
        "--adam_beta1",
        str(s.adam_beta1),
        "--adam_beta2",
        str(s.adam_beta2),
        "--adam_weight_decay",
        str(s.adam_weight_decay),
        "--adam_epsilon",
        str(s.adam_epsilon),
        "--max_grad_norm",
        str(s.max_grad_norm),
        "--rank",
        str(s.rank),
        "--lora_dropout",
        str(s.dropout),
        "--mixed_precision",
        "no",
        "--dataloader_num_workers",
        "0",
    ]
    return [*flags, "--train_text_encoder" if s.trains_text_encoder else "--pre_compute_text_embeddings"]


def sweeper_job(
    settings, model_dir: Path, subject_dir: Path, device: str, live: bool = True, sweep: bool = False
) -> tuple[str, ...]:
    """One ``python -m sweeper`` job of the same training, as a SLURM or joblib worker runs it: Hydra, the
    job's checks, the run folder and its records, and MLflow on the SQLite store its sweep shares
    (``live``), or none (a ``tracking.live=false`` worker, whose runs the sweep's end logs); no grid.

    Every run logs into an experiment of its own in the section's store (``prepare_store`` made it, as a
    sweep's start does before its jobs): in a shared experiment a later round would find its run already
    logged and skip the logging a job does.

    ``sweep``: the whole one-configuration command a user types, ``python -m sweeper -m``: Hydra's compose,
    the sweep's plan, checks and MLflow start, the launch of its job, the job, and the sweep's end.
    """
    s = settings
    overrides = [
        "model=sd15",
        f"model.path={model_dir}",
        f"model.resolution={s.resolution}",
        "model.dtype=float32",
        f"model.device={device}",
        f"data.instance_dir={subject_dir}",
        f"data.instance_prompt={PROMPT}",
        f"train.learning_rate={s.learning_rate}",
        f"train.text_encoder_lr={s.text_encoder_lr}",
        f"train.max_train_steps={s.max_train_steps}",
        f"train.rank={s.rank}",
        f"train.seed={s.seed}",
        f"train.mixed_precision={s.mixed_precision}",
        f"train.log_every={s.log_every}",
        "render.enabled=false",
        "eval.enabled=false",
        "sweep.root={run_dir}/sweeps",
        "sweep.print_summary=false",
        "hydra.sweep.dir={run_dir}/hydra" if sweep else "hydra.run.dir={run_dir}/hydra",
        f"tracking.enabled={str(live).lower()}",
        "tracking.uri=sqlite:///{run_dir}/../mlflow.db",
        "tracking.experiment={run_dir}",
    ]
    script = str(REPO_ROOT / "sweeper" / "__main__.py")
    return ("-m", "bench.step_clock", "--out", "{out}", "--", script, *(["-m"] if sweep else []), *overrides)


def contestants(
    args, settings, model_dir: Path, subject_dir: Path, device: str, plan: Plan
) -> list[Contestant]:
    """The floor, ours and, with ``--reference``, the reference and its environment's floor."""
    floor_settings = json.dumps({**settings.to_dict(), "max_train_steps": plan.floor_steps})
    floor = (
        "-m",
        "bench.train_floor",
        "--model",
        str(model_dir),
        "--settings",
        floor_settings,
        "--device",
        device,
        "--steps",
        str(plan.floor_steps),
        "--warmup",
        str(plan.warmup),
        "--out",
        "{out}",
    )
    ours = (
        "-m",
        "bench.train_runner",
        "--model",
        str(model_dir),
        "--subject",
        str(subject_dir),
        "--settings",
        json.dumps(settings.to_dict()),
        "--device",
        device,
        "--output-dir",
        "{run_dir}/output",
        "--out",
        "{out}",
    )
    found = [
        Contestant("floor", (sys.executable, *floor), plan.warmup, has_start_up=False),
        Contestant("ours", (sys.executable, *ours), plan.warmup),
        Contestant(
            "sweeper job",
            (sys.executable, *sweeper_job(settings, model_dir, subject_dir, device)),
            plan.warmup,
        ),
        Contestant(
            "worker without MLflow",
            (sys.executable, *sweeper_job(settings, model_dir, subject_dir, device, live=False)),
            plan.warmup,
        ),
        Contestant(
            "sweep command",
            (sys.executable, *sweeper_job(settings, model_dir, subject_dir, device, sweep=True)),
            plan.warmup,
        ),
    ]
    if args.reference is not None:
        ref_python, script = str(args.reference_python), str(args.reference.resolve())
        clocked = ("-m", "bench.step_clock", "--out", "{out}", "--", script)
        found.append(
            Contestant(
                "reference",
                (ref_python, *clocked, *reference_args(settings, model_dir, subject_dir)),
                plan.warmup,
            )
        )
        found.append(Contestant("reference floor", (ref_python, *floor), plan.warmup, has_start_up=False))
    return found


def measure(found: list[Contestant], repeats: int, run_root: Path) -> dict[str, Measured]:
    """Run every contestant ``repeats`` times, interleaved, the order rotated each round.

    Interleaving spreads the load of whatever else the machine does over all contestants alike.

    Args:
        found: The contestants.
        repeats: Runs of each.
        run_root: Parent of the run folders (logs, outputs, clock files).

    Returns:
        Name to measurements.
    """
    results = {c.name: Measured(c.name, c.warmup, c.has_start_up) for c in found}
    for round_index in range(repeats):
        shift = round_index % len(found)
        for contestant in found[shift:] + found[:shift]:
            run_dir = run_root / f"{contestant.name.replace(' ', '-')}-{round_index}"
            out = run_dir / "clock.json"
            command = [
                part.replace("{out}", str(out)).replace("{run_dir}", str(run_dir))
                for part in contestant.command
            ]
            print(f"  run {round_index + 1}/{repeats}: {contestant.name} ...", flush=True)
            results[contestant.name].runs.append(run_child(command, run_dir, out))
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def print_table(results: dict[str, Measured]) -> None:
    """One line per contestant: s/step, start-up, launch to first step, last step to exit, RSS, torch."""
    print(
        f"  {'':17}{'s/step':>9}{'start-up s':>12}{'1st step s':>12}{'tail s':>9}{'RSS MB':>9}  torch (threads)"
    )
    for name, m in results.items():
        s = m.summary()
        print(
            f"  {name:22}{_fmt(s['seconds_per_step'], 4):>7}{_fmt(s['start_up_seconds'], 2):>12}"
            f"{_fmt(s['first_step_done_seconds'], 2):>12}{_fmt(s['after_last_step_seconds'], 2):>9}"
            f"{s['peak_rss_mb']:>9.0f}  {s['torch']} ({s['threads']})"
        )


def _ratio_line(label: str, mine: list[float], theirs: list[float], target: float | None) -> None:
    ratio, low, high = paired_ratio(mine, theirs)
    spread = f"({low:.2f}-{high:.2f})" if len(mine) > 1 else ""
    verdict = "" if target is None else f"<= {target:.2f}x  {'met' if ratio <= target else 'MISSED'}"
    print(f"  {label:44}{_fmt(ratio, 2) + 'x':>7} {spread:>11}   {verdict}")


def print_ratios(results: dict[str, Measured]) -> None:
    """Ours against the floor and the reference, with the targets; the reference's own overhead for context."""
    ours, floor = results["ours"], results["floor"]
    print(f"  {'ratio, median over rounds (range)':44}{'measured':>19}   target")
    _ratio_line("ours / floor, s/step", ours.per_step_runs(), floor.per_step_runs(), TARGET_OVER_FLOOR)
    if "sweeper job" in results:
        job = results["sweeper job"]
        _ratio_line("sweeper job / ours, start-up", job.start_up_runs(), ours.start_up_runs(), None)
        quiet = results["worker without MLflow"]
        _ratio_line(
            "worker without MLflow / ours, start-up", quiet.start_up_runs(), ours.start_up_runs(), None
        )
    if "reference" not in results:
        return
    ref, ref_floor = results["reference"], results["reference floor"]
    _ratio_line("ours / reference, s/step", ours.per_step_runs(), ref.per_step_runs(), TARGET_OVER_REFERENCE)
    _ratio_line(
        "ours / reference, start-up", ours.start_up_runs(), ref.start_up_runs(), TARGET_OVER_REFERENCE
    )
    if "sweeper job" in results:
        for name in ("sweeper job", "worker without MLflow"):
            _ratio_line(
                f"{name} / reference, start-up",
                results[name].start_up_runs(),
                ref.start_up_runs(),
                TARGET_JOB_OVER_REFERENCE,
            )
        _ratio_line(
            "sweep command / reference, start-up",
            results["sweep command"].start_up_runs(),
            ref.start_up_runs(),
            TARGET_SWEEP_OVER_REFERENCE,
        )
    _ratio_line("reference / its env's floor, s/step", ref.per_step_runs(), ref_floor.per_step_runs(), None)
    _ratio_line(
        "ref-env floor / our floor (torch versions)", ref_floor.per_step_runs(), floor.per_step_runs(), None
    )


def describe(settings, plan: Plan, device: str) -> str:
    """One line naming the shared hyperparameters and the plan."""
    s = settings
    return (
        f"rank {s.rank}, alpha {s.lora_alpha:g}, {s.resolution} px, batch {s.train_batch_size}, lr {s.learning_rate:g}"
        f"{f', text lr {s.text_encoder_lr:g}' if s.trains_text_encoder else ''}, AdamW({s.adam_beta1}, {s.adam_beta2}, "
        f"wd {s.adam_weight_decay:g}, eps {s.adam_epsilon:g}), clip {s.max_grad_norm:g}, UNet "
        f"{'/'.join(s.unet_target_modules)}; {plan.steps} steps x {plan.repeats} runs, floor {plan.floor_steps} "
        f"steps, warm-up {plan.warmup}, {device}"
    )


def run_section(title: str, args, settings, dirs: tuple[Path, Path], device: str, plan: Plan) -> dict:
    """Measure and print one comparison (one model, one text-encoder setting).

    Args:
        title: Heading, also the run folder's name.
        args: Parsed command line.
        settings: The shared ``TrainSettings``.
        dirs: ``(model_dir, subject_dir)``.
        device: Resolved torch device.
        plan: Step counts and repeats.

    Returns:
        The section's summary for ``summary.json``.
    """
    print(f"\n== train: {title} ==\n  {describe(settings, plan, device)}", flush=True)
    found = contestants(args, settings, *dirs, device, plan)
    run_root = args.results_dir / title.replace(" ", "-")
    prepare_store(run_root / "mlflow.db")
    results = measure(found, plan.repeats, run_root)
    print_table(results)
    print_ratios(results)
    return {
        "settings": settings.to_dict(),
        "plan": asdict(plan),
        "results": {k: m.summary() for k, m in results.items()},
    }


def prepare_store(path: Path) -> None:
    """Create the SQLite store the sweeper jobs log to, as a sweep's start does before its jobs run.

    A store left by an earlier run of the bench is replaced: its runs would count as already logged.
    """
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    MlflowClient(f"sqlite:///{path.resolve()}").search_experiments()


def prepare(args) -> tuple[str, Path, Path]:
    """Resolve the device and build (once) the tiny model and the drawn subject.

    Returns:
        ``(device, tiny_model_dir, subject_dir)``.
    """
    from lora_core.cache import default_cache_dir
    from lora_core.embedded.drawn_subject import ensure_drawn_subject
    from lora_core.embedded.tiny_model import TinyModelSpec, ensure_tiny_model
    from lora_core.models import resolve_device

    cache = args.cache_dir or default_cache_dir()
    device = resolve_device(args.device)
    # 512 px pictures, as a person's photos are larger than the training side; both trainers fit them.
    return (
        device,
        ensure_tiny_model(TinyModelSpec(), cache),
        ensure_drawn_subject(cache, count=5, seed=0, size=512),
    )


def real_size_section(args, device: str, subject_dir: Path) -> dict:
    """The frozen-text-encoder comparison on an SD-1.5-shaped model at 512 px, a few steps, one run each."""
    import torch

    from lora_core.cache import default_cache_dir
    from lora_core.embedded.tiny_model import ensure_tiny_model, sd15_shaped_spec

    print("\n(real size: building/finding the SD-1.5-shaped model, ~1 min the first time)", flush=True)
    model_dir = ensure_tiny_model(sd15_shaped_spec(), args.cache_dir or default_cache_dir())
    plan = Plan(
        steps=args.real_size_steps, repeats=args.real_size_repeats, floor_steps=args.real_size_steps, warmup=1
    )
    settings = training_settings(args, trains_text=False, steps=plan.steps, resolution=512)
    summary = run_section(
        "real size text encoder frozen", args, settings, (model_dir, subject_dir), device, plan
    )
    if not torch.cuda.is_available():
        print(
            "  no CUDA device here: CPU figures only; GPU figures need a machine with one (same command there)."
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the training benchmark and print its tables and ratios.

    Args:
        argv: Command-line arguments (``--help`` lists them).

    Returns:
        0 when every run finished (targets missed are printed, not failed), 1 when a run failed.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device, model_dir, subject_dir = prepare(args)
    plan = Plan(args.steps, args.repeats, args.floor_steps, args.warmup)
    summary = {"device": device, "issue_figures": ISSUE_FIGURES, "sections": {}}
    if args.reference is None:
        print(
            "reference baseline skipped: pass --reference PATH/TO/train_dreambooth_lora.py "
            "(how to get it and its environment: bench/README.md)"
        )
    try:
        for variant in args.variants:
            settings = training_settings(args, variant == "trained", plan.steps, args.resolution)
            title = f"text encoder {variant}"
            summary["sections"][title] = run_section(
                title, args, settings, (model_dir, subject_dir), device, plan
            )
        if args.real_size:
            summary["sections"]["real size"] = real_size_section(args, device, subject_dir)
    except ChildFailed as err:
        print(f"benchmark run failed: {err}", file=sys.stderr)
        return 1
    print(f"\nThe issue's figures on this kind of machine (context): {ISSUE_FIGURES}.")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"Logs of every run and summary.json: {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
