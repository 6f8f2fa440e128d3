"""The bulk benchmark's arithmetic and its report section (the measuring itself runs in `make bench`)."""
from __future__ import annotations

import pytest

from bench import bulk


def test_the_rate_leaves_the_fixed_start_out():
    # 3 s to start either way; 1,000 images take 1 s more, 10,000 take 10 s more.
    assert bulk.marginal_rate((1000, 4.0), (10000, 13.0)) == pytest.approx(1000.0)


def _side(rate, seconds, cpu_ms):
    return {"images_s": rate, "all_images_s": [rate], "cpu_ms_per_image": cpu_ms, "all_cpu_ms": [cpu_ms],
            "job_s": {"1000": seconds[0], "10000": seconds[1]}}


def test_the_section_names_the_machine_and_judges_each_row():
    result = {"date": "today", "machine": "test CPU, 2 cores", "images": 10000, "small": 1000, "batch": 64,
              "repeats": 3, "load_start": 0.4, "load_end": 0.6, "ray_init_s": 5.0, "rows": [
                  {"workers": 1, "in process": _side(1000.0, (4.0, 13.0), 1.0), "ray": _side(900.0, (6.0, 16.0), 1.1),
                   "ratio": 0.9, "cpu_ratio": 1.0 / 1.1},
                  {"workers": 2, "in process": _side(2000.0, (4.0, 8.5), 1.0), "ray": _side(1500.0, (6.0, 12.0), 1.5),
                   "ratio": 0.75, "cpu_ratio": 1.0 / 1.5}]}
    text = bulk.section(result)
    assert text.startswith("## Bulk jobs: Ray's overhead") and "test CPU, 2 cores" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert "| 90% |" in rows[0] and "| 91% | yes |" in rows[0]
    assert "| 75% |" in rows[1] and "| 67% | **no** |" in rows[1]
    assert "in process 4.0 s / 13.0 s, Ray 6.0 s / 16.0 s" in text
    assert bulk.section(None) == ""


def test_rewriting_the_report_keeps_the_other_sections(monkeypatch, tmp_path):
    """`python -m bench.bulk` stores its figures beside make bench's and rewrites the report from
    them all: the numbers section dropped out of it until 2026-12-03."""
    import json
    import sys

    from serving.server import REPO

    raw = tmp_path / "benchmarks.json"
    saved = json.loads((REPO / "docs" / "benchmarks.json").read_text())
    raw.write_text(json.dumps(saved))
    result = {**saved["bulk"], "machine": "a test machine"}
    monkeypatch.setattr(bulk, "run", lambda *a, **k: result)
    monkeypatch.setattr(sys, "argv", ["bench.bulk", "--raw", str(raw)])
    bulk.main()
    text = raw.with_suffix(".md").read_text()
    assert "## Bulk jobs: Ray's overhead" in text and "a test machine" in text
    assert "## numbers: strings of digits" in text and "## HTTP: requests/s" in text
