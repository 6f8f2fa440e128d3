"""The real numbers handler against TorchServe's own Context, as a worker would call it."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch
import pytest
from PIL import Image, ImageDraw

from handler.numbers_handler import NumbersHandler
from serving import local
from serving.archive import NUMBERS_FILE as NUMBERS_MODEL
from tests.conftest import (SHIPPED_MODEL, boxed_number_png, comma_png, cropped_number_png, data_url, drawn_digit,
                            encode, fixture_bytes, number_png, on_page, stacked_numbers_png, turned_number_png, written_png)
from training.numbers_eval import cells_picture, digit_ink


@pytest.fixture(scope="module")
def handler() -> NumbersHandler:
    return local.load_handler(NUMBERS_MODEL, version="1.0", handler_class=NumbersHandler, model_name="numbers")


def test_the_answer_has_the_contract(handler):
    png, lefts = number_png("2931", [30, -6, 30])  # the 9 and the 3 touch
    (status, answer), = local.handle(handler, [{"body": png}])[0]
    assert status == 200
    assert answer["text"] == "2931" and answer["model"] == "numbers" and answer["version"] == "1.0"
    assert [d["digit"] for d in answer["digits"]] == [2, 9, 3, 1]
    assert 0.5 <= answer["confidence"] <= 1  # calibrated: right, so it should be sure
    width, height = Image.open(io.BytesIO(png)).size
    strip = Image.open(io.BytesIO(base64.b64decode(answer["input"])))
    assert strip.height == 32 and strip.width >= 4 * 16
    ends = lefts[1:] + [width]
    for d, left, end in zip(answer["digits"], lefts, ends):
        assert len(d["probabilities"]) == 10 and abs(sum(d["probabilities"]) - 1) < 1e-4
        assert d["probabilities"][d["digit"]] == d["confidence"] == max(d["probabilities"])
        x, y, w, h = d["box"]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert left - 25 <= x + w / 2 <= end + 25, (d["digit"], d["box"], left)  # over its own drawn digit
        assert h > 100  # the drawn digits are about 200 canvas pixels tall
        lo, hi = d["columns"]
        assert 0 <= lo < hi <= strip.width
        assert "activations" not in d  # off by default for numbers
    assert [d["columns"][0] for d in answer["digits"]] == sorted(d["columns"][0] for d in answer["digits"])


def test_one_answer_per_request_in_order_and_a_bad_item_fails_alone(handler):
    good = [number_png("2931", 30)[0], number_png("4561", 25, {1: "dot"})[0]]
    requests = [{"body": good[0]}, {"body": b"%PDF-1.4 a document, not a picture"}, {"data": {"data": data_url(good[1])}},
                {"body": b""}, {"body": good[0]}]
    results, ctx = local.handle(handler, requests)
    assert [s for s, _ in results] == [200, 415, 200, 400, 200]
    assert [a.get("text") for s, a in results if s == 200] == ["2931", "4561", "2931"]
    assert results[1][1]["error"] == "unsupported_format" and "detail" in results[1][1]
    assert results[3][1]["error"] == "empty_body"


def test_blank_is_no_digit(handler):
    blank = io.BytesIO()
    Image.new("L", (500, 200), 255).save(blank, format="PNG")
    (status, answer), = local.handle(handler, [{"body": blank.getvalue()}])[0]
    assert status == 422 and answer["error"] == "no_digit"


def test_activations_on_give_each_digit_its_maps(handler):
    (status, answer), = local.handle(handler, [{"body": number_png("2931", 30)[0]}], {"X-Activations": "on"})[0]
    assert status == 200
    for d in answer["digits"]:
        assert [a["layer"] for a in d["activations"]] == handler.layers
        Image.open(io.BytesIO(base64.b64decode(d["activations"][0]["png"]))).verify()


def test_an_unsure_string_has_no_text_but_a_guess_and_a_reason(handler):
    from model.number_network import centres, decode, regions
    from model.segment import strip
    s = strip(number_png("29", 30)[0])
    columns = s.image.shape[1] // 4
    p = np.full((columns, 11), 0.01, np.float32)
    p[:, 0] = 0.9  # blanks, but two columns 55% sure of a 7 (the rest split among the other digits)
    for t in (2, columns - 3):
        p[t] = 0.05
        p[t, 8] = 0.55
    scores = np.log(p / p.sum(1, keepdims=True))
    reads = decode(scores)
    answer = handler.answer(s, {"reads": [reads], "logp": [float(np.log(0.55 ** 2 * 0.9 ** (columns - 2)))],
                                "spans": [regions(reads, s.image.shape[1], handler.peak_offsets[0])],
                                "centres": [centres(reads, handler.peak_offsets[0])], "platt": [handler.platt]},
                            0, False)
    assert answer["text"] is None and answer["guess"] == "77" and "unsure" in answer["reason"]
    assert answer["confidence"] < 0.5 and [d["digit"] for d in answer["digits"]] == [7, 7]
    assert answer["written"] is None  # no text, nothing written out either


def width(png: bytes) -> int:
    return Image.open(io.BytesIO(png)).width


def test_separators_are_left_out_of_the_text_and_put_back_in_written(handler):
    """An amount written 1,250.00 reads as the text 125000 (separators are no digits); its marks
    say what was seen where, and ``written`` puts the separators back between the digits."""
    for text, marks, kinds, put_back in [("125000", {0: "comma", 3: "tap"}, [("comma", 1), ("dot", 4)], "1,250.00"),
                                         ("40517", {2: "dash"}, [("dash", 3)], "405-17"),
                                         ("2931", {3: "comma"}, [("comma", 4)], "2931")]:  # after the last: not written
        png, lefts = number_png(text, 30, marks)
        (status, answer), = local.handle(handler, [{"body": png}])[0]
        assert status == 200 and answer["text"] == text, answer.get("guess")
        assert [(m["mark"], m["after"]) for m in answer["marks"]] == kinds
        assert answer["written"] == put_back
        for m in answer["marks"]:  # its box in the picture's pixels, between the digits it follows and precedes
            x, y, w, h = m["box"]
            assert lefts[m["after"] - 1] < x and x + w <= (lefts + [width(png)])[m["after"]], (m, lefts)
            assert 0 < h < 100  # a separator, not a digit (the digits are about 200 canvas pixels tall)


def test_a_dot_written_close_under_a_digit_is_a_separator_too(handler):
    """A full stop on the baseline under the end of a 7's bar lies within the 7's columns, so it is
    found among the 7's strokes; low, small and right of the 7's foot, it is still a dot."""
    png, lefts = number_png("2715", 40)
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3].copy()
    yy, xx = np.ogrid[:alpha.shape[0], :alpha.shape[1]]
    alpha[(yy - 228) ** 2 + (xx - (lefts[1] + 114)) ** 2 <= 81] = 255  # the 7's bar reaches 137 px, its foot 99
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    (status, answer), = local.handle(handler, [{"body": encode(Image.fromarray(rgba, mode="RGBA"), "PNG")}])[0]
    assert status == 200 and answer["text"] == "2715" and answer["written"] == "27.15"
    assert [(m["mark"], m["after"]) for m in answer["marks"]] == [("dot", 2)]


def test_a_full_stop_under_the_last_digits_end_is_after_it_and_not_written(handler):
    """A full stop written close under the right part of the last digit (a 7's foot) comes after
    the number: where it lies against the digits is measured from their ink, not from the
    networks' stretches of the strip, which can reach past a digit's strokes ("456.7" before)."""
    png, lefts = number_png("4567", 30)
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3]
    cols = np.flatnonzero(alpha[:, lefts[3]:].any(axis=0)) + lefts[3]  # the 7's columns
    foot = np.flatnonzero(alpha.any(axis=1))[-1]
    for share in (0.75, 0.85, 0.95):
        a = np.zeros((alpha.shape[0] + 40, alpha.shape[1]), dtype=np.uint8)
        a[:alpha.shape[0]] = alpha
        yy, xx = np.ogrid[:a.shape[0], :a.shape[1]]
        a[(yy - (foot + 14)) ** 2 + (xx - int(cols[0] + share * (cols[-1] - cols[0]))) ** 2 <= 81] = 255
        rgba = np.zeros((*a.shape, 4), dtype=np.uint8)
        rgba[..., 3] = a
        (status, answer), = local.handle(handler, [{"body": encode(Image.fromarray(rgba, mode="RGBA"), "PNG")}])[0]
        assert status == 200 and answer["text"] == "4567", answer.get("guess")
        assert [(m["mark"], m["after"]) for m in answer["marks"]] == [("dot", 4)], share
        assert answer["written"] == "4567"


def with_signs(text: str, gap: int, room: int, signs) -> tuple[bytes, list[int]]:
    """``number_png``'s drawing of ``text`` with ``room`` pixels more on its left, and
    ``signs(draw, lefts)`` drawn on it (each digit's left edge in the new picture)."""
    png, lefts = number_png(text, gap)
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3]
    a = np.zeros((alpha.shape[0], alpha.shape[1] + room), dtype=np.uint8)
    a[:, room:] = alpha
    img = Image.fromarray(a)
    lefts = [x + room for x in lefts]
    signs(ImageDraw.Draw(img), lefts)
    rgba = np.zeros((*a.shape, 4), dtype=np.uint8)
    rgba[..., 3] = np.asarray(img)
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), lefts

