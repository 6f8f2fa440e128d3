"""Many images at once on the page, in a real headless Chromium against the real stack: choose
a dozen files (a bad one among them), read them four at a time through the gateway, check the
table, and download it as CSV into a temporary folder; in Number mode, numbers."""
from __future__ import annotations

import base64
import csv
import time
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.common.by import By

from tests.conftest import number_png, written_png
from tests.ui import test_page
from tests.ui.test_page import FIXTURES, click, shot, wait_for, white_jpeg

browser = test_page.browser  # the same Chromium fixture (one browser per module)

IN_FLIGHT = 4  # ui/batch.js's bound


@pytest.fixture(scope="module")
def page(browser, stack):
    return test_page.open_page(browser, stack)


@pytest.fixture(autouse=True)
def empty_table(page):
    """Each test starts on an empty table in Digit mode, whatever the test before it left."""
    table = page.find_element(By.ID, "batch-table")

    def rows() -> int:
        return len(page.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr"))

    if rows():  # Clear is enabled once every row is done
        wait_for(page, lambda d: table.get_attribute("data-done") == str(rows()),
                 "an earlier test's rows never finished", timeout=120)
        click(page, "batch-clear")
    if page.find_element(By.ID, "mode-digit").get_attribute("aria-pressed") != "true":
        click(page, "mode-digit")
    assert rows() == 0


@pytest.fixture
def chosen(tmp_path) -> dict[str, tuple[str, str]]:
    """Files to choose, by name: (what the table should say in Digit, the row's status)."""
    files = {}
    for kind, digits in (("mnist", (0, 1, 2, 3)), ("drawn", (4, 6, 8)), ("canvas", (7, 9))):
        for d in digits:
            src = FIXTURES / f"{kind}_{d}.png"
            (tmp_path / src.name).write_bytes(src.read_bytes())
            files[src.name] = (str(d), "ok")
    white_jpeg(FIXTURES / "drawn_5.png", tmp_path / "photo_5.jpg")
    files["photo_5.jpg"] = ("5", "ok")
    png = (FIXTURES / "mnist_3.png").read_bytes()
    (tmp_path / "torn.png").write_bytes(png[: len(png) // 2])  # a PNG cut off half way
    files["torn.png"] = ("—", "error")
    Image.new("RGB", (280, 280), "white").save(tmp_path / "blank.png")
    files["blank.png"] = ("—", "error")
    (tmp_path / "notes.txt").write_text("a seven, I think")
    files["notes.txt"] = ("—", "error")
    return {str(tmp_path / name): want for name, want in files.items()}


def table_rows(driver) -> dict[str, dict]:
    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr"):
        cells = {c: tr.find_element(By.CLASS_NAME, f"batch-{c}").text for c in ("file", "answer", "confidence", "status")}
        thumb = tr.find_element(By.CSS_SELECTOR, "img.thumb")
        cells["thumb_width"] = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumb)
        out[cells["file"]] = {**cells, "state": tr.get_attribute("data-status"), "error": tr.get_attribute("data-error")}
    return out


def downloaded_csv(page, tmp_path) -> list[dict]:
    """Click Download CSV and read what Chromium saved."""
    downloads = tmp_path / "downloads"
    downloads.mkdir(exist_ok=True)
    page.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    click(page, "batch-csv")
    target = downloads / "digits-results.csv"

    def saved() -> bool:
        # Chromium reserves the name with an empty file, writes NAME.crdownload and then renames
        # it over that: the CSV is whole once no .crdownload is left and the file is not empty
        # (it always has its header line).
        return (target.exists() and target.stat().st_size > 0
                and not any(f.suffix == ".crdownload" for f in downloads.iterdir()))

    deadline = time.monotonic() + 120  # a hang bound only
    while not saved() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved(), f"no whole CSV downloaded; the folder holds {[(f.name, f.stat().st_size) for f in downloads.iterdir()]}"
    with target.open(newline="") as f:
        return list(csv.DictReader(f))


def test_many_images_read_a_few_at_a_time_and_download_as_csv(page, chosen, tmp_path):
    table = page.find_element(By.ID, "batch-table")
    assert not table.is_displayed() and not page.find_element(By.ID, "batch-csv").is_enabled()
    page.find_element(By.ID, "batch-files").send_keys("\n".join(chosen))
    wait_for(page, lambda d: table.get_attribute("data-done") == str(len(chosen)),
             f"the table never finished {len(chosen)} rows (done: {table.get_attribute('data-done')})", timeout=120)
    rows = table_rows(page)
    assert sorted(rows) == sorted(Path(p).name for p in chosen)
    for path, (digit, state) in chosen.items():
        row = rows[Path(path).name]
        assert (row["answer"], row["state"]) == (digit, state), row
        if state == "ok":
            assert row["status"] == "Read" and row["confidence"].endswith("%"), row
            assert row["thumb_width"] > 0, row  # the thumbnail is the picture itself
    assert rows["torn.png"]["error"] == "corrupt_image" and "Error (corrupt_image)" in rows["torn.png"]["status"]
    assert rows["blank.png"]["error"] == "no_digit"
    assert rows["notes.txt"]["error"] == "unsupported_type"  # the gateway's refusal
    assert f"{len(chosen)} of {len(chosen)} read (3 errors)" in page.find_element(By.ID, "batch-summary").text
    # Four requests went out together, and never more: the page's own count of requests in flight.
    assert table.get_attribute("data-max-in-flight") == str(IN_FLIGHT) == table.get_attribute("data-limit")
    assert table.get_attribute("data-in-flight") == "0"
    shot(page, "11-batch.png")

    records = downloaded_csv(page, tmp_path)
    assert [r["file"] for r in records] == [Path(p).name for p in chosen]  # the order they were chosen in
    for r in records:
        digit, state = chosen[str(tmp_path / r["file"])]
        assert r["status"] == state, r
        assert r["answer"] == (digit if state == "ok" else "") and r["model"] == "digits", r
        if state == "ok":
            shown = rows[r["file"]]["confidence"]
            if shown == "99.9%":  # the page never shows a rounded-up 100%
                assert float(r["confidence"]) >= 0.999, r
            else:
                assert float(r["confidence"]) == pytest.approx(float(shown.rstrip("%")) / 100, abs=0.0006), r
        else:
            assert r["confidence"] == "" and r["detail"], r

    click(page, "batch-clear")
    assert not table.is_displayed() and table_rows(page) == {}


def test_dropped_files_join_the_table(page):
    """Files dropped on the zone (a real drop event carrying File objects) are read like chosen ones."""
    pngs = {f"dropped_{d}.png": base64.b64encode((FIXTURES / f"drawn_{d}.png").read_bytes()).decode() for d in (1, 6)}
    table = page.find_element(By.ID, "batch-table")
    page.execute_script("""
        const zone = document.getElementById('batch-drop'), data = new DataTransfer();
        for (const [name, b64] of Object.entries(arguments[0])) {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          data.items.add(new File([bytes], name, {type: 'image/png'}));
        }
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    """, pngs)
    wait_for(page, lambda d: table.get_attribute("data-done") == "2", "the dropped files were never read", timeout=60)
    rows = table_rows(page)
    assert {name: (r["answer"], r["state"]) for name, r in rows.items()} == {
        "dropped_1.png": ("1", "ok"), "dropped_6.png": ("6", "ok")}
    click(page, "batch-clear")


def test_in_number_mode_the_stack_is_read_as_numbers(page, tmp_path):
    """Files added in Number mode go to /api/numbers: each row's answer is the whole number, a
    letter gets no answer (with the guess and the reason), a blank picture an error; the CSV
    names the model that read each row, and gives each number as written (an amount with its
    comma and dot)."""
    click(page, "mode-number")
    assert "one number each" in page.find_element(By.ID, "batch-drop").text
    for number in ("2931", "40517", "13579"):
        (tmp_path / f"number_{number}.png").write_bytes((FIXTURES / f"number_{number}.png").read_bytes())
    (tmp_path / "letter.png").write_bytes(written_png("E"))
    Image.new("RGB", (600, 200), "white").save(tmp_path / "blank.png")
    (tmp_path / "amount.png").write_bytes(number_png("125000", 30, {0: "comma", 3: "tap"})[0])
    names = ["number_2931.png", "number_40517.png", "number_13579.png", "letter.png", "blank.png", "amount.png"]
    table = page.find_element(By.ID, "batch-table")
    page.find_element(By.ID, "batch-files").send_keys("\n".join(str(tmp_path / n) for n in names))
    wait_for(page, lambda d: table.get_attribute("data-done") == str(len(names)),
             f"the table never finished {len(names)} rows (done: {table.get_attribute('data-done')})", timeout=120)
    rows = table_rows(page)
    assert {n: (rows[n]["answer"], rows[n]["state"]) for n in names[:3]} == {
        "number_2931.png": ("2931", "ok"), "number_40517.png": ("40517", "ok"), "number_13579.png": ("13579", "ok")}
    assert rows["letter.png"]["state"] == "unsure" and rows["letter.png"]["answer"].startswith("? (guess ")
    assert any(why in rows["letter.png"]["status"] for why in ("does not look like a number", "the model is unsure")), rows
    assert rows["blank.png"]["error"] == "no_digit"
    shot(page, "12-batch-numbers.png")
    records = {r["file"]: r for r in downloaded_csv(page, tmp_path)}
    assert {r["model"] for r in records.values()} == {"numbers"}
    assert records["number_40517.png"]["answer"] == "40517" and records["letter.png"]["answer"] == ""
    assert records["amount.png"]["answer"] == "125000" and records["amount.png"]["written"] == "1,250.00"
    assert records["number_40517.png"]["written"] == "40517" and records["letter.png"]["written"] == ""
    assert records["letter.png"]["status"] == "unsure" and records["blank.png"]["status"] == "error"
    click(page, "batch-clear")
    click(page, "mode-digit")
    assert "one digit each" in page.find_element(By.ID, "batch-drop").text
