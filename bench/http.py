"""HTTP benchmark: a real TorchServe on loopback, driven by wrk, against a no-op ceiling.

    python -m bench.http                       # the sweep `make bench` runs; prints JSON
    python -m bench.http --duration 3 --repeats 1 --concurrency 1 16   # a short look

One TorchServe, started by ``serving.server.TorchServe`` from ``config.properties`` like
``make serve`` (but from a temporary directory, on free loopback ports, so it never meets a
running ``make serve``), serves two models under the same settings: ``digits`` and ``noop``
(bench/noop_handler.py, a constant answer). For every concurrency, each round runs the
no-op ceiling and then every request form for ``--duration`` seconds with wrk; rounds
repeat ``--repeats`` times and the report quotes medians, so slow drift on a shared machine
hits the ceiling and digits alike. Latency percentiles are wrk's, measured on loopback
(closed loop: each connection sends its next request when the last answer arrives).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from serving.archive import MODEL_FILE, MODEL_NAME, build_archive, run_archiver
from serving.server import REPO, TorchServe, free_port_overrides, read_properties

NOOP = "noop"
NOOP_HANDLER = REPO / "bench" / "noop_handler.py"
WRK_SCRIPT = REPO / "bench" / "wrk_post.lua"
FIXTURES = REPO / "tests" / "fixtures"
CONCURRENCY = (1, 4, 16, 64)
SETTLE_MAX_S = 10  # longest wait for the frontend to go quiet before a cell
SETTLE_QUIET = 0.05  # of a core


@dataclass(frozen=True)
class Form:
    """One kind of request: a body file, its content type, and the X-Activations header."""

    name: str
    body: Path
    content_type: str = "image/png"
    activations: str = ""  # "" sends no header (maps included), "off" leaves them out
    model: str = MODEL_NAME

    @property
    def label(self) -> str:
        return self.name + ("" if self.model != MODEL_NAME else
                            (", no activations" if self.activations == "off" else ", with activations"))


FORMS = (
    Form("28x28 PNG", FIXTURES / "mnist_7.png", activations="off"),
    Form("28x28 PNG", FIXTURES / "mnist_7.png"),
    Form("280x280 canvas PNG", FIXTURES / "canvas_7.png", activations="off"),
    Form("280x280 canvas PNG", FIXTURES / "canvas_7.png"),
)
TARGET_FORMS = tuple(f for f in FORMS if f.name.startswith("28x28"))  # the forms issue 6's targets name
CEILING = Form("no-op handler, 28x28 PNG", FIXTURES / "mnist_7.png", model=NOOP)


def serving_settings(props: dict[str, str] | None = None) -> tuple[str, dict]:
    """The version and settings (workers, batch size, delay) of digits in config.properties."""
    models = json.loads((props or read_properties())["models"])[MODEL_NAME]
    version = next((v for v, s in models.items() if s.get("defaultVersion")), next(iter(models)))
    return version, dict(models[version])


def build_noop_archive(store: Path) -> Path:
    """``noop.mar``: the no-op handler alone, no model file."""
    with tempfile.TemporaryDirectory() as tmp:
        run_archiver(["--model-name", NOOP, "--version", "1.0", "--handler", str(NOOP_HANDLER),
                      "--export-path", tmp, "--force"])
        target = Path(store) / f"{NOOP}.mar"
        shutil.move(str(Path(tmp) / f"{NOOP}.mar"), target)
    return target


def start_server(run_dir: Path, store: Path, settings: dict | None = None, version: str | None = None,
                 model_file: Path = MODEL_FILE) -> TorchServe:
    """TorchServe with digits and the no-op model, both under ``settings`` (default: config.properties)."""
    cfg_version, cfg = serving_settings()
    version, settings = version or cfg_version, {**cfg, **(settings or {})}
    mar = build_archive(version, store, model_file).name
    build_noop_archive(store)
    models = {MODEL_NAME: {version: {**settings, "marName": mar, "defaultVersion": True}},
              NOOP: {"1.0": {**settings, "marName": f"{NOOP}.mar", "defaultVersion": True}}}
    server = TorchServe(run_dir, store, overrides={
        **free_port_overrides(),
        "default_workers_per_model": str(settings["minWorkers"]),
        "load_models": f"{mar},{NOOP}.mar",
        "models": json.dumps(models, separators=(",", ":")),
    })
    server.start(timeout=240)
    return server


def worker_rss_mb(server: TorchServe, model: str) -> list[float]:
    """Resident memory (MB) of each worker process of ``model``, by the pids TorchServe reports."""
    r = server.manage("GET", f"models/{model}", timeout=30)
    r.raise_for_status()
    out = []
    for w in r.json()[0]["workers"]:
        try:
            out.append(round(psutil.Process(int(w["pid"])).memory_info().rss / 2**20, 1))
        except (KeyError, ValueError, psutil.Error):
            continue
    return out


def check_form(server: TorchServe, form: Form) -> None:
    """One request by hand before the load: it must succeed with the expected shape."""
    headers = {**server.headers(), "Content-Type": form.content_type}
    if form.activations:
        headers["X-Activations"] = form.activations
    r = requests.post(f"{server.inference_url}/predictions/{form.model}", data=form.body.read_bytes(),
                      headers=headers, timeout=30)
    r.raise_for_status()
    answer = r.json()
    if form.model == MODEL_NAME and ("digit" not in answer or ("activations" in answer) == (form.activations == "off")):
        raise RuntimeError(f"unexpected answer for {form.label}: {r.text[:200]}")


def wrk_binary() -> str:
    exe = shutil.which("wrk")
    if not exe:
        raise RuntimeError("wrk is not installed: `apt-get install -y wrk` (make bench does this)")
    return exe


def run_wrk(server: TorchServe, form: Form, concurrency: int, duration: float) -> dict:
    """One wrk run; returns requests/s, latency percentiles (ms) and error counts."""
    threads = min(2, concurrency)  # two cores: more wrk threads would only steal from the server
    cmd = [wrk_binary(), "-t", str(threads), "-c", str(concurrency), "-d", f"{duration:g}s",
           "--timeout", "10s", "-s", str(WRK_SCRIPT), f"{server.inference_url}/predictions/{form.model}",
           "--", str(form.body), form.content_type, server.keys()["inference"], form.activations]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line[len("WRK_JSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"rps": raw["requests"] / seconds, "requests": raw["requests"], "errors": errors,
            "p50_ms": raw["p50_us"] / 1000, "p95_ms": raw["p95_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "response_bytes": raw["bytes"] / max(raw["requests"], 1)}


def summarize(runs: list[dict]) -> dict:
    """Medians over repeated runs of one cell; errors and requests add up."""
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "response_bytes")}
    out["max_ms"] = max(r["max_ms"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["runs"] = len(runs)
    return out


def settle(server: TorchServe, most: float = SETTLE_MAX_S, window: float = 0.5) -> float:
    """Wait, at most ``most`` seconds, until TorchServe's frontend uses under SETTLE_QUIET of a
    core over ``window``; returns the seconds waited. After the no-op ceiling's thousands of
    requests a second the JVM goes on working for several seconds (0.3-0.6 of a core, measured
    2026-12-03), which the next cell would otherwise pay for."""
    started, pid = time.monotonic(), server.pid()
    try:
        java = psutil.Process(pid) if pid else None
        while java and time.monotonic() - started < most:
            before = sum(java.cpu_times()[:2])
            time.sleep(window)
            if sum(java.cpu_times()[:2]) - before < SETTLE_QUIET * window:
                break
    except psutil.Error:
        pass  # the frontend is gone: nothing to wait for
    return time.monotonic() - started


def sweep(server: TorchServe, forms=FORMS, concurrency=CONCURRENCY, duration: float = 5,
          repeats: int = 3, warmup: float = 2, log=print) -> list[dict]:
    """Every (form, concurrency) cell, the ceiling first in each round; medians per cell."""
    series = (CEILING, *forms)
    for form in series:
        check_form(server, form)
        run_wrk(server, form, max(concurrency), warmup)  # warm caches, JIT, connection pools
    cells: dict[tuple[str, int], list[dict]] = {}
    for c in concurrency:
        for rnd in range(repeats):
            for form in series:
                waited = settle(server)
                r = run_wrk(server, form, c, duration)
                cells.setdefault((form.label, c), []).append(r)
                log(f"  c={c:<3} round {rnd + 1}/{repeats}  {form.label:<40} {r['rps']:8.0f} req/s  "
                    f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  "
                    f"(frontend quiet after {waited:.1f} s)")
    rows = []
    for form in series:
        for c in concurrency:
            rows.append({"form": form.label, "model": form.model, "concurrency": c,
                         **summarize(cells[(form.label, c)])})
    return rows


def run(duration: float = 5, repeats: int = 3, concurrency=CONCURRENCY, settings: dict | None = None,
        forms=FORMS, model_file: Path = MODEL_FILE, log=print) -> dict:
    """Start the server, sweep, measure worker memory, stop. Returns everything for the report."""
    version, cfg = serving_settings()
    settings = {**cfg, **(settings or {})}
    threads = os.environ.get("DIGITS_TORCH_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        started = time.monotonic()
        server = start_server(Path(tmp) / "run", Path(tmp) / "store", settings, version, model_file)
        try:
            log(f"TorchServe up in {time.monotonic() - started:.0f} s on {server.inference_url}; "
                f"workers {settings['minWorkers']}, batch {settings['batchSize']}, "
                f"delay {settings['maxBatchDelay']} ms, torch threads per worker {threads}")
            rss_before = worker_rss_mb(server, MODEL_NAME)
            rows = sweep(server, forms, concurrency, duration, repeats, log=log)
            rss_after = worker_rss_mb(server, MODEL_NAME)
            noop_rss = worker_rss_mb(server, NOOP)
        finally:
            server.stop(timeout=20)
    return {"settings": {k: settings[k] for k in ("minWorkers", "batchSize", "maxBatchDelay")},
            "torch_threads": int(threads), "version": version, "duration_s": duration, "repeats": repeats,
            "rows": rows, "rss_mb": {"before": rss_before, "after": rss_after, "noop": noop_rss}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per cell (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--workers", type=int, help="override config.properties' workers")
    parser.add_argument("--batch-size", type=int, help="override config.properties' batch size")
    parser.add_argument("--max-batch-delay", type=int, help="override config.properties' delay (ms)")
    parser.add_argument("--forms", choices=["all", "28"], default="all",
                        help="all request forms, or only the 28x28 PNG ones (for tuning)")
    parser.add_argument("--model-file", type=Path, default=MODEL_FILE, help="default: %(default)s")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    settings = {}
    if args.workers:
        settings.update(minWorkers=args.workers, maxWorkers=args.workers)
    if args.batch_size:
        settings["batchSize"] = args.batch_size
    if args.max_batch_delay is not None:
        settings["maxBatchDelay"] = args.max_batch_delay
    forms = FORMS if args.forms == "all" else TARGET_FORMS
    result = run(args.duration, args.repeats, args.concurrency, settings, forms, args.model_file)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