def test_a_sign_before_an_amount_is_a_mark_and_out_of_the_first_digits_box(handler):
    """A dollar sign drawn before 1250: the network reads it as no digit, so it is a mark before
    the number, and the 1's box is the 1's own (it took in the sign's ink before)."""
    def dollar(draw, lefts):
        draw.arc([40, 50, 130, 140], 90, 360, fill=255, width=16)
        draw.arc([40, 140, 130, 230], 270, 180, fill=255, width=16)
        draw.line([(85, 30), (85, 250)], fill=255, width=16)

    png, lefts = with_signs("1250", 30, 160, dollar)
    (status, answer), = local.handle(handler, [{"body": png}])[0]
    assert status == 200 and answer["text"] == answer["written"] == "1250", answer.get("guess")
    assert [(m["mark"], m["after"]) for m in answer["marks"]] == [("mark", 0)]
    x, y, w, h = answer["marks"][0]["box"]
    assert x <= 40 and x + w >= 130 and h > 200  # the sign, all of it
    assert answer["digits"][0]["box"][0] >= lefts[0] - 2  # the 1 alone


def test_a_dates_slashes_are_marks_and_written_between_its_digits(handler):
    """Given a reading of 12/05 that skips the slash (as the network is taught to), the slash is
    a mark of its own kind, out of the digits' boxes, and ``written`` puts it back: 12/05."""
    from model.number_network import Read
    from model.segment import strip
    png, lefts = number_png("1205", 30, {1: "slash"})
    s = strip(png, marks=True)
    column = lambda x: s.column((x - s.offset[0]) / s.scale[0])  # noqa: E731 (a picture's x, in strip columns)
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3]
    inked = [np.flatnonzero(alpha[:, x:x + drawn_digit(d).shape[1]].any(axis=0)) + x  # each digit's columns
             for x, d in zip(lefts, "1205")]
    middles = [column((c[0] + c[-1]) / 2) for c in inked]  # each digit's middle in strip columns
    reads = [Read(int(d), np.eye(10, dtype=np.float32)[int(d)], 0, 0, 0) for d in "1205"]
    spans = [(0.0, (middles[0] + middles[1]) / 2)] + [((a + b) / 2, (b + c) / 2) for a, b, c in
                                                      zip(middles, middles[1:], middles[2:])] \
        + [((middles[2] + middles[3]) / 2, float(s.image.shape[1]))]
    answer = handler.answer(s, {"reads": [reads], "logp": [0.0], "spans": [spans], "centres": [middles], "alone": {},
                                "platt": [handler.platt]}, 0, False)
    assert answer["text"] == "1205" and answer["written"] == "12/05"
    assert [(m["mark"], m["after"]) for m in answer["marks"]] == [("slash", 2)]
    x, y, w, h = answer["marks"][0]["box"]
    boxes = [d["box"] for d in answer["digits"]]
    assert boxes[1][0] + boxes[1][2] <= x + 20 and x + w - 20 <= boxes[2][0]  # between the 2 and the 0, neither's


