"""Evaluation sets that look like what people send, made from MNIST test digits and noise.

``wild_set``: every MNIST test digit re-drawn the way users send digits: large or small,
anywhere on a 280x280 canvas; transparent, white or paper-like ground (grain, uneven
lighting); black, blue or red ink; thick or thin strokes; slightly rotated; encoded as PNG or
JPEG. Labels are MNIST's.

``non_digit_set``: images that hold no digit: blank pages, noise, letters drawn from fonts,
random shapes, scribbles and noise textures. The service should refuse them.

Both are deterministic for a seed, and each item is encoded bytes, exactly what a client
would post, so they go through the real decoding path.
"""
from __future__ import annotations

import io
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CANVAS = 280
INKS = {"black": (20, 20, 25), "blue": (25, 55, 190), "red": (200, 30, 35)}
GROUNDS = ("transparent", "white", "paper")
FONTS_DIR = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf"
LETTER_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "cmr10.ttf")


@dataclass
class Sample:
    data: bytes      # what a client posts
    label: int       # the digit, or -1 for a non-digit
    kind: str        # how it was made, for per-kind figures


def _encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _paper(rng: np.random.Generator) -> np.ndarray:
    """Off-white paper with grain and a lighting gradient, H x W x 3 in [0, 1]."""
    tint = np.array([0.93, 0.91, 0.86]) + rng.uniform(-0.03, 0.03, 3)
    yy, xx = np.mgrid[:CANVAS, :CANVAS] / CANVAS
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 - rng.uniform(0.1, 0.3) * (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
    grain = rng.normal(0, 0.025, (CANVAS, CANVAS, 1))
    return np.clip(tint * light[..., None] + grain, 0, 1)


def render_digit(image28: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-draw one MNIST digit as a user's picture; returns (encoded bytes, description)."""
    side = int(rng.integers(48, 300))  # the 28x28 frame's size on the canvas: digit is ~5/7 of it
    ink = Image.fromarray(image28).resize((side, side), Image.Resampling.BICUBIC)
    stroke = rng.choice(["normal", "thick", "thin"], p=[0.5, 0.25, 0.25])
    if stroke == "thick":  # a felt pen: about 1.2 MNIST pixels wider
        ink = ink.filter(ImageFilter.MaxFilter(2 * max(1, round(side / 28 * 0.6)) + 1))
    elif stroke == "thin":  # a fine pen: about 0.6 MNIST pixels thinner, where that leaves a stroke
        ink = ink.filter(ImageFilter.MinFilter(2 * max(1, round(side / 28 * 0.3)) + 1)) if side >= 112 else ink
    ink = ink.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR)
    alpha = np.zeros((CANVAS, CANVAS), np.float32)
    # Crop the frame to the digit's box so it can sit anywhere, partly off the frame's margin.
    a = np.asarray(ink, np.float32) / 255
    rows, cols = np.flatnonzero(a.max(1) > 0.05), np.flatnonzero(a.max(0) > 0.05)
    a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if max(a.shape) > CANVAS - 4:
        scale = (CANVAS - 4) / max(a.shape)
        a = np.asarray(Image.fromarray(a, mode="F").resize(
            (max(1, int(a.shape[1] * scale)), max(1, int(a.shape[0] * scale))), Image.Resampling.BILINEAR))
    top = int(rng.integers(2, CANVAS - a.shape[0] - 1))
    left = int(rng.integers(2, CANVAS - a.shape[1] - 1))
    alpha[top:top + a.shape[0], left:left + a.shape[1]] = np.clip(a, 0, 1)
    colour_name = str(rng.choice(list(INKS)))
    colour = np.array(INKS[colour_name]) / 255
    ground = str(rng.choice(GROUNDS))
    fmt = "PNG" if ground == "transparent" or rng.random() < 0.5 else "JPEG"
    if ground == "transparent":
        rgba = np.dstack([np.broadcast_to(colour, (CANVAS, CANVAS, 3)), alpha])
        img = Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), mode="RGBA")
    else:
        base = np.ones((CANVAS, CANVAS, 3)) if ground == "white" else _paper(rng)
        rgb = base * (1 - alpha[..., None]) + colour * alpha[..., None]
        if ground == "paper":  # the ink sits under the same light as the paper
            rgb = rgb * (base.mean(2, keepdims=True) / base.mean())
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    quality = int(rng.integers(60, 95))
    return _encode(img, fmt, quality), f"{ground}/{colour_name}/{stroke}/{fmt.lower()}"


