"""model.preprocess: every input form, MNIST geometry, polarity, and refusals."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from model.preprocess import (BOX, CENTRE, SIZE, InputError, decode, ink_map, preprocess, stroke_width,
                              without_paper_lines, without_specks)
from tests.conftest import data_url, encode, fixture_bytes, strokes
from tests.fixtures.make_fixtures import render_strokes


def centre_of_mass(x: np.ndarray) -> tuple[float, float]:
    rows, cols = np.mgrid[:x.shape[0], :x.shape[1]]
    return float((x * rows).sum() / x.sum()), float((x * cols).sum() / x.sum())


def longest_side(x: np.ndarray) -> int:
    rows = np.flatnonzero((x > 0).any(axis=1))
    cols = np.flatnonzero((x > 0).any(axis=0))
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def assert_mnist_like(x: np.ndarray) -> None:
    assert x.shape == (SIZE, SIZE) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() == pytest.approx(1.0, abs=1e-6)
    cy, cx = centre_of_mass(x)
    assert abs(cy - CENTRE) <= 1 and abs(cx - CENTRE) <= 1, (cy, cx)
    assert longest_side(x) == BOX


def drawing(size=280, ground=(0, 0, 0, 0), ink=(20, 20, 20, 255), box=(60, 40, 220, 240), width=18, mode="RGBA"):
    """A 7 drawn into ``box`` of a ``size`` canvas."""
    img = Image.new(mode, (size, size), ground if mode != "L" else ground[0])
    x0, y0, x1, y1 = box
    fill = ink if mode != "L" else ink[0]
    ImageDraw.Draw(img).line([(x0, y0), (x1, y0), (x0 + (x1 - x0) * 0.4, y1)], fill=fill, width=width, joint="curve")
    return img


def test_every_input_form_gives_the_same_tensor():
    png = fixture_bytes("drawn_3.png")
    reference = preprocess(png)
    b64 = base64.b64encode(png).decode()
    forms = {
        "base64 text": b64,
        "base64 bytes": b64.encode(),
        "base64 with line breaks": "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)),
        "data URL": data_url(png),
        "data URL bytes": data_url(png).encode(),
        "urlsafe base64": base64.urlsafe_b64encode(png).decode(),
        "Pillow image": Image.open(io.BytesIO(png)),
        "WebP lossless": encode(Image.open(io.BytesIO(png)), "WEBP", lossless=True),
    }
    for name, payload in forms.items():
        np.testing.assert_array_equal(preprocess(payload), reference, err_msg=name)
    # Formats without alpha get the canvas as the browser exports it: flattened on white.
    flat = Image.new("RGB", (280, 280), "white")
    flat.paste(Image.open(io.BytesIO(png)), mask=Image.open(io.BytesIO(png)))
    for fmt in ("BMP", "GIF", "PNG"):
        np.testing.assert_allclose(preprocess(encode(flat, fmt)), reference, atol=2e-2, err_msg=fmt)
    jpeg = preprocess(encode(flat, "JPEG", quality=90))
    assert np.abs(jpeg - reference).mean() < 0.02


@pytest.mark.parametrize("name, img", [
    ("red ink on a transparent canvas", drawing(ink=(230, 20, 20, 255))),
    ("white ink on black", drawing(ground=(0, 0, 0, 255), ink=(255, 255, 255, 255), mode="RGB")),
    ("black ink on white", drawing(ground=(255, 255, 255, 255), ink=(0, 0, 0, 255), mode="RGB")),
    ("white ink on a transparent canvas", drawing(ink=(255, 255, 255, 255))),
    ("grey levels, dark on light", drawing(ground=(200,) * 4, ink=(60,) * 4, mode="L")),
    ("off-centre, in a corner", drawing(box=(190, 180, 270, 275), width=8)),
    ("tiny", drawing(box=(120, 130, 140, 152), width=3)),
    ("huge, touching the edges", drawing(box=(5, 5, 275, 275), width=30)),
    ("thin pen on a big canvas", drawing(size=1000, box=(100, 100, 900, 900), width=4)),
    ("wide photo-sized canvas", drawing(size=2000, box=(400, 300, 1500, 1700), width=60, mode="RGB",
                                       ground=(240, 235, 220, 255), ink=(30, 30, 90, 255))),
])
def test_any_drawing_comes_out_mnist_like(name, img):
    assert_mnist_like(preprocess(img))


def test_uneven_light_is_not_ink():
    """A photo of paper lit from one side: the shadowed corner must not count as ink."""
    seven = np.asarray(drawing(ground=(255,) * 4, ink=(40, 40, 40, 255), box=(110, 100, 190, 200), width=10,
                               mode="RGB"), dtype=np.float32)
    light = np.linspace(1.0, 0.55, 280)[None, :, None] * np.linspace(1.0, 0.8, 280)[:, None, None]
    photo = Image.fromarray((seven * light).astype(np.uint8))
    x = preprocess(encode(photo, "JPEG", quality=85))
    assert_mnist_like(x)
    reference = preprocess(drawing(ground=(255,) * 4, ink=(40, 40, 40, 255), box=(110, 100, 190, 200), width=10))
    assert np.abs(x - reference).mean() < 0.03


def test_polarity_does_not_matter():
    dark_on_light = preprocess(drawing(ground=(255,) * 4, ink=(0, 0, 0, 255), mode="RGB"))
    light_on_dark = preprocess(drawing(ground=(0, 0, 0, 255), ink=(255,) * 4, mode="RGB"))
    on_canvas = preprocess(drawing(ink=(0, 0, 255, 255)))
    np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-6)
    np.testing.assert_allclose(dark_on_light, on_canvas, atol=2e-2)


@pytest.mark.parametrize("digit", range(10))
def test_mnist_images_pass_through_nearly_unchanged(digit):
    """Real MNIST digits are already in MNIST form: preprocessing must keep them so."""
    original = np.asarray(Image.open(io.BytesIO(fixture_bytes(f"mnist_{digit}.png"))), dtype=np.float32) / 255
    processed = preprocess(fixture_bytes(f"mnist_{digit}.png"))
    assert np.corrcoef(original.ravel(), processed.ravel())[0, 1] > 0.97
    assert np.abs(np.array(centre_of_mass(processed)) - centre_of_mass(original)).max() <= 1


def test_strokes_match_mnist_width():
    widths = [stroke_width(preprocess(fixture_bytes(f"mnist_{d}.png"))) for d in range(10)]
    thin = render_strokes(strokes()["8"], size=280, width=3)
    assert 1.3 < np.median(widths) < 2.8
    assert stroke_width(preprocess(thin)) > 1.4  # a 3 px pen on 280 px would otherwise be a hairline


def test_a_small_bilevel_digit_gets_soft_edges_like_mnists():
    """MNIST's own digits thresholded (every pixel ink or ground, as a bilevel scan sends them):
    what the network sees has grey edges, as MNIST's have, not the thresholded staircases."""
    for d in range(10):
        grey = np.asarray(Image.open(io.BytesIO(fixture_bytes(f"mnist_{d}.png"))).convert("L"))
        processed = preprocess(encode(Image.fromarray(((grey > 127) * 255).astype(np.uint8)), "PNG"))
        inked = processed[processed > 0.05]
        assert ((inked > 0.2) & (inked < 0.8)).mean() > 0.15, d
        assert np.corrcoef(grey.ravel(), processed.ravel())[0, 1] > 0.9, d


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: enough to test the pixel limit."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [drawing(mode="L", ground=(255,) * 4, ink=(0,) * 4), Image.new("L", (280, 280), 255)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("payload, code, status", [
    (b"", "empty_body", 400),
    ("   ", "empty_body", 400),
    (bytes(range(256)) * 8, "not_an_image", 415),
    ("hello, this is not an image", "bad_base64", 400),
    (base64.b64encode(b"plain text, not an image").decode(), "not_an_image", 415),
    (base64.b64encode(fixture_bytes("drawn_1.png")).decode()[:-3], "bad_base64", 400),
    (fixture_bytes("drawn_1.png")[:300], "corrupt_image", 400),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "unsupported_format", 415),
    (b"II*\x00\x08\x00\x00\x00", "unsupported_format", 415),
    (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "unsupported_format", 415),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "unsupported_format", 415),  # an iPhone photo
    (encode(Image.new("RGB", (64, 64), "white"), "AVIF"), "unsupported_format", 415),
    ("data:text/plain;base64,aGVsbG8=", "unsupported_type", 415),
    ("data:image/png,notbase64", "bad_data_url", 400),
    ("data:image/png;base64", "bad_data_url", 400),
    (png_header(20000, 20000), "too_many_pixels", 413),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * (6 * 1024 * 1024), "too_large", 413),
    (animated_gif(), "animated_image", 415),
    (encode(Image.new("RGB", (280, 280), "white"), "PNG"), "no_digit", 422),
    (encode(Image.new("RGB", (280, 280), "black"), "PNG"), "no_digit", 422),
    (encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG"), "no_digit", 422),
    (encode(Image.new("L", (1, 1), 0), "PNG"), "no_digit", 422),
    (12345, "bad_payload", 400),
])
def test_bad_inputs_raise_the_input_error(payload, code, status):
    with pytest.raises(InputError) as err:
        preprocess(payload)
    assert (err.value.code, err.value.status) == (code, status)
    assert err.value.detail and err.value.to_dict() == {"error": code, "detail": err.value.detail}


