"""Handwriting from writers MNIST never had: ORAND-CAR-A cheque digits, UCI pendigits pen
traces, USPS envelope scans, and QMNIST's writer ids for MNIST's training images.

The files are read where they are (``../shared/datasets`` from the repository root, or
``$DIGITS_SOURCES``), never copied into the repository. ``verify`` checks each against the
sha256 in that folder's README and, when one is missing, names it and its public original.

Each source is split once, before any training, into a training part and a development
part that training never sees (``split``):

- MNIST train: by writer, with QMNIST's writer ids (539 writers): a seeded tenth of the
  writers, all of their digits.
- ORAND-CAR-A: by file: a seeded 200 of the 1,080 cheque amounts, every digit of each.
- pendigits: the ``.tra`` file has 30 writers but no writer ids, and its order does not group
  them (each digit's nearest neighbour of its class lies as far away in the file as a random
  line's: measured, median 2,184 lines apart). A writer split is impossible, so a seeded random
  tenth is held out: its writers are also in training, and its figures are optimistic for
  new writers.
- USPS: no writer ids either; the last 1,000 of 7,291 images, a contiguous block (neighbours
  in the file are a little more alike than random ones, so a block separates writers somewhat
  better than a random draw).

Renderers turn each digit into what a user would send (encoded image bytes): pen traces as
canvas strokes of varied width and smoothing; USPS digits and cheque digits as scans with
margins that take in what lies around them (for cheques, the real neighbouring digits and
separators of the amount, from the ORAND boxes; for USPS, a fragment of another USPS digit).
"""
from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.preprocess import png_bytes
from training.data import sha256

REPO = Path(__file__).resolve().parent.parent
SOURCES_DIR = Path(os.environ.get("DIGITS_SOURCES", REPO.parent / "shared" / "datasets"))
MNIST_PLAIN, USPS_PLAIN = 3000, 1500  # digits per round of plain_payloads
SPLIT_SEED = 12  # fixed forever: changing it would move digits between training and development


@dataclass(frozen=True)
class SourceFile:
    path: str      # relative to SOURCES_DIR
    sha256: str    # from the datasets README
    original: str  # where the public original is
    licence: str


FILES = {
    "orand": SourceFile("orand-car-a/annotations.json",
                        "eda12b414716873004f5813e219399b10f61edc71e61e85cec531b6edf1a4125",
                        "boxes: github.com/Fzkuji/Labeled_ORAND-CAR-A (ORAND-CAR-2014-coco, train split); "
                        "images: orand.cl icfhr2014-hdsr (ORAND-CAR-A training images)",
                        "annotations MIT; images from the ORAND HDSR competition, for research"),
    "pendigits": SourceFile("pendigits/pendigits.tra",
                            "13a29b9cc1b40503c51030840092d32e0e99efcbd5331146f832a2e815bb4c35",
                            "UCI ML repository, dataset 81, Pen-Based Recognition of Handwritten Digits "
                            "(pendigits.tra)", "CC BY 4.0"),
    "usps": SourceFile("usps/usps_train.npz",
                       "51fd9ceed89dfb993647f67a7b5c4edcd4af31c76779a9975e219b066b537a22",
                       "the usps.h5 of the 'USPS dataset' collections (train split), also libsvm's "
                       "multiclass 'usps'", "public research data"),
    "qmnist": SourceFile("qmnist/qmnist-train-labels.tsv.gz",
                         "063229afb535986df50a905c6fa03b716f503bd859d2d9bc8a9b4e2c6a2ccee4",
                         "github.com/facebookresearch/qmnist (qmnist-train-labels.tsv.gz)", "BSD"),
}
ORAND_IMAGES = "orand-car-a/images"


class SourceMissing(FileNotFoundError):
    """A source file is not there; the message says which and where its public original is."""


class SourceCorrupt(ValueError):
    """A source file is there but its sha256 is not the README's."""