def test_a_date_is_read_without_its_slashes_and_written_with_them(handler):
    """12/05/24 drawn with slashes taller than its digits (as dates are written): numbers 1.5
    learnt a date's slashes as no digits (1.4 read each as a 1: 1215124), so the text is the
    digits and ``written`` the date."""
    png, lefts = number_png("120524", 30, {1: "slash", 3: "slash"})
    (status, answer), = local.handle(handler, [{"body": png}])[0]
    assert status == 200 and answer["text"] == "120524" and answer["written"] == "12/05/24", answer.get("guess")
    assert [(m["mark"], m["after"]) for m in answer["marks"]] == [("slash", 2), ("slash", 4)]
    for m in answer["marks"]:
        x, _, w, _ = m["box"]
        assert lefts[m["after"] - 1] < x and x + w <= lefts[m["after"]]


def test_a_telephone_numbers_brackets_are_no_digits(handler):
    """(555) 1234 with drawn brackets: the text is the digits (1.4 read each bracket as a 1:
    155511234), and each bracket is a mark, not written."""
    def brackets(draw, lefts):
        draw.arc([70, 20, 170, 260], 120, 240, fill=255, width=16)  # (
        x = lefts[3] - 55
        draw.arc([x - 90, 20, x + 10, 260], -60, 60, fill=255, width=16)  # ) between the 5 and the 1

    png, _ = with_signs("5551234", 110, 100, brackets)
    (status, answer), = local.handle(handler, [{"body": png}])[0]
    assert status == 200 and answer["text"] == answer["written"] == "5551234", answer.get("guess")
    assert [(m["mark"], m["after"]) for m in answer["marks"]] == [("mark", 0), ("mark", 3)]


