"""Find a handwritten number's digits in a picture: the digit-sized parts of its ink, and the
strip the ``numbers`` network reads.

``model.preprocess`` finds the ink (``ink_map``: ink near 1 on a ground of 0, whatever the
colours). Here:

1. ``digit_parts``: connected components of the ink, in lines: rows of digit-tall parts with
   clear ground between them are lines of digits, each read apart (``lines``; one line is the
   rule). Pieces of one line that overlap in x are one digit's broken strokes (the bar of a 5
   or a 7, the two strokes of a 4) and are merged. What is much
   lower than the string's digits is a separator or a mark (dots, commas, dashes, the strokes
   of an equals sign, small check marks), and what is long and flat is an underline: dropped
   (MARK, FLAT). Specks lighter than SPECK of the heaviest part go too. On patterned paper
   only the darkest MAX_INK of the picture counts as strokes.
2. ``strip``: a string written at an angle is first turned level (``skew``, ``level``) and a
   form's printed lines go (``without_rules``: ruled lines, boxes, the cells of a comb field);
   then the band of the picture holding those parts (a picture of several lines is
   refused: 422 ``several_lines``), scaled to the numbers network's
   height (``model/number_network.py``): what it reads, whole, without cutting it into digits
   (a segmenter that cut touching digits apart and read each piece with the ``digits``
   network was measured against it and replaced: docs/model-card.md, numbers section). The
   parts' ink is kept beside it, for the boxes of the digits the network reads, and so are the
   marks level with the digits, with what each looks like (``Mark``: the separators the
   answer reports, which the network reads past).
3. ``separate_digits`` counts well-separated digits (for ``digits`` to point at
   ``/predictions/numbers``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from model.number_network import STRIDE, STRIP_HEIGHT
from model.preprocess import (FRAME, MIN_LINE, InputError, bands, cropped, decode, erase_lines, ink_box,
                              ink_view, line_pixels, runs, soften_small, widened, without_frame)

LEVEL = 0.15        # ink above this (of the strongest) makes the components; the faint rim joins later
MAX_INK = 0.2       # strokes cover at most this share of a picture of a number
SPECK = 0.02        # parts lighter than this share of the heaviest are specks
SAME_DIGIT = 0.5    # parts overlapping by this share of the narrower one's width are one digit
MARK = 0.5          # parts lower than this share of the string's digit height are marks, not digits
FLAT = 3.0          # ... and so are parts this many times wider than tall (underlines, long dashes)
MAX_PARTS = 40      # more digit-sized parts than this is not a number (a texture, a page of text)
BLOB_FILL = 0.7     # a part whose strokes (above half strength) fill this share of their box ...
BLOB_ASPECT = (0.6, 1.7)  # ... and whose box is about square is a dot or a blot, not a digit
DASH_COLUMNS = 0.9  # a FLAT part with one run of ink in this share of its columns is a dash
COMMA_HEAD = 0.5    # a part whose largest round spot holds this share of its strokes is a comma or a dot
LINE = 0.5          # a row of ink is a line of digits when at least this share of the tallest row's height,
LINE_GAP = 0.25     # ... apart from the next by this share of the lower one's height (not a broken 8's loops)
MIN_SKEW = 5.0      # degrees: a string written at a smaller angle is read as it is (straight enough) ...
MAX_SKEW = 30.0     # ... and one at a larger angle too: that is no line of writing we can trust
RULE = 0.6          # a straight run of ink this share of the ink's width long is a ruled line, not a stroke ...
RULE_ASPECT = 1.5   # ... when the ink is at least this many times wider than tall (a string, not a digit's bar)
RULE_DIGITS = 2.0   # ... and at least this many digit heights long
CELL = 0.8          # between two ruled lines, a vertical run this share of their distance long is a cell's side
AGREE = 2.5         # degrees: the two measures of a string's angle (``skew``) must agree this well,
AGREE_SHARE = 0.2   # ... or to this share of the angle, whichever is looser (a short string's axis errs more)
EDGE_COLUMNS = 96   # ... the edges' slopes are measured between pairs of this many columns at most
EIGHT = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------- finding the parts

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
    line: int = 0                   # which line of digits, top to bottom (``lines``)


def digit_parts(ink: np.ndarray, masks: bool = True, flat: bool = False,
                marks: list[_Group] | None = None) -> tuple[list[_Group], float]:
    """The digit-sized parts of the ink, left to right (broken strokes merged, marks,
    underlines and specks dropped), and the string's digit height in the ink map's pixels;
    each part's pixel mask too unless ``masks`` is False. With ``flat`` a part as tall as
    digits but FLAT wide stays: a chain of touching digits (``000`` on a cheque) is such a part.
    The parts dropped as marks or underlines are added to ``marks`` where it is given."""
    # On patterned paper (cheques) the ink map can keep much of the pattern, and everything
    # joins into one shape: then only the darkest MAX_INK of the picture counts as strokes.
    # A number drawn close with a heavy pen covers more than MAX_INK at full strength: no pattern
    # but strokes, all of them (that level would be the ink's top value, with nothing above it).
    plain = ink > LEVEL
    strokes = _strokes(ink, plain)
    # Labelled in the box of the ink above LEVEL, a pixel wider each side for the masks' rim:
    # the same parts as in the whole map, from fewer pixels.
    box = ink_box(plain) or (slice(0, ink.shape[0]), slice(0, ink.shape[1]))
    top, left = int(box[0].start), int(box[1].start)
    labels, count = ndimage.label(strokes[box], structure=EIGHT)
    if count == 0:
        return [], 0.0
    parts = _components(ink[box], labels, count, top, left)
    # Lines from every stroke's ink (LEVEL): at the darkest MAX_INK, a thick digit's strokes can
    # fall apart into rows of their own.
    bands = lines(parts if strokes is plain else _components(ink[box], *ndimage.label(plain[box], structure=EIGHT),
                                                             top, left), ink.shape[0])
    for p in parts:  # each part on the line nearest its middle (a 5's bar, a dash, marks too)
        middle = (p.y0 + p.y1) / 2
        p.line = min(range(len(bands)), key=lambda k: abs(middle - (bands[k][0] + bands[k][1]) / 2))
    parts.sort(key=lambda g: g.x0)
    groups: list[_Group] = []
    pieces: dict[int, list[_Group]] = {}  # with ``marks``: a merged group's parts as they were found
    for p in parts:  # one pass left to right: a part joins the group of its line it overlaps enough
        for g in groups:
            if g.line != p.line:
                continue
            overlap = min(g.x1, p.x1) - max(g.x0, p.x0)
            if overlap >= SAME_DIGIT * min(g.x1 - g.x0, p.x1 - p.x0):
                if marks is not None:
                    if id(g) not in pieces:  # its first part, before it grows
                        pieces[id(g)] = [_Group(list(g.labels), g.y0, g.y1, g.x0, g.x1, g.mass, line=g.line)]
                    pieces[id(g)].append(p)
                g.labels += p.labels
                g.y0, g.y1, g.x0, g.x1 = min(g.y0, p.y0), max(g.y1, p.y1), min(g.x0, p.x0), max(g.x1, p.x1)
                g.mass += p.mass
                break
        else:
            groups.append(p)
    heavy = [g.y1 - g.y0 for g in groups if g.mass >= 0.25 * max(h.mass for h in groups)]
    height = float(np.median(heavy))
    digit_sized = [g.y1 - g.y0 >= MARK * height and (flat or (g.x1 - g.x0) < FLAT * (g.y1 - g.y0)) for g in groups]
    kept = [g for g, digit in zip(groups, digit_sized) if digit]
    dropped: list[_Group] = []
    if marks is not None:  # the rest, and dots written close to a digit that joined its group, are marks
        dropped = [g for g, digit in zip(groups, digit_sized) if not digit]
        dropped += [q for g in kept for q in pieces.get(id(g), []) if _dot_piece(q, g, labels, top, left, height)]
    h, w = ink.shape
    # one pixel more each side: the faint rim below LEVEL belongs to the strokes
    for g in kept + dropped if masks else []:
        g.y0, g.y1, g.x0, g.x1 = max(g.y0 - 1, 0), min(g.y1 + 1, h), max(g.x0 - 1, 0), min(g.x1 + 1, w)
        member = np.zeros(count + 1, dtype=bool)
        member[g.labels] = True
        g.mask = widened(member[labels[g.y0 - top:g.y1 - top, g.x0 - left:g.x1 - left]])
    if marks is not None:
        marks.extend(dropped)
    return sorted(kept, key=lambda g: (g.line, g.x0)), height


def _dot_piece(q: _Group, g: _Group, labels: np.ndarray, top: int, left: int, height: float) -> bool:
    """Whether part ``q`` of digit group ``g`` is a dot written close to the digit: a speck about
    as wide as tall, at most DOT_SIZE of the digits' ``height``, low in the group's rows
    (DOT_PIECE_LEVEL), its middle beyond the columns of the group's other strokes in the group's
    lower half (a full stop after a 1's foot or under a 7's bar, not a piece of a loop or of a
    foot)."""
    hq, wq = q.y1 - q.y0, q.x1 - q.x0
    if max(hq, wq) > DOT_SIZE * height or not BLOB_ASPECT[0] * hq <= wq <= BLOB_ASPECT[1] * hq:
        return False
    if ((q.y0 + q.y1) / 2 - g.y0) < DOT_PIECE_LEVEL * (g.y1 - g.y0):
        return False
    low = labels[(g.y0 + g.y1) // 2 - top:g.y1 - top]  # the group's lower half: where the digit's foot is
    cols = np.flatnonzero(np.isin(low, [k for k in g.labels if k not in q.labels]).any(axis=0)) + left
    middle = (q.x0 + q.x1) / 2
    return cols.size == 0 or middle >= cols[-1] or middle < cols[0]


def _strokes(ink: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """The strokes among the ink (``plain``: above LEVEL): all of it, or on patterned paper,
    where more than MAX_INK of the picture is ink, its darkest MAX_INK (unless that is all at
    full strength: a number drawn close with a heavy pen)."""
    if plain.mean() > MAX_INK:
        level = float(np.quantile(ink, 1.0 - MAX_INK))
        if level < ink.max():
            return ink > level
    return plain


def lines(parts: list[_Group], height: int) -> list[tuple[int, int]]:
    """The lines of digits that ``parts`` (components of a picture ``height`` pixels tall) lie
    in, top to bottom, as their rows' spans; fewer than two: one line, the whole picture. The
    parts' heights make rows (parts whose rows overlap share one); a row is a line of digits
    when it is at least LINE of the tallest row's height and holds two parts at least half its
    height or is one and a half times as wide as tall (touching digits), and lines lie at least
    LINE_GAP of the lower one's height apart. Parts cut by the picture's top or bottom edge (a
    crop's fragments of the line above or below) make no line."""
    rows: list[list[_Group]] = []
    bottom = 0
    for p in sorted(parts, key=lambda g: g.y0):
        if rows and p.y0 < bottom:
            rows[-1].append(p)
        else:
            rows.append([p])
        bottom = max(bottom, p.y1)
    spans = [(min(q.y0 for q in r), max(q.y1 for q in r), min(q.x0 for q in r), max(q.x1 for q in r)) for r in rows]
    tallest = max((y1 - y0 for y0, y1, _, _ in spans), default=0)
    found: list[tuple[int, int]] = []
    for r, (y0, y1, x0, x1) in zip(rows, spans):
        h = y1 - y0
        tall = sum(q.y1 - q.y0 >= 0.5 * h for q in r)
        cut = any(q.y0 == 0 or q.y1 == height for q in r)
        if not cut and h >= LINE * tallest and (tall >= 2 or x1 - x0 >= 1.5 * h):
            if found and y0 - found[-1][1] < LINE_GAP * min(h, found[-1][1] - found[-1][0]):
                return [(0, height)]
            found.append((y0, y1))
    return found if len(found) > 1 else [(0, height)]


def _components(ink: np.ndarray, labels: np.ndarray, count: int, top: int = 0, left: int = 0) -> list[_Group]:
    """The ``count`` connected components ``labels`` marks (``ndimage.label``) as groups of
    one, specks lighter than SPECK of the heaviest dropped; their boxes moved by ``top`` and
    ``left`` (where ``ink`` is that part of a larger map)."""
    if count == 0:
        return []
    boxes = ndimage.find_objects(labels)
    inked = labels > 0  # the same sums, in the same order, as over the whole map: 4x faster
    mass = np.bincount(labels[inked], weights=ink[inked], minlength=count + 1)[1:]  # 30x sum_labels's speed here
    return [_Group([i + 1], top + b[0].start, top + b[0].stop, left + b[1].start, left + b[1].stop, float(m))
            for i, (b, m) in enumerate(zip(boxes, mass)) if m >= SPECK * mass.max()]


def separate_digits(ink: np.ndarray) -> tuple[int, int]:
    """How many well-separated digit-sized parts the ink holds, none of them cut by the
    picture's border (a crop of a longer string shows its neighbours' fragments there), line by
    line, and in how many lines: 2 or more digits means a number (or several), not a digit.
    Ink wider than tall that holds fewer than two is looked at again as the numbers model sees
    it (``level_and_plain``): a form's lines can join a number's digits into one shape, and a
    number written at an angle can look like one line of touching parts."""
    groups, height = digit_parts(ink, masks=False)
    count = _apart(groups, height, ink.shape)
    if count[0] < 2:  # (a number joined into one long shape by a form's lines has no digit-sized part)
        mask = ink > LEVEL
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size and cols[-1] - cols[0] + 1 >= RULE_ASPECT * (rows[-1] - rows[0] + 1):
            plain, groups, height, _ = level_and_plain(ink)
            if plain is not ink:
                count = _apart(groups, height, plain.shape)
    return count


def _apart(groups: list[_Group], height: float, shape: tuple[int, int]) -> tuple[int, int]:
    """``separate_digits``' count for ``digit_parts``' groups of a picture of ``shape``."""
    h, w = shape
    whole = [g for g in groups if g.y0 > 0 and g.x0 > 0 and g.y1 < h and g.x1 < w
             and g.y1 - g.y0 >= 0.7 * height]
    apart = 0
    for k, g in enumerate(whole):
        if k == 0 or g.line != whole[k - 1].line or g.x0 - whole[k - 1].x1 >= 0.1 * height:
            apart += 1
    return apart, len({g.line for g in whole})


def level_and_plain(ink: np.ndarray,
                    marks: list[_Group] | None = None) -> tuple[np.ndarray, list[_Group], float, Turn | None]:
    """The ink as the numbers model reads it: a string written at an angle turned level
    (``skew``, ``level``), then without a form's printed lines (``without_rules``); its
    digit-sized parts (flat ones kept: ``digit_parts``), their height, and the turn (None: as
    it was). ``ink`` itself when neither applies. Where ``marks`` is given, it gets the parts
    of that ink dropped as marks (``digit_parts``)."""
    found: list[_Group] | None = [] if marks is not None else None

    def parts(ink: np.ndarray) -> tuple[list[_Group], float]:
        if found is not None:
            found.clear()  # only the last ink's marks: their boxes and labels are that ink's
        return digit_parts(ink, flat=True, marks=found)

    # Long flat parts stay when they are as tall as digits: on patterned cheques a whole amount,
    # or its trailing zeros, can join into one such part (dropping them lost 23 of the 200
    # ORAND development amounts whole, and the zeros of others); the network reads them.
    groups, height = parts(ink)
    # Signs alone set no digit height: a full stop drawn alone was the only part of its picture,
    # so no mark by MARK, and the network read it as a 0 (0.999 sure); a dash alone was taken for
    # a form's ruled line and cut into bits on two rows, an equals sign for two lines of digits;
    # a comma alone was read as a 9 (0.99 sure: 28 of the card's 200 signs).
    if groups and all(_blob(g, ink) or _dash(g, ink) or _comma(g, ink) for g in groups):
        return ink, [], 0.0, None  # (no digits, so no marks between them either)
    turn = None
    if groups:
        degrees = skew(groups, ink.shape, height)
        if degrees:
            ink, turn = level(ink, degrees)
            groups, height = parts(ink)
        plain = without_rules(ink, height, groups)
        if plain is not ink:
            ink = plain
            groups, height = parts(ink)
    if marks is not None:
        marks.extend(found)
    return ink, groups, height, turn


# ---------------------------------------------------------------- the strip the numbers network reads

STRIP_PAD = 0.12    # ground kept above and below the band of digits (share of the digit height)
STRIP_MARGIN = 8    # strip pixels of ground left and right of the band
MAX_STRIP = 1024    # widest strip, about 40 digits; a wider band is squeezed to it


@dataclass
class Strip:
    """A picture of a number as the numbers network reads it, and how to map back.

    ``image`` is the band holding the string's digit-sized parts, scaled to STRIP_HEIGHT
    pixels tall, with STRIP_MARGIN pixels of ground each side and its width rounded up to a
    multiple of STRIDE. ``parts`` numbers, in the ink map's pixels of the band, the ink of each
    digit-sized part (marks and specks dropped; 0 elsewhere): boxes are fitted to it."""
    image: np.ndarray               # (STRIP_HEIGHT, W) float32 in [0, 1]
    parts: np.ndarray               # (band height, band width) int32: part 1, 2, ... left to right
    origin: tuple[int, int]         # the band's top left in the ink map (x, y)
    per_pixel: float                # band columns per strip pixel
    scale: tuple[float, float]      # sent picture pixels per ink-map pixel (x, y)
    turn: Turn | None = None        # how the ink map was turned to make the string level
    offset: tuple[float, float] = (0.0, 0.0)  # the sent picture's point at the ink map's top left (x, y)
    marks: list[Mark] = field(default_factory=list)  # the marks beside the digits (``strip(marks=True)``)
    cut: frozenset[int] = frozenset()  # the numbers of the parts cut by the picture's border

    def unread(self, centres: list[float]) -> list[Mark]:
        """The digit-sized parts no digit was read in, taken out of ``parts`` (so boxes and
        positions are the digits' own) and returned as marks, left to right: a currency sign
        before an amount, a date's slash, a bracket (not those cut by the picture's border, a
        crop's fragments of its neighbours). ``centres`` are the read digits' centres in
        strip columns, left to right; ``_claims`` matches them to the parts."""
        if not centres:
            return []
        found = [(k, sl) for k, sl in enumerate(ndimage.find_objects(self.parts), 1) if sl is not None]
        spans = [(self.column(self.origin[0] + sl[1].start), self.column(self.origin[0] + sl[1].stop - 1))
                 for _, sl in found]
        claimed = _claims(centres, spans)
        out = []
        for i, (k, sl) in enumerate(found):
            if i in claimed:
                continue
            mask = self.parts[sl] == k
            self.parts[sl][mask] = 0
            if k in self.cut:  # a crop's fragment of a neighbour: not beside this number
                continue
            out.append(Mark(_part_kind(mask), (spans[i][0] + spans[i][1]) / 2,
                            self.sent(self.origin[0] + sl[1].start, self.origin[1] + sl[0].start, mask.shape[1], mask.shape[0])))
        return out

    def box(self, left: float, right: float) -> tuple[int, int, int, int]:
        """The box, in the sent picture's pixels, of the digit ink between strip columns
        ``left`` and ``right`` (``place``)."""
        return self.place(left, right)[0]

    def middle(self, left: float, right: float) -> float:
        """The strip column halfway across the digit ink between strip columns ``left`` and
        ``right`` (``place``)."""
        return self.place(left, right)[1]

    def place(self, left: float, right: float) -> tuple[tuple[int, int, int, int], float]:
        """Where the digit ink between strip columns ``left`` and ``right`` lies: its box in the
        sent picture's pixels (x from its columns, y from its rows) and the strip column halfway
        across it (where a digit read from a CTC span lies, since the span can reach well past
        the digit's strokes). Where the stretch holds no digit-sized ink (a digit read from
        faint strokes), the stretch itself, as tall as the string's digits, and its middle."""
        bw = self.parts.shape[1]
        a = int(np.clip(np.floor((left - STRIP_MARGIN) * self.per_pixel), 0, bw - 1))
        b = int(np.clip(np.ceil((right - STRIP_MARGIN) * self.per_pixel), a + 1, bw))
        part = self.parts[:, a:b] > 0
        cols = np.flatnonzero(part.any(axis=0))
        first, last = (int(cols[0]), int(cols[-1])) if cols.size else (0, b - a - 1)
        rows = np.flatnonzero((part if cols.size else self.parts > 0).any(axis=1))
        box = self.sent(self.origin[0] + a + first, self.origin[1] + rows[0], last - first + 1, rows[-1] - rows[0] + 1)
        return box, self.column(self.origin[0] + a + (first + last) / 2)

    def column(self, x: float) -> float:
        """The strip column of the ink map's column ``x``."""
        return STRIP_MARGIN + (x - self.origin[0]) / self.per_pixel

    def sent(self, x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
        """A box of the ink map (x, y, w, h) in the pixels of the picture as sent."""
        if self.turn is not None:  # the box of the turned box's corners, in the picture as sent
            xs, ys = self.turn.back(np.array([x, x + w, x, x + w], dtype=float), np.array([y, y, y + h, y + h], dtype=float))
            x, y = float(xs.min()), float(ys.min())
            w, h = float(xs.max()) - x, float(ys.max()) - y
        return (int(round(self.offset[0] + x * self.scale[0])), int(round(self.offset[1] + y * self.scale[1])),
                max(1, int(round(w * self.scale[0]))), max(1, int(round(h * self.scale[1]))))


@dataclass
class Mark:
    """A mark beside a number's digits that is not read as one: a separator (the decimal comma of
    an amount, the dash of a ZIP+4 code) or another small mark. ``kind`` is what it looks like
    (``_mark_kind``, ``_part_kind``); which digits it lies between is the reader's to say, from ``column``."""
    kind: str                       # "dot", "comma", "apostrophe", "dash", "slash" or "mark"
    column: float                   # its middle, in strip columns
    box: tuple[int, int, int, int]  # in the pixels of the picture sent (x, y, w, h)


@dataclass
class Turn:
    """A turn of the ink map by ``degrees`` (counter-clockwise as seen) about its centre, the
    turned map grown to hold it all (PIL's ``rotate(expand=True)``): ``back`` maps points of the
    turned map to the map as it was."""
    degrees: float
    centre: tuple[float, float]         # of the map as it was (x, y)
    turned_centre: tuple[float, float]  # of the turned map

    def back(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.radians(self.degrees)
        dx, dy = x - self.turned_centre[0], y - self.turned_centre[1]
        return (self.centre[0] + dx * np.cos(t) - dy * np.sin(t),
                self.centre[1] + dx * np.sin(t) + dy * np.cos(t))


def skew(groups: list[_Group], shape: tuple[int, int], height: float) -> float:
    """The angle, in degrees, by which to turn the ink (counter-clockwise as seen) to make the
    string of ``groups`` level, from two measures that must agree (within AGREE degrees or
    AGREE_SHARE of the angle): the median slope of the ink's bottom edge, and of its top edge,
    between columns at least a digit apart (a baseline's drift, not a digit's own curves), and
    the ink's principal axis. 0 when the ink is too short to tell (less than two digits wide),
    the measures disagree, or the angle is under MIN_SKEW (read as it is: a few degrees cost
    little, and short strings' own ups and downs look like that much) or over MAX_SKEW (no line
    of writing)."""
    ink = np.zeros(shape, dtype=bool)
    for g in groups:
        ink[g.y0:g.y1, g.x0:g.x1] |= g.mask
    edges = _edge_angle(ink, height)
    if edges is None or abs(edges) < MIN_SKEW - AGREE:  # level, whatever the axis says: most strings
        return 0.0
    axis = _axis_angle(ink)
    if abs(edges - axis) > max(AGREE, AGREE_SHARE * abs(edges)):
        return 0.0
    angle = (edges + axis) / 2
    return angle if MIN_SKEW <= abs(angle) <= MAX_SKEW else 0.0


def _axis_angle(ink: np.ndarray) -> float:
    """The angle of the ink's principal axis (its second moments), in degrees: a string's
    direction, a little off where its digits slant."""
    ys, xs = np.nonzero(ink)
    x, y = xs - xs.mean(), ys - ys.mean()
    return float(np.degrees(0.5 * np.arctan2(2 * (x * y).mean(), (x * x).mean() - (y * y).mean())))


def _edge_angle(ink: np.ndarray, height: float) -> float | None:
    """The angle of the ink's bottom and top edges (``skew``), or None when it is less than two
    digits wide."""
    shape = ink.shape
    cols = np.flatnonzero(ink.any(axis=0))
    if cols.size == 0 or cols[-1] - cols[0] < 2 * height:
        return None
    cols = cols[np.linspace(0, cols.size - 1, min(cols.size, EDGE_COLUMNS)).astype(int)]
    top = ink[:, cols].argmax(axis=0)
    bottom = shape[0] - 1 - ink[::-1, cols].argmax(axis=0)
    i, j = np.triu_indices(cols.size, k=1)
    apart = cols[j] - cols[i] >= height
    if not apart.any():
        return None
    i, j = i[apart], j[apart]
    dx = (cols[j] - cols[i]).astype(float)
    slope = 0.5 * (np.median((bottom[j] - bottom[i]) / dx) + np.median((top[j] - top[i]) / dx))
    return float(np.degrees(np.arctan(slope)))


def level(ink: np.ndarray, degrees: float) -> tuple[np.ndarray, Turn]:
    """The ink map turned by ``degrees`` (``skew``'s angle), grown to hold it all, and the turn."""
    h, w = ink.shape
    turned = np.asarray(Image.fromarray(ink, mode="F").rotate(degrees, resample=Image.Resampling.BILINEAR,
                                                                expand=True, fillcolor=0), dtype=np.float32)
    return np.clip(turned, 0.0, 1.0), Turn(degrees, (w / 2, h / 2), (turned.shape[1] / 2, turned.shape[0] / 2))


def without_rules(ink: np.ndarray, height: float, groups: list[_Group] | None = None) -> np.ndarray:
    """The ink without the printed lines of a form: ruled lines (a straight horizontal run of ink
    RULE of the ink's width and RULE_DIGITS digit ``height``s long, in ink RULE_ASPECT times wider
    than tall: an underline, a ruled line, a box's top and bottom) and, between two ruled lines
    at least CELL of a digit's height apart, the cells' sides (vertical runs CELL of their
    distance long). On patterned paper only the strokes count (``digit_parts``). Where a digit's stroke crosses
    a line (ink on both sides of it), the line's pixels stay: the stroke goes on. With no ruled
    line, boxes apart around ``groups``, the digit-sized parts, go (``_without_boxes``). ``ink``
    itself when it holds no such line or box."""
    mask = _strokes(ink, ink > LEVEL)  # on patterned paper, not the pattern
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols[-1] - cols[0] + 1 < RULE_ASPECT * (rows[-1] - rows[0] + 1):
        return ink
    across = runs(mask, int(max(RULE * (cols[-1] - cols[0] + 1), RULE_DIGITS * height)))
    if not across.any():
        return _without_boxes(ink, groups or [], height)
    ruled = line_pixels(across, mask)
    sides = np.zeros_like(mask)
    rows_ruled = bands(across.any(axis=1))
    if len(rows_ruled) >= 2:  # a box, or a row of cells: their sides run from one ruled line to the next
        gap = min(b[0] - a[1] for a, b in zip(rows_ruled, rows_ruled[1:]))
        if gap >= CELL * height:  # lines a digit apart, not a pattern's
            sides = line_pixels(runs(mask.T, int(CELL * gap)), mask.T).T
    return erase_lines(ink, mask, ruled, sides)


def _without_boxes(ink: np.ndarray, groups: list[_Group], height: float) -> np.ndarray:
    """``ink`` without the boxes of a form whose digits each have a box of their own (boxes
    apart, no line running through the field): every digit-sized part (``digit_parts``'s
    ``groups``: a box and the digit inside it are one) at least CELL of the digit ``height`` tall
    in which ``without_frame`` finds a box around a digit loses the box."""
    out = ink
    for g in groups:
        if g.y1 - g.y0 < max(CELL * height, MIN_LINE) or g.x1 - g.x0 < MIN_LINE:
            continue
        edges = (g.mask[:3].any(axis=0), g.mask[-3:].any(axis=0), g.mask[:, :3].any(axis=1), g.mask[:, -3:].any(axis=1))
        if sum(float(e.mean()) >= FRAME for e in edges) < 3:  # a box's lines run along three sides or four
            continue
        part = out[g.y0:g.y1, g.x0:g.x1]
        plain = without_frame(part)
        if plain is not part:
            out = out.copy() if out is ink else out
            out[g.y0:g.y1, g.x0:g.x1] = plain
    return out


def _strong(g: _Group, ink: np.ndarray) -> np.ndarray | None:
    """A part's strokes (its ink above half strength) in their own box; None if it has none."""
    return cropped((ink[g.y0:g.y1, g.x0:g.x1] > 0.5) & g.mask)


def _dash(g: _Group, ink: np.ndarray, flat: float = FLAT) -> bool:
    """Whether a part is a dash, a bar of an equals sign or a line: ``flat`` times wider than tall,
    one stroke across (one run of ink in DASH_COLUMNS of its columns). A joined run of digits
    as flat (a cheque's ``000``) has loops: two runs or more in most columns."""
    strong = _strong(g, ink)
    if strong is None or strong.shape[1] < flat * strong.shape[0]:
        return False
    runs = strong[0].astype(int) + (strong[1:] & ~strong[:-1]).sum(axis=0)
    return float((runs == 1).mean()) >= DASH_COLUMNS


def _blob(g: _Group, ink: np.ndarray) -> bool:
    """Whether a part is a dot or a blot: strokes (its ink above half strength) filling BLOB_FILL
    of their box, about as wide as tall. A tap of the page's pen fills 0.77-0.80 of its box;
    roundish parts of digits fill 0.36 at the median and 0.58 at the 99th percentile. Of the
    card's strings (1,000 synthetic, 200 cheques, 500 pen traces, 1,000 on paper forms) none is
    all dots and dashes, and one part in 7,151 is such a dot."""
    strong = _strong(g, ink)
    if strong is None:
        return False
    h, w = strong.shape
    return BLOB_ASPECT[0] * h <= w <= BLOB_ASPECT[1] * h and int(strong.sum()) >= BLOB_FILL * h * w


def _comma(g: _Group, ink: np.ndarray) -> bool:
    """Whether a part is a comma, a quote or an apostrophe: a round head with a short tail, so
    that the largest disc inside its strokes (above half strength) holds COMMA_HEAD of them. In
    a digit the pen's width is the widest disc: MNIST training digits drawn 112 pixels tall hold
    0.12 at the median and 0.42 at the 99.9th percentile (1 of 2,991 reaches COMMA_HEAD), and none
    of 1,000 numbers of one or two MNIST training digits drawn as the card draws them is all such
    parts (one at 0.45); of training/wild.py's separators drawn alone (commas, quotes, colons,
    full stops), 74% are."""
    strong = _strong(g, ink)
    if strong is None:
        return False
    radius = float(ndimage.distance_transform_edt(np.pad(strong, 1)).max())
    return np.pi * radius ** 2 >= COMMA_HEAD * int(strong.sum())


def strip(payload: bytes | str | Image.Image, marks: bool = False) -> Strip:
    """Any accepted input to the strip the numbers network reads (``Strip``). The ink map and
    the digit-sized parts are ``segment``'s: a blank picture, or one holding only dots, commas,
    dashes and specks, raises InputError 422 ``no_digit``; a texture of many parts ``not_a_number``;
    digits in several lines ``several_lines``.
    Marks between and beside the digits stay in the strip: the network learnt to pass them. With
    ``marks`` the strip's ``marks`` say which and where (the numbers answer's; training and the
    digits handler's second reading do without)."""
    img = payload if isinstance(payload, Image.Image) else decode(payload)
    return strip_of_ink(*ink_view(img), marks=marks)


def strip_of_ink(ink: np.ndarray, offset: tuple[float, float], scale: tuple[float, float],
                 marks: bool = False) -> Strip:
    """``strip`` of a picture whose ``ink_view`` is already in hand (the digits handler's second
    reading): the ink map, the sent picture's point at its top left and its pixels per ink pixel."""
    dropped: list[_Group] | None = [] if marks else None
    ink, groups, height, turn = level_and_plain(ink, dropped)
    if not groups:
        raise InputError("no_digit", "no digit found: the picture holds only dots, commas, dashes or specks", status=422)
    # Many marks first: in noise, rows of specks passed for lines of digits (24 of the card's 200
    # noise pictures were answered several_lines, each with 46-113 marks).
    if len(groups) > MAX_PARTS:
        raise InputError("not_a_number", f"found {len(groups)} separate marks; a number has at most {MAX_PARTS} "
                         "digits (send one line of digits per picture)", status=422)
    count = len({g.line for g in groups})
    if count > 1:
        raise InputError("several_lines", f"found {count} lines of digits; the numbers model reads one line: "
                         "send each line as its own picture", status=422)
    pad = int(round(STRIP_PAD * height))
    y0, y1 = max(min(g.y0 for g in groups) - pad, 0), min(max(g.y1 for g in groups) + pad, ink.shape[0])
    x0, x1 = min(g.x0 for g in groups), max(g.x1 for g in groups)
    band = ink[y0:y1, x0:x1]
    parts = np.zeros(band.shape, dtype=np.int32)
    for k, g in enumerate(groups, 1):
        parts[g.y0 - y0:g.y1 - y0, g.x0 - x0:g.x1 - x0][g.mask] = k
    width = int(min(max(round(band.shape[1] * STRIP_HEIGHT / band.shape[0]), 1), MAX_STRIP))
    source = soften_small(band, band.shape[0])
    resample = Image.Resampling.BOX if source.shape[0] > STRIP_HEIGHT else Image.Resampling.BILINEAR  # BOX: thin strokes fade, not vanish
    small = np.asarray(Image.fromarray(source, mode="F").resize((width, STRIP_HEIGHT), resample), dtype=np.float32)
    peak = float(small.max())
    total = -(-(width + 2 * STRIP_MARGIN) // STRIDE) * STRIDE
    image = np.zeros((STRIP_HEIGHT, total), dtype=np.float32)
    image[:, STRIP_MARGIN:STRIP_MARGIN + width] = np.clip(small / max(peak, 1e-6), 0.0, 1.0)
    s = Strip(image, parts, (x0, y0), band.shape[1] / width, scale, turn, offset,
              cut=frozenset(k for k, g in enumerate(groups, 1) if _at_border(g, ink.shape)))
    s.marks = [Mark(kind, s.column((m.x0 + m.x1) / 2), s.sent(m.x0, m.y0, m.x1 - m.x0, m.y1 - m.y0))
               for m, kind in _beside(dropped or [], groups, ink, height)]
    return s


SEPARATOR_DASH = 2.0  # a mark this many times wider than tall, one stroke across, is a dash
DASH_LEVEL = (0.3, 0.7)  # ... at this height (0 the digits' top, 1 their foot)
DOT_PIECE_LEVEL = 0.6  # a dot that joined a digit's group lies this low in it
DOT_SIZE = 0.25      # a speck about as wide as tall, at most this share of the digits' height, is a dot
DOT_LEVEL = 0.4      # ... from this height down (a decimal point on the baseline, a middle dot)
COMMA_TALL = 1.2      # a round head with a tail this many times taller than wide is a comma
ON_DIGITS = 0.5       # a mark this share of the digits' height wide with this share of its columns
                      # over digits' is an underline or a stroke's stray piece: separators lie between digits


SHARED_PART = 12.0   # strip columns a digit's centre may lie outside a part of its own before it shares its neighbour's
SHARED_WITHIN = 1.0  # ... and where it lies within both (a leaning 1 over a 5's columns), its own part wins


def _claims(centres: list[float], spans: list[tuple[float, float]]) -> set[int]:
    """The parts (their column ``spans``, left to right) that the read digits' ``centres`` (left
    to right) lie in: each centre goes to one part, in order, the parts' distances to their
    centres (0 within a part) as small as can be, with SHARED_PART added for a centre outside
    the part it shares with the centre before (SHARED_WITHIN inside it). Touching digits read
    across one part share it; a centre a little off its narrow digit (CTC's peaks are not the
    digits' middles), nearer its neighbour, still keeps the digit's own part; a part no centre
    needs (a sign before the amount) is left out."""
    far = [[max(lo - c, c - hi, 0.0) for lo, hi in spans] for c in centres]
    cost = [far[0][:]]
    back: list[list[int]] = [[-1] * len(spans)]
    for i in range(1, len(centres)):
        row, came = [], []
        before, at_before = float("inf"), -1  # the cheapest part left of part j for centre i - 1
        for j in range(len(spans)):
            best, at = cost[-1][j] + (SHARED_PART if far[i][j] else SHARED_WITHIN), j
            if before < best:
                best, at = before, at_before
            row.append(far[i][j] + best)
            came.append(at)
            if cost[-1][j] < before:
                before, at_before = cost[-1][j], j
        cost.append(row)
        back.append(came)
    j = min(range(len(spans)), key=lambda k: cost[-1][k])
    out = set()
    for i in range(len(centres) - 1, -1, -1):
        out.add(j)
        j = back[i][j]
    return out


SLASH_LONG = 4.0         # a part this many times longer than wide (its ink's spread) is one straight stroke ...
SLASH_LEAN = (10.0, 60.0)  # ... and leaning right by this many degrees from upright, a slash


def _part_kind(mask: np.ndarray) -> str:
    """What a digit-sized part read as no digit looks like: a "slash" (one straight stroke
    leaning right, SLASH_LONG and SLASH_LEAN: a date's 12/05) or a "mark" (a currency sign, a
    bracket, a check mark)."""
    ys, xs = np.nonzero(mask)
    if xs.size < 3:
        return "mark"
    values, vectors = np.linalg.eigh(np.cov(np.stack([xs, ys]).astype(np.float64)))
    if values[1] < SLASH_LONG ** 2 * max(values[0], 1e-6):
        return "mark"
    vx, vy = vectors[:, 1]
    lean = np.degrees(np.arctan2(abs(vx), abs(vy)))
    rising = vx * vy < 0  # up and to the right (y grows downwards)
    return "slash" if rising and SLASH_LEAN[0] <= lean <= SLASH_LEAN[1] else "mark"


def _beside(marks: list[_Group], groups: list[_Group], ink: np.ndarray, height: float) -> list[tuple[_Group, str]]:
    """The ``marks`` (digit_parts' dropped parts) that lie beside the string's digit ``groups``,
    left to right, each with its kind (``_mark_kind``): level with the digits (their middle
    within the digits' rows), at most a digit height before the first or after the last; not
    cut by the picture's border (a crop's fragment of the line above, of a neighbour or of a
    box's side, or specks of the paper's pattern along a tight crop's foot); not between a
    digit's strokes (a speck in its loop, a piece of it); and, as wide as half a digit's
    height, not mostly over the digits' columns (an underline)."""
    top, bottom = min(g.y0 for g in groups), max(g.y1 for g in groups)
    left, right = min(g.x0 for g in groups) - height, max(g.x1 for g in groups) + height
    out = []
    for m in sorted(marks, key=lambda m: m.x0):
        middle = (m.y0 + m.y1) / 2
        if not (top <= middle <= bottom and left <= (m.x0 + m.x1) / 2 <= right):
            continue
        if _at_border(m, ink.shape):
            continue
        if any(_enclosed(m, g) for g in groups if not set(m.labels) <= set(g.labels)):
            continue
        over = sum(max(0, min(m.x1, g.x1) - max(m.x0, g.x0)) for g in groups)
        if m.x1 - m.x0 > ON_DIGITS * (bottom - top) and over >= ON_DIGITS * (m.x1 - m.x0):
            continue
        out.append((m, _mark_kind(m, ink, (middle - top) / max(bottom - top, 1), bottom - top)))
    return out


def _at_border(g: _Group, shape: tuple[int, ...]) -> bool:
    """Whether part ``g`` is cut by the picture's border (the masks' rim adds a pixel)."""
    return g.y0 <= 1 or g.x0 <= 1 or g.y1 >= shape[0] - 1 or g.x1 >= shape[1] - 1


def _enclosed(m: _Group, g: _Group) -> bool:
    """Whether digit ``g``'s strokes lie both left and right of mark ``m`` in ``m``'s rows."""
    top, bottom = max(m.y0, g.y0), min(m.y1, g.y1)
    if bottom <= top:
        return False
    cols = np.flatnonzero(g.mask[top - g.y0:bottom - g.y0].any(axis=0)) + g.x0
    return bool(cols.size) and cols[0] < m.x0 and cols[-1] >= m.x1


def _mark_kind(m: _Group, ink: np.ndarray, level: float, tall: float) -> str:
    """What a mark looks like, at ``level`` (its middle: 0 at the digits' top, 1 at their
    foot) beside digits ``tall`` pixels tall: a "dash" (SEPARATOR_DASH wide, one stroke across,
    at DASH_LEVEL: higher, it is more likely a 5's or a 7's bar written apart); a "dot" where,
    its whole box about as wide as tall (BLOB_ASPECT: a flat piece of a ruled line with a darker
    spot is none), it is a blot (``_blob``), a round head (``_comma``) or a speck at most DOT_SIZE
    of the digits' height (a pen's dot on a scan is grey and frayed), from DOT_LEVEL down
    (higher, it is more likely a piece of a 5's bar); such a mark COMMA_TALL times taller than
    wide is a "comma" on the lower half, an "apostrophe" on the upper; else a "mark".
    Handwritten dots and commas can look alike: the kind is a reading."""
    if _dash(m, ink, SEPARATOR_DASH) and DASH_LEVEL[0] <= level <= DASH_LEVEL[1]:
        return "dash"
    h, w = m.y1 - m.y0, m.x1 - m.x0
    square = BLOB_ASPECT[0] * h <= w <= BLOB_ASPECT[1] * h
    if square and (max(h, w) <= DOT_SIZE * tall or _blob(m, ink) or _comma(m, ink)):
        if h >= COMMA_TALL * w:
            return "comma" if level > 0.5 else "apostrophe"
        if level >= DOT_LEVEL:
            return "dot"
    return "mark"
