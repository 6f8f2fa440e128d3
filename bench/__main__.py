"""`make bench`: the in-process and the HTTP benchmark in one run, written to docs/benchmarks.md.

    python -m bench                      # wait for a quiet machine (at most 25 min), run, write the report
    python -m bench --no-wait --duration 2 --repeats 1 --out build/bench.md   # a quick look

The serving settings come from config.properties (workers, batch size, delay) and the
environment (DIGITS_TORCH_THREADS, default 1), as in `make serve`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import psutil

from bench import bulk as bulk_bench
from bench import http, inprocess
from bench import numbers as numbers_bench
from serving.archive import MODEL_FILE
from serving.machine import describe_machine
from serving.server import REPO

REPORT = REPO / "docs" / "benchmarks.md"
TUNING = REPO / "docs" / "tuning.json"
QUIET_LOAD = 0.8

# The targets of issue 6 on a 2-core machine, as ratios to the no-op ceiling in the same run.
TARGET_RATIO = {"28x28 PNG, no activations": 0.60, "28x28 PNG, with activations": 0.35}
TARGET_P99_C16_MS = 50
TARGET_P50_C1_MS = 15
TARGET_RSS_MB = 500
TARGET_GPU_IMAGES_S = 20_000


def load1() -> float:
    return os.getloadavg()[0]


def wait_quiet(max_wait_s: float, log=print) -> dict:
    """Poll the 1-minute load every 30 s until it is below QUIET_LOAD, for at most ``max_wait_s``."""
    started = time.monotonic()
    while load1() >= QUIET_LOAD and time.monotonic() - started < max_wait_s:
        log(f"waiting for a quiet machine: 1-minute load {load1():.2f} (want < {QUIET_LOAD})")
        time.sleep(30)
    return {"waited_s": round(time.monotonic() - started), "load_at_start": load1(),
            "quiet": load1() < QUIET_LOAD}


def busiest_processes(n: int = 4) -> list[str]:
    """The processes (other than this benchmark's) using the most CPU, for the report."""
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    usage = []
    for p in procs:
        try:
            usage.append((p.cpu_percent(None), " ".join(p.info["cmdline"] or [p.info["name"]])[:90]))
        except psutil.Error:
            continue
    return [f"{cpu:.0f}% {cmd}" for cpu, cmd in sorted(usage, reverse=True)[:n] if cpu >= 5]


# ---------------------------------------------------------------- the report

def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def http_table(result: dict) -> str:
    ceiling = {r["concurrency"]: r["rps"] for r in result["rows"] if r["model"] == http.NOOP}
    lines = ["| request form | concurrency | req/s | of no-op | p50 ms | p95 ms | p99 ms | errors / requests |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ratio = "ceiling" if r["model"] == http.NOOP else f"{r['rps'] / ceiling[r['concurrency']]:.1%}"
        lines.append(f"| {r['form']} | {r['concurrency']} | {fmt(r['rps'])} | {ratio} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} / {fmt(r['requests'])} |")
    return "\n".join(lines)


def targets(result: dict, gpu: dict | None) -> tuple[str, list[bool]]:
    rows = {(r["form"], r["concurrency"]): r for r in result["rows"]}
    noop64 = rows[(http.CEILING.label, 64)]["rps"]
    lines = ["| target | wanted | measured | met |", "|---|---:|---:|:-:|"]
    met = []

    def add(name, wanted, measured, ok):
        met.append(ok)
        lines.append(f"| {name} | {wanted} | {measured} | {'yes' if ok else '**no**'} |")

    for form, want in TARGET_RATIO.items():
        got = rows[(form, 64)]["rps"] / noop64
        add(f"{form}: req/s at concurrency 64, of the no-op's", f"≥ {want:.0%}", f"{got:.1%}", got >= want)
    p99 = max(rows[(f.label, 16)]["p99_ms"] for f in http.TARGET_FORMS)
    add("p99 latency at concurrency 16 (28x28 PNG, worst of with/without maps)", f"≤ {TARGET_P99_C16_MS} ms",
        f"{p99:.1f} ms", p99 <= TARGET_P99_C16_MS)
    p50 = max(rows[(f.label, 1)]["p50_ms"] for f in http.TARGET_FORMS)
    add("p50 of a lone request, concurrency 1 (28x28 PNG, worst of with/without maps)",
        f"≤ {TARGET_P50_C1_MS} ms", f"{p50:.1f} ms", p50 <= TARGET_P50_C1_MS)
    rss = max(result["rss_mb"]["before"] + result["rss_mb"]["after"])
    add("resident memory per worker (largest, before and after the load)", f"≤ {TARGET_RSS_MB} MB",
        f"{rss:.0f} MB", rss <= TARGET_RSS_MB)
    if gpu:
        best = max(gpu["pipeline_images_per_s"], gpu["handler_images_per_s, 28x28 PNG, no activations"])
        add("GPU, batch 256, images/s in process", f"≥ {TARGET_GPU_IMAGES_S:,}", fmt(best),
            best >= TARGET_GPU_IMAGES_S)
    else:
        lines.append(f"| GPU, batch 256, images/s in process | ≥ {TARGET_GPU_IMAGES_S:,} | no GPU on this machine | n/a |")
    return "\n".join(lines), met


def bound_analysis(result: dict, inp: dict) -> str:
    """What bounds digits at concurrency 64: CPU seconds per request, from the measurements."""
    rows = {(r["form"], r["concurrency"]): r for r in result["rows"]}
    settings = result["settings"]
    cores = os.cpu_count() or 1
    noop = rows[(http.CEILING.label, 64)]["rps"]
    overhead_ms = cores / noop * 1000  # CPU ms per request of frontend + wrk + an empty worker
    out = [f"At concurrency 64 the no-op ceiling served {fmt(noop)} req/s on {cores} cores: the frontend, "
           f"wrk and an empty worker cost about {overhead_ms:.2f} CPU-ms per request. The handler's own "
           "work per image, measured in process at batch 64 with one torch thread, adds to that:",
           "", "| request form | preprocess ms | forward ms | answer ms | predicted req/s | of no-op | measured req/s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for form, s in inp["stages_batch_64"].items():
        work = s["preprocess_ms"] + s["forward_ms"] + s["answers_ms"]
        predicted = cores / (overhead_ms + work) * 1000
        # Forms measured in process only (a picture read twice) have no HTTP row to compare with.
        measured = fmt(rows[(form, 64)]["rps"]) if (form, 64) in rows else "not sent over HTTP"
        out.append(f"| {form} | {s['preprocess_ms']:.3f} | {s['forward_ms']:.3f} | {s['answers_ms']:.3f} | "
                   f"{fmt(predicted)} | {predicted / noop:.0%} | {measured} |")
    need = {form: (cores / (want * noop) * 1000 - overhead_ms) for form, want in TARGET_RATIO.items()}
    out += ["", "Reaching the targets would need the whole per-image path (preprocess + forward + answer) "
            "within " + " and ".join(f"{v:.3f} ms ({k})" for k, v in need.items()) +
            " of one core. The forward pass alone of the served network takes "
            f"{1000 / max(inp['forward']['frozen + optimize_for_inference (served)'].values()):.3f} ms per image at "
            "its best batch on one core (about 22 million multiply-adds per image), so on this machine the "
            "bound is the network's arithmetic plus the preprocessing, not TorchServe or the batching."]
    lines = []
    for f in http.TARGET_FORMS:
        if (f.label, 16) in rows:
            r = rows[(f.label, 16)]
            mean_ms = 16 / r["rps"] * 1000
            lines.append(f"{f.label}: 16 / {fmt(r['rps'])} req/s = {mean_ms:.1f} ms (p50 measured {r['p50_ms']:.1f} ms, "
                         f"p99 {r['p99_ms']:.1f} ms); p99 within {TARGET_P99_C16_MS} ms needs about "
                         f"{fmt(r['rps'] * r['p99_ms'] / TARGET_P99_C16_MS)} req/s at this tail")
    out += ["", "Latency at concurrency 16 follows from throughput: wrk keeps 16 requests in flight, so each waits "
            "on average 16 divided by the requests/s (Little's law). " + "; ".join(lines) + ". At concurrency 16 "
            f"the service runs well below its concurrency-64 rate: {settings['minWorkers']} workers share 16 requests, so "
            f"no batch fills its {settings['batchSize']} places and each waits out the {settings['maxBatchDelay']} ms batch "
            "delay. A shorter delay shortens that wait and costs throughput at 64 (docs/tuning.md)."]
    return "\n".join(out)


def inprocess_tables(inp: dict) -> str:
    batches = list(next(iter(inp["handler"].values())).keys())
    head = "| path | " + " | ".join(f"batch {b}" for b in batches) + " |\n|---|" + "---:|" * len(batches)
    rows = [f"| handler: {form} | " + " | ".join(fmt(v) for v in rates.values()) + " |"
            for form, rates in inp["handler"].items()]
    rows += [f"| forward only: {name} | " + " | ".join(fmt(v) for v in rates.values()) + " |"
             for name, rates in inp["forward"].items()]
    return head + "\n" + "\n".join(rows)


def gpu_section(gpu: dict | None) -> str:
    if not gpu:
        return ("**No GPU was available for this run** (`torch.cuda.is_available()` is false), so there are no "
                "GPU figures here. On a CUDA machine `make bench` adds them: the GPU's name, the forward pass "
                "alone and the handler's path at batch 256, and a pipeline that decodes and preprocesses on "
                "every CPU core a batch ahead of the GPU, with which of the two is the bound. Both handlers' "
                "GPU figures from a GPU machine, beside their CPU figures there, are in "
                "[benchmarks-gpu.md](benchmarks-gpu.md) (`make gpu-check`).")
    lines = [f"GPU: **{gpu['gpu']}**, batch {gpu['batch']}, {gpu['cpu_cores']} CPU cores.", "",
             "| path | images/s |", "|---|---:|"]
    for k, v in gpu.items():
        if k.endswith("images_per_s") or k.startswith("handler_images_per_s"):
            lines.append(f"| {k.replace('_images_per_s', '').replace('_', ' ')} | {fmt(v)} |")
    lines += ["", f"Bound: **{gpu['bound']}** (preprocessing on {gpu['pipeline_workers']} processes "
              f"{fmt(gpu['cpu_preprocess_images_per_s'])} images/s, forward {fmt(gpu['forward_images_per_s'])} images/s)."]
    return "\n".join(lines)


def tuning_summary(settings: dict, threads: int) -> str:
    """What `make tune` found (docs/tuning.json), and whether these settings are its choice."""
    used = f"{settings['minWorkers']} workers x {threads} thread, batch {settings['batchSize']}, {settings['maxBatchDelay']} ms"
    if not TUNING.exists():
        return f"{used}; `make tune` has not been run on this machine, so they are not measured choices."
    results = json.loads(TUNING.read_text())["results"]
    best = next(m for m in results if m["chosen"])
    picked = (best["workers"], best["threads"], best["batch"], best["delay"]) == (
        settings["minWorkers"], threads, settings["batchSize"], settings["maxBatchDelay"])
    return (f"{used}: {'the choice of' if picked else '**not** the choice of'} `make tune` "
            f"([tuning.md](tuning.md): {len(results)} candidates, {best['workers']} workers x {best['threads']} "
            f"thread, batch {best['batch']}, {best['delay']} ms won), with the reason in config.properties.")


def preprocess_section(inp: dict) -> str:
    """Preprocessing's median time per image against the code before issue 12, same run (bench/preprocess.py)."""
    if "preprocess" not in inp:  # figures stored before this measurement existed
        return ""
    from bench.preprocess import table
    return ("\n\nPreprocessing alone (decode, ink, digit-finding, MNIST form), median per image on one core, "
            "against model/preprocess.py before issue 12 timed in the same run:\n\n" + table(inp["preprocess"]))


def write_report(path: Path, http_result: dict, inp: dict, env: dict, command: str, bulk: dict | None = None,
                 numbers: dict | None = None) -> str:
    target_table, met = targets(http_result, inp["gpu"])
    rss = http_result["rss_mb"]
    s = http_result["settings"]
    noop64 = next(r["rps"] for r in http_result["rows"] if r["model"] == http.NOOP and r["concurrency"] == 64)
    ratios = ", ".join(f"{r['form']} {r['rps'] / noop64:.1%}" for r in http_result["rows"]
                       if r["model"] != http.NOOP and r["concurrency"] == 64)
    text = f"""# Benchmarks

Written by `{command}` on {env['date']}. Re-run it to measure your own machine: every figure
below comes from that one run.

- **Machine**: {env['machine']}; {env['python']}, torch {inp['torch']}, TorchServe 0.12.0, wrk 4.1.
- **Model**: `{env['model_file']}` (network speed depends only on the architecture, not on the weights).
- **Serving settings** (config.properties): {s['minWorkers']} workers, batch size {s['batchSize']}, max batch
  delay {s['maxBatchDelay']} ms, {http_result['torch_threads']} torch thread per worker.
- **Machine load**: 1-minute load {env['load_start']:.2f} when the run started (waited {env['waited_s']} s for
  it to drop below {QUIET_LOAD}; {'quiet' if env['quiet'] else '**the machine was not quiet**'}), {env['load_end']:.2f}
  at the end. {('Other busy processes at the start: ' + '; '.join(env['busy']) + '.') if env['busy'] else ''}
  Absolute numbers move with the load; the ratios to the no-op ceiling, measured in the same rounds,
  move much less.

## HTTP: requests/s and latency on loopback

wrk drives one TorchServe that serves both `digits` and `noop` (bench/noop_handler.py: a constant
answer, same workers, batch size and delay). Each cell is the median of {http_result['repeats']} runs of
{http_result['duration_s']:g} s; in every round the ceiling runs just before digits. "of no-op" is req/s divided
by the no-op's at the same concurrency.

{http_table(http_result)}

At concurrency 64: {ratios} of the no-op ceiling ({fmt(noop64)} req/s).

Resident memory per worker (MB): digits {rss['before']} before the load, {rss['after']} after; the no-op
worker {rss['noop']}.

## Targets

{target_table}

## What bounds it

{bound_analysis(http_result, inp)}

## In process: images/s on the CPU ({inp['torch_threads']} torch thread)

The handler's whole path (decode, preprocess, one batched forward, JSON answers with their PNGs)
through `DigitsHandler.handle`, and the network's forward alone. Best of three ~1 s stretches.

{inprocess_tables(inp)}

Where the time goes per image at batch 64 (ms):

| request form | decode + preprocess | forward (+ maps to bytes) | answer (JSON, PNGs) |
|---|---:|---:|---:|
""" + "\n".join(f"| {f} | {v['preprocess_ms']:.3f} | {v['forward_ms']:.3f} | {v['answers_ms']:.3f} |"
                for f, v in inp["stages_batch_64"].items()) + preprocess_section(inp) + f"""

## GPU

{gpu_section(inp['gpu'])}

## Settings and why

- **Workers, torch threads per worker, batch size, delay**: {tuning_summary(s, http_result['torch_threads'])}
- **Freeze + `optimize_for_inference` at load** (handler `optimize`): folds batch norm into the
  convolutions and uses oneDNN kernels; compare "as loaded" with "served" in the forward rows.
  Outputs agree with the shipped TorchScript to within 1e-6. Channels-last input makes no
  difference for a one-channel 28x28 input (its memory layout is the same) and is not used.
- **`inference_mode`** around the forward pass (no autograd bookkeeping).
- **Response encoding**: compact JSON; the activation maps are scaled to bytes and tiled into one
  grid per layer for the whole batch at once (on the GPU when there is one), then each grid and the
  28x28 input become PNGs through `model.preprocess.png_bytes` (unfiltered rows, ISA-L's deflate at
  level 1): about 8 times faster than zlib, which itself beat Pillow's encoder 3-4 times for
  these small images. `X-Activations: off` drops the grids: the answer shrinks
  from about {fmt(next(r['response_bytes'] for r in http_result['rows'] if r['form'] == '28x28 PNG, with activations'))}
  to {fmt(next(r['response_bytes'] for r in http_result['rows'] if r['form'] == '28x28 PNG, no activations'))} bytes.

Targets met: {sum(met)} of {len(met)}.
""" + ("\n" + bulk_bench.section(bulk) if bulk else "") + ("\n" + numbers_bench.section(numbers) if numbers else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-file", type=Path, default=MODEL_FILE, help="default: %(default)s")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per HTTP cell (default: %(default)s)")
    parser.add_argument("--max-wait", type=float, default=25 * 60,
                        help="seconds to wait for a 1-minute load below 0.8 (default: %(default)s)")
    parser.add_argument("--no-wait", action="store_true", help="run at once, however busy the machine")
    parser.add_argument("--out", type=Path, default=REPORT, help="default: %(default)s")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the figures of the last run (--out with .json), measuring nothing")
    args = parser.parse_args()
    raw = args.out.with_suffix(".json")
    if args.report_only:
        saved = json.loads(raw.read_text())
        write_report(args.out, saved["http"], saved["inprocess"], saved["env"], saved["env"].get("command", "make bench"),
                     saved.get("bulk"), saved.get("numbers"))
        print(f"rewrote {args.out} from {raw}")
        return
    if not args.model_file.exists():
        sys.exit(f"{args.model_file} does not exist: `make train`, or pass --model-file")
    args_text = shlex.join(sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        command = f"make bench BENCH_ARGS={shlex.quote(args_text)}" if args_text else "make bench"
    else:
        command = f"python -m bench {args_text}".strip()
    quiet = wait_quiet(0 if args.no_wait else args.max_wait)
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": describe_machine(), "python": f"Python {platform.python_version()}",
           "model_file": os.path.relpath(args.model_file.resolve(), REPO), "waited_s": quiet["waited_s"],
           "load_start": quiet["load_at_start"], "quiet": quiet["quiet"], "busy": busiest_processes()}
    print(f"in-process benchmark ({env['machine']}) ...", flush=True)
    inp = inprocess.run(args.model_file)
    print("HTTP benchmark ...", flush=True)
    result = http.run(args.duration, args.repeats, model_file=args.model_file)
    env["load_end"] = load1()
    print("bulk job: Ray against plain processes ...", flush=True)
    bulk = bulk_bench.run()
    print("numbers: a 5-digit canvas against the no-op ceiling ...", flush=True)
    numbers = numbers_bench.run(args.duration, args.repeats)
    env["command"] = command
    raw.write_text(json.dumps({"env": env, "inprocess": inp, "http": result, "bulk": bulk, "numbers": numbers}, indent=1))
    write_report(args.out, result, inp, env, command, bulk, numbers)
    print(f"wrote {args.out} (raw figures in {raw})")


if __name__ == "__main__":
    main()