def test_a_phone_photo_in_heic_is_named_with_what_to_do():
    with pytest.raises(InputError) as err:
        preprocess(b"\x00\x00\x00\x24ftypheic\x00\x00\x00\x00mif1MiHEmiafheic" + bytes(64))
    assert "HEIC" in err.value.detail and "as JPEG" in err.value.detail


def test_sixteen_bit_and_palette_images_decode():
    seven = drawing(ground=(255,) * 4, ink=(0, 0, 0, 255), mode="L")
    reference = preprocess(seven)
    sixteen = Image.fromarray(np.asarray(seven, dtype=np.uint16) * 257)
    np.testing.assert_allclose(preprocess(encode(sixteen, "PNG")), reference, atol=1e-3)
    palette = drawing(ink=(200, 30, 30, 255)).convert("P")
    assert_mnist_like(preprocess(encode(palette, "PNG")))
    assert decode(encode(palette, "PNG")).mode == "P"


def _outcome(data: bytes) -> tuple:
    """What decode makes of some bytes: the error's code, or the picture's mode, format and pixels."""
    try:
        img = decode(data)
    except InputError as e:
        return ("refused", e.code)
    return (img.mode, img.format, np.asarray(img).tobytes())


def test_a_plain_png_is_decoded_by_libspng_to_pillows_pixels(monkeypatch):
    """Plain 8-bit grey, RGB and RGBA PNGs (canvases, scans) go to libspng and come out as Pillow
    reads them, to the bit, named PNG; every other PNG goes to Pillow, and a damaged one gets the
    same refusal as without libspng."""
    import model.preprocess as pp
    assert pp.pyspng is not None, "requirements.txt pins pyspng"
    read_by_libspng = []
    load = pp.pyspng.load
    monkeypatch.setattr(pp.pyspng, "load", lambda data: read_by_libspng.append(data) or load(data))
    rng = np.random.default_rng(7)
    noisy = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))  # every PNG row filter
    plain = [encode(drawing(), "PNG"), encode(drawing(ground=(255,) * 4, mode="L"), "PNG"),
             encode(noisy, "PNG"), encode(noisy.convert("RGBA"), "PNG")]
    buf = io.BytesIO()
    noisy.convert("L").save(buf, "PNG", dpi=(300, 300), compress_level=0)  # a scan with its pHYs chunk
    plain.append(buf.getvalue())
    for data in plain:
        ours = _outcome(data)
        assert read_by_libspng[-1] is data
        with Image.open(io.BytesIO(data)) as pillows:
            assert ours == (pillows.mode, "PNG", np.asarray(pillows).tobytes())

    text = io.BytesIO()
    info = PngInfo()
    info.add_text("Software", "a scanner")
    noisy.save(text, "PNG", pnginfo=info)
    others = [encode(drawing().convert("P"), "PNG"), encode(drawing().convert("LA"), "PNG"),
              encode(Image.fromarray(np.asarray(noisy.convert("L"), dtype=np.uint16) * 257), "PNG"),
              encode(noisy.convert("1"), "PNG"), text.getvalue()]
    trns = io.BytesIO()
    noisy.save(trns, "PNG", transparency=(0, 0, 0))  # a colour key: a tRNS chunk
    others.append(trns.getvalue())
    read_by_libspng.clear()
    for data in others:
        assert _outcome(data)[1] == "PNG"
    assert read_by_libspng == []

    canvas = plain[0]
    idat = canvas.index(b"IDAT")
    damaged = [canvas[:cut] for cut in (20, 40, idat + 30, len(canvas) - 12, len(canvas) - 1)]
    # A bit flipped in the header, in its CRC, and in the pixels (where libspng alone would read on).
    damaged += [canvas[:at] + bytes([canvas[at] ^ 1]) + canvas[at + 1:] for at in (18, 30, idat + 10, idat + 300)]
    with_libspng = [_outcome(data) for data in damaged]
    monkeypatch.setattr(pp, "pyspng", None)
    assert with_libspng == [_outcome(data) for data in damaged]
    assert any(out[0] == "refused" for out in with_libspng)


