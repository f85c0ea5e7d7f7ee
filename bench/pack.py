"""Packs against one configuration a job: training time and peak memory per pack size, and whole sweeps.

Three parts (``--parts``, all by default):

- ``training``: each pack size trains that many configurations of a learning-rate and seed sweep together
  (``lora_core.packs``); the baseline is today's one-configuration training (``LoraTrainer``), in the same
  process, in interleaved rounds whose order is reversed every other round, so a drift of the machine's load
  hits every size alike. The time is the steady-state step loop (first step left out) divided by the pack's
  size; each round's ratio to the baseline of that round is taken, and the median and range printed.
- ``memory``: each pack size in a fresh process (load, 5 steps), its peak resident memory; the growth per
  configuration is what ``lora_core.packs.memory`` calibrates ``sweep.pack=auto`` with.
- ``sweeps``: ``make run``'s sweep (the quickstart, 4 configurations) and ``experiment=halving_search`` (12)
  end to end, packed (``sweep.pack=auto``) against ``sweep.pack=1``, in alternating order; wall times and
  their ratio, and whether the report ranks the configurations alike.

``python -m bench pack [--model world|tiny] [--sizes 1,2,4,8,16] [--steps 30] [--rounds 3] [--parts ...]
[--sweep-rounds N]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.train_breadth import COMMON, bench_model, seconds_per_step


def pack_seconds_per_step(pipe, images, settings: list, out: Path) -> float:
    """Steady-state seconds per step of the whole pack (its first step left out)."""
    from lora_core.packs import train_pack

    ends: list[float] = []

    def note(index, record):
        if index == 0:
            ends.append(record.seconds)

    train_pack(pipe, images, settings, [out / str(i) for i in range(len(settings))], on_step=note)
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def peak_memory_child(model: str, size: int, steps: int = 5) -> tuple[float, float]:
    """(resident MiB after loading ``model``, peak resident MiB while training a pack of ``size`` after it).

    A fresh process each; the peak is reset once the model is loaded (``/proc/self/clear_refs``), so a
    passing peak of the loading does not hide the training's.
    """
    code = f"from bench.pack import _child\n_child({model!r}, {size}, {steps})\n"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded, peak


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _child(model: str, size: int, steps: int) -> None:
    from lora_core.packs import train_pack
    from lora_core.settings import TrainSettings

    pipe, images = bench_model(model)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident size starts again from here
    loaded = _status_mib("VmRSS")
    if size:
        settings = [
            TrainSettings(**dict(COMMON, max_train_steps=steps, text_encoder_lr=0.0, seed=i))
            for i in range(size)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            train_pack(pipe, images, settings, [Path(tmp) / str(i) for i in range(size)])
    print(json.dumps([loaded, _status_mib("VmHWM")]))


def memory_part(model: str, sizes: list[int]) -> None:
    """Peak memory per pack size, and the growth per configuration ``auto`` is calibrated with."""
    from lora_core.embedded.world_weights import verified_world_dir
    from lora_core.packs.memory import BYTES_PER_PIXEL_WIDTH, latent_pixels, unet_width
    from lora_core.settings import TrainSettings

    runs = {n: peak_memory_child(model, n) for n in sizes}
    loaded = statistics.median(load for load, _ in runs.values())
    print(
        f"\npeak resident memory ({model}, {COMMON['resolution']} px, batch 1); after loading: {loaded:.0f} MiB"
    )
    print(f"{'pack':>4} {'peak MiB':>9} {'over load':>10}")
    for n in sizes:
        print(f"{n:>4} {runs[n][1]:9.0f} {runs[n][1] - runs[n][0]:10.0f}")
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        growth = (
            ((runs[last][1] - runs[last][0]) - (runs[first][1] - runs[first][0])) / (last - first) * 2**20
        )
        folder = verified_world_dir()[0] / "sd" if model == "world" else None
        units = (
            latent_pixels(COMMON["resolution"], folder)
            * unet_width(folder)
            * TrainSettings(**COMMON).train_batch_size
        )
        print(
            f"growth per configuration: {growth / 2**20:.1f} MiB = {growth / units:.1f} bytes per latent pixel per "
            f"unit of UNet width (lora_core.packs.memory.BYTES_PER_PIXEL_WIDTH = {BYTES_PER_PIXEL_WIDTH})"
        )


def sweeps_part(root: Path, quick: bool, rounds: int = 1) -> None:
    """The quickstart and the halving search, packed against ``sweep.pack=1``, end to end.

    Each round runs both, in an order reversed every other round; the ratio of each round is packed over
    ``sweep.pack=1`` of that round, and the median of the rounds is printed with their range.
    """
    from bench.halving import run_sweep

    experiments = {
        "quickstart": ["experiment=quickstart"],
        "halving_search": ["experiment=halving_search"],
    }
    if quick:
        experiments = {
            "quickstart": ["experiment=quickstart", "train.max_train_steps=60"],
            "halving_search": [
                "experiment=halving_search",
                "train.max_train_steps=120",
                "hydra.sweeper.steps=[20]",
            ],
        }
    print(
        f"\nwhole sweeps, packed (sweep.pack=auto) against sweep.pack=1, {rounds} round(s) (outputs in {root})"
    )
    print(f"{'sweep':>15} {'pack=1 s':>9} {'auto s':>8} {'ratio':>6} {'range':>13} {'same ranking':>13}")
    for name, overrides in experiments.items():
        times: dict[str, list[float]] = {"1": [], "auto": []}
        same = True
        for r in range(rounds):
            order = ["1", "auto"] if (r + (name != "quickstart")) % 2 == 0 else ["auto", "1"]
            for pack in order:
                label = f"{name}-pack-{pack}"
                shutil.rmtree(root / label, ignore_errors=True)  # each round trains and renders everything
                times[pack].append(run_sweep(root, label, [*overrides, f"sweep.pack={pack}"]))
            same = same and _ranking(root / f"{name}-pack-1") == _ranking(root / f"{name}-pack-auto")
        ratios = [a / b for a, b in zip(times["auto"], times["1"], strict=True)]
        print(
            f"{name:>15} {statistics.median(times['1']):9.1f} {statistics.median(times['auto']):8.1f} "
            f"{statistics.median(ratios):6.3f} {min(ratios):6.3f}-{max(ratios):.3f} {same!s:>13}"
        )


def _ranking(sweep_dir: Path) -> list[str]:
    """The report's order of the finished configurations (best first), from their run records' objectives."""
    scores = {}
    for record in sweep_dir.glob("*/run.json"):
        data = json.loads(record.read_text())
        if data.get("status") == "done":
            scores[data["run_dir"]] = data["result"].get("objective")
    return sorted(scores, key=lambda n: (scores[n] is None, -(scores[n] or 0.0), n))


def main(argv: list[str] | None = None) -> int:
    """Print seconds per configuration-step at each pack size and the ratio to one configuration alone."""
    parser = argparse.ArgumentParser(prog="python -m bench pack")
    parser.add_argument("--model", default="world", help="world (the shipped model) or tiny (offline)")
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 round, sizes 1,4; short sweeps")
    parser.add_argument("--parts", default="training,memory,sweeps", help="any of training, memory, sweeps")
    parser.add_argument("--root", type=Path, default=Path("outputs") / "bench-pack")
    parser.add_argument("--sweep-rounds", type=int, default=1, help="rounds of the whole-sweeps part")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.sizes = 10, 1, "1,4"
    sizes = [int(v) for v in args.sizes.split(",")]
    parts = set(args.parts.split(","))
    if "training" in parts:
        training_part(args, sizes)
    if "memory" in parts:
        memory_part(args.model, sizes)
    if "sweeps" in parts:
        sweeps_part(args.root.resolve(), args.quick, args.sweep_rounds)
    return 0


def training_part(args, sizes: list[int]) -> None:
    """Seconds per configuration-step at each pack size, against one configuration alone."""

    from lora_core.settings import TrainSettings

    pipe, images = bench_model(args.model)
    common = dict(COMMON, max_train_steps=args.steps, text_encoder_lr=0.0)

    def configs(n: int) -> list:
        return [TrainSettings(**common | {"learning_rate": 1e-4 * (1 + i), "seed": i}) for i in range(n)]

    alone: list[float] = []
    per_config: dict[int, list[float]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["alone", *sizes]
            for what in order[:: 1 if r % 2 == 0 else -1]:
                out = Path(tmp) / f"{r}-{what}"
                if what == "alone":
                    alone.append(seconds_per_step(pipe, images, configs(1)[0], out))
                else:
                    per_config[what].append(pack_seconds_per_step(pipe, images, configs(what), out) / what)
    print(f"model={args.model} steps={args.steps} rounds={args.rounds} resolution={common['resolution']}")
    print(f"one configuration alone: {statistics.median(alone) * 1e3:.1f} ms/step")
    print(f"{'pack':>4} {'ms/step':>8} {'ms/config-step':>14} {'vs alone':>9} {'range':>13}")
    for n in sizes:
        ratios = [p / a for p, a in zip(per_config[n], alone, strict=True)]
        print(
            f"{n:>4} {statistics.median(per_config[n]) * n * 1e3:8.1f} "
            f"{statistics.median(per_config[n]) * 1e3:14.1f} {statistics.median(ratios):9.3f} "
            f"{min(ratios):6.3f}-{max(ratios):.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
