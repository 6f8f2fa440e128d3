"""Preprocessing's time per image, on one core, against the preprocessing before issue 12.

    python -m bench.preprocess          # prints JSON; `make bench` adds a table to docs/benchmarks.md

Two pictures: the 280x280 browser-canvas PNG of tests/fixtures/canvas_7.png, and a 1000x750
phone photo (JPEG, quality 85) of a digit on unevenly lit, grainy paper, made here from
tests/fixtures/drawn_7.png. The baseline is model/preprocess.py as of commit BASELINE, read
from git and timed in the same run, on the same pictures; without git history it is left out.
Medians of single calls, after warm-up.
"""
from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from model import preprocess as current

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
BASELINE = "b7a778b"  # the last commit before issue 12's preprocessing
TARGET_MS = {"280x280 canvas PNG": 2.0, "1000x750 phone photo JPEG": 15.0}


def pictures() -> dict[str, bytes]:
    """The two pictures, deterministic."""
    rng = np.random.default_rng(0)
    drawn = Image.open(FIXTURES / "drawn_7.png").convert("RGBA")
    paper = Image.new("RGBA", drawn.size, (236, 232, 220, 255))
    paper.alpha_composite(drawn)
    photo = np.asarray(paper.convert("RGB").resize((1000, 750), Image.Resampling.BICUBIC), np.float32)
    light = np.linspace(1.0, 0.7, 1000)[None, :, None] * np.linspace(1.0, 0.85, 750)[:, None, None]
    photo = np.clip(photo * light + rng.normal(0, 4, photo.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=85)
    return {"280x280 canvas PNG": (FIXTURES / "canvas_7.png").read_bytes(), "1000x750 phone photo JPEG": buf.getvalue()}


def baseline_module():
    """model/preprocess.py at BASELINE, imported under another name; None without git history."""
    try:
        source = subprocess.run(["git", "show", f"{BASELINE}:model/preprocess.py"], cwd=REPO, check=True,
                                capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "preprocess_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("preprocess_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ms(fn, payload: bytes, calls: int = 200) -> float:
    for _ in range(10):
        fn(payload)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn(payload)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def run() -> dict:
    """Median ms per image, now and at BASELINE, for each picture."""
    import torch
    torch.set_num_threads(1)  # preprocessing is numpy and Pillow; one core, as a worker has
    old = baseline_module()
    out = {}
    for name, payload in pictures().items():
        out[name] = {"now_ms": median_ms(current.preprocess, payload), "target_ms": TARGET_MS[name]}
        if old is not None:
            out[name]["baseline_ms"] = median_ms(old.preprocess, payload)
    return {"baseline": BASELINE if old is not None else None, "pictures": out}


def table(result: dict) -> str:
    """Markdown table of ``run``'s result."""
    rows = ["| picture | now (ms) | before issue 12 (ms) | target (ms) | met |", "|---|---:|---:|---:|:-:|"]
    for name, r in result["pictures"].items():
        base = f"{r['baseline_ms']:.2f}" if "baseline_ms" in r else "n/a"
        rows.append(f"| {name} | {r['now_ms']:.2f} | {base} | ≤ {r['target_ms']:.0f} | "
                    f"{'yes' if r['now_ms'] <= r['target_ms'] else '**no**'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    res = run()
    print(json.dumps(res, indent=1))
    print(table(res), file=sys.stderr)
