"""Corrections sent from the page, kept (with consent) to improve the model.

    python -m serving.feedback report [--out build/feedback]   # make feedback-report
    python -m serving.feedback clear                           # make feedback-clear

The gateway's ``POST /api/feedback`` checks a correction with ``parse`` and stores it with
``FeedbackStore.add``; ``training/retrain.py`` learns from the stored rows and
``serving/release.py`` tests a new version on the held-out ones (``is_held_out``).

Storage is one SQLite file (``feedback_db`` in config.properties, default
``data/feedback.sqlite3``) in WAL mode, table ``feedback``: the image exactly as the client sent
it (the bytes, decoded from base64), when, which model and version answered, what it answered
and what the person says it is. No IP address is stored: each row carries a client key, an
HMAC of the address under a random secret that lives only in the gateway's memory, used only to
refuse more than ``feedback_per_minute`` corrections a minute from one client. A restart draws
a new secret, so keys cannot be linked across restarts or turned back into addresses.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import collections
import csv
import hashlib
import hmac
import json
import os
import re
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from model import preprocess as pp

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DB = "data/feedback.sqlite3"
DEFAULT_PER_MINUTE = 20
HELD_OUT_EVERY = 5  # every fifth correction (by id) is kept out of retraining, to judge a release
MAX_BODY = pp.MAX_BYTES * 4 // 3 + 64 * 1024  # a MAX_BYTES image as base64, plus the JSON around it
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,31}")
# What a label may be, per model: digits reads one digit. A model not named here (one that
# reads several digits, as issue 13's numbers would) takes a string of digits.
LABEL_RULES = {"digits": (re.compile(r"[0-9]"), "one digit, 0 to 9")}
MANY_DIGITS = (re.compile(r"[0-9]{1,32}"), "digits only (0 to 9), at most 32")

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,        -- UTC, ISO 8601 with milliseconds: sorts as it reads
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    label TEXT NOT NULL,          -- what the person says the image shows
    answer TEXT,                  -- what the model answered; NULL when it declined
    image BLOB NOT NULL,          -- the bytes the client sent
    image_format TEXT NOT NULL,   -- PNG, JPEG, ... as decoded
    client TEXT NOT NULL          -- HMAC of the client address (see the module docstring)
);
CREATE INDEX IF NOT EXISTS feedback_client_created ON feedback (client, created);
"""


class FeedbackError(ValueError):
    """A correction refused: an HTTP status, a short code and a sentence for people."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass
class Correction:
    """A checked correction, ready to store."""

    model: str
    version: str
    label: str
    answer: str | None
    image: bytes
    image_format: str


def db_path(props: dict[str, str]) -> Path:
    """The feedback file named by config.properties (relative paths from the repository)."""
    path = Path(props.get("feedback_db", DEFAULT_DB))
    return path if path.is_absolute() else REPO / path


def known_models(props: dict[str, str]) -> tuple[str, ...]:
    """The models this installation serves: the names in config.properties' ``models=``."""
    return tuple(json.loads(props["models"])) if "models" in props else ("digits",)


def label_rule(model: str) -> tuple[re.Pattern, str]:
    return LABEL_RULES.get(model, MANY_DIGITS)


def is_held_out(row_id: int) -> bool:
    """Whether a stored correction is kept out of retraining and used to judge releases."""
    return row_id % HELD_OUT_EVERY == 0


def image_bytes(text: str) -> tuple[bytes, str]:
    """The bytes and format of a base64 or data-URL image, refused with model.preprocess's
    own checks (not base64, not an image, too large, ...)."""
    try:
        img = pp.decode(text)  # validates: base64, data URL, size, format, pixels
    except pp.InputError as e:
        raise FeedbackError(e.status, e.code, f"The image: {e.detail}.") from None
    body = text.strip()
    if body.startswith("data:"):
        body = body.split(",", 1)[1]
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", body).translate(str.maketrans("-_", "+/")), validate=True)
    except (binascii.Error, ValueError):  # pp.decode accepted it, so this cannot happen
        raise FeedbackError(400, "bad_base64", "The image is not valid base64.") from None
    return raw, img.format or "unknown"


