"""Contact sheets: exact geometry, pictures in their cells, readable labels, placeholders, the size cap."""

import numpy as np
import pytest
from PIL import Image

from lora_core.errors import UserInputError
from sweeper.views.drawing import (
    GAP,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_FONT,
    MIN_TITLE_WIDTH,
    PAD,
    PLACEHOLDER,
    font,
    grid_sheet,
    plan_layout,
    run_sheet,
    save_sheet,
    sweep_sheet,
    text_width,
    wrap,
)

UNET, TEXT = [1.0, 0.9, 0.5], [0.0, 0.5]  # rows keep the given order (not sorted)
TITLE = '"smile face" — 3e-4;1e-5 — guidance 3.6'


def _solid(colour, size=32):
    return Image.new("RGB", (size, size), colour)


def _colour(row, col):
    return (60 * row + 30, 80 * col + 20, 200)


def _centre(sheet, layout, row, col):
    left, top, right, bottom = layout.cell_box(row, col)
    return tuple(int(v) for v in np.asarray(sheet)[(top + bottom) // 2, (left + right) // 2])


def _ink(pixels):
    """Number of dark (text) pixels."""
    return int((np.asarray(pixels).max(axis=2) < 100).sum())


def _run_images():
    return {(u, t): _solid(_colour(r, c)) for r, u in enumerate(UNET) for c, t in enumerate(TEXT)}


def _run_layout(thumb=80, title=TITLE):
    return plan_layout(title, [f"unet {u:g}" for u in UNET], [f"text {t:g}" for t in TEXT], thumb)


def test_a_run_sheet_has_the_exact_layout_size():
    sheet = run_sheet(_run_images(), UNET, TEXT, TITLE, thumb=80)
    layout = _run_layout()
    assert sheet.size == layout.size
    width = PAD + max(layout.label_width + PAD + 2 * 80 + GAP, MIN_TITLE_WIDTH) + PAD
    height = PAD + layout.title_height + layout.header_height + 3 * 80 + 2 * GAP + PAD
    assert layout.size == (width, height)
    assert (layout.rows, layout.cols, layout.thumb) == (3, 2, 80)


def test_a_sweep_sheet_has_a_row_per_run_and_a_column_per_cell():
    runs, columns = ["3e-4;1e-5", "1e-4;1e-5;5000"], ["0.9;0.5;3.6", "1;1;7.5", "0.5;0;3"]  # cell labels
    images = {(run, column): _solid((10, 10, 10)) for run in runs for column in columns}
    sheet = sweep_sheet(images, runs, columns, "a ktn cat is smiling", thumb=64)
    layout = plan_layout("a ktn cat is smiling", runs, ["0.9;0.5;3.6", "1;1;7.5", "0.5;0;3"], 64)
    assert sheet.size == layout.size and (layout.rows, layout.cols) == (2, 3)
    assert layout.row_label_lines == (("3e-4;1e-5",), ("1e-4;1e-5;5000",))


def test_each_picture_lands_in_its_row_and_column():
    sheet = run_sheet(_run_images(), UNET, TEXT, TITLE, thumb=80)
    layout = _run_layout()
    for row in range(len(UNET)):
        for col in range(len(TEXT)):
            assert _centre(sheet, layout, row, col) == _colour(row, col)


def test_every_row_and_column_label_is_drawn():
    sheet = run_sheet(_run_images(), UNET, TEXT, TITLE, thumb=80)
    layout = _run_layout()
    pixels = np.asarray(sheet)
    for row in range(len(UNET)):
        left, top, _, bottom = layout.cell_box(row, 0)
        assert _ink(pixels[top:bottom, :left]) > 20, f"row label {row}"
    header_top = layout.grid_origin[1] - layout.header_height
    for col in range(len(TEXT)):
        left, top, right, _ = layout.cell_box(0, col)
        assert _ink(pixels[header_top:top, left:right]) > 20, f"column label {col}"
    assert _ink(pixels[:header_top]) > 50, "title"


def test_missing_cells_are_grey_placeholders_with_a_dash(tmp_path):
    images = {(1.0, 0.0): _solid((0, 0, 255)), (1.0, 0.5): None, (0.9, 0.0): tmp_path / "never.png"}
    sheet = run_sheet(images, UNET, TEXT, TITLE, thumb=64)  # (0.9, 0.5) and the 0.5 row are absent
    layout = _run_layout(64)
    assert _centre(sheet, layout, 0, 0) == (0, 0, 255)
    pixels = np.asarray(sheet)
    for row, col in [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]:
        left, top, _, _ = layout.cell_box(row, col)
        assert tuple(pixels[top + 4, left + 4]) == PLACEHOLDER
        assert _centre(sheet, layout, row, col) != PLACEHOLDER, "the dash"


def test_a_long_title_wraps_to_the_sheet_width_and_nothing_is_clipped():
    long_title = " ".join(["a very long prompt about a ktn cat falling from a cliff"] * 6)
    short, tall = _run_layout(64, "short"), _run_layout(64, long_title)
    assert len(tall.title_lines) > 3 and tall.size[1] > short.size[1] and tall.size[0] == short.size[0]
    face = font(tall.title_font_size, bold=True)
    assert all(text_width(line, face) <= tall.content_width for line in tall.title_lines)
    assert " ".join(tall.title_lines) == long_title
    sheet = run_sheet(_run_images(), UNET, TEXT, long_title, thumb=64)
    ink = np.argwhere(np.asarray(sheet)[: tall.grid_origin[1]].max(axis=2) < 100)
    assert ink[:, 1].max() < sheet.width - PAD // 2 and ink[:, 0].max() < tall.grid_origin[1] - 1


def test_a_wider_grid_gives_the_title_more_room():
    long_title = " ".join(["a ktn cat on a cliff"] * 12)
    narrow = plan_layout(long_title, ["a"], ["x"], 64)
    wide = plan_layout(long_title, ["a"], [str(i) for i in range(12)], 64)
    assert len(wide.title_lines) < len(narrow.title_lines)


def test_small_pictures_are_enlarged_with_crisp_pixels():
    picture = Image.new("RGB", (8, 8), (255, 0, 0))
    picture.putpixel((0, 0), (0, 255, 0))
    sheet = grid_sheet("T", ["a"], ["x"], {(0, 0): picture}, thumb=64)
    left, top, _, _ = plan_layout("T", ["a"], ["x"], 64).cell_box(0, 0)
    assert tuple(np.asarray(sheet)[top + 4, left + 4]) == (0, 255, 0)  # an 8 x enlarged pixel
    assert tuple(np.asarray(sheet)[top + 12, left + 12]) == (255, 0, 0)


def test_large_pictures_are_shrunk_to_the_thumbnail():
    sheet = grid_sheet("T", ["a"], ["x"], {(0, 0): _solid((9, 99, 199), size=700)}, thumb=64)
    layout = plan_layout("T", ["a"], ["x"], 64)
    left, top, right, bottom = layout.cell_box(0, 0)
    pixels = np.asarray(sheet)
    assert tuple(pixels[top, left]) == tuple(pixels[bottom - 1, right - 1]) == (9, 99, 199)
    assert tuple(pixels[bottom, right]) == (255, 255, 255)


def test_labels_stay_readable_on_tiny_thumbnails():
    layout = plan_layout("T", ["1e-4;1e-5;5000"], ["0.25;0.75;4.5", "1;1;7.5"], 48)
    assert layout.font_size >= MIN_FONT
    assert len(layout.col_label_lines[0]) > 1, "a long column label wraps under its cell"
    face = font(layout.font_size)
    assert all(text_width(line, face) <= 48 for line in layout.col_label_lines[0])


def test_long_row_labels_wrap_beside_their_row():
    run = "3e-3;1e-4;500;constant_with_warmup;seed_1234;prior_preservation"
    layout = plan_layout("T", [run, "3e-4;1e-5"], ["x"], 64)
    lines = layout.row_label_lines[0]
    assert len(lines) > 1 and "".join(lines) == run
    assert len(lines) * layout.line_height <= 64
    face = font(layout.font_size)
    assert layout.label_width < text_width(run, face)
    assert all(text_width(line, face) <= layout.label_width for line in lines)


def test_words_are_cut_after_a_semicolon_where_one_fits():
    face = font(14)
    lines = wrap("0.25;0.75;4.5", face, 48)
    assert lines == ["0.25;", "0.75;", "4.5"]
    assert wrap("unet 0.9", face, 500) == ["unet 0.9"]


def test_a_big_sweep_stays_within_the_size_cap():
    runs = [f"{i}e-4;1e-5" for i in range(30)]
    columns = [f"{u / 10:g};{t / 10:g};3.6" for u in range(10) for t in range(10)]
    picture = _solid((200, 30, 30), size=64)
    sheet = sweep_sheet({(r, c): picture for r in runs for c in columns}, runs, columns, "big", thumb=256)
    layout = plan_layout("big", runs, columns, 256)
    assert sheet.size == layout.size and layout.thumb < 256
    assert max(sheet.size) <= MAX_SIDE and sheet.width * sheet.height <= MAX_PIXELS
    assert _centre(sheet, layout, 29, 99) == (200, 30, 30)


def test_the_largest_expected_sweep_fits_the_cap_with_useful_thumbnails():
    layout = plan_layout("T", [f"{i}e-4;1e-5" for i in range(40)], [f"{i};1;3.6" for i in range(120)], 256)
    assert max(layout.size) <= MAX_SIDE and layout.size[0] * layout.size[1] <= MAX_PIXELS
    assert layout.thumb >= 100


def test_pictures_may_be_paths_or_images(tmp_path):
    _solid((1, 2, 3)).save(tmp_path / "a.png")
    _solid((4, 5, 6)).save(tmp_path / "b.png")
    cells = {(0, 0): tmp_path / "a.png", (0, 1): str(tmp_path / "b.png"), (0, 2): _solid((7, 8, 9))}
    sheet = grid_sheet("T", ["a"], ["x", "y", "z"], cells, thumb=48)
    layout = plan_layout("T", ["a"], ["x", "y", "z"], 48)
    assert [_centre(sheet, layout, 0, col) for col in range(3)] == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]


def test_transparent_pictures_sit_on_white():
    picture = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    sheet = grid_sheet("T", ["a"], ["x"], {(0, 0): picture}, thumb=48)
    assert _centre(sheet, plan_layout("T", ["a"], ["x"], 48), 0, 0) == (255, 255, 255)


def test_an_unreadable_picture_is_an_error_that_names_the_file(tmp_path):
    broken = tmp_path / "sf_0.9;0.5;3.6.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserInputError, match=r"sf_0\.9;0\.5;3\.6\.png"):
        grid_sheet("T", ["a"], ["x"], {(0, 0): broken}, thumb=48)


def test_cells_outside_the_grid_are_refused():
    with pytest.raises(ValueError, match="outside"):
        grid_sheet("T", ["a"], ["x"], {(0, 1): _solid((0, 0, 0))}, thumb=48)


def test_saving_writes_the_png_atomically(tmp_path):
    sheet = grid_sheet("T", ["a"], ["x"], {(0, 0): _solid((1, 2, 3))}, thumb=48)
    out = save_sheet(sheet, tmp_path / "sheets" / "sf_g3.6.png")
    with Image.open(out) as saved:
        assert saved.format == "PNG" and saved.size == sheet.size
    assert [p.name for p in out.parent.iterdir()] == ["sf_g3.6.png"], "no temporary file left"


def test_a_run_sheet_can_have_any_two_axes_as_rows_and_columns(tmp_path):
    """``render.sheet_rows=sampler render.sheet_cols=unet``: a sheet per prompt and guidance (the other axis
    that varies), rows the samplers, columns the UNet scales, each picture in its cell."""
    from omegaconf import OmegaConf

    from sweeper.config.schema import RenderConfig
    from sweeper.planning.grid import grid_cells
    from sweeper.views.sheets import draw_run_sheets

    render = OmegaConf.structured(RenderConfig)
    render.prompts = [{"sf": "smile"}]
    render.samplers, render.unet_scales, render.guidance_scales = ["ddim", "euler_a"], [0.0, 1.0], [3.0, 7.0]
    cells = grid_cells(render, "ktn", "cat")
    colours = {}
    for cell in cells:
        colours[cell.sampler, cell.unet_scale, cell.guidance] = (
            ["ddim", "euler_a"].index(cell.sampler) * 120 + 40,
            int(cell.unet_scale) * 150 + 50,
            int(cell.guidance) * 30,
        )
        _solid(colours[cell.sampler, cell.unet_scale, cell.guidance]).save(tmp_path / cell.file_name)
    written = draw_run_sheets(tmp_path, cells, 48, rows="sampler", cols="unet")
    assert [p.name for p in written] == ["sf_sampler-unet_g3.png", "sf_sampler-unet_g7.png"]
    for path, guidance in zip(written, (3.0, 7.0), strict=True):
        title = f'"smile" | {tmp_path.name} | guidance {guidance:g} | rows sampler, columns unet'
        layout = plan_layout(title, ["sampler ddim", "sampler euler_a"], ["unet 0", "unet 1"], 48)
        with Image.open(path) as sheet:
            assert sheet.size == layout.size
            for r, sampler in enumerate(["ddim", "euler_a"]):
                for c, unet in enumerate([0.0, 1.0]):
                    assert _centre(sheet.convert("RGB"), layout, r, c) == colours[sampler, unet, guidance]
    # the default stays a sheet per guidance (and sampler), rows UNet, columns text
    assert {p.name for p in draw_run_sheets(tmp_path, cells, 48)} == {
        f"sf_g{g}_{s}.png" for g in (3, 7) for s in ("ddim", "euler_a")
    }


@pytest.mark.parametrize(
    ("rows", "cols", "message"),
    [
        ("seed", "text", "render.sheet_rows=seed: use one of unet, text, text_2, guidance, sampler, steps"),
        ("unet", "unet", "render.sheet_cols=unet: the same axis as render.sheet_rows"),
    ],
)
def test_bad_sheet_axes_are_refused_naming_the_key(rows, cols, message):
    from omegaconf import OmegaConf

    from sweeper.config.schema import RenderConfig
    from sweeper.planning.grid import grid_cells

    render = OmegaConf.structured(RenderConfig)
    render.sheet_rows, render.sheet_cols = rows, cols
    with pytest.raises(UserInputError, match=message) as refused:
        grid_cells(render, "ktn", "cat")
    assert "\n" not in str(refused.value)
