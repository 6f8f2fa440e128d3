"""The web page in a real headless Chromium, against the real stack (TorchServe and the gateway).

It draws digits with real pointer events (mouse, touch and pen) from tests/fixtures/strokes.json,
uploads images and non-images, and checks what a person would see. Screenshots go to
build/ui-screenshots/. Needs Debian's chromium and chromium-driver (`make browser`).
"""
from __future__ import annotations

import base64
import math
import shutil
from pathlib import Path

import psutil
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from model.preprocess import MAX_BYTES
from tests.conftest import FIXTURES, REPO, free_ports, gateway_for, stop_gateway, strokes

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = REPO / "build" / "ui-screenshots"
CANVAS = 280          # the logical side strokes.json is drawn on
STEP = 4              # logical units between pointer moves, about what a real pen reports
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars"]
MOUSE, TOUCH, PEN = interaction.POINTER_MOUSE, interaction.POINTER_TOUCH, interaction.POINTER_PEN


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: run `make browser` (Debian's chromium and chromium-driver)"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path_factory.mktemp("chromedriver") / "log"))
    driver = webdriver.Chrome(service=service, options=options)
    tree = [psutil.Process(service.process.pid), *psutil.Process(service.process.pid).children(recursive=True)]
    yield driver
    driver.quit()
    _, alive = psutil.wait_procs(tree, timeout=60)
    for p in alive:
        p.kill()
    assert not alive, f"Chromium left processes running: {alive}"


def open_page(browser, stack):
    """The page, loaded from the gateway, once the model server reports ready (every UI module's
    ``page`` fixture)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    _, gateway = stack
    browser.get(gateway.url + "/")
    wait_for(browser, lambda d: d.find_element(By.ID, "server-status").get_attribute("data-state") == "ok",
             "the page never said the model is ready")
    return browser


@pytest.fixture(scope="module")
def page(browser, stack):
    shutil.rmtree(SHOTS, ignore_errors=True)  # this module's screenshots start the folder afresh
    return open_page(browser, stack)


# ---------------------------------------------------------------- helpers

def wait_for(driver, condition, message: str, timeout: float = 120):
    """Wait until ``condition`` holds; ``timeout`` only catches a hang (a busy CI machine is slow)."""
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        raise AssertionError(f"{message}; page says: {text(driver, 'message')!r}") from None


def text(driver, element_id: str) -> str:
    el = driver.find_element(By.ID, element_id)
    return el.text if el.is_displayed() else ""


def shot(driver, name: str, width: int | None = None) -> Path:
    """A full-page screenshot (Chromium's DevTools capture beyond the viewport)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    data = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width or size["width"], "height": size["height"], "scale": 1}})
    path = SHOTS / name
    path.write_bytes(base64.b64decode(data["data"]))
    return path


def dense(path: list[list[float]], step: float = STEP) -> list[tuple[float, float]]:
    """The path with a point every ``step`` units, as a real pointer reports a stroke."""
    out = [tuple(path[0])]
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        n = max(1, math.ceil(math.dist((x0, y0), (x1, y1)) / step))
        out += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return out


def draw(driver, paths: list, kind: str = MOUSE, pad_id: str = "pad", width: float = CANVAS,
         step: float = STEP) -> None:
    """Draw the strokes on the canvas ``pad_id`` (``width`` units across) with real pointer
    events of the given kind, one every ``step`` units along them."""
    pad = driver.find_element(By.ID, pad_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    left, top, side = driver.execute_script(
        "const p = arguments[0], r = p.getBoundingClientRect();"
        "return [r.left + p.clientLeft, r.top + p.clientTop, p.clientWidth];", pad)
    scale = side / width
    actions = ActionBuilder(driver, mouse=PointerInput(kind, f"{kind}-pointer"), duration=5)
    for path in paths:
        points = [(round(left + x * scale), round(top + y * scale)) for x, y in dense(path, step)]
        actions.pointer_action.move_to_location(*points[0])
        actions.pointer_action.pointer_down()
        for x, y in points[1:]:
            actions.pointer_action.move_to_location(x, y)
        actions.pointer_action.pointer_up()
    actions.perform()


def answers(driver) -> int:
    return int(driver.find_element(By.ID, "result").get_attribute("data-answers") or 0)


def after_answer(driver, act) -> None:
    """Do ``act`` and wait until the page has shown the gateway's answer to it."""
    before = answers(driver)
    act()
    wait_for(driver, lambda d: answers(d) > before, "the page showed no answer")


def click(driver, element_id: str) -> None:
    driver.find_element(By.ID, element_id).click()


def shown_digit(driver) -> str:
    assert driver.find_element(By.ID, "answer").is_displayed(), text(driver, "message")
    return driver.find_element(By.ID, "digit").text


def upload(driver, path: Path) -> None:
    driver.find_element(By.ID, "file").send_keys(str(path))


def white_jpeg(png: Path, out: Path) -> Path:
    img = Image.open(png).convert("RGBA")
    Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert("RGB").save(out, "JPEG", quality=85)
    return out


# ---------------------------------------------------------------- tests

def test_page_loads_with_labelled_controls(page):
    assert "digits" in page.title
    assert page.find_element(By.ID, "server-status").text == "Model ready"
    for button in ("undo", "clear", "predict"):
        assert page.find_element(By.ID, button).accessible_name, button
    assert "Draw one digit" in page.find_element(By.ID, "pad").accessible_name
    assert page.find_element(By.ID, "live").accessible_name.startswith("Live")
    assert page.find_element(By.ID, "file").accessible_name == "Choose an image…"
    assert "up to 5 MB" in page.find_element(By.ID, "limits").text
    guide = page.find_element(By.CSS_SELECTOR, ".guide").text
    assert "not stored" in guide and "How to draw" in guide and "cannot" in guide
    assert page.find_element(By.ID, "placeholder").is_displayed()
    shot(page, "01-start.png")


def test_empty_canvas_asks_for_a_digit_first(page):
    before = answers(page)
    click(page, "predict")
    assert "Draw a digit first" in text(page, "message")
    assert answers(page) == before  # nothing was sent


@pytest.mark.parametrize("digit, kind", [(1, MOUSE), (4, TOUCH), (7, PEN), (0, MOUSE), (3, TOUCH)])
def test_drawn_digits_are_read(page, digit, kind):
    click(page, "clear")
    draw(page, strokes()[str(digit)], kind)
    after_answer(page, lambda: click(page, "predict"))
    assert shown_digit(page) == str(digit), page.find_element(By.ID, "chart").get_attribute("aria-label")
    shot(page, f"02-drawn-{digit}-{kind}.png")


def test_results_show_chart_models_eye_and_activation_maps(page):
    click(page, "clear")
    draw(page, strokes()["7"])
    after_answer(page, lambda: click(page, "predict"))
    assert shown_digit(page) == "7"
    assert page.find_element(By.ID, "confidence").text.endswith("%")
    bars = page.find_elements(By.CSS_SELECTOR, "#chart .col")
    assert [b.get_attribute("data-digit") for b in bars] == [str(d) for d in range(10)]
    heights = [b.find_element(By.CSS_SELECTOR, ".bar").size["height"] for b in bars]
    assert heights.index(max(heights)) == 7 and max(heights) > 50
    assert "chosen" in bars[7].get_attribute("class")
    eye = page.find_element(By.ID, "model-eye")
    assert page.execute_script("return [arguments[0].complete, arguments[0].naturalWidth, arguments[0].naturalHeight]",
                               eye) == [True, 28, 28]
    assert eye.size["width"] >= 100  # shown scaled up
    assert page.execute_script("return getComputedStyle(arguments[0]).imageRendering", eye) == "pixelated"
    sent = page.find_element(By.ID, "sent")
    assert page.execute_script("return arguments[0].naturalWidth", sent) == CANVAS  # the 280x280 drawing
    assert page.find_element(By.ID, "maps-section").is_displayed()
    maps = page.find_elements(By.CSS_SELECTOR, "#maps figure")
    assert [m.find_element(By.TAG_NAME, "strong").text for m in maps] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert "32 maps · 28×28" in maps[0].text
    for m in maps:
        img = m.find_element(By.TAG_NAME, "img")
        assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        assert img.is_displayed() and img.size["width"] > 50
    shot(page, "03-results-7.png")


def test_undo_and_keyboard(page):
    click(page, "clear")
    draw(page, strokes()["1"])
    draw(page, [[[40, 250], [250, 250]], [[40, 30], [250, 200]]])  # two stray strokes
    pad = page.find_element(By.ID, "pad")
    pad.send_keys(Keys.CONTROL, "z")  # undo by keyboard ...
    click(page, "undo")               # ... and by button
    assert page.find_element(By.ID, "undo").is_enabled()  # the 1 is still there
    after_answer(page, lambda: pad.send_keys(Keys.ENTER))  # predict from the keyboard
    assert shown_digit(page) == "1"
    pad.send_keys(Keys.DELETE)
    assert not page.find_element(By.ID, "clear").is_enabled()
    assert page.find_element(By.ID, "pad-hint").is_displayed()


def test_live_mode_predicts_when_a_stroke_ends(page):
    click(page, "clear")
    click(page, "live")
    try:
        after_answer(page, lambda: draw(page, strokes()["4"], TOUCH))
        assert shown_digit(page) == "4"
    finally:
        click(page, "live")


def test_upload_png(page):
    after_answer(page, lambda: upload(page, FIXTURES / "drawn_2.png"))
    assert shown_digit(page) == "2"
    assert page.execute_script("return document.getElementById('model-eye').naturalWidth") == 28
    shot(page, "04-upload-png.png")


def test_a_crop_read_twice_says_so(page):
    """A digit cut with its neighbours' strokes touching it: the digits network is unsure, the
    numbers network reads it again, and the page says what that second reading saw."""
    after_answer(page, lambda: upload(page, FIXTURES / "touching_3.png"))
    assert shown_digit(page) == "3"
    verdict = page.find_element(By.ID, "verdict-text").text
    assert "Read twice: the numbers model" in verdict and "saw a 3" in verdict, verdict
    shot(page, "05b-read-twice.png")


def test_upload_jpeg(page, tmp_path):
    photo = white_jpeg(FIXTURES / "drawn_5.png", tmp_path / "five.jpg")
    after_answer(page, lambda: upload(page, photo))
    assert shown_digit(page) == "5"
    assert page.execute_script("return document.getElementById('sent').naturalWidth") == CANVAS
    shot(page, "05-upload-jpeg.png")


def test_pdf_and_text_are_refused_in_the_page(page, tmp_path):
    pdf = tmp_path / "homework.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    before = answers(page)
    upload(page, pdf)
    message = text(page, "message")
    assert "homework.pdf" in message and "PDF" in message and "Please choose an image" in message
    assert page.find_element(By.ID, "message").get_attribute("data-kind") == "error"
    shot(page, "06-refused-pdf.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("seven")
    upload(page, notes)
    assert "a text file" in text(page, "message")
    assert answers(page) == before  # neither reached the server


def test_an_iphone_heic_photo_is_refused_in_the_page_with_what_to_do(page, tmp_path):
    photo = tmp_path / "IMG_0042.HEIC"
    photo.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    before = answers(page)
    upload(page, photo)
    message = text(page, "message")
    assert "IMG_0042.HEIC" in message and "HEIC" in message and "as JPEG" in message, message
    assert answers(page) == before  # it did not reach the server


def test_oversize_image_is_refused_in_the_page(page, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes((FIXTURES / "drawn_2.png").read_bytes() + bytes(MAX_BYTES))
    before = answers(page)
    upload(page, big)
    assert "huge.png" in text(page, "message") and "up to 5 MB" in text(page, "message")
    assert answers(page) == before


def test_a_pdf_named_png_is_refused_by_the_server(page, tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_bytes(b"%PDF-1.4\n%%EOF\n")
    after_answer(page, lambda: upload(page, fake))
    message = text(page, "message")
    assert "Not an image the model can read" in message and "PDF" in message
    assert not page.find_element(By.ID, "answer").is_displayed()


def test_blank_image_gets_an_honest_message(page, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (280, 280), "white").save(blank)
    after_answer(page, lambda: upload(page, blank))
    assert "No digit found" in text(page, "message")
    shot(page, "07-no-digit.png")


def test_an_unclear_drawing_is_called_unsure(page):
    """A filled block is no digit: the page must say the model is unsure, not just name a digit."""
    click(page, "clear")
    # Two dense zigzags, one down and one across, fill a square: no digit covers that much.
    block = [[[50 + 180 * (i % 2), 50 + 10 * i] for i in range(19)],
             [[50 + 10 * i, 50 + 180 * (i % 2)] for i in range(19)]]
    draw(page, block, step=3 * STEP)  # a fast hand: fewer pointer moves (the page joins them up), a third of the time
    after_answer(page, lambda: click(page, "predict"))
    unsure = page.find_element(By.ID, "unsure")
    assert text(page, "digit") == "?" and unsure.is_displayed()
    assert "The model is unsure" in unsure.text and "No answer" in text(page, "verdict-text")
    shot(page, "08-unsure.png")


def test_phone_sized_screen(page, stack):
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        page.refresh()
        wait_for(page, lambda d: d.find_element(By.ID, "server-status").get_attribute("data-state") == "ok",
                 "the page never said the model is ready")
        assert page.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        pad = page.find_element(By.ID, "pad")
        assert 250 <= pad.size["width"] <= 390
        draw(page, strokes()["7"], TOUCH)
        after_answer(page, lambda: click(page, "predict"))
        assert shown_digit(page) == "7"
        for element_id in ("predict", "undo", "clear"):
            assert page.find_element(By.ID, element_id).size["height"] >= 44  # finger-sized
        shot(page, "09-phone.png", width=390)
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_page_says_when_the_model_server_is_down(page, tmp_path):
    gateway = gateway_for(tmp_path, *free_ports(2))  # nothing listens on those ports
    gateway.start()
    try:
        page.get(gateway.url + "/")
        wait_for(page, lambda d: d.find_element(By.ID, "server-status").get_attribute("data-state") == "down",
                 "the page did not say the model server is down")
        assert page.find_element(By.ID, "server-status").text == "Model server unavailable"
        draw(page, strokes()["7"])
        after_answer(page, lambda: click(page, "predict"))
        message = text(page, "message")
        assert "The model server is unavailable" in message and "make serve" in message
        shot(page, "10-server-down.png")
    finally:
        stop_gateway(gateway)


def test_no_errors_in_the_console(page):
    entries = page.get_log("browser")
    # The 4xx and 5xx answers the tests provoked on purpose are logged too; nothing else may be.
    provoked = [e for e in entries if "/api/" in e["message"] and "Failed to load resource" in e["message"]]
    assert provoked, "expected the refusals the tests provoked in the console log"
    errors = [e["message"] for e in entries if e["level"] == "SEVERE" and e not in provoked]
    assert not errors, errors
