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
