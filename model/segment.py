"""Cut a picture of a handwritten number into its digits, for the ``digits`` network to read.

The ``numbers`` model (handler/numbers_handler.py) reads strings of digits (postcodes, cheque
amounts, form fields) with the network ``digits`` serves: no second network, one forward pass
per batch. This module does the cutting; ``model.preprocess`` finds the ink and puts each
digit in MNIST's form, exactly as for a single digit.

1. ``ink_map`` (model.preprocess): ink near 1 on a ground of 0, whatever the colours.
2. Connected components of the ink. Pieces that overlap in x are one digit's broken strokes
   (the bar of a 5 or a 7, the two strokes of a 4) and are merged.
3. What is much lower than the string's digits is a separator or a mark (dots, commas,
   dashes, the strokes of an equals sign, small check marks), and what is long and flat is an
   underline: dropped (MARK, FLAT). Specks lighter than SPECK of the heaviest part go too.
   On patterned paper only the darkest MAX_INK of the picture counts as strokes.
4. A part much wider than the string's digits holds touching digits. It is cut at the
   columns of least ink near where the digits should meet; several cuts are proposed
   (``Slot.alternatives``) and the reader keeps the one the network is most sure of.

``segment`` returns the slots, each digit's crop in MNIST's form (``to_mnist``) and its box
in the pixels of the picture as sent; ``choose`` picks each slot's alternative given the
network's probabilities for every crop; ``separate_digits`` counts well-separated digits
(for ``digits`` to point at ``/predictions/numbers``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from model.preprocess import InputError, decode, ink_map, to_mnist

LEVEL = 0.15        # ink above this (of the strongest) makes the components; the faint rim joins later
MAX_INK = 0.2       # strokes cover at most this share of a picture of a number
SPECK = 0.02        # parts lighter than this share of the heaviest are specks
SAME_DIGIT = 0.5    # parts overlapping by this share of the narrower one's width are one digit
MARK = 0.5          # parts lower than this share of the string's digit height are marks, not digits
FLAT = 3.0          # ... and so are parts this many times wider than tall (underlines, long dashes)
WIDE = 1.25         # a part this many typical digit widths wide holds touching digits
UNSURE_WIDE = 2.3   # below this many widths, reading it whole stays one of the alternatives
SPLIT_PRIOR = 0.25  # log-confidence cost of each digit more or fewer than the part's width suggests
PIECE = 0.15        # each piece of a cut part holds at least this share of its ink ...
PIECE_HEIGHT = 0.6  # ... and is at least this share of the string's digit height
CUTS = 3            # candidate cuts tried for a touching pair
MAX_PARTS = 40      # more digit-sized parts than this is not a number (a texture, a page of text)
PAD = 0.15          # ground kept around each digit's crop (share of the digit height)
EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Digit:
    """One digit candidate: its box in the sent picture's pixels and the network's input."""
    box: tuple[int, int, int, int]  # x, y, width, height
    image: np.ndarray               # 28x28 float32 in [0, 1]
    height: int = 0                 # in the ink map's pixels


@dataclass
class Slot:
    """A part of the string: one way to read it per alternative (one digit, or a cut pair)."""
    alternatives: list[list[Digit]]
    widths: float = 1.0  # how many typical digit widths wide the part is


@dataclass
class Segmented:
    """What ``segment`` found in one picture, left to right."""
    slots: list[Slot]
    size: tuple[int, int]  # the sent picture's width and height
    crops: list[np.ndarray] = field(default_factory=list)  # every alternative's images, in order

    def __post_init__(self):
        self.crops = [d.image for s in self.slots for alt in s.alternatives for d in alt]


# ---------------------------------------------------------------- finding the parts

def segment(payload: bytes | str | Image.Image) -> Segmented:
    """Any accepted input to its digit slots; raises InputError (422 ``no_digit``) when the
    picture is blank or holds only marks, and for what cannot be a number."""
    img = payload if isinstance(payload, Image.Image) else decode(payload)
    size = _upright_size(img)
    ink = ink_map(img)
    scale = (size[0] / ink.shape[1], size[1] / ink.shape[0])
    groups, height = digit_parts(ink)
    if not groups:
        raise InputError("no_digit", "no digit found: the picture holds only dots, dashes or specks", status=422)
    if len(groups) > MAX_PARTS:
        raise InputError("not_a_number", f"found {len(groups)} separate marks; a number has at most {MAX_PARTS} digits",
                         status=422)
    # A digit's typical width: the median of the parts no wider than tall, kept between
    # MNIST-like shares of the height (narrow 1s and touching pairs must not move it far).
    singles = [g.x1 - g.x0 for g in groups if g.x1 - g.x0 <= 1.1 * height]
    typical = min(max(float(np.median(singles)) if singles else 0.7 * height, 0.55 * height), 0.8 * height)
    slots = []
    for g in groups:
        ratio = (g.x1 - g.x0) / typical
        alternatives = []
        if ratio < UNSURE_WIDE:
            alternatives.append([d for d in [_digit(_group_ink(ink, g), g.x0, g.y0, height, scale)] if d is not None])
        if ratio >= WIDE:
            n = max(2, int(round(ratio)))
            for cuts in _cut_sets(ink, g, n):
                alternatives.append(_pieces(ink, g, cuts, height, scale))
        alternatives = [a for a in alternatives if a]
        if not alternatives and ratio >= UNSURE_WIDE:  # no cut holds up: read it whole after all
            alternatives = [[d] for d in [_digit(_group_ink(ink, g), g.x0, g.y0, height, scale)] if d is not None]
        if alternatives:
            slots.append(Slot(alternatives, ratio))
    if not slots:
        raise InputError("no_digit", "no digit found: the ink could not be read as digits", status=422)
    return Segmented(slots, size)


@dataclass
class _Group:
    """Merged components: their mask's label ids and the box in the ink map's pixels."""
    labels: list[int]
    y0: int
    y1: int
    x0: int
    x1: int
    mass: float
    mask: np.ndarray | None = None  # its pixels within the box, set once the groups are final


def digit_parts(ink: np.ndarray, masks: bool = True) -> tuple[list[_Group], float]:
    """The digit-sized parts of the ink, left to right (broken strokes merged, marks,
    underlines and specks dropped), and the string's digit height in the ink map's pixels;
    each part's pixel mask too unless ``masks`` is False."""
    # On patterned paper (cheques) the ink map can keep much of the pattern, and everything
    # joins into one shape: then only the darkest MAX_INK of the picture counts as strokes.
    level = max(LEVEL, float(np.quantile(ink, 1.0 - MAX_INK))) if (ink > LEVEL).mean() > MAX_INK else LEVEL
    labels, count = ndimage.label(ink > level, structure=EIGHT)
    if count == 0:
        return [], 0.0
    boxes = ndimage.find_objects(labels)
    mass = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=count + 1)[1:]  # 30x sum_labels's speed here
    parts = [_Group([i + 1], b[0].start, b[0].stop, b[1].start, b[1].stop, float(m))
             for i, (b, m) in enumerate(zip(boxes, mass)) if m >= SPECK * mass.max()]
    parts.sort(key=lambda g: g.x0)
    groups: list[_Group] = []
    for p in parts:  # one pass left to right: a part joins the group it overlaps enough
        for g in groups:
            overlap = min(g.x1, p.x1) - max(g.x0, p.x0)
            if overlap >= SAME_DIGIT * min(g.x1 - g.x0, p.x1 - p.x0):
                g.labels += p.labels
                g.y0, g.y1, g.x0, g.x1 = min(g.y0, p.y0), max(g.y1, p.y1), min(g.x0, p.x0), max(g.x1, p.x1)
                g.mass += p.mass
                break
        else:
            groups.append(p)
    heavy = [g.y1 - g.y0 for g in groups if g.mass >= 0.25 * max(h.mass for h in groups)]
    height = float(np.median(heavy))
    kept = [g for g in groups
            if g.y1 - g.y0 >= MARK * height and (g.x1 - g.x0) < FLAT * (g.y1 - g.y0)]
    h, w = ink.shape
    for g in kept if masks else []:  # one pixel more each side: the faint rim below LEVEL belongs to the strokes
        g.y0, g.y1, g.x0, g.x1 = max(g.y0 - 1, 0), min(g.y1 + 1, h), max(g.x0 - 1, 0), min(g.x1 + 1, w)
        member = np.zeros(count + 1, dtype=bool)
        member[g.labels] = True
        g.mask = ndimage.binary_dilation(member[labels[g.y0:g.y1, g.x0:g.x1]], structure=EIGHT)
    return sorted(kept, key=lambda g: g.x0), height