def parse(body: object, models: tuple[str, ...]) -> Correction:
    """Check a ``POST /api/feedback`` JSON body; raises FeedbackError for the first problem.

    Consent is checked first: without it nothing else is even looked at."""
    if not isinstance(body, dict):
        raise FeedbackError(400, "bad_json", "Send a JSON object: {image, label, model, version, answer, consent}.")
    if body.get("consent") is not True:
        raise FeedbackError(400, "no_consent", "Nothing was stored: the consent box was not ticked. "
                            "A correction is kept only with consent (\"consent\": true).")
    model = body.get("model")
    if not isinstance(model, str) or model not in models:
        raise FeedbackError(400, "unknown_model", f"Unknown model {model!r}; this server has {', '.join(models)}.")
    version = body.get("version")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise FeedbackError(400, "bad_version", "\"version\" must be the version that answered, e.g. \"1.3\".")
    pattern, wanted = label_rule(model)
    label = body.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not pattern.fullmatch(label.strip()):
        raise FeedbackError(400, "bad_label", f"The label for {model} must be {wanted}; got {label!r}.")
    answer = body.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and (not isinstance(answer, str) or not pattern.fullmatch(answer)):
        raise FeedbackError(400, "bad_answer", f"\"answer\" must be what {model} answered ({wanted}), "
                            "or null when it declined.")
    image = body.get("image")
    if not isinstance(image, str) or not image.strip():
        raise FeedbackError(400, "no_image", "The correction carries no image (\"image\": base64 or a data URL).")
    raw, fmt = image_bytes(image)
    return Correction(model, version, label.strip(), answer, raw, fmt)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class FeedbackStore:
    """The SQLite file of corrections. One short connection per call, so threads (the gateway
    runs each call in a worker thread) never share one; WAL lets readers run beside the writer."""

    def __init__(self, path: Path, per_minute: int = DEFAULT_PER_MINUTE):
        self.path = Path(path)
        self.per_minute = per_minute
        self.connect().close()

    def connect(self) -> sqlite3.Connection:
        """A new connection; makes the file and its table first when missing (as after
        ``make feedback-clear`` under a running gateway)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE in add).
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        os.chmod(self.path, 0o600)  # people's drawings: this user only (SQLite gives -wal the same mode)
        return db

    def add(self, c: Correction, client: str) -> int:
        """Store ``c``; refuses (429) a client's correction past ``per_minute`` in the last minute.
        The count and the insert run in one write transaction, so concurrent posts from one
        client cannot slip past the limit together."""
        now = _now()
        db = self.connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            (recent,) = db.execute("SELECT COUNT(*) FROM feedback WHERE client = ? AND created > ?",
                                   (client, _stamp(now - timedelta(minutes=1)))).fetchone()
            if recent >= self.per_minute:
                db.execute("ROLLBACK")
                raise FeedbackError(429, "too_many", f"At most {self.per_minute} corrections a minute from one "
                                    "client; please wait a minute.")
            cur = db.execute("INSERT INTO feedback (created, model, version, label, answer, image, image_format, "
                             "client) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (_stamp(now), c.model, c.version, c.label, c.answer, c.image, c.image_format, client))
            db.execute("COMMIT")
            return int(cur.lastrowid)
        finally:
            db.close()

    def rows(self, model: str | None = None) -> list[dict]:
        """Every stored correction (of ``model``, if given), oldest first, images included."""
        db = self.connect()
        db.row_factory = sqlite3.Row
        try:
            query = "SELECT * FROM feedback" + (" WHERE model = ?" if model else "") + " ORDER BY id"
            return [dict(r) for r in db.execute(query, (model,) if model else ())]
        finally:
            db.close()

    def count(self) -> int:
        db = self.connect()
        try:
            return db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        finally:
            db.close()


def client_key(secret: bytes, address: str) -> str:
    """The rate limiter's name for a client: an HMAC of its address, never the address."""
    return hmac.new(secret, address.encode(), hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------- report and clear

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


def summarise(rows: list[dict], top: int = 5) -> list[dict]:
    """Per model and version: how many corrections, how many changed the answer, the commonest
    corrections (answer -> label; a declined answer shows as "declined")."""
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for r in rows:
        groups[(r["model"], r["version"])].append(r)
    out = []
    for (model, version), items in sorted(groups.items()):
        changed = [r for r in items if r["answer"] != r["label"]]
        common = collections.Counter((r["answer"] or "declined", r["label"]) for r in changed).most_common(top)
        out.append({"model": model, "version": version, "feedback": len(items), "corrected": len(changed),
                    "declined": sum(r["answer"] is None for r in items),
                    "common": [{"answer": a, "label": lab, "count": n} for (a, lab), n in common]})
    return out


def export(rows: list[dict], out: Path) -> Path:
    """Write every image to ``out/images`` and ``out/feedback.csv`` (one line per correction,
    without the client key); returns the CSV's path. Replaces an earlier export."""
    images = out / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    csv_path = out / "feedback.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "created", "model", "version", "answer", "label", "held_out", "file"])
        for r in rows:
            name = f"{r['id']:06d}_{r['model']}_{r['answer'] or 'declined'}-to-{r['label']}." \
                   f"{EXTENSIONS.get(r['image_format'], 'bin')}"
            (images / name).write_bytes(r["image"])
            w.writerow([r["id"], r["created"], r["model"], r["version"], r["answer"] or "", r["label"],
                        int(is_held_out(r["id"])), f"images/{name}"])
    return csv_path


def report(store: FeedbackStore, out: Path) -> str:
    """The text ``make feedback-report`` prints, after exporting the set to ``out``."""
    rows = store.rows()
    lines = [f"{len(rows)} corrections in {store.path}"]
    for s in summarise(rows):
        lines.append(f"{s['model']} {s['version']}: {s['feedback']} sent, {s['corrected']} corrected an answer "
                     f"({s['declined']} where the model had declined)")
        for c in s["common"]:
            lines.append(f"  {c['answer']:>8} -> {c['label']}: {c['count']}")
    csv_path = export(rows, out)
    lines.append(f"exported {len(rows)} images to {out / 'images'} and {csv_path}")
    return "\n".join(lines)


def clear(path: Path) -> bool:
    """Delete the feedback file and its WAL companions; whether there was one."""
    found = False
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            p.unlink()
            found = True
    return found


def main() -> None:
    from serving.server import read_properties

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["report", "clear"])
    parser.add_argument("--db", type=Path, help="the feedback file (default: feedback_db in config.properties)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "feedback",
                        help="where report exports images and a CSV (default: %(default)s)")
    args = parser.parse_args()
    path = args.db or db_path(read_properties())
    if args.command == "clear":
        print(f"deleted {path}" if clear(path) else f"nothing to delete: {path} does not exist")
        shutil.rmtree(args.out, ignore_errors=True)  # the exported copies go too
        return
    if not path.exists():
        sys.exit(f"no feedback yet: {path} does not exist")
    print(report(FeedbackStore(path), args.out))


if __name__ == "__main__":
    os.umask(0o077)  # the exported copies are people's drawings too: this user only
    main()
