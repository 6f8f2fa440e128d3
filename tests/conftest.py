"""Shared test helpers: fixture files, the input forms a client can send, and a real
TorchServe on free loopback ports started from a temporary directory (e2e, reliability)."""
from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image, ImageOps

from serving.archive import build_archive, stored_version
from serving.server import Gateway, TorchServe, free_port_overrides, free_ports
from tests.reliability import figures as reliability_figures
from training.paper import on_page as paper_page

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SHIPPED_MODEL = REPO / "model" / "digits.pt"
# The versions the shipped model files say they are, which config.properties serves
# (tests/unit/test_one_version.py); the test servers also build the digits model as OTHER_VERSION.
SHIPPED_VERSION = stored_version(SHIPPED_MODEL)
NUMBERS_VERSION = stored_version(REPO / "model" / "numbers.pt")
OTHER_VERSION = "2.0"


def _without_shared_datasets() -> bool:
    from training.sources import SOURCES_DIR
    return not (SOURCES_DIR / "README.md").exists() and not os.environ.get("CI")


# Tests that read ../shared/datasets. CI always has them beside the clone, so there a missing
# folder fails (training.sources.verify names what is missing); a user's clone without them
# skips these, since serving and the other tests do not need them.
needs_shared_datasets = pytest.mark.skipif(_without_shared_datasets(),
                                           reason="the shared datasets are not beside this clone (../shared/datasets)")


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def strokes() -> dict[str, list]:
    return json.loads((FIXTURES / "strokes.json").read_text())


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def data_url(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="session")
def digit_fixtures() -> list[tuple[str, int]]:
    """(file name, true digit) for every committed digit image."""
    return [(f"{kind}_{d}.png", d) for kind in ("mnist", "canvas", "drawn") for d in range(10)]


def drawn_digit(d: int | str) -> np.ndarray:
    """The committed drawn_<d>.png's alpha (the ink, 280 rows), its columns cut to the ink."""
    a = np.asarray(Image.open(FIXTURES / f"drawn_{d}.png"))[..., 3]
    cols = np.flatnonzero(a.max(axis=0) > 0)
    return a[:, cols[0]:cols[-1] + 1]


def written_png(text: str) -> bytes:
    """``text`` typed in DejaVu Sans, 160 px, dark on a transparent 600x280 canvas (as the page's
    pad sends a drawing): letters and signs that are no number."""
    from PIL import ImageDraw, ImageFont

    from training.wild import FONTS_DIR

    img = Image.new("RGBA", (600, 280))
    ImageDraw.Draw(img).text((220, 40), text, font=ImageFont.truetype(str(FONTS_DIR / "DejaVuSans.ttf"), 160),
                             fill=(0, 0, 0, 255))
    return encode(img, "PNG")


def draw_comma(draw, x: float, y: float, head: float, pen: int) -> None:
    """A handwritten comma: a round head centred at (x, y) and a tail curving down to the left."""
    draw.ellipse([x - head, y - head, x + head, y + head], fill=255)
    draw.arc([x - 2.2 * head, y - 1.2 * head, x + head, y + 2.2 * head], 0, 110, fill=255, width=pen)


