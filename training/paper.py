"""Handwriting as it comes on paper: a school or office pad, ruled (notebook) or squared, and a
large page photographed or scanned with the writing small on it.

The model card measures both models on these (``training.model_card``'s "plainer forms",
``training.numbers_eval.form_sets``): the paper's lines cross the whole picture, and the
preprocessing takes them out (``model.preprocess.without_paper_lines``)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

LINES = (140, 170, 225)   # a pad's pale blue lines
MARGIN = (220, 120, 120)  # a notebook's red margin
INK = np.array([30, 30, 70], dtype=np.float32)  # a blue-black pen
PAPER = 250


def on_paper(ink: np.ndarray, kind: str = "ruled", room: int = 1) -> bytes:
    """``ink`` (H x W, 1 for full ink) written on a pad, as a PNG: ``kind`` "ruled" is a
    notebook's page, lines 1.25 of the writing's height apart, the writing resting on one, a red
    margin on the left; "squared" is squared paper, half the writing's height a square, every
    line 1 pixel. The page shows a line above and below the writing, and paper either side:
    ``room`` times as much of it makes the writing small on a larger page."""
    h, w = ink.shape
    pad_x, pad_y = max(w // 4, 40) * room, h * room
    width, height = w + 2 * pad_x, h + 2 * pad_y
    page = Image.new("RGB", (width, height), (PAPER,) * 3)
    draw = ImageDraw.Draw(page)
    rows = np.flatnonzero(ink.max(axis=1) > 0.5)
    foot = pad_y + (int(rows[-1]) if rows.size else h - 1)
    if kind == "ruled":
        step = int(round(1.25 * h))
        for y in range(foot % step, height, step):
            draw.line([(0, y), (width, y)], fill=LINES, width=2)
        draw.line([(pad_x // 3, 0), (pad_x // 3, height)], fill=MARGIN, width=2)
    else:
        step = max(int(round(h / 2)), 8)
        for y in range(foot % step, height, step):
            draw.line([(0, y), (width, y)], fill=LINES, width=1)
        for x in range(pad_x % step, width, step):
            draw.line([(x, 0), (x, height)], fill=LINES, width=1)
    pixels = np.asarray(page, dtype=np.float32).copy()
    a = np.clip(ink, 0.0, 1.0)[..., None]
    pixels[pad_y:pad_y + h, pad_x:pad_x + w] = pixels[pad_y:pad_y + h, pad_x:pad_x + w] * (1 - a) + INK * a
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def on_page(writing: Image.Image, page: tuple[int, int], at: tuple[int, int], fmt: str = "JPEG") -> bytes:
    """``writing`` (greyscale, dark on white) pasted with its top left at ``at`` on a white page
    of ``page`` pixels, as a phone photo (JPEG, quality 85) or a scan (``fmt`` "PNG") sends it."""
    paper = Image.new("L", page, 255)
    paper.paste(writing, at)
    buf = io.BytesIO()
    paper.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()
