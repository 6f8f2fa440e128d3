"""Bad inputs against a real TorchServe: each alone, and inside a batch of good images.

Alone, each goes to the default version with the settings of config.properties. With its
neighbours, it goes to a second version of the same archive (``batch_version``) with one worker
whose batches hold exactly the bad input and its neighbours: they share one forward pass however
busy the machine is, instead of only when their threads happen to reach the frontend within the
production batch delay. Every kind gets its own 4xx and ``{"error": code, "detail": text}`` naming the problem, its
good neighbours in the same batch get their own right answers, and no worker dies or restarts
(ids, pids and start times from the management API are the same before and after). Three
kinds that look odd but are valid images (16-bit greyscale, CMYK JPEG, palette PNG with
transparency) must be read, and read right.
"""
from __future__ import annotations

import base64
import io
import json
import random
import struct
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np
import psutil
import pytest
import requests
from PIL import Image, ImageDraw, ImageFile

from model.preprocess import MAX_BYTES, MAX_PIXELS, InputError, preprocess
from serving.server import read_properties
from tests.conftest import data_url, encode, fixture_bytes
from tests.reliability.conftest import DIGIT_IMAGES, read_alone, worker_snapshot

NEIGHBOURS = 7  # good images sent together with each bad one
# The batch version waits up to this long for a full batch (1 + NEIGHBOURS): a full batch goes at
# once, so this only bounds how late a slow thread may be and still share it.
BATCH_DELAY_MS = 3000
OFF = {"X-Activations": "off"}


# ---------------------------------------------------------------- the corpus

