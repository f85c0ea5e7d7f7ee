"""A sweep trains its configurations in packs (sweep.pack): the plan, the pack jobs, and what the user sees."""

import os
import signal
import time

import numpy as np
import pytest
from PIL import Image
from sweep_cli import FAST, mlflow_runs, planned_refusal, refused, run_records, start_sweep, sweep

from lora_core.errors import UserInputError
from sweeper.planning.packs import pack_size_setting


def _plan(tmp_path, *args: str):
    """The plan ``python -m sweeper -m args...`` makes before any job, composed and planned in-process."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sweeper.app import CONF_DIR
    from sweeper.planning.callback import SweepCallback
    from sweeper.planning.plan import SweepPlan

    overrides = [*args, f"sweep.root={tmp_path}", "tracking.enabled=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config(
            "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        SweepCallback().on_multirun_start(config)
        return SweepPlan.load(tmp_path / config.sweep.name)


@pytest.mark.parametrize("value", [0, -2, "abc", "2.5", True, 1.5, "", None])
def test_sweep_pack_takes_a_positive_integer_or_auto(value):
    with pytest.raises(UserInputError, match=r"^sweep\.pack=.*positive integer.*auto"):
        pack_size_setting(value)
    assert pack_size_setting("auto") is None
    assert pack_size_setting(3) == 3 and pack_size_setting("4") == 4


def test_a_bad_sweep_pack_stops_the_sweep_before_anything_trains(tmp_path, capsys):
    result = planned_refusal(capsys, tmp_path, "experiment=quickstart", *FAST, "sweep.pack=0")
    refused(result, "sweep.pack=0", "positive integer")
    assert not list(tmp_path.glob("quickstart/*/lora"))


@pytest.mark.slow  # six sweeps planned
def test_the_plan_packs_what_can_share_and_says_why_the_rest_runs_alone(tmp_path):
    grid = [
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-4,2e-4,3e-4",
        "train.text_encoder_lr=0,1e-4",
    ]
    plan = _plan(tmp_path / "a", *grid)
    assert [len(p) for p in plan.packs] == [6] and not plan.alone  # auto: one pack of the six
    plan = _plan(tmp_path / "b", *grid, "sweep.pack=4")
    assert [len(p) for p in plan.packs] == [3, 3]  # as few packs as the limit allows, of even sizes
    assert sorted(n for p in plan.packs for n in p) == sorted(plan.jobs)
    plan = _plan(tmp_path / "c", *grid, "sweep.pack=1")
    assert [len(p) for p in plan.packs] == [1] * 6 and not plan.alone
    # a setting a pack cannot vary splits the packs; one that cannot pack at all runs alone, and says why
    plan = _plan(
        tmp_path / "d", "experiment=quickstart", *FAST, "train.learning_rate=1e-4,2e-4", "train.rank=4,8"
    )
    assert [len(p) for p in plan.packs] == [8]  # ranks differ inside a pack (padded); x 2 text-encoder rates
    plan = _plan(
        tmp_path / "e",
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-4,2e-4",
        "lora.kind=lora,loha,dora",
    )
    assert sorted(len(p) for p in plan.packs) == [1, 1, 1, 1, 4, 4]  # LoRA's pack and DoRA's
    assert set(plan.alone) == {n for n in plan.jobs if "loha" in n}
    assert all("lora.kind=loha" in reason and "runs alone" in reason for reason in plan.alone.values())
    # DoRA on a half-precision base model runs alone (its row norms round otherwise in a pack)
    plan = _plan(tmp_path / "g", "experiment=quickstart", *FAST, "lora.kind=dora", "model.dtype=bfloat16")
    assert len(plan.alone) == 4 and all("half-precision" in reason for reason in plan.alone.values())
    plan = _plan(
        tmp_path / "f",
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-4,2e-4",
        "train.resolution=32,64",
    )
    assert sorted(len(p) for p in plan.packs) == [4, 4]  # one pack per resolution


def test_auto_spreads_packs_over_the_launchers_parallel_jobs(tmp_path):
    plan = _plan(tmp_path, "experiment=quickstart", *FAST, "launcher=joblib", "hydra.launcher.n_jobs=2")
    assert [len(p) for p in plan.packs] == [2, 2]


def test_auto_packs_no_more_than_the_memory_bound(monkeypatch):
    from lora_core.packs import memory
    from lora_core.settings import TrainSettings

    s = TrainSettings(resolution=512)
    per = memory.per_config_bytes(s, None)  # SD 1.x's UNet at 512 px
    monkeypatch.setattr(memory, "free_memory", lambda device: int(per * 6.5))
    assert memory.pack_capacity(s, None) == 3  # half the free memory: 3 configurations' activations
    monkeypatch.setattr(memory, "free_memory", lambda device: int(per))
    assert memory.pack_capacity(s, None) == 1
    monkeypatch.setattr(memory, "free_memory", lambda device: int(per * 1000))
    assert memory.pack_capacity(s, None) == memory.AUTO_MAX


def _pictures(sweep_dir):
    return {
        str(p.relative_to(sweep_dir)): np.asarray(Image.open(p), dtype=np.float32)
        for p in sorted(sweep_dir.glob("*/*.png"))
        if p.parent.name != "sheets"
    }


@pytest.mark.slow  # the quickstart again, each configuration alone
def test_a_packed_sweep_gives_the_pictures_report_and_runs_of_one_job_per_configuration(
    quickstart_sweep, tmp_path
):
    packed_root, packed = quickstart_sweep
    assert packed.returncode == 0, packed.output
    alone = sweep(tmp_path, "experiment=quickstart", *FAST, "sweep.pack=1")
    assert alone.returncode == 0, alone.output
    a, b = _pictures(packed_root / "quickstart"), _pictures(tmp_path / "quickstart")
    assert a.keys() == b.keys() and len(a) == 48
    worst = max(np.abs(a[k] - b[k]).max() for k in a)
    assert worst <= 2, worst  # of 255: the pack's rounding (docs/packs.md)
    records = run_records(packed_root / "quickstart")
    assert {r["pack"]["size"] for r in records.values()} == {4}
    assert all("pack" not in r for r in run_records(tmp_path / "quickstart").values())
    children = [r for r in mlflow_runs(packed_root, "quickstart") if r.data.tags.get("sweep_role") == "job"]
    assert len(children) == 4 and {r.data.tags["pack_size"] for r in children} == {"4"}
    assert all(r.info.status == "FINISHED" and "loss" in r.data.metrics for r in children)
    # the same ranking by the objective, and each configuration's mean DINO within 0.01
    ranked = [_ranking(root / "quickstart") for root in (packed_root, tmp_path)]
    assert [name for name, _ in ranked[0]] == [name for name, _ in ranked[1]]
    for (_, a_scores), (_, b_scores) in zip(*ranked, strict=True):
        assert abs(a_scores["dino"] - b_scores["dino"]) <= 0.01


def _ranking(sweep_dir) -> list[tuple[str, dict]]:
    """The configurations best first by the objective, with their mean scores (``sweeper.disk.results``)."""
    from sweeper.disk.results import load_results
    from sweeper.search.objective import DEFAULT_OBJECTIVE, objective_value, parse_objective

    terms = parse_objective(DEFAULT_OBJECTIVE)
    rows = [(r.name, r.means()) for r in load_results(sweep_dir)]
    return sorted(rows, key=lambda row: -objective_value(row[1], terms))


@pytest.mark.slow  # kills a pack, then trains it twice more
def test_a_killed_pack_resumes_each_configuration_from_its_own_checkpoint(tmp_path):
    from safetensors.torch import load_file

    args = [
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3,2e-3",
        "train.text_encoder_lr=1e-4",
        "train.max_train_steps=60",
        "train.checkpoint_every=10",
        "render.enabled=false",
    ]
    process = start_sweep(tmp_path, *args)
    folders = [tmp_path / "quickstart" / f"{lr};1e-4" / "lora" for lr in ("1e-3", "2e-3")]
    deadline = time.monotonic() + 300
    while not all((f / "checkpoints" / "step-000020").is_dir() for f in folders):
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not any((f / "pytorch_lora_weights.safetensors").exists() for f in folders)
    resumed = sweep(tmp_path, *args)
    assert resumed.returncode == 0, resumed.output
    records = run_records(tmp_path / "quickstart")
    assert all(int(r["result"]["resumed_from"].rsplit("-", 1)[1]) >= 20 for r in records.values())
    fresh = sweep(tmp_path / "fresh", *args, "train.checkpoint_every=0")
    assert fresh.returncode == 0, fresh.output
    for folder in folders:
        mine = load_file(str(folder / "pytorch_lora_weights.safetensors"))
        other = load_file(
            str(tmp_path / "fresh" / folder.relative_to(tmp_path) / "pytorch_lora_weights.safetensors")
        )
        assert mine.keys() == other.keys()
        assert all(np.array_equal(mine[k].numpy(), other[k].numpy()) for k in mine)  # bit for bit
