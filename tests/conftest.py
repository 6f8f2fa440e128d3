"""Shared test helpers: fixture files and the input forms a client can send."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SHIPPED_MODEL = REPO / "model" / "digits.pt"


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