def test_a_number_without_separators_has_no_marks_and_an_underline_is_none(handler):
    png, _ = number_png("2931", 30)
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3].copy()
    underlined = alpha.copy()
    underlined[262:270, 30:-30] = 255  # a line under the whole number, close below the digits' feet
    for a in (alpha, underlined):
        rgba = np.zeros((*a.shape, 4), dtype=np.uint8)
        rgba[..., 3] = a
        (status, answer), = local.handle(handler, [{"body": encode(Image.fromarray(rgba, mode="RGBA"), "PNG")}])[0]
        assert status == 200 and answer["text"] == answer["written"] == "2931" and answer["marks"] == []


def test_written_puts_each_separator_between_the_digits_it_was_seen_between():
    from handler.numbers_handler import written
    assert written("125000", [{"mark": "comma", "after": 1}, {"mark": "dot", "after": 4}]) == "1,250.00"
    assert written("1250", [{"mark": "dot", "after": 1}, {"mark": "dash", "after": 1}]) == "1.250"  # one: the first
    assert written("100", [{"mark": "dash", "after": 3}, {"mark": "dot", "after": 0}]) == "100"  # not at the ends
    assert written("4050", [{"mark": "mark", "after": 2}, {"mark": "apostrophe", "after": 1}]) == "4050"  # (SEPARATORS)


def test_marks_only_are_no_digit(handler):
    from PIL import ImageDraw
    marks = Image.new("RGBA", (600, 280))
    draw = ImageDraw.Draw(marks)
    draw.line([(100, 140), (220, 140)], fill=(0, 0, 0, 255), width=14)  # a dash ...
    draw.line([(300, 150), (340, 200), (420, 60)], fill=(0, 0, 0, 255), width=12)  # ... and a check mark
    draw.line([(60, 250), (540, 250)], fill=(0, 0, 0, 255), width=8)  # ... and an underline
    for x in (460, 500):  # ... and two full stops
        draw.ellipse([x, 220, x + 14, 234], fill=(0, 0, 0, 255))
    (status, answer), = local.handle(handler, [{"body": encode(marks, "PNG")}])[0]
    assert status == 422 and answer["error"] == "no_digit", answer


def test_signs_alone_are_no_digit(handler):
    """Signs drawn alone on the pad. A tap of the pen alone is the tallest thing in its picture, so
    it is no mark by its size: it was read as a 0, 0.999 sure. A dash alone could be taken for a
    form's ruled line and cut into bits on two rows, and an equals sign for two lines of digits
    (422 ``several_lines``). Each is no digit; a full stop after a digit is a mark, as before."""
    from PIL import ImageDraw

    def drawn(dots=(), bars=(), size=18):
        img = Image.new("RGBA", (600, 280))
        draw = ImageDraw.Draw(img)
        for x in dots:
            draw.ellipse([x, 130, x + size, 130 + size], fill=(0, 0, 0, 255))
        for bar in bars:
            draw.line(bar, fill=(0, 0, 0, 255), width=size)
        return {"body": encode(img, "PNG")}

    results, _ = local.handle(handler, [
        drawn(dots=[290]), drawn(dots=[200, 280, 360]), drawn(dots=[290], size=40),  # full stops, an ellipsis, a blot
        drawn(bars=[[(150, 160), (450, 130)]]), drawn(bars=[[(200, 110), (400, 110)], [(200, 170), (400, 170)]]),
        {"body": number_png("2931", 30, marks={2: "dot"})[0]}])
    for status, answer in results[:5]:
        assert status == 422 and answer["error"] == "no_digit", answer
    assert results[5][1]["text"] == "2931"


def test_commas_and_quotes_alone_are_no_digit(handler):
    """A comma drawn alone (a round head and a curved tail) is the tallest thing in its picture,
    so no mark by its size either: at any size it was read as a 9, 0.99 sure, and a closing quote
    as 99. Each is no digit now; a comma inside a number is passed over, and a 9 alone is read."""
    results, _ = local.handle(handler, [{"body": comma_png(head, pen)} for head, pen in ((14, 9), (20, 14), (28, 18))]
                              + [{"body": comma_png(16, 10, quote=True)}, {"body": number_png("2931", 30, marks={0: "comma"})[0]},
                                 {"body": fixture_bytes("drawn_9.png")}])
    for status, answer in results[:4]:
        assert status == 422 and answer["error"] == "no_digit" and "commas" in answer["detail"], answer
    assert [answer["text"] for _, answer in results[4:]] == ["2931", "9"]


