"""The digit-sized parts of a number's ink: how ``digits`` tells a number from a digit. (The
strip the numbers network reads is tested in test_number_network.py.)"""
from __future__ import annotations

import numpy as np
from PIL import Image

from model.preprocess import decode, ink_map
from model.segment import LEVEL, MAX_INK, digit_parts, separate_digits, skew, strip, without_rules
from tests.conftest import (boxed_number_png, cropped_number_png, fixture_bytes, needs_shared_datasets, number_png,
                            stacked_numbers_png, turned_number_png)


def test_digit_parts_are_found_left_to_right_and_marks_are_not_parts():
    png, lefts = number_png("4561", 25, {1: "dot"})
    picture = decode(png)
    ink = ink_map(picture)  # shrunk to work_side (at most 1024 pixels wide)
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


def test_a_string_written_at_an_angle_is_measured_and_a_level_one_is_left_alone():
    """``skew`` gives the turn that makes the string level: minus the angle it was written at
    (within 4 degrees: the drawing's own feet and tops are not level, its 7 reaches lower)."""
    for text, degrees in (("40517", 12), ("40517", -12), ("40517", 20), ("2931", 20), ("2931", -25)):
        ink = ink_map(decode(turned_number_png(text, degrees)[0]))
        groups, height = digit_parts(ink, flat=True)
        assert abs(skew(groups, ink.shape, height) + degrees) < 4, (text, degrees)
    for png in (number_png("40517", 30)[0], number_png("2931", [30, -6, 30])[0], cropped_number_png("2931")):
        ink = ink_map(decode(png))
        groups, height = digit_parts(ink, flat=True)
        assert skew(groups, ink.shape, height) == 0.0
    for d in range(10):  # a lone digit is too short to tell a line's angle from
        ink = ink_map(decode(fixture_bytes(f"drawn_{d}.png")))
        groups, height = digit_parts(ink, flat=True)
        assert skew(groups, ink.shape, height) == 0.0, d


def test_the_strip_of_a_turned_string_is_level_and_its_boxes_are_in_the_picture_sent():
    level = strip(number_png("40517", 30)[0])
    png, (degrees, cx, cy) = turned_number_png("40517", 15)
    turned = strip(png)
    assert turned.turn is not None and level.turn is None
    assert abs(turned.image.shape[1] - level.image.shape[1]) <= 0.1 * level.image.shape[1]  # not a tall band squeezed
    width, height = decode(png).size
    centres = []
    for k in range(5):  # fifths of the strip: one digit each
        x, y, w, h = turned.box(k * turned.image.shape[1] / 5, (k + 1) * turned.image.shape[1] / 5)
        assert 0 <= x and 0 <= y and x + w <= width + 1 and y + h <= height + 1
        centres.append((x + w / 2, y + h / 2))
    assert [c[0] for c in centres] == sorted(c[0] for c in centres)
    assert [c[1] for c in centres] == sorted((c[1] for c in centres), reverse=True)  # climbing: each higher


def test_a_forms_printed_cells_are_taken_out_and_a_stroke_across_a_line_goes_on():
    png, cells = boxed_number_png("40517", {4: 60})  # the 7 reaches through the field's bottom line
    picture = decode(png)
    ink = ink_map(picture)
    scale = ink.shape[1] / picture.width
    before, height = digit_parts(ink, flat=True)
    assert len(before) < 5  # the cells' lines join the digits into one shape
    out = without_rules(ink, height)
    groups, _ = digit_parts(out, flat=True)
    assert len(groups) == 5
    for g, (left, right) in zip(groups, cells):
        assert left * scale - 2 <= g.x0 and g.x1 <= right * scale + 2  # each digit in its cell, no line with it
    bottom_line = 306 * scale
    assert groups[4].y0 < bottom_line < groups[4].y1 - 10 * scale  # the 7 is one part across the line
    assert (out[:int(8 * scale)] <= LEVEL).all()  # above the first digit: nothing left of the top line
    for png in (number_png("40517", 30)[0], cropped_number_png("2931"), number_png("4561", 25, {1: "dot"})[0]):
        ink = ink_map(decode(png))
        assert without_rules(ink, digit_parts(ink, flat=True)[1]) is ink  # no printed lines: as it was


@needs_shared_datasets
def test_real_cheque_amounts_keep_their_digits_when_printed_lines_are_taken_out():
    """A cheque's guilloche and printed frame are not a form's cells: every real amount of the
    first 400 of ORAND-CAR-A's training split still gives a strip (when the pattern's fine lines
    were taken for ruled lines a digit apart, two of them lost all their ink: 422)."""
    from training.sources import load_orand, split

    cheques = load_orand()
    train, _ = split("orand", len(cheques))
    for i in train[:400]:
        assert strip(cheques[i].image.read_bytes()).image.max() > 0.5, i


