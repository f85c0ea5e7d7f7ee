"""Labelled contact sheets: a grid of pictures with row labels, column labels and a wrapped title.

Pure Pillow (no Hydra, MLflow or torch). ``grid_sheet`` draws any labelled grid; ``run_sheet`` (one run:
rows = UNet scale, columns = text-encoder scale) and ``sweep_sheet`` (the whole sweep: a row per run, a
column per ``unet;text;guidance``) are thin wrappers that name the rows and columns. ``plan_layout``
computes the exact pixel geometry, so callers and tests can rely on a sheet's size.

Labels stay readable at any grid size: every picture is scaled to a ``thumb`` x ``thumb`` cell, the font
size follows the cell size but never drops below ``MIN_FONT``, the label margins are measured from the
labels themselves (column labels wrap to the cell width, long row labels wrap beside their row) and the
title wraps to the sheet width, so no text is clipped.

Size cap: a sheet is at most ``MAX_SIDE`` pixels wide and high and at most ``MAX_PIXELS`` pixels in all
(under Pillow's decompression-bomb warning, so the sheet opens again without complaint). When the wanted
``thumb`` would break the cap, the largest smaller thumbnail that fits is used (logged), never below
``MIN_THUMB``; a grid too big even then is drawn at ``MIN_THUMB`` with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from lora_core.atomic import atomic_path
from lora_core.errors import UserInputError
from sweeper.disk.naming import format_number

log = logging.getLogger(__name__)

Picture = Image.Image | str | os.PathLike | None

MIN_FONT = 14
MAX_SIDE = 16_000
MAX_PIXELS = 80_000_000  # Pillow warns above ~89.5 M pixels when a file is opened
MIN_THUMB = 48
MIN_TITLE_WIDTH = 320  # a 1 x 1 sheet still gets a title a person can read
GAP = 4
PAD = 12
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PLACEHOLDER = (225, 225, 225)
PLACEHOLDER_MARK = (140, 140, 140)

_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


def _dejavu_sans(bold: bool) -> Path | None:
    """DejaVu Sans as shipped in matplotlib's data (a project dependency), if it is there."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return None
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / name
    return path if path.is_file() else None