def test_a_grey_picture_is_read_exactly_as_its_colour_copy():
    """Grey pictures are measured on one channel instead of three equal ones (half the time for
    a grey photo): the ink map must be the same to the bit, ground drifting or flat."""
    from model.preprocess import ink_view
    rng = np.random.default_rng(3)
    light = np.linspace(150, 250, 600)[None, :] * np.linspace(0.8, 1.0, 450)[:, None]  # a scan lit from one side
    page = Image.fromarray(np.clip(light + rng.normal(0, 4, light.shape), 0, 255).astype(np.uint8))
    ImageDraw.Draw(page).line([(280, 120), (330, 110), (300, 330)], fill=40, width=9)  # a 7
    for grey in (page, Image.open(io.BytesIO(fixture_bytes("mnist_5.png"))).convert("L")):
        ink, colour = ink_view(grey)[0], ink_view(grey.convert("RGB"))[0]
        assert ink.any() and ink.dtype == colour.dtype and np.array_equal(ink, colour)


def test_wide_paper_keeps_its_thin_lines_and_canvases_their_size():
    """ink_map shrinks large pictures: to 512 pixels a side, or, for paper wider than 4:3, to 384
    of its short side up to 1024 of the long one. A 1-pixel grey line on a 592x100 scan (a
    form's box side) survives; shrunk to 512x86 it fell under the speck filter."""
    def paper(width, height):
        img = Image.new("L", (width, height), 255)
        ImageDraw.Draw(img).line([(20, 10), (20, height - 10)], fill=110, width=2)
        ImageDraw.Draw(img).line([(60, 20), (90, 80)], fill=0, width=8)
        return img
    assert ink_map(paper(592, 100)).shape == (100, 592)
    assert ink_map(paper(592, 100))[15:-15, 20].min() > 0  # the line, whole
    assert ink_map(paper(3000, 300)).shape == (102, 1024)
    assert ink_map(paper(1000, 750)).shape == (384, 512)  # a 4:3 photo: as before
    canvas = Image.new("RGBA", (778, 280), (0, 0, 0, 0))  # the page's number canvas: its pen is thick
    ImageDraw.Draw(canvas).line([(100, 40), (100, 240)], fill=(20, 20, 20, 255), width=18)
    assert ink_map(canvas).shape == (184, 512)


