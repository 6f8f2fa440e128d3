"""The digit-sized parts of a number's ink: how ``digits`` tells a number from a digit. (The
strip the numbers network reads is tested in test_number_network.py.)"""
from __future__ import annotations

from model.preprocess import decode, ink_map
from model.segment import LEVEL, MAX_INK, digit_parts, separate_digits
from tests.conftest import cropped_number_png, fixture_bytes, number_png, stacked_numbers_png


def test_digit_parts_are_found_left_to_right_and_marks_are_not_parts():
    png, lefts = number_png("4561", 25, {1: "dot"})
    picture = decode(png)
    ink = ink_map(picture)  # shrunk to at most 512 pixels wide
    groups, height = digit_parts(ink)
    assert len(groups) == 4  # the full stop after the 5 is a mark
    scale = picture.width / ink.shape[1]
    assert [abs(g.x0 * scale - left) <= 4 for g, left in zip(groups, lefts)] == [True] * 4
    assert 0.6 * ink.shape[0] < height < ink.shape[0]  # the drawn digits fill most of the canvas's height


def test_separate_digits_counts_numbers_not_single_digits():
    assert separate_digits(ink_map(decode(number_png("2931", 30)[0]))) == (4, 1)
    for d in range(10):
        assert separate_digits(ink_map(decode(fixture_bytes(f"drawn_{d}.png"))))[0] <= 1, d
        assert separate_digits(ink_map(decode(fixture_bytes(f"canvas_{d}.png"))))[0] <= 1, d


def test_a_number_cropped_to_its_ink_keeps_its_digits():
    """Cropped close, a drawn number's full-strength strokes cover more than MAX_INK of the
    picture: all of that ink is strokes (it was once thresholded above its own top value, and
    the number refused as holding no digit)."""
    for gaps, heavier in ((10, 0), (10, 4), (30, 0)):
        ink = ink_map(decode(cropped_number_png("2931", gaps, heavier)))
        assert (ink > LEVEL).mean() > MAX_INK
        assert len(digit_parts(ink)[0]) == 4, (gaps, heavier)
    assert separate_digits(ink) == (4, 1)  # 30 pixels apart: for digits, a number


def test_lines_of_digits_are_told_apart_and_a_thick_digit_is_one_line():
    """Two lines stay two: their digits are not merged into stacked pairs (which once read as one
    wide digit). A single digit's strokes, however thick or broken, are one line."""
    ink = ink_map(decode(stacked_numbers_png("2931", "40517")))
    groups, _ = digit_parts(ink)
    assert [g.line for g in groups] == [0] * 4 + [1] * 5
    assert all(g.y1 <= h.y0 for g in groups[:4] for h in groups[4:])  # the first line above the second
    assert separate_digits(ink) == (9, 2)
    for name in [f"{kind}_{d}.png" for kind in ("mnist", "canvas", "drawn") for d in range(10)]:
        assert {g.line for g in digit_parts(ink_map(decode(fixture_bytes(name))))[0]} == {0}, name