def wild_set(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[Sample]:
    """Every given MNIST digit re-drawn as a user's picture."""
    rng = np.random.default_rng(seed)
    out = []
    for image, label in zip(images, labels):
        data, kind = render_digit(image, rng)
        out.append(Sample(data, int(label), kind))
    return out


# ---------------------------------------------------------------- non-digits

def _blank(rng):
    ground = rng.choice(["white", "paper", "transparent", "black"])
    if ground == "transparent":
        return Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    if ground == "paper":
        return Image.fromarray((_paper(rng) * 255).astype(np.uint8))
    return Image.new("RGB", (CANVAS, CANVAS), str(ground))


def _noise(rng):
    kind = rng.choice(["uniform", "gaussian", "salt"])
    if kind == "uniform":
        a = rng.integers(0, 256, (CANVAS, CANVAS, 3))
    elif kind == "gaussian":
        a = np.clip(rng.normal(128, 50, (CANVAS, CANVAS, 3)), 0, 255)
    else:
        a = np.full((CANVAS, CANVAS, 3), 255)
        a[rng.random((CANVAS, CANVAS)) < 0.05] = 0
    return Image.fromarray(a.astype(np.uint8))


def _letter(rng):
    letters = [c for c in string.ascii_letters if c not in "lIOoSsZzgqBGb"]  # drop digit look-alikes
    font = ImageFont.truetype(str(FONTS_DIR / str(rng.choice(LETTER_FONTS))), int(rng.integers(80, 220)))
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(img)
    text = str(rng.choice(letters)) if rng.random() < 0.6 else "".join(rng.choice(letters, 2))
    box = draw.textbbox((0, 0), text, font=font)
    x = (CANVAS - (box[2] - box[0])) / 2 - box[0] + rng.uniform(-20, 20)
    y = (CANVAS - (box[3] - box[1])) / 2 - box[1] + rng.uniform(-20, 20)
    draw.text((x, y), text, fill=tuple(int(c) for c in INKS[str(rng.choice(list(INKS)))]), font=font)
    return img


def _shapes(rng):
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(10, 200, 2)
        w, h = rng.integers(30, 120, 2)
        box = [int(x0), int(y0), int(min(x0 + w, 275)), int(min(y0 + h, 275))]
        shape = rng.choice(["rect", "ellipse", "triangle", "filled"])
        width = int(rng.integers(4, 16))
        if shape == "rect":
            draw.rectangle(box, outline="black", width=width)
        elif shape == "ellipse":
            draw.ellipse(box, outline="black", width=width)
        elif shape == "filled":
            draw.rectangle(box, fill="black")
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])],
                         outline="black", width=width)
    return img


def _scribble(rng):
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    pts = np.cumsum(rng.normal(0, 40, (int(rng.integers(15, 40)), 2)), axis=0)
    pts = (pts - pts.min(0)) / np.ptp(pts, axis=0).clip(1) * 240 + 20
    ImageDraw.Draw(img).line([tuple(p) for p in pts], fill=(20, 20, 20, 255), width=int(rng.integers(8, 20)),
                             joint="curve")
    return img


def _texture(rng):
    coarse = rng.random((int(rng.integers(4, 24)),) * 2)
    a = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((CANVAS, CANVAS),
                                                                           Image.Resampling.BICUBIC))
    a = np.clip(a.astype(np.float32) + rng.normal(0, 20, a.shape), 0, 255)
    return Image.fromarray(a.astype(np.uint8))