def comma_png(head: float, pen: int, quote: bool = False) -> bytes:
    """A comma (or with ``quote`` two of them side by side, a closing quote) drawn alone on a
    transparent 280x280 canvas, as the page's pad sends it."""
    from PIL import ImageDraw

    alpha = Image.new("L", (280, 280))
    for dx in ((0, 2.6 * head) if quote else (0,)):
        draw_comma(ImageDraw.Draw(alpha), 120 + dx, 110, head, pen)
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[..., 3] = np.asarray(alpha)
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def number_png(text: str, gaps: list[int] | int = 30, marks: dict[int, str] | None = None) -> tuple[bytes, list[int]]:
    """A drawn number on a transparent canvas (as the page sends): the committed drawn_<d>.png
    digits side by side, ``gaps`` pixels between their ink (negative: overlapping, so they
    touch), and ``marks`` after digit k ("dot", "tap": a dot as wide as the page's pen, "dash",
    "comma" or "slash": a date's). Returns the PNG and each digit's left edge."""
    gaps = gaps if isinstance(gaps, list) else [gaps] * (len(text) - 1)
    alphas = [drawn_digit(d) for d in text]
    canvas = np.zeros((280, sum(a.shape[1] for a in alphas) + sum(max(g, 0) for g in gaps) + 120 * len(marks or {}) + 160),
                      dtype=np.uint8)  # (cut to the drawing's end below)
    x, lefts = 40, []
    for k, a in enumerate(alphas):
        lefts.append(x)
        canvas[:, x:x + a.shape[1]] = np.maximum(canvas[:, x:x + a.shape[1]], a)
        x += a.shape[1]
        mark = (marks or {}).get(k)
        if mark == "dot":  # a full stop on the baseline, in the gap
            canvas[214:226, x + 4:x + 16] = 255
            x += 20
        elif mark == "tap":  # a full stop as the page's pen (18 px) leaves it: a round dot
            yy, xx = np.ogrid[:280, :canvas.shape[1]]
            canvas[(yy - 218) ** 2 + (xx - (x + 16)) ** 2 <= 81] = 255
            x += 30
        elif mark == "dash":  # a hyphen at mid height
            canvas[136:146, x + 6:x + 40] = 255
            x += 46
        elif mark == "slash":  # a date's slash, leaning right, taller than the digits
            from PIL import ImageDraw

            img = Image.fromarray(canvas)
            ImageDraw.Draw(img).line([(x + 14, 268), (x + 100, 14)], fill=255, width=16)
            canvas = np.asarray(img).copy()
            x += 114
        elif mark == "comma":  # a comma on the baseline, in the gap
            from PIL import ImageDraw

            img = Image.fromarray(canvas)
            draw_comma(ImageDraw.Draw(img), x + 16, 216, 9, 6)
            canvas = np.asarray(img).copy()
            x += 30
        if k < len(gaps):
            x += gaps[k]
    rgba = np.zeros((*canvas.shape, 4), dtype=np.uint8)
    rgba[..., 3] = canvas
    return encode(Image.fromarray(rgba[:, :x + 40], mode="RGBA"), "PNG"), lefts


def touching_crop_png(left: str, digit: int, right: str, gap: int = -8, keep: int = 45) -> bytes:
    """A digit cut from ``number_png``'s drawing of ``left``, ``digit``, ``right`` overlapping by
    ``-gap`` pixels (their strokes touch), with ``keep`` pixels of each neighbour: the cheque crop
    whose neighbour's stroke joins the digit's ink."""
    png, lefts = number_png(f"{left}{digit}{right}", [gap, gap])
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3][:, lefts[1] - keep:lefts[2] + keep]
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def stacked_numbers_png(top: str, bottom: str, gap: int = 0) -> bytes:
    """Two of ``number_png``'s drawings one above the other (their canvases ``gap`` pixels
    apart): a form field of two lines."""
    a, b = (np.asarray(Image.open(io.BytesIO(number_png(t, 30)[0])))[..., 3] for t in (top, bottom))
    alpha = np.zeros((a.shape[0] + gap + b.shape[0], max(a.shape[1], b.shape[1])), dtype=np.uint8)
    alpha[:a.shape[0], :a.shape[1]] = a
    alpha[a.shape[0] + gap:, :b.shape[1]] = b
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def cropped_number_png(text: str, gaps: int = 10, heavier: int = 0) -> bytes:
    """``number_png``'s drawing cropped to its ink with a 4-pixel margin, as an upload of a
    number cut from a larger picture: its full-strength strokes cover a quarter or more of the
    picture. ``heavier`` thickens every stroke by that many pixels each side (a heavier pen)."""
    from scipy import ndimage

    alpha = np.asarray(Image.open(io.BytesIO(number_png(text, gaps)[0])))[..., 3] > 0
    if heavier:
        alpha = ndimage.binary_dilation(alpha, iterations=heavier)
    ys, xs = np.nonzero(alpha)
    alpha = alpha[ys.min() - 4:ys.max() + 5, xs.min() - 4:xs.max() + 5]
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha * 255
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")



def turned_number_png(text: str, degrees: float) -> tuple[bytes, tuple[float, float, float]]:
    """``number_png``'s drawing (30 pixels apart) as dark ink on white paper, turned by
    ``degrees`` (counter-clockwise as seen: the string climbs to the right), as a photo of a
    number written at an angle. Returns the PNG and the turn's (degrees, centre x, centre y)
    before the picture grew to hold the turned drawing (PIL's ``rotate(expand=True)``)."""
    alpha = np.asarray(Image.open(io.BytesIO(number_png(text, 30)[0])))[..., 3]
    paper = Image.fromarray(255 - alpha, mode="L")
    turned = paper.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    return encode(turned, "PNG"), (degrees, paper.width / 2, paper.height / 2)