def separate_digits(ink: np.ndarray) -> int:
    """How many well-separated digit-sized parts the ink holds, none of them cut by the
    picture's border (a crop of a longer string shows its neighbours' fragments there): 2 or
    more means a number, not a digit."""
    groups, height = digit_parts(ink, masks=False)
    h, w = ink.shape
    whole = [g for g in groups if g.y0 > 0 and g.x0 > 0 and g.y1 < h and g.x1 < w
             and g.y1 - g.y0 >= 0.7 * height]
    apart = 0
    for k, g in enumerate(whole):
        if k == 0 or g.x0 - whole[k - 1].x1 >= 0.1 * height:
            apart += 1
    return apart


# ---------------------------------------------------------------- cutting touching digits

def _cut_sets(ink: np.ndarray, g: _Group, n: int) -> list[list[int]]:
    """Candidate cut columns (ink-map x) for a group about ``n`` digits wide, read as n - 1,
    n or n + 1 digits (at least 2): for a pair, the CUTS columns of least ink in its middle;
    for more, one cut at the column of least ink near each expected joint."""
    column = _group_ink(ink, g).sum(axis=0)
    width = g.x1 - g.x0
    sets = []
    for m in sorted({n - 1, n, n + 1} - {0, 1}):
        if m == 2:
            lo, hi = int(0.25 * width), int(0.75 * width)
            order = np.argsort(column[lo:hi], kind="stable") + lo
            picked: list[int] = []
            for c in order:  # the lightest columns, at least a tenth of the width apart
                if all(abs(c - q) >= 0.1 * width for q in picked):
                    picked.append(int(c))
                if len(picked) == CUTS:
                    break
            sets += [[g.x0 + c] for c in picked]
            continue
        reach = max(1, int(0.25 * width / m))
        cuts = []
        for k in range(1, m):
            at = int(round(k * width / m))
            lo, hi = max(1, at - reach), min(width - 1, at + reach)
            cuts.append(g.x0 + lo + int(np.argmin(column[lo:hi])) if hi > lo else g.x0 + at)
        sets.append(cuts)
    return sets


