import numpy as np
from PIL import Image

from sweeper.sheets import MAX_SIDE, PLACEHOLDER, grid_sheet, plan_layout, save_sheet


def _solid(colour, size=32):
    return Image.new("RGB", (size, size), colour)


def _centre(sheet, layout, row, col):
    left, top, right, bottom = layout.cell_box(row, col)
    return tuple(np.asarray(sheet)[(top + bottom) // 2, (left + right) // 2])


def test_sheet_has_the_layout_size_and_puts_each_picture_in_its_cell():
    colours = {(r, c): (40 * r + 20, 60 * c + 10, 200) for r in range(2) for c in range(3)}
    rows, cols = ["unet 0.5", "unet 1"], ["text 0", "text 0.5", "text 1"]
    sheet = grid_sheet("title", rows, cols, {k: _solid(v) for k, v in colours.items()}, thumb=80)
    layout = plan_layout("title", rows, cols, 80)
    assert sheet.size == layout.size
    for (r, c), colour in colours.items():
        assert _centre(sheet, layout, r, c) == colour


def test_labels_are_drawn_beside_and_above_the_cells():
    rows, cols = ["unet 0.5"], ["text 1"]
    sheet = np.asarray(grid_sheet("T", rows, cols, {(0, 0): _solid((255, 255, 255))}, thumb=64))
    layout = plan_layout("T", rows, cols, 64)
    left, top, _, bottom = layout.cell_box(0, 0)
    row_label = sheet[top:bottom, :left]
    col_label = sheet[layout.grid_origin[1] - layout.header_height : top, left:]
    assert (row_label.max(axis=2) < 100).sum() > 20, "row label text"
    assert (col_label.max(axis=2) < 100).sum() > 20, "column label text"


def test_missing_cells_are_placeholders():
    sheet = grid_sheet("T", ["a"], ["x", "y"], {(0, 0): _solid((0, 0, 255)), (0, 1): None}, thumb=64)
    layout = plan_layout("T", ["a"], ["x", "y"], 64)
    left, top, _, _ = layout.cell_box(0, 1)
    assert tuple(np.asarray(sheet)[top + 2, left + 2]) == PLACEHOLDER
    assert _centre(sheet, layout, 0, 0) == (0, 0, 255)


def test_a_long_title_wraps_and_makes_the_sheet_taller():
    short = plan_layout("short", ["a"], ["x"], 64)
    long_title = " ".join(["a very long prompt about a cat falling from a cliff"] * 6)
    tall = plan_layout(long_title, ["a"], ["x"], 64)
    assert len(tall.title_lines) > 3 and tall.size[1] > short.size[1] and tall.size[0] == short.size[0]
    wide = plan_layout(long_title, ["a"], [str(i) for i in range(12)], 64)
    assert len(wide.title_lines) < len(tall.title_lines)  # wraps to the sheet's width
    sheet = grid_sheet(long_title, ["a"], ["x"], {(0, 0): _solid((0, 0, 0))}, thumb=64)
    ink = np.argwhere(np.asarray(sheet)[: tall.grid_origin[1]].max(axis=2) < 100)
    assert ink[:, 1].max() < sheet.width - 2, "no title text clipped at the right edge"


def test_small_pictures_are_scaled_up_to_the_thumbnail():
    picture = Image.new("RGB", (8, 8), (255, 0, 0))
    picture.putpixel((0, 0), (0, 255, 0))
    sheet = grid_sheet("T", ["a"], ["x"], {(0, 0): picture}, thumb=64)
    left, top, _, _ = plan_layout("T", ["a"], ["x"], 64).cell_box(0, 0)
    assert tuple(np.asarray(sheet)[top + 4, left + 4]) == (0, 255, 0)  # crisp 8x enlarged pixel


def test_labels_stay_readable_on_tiny_thumbnails():
    assert plan_layout("T", ["a"], ["x"], 48).font_size >= 14


def test_huge_grids_are_capped_in_size():
    rows, cols = [f"run {i}" for i in range(30)], [f"{i};1;3" for i in range(120)]
    layout = plan_layout("T", rows, cols, 256)
    assert max(layout.size) <= MAX_SIDE and layout.thumb < 256


def test_save_is_atomic_and_accepts_paths(tmp_path):
    picture = tmp_path / "p.png"
    _solid((1, 2, 3)).save(picture)
    sheet = grid_sheet("T", ["a"], ["x"], {(0, 0): picture}, thumb=48)
    out = save_sheet(sheet, tmp_path / "sheets" / "s.png")
    assert Image.open(out).size == sheet.size
    assert [p.name for p in out.parent.iterdir()] == ["s.png"]


def test_long_labels_wrap_inside_their_cell():
    from sweeper.sheets import font, wrap

    face = font(14)
    lines = wrap("0.25;0.75;4.5;0.25;0.75", face, 48)
    assert len(lines) > 1 and "".join(lines) == "0.25;0.75;4.5;0.25;0.75"
    from PIL import ImageDraw

    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    assert all(measure.textbbox((0, 0), line, font=face)[2] <= 48 for line in lines)
