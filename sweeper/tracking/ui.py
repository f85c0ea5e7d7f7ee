"""What the MLflow UI shows of a sweep when its link is opened: the jobs, their columns, curves and pictures.

MLflow 3.17's UI opens an experiment in GenAI mode unless the link says ``workflowType=machine_learning``,
folds child runs under their parent (and a shared view cannot unfold them: the UI drops ``runsExpanded``
from shared state), shows no param or metric columns until someone picks them, and keeps those choices in
the browser. So a sweep's jobs are flat runs (tagged ``sweep_role=job`` and ``sweep_parent=<parent run>``)
and the project writes a *shared view* into the experiment: the experiment tag
``mlflow.sharedViewState.<key>`` holds the state the UI restores when the link carries
``viewStateShareKey=<key>``: a filter to the jobs, the varying hyperparameters and the metric means as
columns, sorted by the objective, and the chart view's sections (training curves, scores, pictures).

``python -m sweeper.tracking.ui [--store outputs/mlflow.db] [--port 5000]`` prints every sweep's link and
starts ``mlflow ui`` on 127.0.0.1 (``make ui``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from lora_core.errors import UserInputError
from sweeper.disk.layout import default_store
from sweeper.disk.naming import label_keys, param_key
from sweeper.errors import user_errors
from sweeper.tracking.tags import JOB_FILTER, JOB_ROLE, ROLE_TAG
from sweeper.tracking.tracker import image_key

VIEW_KEY = "sweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
SCORE_METRICS = ("objective", "dino", "clip_i", "clip_t")
CURVES = ("loss", "val_loss", "lr", "text_encoder_lr")
DEFAULT_UI = "http://127.0.0.1:5000"


def image_chart_key(prompt_name: str) -> str:
    """The MLflow image key of a prompt's cells (``grid/sf``); step ``i`` is the prompt's ``i``-th cell."""
    return f"grid/{image_key(prompt_name)}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "lora-sweeps/" + "/".join(parts)))


def view_state(varying: list[str], prompts: list[str]) -> dict:
    """The shared view of a sweep: job rows, their columns and the chart view.

    Args:
        varying: The run folders' naming keys that vary in the sweep (``learning_rate``, ...).
        prompts: The prompts' short names (one image chart each).

    Returns:
        The state, as the UI's "share view" writes it (search facets and UI state in one object).
    """
    params = list(dict.fromkeys(["learning_rate", "text_encoder_lr", *varying]))
    columns = [_column("params", param_key(k)) for k in params]
    columns += [_column("metrics", m) for m in (*SCORE_METRICS, "final_loss")]
    sections = {name: _uid("section", name) for name in ("Training curves", "Scores", "Pictures")}
    charts = [_chart("LINE", sections["Training curves"], metricKey=m) for m in CURVES]
    charts += [_chart("BAR", sections["Scores"], metricKey=m) for m in SCORE_METRICS]
    charts += [
        _chart("IMAGE", sections["Pictures"], imageKeys=[image_chart_key(p)], step=0, showRunParams=False)
        for p in prompts
    ]
    return {
        "searchFilter": JOB_FILTER,
        "orderByKey": _column("metrics", "objective"),
        "orderByAsc": False,
        "selectedColumns": columns,
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": u,
                "name": n,
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
            for n, u in sections.items()
        ],
        "isAccordionReordered": True,  # keep this order; metrics the view does not name follow below
        "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True,
    }


def _chart(kind: str, section: str, **fields) -> dict:
    name = fields.get("metricKey") or fields["imageKeys"][0]
    chart = {
        "uuid": _uid("chart", kind, name),
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "displayName": name,
        **fields,
    }
    if kind == "LINE":
        chart |= {
            "lineSmoothness": 0,
            "xAxisKey": "step",
            "xAxisScaleType": "linear",
            "scaleType": "linear",
            "yAxisKey": "metric",
            "yAxisExpressions": [],
            "selectedXAxisMetricKey": "",
            "useGlobalXaxisKey": False,
            "useGlobalLineSmoothing": False,
            "ignoreOutliers": False,
            "range": {},
        }
    return chart


def ui_base(uri: str, port: int = 5000) -> str:
    """Where a person opens the UI of a store: the server itself, or ``make ui``'s address for SQLite."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def experiment_link(base: str, experiment_id: str, charts: bool = False) -> str:
    """The deep link to a sweep's jobs in model-training mode (``charts``: the chart view)."""
    link = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return link + ("&compareRunsMode=CHART" if charts else "")


