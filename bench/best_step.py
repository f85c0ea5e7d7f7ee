"""The best step from one run's checkpoints against a real step sweep, side by side (issue 12).

    python -m bench best_step [--quick] [--root outputs/bench-best-step] [--steps 300 600 900]

For each configuration (learning rate x LR schedule, on the world model and drawn kitten, the quickstart
grid), two ways to choose the number of training steps:

1. **checkpoints**: one run to the last step, its grid also rendered at the earlier steps
   (``render.steps``); the best step is the one whose grid scores highest by ``eval.objective`` (what
   ``report.md`` names);
2. **step sweep**: a separate run per step count (``train.max_train_steps=300,600,900``), each with its
   own schedule; the best is the run that scores highest.

With a constant schedule a checkpoint at step k holds the weights of a run to k, so the two must agree
exactly (same objective at each step). With a decaying schedule (cosine) a run to k has already annealed
at k while the long run's checkpoint has not, so they can disagree: this says how often and by how much.
Prints each configuration's objective at each step both ways and whether the best steps agree.
``--quick`` runs the tiny model with ``debug=fast`` (mechanics only; the scores mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.halving import run_sweep

REPO = Path(__file__).resolve().parent.parent
CONFIGURATIONS = [
    "train.learning_rate=3e-4,1e-3",
    "train.text_encoder_lr=1e-4",
    "train.lr_scheduler=constant,cosine",
]


def _sweep(root: Path, name: str, extra: list[str]) -> float:
    return run_sweep(root, name, ["experiment=quickstart", *CONFIGURATIONS, *extra])


def _key(settings: dict) -> str:
    return f"lr {settings['learning_rate']:g}, {settings['lr_scheduler']}"


def compare(root: Path, objective: str = "dino+clip_t") -> list[dict]:
    """Per configuration: objective by step from the checkpoints and from the step sweep, and both bests.

    Args:
        root: The bench's sweep root (``checkpoints/`` and ``step_sweep/`` in it).
        objective: ``eval.objective``.

    Returns:
        One dict per configuration: ``configuration``, ``checkpoints`` and ``step_sweep`` (step ->
        objective), ``best_checkpoint``, ``best_step_sweep``, ``agree``.
    """
    from sweeper.disk.layout import RunFolder
    from sweeper.disk.results import load_results
    from sweeper.search.objective import objective_value, parse_objective
    from sweeper.views.report.best_step import step_means

    terms = parse_objective(objective)
    from_checkpoints: dict[str, dict[int, float]] = {}
    for run in load_results(root / "checkpoints"):
        means = step_means(RunFolder(run.run_dir), int(run.settings["max_train_steps"]))
        from_checkpoints[_key(run.settings)] = {
            s: objective_value(m, terms) for s, m in sorted(means.items())
        }
    from_sweep: dict[str, dict[int, float]] = {}
    for run in load_results(root / "step_sweep"):
        steps = int(run.settings["max_train_steps"])
        from_sweep.setdefault(_key(run.settings), {})[steps] = objective_value(run.means(), terms)
    rows = []
    for name, values in from_checkpoints.items():
        swept = dict(sorted(from_sweep.get(name, {}).items()))
        best_c = max(values, key=values.get)
        best_s = max(swept, key=swept.get) if swept else None
        rows.append(
            {
                "configuration": name,
                "checkpoints": values,
                "step_sweep": swept,
                "best_checkpoint": best_c,
                "best_step_sweep": best_s,
                "agree": best_c == best_s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench best_step", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, debug=fast, steps 3 6 9")
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "bench-best-step")
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 600, 900])
    args = parser.parse_args(argv)
    steps = [3, 6, 9] if args.quick else sorted(args.steps)
    extra = ["model=tiny", "debug=fast"] if args.quick else []
    below = ",".join(str(s) for s in steps[:-1])
    checkpoint_seconds = _sweep(
        args.root, "checkpoints", [*extra, f"train.max_train_steps={steps[-1]}", f"render.steps=[{below}]"]
    )
    sweep_seconds = _sweep(
        args.root, "step_sweep", [*extra, f"train.max_train_steps={','.join(map(str, steps))}"]
    )
    rows = compare(args.root)
    print(f"objective dino+clip_t at steps {steps}: from one run's checkpoints | from a run per step count")
    for row in rows:
        c = ", ".join(f"{s}: {v:.4f}" for s, v in row["checkpoints"].items())
        s = ", ".join(f"{k}: {v:.4f}" for k, v in row["step_sweep"].items())
        verdict = "agree" if row["agree"] else "DISAGREE"
        print(
            f"  {row['configuration']:<22} best {row['best_checkpoint']} | best {row['best_step_sweep']}  {verdict}"
        )
        print(f"      checkpoints  {c}\n      step sweep   {s}")
    agreed = sum(r["agree"] for r in rows)
    print(
        f"best step agrees in {agreed}/{len(rows)} configurations; wall time: checkpoints "
        f"{checkpoint_seconds:.0f} s, step sweep {sweep_seconds:.0f} s"
    )
    (args.root / "best_step.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
