"""The GPU benchmark: both models' real handlers on a CUDA GPU against the same handlers on one
CPU thread of the same machine (a TorchServe worker's default) and the no-op handler's ceiling,
in one run.

    python -m bench.gpu --out build/gpu          # `make gpu-check` (with tests/gpu) on a GPU machine

In process, through TorchServe's own Context (serving/local.py), as a worker calls ``handle``:
requests per second of each handler's whole path (decode and preprocess on the CPU, one batched
forward, the JSON answers) at several batch sizes, the median of five timed stretches; and the
forward pass alone at the largest batch. The digits section also runs bench/inprocess.py's
pipeline: decoding and preprocessing on every CPU core a batch ahead of the GPU, and which of
the two bounds it. Writes gpu.json and gpu.md (docs/benchmarks-gpu.md) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from bench.inprocess import FIXTURES, gpu_rates, rate
from bench.noop_handler import NoopHandler
from handler.numbers_handler import NumbersHandler
from serving import local
from serving.archive import MODEL_FILE, NUMBERS_FILE
from serving.machine import describe_machine

CASES = {  # row label: (model, handler class, model file, request body, batch sizes)
    "digits": ("digits", None, MODEL_FILE, "canvas_7.png", (1, 16, 64, 256)),
    "numbers": ("numbers", NumbersHandler, NUMBERS_FILE, "number_40517.png", (1, 16, 64)),
    # every pair touching: the cascade's first network is unsure, so every network reads it
    "numbers, sent on": ("numbers", NumbersHandler, NUMBERS_FILE, "number_13579.png", (1, 16, 64)),
}
STRETCHES = 5


def median_rate(fn, items: int, seconds: float) -> float:
    """Items per second of ``fn``: the median of STRETCHES timed stretches after a warm-up call."""
    return rate(fn, items, seconds, stretches=STRETCHES, summary=statistics.median)


def handler_rate(handler, body: bytes, batch: int, seconds: float, model: str) -> float:
    requests = [{"body": body} for _ in range(batch)]
    headers = {"X-Activations": "off"}
    return median_rate(lambda: handler.handle(requests, local.context(batch, headers, model_name=model)), batch, seconds)


def load(label: str, gpu_id: int | None):
    model, cls, path, _, _ = CASES[label]
    kwargs = {"handler_class": cls, "model_name": model} if cls else {}
    return local.load_handler(path, version="bench", gpu_id=gpu_id, **kwargs)


def forward_rate(handler, model: str, batch: int, seconds: float) -> float:
    """The network alone on the handler's device, inputs already there."""
    shape = (batch, *handler.WARM_UP[1:]) if model == "digits" else (batch, 1, handler.WARM_UP[2], 192)
    x = torch.rand(*shape, device=handler.device)

    def forward():
        with torch.inference_mode():
            handler.model(x)
        if handler.device.type == "cuda":
            torch.cuda.synchronize()
    return median_rate(forward, batch, seconds)


def run(seconds: float = 2.0) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu: torch sees no CUDA GPU here (torch.cuda.is_available() is false)")
    threads = int(os.environ.get("DIGITS_TORCH_THREADS", "1"))
    out = {"gpu": torch.cuda.get_device_name(0), "machine": describe_machine(), "torch": torch.__version__,
           "cpu_threads": threads, "load": os.getloadavg()[0], "seconds": seconds, "models": {}}
    noop = NoopHandler()
    noop.initialize(local.context(1))
    for label, (model, _, _, body_name, batches) in CASES.items():
        body = (FIXTURES / body_name).read_bytes()
        gpu, cpu = load(label, 0), load(label, None)
        torch.set_num_threads(threads)  # as a worker: the CPU handler's threads
        rows = []
        for b in batches:
            rows.append({"batch": b,
                         "noop": handler_rate(noop, body, b, seconds / 2, model),
                         "cpu": handler_rate(cpu, body, b, seconds, model),
                         "gpu": handler_rate(gpu, body, b, seconds, model)})
        out["models"][label] = {"body": body_name, "rows": rows}
        if label == model:  # the network alone, once per model
            big = batches[-1]
            out["models"][label].update(forward_batch=big, forward_cpu=forward_rate(cpu, model, big, seconds),
                                        forward_gpu=forward_rate(gpu, model, big, seconds))
    out["digits_pipeline"] = gpu_rates(MODEL_FILE)
    return out


