"""Turn whatever a client sends into the 28x28 image the network was trained on.

The one preprocessing module of the project: the handler, training, evaluation, the
benchmarks and the tests all call it. The steps follow how MNIST itself was made:

1. ``decode``: raw PNG/JPEG/BMP/GIF/WebP bytes, base64 text or a ``data:image/...;base64,``
   URL (the browser canvas's ``toDataURL()``) to a Pillow image, refusing anything else.
2. ``ink_map``: flatten transparency and measure, per pixel, how far its colour is from the
   background colour. Dark ink on light paper and light ink on a dark ground both come out
   as ink near 1 on a ground of 0, whatever the ink's colour. ``ink_view`` measures a small
   digit or number on a large page again from the page's own pixels, around it.
3. ``find_digit``: decide which ink is the digit. A crop of real paper also holds bits of the
   neighbouring digits cut by its border, dots and commas, dashes, underlines and paper
   texture; only the main stroke components and the parts that belong with them are kept.
   A form's printed box around the digit, or a ruled line through its foot, goes first
   (``without_frame``; the numbers model's strip uses the same line finding: ``runs``,
   ``erase_lines``).
4. ``to_mnist``: crop to the digit's ink, enlarge a small hard-edged digit first (a bilevel
   picture: ``soften_small``), thicken strokes that would shrink below MNIST's width, fit the
   digit in a 20x20 box keeping its aspect ratio, and centre it by centre of mass in a 28x28
   frame.

Every failure raises ``InputError`` with a short code, a sentence for people and the HTTP
status the handler returns for it.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
import zlib

import numpy as np
from PIL import ExifTags, Image, ImageOps
from scipy import ndimage

try:  # ISA-L's deflate: same format as zlib's, about 8 times faster on activation grids
    from isal.isal_zlib import compress as _deflate
except ImportError:  # pragma: no cover - requirements.txt pins isal; zlib is the fallback
    from zlib import compress as _deflate
try:  # libspng: decodes a plain PNG (a canvas, a scan) in about half of Pillow's time
    import pyspng
except ImportError:  # pragma: no cover - requirements.txt pins pyspng; Pillow decodes every PNG without it
    pyspng = None

SIZE = 28           # side of the network's input
BOX = 20            # MNIST fits each digit's longest side to 20 pixels ...
CENTRE = 14.0       # ... and puts its centre of mass here (pixel-index coordinates, measured on MNIST train)
STROKE = 2.0        # median stroke width of MNIST train digits (pixels above 0.5), measured
MAX_COVERAGE = 0.45  # MNIST train's densest digit covers 0.40 of the 28x28 frame (above 0.5), measured
MAX_FLAT = 3.0      # ink this many times wider than tall is a dash or a line: MNIST's flattest digit is 2.2
ROUND_DOT = 0.85    # ink whose largest disc covers this share of it is a dot (MNIST's and the sources' digits: 0.80 at most)
THIN_STROKE = 1.2   # thinner than MNIST's thinnest tenth (1.4): thicken to STROKE
FINE_SIDE = 80      # a smaller digit with hard-edged strokes is enlarged to this first (soften_small)
BILEVEL = 0.1       # ... hard-edged: fewer than this share of its ink pixels are mid-grey
WORK_SIDE = 512     # larger pictures are shrunk to fit this square before analysis; 20 px is the goal ...
WORK_SHORT = 384    # ... but paper wider (or taller) than 4:3 keeps this much of its short side ...
WORK_LONG = 1024    # ... up to this long side: a line of boxes or digits keeps its thin lines (work_side)
ZOOM_FROM = 1.5     # a picture shrunk by this much or more for analysis ...
ZOOM_BELOW = 48     # ... whose ink then measures fewer pixels than this across, is measured again there (ink_view)
ZOOM_MARGIN = 1.0   # ... with this much of the ink's size around it, from a large JPEG decoded again
ZOOM_DETAIL = 192   # ... with enough pixels for the ink to measure this many across (or all it has)
JPEG_SOURCE = "digits.jpeg"  # Image.info key: a JPEG decoded at a reduced size keeps its bytes and size here

MAX_BYTES = 5 * 1024 * 1024          # below TorchServe's 6.5 MB request limit
MAX_PIXELS = 40_000_000              # a 48 MP phone photo is the largest we expect
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MIN_CONTRAST = 0.12  # ink must differ from the ground by this much (of full scale) to count
GROUND_GRID = 6     # at most this many blocks per side for the local estimate of the ground ...
GROUND_BLOCK = 40   # ... each at least this many pixels wide, so strokes never fill a block
FLAT_GROUND = 0.9   # when this share of the ground is one colour, it is taken as flat
GROUND_SAMPLE = 128  # the ground's medians look at about this many pixels a side of the picture
SPECK = 0.15        # ink whose 3x3 neighbourhood averages less than this is a speck, not a stroke
NOISE_FLOOR = 0.2    # weaker ink than this (relative to the strongest) is paper texture or JPEG noise
# find_digit: which components of the ink are the digit (fractions of the main component's
# box or ink mass). Chosen on ORAND-CAR-A training crops and the canvas fixtures; see find_digit.
CLUTTER = 20        # more components than this, with the digit's under half the ink, is clutter
CORE = NOISE_FLOOR  # components are those of the ink above the noise floor: the strokes without their rims
BESIDE = 0.15       # the main component's horizontal span, widened by this share on each side
OVERLAP = 0.4       # a part must lie this much inside that span (by its own width) ...
OVERLAP_CUT = 0.6   # ... and this much when the crop's border cuts it (a neighbour's fragment)
OVERLAP_TOUCHING = 0.25  # ... or this much when the boxes touch (a digit's own bar, cut by a tight crop)
NEXT_TO = 0.2       # a part off to the side joins only if this much of it is within the span: whole neighbours do not
NEAR = 0.2          # at most this far above or below the main component (share of its height)
DOT = 0.1           # parts lighter than this are dots or specks, unless they touch the main component ...
TOUCH = 0.05        # ... (their boxes this close: a broken stroke)
UNDERLINE = 3.0     # a part this many times wider than tall, low on the digit, is an underline or dash
CENTRED = 0.2       # the picture's centre this far inside the digit's box (share of its width): a crop around it
NEIGHBOUR = 0.5     # ... then a part beside the digit and this tall (share of its height) is a neighbour
FRAME = 0.8         # a straight run of ink this share of the ink's width (or height) long is a printed line ...
FRAME_EDGE = 0.25   # ... of a box around the digit when it lies in this outer share of the ink
FRAME_LEVEL = 0.15  # ink above this (of the strongest) makes the lines
MIN_LINE = 24       # pixels: a shorter run is no printed line (in a small picture a digit's arcs look as straight)
BOX_BEYOND = 0.1    # ... when the box's lines reach past the ink inside by this share of its width each side,
LINE_BEYOND = 0.25  # ... and a lone line under the digit by this share
PAPER = 0.9         # a straight line across this share of the picture (or down it) is the paper's ...
PAPER_BEYOND = 0.25  # ... when it reaches past the rest of the ink by this share of its width (height) each side,
PAPER_RIM = 3       # ... the rest being the ink more than this many pixels from such lines
PAPER_MIN = 64      # pixels: a shorter line is a stroke of a digit cut close, not the paper's
PAPER_STUB = 12     # pixels: a bit of ink at such a line no longer than this, once the line is gone, goes too
PALE_LINE = 0.6     # a printed line this faint (of the strongest ink) or fainter ...
DARKER = 0.5        # ... keeps the ink this much of the way from it to the strongest: a stroke along the line

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own decompression-bomb guard, as a second line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG whose chunks are all of these has nothing Pillow would use beyond its 8-bit pixels (no
# palette, transparency key, animation, text or EXIF), so libspng may decode it instead.
_PLAIN_PNG_CHUNKS = frozenset((b"IHDR", b"IDAT", b"IEND", b"pHYs", b"sRGB", b"gAMA", b"cHRM", b"iCCP",
                               b"sBIT", b"tIME", b"bKGD"))
_PLAIN_PNG_COLOURS = (0, 2, 6)  # PNG colour types grey, RGB, RGBA (pyspng 0.1.4 refuses grey+alpha)
_IHDR = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, compression, filter, interlace

_MAGIC = (  # formats people send that we refuse by name, so the error says what was sent
    (b"%PDF", "a PDF document"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML/SVG document"),
)
# ISO media files (ftyp box at byte 4) by their brand: a phone's HEIC photo (iPhones' default)
# and AVIF. Neither is decoded here (HEIC needs libheif; AVIF would widen the decoders exposed).
_FTYP_BRANDS = {**dict.fromkeys((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"),
                                "a HEIC photo (an iPhone's default format: share or export it as JPEG)"),
                **dict.fromkeys((b"mif1", b"msf1"), "a HEIF image"), **dict.fromkeys((b"avif", b"avis"), "an AVIF image")}
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<body>.*)$", re.S)


class InputError(ValueError):
    """A client sent something that is not a usable digit image."""

    def __init__(self, code: str, detail: str, status: int = 400):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status

    def to_dict(self) -> dict:
        return {"error": self.code, "detail": self.detail}


# ---------------------------------------------------------------- 1. decoding

def decode(payload: bytes | bytearray | str) -> Image.Image:
    """Decode image bytes, base64 text or a data URL into a fully loaded Pillow image."""
    if isinstance(payload, str):
        data = _decode_text(payload)
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        if not data:
            raise InputError("empty_body", "the request carried no image data")
        if _looks_like_text(data):
            try:  # only the first 4 kB were checked: the rest may still hold any byte
                text = data.decode("ascii")
            except UnicodeDecodeError:
                raise InputError("bad_base64", "the text is not valid base64 (it holds non-ASCII bytes)") from None
            data = _decode_text(text)
    else:
        raise InputError("bad_payload", f"expected image bytes or base64 text, got {type(payload).__name__}")
    return _open_image(data)


def _looks_like_text(data: bytes) -> bool:
    head = data[:64].lstrip()
    return head.startswith(b"data:") or (
        len(data) >= 8 and re.fullmatch(rb"[A-Za-z0-9+/=_\-\s]+", data[:4096]) is not None)


def _decode_text(text: str) -> bytes:
    text = text.strip()
    if not text:
        raise InputError("empty_body", "the request carried no image data")
    if text.startswith("data:"):
        m = _DATA_URL.match(text)
        if not m:
            raise InputError("bad_data_url", "malformed data URL: expected data:image/...;base64,<data>")
        mime = m["mime"].strip().lower()
        if not mime.startswith("image/"):
            raise InputError("unsupported_type", f"data URL has MIME type '{mime or 'none'}'; expected image/*",
                             status=415)
        if "base64" not in [p.strip().lower() for p in m["params"].split(";")]:
            raise InputError("bad_data_url", "only base64 data URLs are supported (data:image/png;base64,...)")
        text = m["body"]
    compact = re.sub(r"\s+", "", text)
    if len(compact) > MAX_BYTES * 4 // 3 + 4:
        raise InputError("too_large", f"image is larger than {MAX_BYTES // (1024 * 1024)} MB", status=413)
    try:
        data = base64.b64decode(compact.translate(str.maketrans("-_", "+/")), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError("bad_base64", f"the text is not valid base64 ({e})") from None
    if not data:
        raise InputError("empty_body", "the base64 text decodes to nothing")
    return data


def _open_image(data: bytes) -> Image.Image:
    if len(data) > MAX_BYTES:
        raise InputError("too_large", f"image is larger than {MAX_BYTES // (1024 * 1024)} MB", status=413)
    what = next((what for magic, what in _MAGIC if data.lstrip()[:len(magic)].lower() == magic.lower()),
                _FTYP_BRANDS.get(data[8:12]) if data[4:8] == b"ftyp" else None)
    if what:
        raise InputError("unsupported_format", f"got {what}; send PNG, JPEG, BMP, GIF or WebP", status=415)
    plain = _plain_png(data)
    if plain is not None:
        return plain
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise InputError("too_many_pixels",
                                 f"image is {width}x{height}; at most {MAX_PIXELS // 1_000_000} million pixels",
                                 status=413)
            if width == 0 or height == 0:
                raise InputError("empty_image", f"image is {width}x{height} pixels")
            if getattr(img, "n_frames", 1) > 1:
                raise InputError("animated_image", "animated images are not supported; send a single frame",
                                 status=415)
            if img.format == "JPEG":
                # Decode large JPEGs at a reduced size straight from the DCT (a half, a quarter
                # or an eighth), keeping at least half of WORK_SIDE a side: a 1000x750 photo
                # comes out 500x375, a quarter of the pixels to decode and analyse. The bytes
                # stay with it, so that ink_view can zoom into a small number at full detail.
                img.draft("RGB", (WORK_SIDE // 2, WORK_SIDE // 2))
                if img.size != (width, height):
                    img.info[JPEG_SOURCE] = (data, (width, height))
            img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("too_many_pixels", f"image exceeds {MAX_PIXELS // 1_000_000} million pixels",
                         status=413) from None
    except Image.UnidentifiedImageError:
        raise InputError("not_an_image", "the data is not a PNG, JPEG, BMP, GIF or WebP image",
                         status=415) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise InputError("corrupt_image", f"the image could not be decoded ({e})") from None
    return img


def _plain_png(data: bytes) -> Image.Image | None:
    """A whole, undamaged PNG of 8-bit grey, RGB or RGBA pixels, not interlaced, with no chunk
    but _PLAIN_PNG_CHUNKS, decoded by libspng: Pillow's pixels to the bit, in about half its
    time (a 280x280 canvas: 1.1 -> 0.6 ms). None for any other PNG, any other format and any
    damage (every chunk's CRC is checked here: libspng would read through a damaged IDAT), so
    that Pillow decodes it, or refuses it with its own error, as before."""
    if pyspng is None or len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None  # 33 bytes: the signature and the IHDR chunk
    width, height, depth, colour, _, _, interlace = _IHDR.unpack(data[16:29])
    if depth != 8 or interlace or colour not in _PLAIN_PNG_COLOURS or not 0 < width * height <= MAX_PIXELS:
        return None
    view, at = memoryview(data), len(PNG_SIGNATURE)
    while True:
        if at + 12 > len(data):
            return None  # cut off before IEND
        length, kind = struct.unpack(">I4s", view[at:at + 8])
        stop = at + 12 + length
        if kind not in _PLAIN_PNG_CHUNKS or stop > len(data) or \
                _png_crc(kind, view[at + 8:stop - 4]) != int.from_bytes(view[stop - 4:stop], "big"):
            return None
        if kind == b"IEND":
            break
        at = stop
    try:
        img = Image.fromarray(pyspng.load(data))
    except (RuntimeError, ValueError):
        return None
    img.format = "PNG"  # as Pillow's own decoder says: the feedback store keeps it
    return img


# ---------------------------------------------------------------- 2. ink

def ink_map(img: Image.Image) -> np.ndarray:
    """Per-pixel ink strength in [0, 1] (float32, H x W), 0 on the background."""
    return _upright_ink(_upright(img))


def ink_view(img: Image.Image) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """``ink_map`` of the part of the picture that holds the ink, the point of the picture as
    sent at its top left (x, y), and how many of the sent picture's pixels each of its pixels is
    (x, y). The picture as sent is upright (its EXIF orientation applied), at its full size even
    where ``decode`` read a large JPEG at a reduced one.

    The part is the whole picture, unless the picture was shrunk to be analysed (or decoded at a
    reduced size) by ZOOM_FROM or more and its ink (specks aside: ``without_specks``) came out
    smaller than ZOOM_BELOW pixels across: a number written small on a large scan or photo. The
    ink's surroundings (ZOOM_MARGIN of its size each side) are then measured again from more of
    the picture's own pixels, so the digits keep the detail the shrink took from them."""
    upright = _upright(img)
    source = img.info.get(JPEG_SOURCE)
    sent = source[1] if source else img.size
    if upright.size != img.size:  # turned a quarter
        sent = sent[::-1]
    ink = _upright_ink(upright)
    scale = (sent[0] / ink.shape[1], sent[1] / ink.shape[0])
    if min(scale) < ZOOM_FROM:  # (a canvas, a scan read at its size: no need to look for the ink)
        return ink, (0.0, 0.0), scale
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not rows.size:
        return ink, (0.0, 0.0), scale
    size = min(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
    if size >= ZOOM_BELOW:  # the dots where a page's faded lines cross stretch the box: measure without them
        top, left = rows[0], cols[0]
        parts = _specks(ink[top:rows[-1] + 1, left:cols[-1] + 1] > 0)  # (in the ink's box: the same parts, fewer pixels)
        if parts is not None:
            found = [b for b, speck in zip(parts[1], parts[2]) if not speck]
            rows = top + np.array([min(b[0].start for b in found), max(b[0].stop for b in found) - 1])
            cols = left + np.array([min(b[1].start for b in found), max(b[1].stop for b in found) - 1])
            size = min(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
        if size >= ZOOM_BELOW:
            return ink, (0.0, 0.0), scale
    if source:
        upright = _decoded_again(source[0], ZOOM_DETAIL / (size * min(scale)), upright)
    more = upright.width / sent[0]  # its pixels per sent pixel
    if min(scale) * more < ZOOM_FROM:
        return ink, (0.0, 0.0), scale
    margin = ZOOM_MARGIN * size
    left = int(max((cols[0] - margin) * scale[0] * more, 0))
    top = int(max((rows[0] - margin) * scale[1] * more, 0))
    right = int(min(np.ceil((cols[-1] + 1 + margin) * scale[0] * more), upright.width))
    bottom = int(min(np.ceil((rows[-1] + 1 + margin) * scale[1] * more), upright.height))
    part = _upright_ink(upright.crop((left, top, right, bottom)))
    return part, (left / more, top / more), ((right - left) / more / part.shape[1], (bottom - top) / more / part.shape[0])


def _upright(img: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose(img)``, but ``img`` itself, not a copy, when its EXIF
    orientation leaves it as it is (the copy cost a third of a millisecond on a wide canvas,
    and nothing here draws on the picture)."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        return ImageOps.exif_transpose(img)
    return img


def _decoded_again(data: bytes, detail: float, reduced: Image.Image) -> Image.Image:
    """A JPEG that ``decode`` read at a reduced size (``reduced``, upright), decoded again with
    at least ``detail`` of its full size (the DCT scales to a half, a quarter or an eighth),
    upright; ``reduced`` itself if that fails."""
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
        img.draft("RGB", (int(np.ceil(img.width * min(detail, 1.0))), int(np.ceil(img.height * min(detail, 1.0)))))
        return ImageOps.exif_transpose(img)  # decodes it
    except (OSError, SyntaxError, ValueError, struct.error):  # decode read it at the reduced size: stay there
        return reduced


def _upright_ink(img: Image.Image) -> np.ndarray:
    """``ink_map`` of a picture already turned upright (its EXIF orientation applied)."""
    side = work_side(img)
    distance = None
    if side < max(img.size) <= 2 * side and _on_canvas(img):
        # A wide canvas (the page's number pad is 778x280): its ink measured at full size and
        # then shrunk, one band instead of four with their alpha multiplied in and out again.
        distance = _canvas_ink(img)
        if distance is not None:
            distance = np.asarray(ImageOps.contain(Image.fromarray(distance, mode="F"), (side, side),
                                                   Image.Resampling.BOX), dtype=np.float32)
    top = left = 0  # where ``distance`` lies in the picture (of ``full`` rows and columns)
    if distance is not None:
        full = distance.shape
    else:
        if max(img.size) > side:
            img = img.copy()
            img.thumbnail((side, side), Image.Resampling.BOX)
        full = img.size[::-1]
        drawn = _canvas_part(img)  # (a drawing on a canvas: its box alone, put in place at the end)
        if drawn is not None:
            distance, (top, left) = drawn
    paper = distance is None  # a canvas has no ruled lines
    if paper:
        distance = _photo_ink(img)
    # Everything below is local: work on the box holding every pixel off the ground (on a
    # canvas, a third of the picture), then put the result back in a picture of full size.
    box = ink_box(distance > 0)
    if box is not None:
        distance = distance[box]
        top, left = top + box[0].start, left + box[1].start
    peak = _require_contrast(distance)
    # Strokes are what rises above the noise floor; paper grain and JPEG noise stay below it and
    # leave only isolated specks above it. One speck far from the digit would stretch the crop:
    # strokes, even one pixel wide, fill a third of every 3x3 window along them, a lone speck a
    # ninth. The faint anti-aliased rim of the strokes is kept as it is (a hysteresis
    # threshold): cutting it thinned every stroke and cost 0.07 points on the MNIST test set.
    ink = distance * np.float32(1.0 / peak)
    strong = ink > NOISE_FLOOR
    strong &= _box_mean3(np.where(strong, (ink - NOISE_FLOOR) * np.float32(1.0 / (1.0 - NOISE_FLOOR)),
                                  np.float32(0.0))) >= SPECK
    ink[~widened(strong)] = 0.0
    ink = _placed(ink, (top, left), full)
    return without_paper_lines(ink) if paper else ink


def _placed(part: np.ndarray, at: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """``part`` put at ``at`` (row, column) in a picture of ``shape`` that is 0 elsewhere;
    ``part`` itself when it is the whole picture."""
    if part.shape == tuple(shape):
        return part
    out = np.zeros(shape, dtype=np.float32)
    out[at[0]:at[0] + part.shape[0], at[1]:at[1] + part.shape[1]] = part
    return out


def without_paper_lines(ink: np.ndarray) -> np.ndarray:
    """The ink without the paper's own lines: ruled or squared paper, a notebook's margin.
    Those are straight lines across PAPER of the picture's width (or down PAPER of its height)
    that reach past the rest of the ink, on both sides, by PAPER_BEYOND of its width (height).
    A line down goes with a line across, or when the rest is PAPER_BEYOND of the line's length
    tall, or lies apart from it by the rest's height (writing, not the full stop beside a
    tightly cropped 1; a page's faint ruled lines can fade away in the ink map, its margin
    not). Lines shorter than PAPER_MIN are a closely cut digit's strokes, and lines down at
    both ends of the lines across make a box or a form's cells, which ``without_frame`` and the
    numbers' strip take out their own way: both stay here. Where a stroke crosses a line, the
    line's pixels stay (``erase_lines``); bits of ink at the lines no longer than PAPER_STUB,
    crossings with fainter lines, go. ``ink`` itself when there is no such line, or nothing
    but lines (a 1, a dash)."""
    mask = ink > 0  # however faint: a pale margin beside dark writing is still a long straight line
    h, w = mask.shape
    if h < 2 or w < 2:
        return ink
    long_x, long_y = max(int(PAPER * w), PAPER_MIN), max(int(PAPER * h), PAPER_MIN)
    # cheaply first: a line needs that much ink in two neighbouring rows (columns)
    row_ink, col_ink = mask.sum(axis=1), mask.sum(axis=0)
    if not ((row_ink[:-1] + row_ink[1:] >= long_x).any() or (col_ink[:-1] + col_ink[1:] >= long_y).any()):
        return ink
    across = line_pixels(runs(mask, long_x, bridged=True), mask)
    down = line_pixels(runs(mask.T, long_y, bridged=True), mask.T).T
    if not across.any() and not down.any():
        return ink
    if across.any() and down.any():  # lines down at both ends of the lines across: a box or a form's cells
        span, sides = np.flatnonzero(across.any(axis=0)), np.flatnonzero(down.any(axis=0))
        if sides[0] <= span[0] + PAPER_RIM and sides[-1] >= span[-1] - PAPER_RIM:
            return ink  # (``without_frame``, ``segment.without_rules``)
    # the rest: what lies more than the lines' rims away (squared paper's faint lines leave stubs there)
    rest = without_specks(mask & ~ndimage.binary_dilation(across | down, structure=_EIGHT, iterations=PAPER_RIM))
    rows, cols = np.flatnonzero(rest.any(axis=1)), np.flatnonzero(rest.any(axis=0))
    if rows.size == 0:
        return ink
    across, down = _past(across, cols[0], cols[-1]), _past(down.T, rows[0], rows[-1]).T
    tall = rows[-1] + 1 - rows[0]
    if not across.any() and tall < PAPER_BEYOND * long_y:  # a line down alone: is it apart from the rest?
        for a, b in bands(down.any(axis=0)):
            if cols[0] - tall < b and a < cols[-1] + 1 + tall:
                down[:, a:b] = False
    if not across.any() and not down.any():
        return ink
    out = erase_lines(ink, mask, across, down)
    # What is left of the lines' crossings with fainter ones (squared paper's; a faded ruled
    # line's ends at the margin) are small bits at the lines: each goes too. A stroke through a
    # line is larger.
    labels, _ = ndimage.label(out > 0, structure=_EIGHT)
    zone = ndimage.binary_dilation(across | down, structure=_EIGHT, iterations=PAPER_RIM + 1)
    touching = np.unique(labels[zone])
    for k, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is not None and k in touching and max(sl.stop - sl.start for sl in found) <= PAPER_STUB:
            out[found][labels[found] == k] = 0.0
    return out


def without_specks(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its specks: the parts (8-connected) no larger than PAPER_STUB pixels
    either way and at most half the largest part's size, such as the dots left where a page's
    lines cross when the lines themselves fade in the ink map. What they say about where the
    writing is misleads; the strokes of digits are larger. ``mask`` itself when it has nothing else."""
    parts = _specks(mask)
    if parts is None:
        return mask
    labels, _, specks = parts
    return mask & ~specks[labels - 1]  # (the ground, label 0, is not in mask)


def _specks(mask: np.ndarray) -> tuple[np.ndarray, list, np.ndarray] | None:
    """``mask``'s parts (``ndimage.label``'s labels, ``find_objects``' boxes) and which of them
    are ``without_specks``' specks; None when there are none to drop (or nothing else)."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count < 2:
        return None
    found = ndimage.find_objects(labels)
    sizes = np.array([max(sl.stop - sl.start for sl in box) for box in found])
    specks = sizes <= min(PAPER_STUB, sizes.max() / 2)
    if not specks.any() or specks.all():
        return None
    return labels, found, specks


def _past(lines: np.ndarray, first: int, last: int) -> np.ndarray:
    """The horizontal ``lines`` (bands of rows) that reach past columns ``first`` to ``last`` by
    PAPER_BEYOND of that width on both sides."""
    out = np.zeros_like(lines)
    margin = max(1.0, PAPER_BEYOND * (last - first + 1))
    for a, b in bands(lines.any(axis=1)):
        span = np.flatnonzero(lines[a:b].any(axis=0))
        if span[0] <= first - margin and span[-1] >= last + margin:
            out[a:b] = lines[a:b]
    return out


def work_side(img: Image.Image) -> int:
    """The longest side ``ink_map`` works at for this picture. Paper (any opaque picture) wider
    than 4:3, either way up, keeps WORK_SHORT pixels of its short side, up to WORK_LONG on the
    long one. A 592x100 line of digits in printed boxes is then read as it is: shrunk to 512x86,
    its grey box lines, 2 pixels wide, became 1 pixel wide, too faint for the speck filter, and
    the boxes were no longer whole. Every other picture fits WORK_SIDE: up to 4:3 that is the
    same size, and a drawing on a transparent canvas (the page's pen is 18 of 280 pixels wide)
    has no thin lines to keep: at full size a 778x280 canvas took 30% longer to strip."""
    long, short = max(img.size), max(min(img.size), 1)
    if long <= WORK_SIDE or long * 3 <= short * 4 or _on_canvas(img):
        return WORK_SIDE
    return int(min(max(WORK_SIDE, round(WORK_SHORT * long / short)), WORK_LONG))


def _on_canvas(img: Image.Image) -> bool:
    """Whether the picture has a transparent ground: ``_canvas_ink``'s test on the alpha band
    alone, for RGBA and LA; a palette or a transparency key is taken as a canvas unchecked."""
    if img.mode in ("RGBA", "LA"):
        return img.getchannel("A").getextrema()[0] < 128
    return img.mode == "PA" or "transparency" in img.info


def ink_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of ``mask``, one pixel wider on each side (so 3x3 sums see the edge),
    or None when that is the whole picture or the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    r0, r1, c0, c1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h), max(cols[0] - 1, 0), min(cols[-1] + 2, w)
    if r0 == 0 and c0 == 0 and r1 == h and c1 == w:
        return None
    return slice(r0, r1), slice(c0, c1)


def _canvas_ink(img: Image.Image) -> np.ndarray | None:
    """The ink of a drawing on a transparent ground (a browser canvas); None for any other picture.

    The drawing is laid on the shade that contrasts with what was drawn (white under dark ink,
    black under light ink, so neither vanishes), and each pixel's ink is its distance from that
    shade: alpha times the colour's largest channel difference from it. That is what the
    general path measures too, but the ground here is known and flat, so there is no ground to
    estimate, and the arithmetic stays in 8 bits until the end: a third of the time on a
    280x280 canvas."""
    drawn = _canvas_part(img)
    return None if drawn is None else _placed(*drawn, img.size[::-1])


def _canvas_part(img: Image.Image) -> tuple[np.ndarray, tuple[int, int]] | None:
    """``_canvas_ink`` of the box that holds the drawing (the whole picture unless it is
    transparent all round the drawing), and the box's top left (row, column); None for a
    picture that is not a drawing on a transparent ground."""
    if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
        return None
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    box = rgba.getchannel("A").getbbox()
    if box is None or box == (0, 0) + rgba.size:
        spread = _canvas_spread(rgba)
        return None if spread is None else (spread, (0, 0))
    # Transparent all round the drawing, where the ink is 0: measure the drawing's box alone (on
    # the page's number pad, two thirds of the canvas).
    return _canvas_spread(rgba.crop(box), on_ground=True), (box[1], box[0])


def _canvas_spread(rgba: Image.Image, on_ground: bool = False) -> np.ndarray | None:
    """``_canvas_ink`` of an RGBA picture; None when every pixel is at least half opaque, unless
    the picture is known to lie on a transparent ground (``on_ground``). The pixels are copied
    out of Pillow as bytes and then a band at a time into arrays of their own: faster than
    Pillow's split, and than numpy's arithmetic on bands 4 bytes apart."""
    px = np.frombuffer(rgba.tobytes(), dtype=np.uint8).reshape(rgba.height, rgba.width, 4)
    r, g, b, alpha = (np.ascontiguousarray(px[..., k]) for k in range(4))
    if not on_ground and alpha.min() >= 128:  # an opaque ground: the general path estimates it
        return None
    opaque = alpha > 127
    count = np.count_nonzero(opaque)  # dark: the opaque pixels' mean luma below half, from channel sums
    dark = not count or float(_luma(np.array([(c * opaque).sum(dtype=np.int64) for c in (r, g, b)],
                                             dtype=np.float32))) < 127.5 * count
    if dark:  # on white: 255 minus the darkest channel
        spread = 255 - np.minimum(np.minimum(r, g), b)
    else:  # on black: the brightest channel
        spread = np.maximum(np.maximum(r, g), b)
    return (spread.astype(np.float32) * alpha) * np.float32(1.0 / (255 * 255))


def _photo_ink(img: Image.Image) -> np.ndarray:
    """Per-pixel distance of the colour from the local ground's colour (unnormalised)."""
    codes = _codes(img)
    rgb, alpha = (codes.astype(np.float32) / 255.0, None) if codes is not None else _rgba_float(img)
    if alpha is not None:  # mostly opaque: lay the few transparent pixels on white
        rgb = rgb * alpha + (1.0 - alpha)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    distance = _distance(rgb, _medians(border.T))
    _require_contrast(distance)
    # The ground's colour drifts across photos and scans (uneven light, shadows, tinted paper):
    # estimate it again, locally, from what is clearly not ink, and measure against that.
    ground = _local_ground(rgb, distance < 0.5 * distance.max(), codes)
    return _distance(rgb, ground)


def _codes(img: Image.Image) -> np.ndarray | None:
    """An opaque 8-bit picture's pixels as H x W x C uint8 (C 3 for RGB, 1 for grey: a grey
    picture's three channels would be the same, a third of the work); None for any other
    picture (transparency, 16 bits, a palette), which ``_rgba_float`` reads."""
    if "transparency" in img.info or img.mode not in ("RGB", "L"):
        return None
    codes = np.asarray(img)
    return codes[..., None] if codes.ndim == 2 else codes


def widened(mask: np.ndarray) -> np.ndarray:
    """``mask`` widened by one pixel in all eight directions (``binary_dilation`` with a 3x3 square, faster)."""
    p = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    p[1:-1, 1:-1] = mask
    rows = p[:-2] | p[1:-1] | p[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def _box_mean3(x: np.ndarray) -> np.ndarray:
    """Mean over each pixel's 3x3 neighbourhood (zeros beyond the edges)."""
    p = np.zeros((x.shape[0] + 2, x.shape[1] + 2), dtype=x.dtype)  # np.pad costs more than the sums
    p[1:-1, 1:-1] = x
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9.0


def _require_contrast(distance: np.ndarray) -> float:
    """The peak contrast; refuse the picture as blank when no stroke reaches MIN_CONTRAST.

    Judged on 3x3 means: a stroke two pixels wide keeps two thirds of its contrast there,
    while grain and sensor noise, however high their single-pixel peaks, average away."""
    # Around the strongest pixel first (the same sums as over the whole picture, there): a
    # stroke passes there, and only a picture that fails there is measured everywhere.
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    top, left = max(y - 1, 0), max(x - 1, 0)
    there = _box_mean3(distance[top:y + 2, left:x + 2])[y - top, x - left]
    if float(there) < MIN_CONTRAST * 2 / 3 and float(_box_mean3(distance).max()) < MIN_CONTRAST * 2 / 3:
        raise InputError("no_digit", "the image is blank: no ink stands out from the background", status=422)
    return float(distance[y, x])


def _distance(rgb: np.ndarray, ground: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """``_channel_max(np.abs(rgb - ground))`` (``ground`` one colour, one per pixel, or a list
    of its channels' planes), a channel at a time: numpy's arithmetic along an axis 3 long took
    ten times as long."""
    planes = ground if isinstance(ground, list) else [ground[..., k] for k in range(rgb.shape[-1])]
    return _largest([np.abs(rgb[..., k] - planes[k]) for k in range(rgb.shape[-1])])


def _channel_max(x: np.ndarray) -> np.ndarray:
    """``x.max(axis=-1)`` for ... x 3 (or ... x 1: grey), without numpy's slow reduction over a
    3-long axis."""
    return _largest([x[..., k] for k in range(x.shape[-1])])


def _largest(planes: list[np.ndarray]) -> np.ndarray:
    """The largest of one or three arrays, element by element."""
    return planes[0] if len(planes) == 1 else np.maximum(np.maximum(planes[0], planes[1]), planes[2])


def _local_ground(rgb: np.ndarray, not_ink: np.ndarray, codes: np.ndarray | None = None
                  ) -> np.ndarray | list[np.ndarray]:
    """The ground's colour at every pixel: medians of the non-ink pixels of a coarse grid of
    blocks, interpolated bilinearly (a list of the channels' planes), or one colour where the
    ground is flat. Blocks that are mostly ink take the global median.

    The medians are taken over every ``step``-th pixel in each direction (all of them up to
    GROUND_SAMPLE pixels a side): a median of thousands of ground pixels barely moves when
    three quarters are left out, and the picture's ink decision happens later, at full size.
    Given ``codes`` (``_codes``: ``rgb`` is ``codes / 255``), the medians come from counts of the
    256 levels (``_ground_by_levels``), the same values (this function 7.6 -> 2.8 ms on the
    bench's 1000x750 photo). A flat ground (most scans and crops) needs only the overall one."""
    h, w, c = rgb.shape
    step = max(1, min(h, w) // GROUND_SAMPLE)
    not_ink = not_ink[::step, ::step]
    if not not_ink.any():  # two-tone or tiny pictures: everything is "ink" at half the peak
        not_ink = np.ones_like(not_ink)
    n = int(np.clip(min(h, w) // GROUND_BLOCK, 1, GROUND_GRID))
    sh, sw = not_ink.shape
    rows = np.linspace(0, sh, n + 1).astype(int)
    cols = np.linspace(0, sw, n + 1).astype(int)
    if codes is not None:
        grid = _ground_by_levels(codes[::step, ::step], not_ink, rows, cols)
    else:
        grid = _ground_by_values(rgb[::step, ::step], not_ink, rows, cols)
    if grid.ndim == 1:  # flat
        return grid
    return [np.asarray(Image.fromarray(grid[..., k], mode="F").resize((w, h), Image.Resampling.BILINEAR))
            for k in range(c)]


def _ground_by_values(sampled: np.ndarray, not_ink: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``_local_ground``'s medians (one colour when flat, else an n x n x C grid) from float
    pixels (``sampled``: h x w x C), for the pictures ``_codes`` does not take."""
    planes = np.ascontiguousarray(sampled.transpose(2, 0, 1))  # medians along a contiguous axis are faster
    ground = planes[:, not_ink]
    overall = _medians(ground)
    n = len(rows) - 1
    # One block (the whole picture), or a flat ground with anti-aliased stroke edges (a browser
    # canvas): every block's median would be the overall one.
    if n == 1 or float((_channel_max(np.abs(ground - overall[:, None]).T) < 1.0 / 255).mean()) > FLAT_GROUND:
        return overall.astype(np.float32)
    grid = np.empty((n, n, sampled.shape[-1]), dtype=np.float32)
    for i in range(n):
        for j in range(n):
            keep = not_ink[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            grid[i, j] = (_medians(planes[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]][:, keep])
                          if keep.sum() > 0.25 * keep.size else overall)
    return grid


_LEVELS = np.arange(256, dtype=np.float32) / 255.0  # an 8-bit level's value, as _photo_ink reads it


def _ground_by_levels(levels: np.ndarray, not_ink: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``_ground_by_values`` for 8-bit ``levels`` (h x w x C uint8: the floats are levels / 255),
    the same values, from counts of the 256 levels: the ground's counts and, only where the
    ground is not flat, every block's in one more count. Ink pixels are counted in a bin of
    their own rather than picked out by the mask (numpy's boolean indexing took as long as all
    the rest)."""
    c = levels.shape[-1]
    n = len(rows) - 1
    # A channel at a time (arithmetic along an axis 3 long is slow), in 16 bits: a level, plus
    # 256 for the ground (then 256 x the block, the ink's bin last).
    channels = [levels[..., k].astype(np.uint16) for k in range(c)]
    ground = not_ink.astype(np.uint16) << 8
    counts = np.stack([np.bincount((x | ground).ravel(), minlength=512)[256:] for x in channels])
    overall = _counted_medians(counts)
    if n == 1:
        return overall
    # The share of the ground within a level of the overall median in every channel, from a
    # table of the levels that are.
    within = np.abs(_LEVELS[:, None] - overall) < 1.0 / 255
    close = within[levels[..., 0], 0]
    for k in range(1, c):
        close &= within[levels[..., k], k]
    if np.count_nonzero(close & not_ink) / np.count_nonzero(not_ink) > FLAT_GROUND:
        return overall
    block = (np.repeat(np.arange(n) * n, np.diff(rows))[:, None] + np.repeat(np.arange(n), np.diff(cols))[None, :])
    block[~not_ink] = n * n  # the ink's bin
    block = (block << 8).astype(np.uint16)
    counts = np.stack([np.bincount((x + block).ravel(), minlength=(n * n + 1) * 256)[:n * n * 256].reshape(n * n, 256)
                       for x in channels], axis=1)
    kept = counts[:, 0].sum(axis=1) > 0.25 * (np.diff(rows)[:, None] * np.diff(cols)[None, :]).ravel()
    return np.where(kept[:, None], _counted_medians(counts), overall).astype(np.float32).reshape(n, n, c)


def _counted_medians(counts: np.ndarray) -> np.ndarray:
    """Medians of 8-bit levels from their counts (... x 256), as ``_medians`` gives them for the
    levels / 255: the middle level, or the mean of the middle two (0 where nothing was counted)."""
    cum = counts.cumsum(axis=-1)
    n = cum[..., -1:]
    low = (cum > (n - 1) // 2).argmax(axis=-1)  # the middle level, or the lower of the middle two
    high = (cum > n // 2).argmax(axis=-1)
    return (_LEVELS[low] + _LEVELS[high]) / np.float32(2)


def _medians(x: np.ndarray) -> np.ndarray:
    """``np.median(x, axis=1)`` for a non-empty C x N float array, the same values, without
    its checks and reductions around the partition (they cost as much as the partition here)."""
    n = x.shape[1]
    half = n // 2
    if n % 2:
        return np.partition(x, half, axis=1)[:, half]
    part = np.partition(x, (half - 1, half), axis=1)
    return (part[:, half - 1] + part[:, half]) / x.dtype.type(2)


def _rgba_float(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB in [0, 1] as H x W x 3, and alpha as H x W x 1 when the image has one, for the
    pictures ``_codes`` does not take; 16-bit and float grey as H x W x 1."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float greyscale
        grey = np.asarray(img, dtype=np.float32)
        full = 65535.0 if img.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        return np.clip(grey / full, 0.0, 1.0)[..., None], None
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    return rgba[..., :3], (rgba[..., 3:] if has_alpha else None)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---------------------------------------------------------------- 3. the digit

_EIGHT = np.ones((3, 3), dtype=bool)  # pixels touching at a corner belong to one stroke


def runs(mask: np.ndarray, length: int, bridged: bool = False) -> np.ndarray:
    """The pixels of ``mask``'s horizontal runs at least ``length`` long, a line that steps a
    row up or down (tilted a little) counting as one run (each row with the one below);
    ``bridged``: a run may also have holes of one pixel (where a JPEG's pale line crosses another)."""
    near = mask.copy()
    near[:-1] |= mask[1:]  # (np.roll would join the last row to the first)
    if bridged:
        near[:, 1:-1] |= near[:, :-2] & near[:, 2:]
    out = np.zeros_like(mask)
    if length <= 0 or not (near.sum(axis=1) >= length).any():  # no row holds that much ink
        return out
    edges = np.diff(np.pad(near, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major: each row's starts and stops pair up in order
    stops = np.nonzero(edges == -1)[1]
    for y, x0, x1 in zip(rows, starts, stops):
        if x1 - x0 >= length:
            out[y, x0:x1] = True
    return out & mask


def line_pixels(found: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The full thickness of the lines whose runs (``runs``) are ``found``: the mask's pixels in
    the rows of each band of runs, in the runs' columns."""
    out = np.zeros_like(mask)
    for y0, y1 in bands(found.any(axis=1)):
        span = found[y0:y1].any(axis=0)
        out[y0:y1] = mask[y0:y1] & span
    return out


def bands(flags: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) spans of consecutive True in a 1-D array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _crossed(ruled: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pixels of horizontal ruled lines (and their rims) where ``mask`` has ink just above and
    just below the line, within a couple of columns (a slanted stroke): a stroke crossing it.
    (Vertical lines: call it with both transposed.)"""
    out = np.zeros_like(mask)
    for y0, y1 in bands(ruled.any(axis=1)):
        if y0 > 0 and y1 < mask.shape[0]:
            above, below = (ndimage.binary_dilation(mask[y], iterations=2) for y in (y0 - 1, y1))
            through = ndimage.binary_dilation(above & below & ruled[y0:y1].any(axis=0), iterations=2)
            out[y0 - 1:y1 + 1] |= through
    return out


def _along(ink: np.ndarray, ruled: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The pixels ``near`` pale horizontal ruled lines whose ink is far darker than the line's:
    strokes along the line (a 2's foot resting on a notebook's line). A line is pale when, in
    most of its columns, it is PALE_LINE of the strongest ink or fainter; ink DARKER of the way
    from it to the strongest is a stroke. (Vertical lines: call it with all three transposed.)"""
    out = np.zeros_like(ruled)
    for y0, y1 in bands(ruled.any(axis=1)):
        cols = ruled[y0:y1].any(axis=0)
        level = float(np.median(ink[y0:y1, cols].max(axis=0)))  # the line's own strength, column by column
        if level <= PALE_LINE:
            rows = slice(max(y0 - 1, 0), y1 + 1)  # with the rims
            out[rows] |= near[rows] & (ink[rows] > level + DARKER * (1.0 - level))
    return out


def erase_lines(ink: np.ndarray, mask: np.ndarray, across: np.ndarray, down: np.ndarray) -> np.ndarray:
    """``ink`` with the printed lines ``across`` (horizontal) and ``down`` (vertical), pixel masks
    of ``mask``, and their rims set to 0, but where a stroke crosses a line: ink other than the
    lines on both sides of it (``_crossed``), where the line's pixels stay and the stroke goes on;
    and where a stroke runs along a pale line, far darker than it (``_along``)."""
    wide = [ndimage.binary_dilation(x, structure=_EIGHT) for x in (across, down)]
    kept = _crossed(across, mask & ~wide[1]) | _crossed(down.T, (mask & ~wide[0]).T).T
    kept |= _along(ink, across, wide[0]) | _along(ink.T, down.T, wide[1].T).T
    out = ink.copy()
    out[(wide[0] | wide[1]) & ~kept] = 0.0
    return out


def without_frame(ink: np.ndarray) -> np.ndarray:
    """A digit written in a printed box (a form's cell) or on a line, without the box or the
    line. Among straight lines as long as FRAME of the ink's width (across) or height (down)
    and MIN_LINE pixels, in the outer FRAME_EDGE of it, three sides or more make a box (a 7's
    bar and a straight stem are two) when its lines reach past the ink inside by BOX_BEYOND of
    its width each side, and a line at the bottom is ruled paper or an underline when it reaches
    past the rest of the ink by LINE_BEYOND each side (a thick 0's arcs and a 2's foot do not);
    those lines go (``erase_lines``). ``ink`` itself when it holds neither."""
    mask = ink > FRAME_LEVEL
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return ink
    (y0, y1), (x0, x1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
    long_x, long_y = max(int(FRAME * (x1 - x0)), MIN_LINE), max(int(FRAME * (y1 - y0)), MIN_LINE)
    # First, cheaply, whether the sides could be there at all (most digits: no): a side's line
    # needs that much ink in two neighbouring rows (columns) of its edge of the ink.
    row_ink, col_ink = mask[y0:y1].sum(axis=1), mask[:, x0:x1].sum(axis=0)
    pairs_y, pairs_x = row_ink[:-1] + row_ink[1:], col_ink[:-1] + col_ink[1:]
    ey, ex = max(int(np.ceil(FRAME_EDGE * (y1 - y0))), 1), max(int(np.ceil(FRAME_EDGE * (x1 - x0))), 1)
    top, bottom = bool((pairs_y[:ey] >= long_x).any()), bool((pairs_y[-ey:] >= long_x).any())
    left, right = bool((pairs_x[:ex] >= long_y).any()), bool((pairs_x[-ex:] >= long_y).any())
    if not bottom and not (top and left and right):
        return ink
    across = runs(mask, long_x)
    down = runs(mask.T, long_y).T
    if not across.any() and not down.any():
        return ink
    edge_y, edge_x = FRAME_EDGE * (y1 - y0), FRAME_EDGE * (x1 - x0)
    sides = [np.zeros_like(mask) for _ in range(4)]  # top, bottom, left, right
    for a, b in bands(across.any(axis=1)):
        k = 0 if b <= y0 + edge_y else 1 if a >= y1 - edge_y else None
        if k is not None:
            sides[k][a:b] = across[a:b]
    for a, b in bands(down.any(axis=0)):
        k = 2 if b <= x0 + edge_x else 3 if a >= x1 - edge_x else None
        if k is not None:
            sides[k][:, a:b] = down[:, a:b]
    if sum(side.any() for side in sides) >= 3:
        across = line_pixels(sides[0] | sides[1], mask)
        down = line_pixels((sides[2] | sides[3]).T, mask.T).T
        if _reaches_past(mask, across, down, BOX_BEYOND):
            return erase_lines(ink, mask, across, down)
    # a line under the digit that reaches well beyond it: ruled paper, an underline drawn into
    # the digit's foot (a 2's foot is about as wide as the 2; a 7's bar, over a narrower stem, is
    # at the top)
    if sides[1].any():
        line, none = line_pixels(sides[1], mask), np.zeros_like(mask)
        if _reaches_past(mask, line, none, LINE_BEYOND):
            return erase_lines(ink, mask, line, none)
    return ink


def _reaches_past(mask: np.ndarray, across: np.ndarray, down: np.ndarray, share: float) -> bool:
    """Whether the lines ``across`` reach past the ink that ``across`` and ``down`` leave of
    ``mask``, on both sides, by ``share`` of its width: a box or a ruled line, not a round digit's
    own thick arcs or a 2's foot."""
    lines = ndimage.binary_dilation(across | down, structure=_EIGHT)
    rest, span = np.flatnonzero((mask & ~lines).any(axis=0)), np.flatnonzero(across.any(axis=0))
    if rest.size == 0 or span.size == 0:
        return False
    margin = max(1.0, share * (rest[-1] - rest[0] + 1))
    return span[0] <= rest[0] - margin and span[-1] >= rest[-1] + margin


def find_digit(ink: np.ndarray, frame: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``ink`` with everything that is not the digit set to 0. ``frame`` (top, left, height,
    width): ``ink`` is that part of a picture of that size whose pixels beyond it are all 0 (the
    picture's border and centre still count as the picture's).

    The strokes (ink above CORE; their faint rims and the paper between them would join a
    digit to its neighbours) fall into connected components. The main one is the heaviest,
    with components cut by the picture's border counted at a third of their weight and
    off-centre ones at less, as people centre what they send. Another component joins the
    digit when it lies mostly within the digit's horizontal span (widened by BESIDE) no
    further than NEAR of its height above or below, or when it is within NEAR of its size
    and partly within that span (NEXT_TO); a component cut by the border only when it lies
    within the span (OVERLAP_CUT) or touches the digit (OVERLAP_TOUCHING); a dot (small, and
    lighter than DOT of the main one) only right above or below the digit or touching it
    (TOUCH: a broken stroke), never beside it (a separator). The digit's box grows by what
    joins and is judged again, up to three rounds. When the picture's centre lies well inside
    the main component (CENTRED: a crop made around that digit), a part wholly to its left or
    right and at least NEIGHBOUR of its height never joins: the neighbouring digit, even close
    by. A flat part running from the left border to the right (a ruled line of the form) is
    neither the main component nor joins it. Dropped: fragments of the neighbouring
    digits cut by the border, whole neighbours beside the digit, dots and commas, dashes
    beside the digit and underlines below it (wide and flat: UNDERLINE), and specks of paper
    texture away from it. Strokes drawn apart, like the bar of a 5 or of a 7 or the two
    strokes of a 4, lie within or next to the digit and stay. Clutter (more than CLUTTER
    components, the digit holding under half the ink) is left whole: noise, not a digit."""
    box = ink_box(ink > 0)
    part = ink if box is None else ink[box]
    # Components of the stroke cores: the faint rims and paper texture between strokes would
    # join a digit to its neighbours and to the grain around it.
    labels, count = ndimage.label(part > CORE, structure=_EIGHT)
    if count <= 1:
        return ink
    top, left, h, w = (0, 0) + ink.shape if frame is None else frame
    dy, dx = (top, left) if box is None else (top + box[0].start, left + box[1].start)
    boxes = ndimage.find_objects(labels)
    mass = ndimage.sum_labels(part, labels, np.arange(1, count + 1))
    y0 = np.array([b[0].start for b in boxes]) + dy
    y1 = np.array([b[0].stop for b in boxes]) + dy
    x0 = np.array([b[1].start for b in boxes]) + dx
    x1 = np.array([b[1].stop for b in boxes]) + dx
    cut = (y0 == 0) | (x0 == 0) | (y1 == h) | (x1 == w)
    widths, heights = x1 - x0, y1 - y0
    centre_y = (y0 + y1) / 2
    flat = widths >= UNDERLINE * heights
    # A flat mark running from the left border to the right one is a ruled line of the form
    # (the amount field's line, above or below the digit): never the digit, never part of it.
    ruled = flat & (x0 == 0) & (x1 == w)
    off_centre = np.abs((x0 + x1) / 2 - w / 2) / (w / 2) + np.abs((y0 + y1) / 2 - h / 2) / (h / 2)
    main = int(np.argmax(mass * np.where(cut, 1 / 3, 1.0) * (1.0 - 0.25 * off_centre) * ~ruled))
    keep = np.zeros(count, dtype=bool)
    keep[main] = True
    # The digit's box grows by what joins it, and is judged again: the pieces of a stroke
    # broken twice join one after the other. Three rounds are enough for MNIST's most broken.
    my0, my1, mx0, mx1 = y0[main], y1[main], x0[main], x1[main]
    # A crop made around one digit has the picture's centre well inside that digit: then a
    # tall stroke wholly to its left or right is the neighbouring digit, whole or cut.
    centred = mx0 + CENTRED * (mx1 - mx0) <= w / 2 <= mx1 - CENTRED * (mx1 - mx0)
    for _ in range(3):
        mh, mw = my1 - my0, mx1 - mx0
        size = max(mh, mw)
        span0, span1 = mx0 - BESIDE * mw, mx1 + BESIDE * mw
        overlap = np.clip(np.minimum(x1, span1) - np.maximum(x0, span0), 0, None) / widths
        gap_y = np.maximum(np.maximum(y0 - my1, my0 - y1), 0)
        gap_x = np.maximum(np.maximum(x0 - mx1, mx0 - x1), 0)
        gap = np.maximum(gap_y, gap_x)  # between the boxes
        dot = (mass < DOT * mass[main]) & (np.maximum(widths, heights) < 0.3 * size)
        # Wider than the digit (or running off the picture) and low: an underline, not a 5's or a 2's foot.
        underline = flat & (centre_y > my0 + 0.85 * mh) & (cut | ((x0 <= mx0) & (x1 >= mx1)))
        dash = flat & (overlap < OVERLAP) & (centre_y > my0 + 0.25 * mh)  # beside, at mid height or lower
        below_or_above = (overlap >= np.where(cut, OVERLAP_CUT, OVERLAP)) & (gap_y <= NEAR * mh)
        touching = gap <= max(1.0, TOUCH * size)
        grown = np.where(cut, ~dot & (below_or_above | ((gap == 0) & (overlap >= OVERLAP_TOUCHING))),
                         np.where(dot, touching | (below_or_above & (gap_x == 0)),
                                  below_or_above | ((gap <= NEAR * size) & (overlap >= NEXT_TO))))
        neighbour = centred & ((x0 >= mx1) | (x1 <= mx0)) & (heights >= NEIGHBOUR * mh)
        grown = (grown & ~underline & ~dash & ~ruled & ~neighbour) | keep
        if (grown == keep).all():
            break
        keep = grown
        my0, my1, mx0, mx1 = y0[keep].min(), y1[keep].max(), x0[keep].min(), x1[keep].max()
    if keep.all() and not (part > 0).sum() > (labels > 0).sum() * 3:
        return ink
    if count > CLUTTER and mass[keep].sum() < 0.5 * mass.sum():
        # Many marks and no one shape holding most of the ink: noise or a texture, not a digit
        # among fragments. Left whole, so that it looks like what it is (unlike_a_digit).
        return ink
    # The kept cores with the rims around them (two pixels: a stroke's anti-aliased edge).
    digit = widened(widened(np.concatenate(([False], keep))[labels]))
    out = np.zeros_like(ink)
    out[(slice(None), slice(None)) if box is None else box] = np.where(digit, part, np.float32(0.0))
    return out


# ---------------------------------------------------------------- 4. MNIST form

def to_mnist(ink: np.ndarray) -> np.ndarray:
    """Keep the digit's ink, crop, normalise stroke width, fit into 20x20 and centre by mass
    in 28x28 (float32)."""
    # The box holding the ink (with a pixel of ground round it) is all that the steps below
    # look at; on a canvas, a third of the picture.
    box = ink_box(ink > 0)
    frame = None if box is None else (box[0].start, box[1].start) + ink.shape
    ink = cropped(find_digit(without_frame(ink if box is None else ink[box]), frame))
    if ink is None:
        raise InputError("no_digit", "the image is blank: no ink stands out from the background", status=422)
    ink = _match_stroke_width(soften_small(ink, max(ink.shape)))
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # BOX shrinks without losing thin strokes; a digit enlarged by more than a quarter (sent
    # smaller than 16 px) stays sharper bicubic (MNIST shrunk to 14x14: 96.5% -> 97.4%, first 3,000)
    resample = (Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC if scale > 1.25
                else Image.Resampling.BILINEAR)
    small = np.asarray(Image.fromarray(ink, mode="F").resize(size, resample), dtype=np.float32)
    small = np.clip(small / max(float(small.max()), 1e-6), 0.0, 1.0)
    return _centre_by_mass(small)


def cropped(ink: np.ndarray) -> np.ndarray | None:
    """``ink`` cut to the bounding box of its non-zero pixels (in to_mnist: ink_map has zeroed
    the ground and the specks, find_digit the rest); None when it has none."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the inked area over its outline's length."""
    mask = ink > 0.5
    area = np.count_nonzero(mask)
    if area == 0:
        return 0.0
    # The edges between ink and ground, the picture's border counting as ground (as np.pad would).
    outline = (np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
               + np.count_nonzero(mask[:, 0]) + np.count_nonzero(mask[:, -1])
               + np.count_nonzero(mask[0]) + np.count_nonzero(mask[-1]))
    return 2.0 * area / outline


def soften_small(ink: np.ndarray, length: int) -> np.ndarray:
    """Ink drawn small (``length``, the size that is scaled to the network's, under FINE_SIDE)
    and hard-edged (a bilevel picture, every pixel ink or ground: a thresholded scan, a fax, an
    aliased pen), enlarged to FINE_SIDE: scaled down from the enlarged copy, its strokes get
    the soft edges MNIST's have, where a 20-px digit resized to 20 px kept its staircases
    (thresholded MNIST digits: 92.5% read, against 98.7% so). Other ink as it is."""
    if length >= FINE_SIDE:
        return ink
    inked = ink[ink > 0.05]
    if inked.size == 0 or float(((inked > 0.2) & (inked < 0.8)).mean()) >= BILEVEL:
        return ink
    factor = -(-FINE_SIDE // length)
    h, w = ink.shape
    return np.asarray(Image.fromarray(ink, mode="F").resize((w * factor, h * factor), Image.Resampling.BILINEAR),
                      dtype=np.float32)


def _match_stroke_width(ink: np.ndarray) -> np.ndarray:
    """Thicken strokes that would come out thinner than MNIST's once the digit is 20 px."""
    scale = BOX / max(ink.shape)
    width = stroke_width(ink)
    if width == 0 or width * scale >= THIN_STROKE:
        return ink
    wanted = STROKE / scale  # the source width that becomes MNIST's width after scaling
    radius = max(1, round((wanted - width) / 2))
    return _dilate(np.pad(ink, radius), radius)


def _dilate(ink: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation by a (2r+1)-square, separable: max over shifts along each axis."""
    out = ink
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        out = np.max([np.take(padded, np.arange(k, k + n), axis=axis) for k in range(2 * radius + 1)], axis=0)
    return out


def _centre_by_mass(small: np.ndarray) -> np.ndarray:
    h, w = small.shape
    mass = float(small.sum())
    cy = float((small.sum(axis=1) * np.arange(h)).sum()) / mass
    cx = float((small.sum(axis=0) * np.arange(w)).sum()) / mass
    top = min(max(int(round(CENTRE - cy)), 0), SIZE - h)
    left = min(max(int(round(CENTRE - cx)), 0), SIZE - w)
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top:top + h, left:left + w] = small
    return out


# ---------------------------------------------------------------- all together

def preprocess(payload: bytes | str | Image.Image) -> np.ndarray:
    """Any accepted input to the network's 28x28 float32 image in [0, 1]."""
    img = payload if isinstance(payload, Image.Image) else decode(payload)
    return to_mnist(ink_view(img)[0])


def unlike_a_digit(image: np.ndarray) -> str | None:
    """Why a preprocessed 28x28 image cannot be a handwritten digit, or None if it can be."""
    coverage = float((image > 0.5).mean())
    if coverage > MAX_COVERAGE:
        return (f"ink covers {coverage:.0%} of the frame; a handwritten digit covers at most "
                f"{MAX_COVERAGE:.0%}: this looks like noise, a texture or a filled shape")
    # A dash, a minus sign or an equals sign (whose bars digit-finding keeps one of) was read
    # as a 1 at 93%. No digit of MNIST (its 70,000 as stored), of the sources' development
    # splits or of the card's plainer forms comes out 3 times wider than tall here; two USPS
    # 5s whose body digit-finding lost, leaving the bar, do, and are refused too.
    ink = cropped(image)
    if ink is not None and ink.shape[1] >= MAX_FLAT * ink.shape[0]:
        return ("the ink is a flat stroke, at least 3 times wider than tall: this looks like a dash "
                "or a line, not a digit")
    # An equals sign whose bars digit-finding keeps both (10 of the card's 34) and a full stop
    # drawn large (3 of 39) were read as a 1 at 0.52-0.90. Of MNIST's 60,000 training images
    # and the sources' 55,000 (as served), one stretched plain digit is all flat bars, and three
    # plain ones of 15,386 (none of the others) reach ROUND_DOT: the largest disc in a stroke is
    # the pen's width. (The disc's radius is the distance transform's, plus half a pixel.)
    mask = image > 0.5
    labels, count = ndimage.label(mask, structure=_EIGHT)
    boxes = ndimage.find_objects(labels)
    if count >= 2 and all(b[1].stop - b[1].start >= MAX_FLAT * (b[0].stop - b[0].start) for b in boxes):
        return (f"the ink is {count} flat strokes, each at least 3 times wider than tall: this looks like "
                "an equals sign or dashes, not a digit")
    radius = float(ndimage.distance_transform_edt(np.pad(mask, 1)).max()) + 0.5
    if count and np.pi * radius ** 2 >= ROUND_DOT * mask.sum():
        return "the ink is one round dot: this looks like a full stop or a blot, not a digit"
    return None


def to_png(image: np.ndarray) -> bytes:
    """A [0, 1] greyscale array as PNG bytes (what the model saw, for people to check)."""
    return png_bytes((np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def png_bytes(pixels: np.ndarray) -> bytes:
    """A 2-D uint8 array as an 8-bit greyscale PNG: unfiltered rows, deflate level 1.

    Written by hand because every answer carries up to six small PNGs: with zlib this was 3-4
    times faster than Pillow's encoder for them, and ISA-L's deflate is about 8 times faster
    than zlib's on an activation grid; the files come out a little smaller."""
    h, w = pixels.shape
    rows = np.zeros((h, w + 1), dtype=np.uint8)  # each row starts with filter type 0 (none)
    rows[:, 1:] = pixels
    header = _IHDR.pack(w, h, 8, 0, 0, 0, 0)  # 8-bit, greyscale, no interlace
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", _deflate(rows.tobytes(), 1)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", _png_crc(kind, data))


def _png_crc(kind: bytes, data: bytes | memoryview) -> int:
    """A PNG chunk's CRC: over its type and its data."""
    return zlib.crc32(data, zlib.crc32(kind))


def to_png_base64(image: np.ndarray) -> str:
    return base64.b64encode(to_png(image)).decode("ascii")
