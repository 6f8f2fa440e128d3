"""Fuzzing the handler's decoding and preprocessing with hypothesis.

Whatever a client sends (bytes, text, JSON values, images of every mode and format, cut short
or with bytes flipped, wrapped in base64 or data URLs), the path a request takes in the
handler (``request_payload`` then ``preprocess``) either raises the project's own
``InputError`` with a 4xx status, or gives a finite 1x28x28 float tensor in [0, 1]. Nothing
else may escape: in the handler any other exception becomes a 500 for that request.

Bounded and repeatable for CI: a fixed number of examples per property, derandomized (the
same examples on every run), no example database written. ``DIGITS_FUZZ_EXAMPLES`` raises
the count for a longer hunt.
"""
from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from handler.numbers_handler import NumbersHandler
from handler.spine import FORM_TYPE, request_payload
from model.preprocess import SIZE, InputError, preprocess
from serving import local

EXAMPLES = int(os.environ.get("DIGITS_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "image/png", "text/plain",
                 "application/octet-stream", "multipart/form-data"]


def png(pixels: list[list[int]]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.array(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


TWO_PIXELS = png([[0, 255]])


def to_tensor(request: dict, content_type: str | None, request_type: str | None = None) -> torch.Tensor:
    """What the handler does with one request before the forward pass."""
    return torch.from_numpy(preprocess(request_payload(request, content_type, request_type))).unsqueeze(0)


def check(request: dict, content_type: str | None = None, request_type: str | None = None) -> None:
    try:
        x = to_tensor(request, content_type, request_type)
    except InputError as e:
        assert e.status in (400, 413, 415, 422) and e.code and isinstance(e.detail, str), vars(e)
        assert e.to_dict() == {"error": e.code, "detail": e.detail}
        return
    assert x.shape == (1, SIZE, SIZE) and x.dtype == torch.float32, (x.shape, x.dtype)
    assert torch.isfinite(x).all(), "non-finite values in the network's input"
    assert x.min() >= 0 and x.max() <= 1


# ---------------------------------------------------------------- images

MODES = {  # format -> modes it can hold
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "BMP": ["1", "L", "P", "RGB"],
    "GIF": ["L", "P"],
    "WEBP": ["RGB", "RGBA"],
}


@st.composite
def images(draw, widest: int = 96, tallest: int = 96) -> bytes:
    """An encoded image: any format and mode, size 1 to 96 px a side (or as told), with noise,
    flat colour, strokes or a gradient, sometimes transparent."""
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    w, h = draw(st.integers(1, widest)), draw(st.integers(1, tallest))
    pattern = draw(st.sampled_from(["noise", "flat", "strokes", "gradient", "speck"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if pattern == "noise":
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    elif pattern == "flat":
        rgba = np.broadcast_to(rng.integers(0, 256, 4, dtype=np.uint8), (h, w, 4)).copy()
    elif pattern == "gradient":
        ramp = np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8)
        rgba = np.dstack([ramp, ramp[::-1], ramp, np.full_like(ramp, rng.integers(0, 256))])
    else:
        rgba = np.zeros((h, w, 4), dtype=np.uint8)
        rgba[..., :3] = rng.integers(0, 256, 3, dtype=np.uint8)
        rgba[..., 3] = draw(st.sampled_from([0, 255]))
    img = Image.fromarray(rgba, "RGBA")
    if pattern == "strokes":
        pen = ImageDraw.Draw(img)
        for _ in range(draw(st.integers(1, 4))):
            pen.line([tuple(rng.integers(0, max(w, h), 2)) for _ in range(3)], width=int(rng.integers(1, 12)),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 4)))
    elif pattern == "speck":
        img.putpixel((int(rng.integers(0, w)), int(rng.integers(0, h))), (0, 0, 0, 255))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    else:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": draw(st.integers(1, 95))} if fmt == "JPEG" else {}))
    return buf.getvalue()


@st.composite
def damaged(draw, data: st.SearchStrategy[bytes]) -> bytes:
    """``data`` with bytes flipped, cut short, or junk spliced in."""
    out = bytearray(draw(data))
    for _ in range(draw(st.integers(0, 6))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    if out and draw(st.booleans()):
        del out[draw(st.integers(0, len(out) - 1)):]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(out)))
        out[at:at] = draw(st.binary(max_size=64))
    return bytes(out)


def wrapped(data: bytes, how: str, mime: str) -> str | bytes:
    b64 = base64.b64encode(data).decode()
    return {"raw": data, "base64": b64, "base64 bytes": b64.encode(), "urlsafe": base64.urlsafe_b64encode(data).decode(),
            "data URL": f"data:{mime};base64,{b64}", "broken data URL": f"data:{mime},{b64}"}[how]


WRAPS = st.sampled_from(["raw", "base64", "base64 bytes", "urlsafe", "data URL", "broken data URL"])
MIMES = st.sampled_from(["image/png", "image/jpeg", "IMAGE/PNG", "text/plain", "", "image/svg+xml"])


# ---------------------------------------------------------------- properties

@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(CONTENT_TYPES))
@example(b"A" * 4096 + b"\xff", None)   # base64-looking for the first 4 kB, then not ASCII
@example(b"data:image/png;base64,\xff\xfe", None)
@example(b"\x89PNG\r\n\x1a\n", "image/png")
@example(TWO_PIXELS, "image/png")  # every pixel is "ink": the ground estimate has nothing to go on
def test_any_bytes(body, content_type):
    check({"body": body}, content_type)


@FUZZ
@given(st.text(max_size=1024))
@example("data:image/png;base64,=")
@example("data:;base64,AAAA")
@example("\u00ff" * 16)
def test_any_text(text):
    check({"body": text}, "text/plain")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=64),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@FUZZ
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(["data", "file", "image"]), JSON, max_size=3)),
       st.sampled_from(["body", "data", "file", "other"]))
