"""The real numbers handler against TorchServe's own Context, as a worker would call it."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from handler.numbers_handler import NumbersHandler
from serving import local
from tests.conftest import SHIPPED_MODEL, data_url, fixture_bytes, number_png


@pytest.fixture(scope="module")
def handler() -> NumbersHandler:
    return local.load_handler(SHIPPED_MODEL, version="1.0", handler_class=NumbersHandler, model_name="numbers")


def test_the_answer_has_the_contract(handler):
    png, _ = number_png("2931", 30)
    (status, answer), = local.handle(handler, [{"body": png}])[0]
    assert status == 200
    assert answer["text"] == "2931" and answer["model"] == "numbers" and answer["version"] == "1.0"
    assert [d["digit"] for d in answer["digits"]] == [2, 9, 3, 1]
    assert answer["confidence"] == pytest.approx(np.prod([d["confidence"] for d in answer["digits"]]), abs=1e-5)
    width, height = Image.open(io.BytesIO(png)).size
    for d in answer["digits"]:
        assert len(d["probabilities"]) == 10 and abs(sum(d["probabilities"]) - 1) < 1e-4
        x, y, w, h = d["box"]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert "activations" not in d  # off by default for numbers
    strip = Image.open(io.BytesIO(base64.b64decode(answer["input"])))
    assert strip.size == (28 * 4, 28)


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
    from model.segment import segment
    seg = segment(number_png("29", 30)[0])
    probs = np.full((len(seg.crops), 10), 0.04, np.float32)
    probs[:, 7] = 0.64  # every digit 64% sure: the string only 41%
    answer = handler.answer(seg, {"probabilities": probs, "starts": np.array([0, len(seg.crops)])}, 0, False)
    assert answer["text"] is None and answer["guess"] == "77" and "unsure" in answer["reason"]


def test_digits_points_to_numbers_for_a_number():
    digits = local.load_handler(SHIPPED_MODEL)
    results, _ = local.handle(digits, [{"body": number_png("2931", 30)[0]}, {"body": fixture_bytes("drawn_7.png")}])
    (s1, several), (s2, one) = results
    assert s1 == 200 and several["digit"] is None and "/predictions/numbers" in several["reason"]
    assert "guess" in several
    assert s2 == 200 and one["digit"] == 7
