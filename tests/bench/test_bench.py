"""The benchmark's own pieces: the no-op archive, the settings it reads, the report it writes."""
from __future__ import annotations

import zipfile

from bench import http
from bench.__main__ import write_report
from serving.server import model_settings, read_properties


def test_noop_archive_carries_the_handler(tmp_path):
    mar = http.build_noop_archive(tmp_path)
    names = zipfile.ZipFile(mar).namelist()
    assert mar.name == "noop.mar" and "noop_handler.py" in names


def test_settings_come_from_config_properties():
    version, settings = http.serving_settings()
    assert settings == {**model_settings(read_properties(), version)}


def _row(form, model, c, rps):
    return {"form": form, "model": model, "concurrency": c, "rps": rps, "p50_ms": 2.0, "p95_ms": 3.0,
            "p99_ms": 4.0, "max_ms": 5.0, "errors": 0, "requests": int(rps * 10), "response_bytes": 700, "runs": 1}


def test_report_has_the_table_and_ratios(tmp_path):
    rows = [_row(f.label, f.model, c, (4000 if f.model == http.NOOP else 1000) * (1 + c / 64))
            for f in (http.CEILING, *http.FORMS) for c in http.CONCURRENCY]
    result = {"settings": {"minWorkers": 2, "batchSize": 16, "maxBatchDelay": 5}, "torch_threads": 1,
              "version": "1.0", "duration_s": 5, "repeats": 3, "rows": rows,
              "rss_mb": {"before": [250.0, 251.0], "after": [260.0, 262.0], "noop": [200.0]}}
    stages = {"preprocess_ms": 0.3, "forward_ms": 0.5, "answers_ms": 0.1}
    rates = {1: 500.0, 8: 900.0, 64: 1000.0, 256: 1000.0}
    inp = {"torch_threads": 1, "torch": "2.x", "gpu": None,
           "handler": {f.label: rates for f in http.FORMS}, "stages_batch_64": {f.label: stages for f in http.FORMS},
           "forward": {"frozen + optimize_for_inference (served)": rates}}
    env = {"date": "today", "machine": "test CPU, 2 cores", "python": "Python 3", "model_file": "model/digits.pt",
           "waited_s": 0, "load_start": 0.5, "quiet": True, "busy": [], "load_end": 0.6}
    text = write_report(tmp_path / "benchmarks.md", result, inp, env, "make bench")
    assert (tmp_path / "benchmarks.md").read_text() == text
    assert "| 28x28 PNG, no activations | 64 | 2,000 | 25.0% |" in text
    assert "No GPU was available for this run" in text and "test CPU, 2 cores" in text
    assert "16 / 1,250 req/s = 12.8 ms" in text  # latency at concurrency 16 from Little's law


def test_the_gpu_benchmark_says_plainly_when_there_is_no_gpu(monkeypatch, tmp_path):
    """Run where torch sees no GPU (forced, so the test means the same on a GPU machine), the
    benchmark stops with a message that says so, and writes nothing."""
    import sys

    import pytest
    import torch

    from bench import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench.gpu", "--out", str(tmp_path / "gpu")])
    with pytest.raises(SystemExit) as stopped:
        gpu.main()
    assert "sees no CUDA GPU" in str(stopped.value.code)
    assert not (tmp_path / "gpu").exists()