def test_letters_and_signs_read_as_a_short_number_have_no_text(handler):
    """Drawn alone, letters and signs that the numbers network reads as one or two digits (E as
    1, X and a plus as 4, at 45-87%) are not answered: the reading is unsure, or the digits
    network, reading each digit's stretch alone, is sure of none of them. The best guess and the
    reason stay. Numbers of one and two digits drawn the same way are still read. (This H was
    one of them until numbers 1.5, which reads it as 14 at 0.86 and the digits network its right
    half as a 4 at 0.94; the card's letters refused rose with 1.5, 64.5% -> 68.5%.)"""
    signs = ["E", "X", "+", "#"]
    numbers = ["0", "1", "4", "7", "42", "17", "90", "11"]
    results, _ = local.handle(handler, [{"body": written_png(c)} for c in signs]
                              + [{"body": number_png(t)[0]} for t in numbers])
    for sign, (status, answer) in zip(signs, results):
        assert status == 200 and answer["text"] is None and answer["guess"], (sign, answer)
        assert answer["reason"].startswith(("this does not look like a number: ", "the model is unsure: ")), (sign, answer)
    for text, (status, answer) in zip(numbers, results[len(signs):]):
        assert status == 200 and answer["text"] == text, (text, answer)


def test_a_short_reading_the_digits_network_reads_otherwise_has_no_text():
    """Each digit of a short reading, read alone by the digits network: no ink or not digit-like,
    unsure, or sure of another digit each make the reading null, with a reason naming the digit."""
    sure = lambda d, p=0.97: np.eye(10)[d] * p + (1 - p) / 10
    reason = NumbersHandler.alone_reason
    assert reason([(sure(4), None), (sure(2), None)], "42") is None
    assert reason([(sure(4), None), (sure(7, 0.4), None)], "42") == (
        "this does not look like a number: reading the 2 (digit 2) alone, the digits model is sure of no digit "
        "(best guess 7, 46%)")
    assert reason([(sure(2), None)], "7") == (
        "the models disagree: numbers reads the 7, the digits model, reading it alone, a 2 (97%)")
    assert "holds no ink" in reason([(None, None)], "1")
    assert "a dash" in reason([(sure(1), "this looks like a dash")], "1")
    assert reason(None, "2931") is None  # longer readings are not read alone


def test_noise_is_not_a_number(handler):
    """Salt noise (a twentieth of the pixels black): 44-107 separate marks, more than a number
    has digits. The rows of specks in the third had passed for 7 lines of digits (``several_lines``)."""
    def salt(seed):
        rng = np.random.default_rng(seed)
        return {"body": encode(Image.fromarray(np.where(rng.random((280, 280)) < 0.05, 0, 255).astype(np.uint8)), "PNG")}

    results, _ = local.handle(handler, [salt(1), salt(7), salt(6)])
    for status, answer in results:
        assert status == 422 and answer["error"] == "not_a_number", answer
        assert "send one line of digits per picture" in answer["detail"]


def test_a_number_cropped_close_or_drawn_heavy_is_read(handler):
    """An upload cropped to the number's ink, with a pen heavier still: mostly ink, and read."""
    results, _ = local.handle(handler, [{"body": cropped_number_png("2931")},
                                        {"body": cropped_number_png("2931", heavier=4)}])
    for status, answer in results:
        assert status == 200 and answer["text"] == "2931", answer


def test_several_lines_are_refused_with_a_reason_the_others_read(handler):
    """A field of two lines is a 422 naming the lines, not a garbled reading of both squeezed
    into one strip; the request beside it is read."""
    results, _ = local.handle(handler, [{"body": stacked_numbers_png("2931", "40517", gap=40)},
                                        {"body": number_png("2931", 30)[0]}])
    (s1, two), (s2, one) = results
    assert s1 == 422 and two["error"] == "several_lines" and "2 lines" in two["detail"], two
    assert s2 == 200 and one["text"] == "2931"


def test_a_small_thresholded_number_is_read(handler):
    """A bilevel picture of a number 24 pixels tall (a thresholded scan): read, from a strip
    with grey stroke edges as its training strings had (``model.preprocess.soften_small``)."""
    alpha = np.asarray(Image.open(io.BytesIO(number_png("2931", 30)[0])))[..., 3]
    small = np.asarray(Image.fromarray(alpha).resize((round(alpha.shape[1] * 24 / 280), 24), Image.Resampling.BOX))
    (status, answer), = local.handle(handler, [{"body": encode(Image.fromarray(np.where(small > 100, 0, 255).astype(np.uint8)), "PNG")}])[0]
    assert status == 200 and answer["text"] == "2931", answer
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["input"]))), dtype=np.float32) / 255
    inked = seen[seen > 0.05]
    assert ((inked > 0.2) & (inked < 0.8)).mean() > 0.15