def boxed_number_png(text: str, lowered: dict[int, int] | None = None, shrink: int = 1) -> tuple[bytes, list[tuple[int, int]]]:
    """A form's number field: printed grey cells (3-pixel lines) on white paper, a drawn digit
    (``number_png``'s) in each, dark ink. ``lowered`` moves digit k down by that many pixels, so a
    stroke can cross the field's bottom line, as writing does; ``shrink`` scans it at that
    fraction of the size (the lines' share of the strokes grows). Returns the PNG and each cell's
    [left, right) columns, in its pixels."""
    alphas = [drawn_digit(d) for d in text]
    cell = max(a.shape[1] for a in alphas) + 60
    ink = np.zeros((320, cell * len(text) + 40), dtype=np.uint8)
    cells = []
    for k, a in enumerate(alphas):
        left = 20 + k * cell
        x, y = left + (cell - a.shape[1]) // 2, 20 + (lowered or {}).get(k, 0)
        ink[y:y + 280, x:x + a.shape[1]] = np.maximum(ink[y:y + 280, x:x + a.shape[1]], a[:320 - y])
        cells.append((left, left + cell))
    paper = 255 - ink.astype(np.int32)
    lines = np.zeros(ink.shape, dtype=bool)
    lines[8:11, 20:20 + cell * len(text) + 3] = True
    lines[305:308, 20:20 + cell * len(text) + 3] = True
    for k in range(len(text) + 1):
        lines[8:308, 20 + k * cell:23 + k * cell] = True
    paper = np.where(lines, np.minimum(paper, 110), paper)
    img = Image.fromarray(paper.astype(np.uint8), mode="L")
    if shrink > 1:
        img = img.resize((img.width // shrink, img.height // shrink), Image.Resampling.BOX)
        cells = [(left // shrink, right // shrink) for left, right in cells]
    return encode(img, "PNG"), cells



def on_page(png: bytes, height: int, page: tuple[int, int] = (3200, 2400), fmt: str = "JPEG") -> tuple[bytes, tuple[int, int], float]:
    """A drawing written small on a large page, as a scan or a phone photo of a form gives it:
    ``png``'s ink, dark on white paper, scaled to ``height`` pixels tall, its top left a third
    of the way across and half way down. Returns the page's bytes, that top left and the scale."""
    at = (page[0] // 3, page[1] // 2)
    img = Image.open(io.BytesIO(png))
    ink = img.getchannel("A") if img.mode == "RGBA" else ImageOps.invert(img.convert("L"))
    scale = height / ink.height
    ink = ink.resize((max(1, round(ink.width * scale)), height), Image.Resampling.LANCZOS)
    return paper_page(ImageOps.invert(ink), page, at, fmt), at, scale


def underlined_digit_png(d: int) -> bytes:
    """The committed drawn_<d>.png as dark ink on white paper with a grey line, far wider than
    the digit, through its foot: a digit written on ruled paper."""
    alpha = np.asarray(Image.open(FIXTURES / f"drawn_{d}.png"))[..., 3]
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    paper = 255 - alpha.astype(np.int32)
    paper[rows[-1] - 6:rows[-1] - 2, 10:-10] = np.minimum(paper[rows[-1] - 6:rows[-1] - 2, 10:-10], 110)
    return encode(Image.fromarray(paper.astype(np.uint8), mode="L"), "PNG")


# ---------------------------------------------------------------- a real TorchServe

@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """Archives of the shipped model as its own version and as OTHER_VERSION, and of numbers as
    its own, built the way `make archive` does."""
    store = tmp_path_factory.mktemp("model_store")
    for version in (SHIPPED_VERSION, OTHER_VERSION):
        build_archive(version, store)
    build_archive(NUMBERS_VERSION, store, model_name="numbers")
    return store


def start_server(run_dir: Path, store: Path, overrides: dict[str, str] | None = None,
                 server_class: type[TorchServe] = TorchServe) -> TorchServe:
    """Start TorchServe on free loopback ports; ``overrides`` change other config.properties settings."""
    server = server_class(run_dir, store, overrides={**free_port_overrides(), **(overrides or {})})
    server.start(timeout=240)
    return server


def stop_server(server: TorchServe) -> None:
    """Stop it and check that the frontend and every worker are gone."""
    left = server.stop(timeout=60)
    assert not left, f"TorchServe left processes running: {left}"


@pytest.fixture(scope="session")
def server(stack):
    """One TorchServe for the whole session, with the settings of config.properties: the stack's
    (below), so that a worker of `make test` starts one TorchServe for both, not two. The page's
    gateway in front of it changes nothing for the tests that call TorchServe directly."""
    return stack[0]


class Client:
    """HTTP calls to one server with its current keys."""

    def __init__(self, server: TorchServe):
        self.server = server

    def predict(self, body, path: str = "digits", headers: dict | None = None, **kw) -> requests.Response:
        h = {**self.server.headers("inference"), **(headers or {})}
        return requests.post(f"{self.server.inference_url}/predictions/{path}", data=body, headers=h, timeout=60, **kw)

    def manage(self, method: str, path: str, **kw) -> requests.Response:
        """A management call through serving's retrying helper (TorchServe's transient 500s)."""
        return self.server.manage(method, path, **kw)

    def workers(self, version: str) -> list[dict]:
        r = self.manage("GET", f"models/digits/{version}")
        r.raise_for_status()
        return r.json()[0]["workers"]

    def wait_workers(self, version: str, count: int, timeout: float = 180) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers(version)
            if len(workers) == count and all(w["status"] == "READY" for w in workers):
                return workers
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} READY workers, got {workers}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def client(server) -> Client:
    return Client(server)


# ---------------------------------------------------------------- the page's gateway in front of it

def stop_gateway(gateway: Gateway) -> None:
    """Stop it and check that its process is gone."""
    pid = gateway.pid()
    gateway.stop()
    assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, \
        f"the gateway (pid {pid}) is still running"


def gateway_for(run_dir: Path, inference_port: int, management_port: int) -> Gateway:
    """A gateway (not started) for a TorchServe said to be at these ports, with made-up keys:
    a run directory as serving.server writes it, without the server."""
    (gateway_port,) = free_ports(1)
    (run_dir / "config.properties").write_text(f"inference_address=http://127.0.0.1:{inference_port}\n"
                                               f"management_address=http://127.0.0.1:{management_port}\n"
                                               f"gateway_address=http://127.0.0.1:{gateway_port}\n")
    keys = {"management": {"key": "m-key"}, "inference": {"key": "i-key"}, "API": {"key": "a-key"}}
    (run_dir / "key_file.json").write_text(json.dumps(keys))
    return Gateway(run_dir)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, model_store):
    """A real TorchServe and the page's gateway in front of it, started as `make serve` does."""
    (port,) = free_ports(1)
    run_dir = tmp_path_factory.mktemp("stack")
    server = start_server(run_dir, model_store,  # corrections go to a file of its own, not data/
                          overrides={"gateway_address": f"http://127.0.0.1:{port}",
                                     "feedback_db": str(run_dir / "feedback.sqlite3")})
    gateway = Gateway(server.run_dir)
    try:
        gateway.start()
    except Exception:
        stop_server(server)
        raise
    yield server, gateway
    stop_gateway(gateway)
    stop_server(server)


# ---------------------------------------------------------------- the run: its order, its workers, the figures

# `make test` runs the files on two workers (pytest-xdist, --dist loadfile: a whole file to a
# worker at a time, in the order below). The files that take longest go first, so that none of
# them starts last while the other worker has nothing left to do. The rest follow as collected.
LONGEST_FIRST = ("unit/test_network.py", "ui/test_page.py", "release/test_release.py", "reliability/test_faults.py",
                 "bulk/test_bulk.py", "unit/test_train_numbers.py", "ui/test_numbers.py", "unit/test_training.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.path.relative_to(REPO / "tests").as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each file's tests stay in their order


def _in_worker(config) -> bool:
    """Whether this process is a pytest-xdist worker (the controller runs no tests)."""
    return hasattr(config, "workeroutput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: a worker finished; its reliability figures come back with it."""
    reliability_figures.take(getattr(node, "workeroutput", {}))


def pytest_sessionfinish(session, exitstatus):
    if _in_worker(session.config):
        reliability_figures.send(session.config)
    else:
        reliability_figures.judge(session, exitstatus)


def pytest_terminal_summary(terminalreporter):
    if not _in_worker(terminalreporter.config):
        reliability_figures.summary(terminalreporter)
