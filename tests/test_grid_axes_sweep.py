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
