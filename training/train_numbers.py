"""Train the numbers network (model/number_network.py, CNN + CTC) on strings of digits made on
the fly, calibrate its string confidence, and export TorchScript.

    nice -n 10 python -m training.train_numbers                 # make train-numbers (35 min, two cores)
    python -m training.train_numbers --quick --out build/numbers-quick   # a smoke run (CI)
    python -m training.train_numbers --device cuda --workers 14 --batch-size 96 --channels 48 96 128 192 \
        --hidden 256 --lr 2.5e-3 --minutes 6 --out build/numbers-gpu       # on a GPU (run 12 of the report)
    python -m training.train_numbers --ensemble A/numbers.pt B/numbers.pt --out build/numbers-ens   # one export of two runs
    python -m training.train_numbers --ensemble model/numbers.pt --cascade 0.8 --out build/numbers-again  # make numbers-calibrate

Every training string is made fresh, seeded, from the *training* parts of the sources
(training/sources.py's splits; the development splits the model card reports are never read):

- MNIST's training digits, one QMNIST writer per string (never the held-out writers, never the
  test set); pendigits training traces drawn as pen strokes; USPS training digits. Glyphs are
  set side by side with realistic gaps, a share of touching and overlapping pairs, slant,
  baseline drift, size jitter, thinner and thicker strokes, and marks that are not digits
  (dots, commas, dashes, check marks, currency signs, underlines, ``=`` and ``.-`` endings, a
  date's slashes, a telephone number's brackets).
  Each string is then rendered as users send it: a canvas drawing (transparent PNG, dark or
  light ink), a scan (tinted grainy paper, blur, JPEG) or a photo (uneven light, noise, JPEG).
- ORAND-CAR-A's real cheque amounts (training split), oversampled with augmentation: scale,
  small rotation and shear, contrast, blur, JPEG. ``--orand-share`` sets their share of the
  strings; ``--spliced-share`` makes that share of them new amounts, two real ones spliced at
  cuts between their digit boxes (``spliced_cheque``).
- With ``--corrections``: the numbers people corrected on the page (the feedback file,
  serving/feedback.py, stored with their consent), each as sent or as another scanner or phone
  might send it, ``--corrections-share`` of the strings. Every fifth correction is held out,
  never trained on, and read before and after the round (``make train-numbers-more ROUND=n
  CORRECTIONS=data/feedback.sqlite3``).

Everything goes through ``model.segment.strip``, the serving path's preprocessing.

Calibration: a seeded share of the training writers, cheques, traces and USPS digits is held
out of training (``--calibration`` strings from them). On those, the string confidence
``sigmoid(a * log(P / (1 - P)) + b)`` is fitted (Platt scaling of the log-odds of P, the CTC
probability of the best reading: ``model.number_network.Platt``), the unsure threshold
measured, and the offset from a digit's CTC peak to its centre (for boxes) measured. All of it
is stored in the export's meta.json.

Writes to --out: numbers.pt (TorchScript, checked against the eager model, config,
calibration and metrics inside), report.json and report.md (``make train-numbers`` copies it
to docs/training-report-numbers.md).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from model.number_network import (STRIDE, STRIP_HEIGHT, NumberEnsemble, NumberNet, NumberNetConfig, choose, count_parameters,
                                  Platt, read_members, sent_on, string_feature)
from model.preprocess import InputError, decode
from model.segment import STRIP_MARGIN, strip
from serving.machine import describe_machine
from training.data import load_split
from training.sources import _paper_scan, _smooth, load_orand, load_pendigits, load_usps, load_writers, split
from training.train import use_bf16

HOLD = 0.06       # share of each source's training part held out for calibration
WAITING = 4       # new strings waiting per new string a batch takes: the choice of widths
MIX = {"mnist": 0.35, "pendigits": 0.25, "usps": 0.1, "orand": 0.3}  # share of training strings
GLYPH = 22        # glyph height in composing pixels (MNIST's digits are about 20 of 28)


def mix_with(orand: float, spliced: float = 0.0, corrections: float = 0.0) -> dict[str, float]:
    """MIX with the real cheque amounts' share set to ``orand``, the other sources sharing the
    rest in MIX's proportions; a share ``spliced`` of the amounts are two amounts spliced into a
    new one (``spliced_cheque``, source ``orand-spliced``). With ``corrections``, that share of
    all strings are the page's corrections (source ``corrections``) and the rest are the above,
    scaled down. Shares between 0 and 1 (parse_args checks)."""
    others = 1 - MIX["orand"]
    mix = {source: orand if source == "orand" else share * (1 - orand) / others for source, share in MIX.items()}
    if spliced:
        mix["orand"], mix["orand-spliced"] = orand * (1 - spliced), orand * spliced
    if corrections:
        mix = {source: share * (1 - corrections) for source, share in mix.items()}
        mix["corrections"] = corrections
    return mix


# ---------------------------------------------------------------- the sources' training parts

@dataclass
class Pools:
    """Glyph sources for one purpose (training or calibration)."""
    mnist_by_writer: list[np.ndarray]
    mnist: tuple[np.ndarray, np.ndarray]
    traces: tuple[np.ndarray, np.ndarray]
    usps: tuple[np.ndarray, np.ndarray]
    cheques: list
    corrections: list = field(default_factory=list)  # the page's corrections of numbers: (picture bytes, digits)


def load_pools(quick: bool) -> tuple[Pools, Pools]:
    """(training pools, calibration pools): each source's training split (training/sources.py),
    a seeded HOLD of it (by writer for MNIST) kept for calibration."""
    rng = np.random.default_rng(2026)
    images, labels = load_split("train")
    writers = load_writers()
    train_idx, _ = split("mnist", len(labels), writers)  # never the development writers
    ids = np.unique(writers[train_idx])
    held = set(rng.choice(ids, size=max(1, int(HOLD * len(ids))), replace=False).tolist())
    by_writer: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for w in ids:
        members = train_idx[writers[train_idx] == w]
        by_writer[int(w) in held].append(members)
    traces, tl = load_pendigits()
    t_train, _ = split("pendigits", len(tl))
    usps, ul = load_usps()
    u_train, _ = split("usps", len(ul))
    cheques = load_orand()
    c_train, _ = split("orand", len(cheques))

    def part(idx):
        idx = rng.permutation(idx)
        k = max(1, int(HOLD * len(idx)))
        return idx[k:], idx[:k]
    t_fit, t_cal = part(t_train)
    u_fit, u_cal = part(u_train)
    c_fit, c_cal = part(c_train)
    if quick:
        c_fit = c_fit[:40]
    mk = lambda w, t, u, c: Pools(w, (images, labels), (traces[t], tl[t]), (usps[u], ul[u]), [cheques[i] for i in c])
    return mk(by_writer[False], t_fit, u_fit, c_fit), mk(by_writer[True], t_cal, u_cal, c_cal)


def load_corrections(db: Path) -> tuple[list[tuple[bytes, list[int]]], list[tuple[bytes, list[int]]]]:
    """The corrections of ``numbers`` people sent from the page (serving/feedback.py's file,
    stored with their consent): (the ones to learn from, the held-out ones), each as (the
    picture as sent, its digits). Every fifth (``is_held_out``) is never trained on: it tells
    whether the lesson holds on writing the network did not see."""
    from serving.feedback import FeedbackStore, is_held_out

    if not Path(db).exists():
        raise SystemExit(f"no corrections: {db} does not exist (they come from the page, with consent)")
    train_rows, held = [], []
    for r in FeedbackStore(db).rows("numbers"):
        (held if is_held_out(r["id"]) else train_rows).append((bytes(r["image"]), [int(d) for d in r["label"]]))
    return train_rows, held


def corrected_picture(image: bytes, rng: np.random.Generator, augment: bool) -> Image.Image:
    """A correction's picture as it was sent, or (``augment``) as a phone or another scanner
    might send the same writing (``scanned_or_photographed``), a drawing on a transparent
    ground laid on white first."""
    img = decode(image)
    if not augment:
        return img
    rgba = img.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return scanned_or_photographed(flat, rng, augment)


# ---------------------------------------------------------------- glyphs

def _tight(ink: np.ndarray, level: float = 0.1) -> np.ndarray:
    rows, cols = np.flatnonzero(ink.max(1) > level), np.flatnonzero(ink.max(0) > level)
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _resize(ink: np.ndarray, height: float) -> np.ndarray:
    f = height / ink.shape[0]
    w = max(1, int(round(ink.shape[1] * f)))
    return np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize((w, max(1, int(round(height)))),
                                                                                 Image.Resampling.BILINEAR))


def mnist_glyph(pools: Pools, i: int) -> np.ndarray:
    return _tight(pools.mnist[0][i].astype(np.float32) / 255.0)


def trace_glyph(points: np.ndarray, rng: np.random.Generator, pen: float) -> np.ndarray:
    """A pendigits trace drawn with a round pen at 4x and shrunk: an anti-aliased glyph GLYPH tall.
    Its corners are cut 0-3 times, as ``training.sources.render_trace`` does: 0 keeps the raw
    8-point polygon, the sharp-cornered shape a coarse pen sampler sends (and the model card's
    pendigits strings are drawn as)."""
    pts = _smooth(points.astype(np.float64), int(rng.integers(0, 4)))
    pts[:, 1] = 100 - pts[:, 1]
    span = np.ptp(pts, axis=0).clip(1)
    k = 4 * GLYPH / span[1]
    pts = (pts - pts.min(0)) * k + 4 * pen
    size = (int(span[0] * k + 8 * pen) + 1, int(span[1] * k + 8 * pen) + 1)
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    line = [tuple(p) for p in pts]
    w = max(1, int(round(4 * pen)))
    draw.line(line, fill=255, width=w, joint="curve")
    for x, y in (line[0], line[-1]):
        draw.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=255)
    img = img.resize((max(1, size[0] // 4), max(1, size[1] // 4)), Image.Resampling.BOX)
    return _tight(np.asarray(img, dtype=np.float32) / 255.0)


def usps_glyph(image: np.ndarray) -> np.ndarray:
    return _tight(_resize(np.clip(image, 0, 1), GLYPH + 2), 0.2)


# ---------------------------------------------------------------- marks that are not digits

def draw_mark(kind: str, h: float, pen: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A mark for a string of digits ``h`` tall: its ink and where its top sits (share of h)."""
    s = 4  # drawn at 4x, shrunk
    w = max(1, int(round(pen * s)))
    if kind == "dot":
        d = rng.uniform(0.1, 0.2) * h * s
        img = Image.new("L", (int(d) + 2 * w, int(d) + 2 * w))
        ImageDraw.Draw(img).ellipse([w, w, w + d, w + d], fill=255)
        top = rng.uniform(0.8, 0.95)
    elif kind == "comma":
        d = rng.uniform(0.1, 0.18) * h * s
        img = Image.new("L", (int(d * 1.6) + 2 * w, int(d * 2.4) + 2 * w))
        dr = ImageDraw.Draw(img)
        dr.ellipse([w + d * 0.4, w, w + d * 1.4, w + d], fill=255)
        dr.line([(w + d * 1.3, w + d * 0.6), (w + d * 0.3, w + d * 2.3)], fill=255, width=w)
        top = rng.uniform(0.8, 0.95)
    elif kind == "dash":
        length = rng.uniform(0.3, 0.9) * h * s
        img = Image.new("L", (int(length) + 2 * w, 3 * w))
        ImageDraw.Draw(img).line([(w, 1.5 * w), (w + length, 1.5 * w + rng.uniform(-w, w))], fill=255, width=w)
        top = rng.uniform(0.35, 0.65)
    elif kind == "equals":
        length = rng.uniform(0.4, 0.8) * h * s
        gap = rng.uniform(0.15, 0.3) * h * s
        img = Image.new("L", (int(length) + 2 * w, int(gap) + 3 * w))
        dr = ImageDraw.Draw(img)
        dr.line([(w, w), (w + length, w)], fill=255, width=w)
        dr.line([(w, w + gap), (w + length, w + gap)], fill=255, width=w)
        top = rng.uniform(0.3, 0.5)
    elif kind == "check":
        a = rng.uniform(0.5, 1.0) * h * s
        img = Image.new("L", (int(a) + 2 * w, int(a) + 2 * w))
        ImageDraw.Draw(img).line([(w, w + 0.55 * a), (w + 0.35 * a, w + a), (w + a, w)], fill=255, width=w, joint="curve")
        top = rng.uniform(-0.1, 0.3)
    elif kind == "dollar":
        a = rng.uniform(0.8, 1.1) * h * s
        img = Image.new("L", (int(0.7 * a) + 2 * w, int(a) + 2 * w))
        dr = ImageDraw.Draw(img)
        dr.arc([w, w + 0.1 * a, w + 0.6 * a, w + 0.5 * a], 90, 360, fill=255, width=w)
        dr.arc([w, w + 0.5 * a, w + 0.6 * a, w + 0.9 * a], 270, 180, fill=255, width=w)
        dr.line([(w + 0.3 * a, w), (w + 0.3 * a, w + a)], fill=255, width=w)
        top = rng.uniform(-0.1, 0.1)
    elif kind == "euro":
        a = rng.uniform(0.8, 1.0) * h * s
        img = Image.new("L", (int(0.8 * a) + 2 * w, int(a) + 2 * w))
        dr = ImageDraw.Draw(img)
        dr.arc([w + 0.1 * a, w, w + a, w + a], 50, 310, fill=255, width=w)
        dr.line([(w, w + 0.4 * a), (w + 0.55 * a, w + 0.4 * a)], fill=255, width=w)
        dr.line([(w, w + 0.6 * a), (w + 0.55 * a, w + 0.6 * a)], fill=255, width=w)
        top = 0.0
    elif kind == "slash":  # a date's 12/05: leaning 20-40 degrees, taller than the digits (a 1 is not)
        a = rng.uniform(1.2, 1.5) * h * s
        lean = a * math.tan(math.radians(rng.uniform(20, 40)))
        img = Image.new("L", (int(lean) + 2 * w, int(a) + 2 * w))
        ImageDraw.Draw(img).line([(w, w + a), (w + lean, w)], fill=255, width=w)
        top = rng.uniform(-0.35, -0.1)
    elif kind in ("open", "close"):  # a telephone number's (555): a bow about as tall as the digits
        a = rng.uniform(1.0, 1.3) * h * s
        bow = rng.uniform(0.2, 0.35) * a
        img = Image.new("L", (int(bow) + 2 * w, int(a) + 2 * w))
        box = [w, w, w + 2 * bow, w + a] if kind == "open" else [w - bow, w, w + bow, w + a]
        sweep = rng.uniform(50, 70)
        middle = 180 if kind == "open" else 0  # the bow's middle: left for "(", right for ")"
        ImageDraw.Draw(img).arc(box, middle - sweep, middle + sweep, fill=255, width=w)
        top = rng.uniform(-0.15, 0.0)
    else:
        raise ValueError(kind)
    small = img.resize((max(1, img.width // s), max(1, img.height // s)), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0, top


class Signs(NamedTuple):
    """The marks ``compose`` draws before a string, between its digits and after it."""
    before: tuple[str, ...]
    between: tuple[str, ...]
    after: tuple[str, ...]


# An amount's: what every numbers version has learnt, and numbers 1.5's calibration strings hold.
AMOUNT_SIGNS = Signs(("dollar", "euro", "dash"), ("dot", "comma", "dash", "dot"), ("dot", "dash", "equals", "check", "dotdash"))
# ... and since numbers 1.5 a date's slashes and a telephone number's brackets, in training.
SIGNS = Signs(AMOUNT_SIGNS.before + ("open",), AMOUNT_SIGNS.between + ("slash", "close"), AMOUNT_SIGNS.after + ("close",))


# ---------------------------------------------------------------- composing a string

def compose(glyphs: list[np.ndarray], rng: np.random.Generator, marks: bool = True,
            signs: Signs = SIGNS) -> tuple[np.ndarray, list[float]]:
    """Glyphs side by side as one writer writes them: ink (H, W) and each glyph's centre x."""
    h = GLYPH * rng.uniform(0.9, 1.1)
    touch = rng.choice([0.0, 0.25, 0.5, 0.8], p=[0.25, 0.35, 0.25, 0.15])
    pen = rng.uniform(1.0, 2.2)
    pieces: list[tuple[np.ndarray, float]] = []  # (ink, top share of h)
    kinds = []
    if marks and rng.random() < 0.15:
        ink, top = draw_mark(str(rng.choice(signs.before)), h, pen, rng)
        pieces.append((ink, top)); kinds.append("mark")
    for k, g in enumerate(glyphs):
        gh = h * rng.uniform(0.88, 1.08)
        pieces.append((_resize(g, gh), rng.uniform(-0.06, 0.06) + (h - gh) / h)); kinds.append("digit")
        if marks and k < len(glyphs) - 1 and rng.random() < 0.07:
            ink, top = draw_mark(str(rng.choice(signs.between)), h, pen, rng)
            pieces.append((ink, top)); kinds.append("mark")
    if marks and rng.random() < 0.25:
        kind = str(rng.choice(signs.after))
        for part in (("dot", "dash") if kind == "dotdash" else (kind,)):
            ink, top = draw_mark(part, h, pen, rng)
            pieces.append((ink, top)); kinds.append("mark")
    drift = rng.normal(0, 0.04)
    wave = rng.uniform(0, 0.08) * h
    phase = rng.uniform(0, 2 * math.pi)
    width = int(sum(p.shape[1] for p, _ in pieces) + 12 * len(pieces) + 4 * h) + 40
    height = int(3 * h) + 20
    canvas = np.zeros((height, width), np.float32)
    x = 10 + int(rng.integers(0, 10))
    centres = []
    prev = None
    for (ink, top), kind in zip(pieces, kinds):
        if prev is not None:
            if kind == "digit" and prev == "digit" and rng.random() < touch:
                x -= int(rng.integers(1, max(2, int(0.22 * h))))
            elif rng.random() < 0.05:
                x += int(rng.uniform(0.5, 1.2) * h)  # a space, as between groups of a postcode
            else:
                x += int(rng.uniform(0.05, 0.45) * h)
        x = max(x, 0)
        y = int(h + top * h + drift * x + wave * math.sin(phase + x / (2 * h)))
        y = int(np.clip(y, 0, height - ink.shape[0]))
        w = min(ink.shape[1], width - x)
        canvas[y:y + ink.shape[0], x:x + w] = np.maximum(canvas[y:y + ink.shape[0], x:x + w], ink[:, :w])
        if kind == "digit":
            centres.append(x + ink.shape[1] / 2)
        x += ink.shape[1]
        prev = kind
    if marks and rng.random() < 0.08:  # an underline under the whole amount
        rows = np.flatnonzero(canvas.max(1) > 0.1)
        cols = np.flatnonzero(canvas.max(0) > 0.1)
        yl = min(rows[-1] + int(rng.uniform(0.05, 0.25) * h), height - 3)
        canvas[yl:yl + max(1, int(round(pen))), max(cols[0] - 4, 0):cols[-1] + 4] = 1.0
    canvas = canvas[:, :x + 10 + int(rng.integers(0, 10))]
    # slant the whole string about its middle row (x of the middle row kept, so centres hold)
    shear = rng.normal(0, 0.18)
    if abs(shear) > 0.02:
        H = canvas.shape[0]
        img = Image.fromarray(canvas, mode="F")
        canvas = np.asarray(img.transform(img.size, Image.Transform.AFFINE, (1, shear, -shear * H / 2, 0, 1, 0),
                                          Image.Resampling.BILINEAR))
    r = rng.random()
    if r < 0.2:
        canvas = np.maximum(canvas, np.asarray(Image.fromarray(canvas, mode="F").filter(ImageFilter.MaxFilter(3))) * 0.9)
    elif r < 0.3:
        canvas = np.clip((canvas - 0.35) * 1.6, 0, 1)
    return np.clip(canvas, 0, 1), centres


def render(ink: np.ndarray, rng: np.random.Generator, style: str | None = None) -> tuple[Image.Image, float]:
    """Ink as a user sends it: canvas, scan or photo; the picture and its pixels per ink pixel."""
    style = style or str(rng.choice(["canvas", "scan", "photo"], p=[0.4, 0.4, 0.2]))
    zoom = rng.uniform(2.0, 5.0) if style == "canvas" else rng.uniform(1.0, 2.5)  # ink_map works at most 512-1024 px wide (work_side)
    h, w = ink.shape
    big = np.asarray(Image.fromarray(ink, mode="F").resize((max(1, int(w * zoom)), max(1, int(h * zoom))),
                                                          Image.Resampling.BILINEAR))
    big = np.clip(big, 0, 1)
    if style == "canvas":
        dark = rng.random() < 0.85
        colour = np.array([(20, 20, 20), (30, 60, 220), (200, 30, 35)][int(rng.integers(0, 3))] if dark
                          else [(240, 240, 240), (250, 220, 90)][int(rng.integers(0, 2))], np.uint8)
        rgba = np.zeros((*big.shape, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[..., 3] = (big * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(rgba, mode="RGBA"), zoom
    if style == "scan":
        img = _paper_scan(big, rng)
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    else:  # photo: light falling off across the page, a shadow, sensor noise
        hh, ww = big.shape
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
        light = 0.95 - rng.uniform(0, 0.35) * (xx / ww if rng.random() < 0.5 else yy / hh)
        paper = np.clip(light, 0.4, 1)[..., None] * (np.array([1.0, 0.97, 0.92]) + rng.uniform(-0.05, 0.03, 3))
        colour = np.array([(0.1, 0.1, 0.12), (0.1, 0.15, 0.5)][int(rng.integers(0, 2))])
        a = big[..., None] * rng.uniform(0.6, 1.0)
        rgb = paper * (1 - a) + colour * a + rng.normal(0, rng.uniform(0.01, 0.05), (hh, ww, 1))
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.7:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(40, 95)))
        img = Image.open(io.BytesIO(buf.getvalue()))
        img.load()
    return img, zoom


def _gaps(cheque) -> list[tuple[int, int]]:
    """(digits left of it, x) for every cut between two digit boxes that do not overlap."""
    return [(k + 1, (a[0] + a[2] + b[0]) // 2) for k, (a, b) in enumerate(zip(cheque.boxes, cheque.boxes[1:]))
            if a[0] + a[2] <= b[0]]


def spliced_cheque(cheques: list, rng: np.random.Generator) -> tuple[Image.Image, list[int]] | None:
    """A new amount from two real ones: the digits of one amount left of a cut between its
    boxes, then those of another right of such a cut, scaled to the first one's height and its
    paper's brightness. Real writers, paper and touching pairs, in digit strings ORAND's
    training split does not hold. None when either amount has no clean cut."""
    first, second = (cheques[int(i)] for i in rng.choice(len(cheques), size=2, replace=False))
    cuts_a, cuts_b = _gaps(first), _gaps(second)
    if not cuts_a or not cuts_b:
        return None
    (left, xa), (right, xb) = cuts_a[int(rng.integers(len(cuts_a)))], cuts_b[int(rng.integers(len(cuts_b)))]
    with Image.open(first.image) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)[:, :xa]
    with Image.open(second.image) as im:
        b = im.convert("RGB")
    b = b.crop((xb, 0, b.width, b.height))
    b = np.asarray(b.resize((max(1, round(b.width * a.shape[0] / b.height)), a.shape[0]), Image.Resampling.BILINEAR),
                   dtype=np.float32)
    b = b * (np.median(a.reshape(-1, 3), axis=0) / np.maximum(np.median(b.reshape(-1, 3), axis=0), 1.0))
    joined = np.clip(np.concatenate([a, b], axis=1), 0, 255).astype(np.uint8)
    return Image.fromarray(joined, mode="RGB"), list(first.labels[:left]) + list(second.labels[right:])


def cheque_picture(cheque, rng: np.random.Generator, augment: bool) -> Image.Image:
    """A real ORAND-CAR-A amount, as scanned or (``augment``) as a phone or another scanner might send it."""
    with Image.open(cheque.image) as im:
        return scanned_or_photographed(im.convert("RGB"), rng, augment)


def scanned_or_photographed(img: Image.Image, rng: np.random.Generator, augment: bool) -> Image.Image:
    """A cheque amount's picture as scanned or (``augment``) as a phone or another scanner might send it."""
    if not augment or rng.random() < 0.3:  # as scanned, too: what the development split is like
        return img
    f = rng.uniform(0.8, 3.0)
    img = img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))), Image.Resampling.BICUBIC)
    fill = tuple(int(c) for c in np.median(np.asarray(img).reshape(-1, 3), axis=0))
    if rng.random() < 0.6:
        shear = rng.normal(0, 0.12)
        img = img.transform(img.size, Image.Transform.AFFINE, (1, shear, -shear * img.height / 2, 0, 1, 0),
                            Image.Resampling.BILINEAR, fillcolor=fill)
    if rng.random() < 0.5:
        img = img.rotate(rng.uniform(-4, 4), Image.Resampling.BILINEAR, expand=True, fillcolor=fill)
    arr = np.asarray(img).astype(np.float32) / 255.0
    arr = (arr - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
    arr = arr + rng.normal(0, rng.uniform(0, 0.03), arr.shape)
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(40, 95)))
        img = Image.open(io.BytesIO(buf.getvalue()))
        img.load()
    return img