def test_digits_points_to_numbers_for_a_number():
    digits = local.load_handler(SHIPPED_MODEL)
    results, _ = local.handle(digits, [{"body": number_png("2931", 30)[0]}, {"body": fixture_bytes("drawn_7.png")},
                                       {"body": cropped_number_png("2931", 30)}, {"body": stacked_numbers_png("2931", "40517")}])
    (s1, several), (s2, one), (s3, cropped), (s4, stacked) = results
    assert s1 == 200 and several["digit"] is None and "/predictions/numbers" in several["reason"]
    assert "guess" in several
    assert s2 == 200 and one["digit"] == 7
    assert s3 == 200 and cropped["digit"] is None and "/predictions/numbers" in cropped["reason"]
    assert s4 == 200 and stacked["digit"] is None and "9 digits in 2 lines" in stacked["reason"], stacked


def test_digits_points_to_numbers_for_a_number_in_a_forms_cells_or_at_an_angle():
    """A form's lines join a number's digits into one shape (once read by digits as a confident
    5 for 40517 in a comb, and a 2 for 12), and a number at an angle looks like one line of
    touching parts: digits still says it holds several digits."""
    digits = local.load_handler(SHIPPED_MODEL)
    mnist = np.stack([np.asarray(Image.open(io.BytesIO(fixture_bytes(f"mnist_{d}.png")))) for d in range(10)])
    pictures = [boxed_number_png("40517")[0], cells_picture([digit_ink(mnist, d) for d in (1, 2)], np.random.default_rng(0)),
                turned_number_png("40517", 20)[0]]
    results, _ = local.handle(digits, [{"body": p} for p in pictures])
    for status, answer in results:
        assert status == 200 and answer["digit"] is None and "/predictions/numbers" in answer["reason"], answer