def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_size(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid greyscale PNG of any declared size, built row by row so that a 20000x20000
    decompression bomb costs 76 kB to make and never exists as pixels here."""
    row = b"\x00" + b"\xff" * ((width * bit_depth + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def zero_size_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def seven(mode: str = "L") -> Image.Image:
    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).line([(70, 60), (210, 60), (120, 230)], fill=0, width=22)
    return img.convert(mode)


def flat(name: str) -> Image.Image:
    """A fixture flattened on white paper, as a photo or scan would be."""
    img = Image.open(io.BytesIO(fixture_bytes(name))).convert("RGBA")
    paper = Image.new("RGBA", img.size, "white")
    return Image.alpha_composite(paper, img).convert("RGB")


def garbled_png() -> bytes:
    png = bytearray(encode(seven(), "PNG"))
    start = png.find(b"IDAT") + 12
    for i in range(start, start + 40):
        png[i] ^= 0x55
    return bytes(png)


def multipage_tiff() -> bytes:
    return encode(seven(), "TIFF", save_all=True, append_images=[seven().rotate(90)])


def animated(fmt: str) -> bytes:
    return encode(seven(), fmt, save_all=True, append_images=[Image.new("L", (280, 280), 255)], duration=100)


GOOD_B64 = base64.b64encode(fixture_bytes("drawn_1.png")).decode()
JPEG = encode(seven("RGB"), "JPEG", quality=90)
PNG_TYPE = {"Content-Type": "image/png"}
OCTETS = {"Content-Type": "application/octet-stream"}
JSON_TYPE = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Bad:
    """One kind of bad input: how to send it, and the status and error code it must get."""
    name: str
    send: dict = field(repr=False)  # requests.post keyword arguments: data / json / files / headers
    status: int
    error: str


def raw(body: bytes | str, headers: dict = PNG_TYPE) -> dict:
    return {"data": body, "headers": headers}


CORPUS = [
    Bad("empty body", raw(b""), 400, "empty_body"),
    Bad("random bytes", raw(random.Random(7).randbytes(4096), OCTETS), 415, "not_an_image"),
    Bad("plain text", raw("Dear sir, please find my digit attached.", TEXT), 400, "bad_base64"),
    Bad("plain text as octet-stream", raw(b"not an image at all, just words", OCTETS), 415, "not_an_image"),
    Bad("truncated PNG", raw(fixture_bytes("drawn_1.png")[:150]), 400, "corrupt_image"),
    Bad("truncated JPEG", raw(JPEG[:len(JPEG) // 2], {"Content-Type": "image/jpeg"}), 400, "corrupt_image"),
    Bad("PNG with garbled pixel data", raw(garbled_png()), 400, "corrupt_image"),
    # Pillow will not even identify a PNG that declares 0x0 pixels (the PNG spec forbids it).
    Bad("zero-size PNG", raw(zero_size_png()), 415, "not_an_image"),
    Bad("1x1 image", raw(encode(Image.new("L", (1, 1), 0), "PNG")), 422, "no_digit"),
    Bad("20000x20000 PNG (decompression bomb)", raw(png_of_size(20000, 20000, bit_depth=1)), 413,
        "too_many_pixels"),
    Bad("7000x7000 PNG (just over the pixel limit)", raw(png_of_size(7000, 7000, bit_depth=1)), 413,
        "too_many_pixels"),
    Bad("blank 16-bit PNG", raw(encode(Image.new("I;16", (64, 64), 40000), "PNG")), 422, "no_digit"),
    Bad("animated GIF", raw(animated("GIF"), {"Content-Type": "image/gif"}), 415, "animated_image"),
    Bad("animated PNG", raw(animated("PNG")), 415, "animated_image"),
    Bad("multi-page TIFF", raw(multipage_tiff(), {"Content-Type": "image/tiff"}), 415, "unsupported_format"),
    Bad("SVG", raw(b'<svg xmlns="http://www.w3.org/2000/svg"><text>7</text></svg>',
                   {"Content-Type": "image/svg+xml"}), 415, "unsupported_format"),
    Bad("SVG with an XML declaration", raw(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
                                           {"Content-Type": "image/svg+xml"}), 415, "unsupported_format"),
    Bad("PDF", raw(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj", {"Content-Type": "application/pdf"}), 415,
        "unsupported_format"),
    Bad("ICO (a format not taken)", raw(encode(seven().resize((32, 32)), "ICO"), {"Content-Type": "image/x-icon"}),
        415, "not_an_image"),
    Bad("base64 with bad padding", raw(GOOD_B64[:-3], TEXT), 400, "bad_base64"),
    Bad("base64 with bad padding in JSON", {"json": {"data": GOOD_B64[:-3]}}, 400, "bad_base64"),
    Bad("base64 of a non-image", raw(base64.b64encode(b"just some text, not a picture").decode(), TEXT), 415,
        "not_an_image"),
    Bad("data URL with a wrong MIME type", raw(data_url(fixture_bytes("drawn_1.png"), "text/plain"), TEXT), 415,
        "unsupported_type"),
    Bad("data URL that is not base64", raw("data:image/png,%89PNG", TEXT), 400, "bad_data_url"),
    Bad("JSON without data", raw(b'{"image": "x"}', JSON_TYPE), 400, "missing_data"),
    Bad("JSON with a number", raw(b"42", JSON_TYPE), 400, "bad_data"),
    Bad("JSON whose data is a number", {"json": {"data": 42}}, 400, "bad_data"),
    Bad("JSON null", raw(b"null", JSON_TYPE), 400, "empty_body"),
    Bad("JSON list", {"json": [{"data": GOOD_B64}]}, 400, "bad_json"),
    Bad("malformed JSON", raw(b'{"data": ', JSON_TYPE), 400, "bad_json"),
    Bad("image over the 5 MB limit", raw(b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_BYTES + 1024)), 413, "too_large"),
    Bad("wrong Content-Type: PNG sent as JSON", raw(fixture_bytes("drawn_1.png"), JSON_TYPE), 400, "bad_json"),
    # curl -d without a Content-Type: TorchServe decodes the body as form fields, losing the image
    Bad("wrong Content-Type: PNG sent as a form", raw(fixture_bytes("mnist_7.png"), FORM), 415, "form_encoded"),
    Bad("wrong Content-Type: JSON sent as a form", raw(json.dumps({"data": GOOD_B64}).encode(), FORM), 415,
        "form_encoded"),
    Bad("multipart form without a data or file field", {"files": {
        "picture": ("d.png", fixture_bytes("drawn_1.png"), "image/png"), "note": ("n.txt", b"one", "text/plain")}},
        400, "missing_data"),
    Bad("all-white image", raw(encode(Image.new("RGB", (280, 280), "white"), "PNG")), 422, "no_digit"),
    Bad("all-black image", raw(encode(Image.new("RGB", (280, 280), "black"), "PNG")), 422, "no_digit"),
    Bad("empty transparent canvas", raw(encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG")), 422,
        "no_digit"),
]

# Odd but valid images holding a digit: the answer is the digit, not an error.
READ = [
    ("16-bit greyscale PNG", lambda: encode(Image.fromarray(np.asarray(flat("drawn_7.png").convert("L"),
                                                                       dtype=np.uint16) * 257), "PNG"), 7),
    ("CMYK JPEG", lambda: encode(flat("drawn_3.png").convert("CMYK"), "JPEG", quality=92), 3),
    ("palette PNG with transparency", lambda: encode(Image.open(io.BytesIO(fixture_bytes("canvas_4.png")))
                                                     .convert("P"), "PNG"), 4),
]


# What clients commonly get slightly wrong, read anyway: (name, how it is sent, the digit)
SENT_LOOSELY = [
    ("JSON sent as image/png", raw(json.dumps({"data": GOOD_B64}).encode()), 1),
    ("JSON sent with no Content-Type", raw(json.dumps({"data": GOOD_B64}).encode(), {}), 1),
    ("JSON sent as text/plain", raw(json.dumps({"data": GOOD_B64}), TEXT), 1),
    ("JSON with a charset", raw(json.dumps({"data": GOOD_B64}).encode(), {"Content-Type": "application/json; charset=utf-8"}), 1),
    ("a lone multipart field named 'image'", {"files": {"image": ("d.png", fixture_bytes("drawn_1.png"), "image/png")}}, 1),
    ("a proper form's data field, its '+' unescaped", raw(b"data=" + GOOD_B64.encode(), FORM), 1),
]


# ---------------------------------------------------------------- sending

def post(client, send: dict, path: str = "digits") -> requests.Response:
    kw = {k: v for k, v in send.items() if k != "headers"}
    headers = {**client.server.headers("inference"), **OFF, **send.get("headers", {})}
    return requests.post(f"{client.server.inference_url}/predictions/{path}", headers=headers, timeout=60, **kw)


def with_neighbours(client, send: dict, neighbours: list[str], path: str = "digits") -> tuple[requests.Response, list]:
    """Send ``send`` at the same moment as the good ``neighbours``, so they share batches."""
    jobs = [send] + [raw(fixture_bytes(n)) for n in neighbours]
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def go(i):
        barrier.wait()
        try:
            results[i] = post(client, jobs[i], path)
        except requests.RequestException as e:
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return results[0], results[1:]


def assert_refused(r, bad: Bad) -> None:
    assert isinstance(r, requests.Response), f"{bad.name}: no HTTP answer ({r})"
    assert r.status_code == bad.status, f"{bad.name}: got {r.status_code} {r.text[:300]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), bad.name
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == bad.error and isinstance(body["detail"], str) and len(body["detail"]) > 10, body


@pytest.fixture(scope="module")
def batch_version(client):
    """The path of version 2.0 of the same model, one worker, batches of exactly 1 + NEIGHBOURS."""
    r = client.manage("POST", f"models?url=digits_2.0.mar&model_name=digits&initial_workers=1&synchronous=true"
                              f"&batch_size={1 + NEIGHBOURS}&max_batch_delay={BATCH_DELAY_MS}")
    assert r.status_code == 200, r.text
    yield "digits/2.0"
    r = client.manage("DELETE", "models/digits/2.0")
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def before(client, batch_version, figures):
    """The workers, and what each good image reads as alone, before any bad input is sent."""
    state = {"workers": worker_snapshot(client) + worker_snapshot(client, "2.0"), "alone": read_alone(client),
             "batched": 0, "handled": 0, "sent": 0}
    figures["Bad inputs"] = {}
    return state


def neighbours_for(i: int) -> list[str]:
    return [DIGIT_IMAGES[(i * NEIGHBOURS + k) % len(DIGIT_IMAGES)] for k in range(NEIGHBOURS)]


def assert_neighbours_answered(neighbours: list[str], answers: list, alone: dict[str, int], what: str) -> None:
    for name, r in zip(neighbours, answers):
        assert isinstance(r, requests.Response) and r.status_code == 200, f"neighbour {name} of {what}: {r}"
        assert r.json()["digit"] == alone[name], f"neighbour {name} of {what} got another answer"


# ---------------------------------------------------------------- the tests

def test_the_corpus_is_large_and_varied():
    assert len(CORPUS) + len(READ) >= 30
    assert len({b.name for b in CORPUS}) == len(CORPUS)
    assert {b.status for b in CORPUS} == {400, 413, 415, 422}


@pytest.mark.parametrize("bad", CORPUS, ids=[b.name for b in CORPUS])
def test_a_bad_input_fails_alone_with_its_own_json_error(client, before, batch_version, bad):
    i = CORPUS.index(bad)
    assert_refused(post(client, bad.send), bad)
    neighbours = neighbours_for(i)
    r, answers = with_neighbours(client, bad.send, neighbours, batch_version)
    assert_refused(r, bad)
    assert_neighbours_answered(neighbours, answers, before["alone"], bad.name)
    before["sent"] += 2 + NEIGHBOURS
    before["handled"] += 1
    before["batched"] += int(r.headers.get("X-Batch-Size", "1")) > 1


@pytest.mark.parametrize("name, make, digit", READ, ids=[r[0] for r in READ])
def test_odd_but_valid_images_are_read(client, before, batch_version, name, make, digit):
    body = make()
    r = post(client, raw(body, OCTETS))
    assert r.status_code == 200 and r.json()["digit"] == digit, (name, r.text[:300])
    neighbours = neighbours_for(len(CORPUS) + READ.index((name, make, digit)))
    r, answers = with_neighbours(client, raw(body, OCTETS), neighbours, batch_version)
    assert r.status_code == 200 and r.json()["digit"] == digit, (name, r.text[:300])
    assert_neighbours_answered(neighbours, answers, before["alone"], name)
    before["sent"] += 2 + NEIGHBOURS


@pytest.mark.parametrize("name, send, digit", SENT_LOOSELY, ids=[r[0] for r in SENT_LOOSELY])
def test_loosely_sent_images_are_read(client, before, batch_version, name, send, digit):
    neighbours = neighbours_for(len(CORPUS) + len(READ) + [r[0] for r in SENT_LOOSELY].index(name))
    for r, answers in ((post(client, send), []), with_neighbours(client, send, neighbours, batch_version)):
        assert r.status_code == 200 and r.json()["digit"] == digit, (name, r.text[:300])
        assert_neighbours_answered(neighbours, answers, before["alone"], name)
    before["sent"] += 2 + NEIGHBOURS


def test_a_body_over_the_request_limit_is_refused_by_the_frontend(client, before):
    """TorchServe's frontend refuses a body over max_request_size before any worker sees it:
    413 with an empty body (the handler cannot add JSON to it); nothing else is disturbed."""
    limit = int(read_properties(client.server.config_path)["max_request_size"])
    send = raw(b"\x89PNG\r\n\x1a\n" + b"\x00" * limit)
    for r in (post(client, send), with_neighbours(client, send, neighbours_for(0))[0]):
        assert isinstance(r, requests.Response) and r.status_code == 413 and r.content == b"", r
    _, answers = with_neighbours(client, send, neighbours_for(1))
    assert_neighbours_answered(neighbours_for(1), answers, before["alone"], "an oversized body")
    before["sent"] += 3 + 2 * NEIGHBOURS


def test_a_form_the_frontend_cannot_decode_gets_its_500(client, before):
    """A known gap of TorchServe 0.12, pinned so that a change shows: a form-encoded body that
    Netty's form decoder chokes on (``%`` without two hex digits, as in most binary files sent
    as a form) is answered by the frontend, before any worker, with 500
    ErrorDataDecoderException. It is the client's error; a gateway in front should refuse such
    bodies with 400 (docs/security.md). The workers and the neighbours are unaffected."""
    send = raw(b"a=%zz", FORM)
    r, answers = with_neighbours(client, send, neighbours_for(2))
    assert r.status_code == 500 and r.json()["type"] == "ErrorDataDecoderException", r.text[:300]
    assert_neighbours_answered(neighbours_for(2), answers, before["alone"], "an undecodable form")
    before["sent"] += 1 + NEIGHBOURS


def test_the_bomb_is_refused_before_decoding(monkeypatch):
    """The pixel limit is Pillow's too, and a bomb never reaches the decoder."""
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS

    def decode_forbidden(self, *a, **kw):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode_forbidden)
    for side in (20000, 7000):
        with pytest.raises(InputError) as err:
            preprocess(png_of_size(side, side, bit_depth=1))
        assert (err.value.code, err.value.status) == ("too_many_pixels", 413)


def test_no_worker_died_or_restarted(client, before, figures):
    """Last in this module: the workers that saw every bad input are the ones that were there."""
    after = worker_snapshot(client) + worker_snapshot(client, "2.0")
    assert after == before["workers"], f"workers changed: {before['workers']} -> {after}"
    assert all(status == "READY" for *_, status in after)
    rss = {pid: psutil.Process(pid).memory_info().rss for _, pid, _, _ in after}
    assert all(v < 2 * 2**30 for v in rss.values()), rss
    assert before["batched"] == before["handled"], "a bad input did not share its batch with its neighbours"
    figures["Bad inputs"].update({
        "kinds refused (each alone and among 7 good images)": len(CORPUS) + 1,
        "odd but valid kinds read correctly": len(READ),
        "loosely sent kinds read correctly": len(SENT_LOOSELY),
        "kinds TorchServe's frontend answers 500 (known gap, docs/security.md)": 1,
        "requests sent": before["sent"],
        "bad inputs that shared a forward pass with good ones": f"{before['batched']} of {before['handled']}",
        "workers before and after (id, pid)": ", ".join(f"{w[0]} pid {w[1]}" for w in after),
        "worker restarts": 0,
    })