@functools.lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable font at ``size`` px.

    Pillow's built-in scalable font has ASCII glyphs only (a title's ``—`` or an accented prompt would
    show as boxes), so DejaVu Sans from matplotlib's data comes first; then Pillow's built-in font; then,
    without FreeType, Pillow's small bitmap font.

    Args:
        size: Font size in pixels.
        bold: Whether to use the bold face (where DejaVu Sans is found).

    Returns:
        The font.
    """
    path = _dejavu_sans(bold)
    if path is not None:
        with contextlib.suppress(OSError, ImportError):
            return ImageFont.truetype(str(path), size)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def text_width(text: str, face) -> int:
    """Width in pixels that ``text`` takes to the right of where it is drawn."""
    return math.ceil(_MEASURE.textbbox((0, 0), text, font=face)[2])


def _line_height(face, size: int) -> int:
    return math.ceil(_MEASURE.textbbox((0, 0), "Ag|", font=face)[3]) + max(2, size // 5)


def _break_word(word: str, face, width: int) -> list[str]:
    """Cut a word wider than ``width`` into pieces, after a ``;``, ``,``, ``/`` or ``_`` where one fits."""
    pieces = []
    while text_width(word, face) > width:
        cut = 1
        while cut < len(word) and text_width(word[: cut + 1], face) <= width:
            cut += 1
        soft = max(word.rfind(sep, 0, cut) for sep in ";,/_") + 1
        cut = soft if soft > 0 else cut
        pieces.append(word[:cut])
        word = word[cut:]
    return [*pieces, word] if word else pieces


def wrap(text: str, face, width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` px (a word wider than that is cut).

    Args:
        text: The text; line breaks in it are kept.
        face: The font it is drawn with.
        width: The widest a line may be, in pixels.

    Returns:
        The lines (a single character wider than ``width`` still gets a line of its own).
    """
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, face) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            *full, line = _break_word(word, face, width) or [""]
            lines.extend(full)
        lines.append(line)
    return lines


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet; ``size`` is exact, so tests and callers can rely on it.

    Attributes:
        rows: Number of rows.
        cols: Number of columns.
        thumb: Side of each (square) picture cell.
        font_size: Label font size.
        title_font_size: Title font size.
        line_height: Height of one label line.
        title_line_height: Height of one title line.
        label_width: Width of the row-label margin (the widest wrapped row label).
        header_height: Height of the column-label band, right above the cells.
        content_width: Width between the outer paddings (the title wraps to it).
        title_lines: The wrapped title.
        row_label_lines: The wrapped label of each row.
        col_label_lines: The wrapped label of each column.
    """

    rows: int
    cols: int
    thumb: int
    font_size: int
    title_font_size: int
    line_height: int
    title_line_height: int
    label_width: int
    header_height: int
    content_width: int
    title_lines: tuple[str, ...]
    row_label_lines: tuple[tuple[str, ...], ...]
    col_label_lines: tuple[tuple[str, ...], ...]

    @property
    def title_height(self) -> int:
        """Height of the title block (zero without a title)."""
        return len(self.title_lines) * self.title_line_height + PAD if self.title_lines else 0

    @property
    def grid_origin(self) -> tuple[int, int]:
        """Top-left corner of cell (0, 0)."""
        return PAD + self.label_width + PAD, PAD + self.title_height + self.header_height

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet."""
        grid_height = max(0, self.rows * (self.thumb + GAP) - GAP)
        return PAD + self.content_width + PAD, self.grid_origin[1] + grid_height + PAD

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell; right and bottom are exclusive."""
        x0, y0 = self.grid_origin
        left, top = x0 + col * (self.thumb + GAP), y0 + row * (self.thumb + GAP)
        return left, top, left + self.thumb, top + self.thumb


def plan_layout(
    title: str, row_labels: Sequence[str], col_labels: Sequence[str], thumb: int = 256
) -> SheetLayout:
    """Compute a sheet's layout, with smaller thumbnails where ``thumb`` would break the size cap.

    Args:
        title: Title text (wrapped to the sheet width).
        row_labels: One label per row.
        col_labels: One label per column.
        thumb: Wanted cell size in pixels.

    Returns:
        The layout (its ``thumb`` is the one actually used).

    Raises:
        ValueError: If ``thumb`` is not positive.
    """
    if thumb < 1:
        raise ValueError(f"A contact sheet's thumbnail size must be positive, not {thumb}.")
    layout = _layout_for(title, row_labels, col_labels, thumb)
    while _too_big(layout.size) and layout.thumb > MIN_THUMB:
        smaller = max(MIN_THUMB, min(layout.thumb - 1, _fitting_thumb(layout)))
        layout = _layout_for(title, row_labels, col_labels, smaller)
    if layout.thumb != thumb:
        log.info(
            "Contact sheet of %d x %d: thumbnails reduced to %d px.", layout.rows, layout.cols, layout.thumb
        )
    if _too_big(layout.size):
        width, height = layout.size
        log.warning(
            "Contact sheet of %d x %d pictures is %d x %d px even with %d px thumbnails (cap: %d px a side, "
            "%d pixels).",
            layout.rows,
            layout.cols,
            width,
            height,
            MIN_THUMB,
            MAX_SIDE,
            MAX_PIXELS,
        )
    return layout


def _too_big(size: tuple[int, int]) -> bool:
    return max(size) > MAX_SIDE or size[0] * size[1] > MAX_PIXELS


def _fitting_thumb(layout: SheetLayout) -> int:
    """The largest thumbnail that would fit the cap if the margins stayed as they are."""
    width, height = layout.size
    step = layout.thumb + GAP
    by_width = (MAX_SIDE - (width - layout.cols * step)) // max(1, layout.cols) - GAP
    by_height = (MAX_SIDE - (height - layout.rows * step)) // max(1, layout.rows) - GAP
    by_area = int(layout.thumb * math.sqrt(MAX_PIXELS / (width * height)))
    return min(by_width, by_height, by_area)


def _layout_for(title: str, row_labels: Sequence[str], col_labels: Sequence[str], thumb: int) -> SheetLayout:
    size = max(MIN_FONT, round(thumb / 12))
    title_size = round(size * 1.3)
    face, title_face = font(size), font(title_size, bold=True)
    line = _line_height(face, size)
    label_width, row_lines = _fit_row_labels(row_labels, face, size, max_lines=max(1, thumb // line))
    col_lines = tuple(tuple(wrap(label, face, thumb)) for label in col_labels)
    header = max((len(lines) for lines in col_lines), default=0) * line + GAP
    grid_width = max(0, len(col_labels) * (thumb + GAP) - GAP)
    content_width = max(label_width + PAD + grid_width, MIN_TITLE_WIDTH)
    return SheetLayout(
        rows=len(row_labels),
        cols=len(col_labels),
        thumb=thumb,
        font_size=size,
        title_font_size=title_size,
        line_height=line,
        title_line_height=_line_height(title_face, title_size),
        label_width=label_width,
        header_height=header,
        content_width=content_width,
        title_lines=tuple(wrap(title, title_face, content_width)) if title else (),
        row_label_lines=row_lines,
        col_label_lines=col_lines,
    )


def _fit_row_labels(
    labels: Sequence[str], face, size: int, max_lines: int
) -> tuple[int, tuple[tuple[str, ...], ...]]:
    """Wrap row labels to the narrowest margin (from ``10 * size`` up) where each fits beside its row.

    Returns:
        The margin width and each label's lines.
    """
    widest = max((text_width(label, face) for label in labels), default=0)
    width = min(widest, 10 * size)
    while True:
        lines = tuple(tuple(wrap(label, face, width)) for label in labels)
        if width >= widest or all(len(label_lines) <= max_lines for label_lines in lines):
            return max((text_width(x, face) for label_lines in lines for x in label_lines), default=0), lines
        width += size


def grid_sheet(
    title: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cells: Mapping[tuple[int, int], Picture],
    thumb: int = 256,
) -> Image.Image:
    """Draw a labelled grid of pictures.

    Args:
        title: Shown on top in bold, wrapped to the sheet width.
        row_labels: Left-hand labels, top to bottom.
        col_labels: Top labels, left to right (wrapped to the cell width).
        cells: (row index, column index) -> picture (PIL image or file path). A cell that is absent, None
            or a path to no file gets a grey placeholder with a dash.
        thumb: Cell size in pixels (pictures are scaled to fit; see ``plan_layout`` for the size cap).

    Returns:
        The sheet (RGB, white background), of size ``plan_layout(title, row_labels, col_labels, thumb).size``.

    Raises:
        ValueError: If a key of ``cells`` lies outside the grid.
        UserInputError: If a picture file cannot be read.
    """
    outside = [key for key in cells if not (0 <= key[0] < len(row_labels) and 0 <= key[1] < len(col_labels))]
    if outside:
        raise ValueError(f"Cells {outside[:3]} lie outside the {len(row_labels)} x {len(col_labels)} grid.")
    layout = plan_layout(title, row_labels, col_labels, thumb)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _draw_text(draw, layout)
    for row in range(layout.rows):
        for col in range(layout.cols):
            picture = _open(cells.get((row, col)))
            if picture is None:
                _draw_placeholder(draw, layout.cell_box(row, col))
            else:
                _paste_picture(sheet, layout.cell_box(row, col), picture)
    return sheet


def _draw_text(draw: ImageDraw.ImageDraw, layout: SheetLayout) -> None:
    """Title (left-aligned), column labels (centred, just above their cells), row labels (right-aligned)."""
    face, title_face = font(layout.font_size), font(layout.title_font_size, bold=True)
    for i, line in enumerate(layout.title_lines):
        draw.text((PAD, PAD + i * layout.title_line_height), line, fill=INK, font=title_face)
    line_height = layout.line_height
    for col, lines in enumerate(layout.col_label_lines):
        left, top, _, _ = layout.cell_box(0, col)
        y = top - GAP - len(lines) * line_height
        for i, line in enumerate(lines):
            x = left + (layout.thumb - text_width(line, face)) // 2
            draw.text((x, y + i * line_height), line, fill=INK, font=face)
    for row, lines in enumerate(layout.row_label_lines):
        top = layout.cell_box(row, 0)[1]
        y = top + (layout.thumb - len(lines) * line_height) // 2
        for i, line in enumerate(lines):
            x = PAD + layout.label_width - text_width(line, face)
            draw.text((x, y + i * line_height), line, fill=INK, font=face)


def _open(picture: Picture) -> Image.Image | None:
    if picture is None:
        return None
    if isinstance(picture, Image.Image):
        return _on_white(picture)
    path = Path(picture)
    if not path.is_file():
        log.warning("Contact sheet: %s does not exist; drawn as a placeholder.", path)
        return None
    try:
        with Image.open(path) as img:
            img.load()  # read now: the file is closed when the block ends
            return _on_white(img)
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(
            f"Cannot read the picture {path} for a contact sheet ({err}); delete it and render it again."
        ) from err


def _on_white(picture: Image.Image) -> Image.Image:
    """RGB copy of a picture; transparent parts become the sheet's white, not black."""
    if picture.mode == "RGB":
        return picture
    rgba = picture.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