@dataclass
class Sample:
    strip: np.ndarray      # (STRIP_HEIGHT, W)
    text: list[int]
    source: str
    centres: list[float] | None = None  # digit centres in strip pixels (synthetic strings)


def make_sample(pools: Pools, rng: np.random.Generator, source: str, augment: bool = True,
                signs: Signs = SIGNS) -> Sample | None:
    """One string from ``source`` (its marks from ``signs``), through the serving preprocessing;
    None when it refuses it."""
    if source == "orand":
        cheque = pools.cheques[int(rng.integers(len(pools.cheques)))]
        img, text, centres, zoom = cheque_picture(cheque, rng, augment), list(cheque.labels), None, None
    elif source == "corrections":
        image, text = pools.corrections[int(rng.integers(len(pools.corrections)))]
        img, centres, zoom = corrected_picture(image, rng, augment), None, None
    elif source == "orand-spliced":
        made = spliced_cheque(pools.cheques, rng)
        if made is None:
            return None
        img, text, centres, zoom = scanned_or_photographed(made[0], rng, augment), made[1], None, None
    else:
        n = int(rng.choice(np.arange(1, 11), p=[0.04, 0.08, 0.14, 0.16, 0.16, 0.14, 0.12, 0.08, 0.04, 0.04]))
        if source == "mnist":
            members = pools.mnist_by_writer[int(rng.integers(len(pools.mnist_by_writer)))]
            pick = rng.choice(members, size=n, replace=len(members) < n)
            glyphs, text = [mnist_glyph(pools, int(i)) for i in pick], [int(pools.mnist[1][i]) for i in pick]
        elif source == "pendigits":
            traces, labels = pools.traces
            pick = rng.integers(0, len(labels), size=n)
            pen = rng.uniform(0.8, 2.2)
            glyphs, text = [trace_glyph(traces[i], rng, pen) for i in pick], [int(labels[i]) for i in pick]
        else:
            images, labels = pools.usps
            pick = rng.integers(0, len(labels), size=n)
            glyphs, text = [usps_glyph(images[i]) for i in pick], [int(labels[i]) for i in pick]
        ink, centres = compose(glyphs, rng, marks=augment or rng.random() < 0.5, signs=signs)
        img, zoom = render(ink, rng, "canvas" if source == "pendigits" and rng.random() < 0.7 else None)
    try:
        s = strip(img)
    except InputError:
        return None
    if centres is not None:  # sent pixels -> ink map -> band -> strip pixels
        centres = [(c * zoom / s.scale[0] - s.origin[0]) / s.per_pixel + STRIP_MARGIN for c in centres]
    return Sample(s.image, text, source, centres)