def test_the_cascade_reads_unsure_strips_again_with_every_network(handler):
    """The shipped export is a cascade: its first network reads every strip, and only strips it
    is less sure of than the threshold are read by the whole ensemble, answered with the
    ensemble's calibration. A threshold of 0 is the first network alone; above 1, the ensemble."""
    from model.number_network import choose, read_members
    assert handler.cascade is not None and hasattr(handler.model, "each")
    touching = fixture_bytes("number_13579.png")  # every pair touching: the first network is unsure
    items = [handler.prepare(touching), handler.prepare(fixture_bytes("number_40517.png"))]
    threshold, first = handler.cascade
    results = handler.infer(items, [False, False])
    assert results["platt"] == [handler.platt, first]  # the touching string went on, the other did not
    batch = torch.zeros(1, 1, *items[0].image.shape)
    batch[0, 0] = torch.from_numpy(items[0].image)
    lengths = torch.tensor([items[0].image.shape[1] // 4])
    alone, = choose(read_members(handler.model, batch, lengths * 4, first_only=True)[0], lengths)
    together, = choose(read_members(handler.model, batch, lengths * 4)[0], lengths)
    assert first(alone.logp) < threshold
    assert results["logp"][0] == pytest.approx(together.logp)
    assert [r.digit for r in results["reads"][0]] == [r.digit for r in together.reads]
    try:
        handler.cascade = (0.0, first)
        assert handler.infer(items, [False, False])["platt"] == [first, first]
        handler.cascade = (1.01, first)
        assert handler.infer(items, [False, False])["platt"] == [handler.platt, handler.platt]
    finally:
        handler.cascade = (threshold, first)
    (status, answer), = local.handle(handler, [{"body": touching}])[0]
    assert status == 200 and (answer["text"] or answer["guess"]) == "13579"


def test_a_strip_read_surely_as_it_is_is_not_read_moved_a_row(handler, monkeypatch):
    """A strip the first network reads, as it is, at SURE_AS_IT_IS or more is answered from that
    one reading; a strip less sure is read moved a row up and down too, the three readings
    averaged as a reading of all three at once averages them. With the bar above 1 every strip
    is read all three ways, and the texts do not change."""
    import handler.numbers_handler as numbers
    from model.number_network import choose, read_members
    threshold, first = handler.cascade
    items = [handler.prepare(fixture_bytes("number_40517.png")), handler.prepare(fixture_bytes("number_42.png"))]

    def reading(k: int, moved: bool) -> object:
        strip = torch.from_numpy(items[k].image)[None, None]
        lengths = torch.tensor([items[k].image.shape[1] // 4])
        with torch.inference_mode():
            scores = read_members(handler.model, strip, lengths * 4, first_only=True)[0] if moved else \
                [handler.model(strip, lengths * 4)[0]]
        return choose(scores, lengths)[0]

    once, moved = [reading(k, False) for k in range(2)], [reading(k, True) for k in range(2)]
    assert first(once[0].logp) >= numbers.SURE_AS_IT_IS > first(once[1].logp) > threshold  # the 42 less sure
    assert all(o.logp != pytest.approx(m.logp, abs=1e-6) for o, m in zip(once, moved))  # the two ways differ
    results = handler.infer(items, [False, False])
    assert results["logp"] == [pytest.approx(once[0].logp, abs=1e-5), pytest.approx(moved[1].logp, abs=1e-5)]
    assert results["platt"] == [first, first]  # neither goes on to the ensemble
    monkeypatch.setattr(numbers, "SURE_AS_IT_IS", 1.01)
    again = handler.infer(items, [False, False])
    assert again["logp"] == [pytest.approx(m.logp, abs=1e-5) for m in moved]
    texts = [[[r.digit for r in reads] for reads in x["reads"]] for x in (results, again)]
    assert texts[0] == texts[1] == [[4, 0, 5, 1, 7], [4, 2]]


def test_a_number_written_at_an_angle_or_in_printed_cells_is_read_with_its_boxes(handler):
    """Turned level before it is read, its boxes in the picture as sent (20 degrees off, it was
    read 40577 or not at all); a form's cells taken out, a comb or boxes apart (MNIST's digits in
    cells were read with an extra 1 for each cell's side: 40517 as 14051117). Seven boxes apart
    make a 592x100 picture: shrunk to 512 pixels, its box lines broke (1466960 read 114161619160)."""
    turned = [turned_number_png("40517", degrees)[0] for degrees in (20, -20)]
    mnist = np.stack([np.asarray(Image.open(io.BytesIO(fixture_bytes(f"mnist_{d}.png")))) for d in range(10)])
    cells = [cells_picture([digit_ink(mnist, int(c)) for c in text], np.random.default_rng(0), gap)
             for text, gap in (("40517", 0), ("86420", 0), ("2931", 6), ("1466960", 6))]  # a comb; boxes 6 px apart
    assert Image.open(io.BytesIO(cells[-1])).width > 512
    results, _ = local.handle(handler, [{"body": p} for p in turned + cells])
    assert [(s, a.get("text")) for s, a in results] == ([(200, "40517")] * 3 + [(200, "86420"), (200, "2931"),
                                                                                (200, "1466960")])
    for png, (_, answer), climbing in zip(turned, results, (True, False)):
        dark = np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 128
        covered = np.zeros_like(dark)
        for x, y, w, h in (d["box"] for d in answer["digits"]):
            covered[y:y + h, x:x + w] = True
        assert (dark & covered).sum() >= 0.95 * dark.sum()  # the boxes hold the digits' ink ...
        assert all(150 <= h <= 320 for _, _, _, h in (d["box"] for d in answer["digits"]))  # ... a digit tall each
        middles = [(x + w / 2, y + h / 2) for x, y, w, h in (d["box"] for d in answer["digits"])]
        assert [x for x, _ in middles] == sorted(x for x, _ in middles)
        assert [y for _, y in middles] == sorted((y for _, y in middles), reverse=climbing)
    for (_, answer), gap in zip(results[2:], (0, 0, 6)):  # each digit's box in its own cell: 34 MNIST pixels, twice that here
        for k, d in enumerate(answer["digits"]):
            x, _, w, _ = d["box"]
            assert 2 * (8 + (34 + gap) * k) <= x + w / 2 <= 2 * (8 + (34 + gap) * k + 34), (k, d["box"])


def test_a_number_on_a_large_page_is_read_with_its_boxes_in_the_pages_pixels(handler):
    """A number written small on a phone photo (a 3200x2400 JPEG, which decode reads at an eighth
    of its size) or on a scan (2400x1800 PNG), and one written large on a JPEG: the boxes are in
    the pixels of the page as sent and seen (they were in the reduced JPEG's), each around its digit. Small,
    the digits were 7 or 8 pixels tall once shrunk, and the number came back unsure; they are
    measured again from the page's own pixels."""
    drawn, lefts = number_png("40517", 30)
    cases = ((60, (3200, 2400), "JPEG"), (40, (2400, 1800), "PNG"), (300, (1600, 1000), "JPEG"),
             (60, (3200, 2400), "JPEG held sideways"))
    pages = [on_page(drawn, height, page, fmt.split()[0]) for height, page, fmt in cases]
    # a phone held sideways stores the photo turned, with an EXIF tag that turns it back: the
    # boxes are in the page as seen
    sideways, exif = Image.open(io.BytesIO(pages[-1][0])).transpose(Image.Transpose.ROTATE_90), Image.Exif()
    exif[0x0112] = 6
    pages[-1] = (encode(sideways, "JPEG", quality=85, exif=exif.tobytes()), *pages[-1][1:])
    results, _ = local.handle(handler, [{"body": body} for body, _, _ in pages])
    for (status, answer), (_, (x, y), scale), (height, _, fmt) in zip(results, pages, cases):
        assert status == 200 and answer["text"] == "40517", (fmt, height, answer)
        boxes = [d["box"] for d in answer["digits"]]
        starts = [x + left * scale for left in lefts]  # where each drawn digit's ink begins on the page
        assert all(abs(bx - start) <= 0.15 * height for (bx, _, _, _), start in zip(boxes, starts)), (boxes, starts)
        assert all(y <= by and by + bh <= y + height and 0.5 * height <= bh for _, by, _, bh in boxes), (boxes, y)


def test_a_number_on_a_notebooks_ruled_page_is_read_with_its_boxes(handler):
    """A number written on a notebook's page (pale ruled lines across it, the number resting on
    one, a red margin down it) or on squared paper. On the ruled page the lines joined the
    digits into one shape with the page: no answer, or a 422. The boxes hold the digits."""
    from training.paper import on_paper
    drawn, lefts = number_png("40517", 30)
    ink = np.asarray(Image.open(io.BytesIO(drawn)))[20:260, :, 3].astype(np.float32) / 255
    results, _ = local.handle(handler, [{"body": on_paper(ink, kind)} for kind in ("ruled", "squared")])
    for status, answer in results:
        assert status == 200 and answer["text"] == "40517", answer
        pad = max(ink.shape[1] // 4, 40)  # on_paper's paper left of the writing
        middles = [pad + left + drawn_digit(c).shape[1] / 2 for c, left in zip("40517", lefts)]
        boxes = [d["box"] for d in answer["digits"]]
        assert all(x <= middle <= x + w for (x, _, w, _), middle in zip(boxes, middles)), (boxes, middles)
        assert all(240 <= y and y + h <= 480 for _, y, _, h in boxes), boxes  # in the writing's rows (on_paper's)


def test_a_number_resting_on_a_notebooks_line_keeps_its_feet(handler):
    """2931 written small on a notebook page and photographed (JPEG): the 2's foot lies along
    the pale ruled line under it. It went with the line, and the 2 was read as a 7 (7931)."""
    from training.paper import on_paper
    drawn, _ = number_png("2931", 30)
    ink = Image.fromarray(np.asarray(Image.open(io.BytesIO(drawn)))[20:260, :, 3])
    small = np.asarray(ink.resize((ink.width // 4, 60), Image.Resampling.LANCZOS), np.float32) / 255
    photo = encode(Image.open(io.BytesIO(on_paper(small, "ruled", room=3))).convert("RGB"), "JPEG", quality=85)
    (status, answer), = local.handle(handler, [{"body": photo}])[0]
    assert status == 200 and answer["text"] == "2931", answer


@pytest.mark.parametrize("room, fmt, seed", [(3, "PNG", 0), (8, "PNG", 0), (4, "JPEG", 1), (4, "JPEG", 2)])
def test_numbers_of_mnist_digits_small_on_a_notebooks_page_are_read(handler, room, fmt, seed):
    """MNIST's thinner digits as strings, on a notebook page with three to eight times the usual
    paper around them, scanned (PNG) or photographed (JPEG): the page's lines cross the whole
    picture, the margin beside them. Before the bits left where the lines cross the margin went
    too, the 7-digit one came back a 422 (room 3). Where the lines and the margin fade in the
    picture shrunk to 512 pixels (room 8, 1320x1360), the dots where they cross stayed: they made
    the ink look a page tall, the number was not measured again from the page's own pixels, and
    two of five came back a 422 or unsure. In a JPEG a pale line can have a hole where the margin
    crosses it; it was not taken for a line, and the others stayed too (one of each five a 422)."""
    from training.numbers_eval import synthetic_string
    from training.paper import on_paper
    mnist = np.stack([np.asarray(Image.open(io.BytesIO(fixture_bytes(f"mnist_{d}.png")))) for d in range(10)])
    rng = np.random.default_rng(seed)
    strings = [synthetic_string(mnist, np.arange(10), rng, 3 + k) for k in range(5)]
    pages = [on_paper(1 - np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255, "ruled", room=room)
             for png, _, _ in strings]
    if fmt == "JPEG":
        pages = [encode(Image.open(io.BytesIO(page)).convert("RGB"), "JPEG", quality=85) for page in pages]
    results, _ = local.handle(handler, [{"body": page} for page in pages])
    assert [(status, answer.get("text")) for status, answer in results] == [(200, text) for _, text, _ in strings]
