"""`make tune`: pick the serving settings (workers, torch threads, batch size, batch delay).

    python -m bench.tune                   # the three-stage sweep, about 15 min; writes docs/tuning.md
    python -m bench.tune --duration 2      # shorter wrk runs

Each candidate starts its own TorchServe (bench.http: digits and the no-op ceiling, both under
the candidate's settings) and measures the 28x28 PNG forms, with and without activation
maps, at concurrency 1, 16 and 64. Three stages, each keeping the best so far:

1. workers x torch threads per worker (batch 16, delay 5 ms);
2. batch size;
3. max batch delay.

"Best" meets the most latency targets (p99 at concurrency 16 <= 50 ms and p50 of a lone
request <= 15 ms, worst of the two forms), then serves the most requests/s at concurrency 64
(geometric mean of the two forms). Requests/s rather than the ratio to the no-op: the no-op's
own speed changes with the settings, and users get requests/s. The result is written to
docs/tuning.md; copy the winner into config.properties (`models=` and DIGITS_TORCH_THREADS).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from bench import http
from bench.__main__ import TARGET_P50_C1_MS, TARGET_P99_C16_MS, wait_quiet
from serving.machine import describe_machine
from serving.server import REPO

REPORT = REPO / "docs" / "tuning.md"
CONCURRENCY = (1, 16, 64)
STAGE1 = ((1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2))  # (workers, torch threads per worker)
BATCHES = (4, 8, 16, 32, 64)
DELAYS = (1, 2, 5, 10)


def measure(workers: int, threads: int, batch: int, delay: int, duration: float, log=print) -> dict:
    """One candidate: its own server, the 28x28 forms at CONCURRENCY, one run per cell."""
    os.environ["DIGITS_TORCH_THREADS"] = str(threads)  # workers inherit it (handler initialize)
    settings = {"minWorkers": workers, "maxWorkers": workers, "batchSize": batch, "maxBatchDelay": delay}
    log(f"workers {workers}, threads {threads}, batch {batch}, delay {delay} ms")
    result = http.run(duration, 1, CONCURRENCY, settings, http.TARGET_FORMS, log=lambda *a: None)
    rows = {(r["form"], r["concurrency"]): r for r in result["rows"]}
    digits = [f.label for f in http.TARGET_FORMS]
    out = {"workers": workers, "threads": threads, "batch": batch, "delay": delay,
           "rps64": {f: rows[(f, 64)]["rps"] for f in digits},
           "noop64": rows[(http.CEILING.label, 64)]["rps"],
           "p99_c16": max(rows[(f, 16)]["p99_ms"] for f in digits),
           "p50_c1": max(rows[(f, 1)]["p50_ms"] for f in digits),
           "errors": sum(r["errors"] for r in result["rows"]),
           "rss_mb": max(result["rss_mb"]["before"] + result["rss_mb"]["after"])}
    out["score"] = score(out)
    log(f"  c64 req/s {', '.join(f'{v:,.0f}' for v in out['rps64'].values())} (no-op {out['noop64']:,.0f}); "
        f"p99 c16 {out['p99_c16']:.1f} ms; p50 c1 {out['p50_c1']:.1f} ms; errors {out['errors']}")
    return out


def score(m: dict) -> tuple[int, float]:
    """Latency targets met, then the geometric mean of the c64 requests/s of the two forms."""
    met = int(m["p99_c16"] <= TARGET_P99_C16_MS) + int(m["p50_c1"] <= TARGET_P50_C1_MS)
    rps = math.exp(sum(math.log(v) for v in m["rps64"].values()) / len(m["rps64"]))
    return met, rps if m["errors"] == 0 else 0.0


def sweep(duration: float, log=print) -> list[dict]:
    seen: dict[tuple, dict] = {}

    def run(w, t, b, d, stage):
        key = (w, t, b, d)
        if key not in seen:
            seen[key] = {**measure(w, t, b, d, duration, log), "stage": stage}
        return seen[key]

    best = max((run(w, t, 16, 5, 1) for w, t in STAGE1), key=lambda m: m["score"])
    best = max([best] + [run(best["workers"], best["threads"], b, 5, 2) for b in BATCHES], key=lambda m: m["score"])
    best = max([best] + [run(best["workers"], best["threads"], best["batch"], d, 3) for d in DELAYS],
               key=lambda m: m["score"])
    for m in seen.values():
        m["chosen"] = m is best
    return list(seen.values())


def write_report(path: Path, results: list[dict], env: dict) -> str:
    forms = list(results[0]["rps64"])
    lines = [
        "# Serving settings: the tuning sweep", "",
        f"Written by `make tune` on {env['date']} on {env['machine']} (1-minute load {env['load']:.2f} at the "
        f"start). Every candidate ran its own TorchServe with digits and the no-op handler under the same "
        f"settings; each cell is one wrk run of {env['duration']:g} s on loopback. See bench/tune.py for the rule.", "",
        "| stage | workers | torch threads | batch | delay ms | " + " | ".join(f"c64 req/s, {f}" for f in forms) +
        " | no-op c64 | p99 c16 ms | p50 c1 ms | worker RSS MB | errors |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(forms) + "---:|---:|---:|---:|---:|",
    ]
    for m in results:
        mark = "**" if m["chosen"] else ""
        lines.append(f"| {m['stage']} | {mark}{m['workers']}{mark} | {m['threads']} | {m['batch']} | {m['delay']} | " +
                     " | ".join(f"{m['rps64'][f]:,.0f}" for f in forms) +
                     f" | {m['noop64']:,.0f} | {m['p99_c16']:.1f} | {m['p50_c1']:.1f} | {m['rss_mb']:.0f} | {m['errors']} |")
    best = next(m for m in results if m["chosen"])
    lines += ["", f"**Chosen:** {best['workers']} workers, {best['threads']} torch thread(s) each, batch size "
              f"{best['batch']}, max batch delay {best['delay']} ms (bold row). Single runs of a few seconds move by "
              "about 5% between repeats, so candidates closer than that are a tie; `make bench` then measures the "
              "chosen settings with three repeats per cell.", ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps({"env": env, "results": results}, indent=1) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--max-wait", type=float, default=25 * 60,
                        help="seconds to wait for a quiet machine first (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPORT, help="default: %(default)s")
    args = parser.parse_args()
    quiet = wait_quiet(args.max_wait)
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": describe_machine(),
           "load": quiet["load_at_start"], "duration": args.duration}
    results = sweep(args.duration)
    print(write_report(args.out, results, env))


if __name__ == "__main__":
    main()