def _usable(s: Sample | None) -> bool:
    """A string the network can learn from: made, and wide enough for CTC (a blank between repeats)."""
    return s is not None and s.strip.shape[1] // STRIDE >= 2 * len(s.text) + 1


class StringStream(torch.utils.data.IterableDataset):
    """Training strings without end, seeded: the mix of MIX, made by ``make_sample``. With
    ``workers=1`` (``make train-numbers``) they are made in a second process while the network
    trains in the first, in the same order as in one process (one worker keeps the order).
    With more workers each makes its own seeded sequence and the loader takes them in turn,
    so a run is still repeatable for a given number of workers."""

    def __init__(self, pools: Pools, seed: int, mix: dict[str, float] = MIX):
        self.pools, self.seed, self.mix = pools, seed, mix

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = [] if info is None or info.num_workers == 1 else [info.id]
        rng = np.random.default_rng([self.seed, 1, *worker])  # not the replay's sequence
        sources, shares = list(self.mix), np.array(list(self.mix.values()))
        while True:
            s = make_sample(self.pools, rng, str(rng.choice(sources, p=shares)))
            if _usable(s):
                yield s


def _as_is(sample):
    return sample


def string_stream(pools: Pools, seed: int, workers: int, mix: dict[str, float] = MIX):
    """An iterator over StringStream's strings, made in ``workers`` other processes (0: in this one)."""
    stream = StringStream(pools, seed, mix)
    if not workers:
        return iter(stream)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_as_is,
                                         prefetch_factor=256, persistent_workers=True)
    return iter(loader)