@pytest.mark.parametrize("size", [(778, 280), (300, 700), (1200, 280)])
@pytest.mark.parametrize("pen", [(20, 20, 20, 255), (240, 240, 120, 255)])
def test_a_wide_canvas_measured_whole_then_shrunk_has_the_ink_of_the_canvas_shrunk_first(size, pen):
    """A canvas up to twice the working size has its ink measured at full size and then shrunk
    (one band to shrink, not four): the same ink as measuring the canvas shrunk first, in the
    same place and at the same size, within two levels of 8 bits (Pillow's 8-bit shrink rounds,
    and the ink is scaled by its peak); dark and light pens alike."""
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    w, h = size
    draw.line([(w * 0.1, h * 0.2), (w * 0.3, h * 0.8), (w * 0.6, h * 0.3)], fill=pen, width=18, joint="curve")
    draw.ellipse([w * 0.7, h * 0.3, w * 0.9, h * 0.7], outline=pen, width=14)
    shrunk = canvas.copy()
    shrunk.thumbnail((512, 512), Image.Resampling.BOX)
    whole, first = ink_map(canvas), ink_map(shrunk)
    assert whole.shape == first.shape == (shrunk.height, shrunk.width)
    assert np.abs(whole - first).max() <= 2 / 255
    assert (whole > 0).sum() > 0.05 * whole.size  # the strokes are there


