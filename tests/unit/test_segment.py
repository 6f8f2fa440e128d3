"""The segmenter on numbers built from the committed drawn digits: digits found left to right,
touching pairs cut, broken strokes kept together, separators and blanks dropped."""
from __future__ import annotations

import numpy as np
import pytest

from model.preprocess import InputError, decode, ink_map
from model.segment import choose, segment, separate_digits
from tests.conftest import fixture_bytes, number_png


def read(png: bytes, handler) -> str:
    """The string ``choose`` keeps, with the shipped network's probabilities."""
    seg = segment(png)
    probs = handler.predict(np.stack(seg.crops), False)["probabilities"]
    return "".join(str(int(p.argmax())) for _, p in choose(seg, probs))


@pytest.fixture(scope="module")
def handler():
    from serving import local
    return local.load_handler()


def test_separate_digits_are_found_left_to_right_with_their_boxes():
    png, lefts = number_png("2931", 30)
    seg = segment(png)
    assert [len(s.alternatives[0]) for s in seg.slots] == [1, 1, 1, 1]
    boxes = [s.alternatives[0][0].box for s in seg.slots]
    width, height = seg.size
    for (x, y, w, h), left in zip(boxes, lefts):
        assert abs(x - left) <= 3 and 0 <= y and y + h <= height and x + w <= width
        assert h > 100  # a drawn digit is about 200 canvas pixels tall


def test_the_network_reads_each_digit(handler):
    assert read(number_png("2931", 30)[0], handler) == "2931"
    assert read(number_png("0123456789", 20)[0], handler) == "0123456789"


def test_a_touching_pair_is_cut(handler):
    png, _ = number_png("2931", [30, -6, 30])  # the 9 and the 3 overlap: one shape
    assert len(segment(png).slots) == 3  # one part holds two digits ...
    assert read(png, handler) == "2931"  # ... and the kept cut reads both


def test_dots_and_dashes_are_not_digits(handler):
    assert read(number_png("4561", 25, {1: "dot"})[0], handler) == "4561"
    assert read(number_png("90210", 20, {2: "dash"})[0], handler) == "90210"


def test_blank_and_marks_only_are_no_digit():
    from PIL import Image
    from tests.conftest import encode
    blank = encode(Image.new("RGBA", (600, 280)), "PNG")
    with pytest.raises(InputError) as e:
        segment(blank)
    assert e.value.code == "no_digit" and e.value.status == 422


def test_separate_digits_counts_numbers_not_single_digits():
    assert separate_digits(ink_map(decode(number_png("2931", 30)[0]))) == 4
    for d in range(10):
        assert separate_digits(ink_map(decode(fixture_bytes(f"drawn_{d}.png")))) <= 1, d
        assert separate_digits(ink_map(decode(fixture_bytes(f"canvas_{d}.png")))) <= 1, d