class Batches:
    """Training batches from ``strings``: a share ``fresh`` of each batch new, the rest replayed
    from the last ``replay`` new strings (making a string costs more than a training pass on it).

    Each batch's strips are of about one width: a batch is padded to its widest, and random
    strings so padded spend half the network's time on padding. WAITING new strings per new
    one a batch takes wait in line; the oldest sets the batch's width (so none waits for ever),
    the new and replayed strings nearest that width fill it."""

    def __init__(self, strings, size: int, fresh: float, replay: int, rng: np.random.Generator):
        self.strings, self.size, self.share, self.capacity, self.rng = strings, size, fresh, replay, rng
        self.waiting: list[Sample] = []  # new strings not yet trained on, oldest first
        self.replay: list[Sample] = []
        self.made: dict[str, int] = defaultdict(int, {source: 0 for source in MIX})

    def next(self) -> list[Sample]:
        fresh = self.size if len(self.replay) < self.size else max(1, round(self.share * self.size))
        while len(self.waiting) < WAITING * fresh:
            s = next(self.strings)
            self.waiting.append(s)
            self.made[s.source] += 1
        width = self.waiting[0].strip.shape[1]
        picked = set(nearest_widths(self.waiting, width, fresh))
        batch = [self.waiting[i] for i in sorted(picked)]
        self.waiting = [s for i, s in enumerate(self.waiting) if i not in picked]
        new = list(batch)
        if self.size > fresh:
            candidates = [self.replay[int(i)] for i in self.rng.integers(0, len(self.replay), size=WAITING * (self.size - fresh))]
            batch += [candidates[i] for i in nearest_widths(candidates, width, self.size - fresh)]
        for s in new:
            if len(self.replay) < self.capacity:
                self.replay.append(s)
            else:
                self.replay[int(self.rng.integers(0, self.capacity))] = s
        return batch


