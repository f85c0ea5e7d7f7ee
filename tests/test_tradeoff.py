"""The report's subject-against-prompt section: DINO and CLIP-T per UNet scale, where CLIP-T peaks."""

from pathlib import Path

import numpy as np
from PIL import Image

from sweeper.disk.results import RunResult
from sweeper.views.report.tradeoff import knee, scale_curves, scale_lines

CYCLE = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's first colours: C0, C1, C2


def _run(name: str, points: dict[float, tuple[float, float]], prompts=("be", "sn")) -> RunResult:
    """A run whose pictures at UNet scale s score (dino, clip_t) = points[s] on average over two prompts."""
    rows = []
    for scale, (dino, clip_t) in points.items():
        for k, prompt in enumerate(prompts):
            spread = 0.02 if k else -0.02  # the prompts differ; their mean is the point
            rows.append(
                {
                    "prompt_name": prompt,
                    "unet_scale": scale,
                    "text_scale": 1.0,
                    "guidance": 4.0,
                    "dino": dino + spread,
                    "clip_i": 0.5,
                    "clip_t": clip_t - spread,
                }
            )
    return RunResult(Path(name), {}, [], rows)


def test_curve_is_the_mean_per_unet_scale_and_the_knee_is_where_clip_t_peaks():
    run = _run("1e-3;1e-4", {0: (0.40, 0.30), 0.5: (0.55, 0.33), 1: (0.70, 0.28), 1.5: (0.78, 0.22)})
    curve = scale_curves([run])["1e-3;1e-4"]
    assert list(curve) == [0, 0.5, 1, 1.5]
    assert abs(curve[0.5]["dino"] - 0.55) < 1e-9 and abs(curve[0.5]["clip_t"] - 0.33) < 1e-9
    k = knee(curve)
    assert k["peak"] == 0.5 and k["top"] == 1.5
    assert abs(k["dino_gain"] - 0.23) < 1e-9 and abs(k["clip_t_cost"] - 0.11) < 1e-9


def test_section_has_a_row_per_run_and_writes_the_plot(tmp_path):
    rising = _run("1e-3;1e-4", {0: (0.40, 0.30), 1: (0.70, 0.25)})
    flat = _run("1e-4;1e-4", {0: (0.40, 0.30), 1: (0.42, 0.31)})
    single = _run("3e-4;0", {1: (0.6, 0.3)})  # one scale: no curve, no row
    lines = scale_lines(tmp_path, [rising, flat, single])
    text = "\n".join(lines)
    assert "| `1e-3;1e-4` | 0.400 / 0.300 | 0.700 / 0.250 | 0 | DINO +0.300, CLIP-T -0.050 |" in text
    assert "| `1e-4;1e-4` | 0.400 / 0.300 | 0.420 / 0.310 | 1 | - |" in text, (
        "CLIP-T peaks at the top: no cost"
    )
    assert "3e-4;0" not in text
    _assert_a_line_per_curve_in_each_panel(tmp_path / "scale_tradeoff.png", lines=2)


def _assert_a_line_per_curve_in_each_panel(path, lines: int):
    """The plot's three panels (DINO, CLIP-T, CLIP-T against DINO) each draw one line per configuration with a
    curve, in matplotlib's colour cycle: the first ``lines`` colours are there, the next is not."""
    image = Image.open(path).convert("RGB")
    assert image.size == (1650, 495)  # 15 x 4.5 inches at 110 dpi
    for panel in np.array_split(np.asarray(image).astype(int), 3, axis=1):
        for k, colour in enumerate(CYCLE[: lines + 1]):
            drawn = int((np.abs(panel - colour).sum(axis=2) < 30).sum())
            assert (drawn > 50) == (k < lines), f"colour {colour}: {drawn} pixels"


def test_no_section_without_two_scored_scales(tmp_path):
    assert scale_lines(tmp_path, [_run("a", {1: (0.6, 0.3)}), RunResult(Path("b"), {}, [], [])]) == []
    assert not (tmp_path / "scale_tradeoff.png").exists()
