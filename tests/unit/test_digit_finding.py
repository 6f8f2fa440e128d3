"""model.preprocess.find_digit on real-looking crops: the digit stays, what surrounds it goes.

The fixtures crop_<d>.jpg (tests/fixtures/make_crop_fixtures.py, synthetic) hold a digit with
fragments of its neighbours cut by the crop's borders, a separator dot beside it, printed
guilloche and paper grain, as a digit cropped from a cheque amount."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from model.preprocess import _box_mean3, find_digit, ink_map, preprocess
from serving import local
from tests.conftest import SHIPPED_MODEL, encode, fixture_bytes
from tests.fixtures.make_crop_fixtures import DIGITS, HEIGHT, WIDTH


def clean(digit: str) -> np.ndarray:
    """The same digit, pen and paper colour without neighbours, dot, guilloche or grain."""
    from tests.fixtures.make_crop_fixtures import SCALE, STROKES, _draw
    ink = Image.new("L", (WIDTH, HEIGHT), 0)
    _draw(ink, STROKES[digit], WIDTH / 2 - 140 * SCALE, 2, 6)
    a = np.asarray(ink.filter(ImageFilter.GaussianBlur(0.7)), np.float32)[..., None] / 255
    rgb = np.array([0.93, 0.92, 0.86]) * (1 - a) + np.array([0.12, 0.13, 0.30]) * a
    return preprocess(Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)))


@pytest.mark.parametrize("digit", DIGITS)
def test_the_digit_is_found_among_fragments_a_dot_and_texture(digit):
    found = preprocess(fixture_bytes(f"crop_{digit}.jpg"))
    reference = clean(digit)
    # Alike up to a pixel's shift of thin strokes (compared blurred over 3x3).
    assert np.corrcoef(_box_mean3(found).ravel(), _box_mean3(reference).ravel())[0, 1] > 0.9
    # Nothing beside the digit stretched the crop: the ink spans the same columns as alone.
    cols = lambda x: np.flatnonzero(x.max(0) > 0.3)  # noqa: E731
    assert abs(len(cols(found)) - len(cols(reference))) <= 2


def test_the_shipped_model_reads_the_crops():
    handler = local.load_handler(SHIPPED_MODEL)
    results, _ = local.handle(handler, [{"body": fixture_bytes(f"crop_{d}.jpg")} for d in DIGITS],
                              {"X-Activations": "off"})
    assert [(status, answer["digit"]) for status, answer in results] == [(200, int(d)) for d in DIGITS], results


def _canvas(*shapes) -> Image.Image:
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for kind, box, width in shapes:
        getattr(draw, kind)(box, fill=(20, 20, 20, 255), width=width)
    return img


def test_strokes_drawn_apart_stay_part_of_the_digit():
    """A 4 in two strokes, a 5 with its bar lifted off, a 7 with a separate crossbar."""
    four = _canvas(("line", [(150, 40), (70, 170), (200, 170)], 14), ("line", [(165, 90), (165, 250)], 14))
    five = _canvas(("line", [(100, 60), (100, 130), (160, 130), (175, 180), (150, 230), (95, 225)], 14),
                   ("line", [(112, 45), (200, 45)], 14))
    seven = _canvas(("line", [(70, 40), (210, 40), (120, 250)], 14), ("line", [(110, 150), (200, 150)], 14))
    for img in (four, five, seven):
        ink = ink_map(img)
        assert (find_digit(ink) == ink).all()


def test_an_underline_and_a_dash_beside_are_dropped():
    one = [("line", [(140, 40), (140, 200)], 14)]
    alone = preprocess(encode(_canvas(*one), "PNG"))
    underlined = preprocess(encode(_canvas(*one, ("line", [(60, 230), (230, 232)], 10)), "PNG"))
    dashed = preprocess(encode(_canvas(*one, ("line", [(190, 150), (250, 150)], 10)), "PNG"))
    np.testing.assert_allclose(underlined, alone, atol=1e-6)
    np.testing.assert_allclose(dashed, alone, atol=1e-6)


def _scan(*shapes, size=(220, 130)) -> bytes:
    """Dark ink on white paper, as a crop of a scan (no transparency)."""
    img = Image.new("RGB", size, (245, 243, 236))
    draw = ImageDraw.Draw(img)
    for kind, box, width in shapes:
        getattr(draw, kind)(box, fill=(25, 25, 60) if kind == "line" else None,
                            **({"outline": (25, 25, 60)} if kind == "ellipse" else {}), width=width)
    return encode(img, "PNG")


ZERO = ("ellipse", [80, 20, 140, 110], 8)  # the digit the crop was made around: its centre is the picture's


def test_a_whole_neighbour_beside_the_digit_is_dropped():
    """A crop around the 0 of "10" or "05": the neighbour lies wholly inside the crop, beside."""
    alone = preprocess(_scan(ZERO))
    for neighbour in (("line", [(70, 22), (70, 110)], 8), ("line", [(152, 25), (180, 25), (160, 108)], 8)):
        np.testing.assert_allclose(preprocess(_scan(ZERO, neighbour)), alone, atol=1e-6)


def test_a_ruled_line_across_the_crop_is_dropped():
    """The printed line of an amount field, above or below the digit, from border to border."""
    tight = ("ellipse", [30, 20, 100, 110], 8)  # a tight crop: the line lies mostly above or below the digit
    alone = preprocess(_scan(tight, size=(130, 130)))
    for y in (13, 117):
        lined = _scan(tight, ("line", [(0, y), (129, y)], 3), size=(130, 130))
        np.testing.assert_allclose(preprocess(lined), alone, atol=1e-6)


def test_a_digit_drawn_off_centre_keeps_its_strokes_drawn_apart():
    """On a canvas the digit can be anywhere: a 4 in two strokes away from the centre stays whole."""
    four = _canvas(("line", [(60, 20), (15, 100), (95, 100)], 10), ("line", [(75, 45), (75, 140)], 10))
    ink = ink_map(four)
    assert (find_digit(ink) == ink).all()