def nearest_widths(samples: list[Sample], width: int, k: int) -> list[int]:
    """The indices of the ``k`` samples whose strips are nearest ``width`` pixels wide (of
    equally near ones, the earlier)."""
    return sorted(range(len(samples)), key=lambda i: (abs(samples[i].strip.shape[1] - width), i))[:k]


def batch_tensors(samples: list[Sample]):
    """Pad the strips to the widest; (strips, column counts, targets, target lengths)."""
    width = max(s.strip.shape[1] for s in samples)
    x = torch.zeros(len(samples), 1, samples[0].strip.shape[0], width)
    for k, s in enumerate(samples):
        x[k, 0, :, :s.strip.shape[1]] = torch.from_numpy(s.strip)
    lengths = torch.tensor([s.strip.shape[1] // STRIDE for s in samples], dtype=torch.long)
    targets = torch.tensor([d + 1 for s in samples for d in s.text], dtype=torch.long)
    target_lengths = torch.tensor([len(s.text) for s in samples], dtype=torch.long)
    return x, lengths, targets, target_lengths


# ---------------------------------------------------------------- calibration

def correction_samples(rows: list[tuple[bytes, list[int]]]) -> list[Sample]:
    """Corrections as the handler reads them (their pictures as sent; one the handler refuses
    is a sample the network cannot read: an empty strip)."""
    out = []
    for image, text in rows:
        try:
            picture = strip(image).image
        except InputError:
            picture = np.zeros((STRIP_HEIGHT, 2 * STRIDE), dtype=np.float32)
        out.append(Sample(picture, text, "corrections"))
    return out


def right_share(net: torch.nn.Module, samples: list[Sample]) -> float | None:
    """The share of ``samples`` whose best reading is their text (None when there are none)."""
    return float(np.mean([r["read"] == r["truth"] for r in read_all(net, samples)])) if samples else None


def read_all(net: torch.nn.Module, samples: list[Sample], batch: int = 64, first_only: bool = False) -> list[dict]:
    """The network's best reading of each sample, log P(reading), and the digits' peaks (an
    ensemble's, or with ``first_only`` its first member's)."""
    out = []
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            x, lengths, _, _ = batch_tensors(chunk)
            members, _ = read_members(net, x, lengths * STRIDE, first_only)  # as the handler reads
            for s, c in zip(chunk, choose(members, lengths)):
                out.append({"source": s.source, "truth": s.text, "read": [r.digit for r in c.reads],
                            "peaks": [r.peak for r in c.reads], "logp": c.logp, "member": c.member,
                            "centres": s.centres})
    return out


def fit_platt(logp: np.ndarray, right: np.ndarray) -> Platt:
    """P(right) = sigmoid(a * x + b), x the log-odds of P, by maximum likelihood (Newton's method)."""
    X = np.stack([string_feature(logp), np.ones_like(logp)], 1)
    w = np.array([1.0, 0.0])

    def loss(w):  # the negative log-likelihood, with the same weak prior
        z = X @ w
        return float(np.sum(np.logaddexp(0, z) - right * z) + 0.5e-3 * w @ w)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (p - right) + 1e-3 * w  # a weak prior keeps a degenerate set (all right, all wrong) finite
        hess = X.T @ (X * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        while loss(w - step) > loss(w) and np.abs(step).max() > 1e-12:  # a full Newton step can overshoot
            step = step / 2
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return Platt(float(w[0]), float(w[1]))


def calibration_table(conf: np.ndarray, right: np.ndarray) -> tuple[float, list]:
    bins = np.minimum((conf * 10).astype(int), 9)
    n = len(conf)
    ece = sum(abs(right[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() / n
              for b in range(10) if (bins == b).any())
    return float(ece), [(f"{b / 10:.1f}-{(b + 1) / 10:.1f}", int((bins == b).sum()), float(conf[bins == b].mean()),
                         float(right[bins == b].mean())) for b in range(10) if (bins == b).any()]


# ---------------------------------------------------------------- training

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30000, help="optimiser steps at most (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="strings per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, one-cycle (default: %(default)s)")
    p.add_argument("--fresh", type=float, default=0.35,
                   help="share of each batch made new; the rest is replayed from the last --replay strings "
                        "(making a string costs more than a training pass on it) (default: %(default)s)")
    p.add_argument("--orand-share", type=float, default=MIX["orand"],
                   help="share of new strings that are real cheque amounts; the other sources share the rest "
                        "(default: %(default)s)")
    p.add_argument("--spliced-share", type=float, default=0.0,
                   help="share of the cheque amounts made by splicing two real amounts into a new one (default: %(default)s)")
    p.add_argument("--corrections", type=Path, metavar="FEEDBACK_DB",
                   help="also learn from the corrections of numbers people sent from the page (the feedback file, "
                        "config.properties' feedback_db: data/feedback.sqlite3): every fifth is held out, never "
                        "trained on, and read before and after (report.json's corrections)")
    p.add_argument("--corrections-share", type=float, default=0.1,
                   help="with --corrections: the share of new strings that are corrections, each as sent or as "
                        "another scanner or phone might send it (default: %(default)s)")
    p.add_argument("--calibration-signs", choices=("amounts", "all"), default="amounts",
                   help="the marks among the calibration strings: an amount's (dots, commas, dashes, currency "
                        "signs, check marks), as numbers 1.4's and the model card's strings hold, or all those "
                        "trained on, dates' slashes and brackets too (default: %(default)s)")
    p.add_argument("--replay", type=int, default=20000, help="strings kept for replay (default: %(default)s)")
    p.add_argument("--calibration", type=int, default=1500, help="held-out strings for calibration (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=35,
                   help="training time at most: the learning-rate schedule runs on whichever of steps and "
                        "minutes runs out first, so a busy machine shortens it rather than stretching it; "
                        "0: steps only (default: %(default)s)")
    p.add_argument("--channels", type=int, nargs=4, default=NumberNetConfig().channels,
                   help="the conv blocks' channels (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=NumberNetConfig().hidden,
                   help="channels of the column convolutions (default: %(default)s)")
    p.add_argument("--weights", type=Path,
                   help="calibrate and export these trained weights (a run's weights.pt) instead of training; "
                        "the report.json beside them gives the training figures and the network's shape")
    p.add_argument("--ensemble", type=Path, nargs="+", metavar="NUMBERS_PT",
                   help="calibrate and export an ensemble of these exported networks (runs' numbers.pt; the "
                        "report.json beside each, if any, gives its training figures; an exported ensemble, such as "
                        "model/numbers.pt, gives all its networks, and model/numbers.pt#2 its second alone) instead of training: every "
                        "member reads each strip and the text with the highest CTC probability averaged over them wins")
    p.add_argument("--cascade", type=float, metavar="THRESHOLD",
                   help="with --ensemble: the first member reads every strip and the whole ensemble only those "
                        "it reads with a string confidence below THRESHOLD (most strings pay for one network)")
    p.add_argument("--init", type=Path,
                   help="start training from these weights (a run's weights.pt, or an export's: model/numbers.pt's "
                        "first network, or the one #k names: model/numbers.pt#2) instead of from scratch; give "
                        "another --seed than that run's, or the strings are the ones it already saw")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="arithmetic of the training passes: bf16 autocast (weights stay fp32) halves the step "
                        "time on CPUs with native bf16; auto picks it there (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes making the strings beside the training one; 0 makes them in it. One keeps "
                        "the strings of a single-process run; more (a GPU run, whose network outpaces one maker) "
                        "give other, equally seeded strings (default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="where the network trains: cpu, or cuda (a GPU); calibration and export run on the "
                        "CPU either way, as the handler reads on the CPU (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke test: 30 steps of 8, 64 calibration strings")
    p.add_argument("--out", type=Path, default=Path("build/train-numbers"), help="default: %(default)s")
    p.add_argument("--version", default="1.0", help="model version written into the export (default: %(default)s)")
    args = p.parse_args(argv)
    if sum(bool(x) for x in (args.init, args.weights, args.ensemble)) > 1:
        p.error("--init trains on from weights, --weights and --ensemble export without training: give one")
    for name in ("orand_share", "spliced_share", "corrections_share"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} is a share of the strings, between 0 and 1, not {getattr(args, name)}")
    if args.corrections and (args.weights or args.ensemble):
        p.error("--corrections are learnt in training: give --init (or nothing) instead of --weights or --ensemble")
    if args.cascade is not None and not (args.ensemble and 0 < args.cascade <= 1):
        p.error("--cascade is a string confidence between 0 and 1, for an --ensemble")
    if args.workers < 0:
        p.error(f"--workers is a number of processes, 0 or more, not {args.workers}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here")
    if args.quick:
        args.steps, args.batch_size, args.calibration, args.minutes = 30, 8, 64, 0
    return args


def fit(net: NumberNet, pools: Pools, args: argparse.Namespace, rng: np.random.Generator, started: float) -> dict:
    """Train ``net`` (from the weights ``--init`` names, if any) on strings made from ``pools``;
    the training figures for the report."""
    if args.init:
        net.load_state_dict(initial_weights(args.init))
    # The string makers start before the GPU does: forked processes never touch CUDA.
    mix = mix_with(args.orand_share, args.spliced_share, args.corrections_share if args.corrections else 0.0)
    strings = string_stream(pools, args.seed, args.workers, mix)
    device = torch.device(args.device)
    net.to(device)
    bf16 = use_bf16(args.precision) if device.type == "cpu" else args.precision != "fp32"  # GPUs: bf16 natively
    print(f"NumberNet: {count_parameters(net):,} parameters; {args.steps} steps of {args.batch_size}; "
          f"{'bf16 autocast' if bf16 else 'fp32'} on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    batches = Batches(strings, args.batch_size, args.fresh, args.replay, rng)
    gen_time = step_time = 0.0
    losses = []
    steps_done = 0
    for step in range(args.steps):
        progress = step / args.steps
        if args.minutes:
            progress = max(progress, (time.time() - started) / (60 * args.minutes))
        if progress >= 1:
            print(f"stopping at step {step}: --minutes {args.minutes} reached")
            break
        for group in opt.param_groups:  # one cycle: a tenth warming up, then a cosine down to nothing
            group["lr"] = args.lr * (progress / 0.1 if progress < 0.1 else 0.5 * (1 + math.cos(math.pi * (progress - 0.1) / 0.9)))
        t0 = time.perf_counter()
        batch = batches.next()
        t1 = time.perf_counter()
        net.train()
        x, lengths, targets, target_lengths = (t.to(device, non_blocking=True) for t in batch_tensors(batch))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            scores, _ = net(x)
        loss = F.ctc_loss(scores.float().transpose(0, 1), targets, lengths, target_lengths, blank=0, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        steps_done = step + 1
        gen_time += t1 - t0
        step_time += time.perf_counter() - t1
        losses.append(loss.detach())
        if step % 100 == 0 or step == args.steps - 1:
            losses[-100:] = [float(v) for v in losses[-100:]]  # on a GPU, the one wait for it in 100 steps
            print(f"step {step}: loss {np.mean(losses[-100:]):.4f}  ({time.time() - started:.0f} s; "
                  f"making strings {gen_time:.0f} s, network {step_time:.0f} s)", flush=True)
    del strings  # stops the workers: they would go on making strings beside the calibration
    net.cpu()
    losses = [float(v) for v in losses[-200:]]
    return {"init": str(args.init) if args.init else None,
            "steps": steps_done, "batch_size": args.batch_size, "seed": args.seed, "strings_seen": batches.made,
            "workers": args.workers, "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
            "fresh": args.fresh, "orand_share": args.orand_share,
            "spliced_share": args.spliced_share, "corrections_share": args.corrections_share if args.corrections else None,
            "precision": "bf16 autocast" if bf16 else "fp32",
            "train_seconds": round(time.time() - started, 1), "making_strings_seconds": round(gen_time, 1),
            "network_seconds": round(step_time, 1), "final_loss": float(np.mean(losses[-200:]))}


TRAINING_FIGURES = ("corrections", "init", "steps", "batch_size", "seed", "strings_seen", "workers", "device", "fresh",
                    "orand_share", "spliced_share", "corrections_share", "precision", "train_seconds",
                    "making_strings_seconds", "network_seconds", "final_loss")


def train(args: argparse.Namespace) -> dict:
    """Train (or, with --weights, take a run's trained weights), calibrate, export, report."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_at_start = os.getloadavg()[0]
    train_pools, cal_pools = load_pools(args.quick)
    net = NumberNet(NumberNetConfig(channels=list(args.channels), hidden=args.hidden))
    kept = {}
    if args.ensemble:
        net, fitted = load_ensemble(args.ensemble)
    elif args.weights:  # the training figures are the run's that made the weights, and its network's shape
        trained = json.loads((args.weights.parent / "report.json").read_text())
        if "config" in trained:
            net = NumberNet(NumberNetConfig(**trained["config"]))
        net.load_state_dict(torch.load(args.weights))
        fitted = {k: trained.get(k) for k in TRAINING_FIGURES}  # runs before --init have no "init"
        fitted["trained_by"] = trained.get("trained_by", trained["command"])
        kept = {"total_seconds": trained["total_seconds"], "load": trained["load"]}
    else:
        corrections = None
        if args.corrections:
            train_pools.corrections, held = load_corrections(args.corrections)
            if not train_pools.corrections:
                raise SystemExit(f"no corrections of numbers to learn from in {args.corrections} ({len(held)} held out)")
            held = correction_samples(held)
            corrections = {"file": str(args.corrections), "trained_on": len(train_pools.corrections),
                           "held_out": len(held), "held_out_right_before": None}
            if args.init:  # what the network read of them before this round
                before = NumberNet(net.config)
                before.load_state_dict(initial_weights(args.init))
                corrections["held_out_right_before"] = right_share(before, held)
        fitted = fit(net, train_pools, args, rng, started)
        torch.save(net.state_dict(), args.out / "weights.pt")  # the trained weights, whatever happens next
        if corrections:
            fitted["corrections"] = {**corrections, "held_out_right_after": right_share(net, held)}

    # Calibration on strings from the held-out writers, traces, digits and cheques.
    cal_rng = np.random.default_rng(args.seed + 1000)
    cal = []
    per_source = {"mnist": 0.4, "pendigits": 0.15, "usps": 0.1, "orand": 0.35}
    signs = AMOUNT_SIGNS if args.calibration_signs == "amounts" else SIGNS
    for src, share in per_source.items():
        want = int(round(share * args.calibration))
        while sum(1 for s in cal if s.source == src) < want:
            s = make_sample(cal_pools, cal_rng, src, augment=src != "orand" or cal_rng.random() < 0.5, signs=signs)
            if s is not None:
                cal.append(s)
    records = read_all(net, cal)
    right_of = lambda rs: np.array([r["read"] == r["truth"] for r in rs], dtype=float)
    logp_of = lambda rs: np.array([r["logp"] for r in rs])
    cascade = None
    if args.cascade:  # the first member answers where it is sure enough, the ensemble elsewhere
        first = read_all(net, cal, first_only=True)
        first_platt = fit_platt(logp_of(first), right_of(first))
        escalated = np.array([sent_on(lp, args.cascade, first_platt) for lp in logp_of(first)])
        platt = fit_platt(logp_of(records)[escalated], right_of(records)[escalated])  # the strings it answers
        records = [e if up else f for f, e, up in zip(first, records, escalated)]
        cascade = {"threshold": args.cascade, "first": first_platt.to_meta(), "escalated": float(escalated.mean())}
        platts = [platt if up else first_platt for up in escalated]
    logp, right = logp_of(records), right_of(records)
    if cascade is None:
        platt = fit_platt(logp, right)
        platts = [platt] * len(records)
    conf = np.array([p(lp) for lp, p in zip(logp, platts)])
    ece, table = calibration_table(conf, right)
    raw_ece, _ = calibration_table(np.exp(logp), right)
    thresholds = []
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        answered = conf >= t
        thresholds.append({"threshold": t, "unsure": float(1 - answered.mean()),
                           "right_when_answered": float(right[answered].mean()) if answered.any() else None,
                           "right_overall": float((right * answered).mean())})
    def peak_offset(member=None) -> float:
        offsets = [c - (p + 0.5) * STRIDE for r in records if r["centres"] and r["read"] == r["truth"]
                   and member in (None, r["member"]) for p, c in zip(r["peaks"], r["centres"])]
        return float(np.median(offsets)) if offsets else peak_offset() if member is not None else 0.0
    by_source = {src: float(np.mean([r["read"] == r["truth"] for r in records if r["source"] == src]))
                 for src in per_source}
    metrics = {
        "version": args.version, **fitted,
        "calibration_strings": len(records), "calibration_right": float(right.mean()),
        "calibration_right_by_source": by_source, "platt": platt.to_meta(), "ece_calibrated": ece, "ece_raw": raw_ece,
        "calibration_table": table, "thresholds": thresholds, "peak_offset": peak_offset(),
        "parameters": count_parameters(net), "machine": describe_machine(), "quick": args.quick,
        "config": net.config.to_dict(),
    }
    members = len(net.nets) if isinstance(net, NumberEnsemble) else 1
    if cascade:
        metrics["cascade"] = cascade
    if isinstance(net, NumberEnsemble):  # one network of an export (X.pt#1) too
        metrics["peak_offsets"] = [peak_offset(i) for i in range(members)]
        metrics["chosen_member"] = [sum(r["member"] == i for r in records) / len(records) for i in range(members)]
    export(net, metrics, args.out / "numbers.pt", torch.from_numpy(cal[0].strip)[None, None])
    metrics["total_seconds"] = round(time.time() - started, 1)
    metrics["load"] = [load_at_start, os.getloadavg()[0]]
    metrics["command"] = "python -m training.train_numbers " + " ".join(sys.argv[1:])
    metrics.update(kept)
    (args.out / "report.json").write_text(json.dumps(metrics, indent=1))
    (args.out / "report.md").write_text(report(metrics))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("calibration_table",)}, indent=1))
    return metrics


def report(m: dict) -> str:
    """The training report, in Markdown, from the metrics ``train`` returns."""
    lines = ["# Training report: numbers", ""]
    if m.get("members"):
        lines += [f"`{m['command']}` on {m['machine']}: an ensemble of {len(m['members'])} networks trained apart, "
                  f"{m['parameters']:,} parameters in all. Every member reads each strip (moved a row up and down "
                  "too); each member's best path is a candidate text, and the candidate with the highest CTC "
                  "probability averaged over the members wins (`model.number_network.choose`).", ""]
        for i, x in enumerate(m["members"]):
            lines.append(f"- Member {i + 1}, `{x['export']}`: {x['parameters']:,} parameters (channels "
                         f"{' '.join(map(str, x['config']['channels']))}, {x['config']['hidden']} hidden), "
                         + (f"{x['steps']:,} steps of {x['batch_size']} in {x['train_seconds'] / 60:.0f} min on "
                            f"{x.get('device') if x.get('device') not in (None, 'cpu') else x['machine']}"
                            if x.get("train_seconds") else f"{x['steps']} steps" if x.get("steps") else "trained")
                         + (f", continued from `{x['init']}`" if x.get("init") else "")
                         + f" (`{x['command']}`); its reading wins on {m['chosen_member'][i]:.0%} of the calibration strings.")
        return "\n".join(lines + [""] + calibration_report(m)) + "\n"
    seen = m["strings_seen"]
    if m.get("trained_by"):
        lines += [f"Calibrated and exported by `{m['command']}` from the weights that `{m['trained_by']}` trained "
                  "(the figures below but the calibration's are that run's).", ""]
        m = {**m, "command": m["trained_by"]}
    lines += [
             f"`{m['command']}` (`make {'train-numbers-more' if m.get('init') else 'train-numbers'}` runs it under "
             f"`nice -n 10`: one torch thread, {m.get('precision', 'fp32')}, "
             + ("the strings made in a second process" if m.get("workers") else "the strings made in the same process")
             + f") on {m['machine']}; 1-minute load {m['load'][0]:.1f} at the start and {m['load'][1]:.1f} at the end.", "",
             *([f"- Continued from the weights in `{m['init']}`: the steps and strings below are this run's alone."]
               if m.get("init") else []),
             f"- {m['steps']:,} steps of {m['batch_size']} strings of about one width, {m.get('fresh', 0.5):.0%} of each batch new "
             "and the rest replayed; "
             f"{sum(seen.values()):,} strings made: " + ", ".join(f"{k} {v:,}" for k, v in seen.items()) + ".",
             f"- Time: {m['train_seconds'] / 60:.1f} min training ({m['making_strings_seconds'] / 60:.1f} min "
             + ("waiting for" if m.get("workers") else "making") + " strings, "
             f"{m['network_seconds'] / 60:.1f} min in the network), {m['total_seconds'] / 60:.1f} min in all "
             "with calibration and export.",
             f"- The network: {m['parameters']:,} parameters (model/number_network.py); final training loss "
             f"(CTC, mean of the last 200 steps) {m['final_loss']:.3f}.", *corrections_report(m), ""]
    return "\n".join(lines + calibration_report(m)) + "\n"


def corrections_report(m: dict) -> list[str]:
    """The report's line on the page's corrections, when the run learnt from them."""
    c = m.get("corrections")
    if not c:
        return []
    read = lambda x: "not measured (trained from scratch)" if x is None else f"{x:.0%}"
    return [f"- Corrections sent from the page (`{c['file']}`): {c['trained_on']:,} learnt from, "
            f"{m['corrections_share']:.0%} of the new strings; the {c['held_out']:,} held out (every fifth, never "
            f"trained on) read right before this round: {read(c['held_out_right_before'])}, after: "
            f"{read(c['held_out_right_after'])}."]


def formula(platt: dict, p: str = "P") -> str:
    """A calibration's formula, from ``fit_platt``'s ``Platt.to_meta()`` (always on the log-odds)."""
    return f"sigmoid({platt['a']:.3f} * log({p} / (1 - {p})) {'-' if platt['b'] < 0 else '+'} {abs(platt['b']):.3f})"


def calibration_report(m: dict) -> list[str]:
    """The report's calibration section."""
    ensemble = bool(m.get("members"))
    lines = ["## Calibration (held-out training strings)", "",
             f"{m['calibration_strings']} strings from the held-out share of the training writers, traces, USPS "
             "digits and cheques (never the development splits the model card reports). Best reading right: "
             f"{m['calibration_right']:.1%} (" + ", ".join(f"{k} {v:.1%}" for k, v in m["calibration_right_by_source"].items())
             + ").", "",
             f"String confidence = {formula(m['platt'], 'P(reading)')}, P the CTC "
             + ("probability of the reading averaged over the members. ECE " if ensemble else
                "probability of the best-path reading. ECE ")
             + f"{m['ece_raw']:.3f} for P itself, "
             f"{m['ece_calibrated']:.3f} after the fit (in-sample):", "",
             "| confidence | strings | mean confidence | right |", "|---|---|---|---|"]
    lines += [f"| {b} | {n} | {c:.3f} | {a:.3f} |" for b, n, c, a in m["calibration_table"]]
    lines += ["", "The unsure threshold: what each choice would do on these strings (null counts as a miss).", "",
              "| threshold | unsure (null) | right when answered | right overall |", "|---|---|---|---|"]
    lines += [f"| {t['threshold']:.1f} | {t['unsure']:.1%} | "
              f"{'-' if t['right_when_answered'] is None else format(t['right_when_answered'], '.1%')} | "
              f"{t['right_overall']:.1%} |" for t in m["thresholds"]]
    if m.get("cascade"):
        c = m["cascade"]
        lines += ["", f"A cascade: member 1 reads every strip and answers with confidence {formula(c['first'])} "
                  f"where that is at least {c['threshold']:g}; the ensemble reads the "
                  f"rest ({c['escalated']:.1%} of these strings), its fit above made on those strings alone. The "
                  "tables are the cascade's answers."]
    offsets = (" / ".join(f"{o:+.1f}" for o in m["peak_offsets"]) + " (member by member)") if ensemble \
        else f"{m['peak_offset']:+.1f}"
    lines += ["", f"Boxes: a digit's CTC peak column lies {offsets} strip pixels from its centre "
              "(median over the synthetic calibration strings read right); the handler moves the peaks by that "
              "before parting neighbours halfway."]
    return lines


def initial_weights(path: Path) -> dict:
    """``--init``'s weights: a run's weights.pt, or those of an exported network (a numbers.pt;
    of an ensemble, its first network, the one a cascade such as the shipped model/numbers.pt
    reads every strip with, or the one ``#k`` names: model/numbers.pt#2)."""
    try:
        ensemble, _ = load_ensemble([Path(path)])
    except RuntimeError:  # not a TorchScript export: a state dict
        return torch.load(path)
    return ensemble.nets[0].state_dict()


def network_of(path: Path) -> tuple[Path, int | None]:
    """``model/numbers.pt#2`` -> (model/numbers.pt, 1): an exported ensemble's k-th network, counted
    from 1; a plain path -> (path, None)."""
    found = re.fullmatch(r"(.+)#([1-9][0-9]*)", str(path))
    return (Path(found[1]), int(found[2]) - 1) if found else (Path(path), None)


def load_ensemble(paths: list[Path]) -> tuple[NumberEnsemble, dict]:
    """An ensemble of exported networks (numbers.pt files: config in their meta.json, weights
    in their state), and the members' training figures from the report.json beside each. An
    exported ensemble (a shipped model/numbers.pt) gives all its networks, with the figures its
    meta.json keeps of them: it can be calibrated again without its runs' folders. ``PATH#k`` takes
    only its k-th network (``network_of``), to cascade it with others."""
    nets, members = [], []
    for path in paths:
        path, only = network_of(path)
        extra = {"meta.json": ""}
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra["meta.json"])
        count = len(meta.get("members", [meta.get("config")]))
        if only is not None and only >= count:
            raise SystemExit(f"{path} holds {count} network(s): there is no network {only + 1}")
        if "members" in meta:
            state = scripted.state_dict()
            kept = meta.get("members_trained") or [{} for _ in meta["members"]]
            for i, config in enumerate(meta["members"]):
                if only is not None and i != only:
                    continue
                net = NumberNet(NumberNetConfig(**config))
                net.load_state_dict({k[len(f"nets.{i}."):]: v for k, v in state.items() if k.startswith(f"nets.{i}.")})
                nets.append(net)
                version = meta.get("metrics", {}).get("version")
                members.append({"command": f"numbers {version}'s training report says how (its export keeps no "
                                "figures of its networks)", **kept[i],
                                "export": f"network {i + 1} of {path} (numbers {version})"
                                          + (f", first {kept[i]['export']}" if kept[i].get("export") else ""),
                                "parameters": count_parameters(net), "config": net.config.to_dict()})
            continue
        net = NumberNet(NumberNetConfig(**meta["config"]))
        net.load_state_dict(scripted.state_dict())
        nets.append(net)
        report = path.parent / "report.json"  # the run's figures; an export alone has only its meta's
        trained = json.loads(report.read_text()) if report.exists() else {
            "command": "unknown (no report.json beside it)", **meta.get("metrics", {})}
        members.append({"export": str(path), "command": trained.get("trained_by", trained["command"]),
                        "parameters": count_parameters(net), "config": net.config.to_dict(),
                        **{k: trained.get(k) for k in ("init", "steps", "batch_size", "train_seconds", "device", "machine")}})
    return NumberEnsemble(nets), {"members": members}


def export(net: NumberNet | NumberEnsemble, metrics: dict, path: Path, sample: torch.Tensor) -> None:
    """Script the network, check it against the eager model, and save it with its metadata:
    the config, the layers' names, the string confidence's calibration and the peak offset
    (an ensemble's: every member's config and peak offset too)."""
    net.eval()
    scripted = torch.jit.script(net)
    with torch.inference_mode():
        eager, _ = net(sample)
        script, _ = scripted(sample)
        torch.testing.assert_close(script, eager)
        if isinstance(net, NumberEnsemble):
            for e, s in zip(net.each(sample)[0], scripted.each(sample)[0]):
                torch.testing.assert_close(s, e)
    meta = {"config": net.config.to_dict(), "layers": net.layer_names,
            "calibration": metrics["platt"],
            "peak_offset": metrics["peak_offset"],
            "metrics": {k: metrics.get(k) for k in ("version", "steps", "calibration_right", "ece_calibrated", "quick")}}
    if isinstance(net, NumberEnsemble):
        meta["members"] = [n.config.to_dict() for n in net.nets]
        meta["members_trained"] = metrics.get("members")  # how each was trained, for a later calibration
        meta["peak_offsets"] = metrics["peak_offsets"]
    if metrics.get("cascade"):
        meta["cascade"] = {k: metrics["cascade"][k] for k in ("threshold", "first")}
    torch.jit.save(scripted, str(path), _extra_files={"meta.json": json.dumps(meta)})


if __name__ == "__main__":
    train(parse_args())
