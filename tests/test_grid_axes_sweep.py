"""The X/Y/Z plot's axes in a sweep: sampler and prompt S/R crossed with the grid, the LoRA trained once."""

import json
import re

import pytest
from PIL import Image
from sweep_cli import FAST, run_records, sweep

from sweeper.disk.layout import RunFolder
from sweeper.disk.results import load_results
from sweeper.views.compare_page import page_data
from sweeper.views.drawing import plan_layout


@pytest.mark.slow  # one sweep of two configurations, end to end
def test_a_sweep_with_sampler_and_prompt_sr_axes_trains_once_and_shows_every_axis(
    tmp_path, cache_dir, browser
):
    result = sweep(
        tmp_path,
        "experiment=quickstart",
        *FAST,
        "train.learning_rate=1e-3",
        "render.samplers=[ddim,euler_a]",
        "render.prompt_sr=[beach,snow]",
        "render.unet_scales=[0,1]",
        "render.text_scales=[1]",
    )
    assert result.returncode == 0, result.output
    sweep_dir = tmp_path / "quickstart"
    records = run_records(sweep_dir)
    assert set(records) == {"1e-3;1e-5", "1e-3;1e-4"}
    assert result.output.count("Training 2 configurations together") == 1  # each trained once, in one pack
    prompts = {"ph", "be", "be-snow"}
    wanted = {f"{p}_{u};1;4;{s}.png" for p in prompts for u in ("0", "1") for s in ("ddim", "euler_a")}
    for name in records:
        run = RunFolder(sweep_dir / name)
        assert {p.name for p in run.path.glob("*.png")} == wanted
        sheets = {p.name for p in run.sheets_dir.glob("*.png")}
        assert sheets == {f"{p}_g4_{s}.png" for p in prompts for s in ("ddim", "euler_a")}
        scores = run.read_scores()
        assert {r["cell"] for r in scores} == {
            f"{u};1;4;{s}" for u in ("0", "1") for s in ("ddim", "euler_a")
        }
    assert {p.name for p in (sweep_dir / "sheets").glob("*.png")} == {f"{p}.png" for p in prompts}
    # the sweep's sheet of a prompt: a row per run, a column per cell label (4: UNet scale x sampler)
    columns = [f"{u};1;4;{s}" for u in ("0", "1") for s in ("ddim", "euler_a")]
    title = '"a ktn cat on the snow" | every run of quickstart | columns: unet;text;guidance;sampler'
    layout = plan_layout(title, sorted(records), columns, 64)  # debug=fast: 64 px thumbnails
    with Image.open(sweep_dir / "sheets" / "be-snow.png") as sheet:
        assert sheet.size == layout.size and (layout.rows, layout.cols) == (2, 4)
    # the compare page gets each cell's sampler, which its sampler selector offers
    data = page_data(sweep_dir, load_results(sweep_dir))
    assert {c["sampler"] for c in data["cells"]} == {"ddim", "euler_a"}
    assert {c["prompt"] for c in data["cells"] if c["prompt_name"] == "be-snow"} == {"a ktn cat on the snow"}
    html = (sweep_dir / "compare.html").read_text()
    assert 'id="sampler"' in html and json.dumps("be-snow") in html
    # the report's best cell of each prompt names its sampler
    report = (sweep_dir / "report.md").read_text()
    assert "(unet;text;guidance;sampler)" in report
    assert len(re.findall(r"`[01];1;4;(?:ddim|euler_a)` \(", report)) == 2 * len(prompts)
    # in a browser: the sampler's selector is shown (the steps' is not: one value) and picks the pictures
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get((sweep_dir / "compare.html").as_uri())
    assert browser.find_element(By.ID, "sampler").is_displayed()
    assert not browser.find_element(By.ID, "steps").is_displayed()
    Select(browser.find_element(By.ID, "prompt")).select_by_value("be-snow")
    Select(browser.find_element(By.ID, "sampler")).select_by_value("euler_a")
    shown = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#cards .card img")]
    assert len(shown) == 2 and all(src.endswith("/be-snow_1%3B1%3B4%3Beuler_a.png") for src in shown), shown
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow  # two sweeps of one configuration, end to end
def test_a_rerun_with_another_sampler_trains_nothing_and_draws_a_second_labelled_grid(
    tmp_path, cache_dir, browser
):
    """``make run`` again with ``render.scheduler=euler_a``: the LoRA keeps its bytes, the first grid too,
    and ``<run>/grid-euler_a/`` holds the same cells drawn by euler_a, in the sheets, report, page and MLflow."""
    import mlflow

    args = ["experiment=quickstart", *FAST, "train.learning_rate=1e-3", "train.text_encoder_lr=1e-4"]
    args += ["render.unet_scales=[1]", "render.text_scales=[1]"]
    assert (first := sweep(tmp_path, *args, "tracking.enabled=false")).returncode == 0, first.output
    sweep_dir = tmp_path / "quickstart"
    run = RunFolder(sweep_dir / "1e-3;1e-4")
    kept = [*run.pictures(), *(p for p in run.lora_dir.rglob("*") if p.is_file())]
    before = {p: p.read_bytes() for p in kept}
    objective = run.read_record()["result"]["objective"]
    again = sweep(tmp_path, *args, "render.scheduler=euler_a")
    assert again.returncode == 0, again.output
    assert "1e-3;1e-4: LoRA already trained, skipping training." in again.output
    assert "this one (render.scheduler=euler_a) goes to grid-euler_a/" in again.output
    assert {p: p.read_bytes() for p in kept} == before  # nothing trained again, nothing drawn over
    assert run.read_record()["result"]["objective"] == objective  # the configuration's: its first grid's
    grid = run.other_grid("grid-euler_a")
    assert grid.grid_label() == "render.scheduler=euler_a"
    assert [p.name for p in grid.pictures()] == [p.name for p in run.pictures()]
    assert any(p.read_bytes() != before[run.picture(p.name)] for p in grid.pictures())  # drawn by euler_a
    assert {r["file"] for r in grid.read_scores()} == {p.name for p in grid.pictures()}
    assert {p.name for p in grid.sheets_dir.glob("*.png")} == {"ph_g4.png", "be_g4.png"}
    assert {p.name for p in (sweep_dir / "sheets" / "grid-euler_a").glob("*.png")} == {"ph.png", "be.png"}
    report = (sweep_dir / "report.md").read_text()
    assert "The tables above are the first grid's (render.scheduler=default)" in report
    assert "### `grid-euler_a`: render.scheduler=euler_a" in report
    # MLflow: the job's run holds both grids, the second one under its folder's name
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("quickstart").experiment_id], "tags.mlflow.runName = '1e-3;1e-4'"
    )
    assert len(runs) == 1 and "grid-euler_a/dino" in runs[0].data.metrics and "dino" in runs[0].data.metrics
    logged = [a.path for a in client.list_artifacts(runs[0].info.run_id, "1e-3;1e-4/grid-euler_a")]
    assert {p.rsplit("/", 1)[-1] for p in logged} == {p.name for p in grid.pictures()}
    assert "Second grid `grid-euler_a` (render.scheduler=euler_a)" in runs[0].data.tags["mlflow.note.content"]
    # the compare page: a grid selector, which picks the second grid's pictures
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get((sweep_dir / "compare.html").as_uri())
    chooser = Select(browser.find_element(By.ID, "grid"))
    assert [o.text for o in chooser.options] == [
        "first grid (render.scheduler=default)",
        "render.scheduler=euler_a",
    ]
    chooser.select_by_visible_text("render.scheduler=euler_a")
    shown = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#cards .card img")]
    assert len(shown) == 1 and "/grid-euler_a/" in shown[0], shown
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
