"""POST /api/feedback through the real gateway process, into a real SQLite file: good
corrections, every refusal, many at once, the rate limit, then the report and the clear."""
from __future__ import annotations

import base64
import csv
import json
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from model.preprocess import MAX_BYTES
from serving.server import CONFIG, read_properties
from tests.conftest import OTHER_VERSION, REPO, SHIPPED_VERSION, data_url, encode, fixture_bytes, free_ports, gateway_for, stop_gateway

PER_MINUTE = 60  # above the 50 concurrent posts; the limit itself is tested with its own gateway


def feedback_gateway(run_dir: Path, per_minute: int):
    """A real gateway (python -m gateway) with a feedback file of its own; no TorchServe is
    needed for corrections."""
    gateway = gateway_for(run_dir, *free_ports(2))
    db = run_dir / "feedback.sqlite3"
    with open(run_dir / "config.properties", "a") as f:
        f.write(f"feedback_db={db}\nfeedback_per_minute={per_minute}\nmodels={read_properties(CONFIG)['models']}\n")
    gateway.start()
    return gateway, db


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    gateway, db = feedback_gateway(tmp_path_factory.mktemp("feedback"), PER_MINUTE)
    yield gateway, db
    stop_gateway(gateway)


def post(gateway, body, headers: dict | None = None) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{gateway.url}/api/feedback", data=data,
                         headers={"Content-Type": "application/json", **(headers or {})}, timeout=60)


def correction(**kw) -> dict:
    body = {"image": data_url(fixture_bytes("drawn_7.png")), "label": "7", "model": "digits", "version": SHIPPED_VERSION,
            "answer": "1", "consent": True}
    return {**body, **kw}


def rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM feedback ORDER BY id")]


def assert_refused(r: requests.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["detail"], body


def test_a_correction_is_stored_as_sent(gw):
    gateway, db = gw
    r = post(gateway, correction())
    assert r.status_code == 201, r.text
    row = next(x for x in rows(db) if x["id"] == r.json()["id"])
    assert row["image"] == fixture_bytes("drawn_7.png")  # the bytes, not the base64 text
    assert (row["model"], row["version"], row["label"], row["answer"], row["image_format"]) == \
        ("digits", SHIPPED_VERSION, "7", "1", "PNG")
    assert row["created"].endswith("Z") and row["client"] and "127.0.0.1" not in json.dumps(
        {k: v for k, v in row.items() if k != "image"})  # no address is kept
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.stat().st_mode & 0o077 == 0  # people's drawings: readable by this user only


def test_plain_base64_a_jpeg_and_a_declined_answer(gw):
    gateway, db = gw
    jpeg = encode(Image.open(REPO / "tests/fixtures/drawn_3.png").convert("RGB"), "JPEG")
    r = post(gateway, correction(image=base64.b64encode(jpeg).decode(), label="3", answer=None))
    assert r.status_code == 201, r.text
    row = next(x for x in rows(db) if x["id"] == r.json()["id"])
    assert row["image"] == jpeg and row["image_format"] == "JPEG" and row["answer"] is None and row["label"] == "3"


@pytest.mark.parametrize("change, status, error", [
    ({"consent": False}, 400, "no_consent"),
    ({"consent": "yes"}, 400, "no_consent"),
    ({"consent": None}, 400, "no_consent"),
    ({"image": ""}, 400, "no_image"),
    ({"image": None}, 400, "no_image"),
    ({"image": base64.b64encode(b"seven, I think, honestly").decode()}, 415, "not_an_image"),
    ({"image": "data:text/plain;base64,c2V2ZW4="}, 415, "unsupported_type"),
    ({"image": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()}, 415, "unsupported_format"),
    ({"image": "not base64 at all!"}, 400, "bad_base64"),
    ({"label": "12"}, 400, "bad_label"),
    ({"label": "x"}, 400, "bad_label"),
    ({"label": ""}, 400, "bad_label"),
    ({"label": None}, 400, "bad_label"),
    ({"answer": "seven"}, 400, "bad_answer"),
    ({"model": "letters"}, 400, "unknown_model"),
    ({"model": None}, 400, "unknown_model"),
    ({"version": "../1"}, 400, "bad_version"),
])
def test_bad_corrections_are_refused_and_not_stored(gw, change, status, error):
    gateway, db = gw
    before = len(rows(db))
    assert_refused(post(gateway, correction(**change)), status, error)
    assert len(rows(db)) == before


def test_without_consent_nothing_else_is_even_read(gw):
    gateway, db = gw
    before = len(rows(db))
    assert_refused(post(gateway, {"image": "junk", "label": "junk", "consent": False}), 400, "no_consent")
    assert len(rows(db)) == before


def test_too_large_malformed_and_wrong_type(gw):
    gateway, db = gw
    before = len(rows(db))
    # A PNG with 5 MB of trailing bytes: the body passes, the decoded image is over the limit ...
    just_over = fixture_bytes("drawn_7.png") + bytes(MAX_BYTES)
    assert_refused(post(gateway, correction(image=base64.b64encode(just_over).decode())), 413, "too_large")
    # ... and one twice that size is refused while the body arrives.
    twice = fixture_bytes("drawn_7.png") + bytes(2 * MAX_BYTES)
    assert_refused(post(gateway, correction(image=base64.b64encode(twice).decode())), 413, "too_large")
    assert_refused(post(gateway, b"{not json"), 400, "bad_json")
    assert_refused(post(gateway, ["a", "list"]), 400, "bad_json")
    assert_refused(post(gateway, json.dumps(correction()), {"Content-Type": "text/plain"}), 415, "unsupported_type")
    assert len(rows(db)) == before


def test_fifty_at_once_lose_nothing(gw):
    gateway, db = gw
    before = {r["id"] for r in rows(db)}
    bodies = [correction(image=data_url(fixture_bytes(f"{kind}_{d}.png")), label=str(d), answer=str((d + 1) % 10))
              for kind in ("drawn", "canvas", "mnist") for d in range(10)][:50]
    bodies += [correction(label="1", answer="7")] * (50 - len(bodies))
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda b: post(gateway, b), bodies))
    assert [a.status_code for a in answers] == [201] * 50, [a.text for a in answers if a.status_code != 201]
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 50
    stored = {r["id"]: r for r in rows(db)}
    assert set(stored) - before == set(ids)
    for body, i in zip(bodies, ids):  # each row is the correction that got its id
        assert stored[i]["label"] == body["label"] and stored[i]["answer"] == body["answer"]
        assert stored[i]["image"] == base64.b64decode(body["image"].split(",", 1)[1])