def verify(names=None, root: Path | None = None) -> dict[str, Path]:
    """Check the named sources' files (all by default) against their sha256; their paths.

    Raises SourceMissing naming the missing file and its public original, or SourceCorrupt
    naming the file whose sum differs."""
    root = Path(root or SOURCES_DIR)
    out = {}
    for name in names or FILES:
        f = FILES[name]
        path = root / f.path
        if not path.exists():
            raise SourceMissing(f"{name}: {path} is missing; get it from {f.original} "
                                f"(licence: {f.licence}) and put it there, or set DIGITS_SOURCES")
        got = sha256(path)
        if got != f.sha256:
            raise SourceCorrupt(f"{name}: {path} has sha256 {got}, expected {f.sha256}; "
                                f"fetch it again from {f.original}")
        if name == "orand" and not (root / ORAND_IMAGES).is_dir():
            raise SourceMissing(f"orand: the images folder {root / ORAND_IMAGES} is missing; get the "
                                f"images from {f.original}")
        out[name] = path
    return out


# ---------------------------------------------------------------- loading

@dataclass
class Cheque:
    """One ORAND-CAR-A amount: its image and its digits' boxes, left to right."""
    file: str
    image: Path
    boxes: list[tuple[int, int, int, int]]  # x, y, width, height
    labels: list[int]


def load_orand(root: Path | None = None) -> list[Cheque]:
    """Every cheque amount with its digit boxes sorted left to right (categories 0-9 are digits)."""
    root = Path(root or SOURCES_DIR)
    coco = json.loads(verify(["orand"], root)["orand"].read_text())
    digits = {c["id"]: int(c["name"]) for c in coco["categories"] if c["name"].isdigit()}
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] in digits:
            by_image.setdefault(a["image_id"], []).append((a["bbox"], digits[a["category_id"]]))
    out = []
    for im in sorted(coco["images"], key=lambda i: i["file_name"]):
        marks = sorted(by_image.get(im["id"], []), key=lambda m: m[0][0])
        if marks:
            out.append(Cheque(im["file_name"], root / ORAND_IMAGES / im["file_name"],
                              [tuple(int(round(v)) for v in m[0]) for m in marks], [m[1] for m in marks]))
    return out


