"""`make bench`'s numbers section: a lone 5-digit canvas and strings/s at concurrency 16, over
HTTP with wrk, against the no-op ceiling under the same settings in the same rounds.

    python -m bench.numbers --duration 3 --repeats 1      # a short look; prints JSON

One TorchServe on free loopback ports serves ``numbers`` (with config.properties' numbers
settings: workers, batch size, delay) and ``noop`` (bench/noop_handler.py) under the same
settings. The body is tests/fixtures/number_40517.png: five digits drawn on a 778x280
transparent canvas (the committed drawn_<d>.png digits side by side), as the page sends them;
a second numbers row sends tests/fixtures/number_13579.png, five digits all touching, which
the first network reads less surely: a cascade export reads it with its whole ensemble, the
dearest string it serves; a third sends tests/fixtures/number_42.png, two digits, whose digits
the digits network reads alone too (handler.numbers_handler.ALONE_LENGTH).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import http
from serving.archive import build_archive
from serving.machine import describe_machine
from serving.server import TorchServe, free_port_overrides, read_properties

MODEL = "numbers"
BODY = http.FIXTURES / "number_40517.png"
TOUCHING = http.FIXTURES / "number_13579.png"  # tests/conftest.py's number_png("13579", 0): every pair touching
SHORT = http.FIXTURES / "number_42.png"  # number_png("42"): a short number, its digits read alone by digits too
CONCURRENCY = (1, 16)
# Issue 13's targets on this machine.
TARGET_P50_C1_MS = 30
TARGET_C16_STRINGS_S = 100


def settings() -> tuple[str, dict]:
    """The default version of numbers in config.properties and its settings."""
    models = json.loads(read_properties()["models"])[MODEL]
    version = next((v for v, s in models.items() if s.get("defaultVersion")), next(iter(models)))
    return version, dict(models[version])


def run(duration: float = 5, repeats: int = 3, log=print) -> dict:
    """Start the server, sweep numbers and the ceiling at concurrency 1 and 16, stop."""
    version, cfg = settings()
    load_at_start = os.getloadavg()[0]
    forms = (http.Form("numbers, 5-digit canvas PNG", BODY, activations="off", model=MODEL),
             http.Form("numbers, 5 touching digits", TOUCHING, activations="off", model=MODEL),
             http.Form("numbers, 2-digit canvas PNG", SHORT, activations="off", model=MODEL))
    ceiling = http.Form("no-op handler, 5-digit canvas PNG", BODY, model=http.NOOP)
    with tempfile.TemporaryDirectory(prefix="numbers-bench-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        mar = build_archive(version, store, model_name=MODEL).name
        http.build_noop_archive(store)
        models = {MODEL: {version: {**cfg, "marName": mar, "defaultVersion": True}},
                  http.NOOP: {"1.0": {**cfg, "marName": f"{http.NOOP}.mar", "defaultVersion": True}}}
        server = TorchServe(Path(tmp) / "run", store, overrides={
            **free_port_overrides(), "default_workers_per_model": str(cfg["minWorkers"]),
            "load_models": f"{mar},{http.NOOP}.mar", "models": json.dumps(models, separators=(",", ":"))})
        started = time.monotonic()
        server.start(timeout=240)
        try:
            log(f"TorchServe up in {time.monotonic() - started:.0f} s; numbers: {cfg['minWorkers']} workers, "
                f"batch {cfg['batchSize']}, delay {cfg['maxBatchDelay']} ms")
            rows = http.sweep(server, (ceiling, *forms), CONCURRENCY, duration, repeats, log=log)
        finally:
            server.stop(timeout=20)
    return {"settings": {k: cfg[k] for k in ("minWorkers", "batchSize", "maxBatchDelay")}, "version": version,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load": [load_at_start, os.getloadavg()[0]],
            "duration_s": duration, "repeats": repeats, "rows": rows}


def section(result: dict) -> str:
    """The benchmark report's numbers section, in Markdown."""
    rows = {(r["form"], r["concurrency"]): r for r in result["rows"]}
    s = result["settings"]
    p50 = rows[("numbers, 5-digit canvas PNG", 1)]["p50_ms"]
    rps = rows[("numbers, 5-digit canvas PNG", 16)]["rps"]
    lines = ["## numbers: strings of digits", "",
             f"`numbers` ({s['minWorkers']} workers, batch {s['batchSize']}, delay {s['maxBatchDelay']} ms) and the no-op "
             "handler under the same settings, one TorchServe, wrk on loopback; medians of "
             f"{result['repeats']} runs of {result['duration_s']:g} s. The body is `tests/fixtures/number_40517.png` "
             "(five digits drawn on a 778x280 transparent canvas); the no-op rows send the same body, "
             "and the first row is the usual 28x28 ceiling. The touching rows send `tests/fixtures/number_13579.png`, "
             "five digits all touching, which the first network reads less surely, so the cascade reads it with "
             "its whole ensemble (the dearest case); the 2-digit rows `tests/fixtures/number_42.png`, a short "
             "number, whose digits the `digits` network reads alone too (`handler.numbers_handler.ALONE_LENGTH`)."
             + (f" `numbers` {result['version']}, measured {result['date']} (1-minute load {result['load'][0]:.1f} at the "
                f"start, {result['load'][1]:.1f} at the end)." if result.get("date") else ""), "", http_table(result), "",
             "| target | wanted | measured | met |", "|---|---:|---:|:-:|",
             f"| a lone 5-digit canvas, p50 at concurrency 1 | ≤ {TARGET_P50_C1_MS} ms | {p50:.1f} ms | "
             f"{'yes' if p50 <= TARGET_P50_C1_MS else '**no**'} |",
             f"| strings/s at concurrency 16 | ≥ {TARGET_C16_STRINGS_S} | {rps:,.0f} | "
             f"{'yes' if rps >= TARGET_C16_STRINGS_S else '**no**'} |"]
    return "\n".join(lines) + "\n"


def http_table(result: dict) -> str:
    ceiling = {r["concurrency"]: r["rps"] for r in result["rows"] if r["form"].startswith("no-op handler, 5")}
    lines = ["| request | concurrency | req/s | of no-op (same body) | p50 ms | p99 ms | errors / requests |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ratio = "ceiling" if r["model"] == http.NOOP else f"{r['rps'] / ceiling[r['concurrency']]:.1%}"
        lines.append(f"| {r['form']} | {r['concurrency']} | {r['rps']:,.0f} | {ratio} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['errors']} / {r['requests']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per cell (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the section, with the machine and its load, here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = run(args.duration, args.repeats)
    print(json.dumps(result, indent=1))
    text = section(result)
    print(text)
    if args.out:
        args.out.write_text(f"# Benchmark: numbers\n\nWritten by `python -m bench.numbers {' '.join(sys.argv[1:])}` on "
                            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {describe_machine()}; 1-minute load {load:.2f} at the "
                            f"start, {os.getloadavg()[0]:.2f} at the end (a shared machine: absolute figures move with the "
                            "load, the ratios to the no-op ceiling in the same rounds much less). `make bench` adds "
                            "this section to docs/benchmarks.md.\n\n" + text.split("\n", 2)[2])


if __name__ == "__main__":
    main()