@pytest.mark.parametrize("pen", [(20, 20, 20, 255), (240, 240, 120, 255), (200, 30, 30, 160)])
def test_a_drawing_has_the_same_ink_with_or_without_transparent_ground_around_it(pen):
    """A canvas's ink is measured in the box of its drawn pixels alone and put back in place:
    the drawing cut to that box (nothing transparent left around it) has the same ink there,
    pixel for pixel, and none lies outside the box; dark, light and half-transparent pens."""
    canvas = drawing(ink=pen)
    box = canvas.getchannel("A").getbbox()
    assert box != (0, 0) + canvas.size
    whole, cut = ink_map(canvas), ink_map(canvas.crop(box))
    left, top, right, bottom = box
    assert np.array_equal(whole[top:bottom, left:right], cut)
    assert whole.sum() == pytest.approx(cut.sum()) and (cut > 0.5).sum() > 0.05 * cut.size


@pytest.mark.parametrize("corner", ["top left", "top right", "bottom left", "bottom right", "middle"])
def test_a_drawing_anywhere_on_a_transparent_canvas_keeps_its_ink_there(corner):
    """Only the drawing's box is measured and put back in place: on a larger transparent
    canvas, touching any corner or in the middle, the drawing has the ink it has alone, where
    it was drawn, and the rest of the canvas has none."""
    canvas = drawing()
    cut = canvas.crop(canvas.getchannel("A").getbbox())
    big = Image.new("RGBA", (cut.width + 70, cut.height + 50), (0, 0, 0, 0))
    left = {"top left": 0, "bottom left": 0, "middle": 35}.get(corner, 70)
    top = {"top left": 0, "top right": 0, "middle": 25}.get(corner, 50)
    big.paste(cut, (left, top))
    ink, alone = ink_map(big), ink_map(cut)
    assert ink.shape == (big.height, big.width)
    assert np.array_equal(ink[top:top + cut.height, left:left + cut.width], alone)
    assert ink.sum() == pytest.approx(alone.sum()) and alone.max() > 0.5