def _sign(rng):
    """A sign drawn alone on the page's pad: a dash, an equals sign, a full stop, a comma, a plus
    or a check mark (the marks around numbers; no training generator draws them)."""
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    pen = int(rng.integers(8, 21))
    ink = (*INKS[str(rng.choice(list(INKS)))], 255)
    cx, cy = rng.uniform(100, 180, 2)
    r = rng.uniform(35, 90)  # half the sign's size
    tilt = np.tan(np.radians(rng.uniform(-8, 8)))
    kind = rng.choice(["dash", "equals", "full stop", "comma", "plus", "check"])

    def bar(y: float, half: float) -> None:
        draw.line([(cx - half, y - tilt * half), (cx + half, y + tilt * half)], fill=ink, width=pen)

    if kind == "dash":
        bar(cy, r)
    elif kind == "equals":
        gap = rng.uniform(0.25, 0.45) * r
        bar(cy - gap, r)
        bar(cy + gap, r)
    elif kind in ("full stop", "comma"):
        dot = pen * rng.uniform(0.6, 1.2)
        draw.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=ink)
        if kind == "comma":
            draw.line([(cx + dot * 0.6, cy), (cx - dot * 0.8, cy + 3 * dot)], fill=ink, width=max(pen // 2, 3))
    elif kind == "plus":
        bar(cy, r)
        draw.line([(cx, cy - r), (cx, cy + r)], fill=ink, width=pen)
    else:
        draw.line([(cx - r, cy), (cx - 0.3 * r, cy + 0.7 * r), (cx + r, cy - r)], fill=ink, width=pen, joint="curve")
    return img


NON_DIGITS = {"blank": _blank, "noise": _noise, "letter": _letter, "shapes": _shapes,
              "scribble": _scribble, "texture": _texture, "sign": _sign}


def non_digit_set(per_kind: int = 200, seed: int = 0) -> list[Sample]:
    """``per_kind`` images of each kind of non-digit."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, make in NON_DIGITS.items():
        for _ in range(per_kind):
            img = make(rng)
            fmt = "JPEG" if img.mode == "RGB" and rng.random() < 0.3 else "PNG"
            out.append(Sample(_encode(img, fmt), -1, kind))
    return out


# ---------------------------------------------------------------- non-digits for training

# Training's non-digits come from other generators than non_digit_set's, with other fonts,
# so that the model card's refusal figures measure what the model learnt, not what it saw.
TRAINING_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf",
                  "STIXGeneralItalic.ttf", "cmss10.ttf", "cmtt10.ttf", "DejaVuSerif-BoldItalic.ttf")


def _canvas_stroke(points: list[tuple[float, float]], rng) -> Image.Image:
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    colour = tuple(int(c) for c in INKS[str(rng.choice(list(INKS)))]) + (255,)
    ImageDraw.Draw(img).line(points, fill=colour, width=int(rng.integers(5, 26)), joint="curve")
    return img


def _curly(rng):
    """A pen wandering in smooth loops and waves (Lissajous-like), not a random walk."""
    t = np.linspace(0, 2 * np.pi * rng.uniform(1, 3), 200)
    fx, fy = rng.uniform(1, 5, 2)
    x = np.sin(fx * t + rng.uniform(0, 6)) + 0.4 * np.sin(t * rng.uniform(3, 9))
    y = np.cos(fy * t) + 0.4 * np.cos(t * rng.uniform(3, 9))
    pts = np.stack([x, y], 1)
    pts = (pts - pts.min(0)) / np.ptp(pts, axis=0).clip(1e-6) * rng.uniform(120, 240) + rng.uniform(15, 40)
    return _canvas_stroke([tuple(p) for p in pts], rng)


def _zigzag(rng):
    """Zigzags, hatching and spirals: marks people make that are no digit."""
    kind = rng.integers(0, 3)
    if kind == 0:
        n = int(rng.integers(4, 12))
        xs = np.linspace(30, 250, n)
        ys = np.where(np.arange(n) % 2, rng.uniform(40, 110), rng.uniform(170, 250))
        pts = list(zip(xs, ys))
    elif kind == 1:
        pts = []
        for k in range(int(rng.integers(3, 8))):
            y = 40 + k * 30 + rng.uniform(-5, 5)
            pts += [(30 + rng.uniform(0, 20), y), (250 - rng.uniform(0, 20), y + rng.uniform(-20, 20))]
    else:
        t = np.linspace(0, rng.uniform(3, 6) * np.pi, 120)
        r = 10 + t * rng.uniform(5, 9)
        pts = list(zip(140 + r * np.cos(t), 140 + r * np.sin(t)))
    return _canvas_stroke([(float(x), float(y)) for x, y in pts], rng)


def _wander(rng):
    """A pen steered at random: its heading turns a little at every step, sometimes sharply,
    and the trace is smoothed; loops, hooks and tangles of any size, in one stroke."""
    steps = int(rng.integers(20, 90))
    turns = rng.normal(0, rng.uniform(0.2, 0.8), steps) + np.where(rng.random(steps) < 0.08, rng.uniform(-2.5, 2.5, steps), 0)
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turns)
    pts = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * rng.uniform(0.5, 1.5, (steps, 1)), axis=0)
    pts = (pts - pts.min(0)) / np.ptp(pts, axis=0).max().clip(1e-6) * rng.uniform(90, 240) + rng.uniform(15, 40, 2)
    return _canvas_stroke([tuple(p) for p in pts], rng)


def _training_letter(rng):
    letters = [c for c in string.ascii_letters + "#&%@?!+*=<>" if c not in "lIOoSsZzgqBGbT"]
    font = ImageFont.truetype(str(FONTS_DIR / str(rng.choice(TRAINING_FONTS))), int(rng.integers(70, 230)))
    ground = rng.random() < 0.5
    img = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255) if ground else (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    text = str(rng.choice(letters)) if rng.random() < 0.7 else "".join(rng.choice(letters, 2))
    box = draw.textbbox((0, 0), text, font=font)
    x = (CANVAS - (box[2] - box[0])) / 2 - box[0] + rng.uniform(-30, 30)
    y = (CANVAS - (box[3] - box[1])) / 2 - box[1] + rng.uniform(-30, 30)
    draw.text((x, y), text, fill=tuple(int(c) for c in INKS[str(rng.choice(list(INKS)))]) + (255,), font=font)
    return img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)


def _marks(rng):
    """Crosses, stars, arrows, grids and blots."""
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(img)
    width = int(rng.integers(4, 20))
    kind = rng.integers(0, 4)
    c = rng.uniform(90, 190, 2)
    r = rng.uniform(50, 110)
    if kind == 0:  # a star
        k = int(rng.integers(5, 9))
        angles = np.linspace(0, 2 * np.pi, 2 * k + 1)
        radii = np.where(np.arange(2 * k + 1) % 2, r * 0.45, r)
        draw.line([(float(c[0] + q * np.cos(a)), float(c[1] + q * np.sin(a))) for a, q in zip(angles, radii)],
                  fill="black", width=width, joint="curve")
    elif kind == 1:  # a grid
        for v in np.linspace(c[0] - r, c[0] + r, int(rng.integers(3, 6))):
            draw.line([(float(v), float(c[1] - r)), (float(v), float(c[1] + r))], fill="black", width=width)
        for v in np.linspace(c[1] - r, c[1] + r, int(rng.integers(3, 6))):
            draw.line([(float(c[0] - r), float(v)), (float(c[0] + r), float(v))], fill="black", width=width)
    elif kind == 2:  # blots
        for _ in range(int(rng.integers(3, 9))):
            x, y = rng.uniform(30, 250, 2)
            s = rng.uniform(8, 40)
            draw.ellipse([float(x - s), float(y - s), float(x + s), float(y + s)], fill="black")
    else:  # an arrow
        a = rng.uniform(0, 2 * np.pi)
        tip = (float(c[0] + r * np.cos(a)), float(c[1] + r * np.sin(a)))
        tail = (float(c[0] - r * np.cos(a)), float(c[1] - r * np.sin(a)))
        draw.line([tail, tip], fill="black", width=width)
        for da in (2.6, -2.6):
            draw.line([tip, (tip[0] + 0.4 * r * np.cos(a + da), tip[1] + 0.4 * r * np.sin(a + da))], fill="black",
                      width=width)
    return img


def _stripes(rng):
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    a = rng.uniform(0, np.pi)
    wave = np.sin((np.cos(a) * xx + np.sin(a) * yy) / rng.uniform(4, 20))
    grey = 128 + 100 * wave + rng.normal(0, 25, wave.shape)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))


TRAINING_NON_DIGITS = {"curly": _curly, "zigzag": _zigzag, "letter": _training_letter, "marks": _marks,
                       "stripes": _stripes, "wander": _wander}


def _pen_path(draw: ImageDraw.ImageDraw, points: np.ndarray, widths: np.ndarray, ink: tuple) -> None:
    """A pen stroke whose width changes along it (pressure, a tapering tail): discs along the path."""
    for (x, y), w in zip(points, widths):
        r = max(float(w) / 2, 1.0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)


def _separator(rng):
    """The marks written between and after digits, drawn alone: commas (a round head and a
    curved, tapering tail), apostrophes and quotes, semicolons, colons and full stops. Not the
    card's signs (training/wild.py ``_sign``: a disc and a straight bar); a bare tick without a
    head is left out, as it is a 1's shape."""
    ground = rng.random() < 0.5
    img = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255) if ground else (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(c) for c in INKS[str(rng.choice(list(INKS)))]) + (255,)
    pen = rng.uniform(5, 26)
    head = pen * rng.uniform(0.45, 1.6)  # the head's radius
    kind = rng.choice(["comma", "comma", "comma", "quote", "semicolon", "colon", "stop"])
    angle = np.radians(rng.uniform(-25, 25))

    def comma(cx: float, cy: float) -> None:
        _pen_path(draw, np.array([[cx, cy]]), np.array([2 * head]), ink)
        # the tail leaves the head's rim on its right or underneath and bends as it goes: straight,
        # hooked or curled round like an arc
        length = head * rng.uniform(1.0, 3.5)
        leave = np.radians(rng.uniform(-30, 80)) + angle
        start = np.array([cx, cy]) + head * 0.8 * np.array([np.cos(leave), np.sin(leave)])
        heading = np.radians(rng.uniform(60, 130)) + angle
        turn = rng.uniform(-1.8, 1.8) / length  # radians per pixel
        steps = 40
        step = length / steps
        path = [start]
        for _ in range(steps):
            path.append(path[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
            heading += turn * step
        width = 2 * head * rng.uniform(0.35, 0.7)  # the head stays the widest part
        _pen_path(draw, np.array(path), np.linspace(width, width * rng.uniform(0.2, 0.6), len(path)), ink)

    def dot(cx: float, cy: float) -> None:
        rx, ry = head * rng.uniform(0.8, 1.25), head * rng.uniform(0.8, 1.25)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=ink)

    cx, cy = rng.uniform(70, 200), rng.uniform(60, 170)
    gap = head * rng.uniform(2.5, 5)
    if kind == "comma":
        comma(cx, cy)
    elif kind == "quote":
        comma(cx, cy)
        if rng.random() < 0.5:
            comma(cx + gap, cy)
    elif kind == "semicolon":
        dot(cx, cy - gap)
        comma(cx, cy)
    elif kind == "colon":
        dot(cx, cy - gap / 2)
        dot(cx, cy + gap / 2)
    else:
        dot(cx, cy)
    return img


def training_separators(count: int, seed: int = 2000) -> list[Sample]:
    """``count`` separators drawn alone (``_separator``): training non-digits for
    ``training.train --separators`` (tried, not shipped: docs/training-report.md), and what
    ``model.segment``'s comma rule was measured on."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = _separator(rng)
        white = img.getpixel((0, 0))[3] == 255  # a transparent pad's marks stay PNG, as the page sends them
        fmt = "JPEG" if white and rng.random() < 0.3 else "PNG"
        out.append(Sample(_encode(img, fmt), -1, "separator"))
    return out


def training_non_digits(count: int, seed: int = 1000) -> list[Sample]:
    """``count`` non-digits from generators and fonts that non_digit_set does not use, for
    training the model to spread its probabilities when it sees no digit."""
    rng = np.random.default_rng(seed)
    makers = list(TRAINING_NON_DIGITS.items())
    out = []
    for i in range(count):
        kind, make = makers[i % len(makers)]
        img = make(rng)
        fmt = "JPEG" if img.mode == "RGB" and rng.random() < 0.3 else "PNG"
        out.append(Sample(_encode(img, fmt), -1, kind))
    return out
