"""Labelled contact sheets: a grid of pictures with row labels, column labels and a wrapped title.

Pure Pillow. Labels stay readable at any grid size: pictures are scaled to a fixed thumbnail size, the
font size follows the thumbnail size but never drops below ``MIN_FONT``, label margins are measured from
the longest label, and the title wraps to the sheet width. A sheet that would exceed ``MAX_SIDE`` pixels
in either direction gets smaller thumbnails (never below ``MIN_THUMB``), so a 40 × 120 grid stays a sheet
a viewer can open.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lora_core.atomic import atomic_path

log = logging.getLogger(__name__)

MIN_FONT = 14
MAX_SIDE = 16000
MIN_THUMB = 48
MIN_TITLE_WIDTH = 320  # a 1 x 1 sheet still gets a title a person can read
GAP = 4
PAD = 10
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PLACEHOLDER = (225, 225, 225)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` px (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(text: str, face) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=face)
    return right - left, bottom - top


def wrap(text: str, face, width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` px; a word wider than that is broken."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if _text_size(candidate, face)[0] <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # break an over-long word (``0.25;0.75;4.5`` under a narrow cell)
                if line and _text_size(line + char, face)[0] > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet; ``size`` is exact, so tests and callers can rely on it.

    Attributes:
        rows: Number of rows.
        cols: Number of columns.
        thumb: Side of each picture cell.
        font_size: Label font size.
        label_width: Width of the row-label margin.
        header_height: Height of the column-label band.
        title_lines: The wrapped title.
        line_height: Height of one title/label line.
        title_width: Width the title is wrapped to (at least the grid's width).
    """

    rows: int
    cols: int
    thumb: int
    font_size: int
    label_width: int
    header_height: int
    title_lines: tuple[str, ...]
    line_height: int
    title_width: int

    @property
    def title_height(self) -> int:
        """Height of the title block."""
        return len(self.title_lines) * self.line_height + PAD

    @property
    def grid_origin(self) -> tuple[int, int]:
        """Top-left corner of cell (0, 0)."""
        return PAD + self.label_width + GAP, PAD + self.title_height + self.header_height + GAP

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet."""
        x0, y0 = self.grid_origin
        width = max(x0 + self.cols * (self.thumb + GAP), PAD + self.title_width) + PAD
        return width, y0 + self.rows * (self.thumb + GAP) + PAD

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell."""
        x0, y0 = self.grid_origin
        left, top = x0 + col * (self.thumb + GAP), y0 + row * (self.thumb + GAP)
        return left, top, left + self.thumb, top + self.thumb


def plan_layout(title: str, row_labels: list[str], col_labels: list[str], thumb: int = 256) -> SheetLayout:
    """Compute the layout, shrinking thumbnails while the sheet would exceed ``MAX_SIDE``.

    Args:
        title: Title text (wrapped to the sheet width).
        row_labels: One label per row.
        col_labels: One label per column.
        thumb: Wanted cell size in pixels.

    Returns:
        The layout.
    """
    while True:
        layout = _layout_for(title, row_labels, col_labels, thumb)
        if max(layout.size) <= MAX_SIDE or thumb <= MIN_THUMB:
            return layout
        thumb = max(MIN_THUMB, int(thumb * 0.8))
        log.info("Contact sheet too large; thumbnails reduced to %d px.", thumb)


def _layout_for(title: str, row_labels: list[str], col_labels: list[str], thumb: int) -> SheetLayout:
    size = max(MIN_FONT, thumb // 12)
    face = font(size)
    line = _text_size("Ag", face)[1] + size // 3
    label_width = max((_text_size(t, face)[0] for t in row_labels), default=0) + PAD
    col_lines = max((len(wrap(t, face, thumb)) for t in col_labels), default=1)
    header = col_lines * line + GAP
    grid_width = len(col_labels) * (thumb + GAP)
    title_width = max(label_width + GAP + grid_width, MIN_TITLE_WIDTH)
    return SheetLayout(
        rows=len(row_labels), cols=len(col_labels), thumb=thumb, font_size=size, label_width=label_width,
        header_height=header, title_lines=tuple(wrap(title, face, title_width)), line_height=line,
        title_width=title_width,
    )  # fmt: skip


def _open(picture) -> Image.Image | None:
    if picture is None:
        return None
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    with Image.open(picture) as img:
        return img.convert("RGB")


def grid_sheet(
    title: str,
    row_labels: list[str],
    col_labels: list[str],
    cells: dict[tuple[int, int], Image.Image | str | os.PathLike | None],
    thumb: int = 256,
) -> Image.Image:
    """Draw a labelled grid of pictures.

    Args:
        title: Shown on top, wrapped to the sheet width.
        row_labels: Left-hand labels, top to bottom.
        col_labels: Top labels, left to right (wrapped to the cell width).
        cells: (row, col) -> picture (PIL image or file path); missing or None cells get a grey
            placeholder with a dash.
        thumb: Cell size in pixels (pictures are scaled to fit, small ones without blurring).

    Returns:
        The sheet (RGB).
    """
    layout = plan_layout(title, row_labels, col_labels, thumb)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    face = font(layout.font_size)
    for i, line in enumerate(layout.title_lines):
        draw.text((PAD, PAD + i * layout.line_height), line, fill=INK, font=face)
    top = PAD + layout.title_height
    for col, label in enumerate(col_labels):
        left = layout.cell_box(0, col)[0]
        for i, line in enumerate(wrap(label, face, layout.thumb)):
            draw.text((left, top + i * layout.line_height), line, fill=INK, font=face)
    for row, label in enumerate(row_labels):
        box = layout.cell_box(row, 0)
        draw.text((PAD, box[1] + (layout.thumb - layout.line_height) // 2), label, fill=INK, font=face)
        for col in range(len(col_labels)):
            _paste_cell(sheet, draw, layout.cell_box(row, col), _open(cells.get((row, col))), face)
    return sheet


def _paste_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, box, picture, face) -> None:
    left, top, right, _ = box
    side = right - left
    if picture is None:
        draw.rectangle(box, fill=PLACEHOLDER)
        width, height = _text_size("-", face)  # the built-in font has ASCII, not every dash
        draw.text(
            (left + (side - width) // 2, top + (side - height) // 2), "-", fill=(120, 120, 120), font=face
        )
        return
    scale = side / max(picture.size)
    # Enlarging a small picture: NEAREST keeps its pixels crisp; shrinking: LANCZOS.
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    fitted = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), resample
    )
    sheet.paste(fitted, (left + (side - fitted.width) // 2, top + (side - fitted.height) // 2))


def save_sheet(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a sheet as PNG atomically (no half-written file after a kill)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
