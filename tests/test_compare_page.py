"""The compare page and the report, read the way a person reads them (a real headless browser)."""

import itertools
import re

import pytest
from conftest import ARTIFACTS

from sweeper.disk.results import load_results
from sweeper.views.report import write_report


@pytest.mark.slow
def test_the_report_has_a_row_per_configuration_and_the_loss_plot(quickstart_sweep):
    root, _ = quickstart_sweep
    report, page = write_report(root / "quickstart")
    text = report.read_text()
    for run in ("1e-5;1e-4", "1e-5;1e-5", "2e-3;1e-4", "2e-3;1e-5"):
        assert f"| `{run}` |" in text
    _assert_the_best_per_metric_is_bold(text, load_results(root / "quickstart"))
    assert (root / "quickstart" / "loss_curves.png").stat().st_size > 1000
    html = page.read_text()
    external = re.findall(
        r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I
    )
    assert page.name == "compare.html" and external == [], "the page must open offline"


def _assert_the_best_per_metric_is_bold(text, runs):
    """In each metric's column exactly the best run's cell is bold (highest score; lowest final_loss)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| configuration |"))
    header = lines[start].strip("|").split("|")
    columns = {name.strip(): i for i, name in enumerate(header)}
    rows = {}
    for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :]):  # this table only
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    assert set(rows) == {run.name for run in runs}
    metrics = [m for m in ("dino", "clip_i", "clip_t", "final_loss") if m in columns]
    assert "dino" in metrics and "final_loss" in metrics, header
    for metric in metrics:
        value = {run.name: run.final_loss if metric == "final_loss" else run.means()[metric] for run in runs}
        best = (min if metric == "final_loss" else max)(value, key=value.get)
        bold = [name for name, cells in rows.items() if cells[columns[metric]].startswith("**")]
        assert bold == [best], f"{metric}: {bold} is bold, the best is {best}"


def _shown(driver):
    from selenium.webdriver.common.by import By

    return [
        (c.get_attribute("data-run"), c.find_element(By.TAG_NAME, "img").get_attribute("src"))
        for c in driver.find_elements(By.CSS_SELECTOR, "#cards .card")
    ]


def _all_images_loaded(driver) -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll('img')].filter(i => i.offsetParent !== null)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )


@pytest.mark.slow
def test_the_compare_page_works_from_file_in_a_browser(quickstart_sweep, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root, _ = quickstart_sweep
    _, page = write_report(root / "quickstart")
    browser.get(page.as_uri())
    first = _shown(browser)
    # it opens on the LoRA at its strongest (UNet 1, text 1), not on four copies of the base model's picture
    assert len(first) == 4 and all(src.endswith("/ph_1%3B1%3B4.png") for _, src in first)
    assert _all_images_loaded(browser)
    # one sampler and one step count: their selectors are not shown
    assert not any(browser.find_element(By.ID, axis).is_displayed() for axis in ("sampler", "steps"))

    Select(browser.find_element(By.ID, "unet")).select_by_value("0.5")
    Select(browser.find_element(By.ID, "text")).select_by_value("0")
    Select(browser.find_element(By.ID, "prompt")).select_by_value("be")
    after = _shown(browser)
    assert all(src.endswith("/be_0.5%3B0%3B4.png") for _, src in after), "the chosen scales stay"
    assert _all_images_loaded(browser)

    # every score is short: 4 decimals, a small final loss to 4 significant digits (0.007185, not 0.0071845985...)
    for card in browser.find_elements(By.CSS_SELECTOR, ".card .scores"):
        values = dict(zip(*[iter(card.text.split())] * 2, strict=True))
        digits = {m: v.split("e")[0].lstrip("0.").replace(".", "") for m, v in values.items()}
        assert "final_loss" in values and all(len(d) <= 4 for d in digits.values()), card.text

    Select(browser.find_element(By.ID, "sort")).select_by_value("name")
    assert [run for run, _ in _shown(browser)] == ["1e-5;1e-4", "1e-5;1e-5", "2e-3;1e-4", "2e-3;1e-5"]
    colours = {
        c.value_of_css_property("background-color") for c in browser.find_elements(By.CSS_SELECTOR, ".card")
    }
    assert len(colours) > 1, "cards are coloured by the chosen metric"

    browser.find_element(By.ID, "tab-run").click()
    Select(browser.find_element(By.ID, "run")).select_by_value("1e-5;1e-5")
    sheets = browser.find_elements(By.CSS_SELECTOR, "#sheets img")
    assert [s.get_attribute("alt") for s in sheets] == [
        "1e-5;1e-5/sheets/be_g4.png",
        "1e-5;1e-5/sheets/ph_g4.png",
    ]
    assert _all_images_loaded(browser)
    browser.find_element(By.ID, "tab-cell").click()

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "compare_page.png"))
