"""The page's Number mode in a real headless Chromium against the real stack: a number written
on the wide canvas with real pointer events (mouse, touch, pen) and an uploaded picture are
read, with a box and probability bars per digit and each digit as the model saw it."""
from __future__ import annotations

import re

import pytest
from selenium.webdriver.common.by import By

from tests.conftest import FIXTURES, number_png, written_png
from tests.ui import test_page
from tests.ui.test_page import MOUSE, PEN, TOUCH, click, shot, strokes, wait_for

browser = test_page.browser  # the same fixture: a headless Chromium for this module
WIDE, HIGH = 840, 280  # the number pad's logical size (ui/numbers.js)


@pytest.fixture(scope="module")
def page(browser, stack):
    click(test_page.open_page(browser, stack), "mode-number")
    return browser


def write_number(driver, text: str, kind: str) -> None:
    """Write ``text`` on the number pad: strokes.json's digits, shrunk to 70% and side by side."""
    paths = [[(30 + 200 * k + 0.7 * x, 40 + 0.7 * y) for x, y in path]
             for k, d in enumerate(text) for path in strokes()[d]]
    test_page.draw(driver, paths, kind, pad_id="num-pad", width=WIDE)


def after_reading(driver, act) -> None:
    section = driver.find_element(By.ID, "numbers")
    before = int(section.get_attribute("data-answers") or 0)
    act()
    wait_for(driver, lambda d: int(section.get_attribute("data-answers") or 0) > before,
             "the Number mode showed no answer")


def shown(driver) -> str:
    assert driver.find_element(By.ID, "num-answer").is_displayed(), driver.find_element(By.ID, "num-message").text
    return driver.find_element(By.ID, "num-text").text


def test_number_mode_swaps_the_digit_pad_for_a_wide_one(page):
    assert page.find_element(By.ID, "num-pad").is_displayed()
    assert not page.find_element(By.ID, "pad").is_displayed()
    assert page.find_element(By.ID, "mode-number").get_attribute("aria-pressed") == "true"
    assert "Write a number" in page.find_element(By.ID, "num-pad").accessible_name
    click(page, "num-read")
    assert "canvas is empty" in page.find_element(By.ID, "num-message").text


@pytest.mark.parametrize("number, kind", [("2931", MOUSE), ("407", TOUCH), ("1856", PEN)])
def test_a_written_number_is_read_with_a_box_and_bars_per_digit(page, number, kind):
    click(page, "num-clear")
    write_number(page, number, kind)
    after_reading(page, lambda: click(page, "num-read"))
    assert shown(page) == number
    wait_for(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#num-boxes .num-box")) == len(number),
             "the boxes were not drawn over the picture")
    tags = [b.text.split(" ")[0] for b in page.find_elements(By.CSS_SELECTOR, "#num-boxes .num-box")]
    assert "".join(tags) == number
    cards = page.find_elements(By.CSS_SELECTOR, "#num-digits .num-digit")
    assert len(cards) == len(number)
    for card in cards:
        assert len(card.find_elements(By.CSS_SELECTOR, ".num-bar")) == 10
        assert "as the model saw it" in card.find_element(By.TAG_NAME, "canvas").accessible_name
    assert page.find_element(By.ID, "model-name").text == "numbers"
    # the string's and each digit's confidence, never a rounded-up certainty (sure digits: 99.9%)
    sure = page.find_element(By.ID, "num-confidence").text
    assert re.fullmatch(r"\d{1,2}\.\d% sure of the whole number", sure), sure
    shown_percents = [sure] + [b.text for b in page.find_elements(By.CSS_SELECTOR, "#num-boxes .num-box")] + \
        [c.text for c in page.find_elements(By.CSS_SELECTOR, "#num-digits figcaption")]
    assert not any("100%" in t for t in shown_percents) and any("99.9%" in t for t in shown_percents), shown_percents
    shot(page, f"20-number-{number}-{kind}.png")


def test_an_uploaded_number_is_read(page):
    after_reading(page, lambda: page.find_element(By.ID, "num-file").send_keys(str(FIXTURES / "number_2931.png")))
    assert shown(page) == "2931"


def test_an_amount_with_separators_is_shown_as_written(page, tmp_path):
    """1,250.00 written with a comma and a pen's dot: the number read is 125000 (separators are no
    digits), the page also shows it as written, and a dashed box over each separator."""
    png, _ = number_png("125000", 30, {0: "comma", 3: "tap"})
    (tmp_path / "amount.png").write_bytes(png)
    after_reading(page, lambda: page.find_element(By.ID, "num-file").send_keys(str(tmp_path / "amount.png")))
    assert shown(page) == "125000"
    written = page.find_element(By.ID, "num-written")
    assert written.is_displayed() and written.text == "As written: 1,250.00"
    wait_for(page, lambda d: [m.get_attribute("title") for m in d.find_elements(By.CSS_SELECTOR, "#num-boxes .num-mark")]
             == ["comma", "dot"], "the separators' boxes were not drawn over the picture")
    shot(page, "24-number-an-amount-with-separators.png")
    after_reading(page, lambda: page.find_element(By.ID, "num-file").send_keys(str(FIXTURES / "number_2931.png")))
    assert shown(page) == "2931" and not page.find_element(By.ID, "num-written").is_displayed()
    assert not page.find_elements(By.CSS_SELECTOR, "#num-boxes .num-mark")


def test_a_letter_is_not_given_as_a_number(page, tmp_path):
    """A letter the numbers network reads as a 1: the page shows the guess with a question mark
    and the reason it gives no answer (numbers 1.4 and 1.5 are unsure of it; 1.3 was sure enough for the
    digits network's check to say it does not look like a number), once (it said "unsure: the
    model is unsure" before)."""
    (tmp_path / "letter.png").write_bytes(written_png("E"))
    after_reading(page, lambda: page.find_element(By.ID, "num-file").send_keys(str(tmp_path / "letter.png")))
    assert shown(page).endswith("?")
    note = page.find_element(By.ID, "num-unsure")
    assert note.is_displayed() and re.match(r"No answer\. (This does not look like a number|The model is unsure): ",
                                            note.text), note.text
    assert "unsure: the model is unsure" not in note.text.lower(), note.text
    sure = page.find_element(By.ID, "num-confidence").text
    assert re.fullmatch(r"\d{1,2}\.\d% sure of its best reading, \d+", sure), sure
    shot(page, "23-number-a-letter.png")


def test_back_to_digit_mode(page):
    click(page, "mode-digit")
    assert page.find_element(By.ID, "pad").is_displayed() and not page.find_element(By.ID, "num-pad").is_displayed()
    click(page, "mode-number")