@pytest.mark.parametrize("name", ["crop_3.jpg", "crop_4.jpg", "crop_7.jpg", "touching_3.png", "number_42.png"])
def test_finding_the_digit_in_the_inks_box_is_finding_it_in_the_picture(name):
    """to_mnist looks only at the box holding the ink, with the picture's size and the box's
    place (``frame``), so that the picture's border and centre still count: the digit found
    there is the one found in the whole picture, for crops with neighbours cut by the border,
    a digit with touching neighbours and a number, in the ink's box with and without a pixel of
    ground round it."""
    from model.preprocess import find_digit, ink_box, ink_view
    ink = ink_view(decode(fixture_bytes(name)))[0]
    whole = find_digit(ink)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    for box in (ink_box(ink > 0), (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))):
        if box is None:
            continue
        part = find_digit(ink[box], (box[0].start, box[1].start) + ink.shape)
        assert np.array_equal(part, whole[box])
        assert whole.sum() == pytest.approx(part.sum())


def test_the_pictures_centre_not_the_boxs_tells_a_neighbour_from_the_digit():
    """A 0 at the picture's centre, its neighbour close on its left and a speck far right: the
    picture's centre lies inside the 0 (a crop around it), so the neighbour stays out. Looked
    at in the ink's box with its ``frame``, the same; without it, the box's centre (moved right
    by the speck) would let the neighbour in."""
    from model.preprocess import find_digit, ink_box
    ink = np.zeros((100, 200), dtype=np.float32)
    ink[20:80, 85:90] = ink[20:25, 85:115] = ink[75:80, 85:115] = ink[20:80, 110:115] = 1.0
    ink[25:80, 76:84] = 1.0
    ink[50:53, 185:188] = 1.0
    whole = find_digit(ink)
    assert whole[:, 76:84].sum() < 0.25 * ink[:, 76:84].sum() and whole[:, 85:115].sum() == ink[:, 85:115].sum()
    box = ink_box(ink > 0)
    assert np.array_equal(find_digit(ink[box], (box[0].start, box[1].start) + ink.shape), whole[box])
    assert not np.array_equal(find_digit(ink[box]), whole[box])


def test_the_photo_paths_shortcuts_give_numpys_own_values():
    """A photo's ground is measured with medians and colour distances taken a faster way than
    numpy's own calls; the values, and so every photo's ink, must be the same to the bit: odd
    and even counts, ties, one colour or a colour per pixel."""
    from model.preprocess import _channel_max, _distance, _medians
    rng = np.random.default_rng(7)
    for k in (1, 2, 3, 400, 401, 1337):
        x = rng.random((3, k), dtype=np.float32)
        for values in (x, (np.round(x * 5) / 5).astype(np.float32)):
            assert np.array_equal(_medians(values), np.median(values, axis=1))
    rgb = rng.random((60, 80, 3), dtype=np.float32)
    for ground in (np.median(rgb[0], axis=0), rng.random((60, 80, 3), dtype=np.float32)):
        assert np.array_equal(_distance(rgb, ground), _channel_max(np.abs(rgb - ground)))
        planes = [np.ascontiguousarray(np.broadcast_to(ground, rgb.shape)[..., k]) for k in range(3)]
        assert np.array_equal(_distance(rgb, planes), _channel_max(np.abs(rgb - ground)))