def test_too_many_from_one_client_in_a_minute(tmp_path):
    gateway, db = feedback_gateway(tmp_path, per_minute=5)
    try:
        answers = [post(gateway, correction()) for _ in range(7)]
        assert [a.status_code for a in answers] == [201] * 5 + [429] * 2
        assert_refused(answers[-1], 429, "too_many")
        assert "5 corrections a minute" in answers[-1].json()["detail"]
        assert len(rows(db)) == 5
    finally:
        stop_gateway(gateway)


def feedback_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.feedback", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_report_counts_corrections_and_exports_images_and_csv(tmp_path):
    gateway, db = feedback_gateway(tmp_path, per_minute=100)
    try:
        sent = [("1", "7")] * 3 + [(None, "4")] * 2 + [("3", "8")] + [("5", "5")]
        for answer, label in sent:
            d = int(label)
            assert post(gateway, correction(image=data_url(fixture_bytes(f"drawn_{d}.png")), label=label,
                                            answer=answer)).status_code == 201
        assert post(gateway, correction(version=OTHER_VERSION, label="2", answer="7")).status_code == 201
    finally:
        stop_gateway(gateway)
    out = tmp_path / "export"
    done = feedback_cli("report", "--db", str(db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "8 corrections" in text
    assert f"digits {SHIPPED_VERSION}: 7 sent, 6 corrected an answer (2 where the model had declined)" in text
    assert f"digits {OTHER_VERSION}: 1 sent, 1 corrected" in text
    lines = text.splitlines()
    common = lines[lines.index(next(x for x in lines if x.startswith(f"digits {SHIPPED_VERSION}"))) + 1:][:3]
    assert [c.split() for c in common] == [["1", "->", "7:", "3"], ["declined", "->", "4:", "2"],
                                           ["3", "->", "8:", "1"]]
    with open(out / "feedback.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and "client" not in table[0]
    for line in table:
        image = out / line["file"]
        assert image.read_bytes() == fixture_bytes(f"drawn_{line['label']}.png") or line["version"] == OTHER_VERSION
        assert line["held_out"] == str(int(int(line["id"]) % 5 == 0))
    assert sorted(p.suffix for p in (out / "images").iterdir()) == [".png"] * 8

    done = feedback_cli("clear", "--db", str(db), "--out", str(out))
    assert done.returncode == 0 and "deleted" in done.stdout, done.stderr
    assert not db.exists() and not Path(f"{db}-wal").exists() and not out.exists()
    assert "does not exist" in feedback_cli("report", "--db", str(db), "--out", str(out)).stderr


def test_a_cleared_file_is_made_anew_under_a_running_gateway(tmp_path):
    gateway, db = feedback_gateway(tmp_path, per_minute=10)
    try:
        assert post(gateway, correction()).status_code == 201
        assert feedback_cli("clear", "--db", str(db), "--out", str(tmp_path / "x")).returncode == 0
        assert not db.exists()
        assert post(gateway, correction(label="2")).status_code == 201
        assert [r["label"] for r in rows(db)] == ["2"]
    finally:
        stop_gateway(gateway)