@example({"data": None}, "body")
@example({"data": ""}, "body")
def test_any_json_value(value, field):
    check({field: value}, "application/json")


@FUZZ
@given(images(), WRAPS, MIMES)
def test_any_image(data, how, mime):
    check({"body": wrapped(data, how, mime)})


@FUZZ
@given(damaged(images()), WRAPS)
def test_any_damaged_image(data, how):
    check({"body": wrapped(data, how, "image/png")})


@FUZZ
@given(damaged(images()))
def test_any_damaged_image_as_a_form_field(data):
    check({"file": data, "data": None})


@FUZZ
@given(st.dictionaries(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=256), images()), max_size=4),
       st.sampled_from([None, FORM_TYPE, "multipart/form-data; boundary=x"]))
def test_any_form_fields(fields, request_type):
    """A request's fields as TorchServe hands them over, of any names, after any form decoding."""
    check(fields, request_type=request_type)


@pytest.fixture(scope="module")
def handlers() -> dict:
    """Both real handlers, loaded once, each with its shipped network."""
    return {"digits": local.load_handler(),
            "numbers": local.load_handler(handler_class=NumbersHandler, model_name="numbers")}


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
@given(st.lists(st.one_of(images(), images(widest=800, tallest=300), damaged(images(widest=400))), min_size=1, max_size=4),
       st.sampled_from(["digits", "numbers"]))
def test_any_batch_through_either_handler(handlers, bodies, model):
    """The whole handler, network included, on a batch of any pictures, wide ones and damaged
    ones too: every item gets an answer or its own 4xx JSON error, never a 500."""
    results, _ = local.handle(handlers[model], [{"body": b} for b in bodies], {"X-Activations": "off"})
    key = "digit" if model == "digits" else "text"
    for status, body in results:
        if status == 200:
            assert key in body and body["model"] == model and 0 <= body["confidence"] <= 1, body
            assert body[key] is not None or ("guess" in body and body["reason"]), body
        else:
            assert status in (400, 413, 415, 422) and set(body) == {"error", "detail"}, (status, body)