def _group_ink(ink: np.ndarray, g: _Group) -> np.ndarray:
    """The group's own ink within its box (other parts' ink there set to 0)."""
    return ink[g.y0:g.y1, g.x0:g.x1] * g.mask


def _pieces(ink: np.ndarray, g: _Group, cuts: list[int], height: float, scale) -> list[Digit]:
    """The group cut at columns ``cuts`` (ink-map x). Only a thin band at each cut is cut:
    the strokes on either side stay whole, each with the piece its centre of mass lies in, so
    a slanted or overlapping neighbour keeps the parts that reach past the cut. (Cutting along
    a path of least ink instead read 1-3 points fewer synthetic strings.)"""
    part = _group_ink(ink, g)
    bounds = [0, *(c - g.x0 for c in cuts), g.x1 - g.x0]
    banded = part > 0
    for c in bounds[1:-1]:
        banded[:, max(c - 1, 0):c + 1] = False
    labels, count = ndimage.label(banded, structure=EIGHT)
    centres = ndimage.center_of_mass(part, labels, np.arange(1, count + 1)) if count else []
    owner = np.searchsorted(bounds[1:-1], [cx for _, cx in centres], side="right")  # piece of each component
    columns = np.arange(part.shape[1])
    total = float(part.sum())
    out = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        keep = np.concatenate(([False], owner == k))[labels] | ((part > 0) & ~banded & (columns >= a) & (columns < b))
        piece = np.where(keep, part, np.float32(0.0))
        # A piece with too little of the ink is a stroke cut off a wide digit (a 5's bar),
        # not a digit: the network reads such scraps with misplaced confidence.
        if b - a < 2 or piece.sum() < PIECE * total:
            return []
        d = _digit(piece, g.x0, g.y0, height, scale)
        if d is None or d.height < PIECE_HEIGHT * height:  # a low scrap: the bar or tail of a wide digit
            return []
        out.append(d)
    return out


def _digit(part: np.ndarray, x0: int, y0: int, height: float, scale) -> Digit | None:
    """One digit's ink (``part``, whose top left is at ``x0, y0`` in the ink map) in MNIST's
    form, with its box in the sent picture's pixels."""
    rows = np.flatnonzero(part.any(axis=1))
    cols = np.flatnonzero(part.any(axis=0))
    if rows.size == 0:
        return None
    part = part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    pad = max(2, int(PAD * height))
    try:
        image = to_mnist(np.pad(part, pad))
    except InputError:
        return None
    y, x = y0 + rows[0], x0 + cols[0]
    h, w = part.shape
    box = (int(round(x * scale[0])), int(round(y * scale[1])),
           max(1, int(round(w * scale[0]))), max(1, int(round(h * scale[1]))))
    return Digit(box, image, h)


# ---------------------------------------------------------------- reading

def choose(seg: Segmented, probabilities: np.ndarray) -> list[tuple[Digit, np.ndarray]]:
    """Each slot's best alternative given the network's probabilities for ``seg.crops`` (in
    order): the one with the highest mean log confidence, so a cut pair and a whole digit
    compete on equal terms, less SPLIT_PRIOR for each digit more or fewer than the part's
    width suggests. Returns (digit, its 10 probabilities) left to right."""
    out, k = [], 0
    for slot in seg.slots:
        best, best_score = None, -np.inf
        for alt in slot.alternatives:
            probs = probabilities[k:k + len(alt)]
            k += len(alt)
            score = float(np.log(np.maximum(probs.max(axis=1), 1e-9)).mean()) - SPLIT_PRIOR * abs(len(alt) - slot.widths)
            if score > best_score:
                best, best_score = list(zip(alt, probs)), score
        out.extend(best)
    return out


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """The picture's width and height once its EXIF orientation is applied (as ink_map does)."""
    w, h = img.size
    try:
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # a broken EXIF block: ink_map's exif_transpose ignores it too
        turned = False
    return (h, w) if turned else (w, h)