def sweep_links(store_uri: str, port: int = 5000) -> list[tuple[str, str]]:
    """(experiment name, link) of every experiment of a store that holds a sweep view."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    return [
        (e.name, experiment_link(ui_base(store_uri, port), e.experiment_id))
        for e in client.search_experiments()
        if VIEW_TAG in e.tags
    ]


def note_for_job(run_name: str, settings: dict, varying: list[str], best: dict, prompts: dict) -> str:
    """A job run's description (``mlflow.note.content``): what it is, its best cells, where its pictures are."""
    shown = list(dict.fromkeys(["learning_rate", "text_encoder_lr", *varying]))
    values = ", ".join(f"{k} {settings.get(k)}" for k in shown if "." not in k)
    lines = [
        f"Training configuration `{run_name}`: {values}; {settings.get('lr_scheduler')} schedule, "
        f"{settings.get('max_train_steps')} steps, rank {settings.get('rank')}."
    ]
    for prompt, (cell, value) in best.items():
        lines.append(f"Best cell for `{prompt}` ({label_keys(cell)}): `{cell}`, objective {value:.3f}.")
    for prompt, cells in prompts.items():
        steps = ", ".join(f"{i}: {c}" for i, c in enumerate(cells))
        lines.append(f"Image chart `{image_chart_key(prompt)}`, step = cell: {steps}.")
    lines.append("Contact sheets: artifacts `sheets/`; adapters: `lora/`.")
    return "\n\n".join(lines)


def sweep_space(plan, searched: dict | None = None) -> dict[str, str]:
    """The sweep's hyperparameter space as params: ``space.<key>`` -> the values its jobs take.

    Args:
        plan: The ``SweepPlan`` (its jobs' overrides).
        searched: A search sweeper's ``params`` (Optuna: ``interval(...)``, ``choice(...)``), used as they are.
    """
    values: dict[str, list[str]] = {}
    for job in plan.jobs.values():
        for override in job.get("overrides", []):
            key, _, value = override.partition("=")
            values.setdefault(key.lstrip("+~"), [])
            if value not in values[key.lstrip("+~")]:
                values[key.lstrip("+~")].append(value)
    space = {f"space.{k}": ",".join(v) for k, v in values.items() if len(v) > 1}
    return space | {f"space.{k}": str(v) for k, v in (searched or {}).items()}


def describe_sweep(tracker, parent: str | None, config, plan) -> None:
    """At the start of a sweep: the experiment's shared view, and the space on the parent run."""
    from sweeper.planning.grid import resolve_prompts

    prompts = list(resolve_prompts(config.render.prompts, config.data.token, config.data.class_name))
    tracker.set_experiment_tags({VIEW_TAG: json.dumps(view_state(plan.varying, prompts))})
    searched = None if plan.jobs else dict(config.hydra.sweeper.get("params") or {})
    tracker.log_new_params(parent, sweep_space(plan, searched))


def summarise_sweep(tracker, parent: str | None, sweep_dir: Path, objective: str) -> None:
    """At the end of a sweep: the best configuration and its best cells on the parent run, and its note."""
    from sweeper.disk.results import load_results
    from sweeper.search.objective import objective_value, parse_objective

    if not parent:
        return
    terms = parse_objective(objective)
    scored = [(objective_value(run.means(), terms), run) for run in load_results(sweep_dir)]
    scored = [(value, run) for value, run in scored if value is not None]
    lines = [
        f"Sweep `{sweep_dir.name}`: every job is a run of this experiment (tag `{ROLE_TAG}={JOB_ROLE}`); "
        "`report.md`, `compare.html`, `loss_curves.png` and the sweep sheets are this run's artifacts."
    ]
    if scored:
        value, best = max(scored, key=lambda pair: pair[0])
        cells = best.best_cells(terms)
        tracker.set_tags(
            parent, {"best_configuration": best.name, **{f"best_cell.{p}": c for p, (c, _v) in cells.items()}}
        )
        tracker.log_metrics(parent, [("best_objective", value, 0)])
        lines.append(
            f"Best configuration by `{objective}`: `{best.name}` ({value:.3f}); its best cells: "
            + ", ".join(f"`{p}` {c}" for p, (c, _v) in cells.items())
            + "."
        )
    tracker.set_tags(parent, {"mlflow.note.content": "\n\n".join(lines)})


def main(argv: list[str] | None = None) -> int:
    """Print each sweep's link, then run ``mlflow ui`` on the store (one web worker: a one-person store)."""
    parser = argparse.ArgumentParser(
        prog="python -m sweeper.tracking.ui", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--store", type=Path, default=default_store("outputs"))
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--print-only", action="store_true", help="print the links and exit")
    args = parser.parse_args(argv)
    if not args.store.is_file():
        with user_errors():
            raise UserInputError(f"{args.store}: no MLflow store yet; run a sweep first (make run).")
    uri = f"sqlite:///{args.store.resolve()}"
    for name, link in sweep_links(uri, args.port):
        print(f"{name}: {link}")
    sys.stdout.flush()
    if args.print_only:
        return 0
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [
        mlflow,
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    os.execv(mlflow, command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
