"""Correcting an answer on the page, in a real headless Chromium against the real stack:
draw, predict, "Wrong?", type the label; without the consent box nothing is sent or stored,
with it a row lands in the gateway's SQLite file."""
from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.common.by import By

from serving.feedback import db_path
from tests.conftest import FIXTURES, SHIPPED_VERSION
from tests.ui import test_page
from tests.ui.test_page import after_answer, click, draw, shot, strokes, text, upload, wait_for
from tests.ui.test_numbers import after_reading

browser = test_page.browser  # the same fixture: a headless Chromium for this module


@pytest.fixture(scope="module")
def page(browser, stack):
    return test_page.open_page(browser, stack)


@pytest.fixture(scope="module")
def db(stack) -> Path:
    server, _ = stack
    return db_path(server.props)


def stored(db: Path) -> list[dict]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM feedback ORDER BY id")]


def sent(driver) -> int:
    return int(driver.find_element(By.ID, "feedback").get_attribute("data-sent") or 0)


def predict_drawing(driver, paths) -> None:
    click(driver, "clear")
    draw(driver, paths)
    after_answer(driver, lambda: click(driver, "predict"))


def open_correction(driver, label: str) -> None:
    wrong = driver.find_element(By.ID, "wrong")
    assert wrong.is_displayed() and wrong.text == "Wrong? Tell us what it says"
    wrong.click()
    assert driver.find_element(By.ID, "feedback-form").is_displayed()
    consent = driver.find_element(By.ID, "feedback-consent")
    assert not consent.is_selected()  # never ticked for the person
    field = driver.find_element(By.ID, "feedback-label")
    field.clear()
    field.send_keys(label)


def test_privacy_text_says_where_corrections_live_and_how_to_delete_them(page):
    guide = page.find_element(By.CSS_SELECTOR, ".guide").text
    assert "not stored" in guide and "data/feedback.sqlite3" in guide and "make feedback-clear" in guide


def test_without_consent_nothing_is_sent_or_stored(page, db):
    before = len(stored(db))
    predict_drawing(page, strokes()["7"])
    assert text(page, "digit") == "7"
    open_correction(page, "1")
    consent_text = page.find_element(By.CSS_SELECTOR, "#feedback-form .consent").text
    assert "Keep this image" in consent_text and "make feedback-clear" in consent_text
    click(page, "feedback-send")
    assert "Nothing was sent" in text(page, "feedback-status")
    assert sent(page) == 0 and len(stored(db)) == before
    shot(page, "20-feedback-no-consent.png")


def test_a_label_that_is_not_a_digit_is_not_sent(page, db):
    before = len(stored(db))
    predict_drawing(page, strokes()["3"])
    open_correction(page, "x")
    page.find_element(By.ID, "feedback-consent").click()
    click(page, "feedback-send")
    assert "one digit" in text(page, "feedback-status")
    assert sent(page) == 0 and len(stored(db)) == before


def test_with_consent_the_correction_is_stored(page, db):
    before = len(stored(db))
    predict_drawing(page, strokes()["7"])
    open_correction(page, "1")
    page.find_element(By.ID, "feedback-consent").click()
    click(page, "feedback-send")
    wait_for(page, lambda d: sent(d) == 1, "the page never said the correction was kept")
    assert "Thank you" in text(page, "feedback-status")
    assert not page.find_element(By.ID, "feedback-form").is_displayed()
    rows = stored(db)
    assert len(rows) == before + 1
    row = rows[-1]
    assert (row["model"], row["version"], row["answer"], row["label"]) == ("digits", SHIPPED_VERSION, "7", "1")
    assert f"correction {row['id']}" in text(page, "feedback-status")
    img = Image.open(io.BytesIO(row["image"]))
    assert img.format == "PNG" and img.size == (280, 280)  # the drawing the model was sent
    shot(page, "21-feedback-kept.png")


def test_a_declined_upload_is_corrected_with_answer_null(page, db, tmp_path):
    square = tmp_path / "square.png"  # a filled shape: the model declines to name a digit
    img = Image.new("RGB", (280, 280), "white")
    img.paste((0, 0, 0), (50, 50, 230, 230))
    img.save(square)
    after_answer(page, lambda: upload(page, square))
    assert text(page, "digit") == "?"
    open_correction(page, "8")
    page.find_element(By.ID, "feedback-consent").click()
    before = sent(page)
    click(page, "feedback-send")
    wait_for(page, lambda d: sent(d) == before + 1, "the page never said the correction was kept")
    row = stored(db)[-1]
    assert row["answer"] is None and row["label"] == "8"
    assert row["image"] == square.read_bytes()  # an upload is kept as the file it was


def test_a_new_answer_resets_the_form(page):
    predict_drawing(page, strokes()["4"])
    assert page.find_element(By.ID, "wrong").is_displayed()
    assert not page.find_element(By.ID, "feedback-form").is_displayed()
    assert not page.find_element(By.ID, "feedback-status").is_displayed()


def test_a_number_is_corrected_in_number_mode(page, db):
    """Number mode offers the same correction under its answer; the row names the numbers model."""
    click(page, "mode-number")
    try:
        after_reading(page, lambda: page.find_element(By.ID, "num-file").send_keys(str(FIXTURES / "number_2931.png")))
        said = page.find_element(By.ID, "num-text").text
        box = page.find_element(By.ID, "feedback")
        assert box.is_displayed() and page.find_element(By.ID, "num-answer").find_elements(By.ID, "feedback")
        open_correction(page, "29310")
        assert page.find_element(By.ID, "feedback-what").text == "the number"
        page.find_element(By.ID, "feedback-consent").click()
        before = sent(page)
        click(page, "feedback-send")
        wait_for(page, lambda d: sent(d) == before + 1, "the page never said the correction was kept")
        row = stored(db)[-1]
        assert (row["model"], row["label"]) == ("numbers", "29310")
        assert row["answer"] == (None if said.endswith("?") else said)
        assert row["image"] == (FIXTURES / "number_2931.png").read_bytes()
        shot(page, "22-feedback-number.png")
    finally:
        click(page, "mode-digit")
    assert not page.find_element(By.ID, "feedback").is_displayed()  # no box for an answer of the other mode