HEADER = """# GPU benchmark and checks

Written by `make gpu-check` on a CUDA machine (`GPU_PYTHON=` a python whose torch has CUDA, with
the rest of requirements.txt): it runs `tests/gpu` (a worker given a `gpu_id` reads on that
GPU, and both handlers' answers there are their CPU answers: the digits, probabilities within
0.002, the same activation maps, the same number strings and boxes, a corrupt image refused
alone), then `python -m bench.gpu`, which writes this page.
"""


def document(r: dict, note: str = "") -> str:
    """docs/benchmarks-gpu.md: what was run, the figures, and what they say."""
    rows = [row for m in r["models"].values() for row in m["rows"]]
    forward = [m["forward_gpu"] / m["forward_cpu"] for m in r["models"].values() if "forward_gpu" in m]
    whole = [row["gpu"] / row["cpu"] for row in rows]
    parts = [HEADER, note.strip() + "\n" if note.strip() else "", section(r), "What it says:", "",
             f"- **The GPU does the network's work {min(forward):,.0f} to {max(forward):,.0f} times faster** than "
             "one CPU thread (the forward pass alone, at the largest batch).",
             f"- **A worker's whole path gains {min(whole):.1f}x to {max(whole):.1f}x**: decoding the picture and "
             "preprocessing on the CPU are the rest of it."]
    p = r.get("digits_pipeline")
    if p:
        parts.append(f"- With {p['pipeline_workers']} CPU processes preprocessing ahead of the one GPU, digits reach "
                     f"{p['pipeline_images_per_s']:,.0f} images/s, bound by {p['bound']}; the GPU is busy for "
                     f"{p['pipeline_images_per_s'] / p['forward_images_per_s']:.1%} of that time. On a GPU machine, "
                     "give TorchServe about one worker per CPU core (`minWorkers`; they share the GPU), not one per GPU.")
    return "\n".join(parts) + "\n"


def section(r: dict) -> str:
    """The figures, in Markdown."""
    lines = ["## On a GPU", "",
             f"GPU: **{r['gpu']}**; host {r['machine']} (1-minute load {r['load']:.1f} at the start); torch "
             f"{r['torch']}. `python -m bench.gpu` (part of `make gpu-check`): each handler's whole path in "
             f"process (decode and preprocess on the CPU, one batched forward, JSON answers without maps), "
             f"requests/s, the median of {STRETCHES} stretches over {r['seconds']:g} s. The CPU column is the same "
             f"handler on {r['cpu_threads']} torch thread of the same host (a worker's default); the no-op "
             "handler's ceiling is what TorchServe's Context costs alone.", "",
             "| model, request | batch | no-op | CPU, 1 thread | GPU | GPU / CPU |", "|---|---:|---:|---:|---:|---:|"]
    for model, m in r["models"].items():
        for row in m["rows"]:
            lines.append(f"| {model}, `{m['body']}` | {row['batch']} | {row['noop']:,.0f} | {row['cpu']:,.0f} | "
                         f"{row['gpu']:,.0f} | {row['gpu'] / row['cpu']:.1f}x |")
    lines += ["", "The forward pass alone, inputs already on the device:", "",
              "| model | batch | CPU, 1 thread | GPU |", "|---|---:|---:|---:|"]
    for model, m in r["models"].items():
        if "forward_gpu" in m:
            lines.append(f"| {model} | {m['forward_batch']} | {m['forward_cpu']:,.0f} | {m['forward_gpu']:,.0f} |")
    p = r.get("digits_pipeline")
    if p:
        lines += ["", f"digits with every CPU core preprocessing a batch of {p['batch']} ahead of the GPU "
                  f"({p['pipeline_workers']} processes): {p['pipeline_images_per_s']:,.0f} images/s; preprocessing alone "
                  f"{p['cpu_preprocess_images_per_s']:,.0f} images/s, forward alone {p['forward_images_per_s']:,.0f} "
                  f"images/s: the bound is **{p['bound']}**."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("build/gpu"), help="default: %(default)s")
    parser.add_argument("--note", default="", help="a paragraph on this run's circumstances, for the page")
    parser.add_argument("--render", type=Path, help="only print the page for this gpu.json (with --note)")
    args = parser.parse_args()
    if args.render:
        print(document(json.loads(args.render.read_text()), args.note), end="")
        return
    result = run(args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1))
    (args.out / "gpu.md").write_text(document(result, args.note))
    print(section(result))


if __name__ == "__main__":
    main()