def test_marks_beside_the_digits_are_kept_with_their_kind_but_not_a_bar_up_high_or_a_cut_fragment():
    """The strip keeps the separators it finds level with the digits, left to right (the text
    leaves them out): a pen's dot on the baseline is a "dot", a short bar at mid height a "dash".
    A bar as high as a 5's or a 7's top is only a "mark", and a fragment cut by the picture's
    border (a crop's piece of the next digit) is none."""
    import io

    import numpy as np
    from PIL import Image

    from tests.conftest import encode

    png, lefts = number_png("2931", 40, {0: "tap", 1: "dash"})
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3].copy()
    assert [m.kind for m in strip(png, marks=True).marks] == ["dot", "dash"]
    bar = lefts[3] - 34
    alpha[48:58, bar:bar + 24] = 255  # a bar in the gap before the 1, level with the digits' tops
    alpha[196:220, -20:] = 255  # a neighbour's fragment cut by the right border, on the baseline's half
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    marks = strip(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), marks=True).marks
    assert [m.kind for m in marks] == ["dot", "dash", "mark"]
    assert marks[2].box[0] < bar + 24 and bar < marks[2].box[0] + marks[2].box[2]
    assert [m.column for m in marks] == sorted(m.column for m in marks)


def test_a_digit_lies_where_its_ink_is_not_where_its_stretch_of_the_strip_is():
    """A reading's stretch of the strip (its CTC span) can reach well past the digit's strokes;
    where a mark lies against the digits (after how many of them) is measured from their ink."""
    png, lefts = number_png("2931", 60)
    s = strip(png)
    column = lambda x: s.column((x - s.offset[0]) / s.scale[0])  # noqa: E731 (a picture's x, in strip columns)
    nine = column(lefts[1])  # where the 9's drawing starts
    x, _, w, _ = s.box(0, nine - 1)  # the 2 and the gap after it
    two, end = column(x + w / 2), column(x + w)
    assert end + 1 < nine - 4
    for right in (end + 1, nine - 4, nine - 1):  # the stretch ends anywhere in the gap: 1 to 6 columns past the 2
        assert abs(s.middle(0, right) - two) < 0.5, right
    assert abs(s.middle(0, end - 4) - two) > 1  # a stretch that cuts the 2: the middle of what it holds
    assert abs(s.middle(nine - 3, nine - 1) - (nine - 2)) < 0.5  # a stretch with no ink: its own middle


def test_each_read_digit_keeps_a_part_and_a_part_no_digit_was_read_in_is_left_out():
    from model.segment import SHARED_PART, _claims
    parts = [(0.0, 10.0), (14.0, 30.0), (34.0, 38.0), (42.0, 60.0)]  # a sign, a 5, a narrow 1, an 8
    assert _claims([20.0, 31.0, 50.0], parts) == {1, 2, 3}  # the 1's centre off its part, nearer the 5's: still its own
    assert _claims([18.0, 26.0, 36.0, 50.0], parts) == {1, 2, 3}  # two digits read across one part: it is shared
    assert _claims([5.0, 36.0], parts) == {0, 2}
    leaning = [(8.0, 23.4), (25.1, 49.1), (43.4, 56.0), (64.6, 79.4)]  # a 1 leaning over the 5's columns (3518)
    assert _claims([16.4, 32.4, 48.4, 72.4], leaning) == {0, 1, 2, 3}
    far = 38.0 + SHARED_PART + 5  # a centre far right of the 1 and left of nothing else: the nearest part
    assert _claims([far], parts[:3]) == {2}


def test_a_straight_stroke_leaning_right_is_a_slash_and_other_signs_are_marks():
    from PIL import ImageDraw

    from model.segment import _part_kind

    def drawn(*lines):
        img = Image.new("L", (120, 200))
        for line in lines:
            ImageDraw.Draw(img).line(line, fill=255, width=10)
        return np.asarray(img) > 0

    assert _part_kind(drawn([(10, 190), (90, 10)])) == "slash"
    assert _part_kind(drawn([(60, 190), (60, 10)])) == "mark"   # upright: a 1's stroke, a bar
    assert _part_kind(drawn([(10, 10), (90, 190)])) == "mark"   # leaning left: a backslash
    assert _part_kind(drawn([(10, 190), (90, 10)], [(20, 100), (100, 100)])) == "mark"  # crossed: a plus, a 4