def load_pendigits(root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pen traces (N, 8, 2) as (x, y) in 0-100 with y up, and labels (N,)."""
    raw = np.loadtxt(verify(["pendigits"], root)["pendigits"], delimiter=",", dtype=np.int64, ndmin=2)
    return raw[:, :16].reshape(-1, 8, 2).astype(np.float32), raw[:, 16].astype(np.uint8)


def load_usps(root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 16, 16) float32 in [0, 1], light ink on dark, and labels (N,)."""
    with np.load(verify(["usps"], root)["usps"]) as z:
        return z["images"].astype(np.float32).reshape(-1, 16, 16), z["labels"].astype(np.uint8)


def load_writers(root: Path | None = None) -> np.ndarray:
    """QMNIST's writer id of each of MNIST's 60,000 training images, in MNIST's order."""
    with gzip.open(verify(["qmnist"], root)["qmnist"], "rt") as f:
        rows = [line.split() for line in f if line.strip()]
    return np.array([int(r[2]) for r in rows], dtype=np.int64)


# ---------------------------------------------------------------- splits

def split(source: str, count: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, development indices) of a source's ``count`` items; see the module's
    docstring for how each source is split. ``groups`` are MNIST's writer ids (``mnist``)."""
    rng = np.random.default_rng(SPLIT_SEED)
    index = np.arange(count)
    if source == "mnist":  # by writer
        writers = np.unique(groups)
        held = rng.choice(writers, size=len(writers) // 10, replace=False)
        dev = np.isin(groups, held)
    elif source == "orand":  # by file: ``count`` cheques, 200 held out
        dev = np.isin(index, rng.choice(count, size=200, replace=False))
    elif source == "pendigits":  # no writer ids and no writer order: a random tenth
        dev = np.isin(index, rng.choice(count, size=count // 10, replace=False))
    elif source == "usps":  # no writer ids: the last contiguous 1,000
        dev = index >= count - 1000
    else:
        raise ValueError(f"unknown source {source!r}")
    return index[~dev], index[dev]


def calibration_part(source: str, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training split ``train`` (indices from ``split``) cut again into what training
    learns from and a seeded twentieth kept back to fit the calibration temperature: never the
    development split, which the model card reports. ORAND's indices are cheques, so a cheque's
    digits stay together."""
    held = np.random.default_rng(SPLIT_SEED + 1).random(len(train)) < 0.05
    return train[~held], train[held]


# ---------------------------------------------------------------- rendering

def _encode(img: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if img.mode == "RGBA" or rng.random() < 0.4:
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(70, 95)))
    return buf.getvalue()


def _smooth(points: np.ndarray, rounds: int) -> np.ndarray:
    """Chaikin's corner cutting, ``rounds`` times: from the 8-point polygon towards a pen's curve."""
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        points = np.concatenate([points[:1], np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], 1).reshape(-1, 2),
                                 points[-1:]])
    return points


def render_trace(points: np.ndarray, rng: np.random.Generator, canvas: int = 280) -> bytes:
    """A pendigits trace as the page's canvas sends it: transparent PNG, one colour, round
    joins, a pen 4-28 px wide, corners smoothed 0-3 times, the digit 90-240 px tall anywhere."""
    pts = _smooth(points.astype(np.float64), int(rng.integers(0, 4)))
    pts[:, 1] = 100 - pts[:, 1]  # y up in the file, down on a canvas
    height = float(rng.uniform(90, 240))
    span = np.ptp(pts, axis=0).clip(1)
    scale = height / span[1] if span[1] >= span[0] * 0.3 else height / span[0]
    pts = (pts - pts.min(0)) * scale
    extent = pts.max(0)
    if extent.max() > canvas - 20:
        pts *= (canvas - 20) / extent.max()
        extent = pts.max(0)
    offset = np.array([rng.uniform(10, canvas - 10 - extent[0]), rng.uniform(10, canvas - 10 - extent[1])])
    pts = pts + offset
    width = int(rng.integers(4, 29))
    ink = tuple(int(c) for c in rng.choice([(20, 20, 20), (30, 60, 220), (200, 30, 35)])) + (255,)
    img = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    line = [tuple(p) for p in pts]
    draw.line(line, fill=ink, width=width, joint="curve")
    for x, y in (line[0], line[-1]):
        draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    return _encode(img, rng)


def _paper_scan(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Ink (H x W in [0, 1]) laid on scanned paper: tinted, grainy, dark blue or black ink."""
    h, w = ink.shape
    paper = np.array([0.95, 0.94, 0.90]) + rng.uniform(-0.04, 0.03, 3)
    colour = np.array([(0.08, 0.08, 0.10), (0.10, 0.15, 0.45)][int(rng.integers(0, 2))])
    grain = rng.normal(0, rng.uniform(0.005, 0.03), (h, w, 1))
    rgb = paper * (1 - ink[..., None]) + colour * ink[..., None] + grain
    return Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")


def render_usps(image: np.ndarray, rng: np.random.Generator, neighbour: np.ndarray | None = None) -> bytes:
    """A USPS digit as a scan: dark ink on paper, scaled up 3-6 times, a margin of 10-40% of
    its size, and (when given) a fragment of another digit cut by the left or right border."""
    zoom = int(rng.integers(3, 7))
    side = 16 * zoom
    margin = int(side * rng.uniform(0.1, 0.4))
    big = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BICUBIC))
    sheet = np.zeros((side + 2 * margin, side * 3 + 2 * margin), np.float32)
    sheet[margin:margin + side, side + margin:2 * side + margin] = big
    if neighbour is not None:
        nb = np.asarray(Image.fromarray(neighbour.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BICUBIC))
        gap = int(side * rng.uniform(0.05, 0.25))
        left = margin - gap if rng.random() < 0.5 else 2 * side + margin + gap
        lo, hi = max(left, 0), min(left + side, sheet.shape[1])
        sheet[margin:margin + side, lo:hi] = np.maximum(sheet[margin:margin + side, lo:hi], nb[:, lo - left:hi - left])
    crop = sheet[:, side:side * 2 + 2 * margin]
    crop = np.clip(crop, 0, 1)
    img = _paper_scan(crop, rng)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return _encode(img, rng)


def render_cheque(cheque: Cheque, k: int, rng: np.random.Generator, margin: tuple[float, float] = (0.1, 0.45)) -> bytes:
    """Digit ``k`` of a cheque amount as a user would crop it from the real scan: its box
    widened by a random share of its size on each side (within ``margin``), so that the crop
    takes in bits of the neighbouring digits, separators and the cheque's printed texture."""
    with Image.open(cheque.image) as im:
        page = im.convert("RGB")
    x, y, w, h = cheque.boxes[k]
    lo, hi = margin
    left, right = (int(round(w * rng.uniform(lo, hi))) for _ in range(2))
    top, bottom = (int(round(h * rng.uniform(lo / 2, hi / 2))) for _ in range(2))
    box = (max(0, x - left), max(0, y - top), min(page.width, x + w + right), min(page.height, y + h + bottom))
    crop = page.crop(box)
    scale = rng.uniform(1.0, 3.0)  # phone crops come larger than the 2014 scans
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.BICUBIC)
    return _encode(crop, rng)


# ---------------------------------------------------------------- development sets

@dataclass
class DevItem:
    data: bytes   # what a client posts
    label: int


def squared(ink: np.ndarray, side: int = 16, stretch: bool = True, bilevel: bool = True) -> np.ndarray:
    """Ink (H x W in [0, 1]) cut to its box and put in a ``side``-pixel square, light on dark
    (uint8): stretched to fill it whatever its proportions (``stretch``: a 1 comes out as wide
    as a 0) or with its longer side filling it, thresholded at half strength (``bilevel``).
    Semeion's collection stores its digits so: stretched into 16x16 and thresholded."""
    rows, cols = np.flatnonzero(ink.max(axis=1) > 0.25), np.flatnonzero(ink.max(axis=0) > 0.25)
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = box.shape
    size = (side, side) if stretch else (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    small = np.asarray(Image.fromarray(box.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    if bilevel:
        small = (small > 0.5).astype(np.float32)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - size[1]) // 2, (side - size[0]) // 2
    square[top:top + size[1], left:left + size[0]] = np.clip(small, 0, 1)
    return (square * 255 + 0.5).astype(np.uint8)


def stretched(ink: np.ndarray, rng: np.random.Generator) -> bytes:
    """``squared`` as collections and converters might send it: mostly 16x16, some 20 or 28;
    two thirds stretched, a third with their proportions kept (a converter that pads to a
    square); three quarters thresholded; light on dark or dark on light; sometimes enlarged
    with hard pixel edges."""
    side = int(rng.choice([16, 16, 16, 20, 28]))
    stretch = not rng.random() < 1 / 3
    pixels = squared(ink, side, stretch=stretch, bilevel=rng.random() < 0.75)
    pixels = 255 - pixels if rng.random() < 0.5 else pixels
    if rng.random() < 0.3:
        zoom = int(rng.integers(2, 11))
        pixels = np.asarray(Image.fromarray(pixels).resize((side * zoom, side * zoom), Image.Resampling.NEAREST))
    return png_bytes(pixels)


def _draw_trace(points: np.ndarray, side: int, glyph: float, width: int, smooth: int = 0,
                margin: float | None = None) -> np.ndarray:
    """A pen trace drawn light on dark with an aliased pen ``width`` px wide in a ``side``-pixel
    square (uint8), its longer side ``glyph`` px, corners smoothed ``smooth`` times; centred,
    or set ``margin`` px in from the top left."""
    pts = _smooth(points.astype(np.float64), smooth)
    pts[:, 1] = 100 - pts[:, 1]  # y up in the file, down in a picture
    pts = (pts - pts.min(0)) * (glyph / max(float(np.ptp(pts, axis=0).max()), 1))
    pts = pts + ((side - pts.max(0)) / 2 if margin is None else margin)
    img = Image.new("L", (side, side), 0)
    ImageDraw.Draw(img).line([tuple(q) for q in pts], fill=255, width=width, joint="curve")
    return np.asarray(img)


def trace_ink(points: np.ndarray, smooth: int, pen: float, side: int = 112) -> np.ndarray:
    """A pen trace drawn as ink in [0, 1], ``side`` pixels square, the pen ``pen`` of the
    digit's size wide, corners smoothed ``smooth`` times (``squared``'s input)."""
    pixels = _draw_trace(points, side, 0.8 * side, max(1, int(side * pen)), smooth, margin=0.1 * side)
    return pixels.astype(np.float32) / 255.0


def small_trace(points: np.ndarray, rng: np.random.Generator) -> bytes:
    """A pen trace drawn small with an aliased pen, as someone converting the traces to images
    might: 16-40 px square, a 1-3 px pen, the 8-point polygon as it is or smoothed once, light
    on dark or dark on light."""
    side = int(rng.integers(16, 41))
    smooth = int(rng.integers(0, 2))
    glyph = side * rng.uniform(0.6, 0.9)
    pixels = _draw_trace(points, side, glyph, int(rng.integers(1, 4)), smooth)
    return png_bytes(255 - pixels if rng.random() < 0.5 else pixels)


def plain_payloads(part: str, copies: int, rng: np.random.Generator,
                   root: Path | None = None) -> list[tuple[bytes, int]]:
    """The plainer forms (``stretched``, ``small_trace``) of training digits, ``copies`` rounds:
    each round MNIST_PLAIN of MNIST's training writers and USPS_PLAIN of USPS's training split
    stretched, and half of pendigits' training traces, each drawn small or stretched. ``part``
    as ``training_images``'s; ``calibration`` takes MNIST's digits from its held-out writers
    (which validate and calibrate, never the development split) and the other sources'
    calibration parts."""
    from training.data import load_split

    mnist, mnist_labels = load_split("train")
    train, held = split("mnist", len(mnist), load_writers(root))
    traces, trace_labels = load_pendigits(root)
    usps, usps_labels = load_usps(root)
    pen_train, _ = split("pendigits", len(trace_labels))
    usps_train, _ = split("usps", len(usps_labels))
    if part == "calibration":
        mnist_pick, count = held, MNIST_PLAIN // 10
        pen_train, usps_train = calibration_part("pendigits", pen_train)[1], calibration_part("usps", usps_train)[1]
    else:
        mnist_pick, count = train, MNIST_PLAIN
        if part == "train":
            pen_train, usps_train = calibration_part("pendigits", pen_train)[0], calibration_part("usps", usps_train)[0]
    out = []
    for _ in range(copies):
        out += [(stretched(mnist[i] / 255.0, rng), int(mnist_labels[i]))
                for i in rng.choice(mnist_pick, size=min(count, len(mnist_pick)), replace=False)]
        out += [(stretched(np.clip(usps[i], 0, 1), rng), int(usps_labels[i]))
                for i in rng.choice(usps_train, size=min(USPS_PLAIN, len(usps_train)), replace=False)]
        for i in rng.choice(pen_train, size=len(pen_train) // 2, replace=False):
            if rng.random() < 0.5:
                data = small_trace(traces[i], rng)
            else:
                data = stretched(trace_ink(traces[i], int(rng.integers(0, 3)), rng.uniform(0.04, 0.1)), rng)
            out.append((data, int(trace_labels[i])))
    return out


def dev_set(source: str, root: Path | None = None, seed: int = 0) -> list[DevItem]:
    """The development split of ``orand``, ``pendigits`` or ``usps``, each digit rendered once
    as a user would send it, deterministically for ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    if source == "orand":
        cheques = load_orand(root)
        _, dev = split("orand", len(cheques))
        for i in dev:
            for k, label in enumerate(cheques[i].labels):
                out.append(DevItem(render_cheque(cheques[i], k, rng), label))
    elif source == "pendigits":
        traces, labels = load_pendigits(root)
        _, dev = split("pendigits", len(labels))
        out = [DevItem(render_trace(traces[i], rng), int(labels[i])) for i in dev]
    elif source == "usps":
        images, labels = load_usps(root)
        _, dev = split("usps", len(labels))
        for i in dev:
            neighbour = images[int(rng.choice(dev))] if rng.random() < 0.5 else None
            out.append(DevItem(render_usps(images[i], rng, neighbour), int(labels[i])))
    else:
        raise ValueError(f"no development set for {source!r}")
    return out


def plain_dev_set(source: str, root: Path | None = None) -> list[DevItem]:
    """The development split of ``source`` in the plainest form another evaluator of these
    collections might send, PNG, no paper, no neighbours: USPS as stored (16x16, light ink on
    dark), pen traces drawn 28x28 with an aliased 2-pixel pen (light on dark, the 8-point
    polygon as it is), or (``pendigits_stretched``) drawn and stretched to fill 16x16,
    thresholded, as Semeion's collection stores digits (``squared``), cheque digits cut to
    their annotated box (greyscale)."""
    if source == "usps":
        images, labels = load_usps(root)
        _, dev = split("usps", len(labels))
        return [DevItem(png_bytes((np.clip(images[i], 0, 1) * 255).astype(np.uint8)), int(labels[i])) for i in dev]
    if source == "pendigits":
        traces, labels = load_pendigits(root)
        _, dev = split("pendigits", len(labels))
        return [DevItem(png_bytes(_draw_trace(traces[i], 28, 20, 2)), int(labels[i])) for i in dev]
    if source == "pendigits_stretched":
        traces, labels = load_pendigits(root)
        _, dev = split("pendigits", len(labels))
        return [DevItem(png_bytes(squared(trace_ink(traces[i], smooth=1, pen=0.07))), int(labels[i])) for i in dev]
    if source == "orand":
        cheques = load_orand(root)
        _, dev = split("orand", len(cheques))
        out = []
        for i in dev:
            with Image.open(cheques[i].image) as im:
                page = np.asarray(im.convert("L"))
            for (x, y, w, h), label in zip(cheques[i].boxes, cheques[i].labels):
                out.append(DevItem(png_bytes(page[y:y + h, x:x + w]), label))
        return out
    raise ValueError(f"no development set for {source!r}")


def training_images(source: str, copies: int = 2, root: Path | None = None, seed: int = 1,
                    part: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """The training split of ``orand``, ``pendigits`` or ``usps``, each digit rendered ``copies``
    times as users send it, or ``plain``'s forms (``plain_payloads``), put through ``model.preprocess``: (N, 28, 28) float32 in [0, 1]
    and labels. Renders that preprocessing refuses (nothing stands out) are left out. ``part``
    is ``all`` of the training split, or its ``train`` or ``calibration`` part
    (``calibration_part``)."""
    from model import preprocess as pp
    from tqdm import tqdm

    def training_split(count: int) -> np.ndarray:
        train, _ = split(source, count)
        if part == "all":
            return train
        learn, calibrate = calibration_part(source, train)
        return {"train": learn, "calibration": calibrate}[part]

    rng = np.random.default_rng(seed)
    payloads: list[tuple[bytes, int]] = []
    if source == "orand":
        cheques = load_orand(root)
        train = training_split(len(cheques))
        for _ in range(copies):
            for i in train:
                for k, label in enumerate(cheques[i].labels):
                    payloads.append((render_cheque(cheques[i], k, rng, margin=(0.0, 0.6)), label))
    elif source == "pendigits":
        traces, labels = load_pendigits(root)
        train = training_split(len(labels))
        payloads = [(render_trace(traces[i], rng), int(labels[i])) for _ in range(copies) for i in train]
    elif source == "usps":
        images, labels = load_usps(root)
        train = training_split(len(labels))
        payloads = [(render_usps(images[i], rng, images[int(rng.choice(train))] if rng.random() < 0.5 else None),
                     int(labels[i])) for _ in range(copies) for i in train]
    elif source == "plain":
        payloads = plain_payloads(part, copies, rng, root)
    else:
        raise ValueError(f"no training images for {source!r}")
    xs, ys = [], []
    for data, label in tqdm(payloads, desc=f"rendering {source}", unit="image", mininterval=2):
        try:
            xs.append(pp.preprocess(data))
            ys.append(label)
        except pp.InputError:
            continue
    return np.stack(xs).astype(np.float32), np.array(ys, dtype=np.uint8)