def test_medians_counted_by_level_are_numpys_medians():
    """An 8-bit picture's ground medians come from counts of its 256 levels, per block of the
    grid and over all of it: the same values as np.median of the levels / 255, for odd and even
    counts, ties, one level only, a block of one pixel, and levels 0 and 255."""
    from model.preprocess import _counted_medians
    rng = np.random.default_rng(11)
    for n, groups, spread in ((1, 1, 256), (2, 1, 256), (401, 4, 256), (1337, 36, 256), (999, 7, 3), (50, 3, 1)):
        levels = rng.integers(0, spread, size=(n, 3), dtype=np.uint8)
        levels[: n // 10] = 255
        group = rng.integers(0, groups, size=n)
        group[0] = groups - 1
        counts = np.stack([np.stack([np.bincount(levels[group == g, k], minlength=256) for k in range(3)])
                           for g in range(groups)])
        medians = _counted_medians(counts)
        overall = _counted_medians(counts.sum(axis=0))
        values = levels.astype(np.float32) / 255.0
        assert np.array_equal(overall, np.median(values, axis=0))
        for g in range(groups):
            if (group == g).any():
                assert np.array_equal(medians[g], np.median(values[group == g], axis=0))


def test_a_photos_ground_by_levels_is_its_ground_by_values():
    """The ground of an opaque 8-bit picture, counted by levels with the ink in a bin of its own,
    is the one the float path takes from the same pixels picked out by the mask, to the bit:
    uneven, flat and nearly flat grounds (two levels off in a share of the ground either side of
    FLAT_GROUND), colour and grey, a grid of one block and of several, a block four fifths ink
    (it takes the overall median) and one all ink."""
    from model.preprocess import FLAT_GROUND, _ground_by_levels, _ground_by_values
    rng = np.random.default_rng(13)
    for h, w, c, ground, n in ((90, 120, 3, "uneven", 6), (90, 120, 1, "uneven", 3), (40, 50, 3, "uneven", 1),
                               (64, 64, 3, "flat", 6), (128, 96, 1, "flat", 4),
                               (60, 80, 3, "two levels off", 4), (60, 80, 3, "nearly flat", 4)):
        if ground == "uneven":
            levels = np.clip(rng.normal(220, 4, (h, w, c)) * np.linspace(1.0, 0.6, w)[None, :, None], 0, 255)
        else:
            off = {"flat": 0.02, "two levels off": 1.5 * (1 - FLAT_GROUND), "nearly flat": 0.5 * (1 - FLAT_GROUND)}[ground]
            levels = 220 + 2 * (rng.random((h, w, 1)) < off)
            levels = np.repeat(levels, c, axis=2)
        levels = levels.astype(np.uint8)
        not_ink = rng.random((h, w)) > 0.05
        if n > 1:
            bh, bw = h // n, w // n
            not_ink[:bh, :bw] = False  # the first block all ink
            not_ink[bh:2 * bh, :bw] = rng.random((bh, bw)) < 0.2  # the one below it four fifths ink
        levels[~not_ink] = 30
        rows, cols = np.linspace(0, h, n + 1).astype(int), np.linspace(0, w, n + 1).astype(int)
        by_levels = _ground_by_levels(levels, not_ink, rows, cols)
        by_values = _ground_by_values(levels.astype(np.float32) / 255.0, not_ink, rows, cols)
        flat = n == 1 or ground in ("flat", "nearly flat")
        assert by_levels.shape == by_values.shape == ((c,) if flat else (n, n, c)), ground
        assert np.array_equal(by_levels, by_values), ground
        if not flat:  # the blocks mostly ink take the overall median, the others their own
            overall = _ground_by_levels(levels, not_ink, rows[::n], cols[::n])
            assert np.array_equal(by_levels[0, 0], overall) and np.array_equal(by_levels[1, 0], overall)
            if ground == "uneven":
                assert not np.array_equal(by_levels[-1, -1], overall)


def test_an_opaque_8_bit_photo_reads_as_its_rgba_form():
    """The photo path reads RGB and grey pictures from their 8-bit levels (``_codes``); the ink
    must be the same to the bit as the same picture sent with an alpha band, fully opaque, which
    takes the float path."""
    from model.preprocess import ink_map
    rng = np.random.default_rng(5)
    paper = np.clip(rng.normal(225, 6, (300, 400, 3)) * np.linspace(1.0, 0.75, 400)[None, :, None], 0, 255)
    paper[100:200, 180:200] = 40  # a stroke
    paper[180:200, 150:260] = 50
    rgb = Image.fromarray(paper.astype(np.uint8))
    for img in (rgb, rgb.convert("L")):
        opaque = img.convert("RGBA" if img.mode == "RGB" else "LA")
        ink = ink_map(img)
        assert ink.max() > 0
        assert np.array_equal(ink, ink_map(opaque))


def test_paper_lines_go_but_a_tightly_cropped_1_or_dash_stays():
    """A notebook's lines across the page and its margin go (a stroke through a line keeps the
    line's pixels there); a line down that is all there is, or beside a full stop, is a 1."""
    page = np.zeros((200, 300), dtype=np.float32)
    page[[40, 120, 121], :] = 0.5  # ruled lines; the digits rest on the second
    page[:, 20:22] = 0.4  # the margin
    page[60:126, 150:156] = 1.0  # a 1 whose foot goes through the line
    page[64:118, 204:236] = 1.0  # a block of ink: a digit
    plain = without_paper_lines(page)
    assert plain[40].max() == 0 and plain[:, 20:22].max() == 0  # the lines and the margin are gone
    assert plain[121, 150:156].min() == 1.0 and plain[121, 160:190].max() == 0  # ... but where the 1 crosses
    assert (plain[60:126, 150:156] == 1.0).all() and plain[64:118, 204:236].sum() == page[64:118, 204:236].sum()
    one = np.zeros((120, 40), dtype=np.float32)
    one[:, 16:24] = 1.0
    assert without_paper_lines(one) is one
    one[100:108, 30:38] = 1.0  # with a full stop beside it
    assert without_paper_lines(one) is one
    dash = np.zeros((30, 120), dtype=np.float32)
    dash[12:18, :] = 1.0
    assert without_paper_lines(dash) is dash


def test_paper_lines_go_when_dots_of_a_faded_margin_lie_far_from_the_writing():
    """Where a page's pale margin faded in the ink map, the dots at its crossings with the ruled
    lines stay, at the top and foot of the page. They are no writing: the lines still reach
    past the writing, and go (before, the dots made the writing look as wide as the page). A
    line with a hole of a pixel goes too."""
    page = np.zeros((200, 300), dtype=np.float32)
    page[[40, 120], :] = 0.5  # ruled lines, the margin between them faded
    page[2:6, 8:12] = page[190:194, 8:12] = 0.6  # ... but for the dots where it crosses lines off the picture
    page[64:118, 150:200] = 1.0  # the writing
    page[160, :] = 0.5
    page[160, 130] = 0.0  # a hole of a pixel in a pale line, as a JPEG leaves where another line crossed it
    plain = without_paper_lines(page)
    assert plain[[40, 120, 160]].max() == 0 and plain[64:118, 150:200].min() == 1.0
    assert without_specks(page > 0)[2:6].max() == 0  # the dots are specks beside the writing ...
    dots = (page > 0) & (page < 0.5)
    assert without_specks(dots) is dots  # ... and kept when they are all there is


def test_a_stroke_along_a_pale_line_stays():
    """A 2's foot resting on a notebook's pale line lies along it, not through it: the foot,
    far darker than the line, stays when the line goes (it went with the line, and a 2 read as
    a 7). Along a line as dark as the writing nothing tells the two apart: that goes as before."""
    for line, kept in ((0.4, True), (1.0, False)):
        page = np.zeros((200, 300), dtype=np.float32)
        page[[40, 120, 121], :] = line
        page[70:121, 150:156] = 1.0  # the 2's stroke down to the line ...
        page[119:122, 150:200] = 1.0  # ... and its foot along it
        page[64:118, 220:250] = 1.0  # a digit beside it
        plain = without_paper_lines(page)
        assert plain[40].max() == 0 and plain[120, 210:].max() == 0 and plain[120, :140].max() == 0  # the lines go
        assert (plain[120, 150:200] == 1.0).all() == kept, line


def test_ink_map_is_zero_on_the_ground():
    ink = ink_map(drawing(ground=(255,) * 4, ink=(0, 0, 0, 255), mode="RGB"))
    assert ink.min() == 0 and ink.max() == 1 and ink[0].max() == 0