def _draw_placeholder(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    """A grey square with a dash: plainly no picture, not a grey one."""
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), fill=PLACEHOLDER, outline=PLACEHOLDER_MARK)
    side, centre_x, centre_y = right - left, (left + right) // 2, (top + bottom) // 2
    draw.line(
        (centre_x - side // 6, centre_y, centre_x + side // 6, centre_y),
        fill=PLACEHOLDER_MARK,
        width=max(2, side // 32),
    )


def _paste_picture(sheet: Image.Image, box: tuple[int, int, int, int], picture: Image.Image) -> None:
    """Scale a picture to fit the cell (aspect kept) and paste it centred."""
    left, top, right, _ = box
    side = right - left
    scale = side / max(picture.size)
    # Enlarged two times or more (a 64 px picture in a 256 px cell): NEAREST keeps its pixels crisp.
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    fitted = picture.resize(size, resample)
    sheet.paste(fitted, (left + (side - fitted.width) // 2, top + (side - fitted.height) // 2))


def run_sheet(
    images: Mapping[tuple[float, float], Picture],
    unet_scales: Sequence[float],
    text_scales: Sequence[float],
    title: str,
    thumb: int = 256,
) -> Image.Image:
    """One run, one prompt, one guidance: rows = UNet LoRA scale, columns = text-encoder LoRA scale.

    Args:
        images: (unet_scale, text_scale) -> picture (PIL image or file path); absent or None cells are
            drawn as placeholders; pictures for scales not listed are left out.
        unet_scales: Row order, top to bottom (labelled ``unet 0.9``).
        text_scales: Column order, left to right (labelled ``text 0.5``).
        title: Title, e.g. ``"smile face" — 3e-4;1e-5 — guidance 3.6``.
        thumb: Cell size in pixels.

    Returns:
        The sheet.
    """
    return axes_sheet(images, unet_scales, text_scales, title, thumb)


def axes_sheet(
    images: Mapping[tuple, Picture],
    rows: Sequence,
    cols: Sequence,
    title: str,
    thumb: int = 256,
    row_axis: str = "unet",
    col_axis: str = "text",
) -> Image.Image:
    """One run, one prompt: rows the values of one axis of its grid, columns another's.

    Args:
        images: (row value, column value) -> picture; absent or None cells are drawn as placeholders.
        rows: Row values, top to bottom (labelled ``<row_axis> <value>``: ``unet 0.9``, ``sampler ddim``).
        cols: Column values, left to right.
        title: Title.
        thumb: Cell size in pixels.
        row_axis: The rows' axis, in the labels.
        col_axis: The columns' axis, in the labels.

    Returns:
        The sheet.
    """

    def label(axis: str, value) -> str:
        return f"{axis} {format_number(value) if isinstance(value, int | float) else value}"

    cells = _by_position(images, rows, cols)
    row_labels = [label(row_axis, v) for v in rows]
    col_labels = [label(col_axis, v) for v in cols]
    return grid_sheet(title, row_labels, col_labels, cells, thumb)


def sweep_sheet(
    images: Mapping[tuple[str, str], Picture],
    runs: Sequence[str],
    columns: Sequence[str],
    title: str,
    thumb: int = 256,
) -> Image.Image:
    """The whole sweep for one prompt: a row per training configuration, a column per grid cell.

    Args:
        images: (run folder name, cell label) -> picture (PIL image or file path); absent or None cells
            are drawn as placeholders.
        runs: Run folder names, top to bottom (``3e-4;1e-5``), used as row labels.
        columns: Cell labels (``GridCell.label``: ``0.9;0.5;3.6``, then other axes' values) per column.
        title: Title, usually the prompt.
        thumb: Wanted cell size in pixels (smaller for a very large sweep; see ``plan_layout``).

    Returns:
        The sheet.
    """
    cells = _by_position(images, runs, columns)
    return grid_sheet(title, list(runs), list(columns), cells, thumb)


def _by_position(images: Mapping[tuple, Picture], rows: Sequence, cols: Sequence) -> dict:
    """(row key, column key) -> picture, re-keyed by (row index, column index) for ``grid_sheet``."""
    return {(i, j): images.get((row, col)) for i, row in enumerate(rows) for j, col in enumerate(cols)}


def save_sheet(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a sheet as PNG atomically (a reader or a rerun after a kill never sees half a file).

    Args:
        image: The sheet.
        path: Destination file (folders are created).

    Returns:
        The path written.
    """
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
