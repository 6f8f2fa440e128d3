"""In-process benchmark: images/s through the real handler and through the network alone.

    python -m bench.inprocess              # prints JSON; `make bench` puts it in docs/benchmarks.md

On the CPU, with ``DIGITS_TORCH_THREADS`` torch threads (default 1, as in a worker):
  * the handler's whole path (decode and preprocess, one batched forward, the JSON answers
    with their PNGs) at batch 1, 8, 64 and 256, per request form;
  * where the time goes at batch 64 (preprocess / forward / answers);
  * the network's forward alone: as loaded, after the handler's ``optimize`` (freeze +
    ``optimize_for_inference``), that plus channels-last input, and with two threads.
On a CUDA machine, also: the GPU named, the forward alone at batch 256, the handler's path
at batch 256, and a pipeline that decodes and preprocesses on every CPU core while the GPU
runs the previous batch, with which of the two bounds it.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from model.preprocess import preprocess
from serving import local
from serving.archive import MODEL_FILE

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
BATCHES = (1, 8, 64, 256)
FORMS = {  # name: (body file, activations wanted)
    "28x28 PNG, no activations": ("mnist_7.png", False),
    "28x28 PNG, with activations": ("mnist_7.png", True),
    "280x280 canvas PNG, no activations": ("canvas_7.png", False),
    "280x280 canvas PNG, with activations": ("canvas_7.png", True),
    # a 3 cut with its neighbours' strokes touching it: every picture read twice (the second reading)
    "digit with touching neighbours (read twice), no activations": ("touching_3.png", False),
}


def make_handler(model_file: Path, gpu_id: int | None = None):
    """The real DigitsHandler, initialised as a TorchServe worker would do it."""
    return local.load_handler(model_file, version="bench", gpu_id=gpu_id)


def make_context(n: int, activations: bool):
    return local.context(n, {} if activations else {"X-Activations": "off"})


def rate(fn, items: int, min_seconds: float = 1.0, min_calls: int = 2, stretches: int = 3, summary=max) -> float:
    """Items per second of ``fn`` (called repeatedly after one warm-up call) over ``stretches``
    timed stretches: by default the best, as machine noise only ever slows a stretch down
    (bench/gpu.py takes the median)."""
    fn()
    rates = []
    for _ in range(stretches):
        calls, started = 0, time.perf_counter()
        while calls < min_calls or time.perf_counter() - started < min_seconds / stretches:
            fn()
            calls += 1
        rates.append(calls * items / (time.perf_counter() - started))
    return summary(rates)


def handler_rates(handler, batches=BATCHES, min_seconds: float = 1.0) -> dict:
    """Images/s through handler.handle, per form and batch size."""
    out = {}
    for form, (name, maps) in FORMS.items():
        body = (FIXTURES / name).read_bytes()
        out[form] = {}
        for b in batches:
            requests = [{"body": body} for _ in range(b)]
            out[form][b] = rate(lambda: handler.handle(requests, make_context(b, maps)), b, min_seconds)
    return out


def stage_split(handler, batch: int = 64) -> dict:
    """Milliseconds per image in each stage of the handler's path, at one batch size."""
    out = {}
    for form, (name, maps) in FORMS.items():
        body = (FIXTURES / name).read_bytes()
        # The handler's own prepare: decode, preprocess, and the count of separate digits.
        pre = 1000 / rate(lambda: [handler.prepare(body) for _ in range(batch)], batch)
        items = [handler.prepare(body) for _ in range(batch)]
        wants = [maps] * batch
        # both networks' passes: the digits network's, and the second reading's where there is one
        fwd = 1000 / rate(lambda: handler.infer(items, wants), batch)
        results = handler.infer(items, wants)
        post = 1000 / rate(lambda: [json.dumps(handler.answer(items[k], results, k, maps), separators=(",", ":"))
                                    for k in range(batch)], batch)
        out[form] = {"preprocess_ms": pre, "forward_ms": fwd, "answers_ms": post}
    return out


def forward_rates(model_file: Path, batches=BATCHES, min_seconds: float = 1.0) -> dict:
    """Images/s of the network's forward alone, in the variants the handler could serve."""
    from handler.spine import optimize

    plain = torch.jit.load(str(model_file), map_location="cpu").eval()
    optimized = optimize(torch.jit.load(str(model_file), map_location="cpu").eval())
    threads = torch.get_num_threads()
    variants = {"as loaded (TorchScript)": (plain, False, threads),
                "frozen + optimize_for_inference (served)": (optimized, False, threads),
                "served + channels-last input": (optimized, True, threads),
                "served, 2 torch threads": (optimized, False, 2)}
    out = {}
    with torch.inference_mode():
        for name, (model, channels_last, n_threads) in variants.items():
            torch.set_num_threads(n_threads)
            out[name] = {}
            for b in batches:
                x = torch.rand(b, 1, 28, 28)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out[name][b] = rate(lambda: model(x), b, min_seconds)
    torch.set_num_threads(threads)
    return out


def _preprocess_chunk(bodies: list[bytes]) -> np.ndarray:
    return np.stack([preprocess(b) for b in bodies])


def gpu_rates(model_file: Path, batch: int = 256, batches_in_pipeline: int = 40) -> dict | None:
    """The CUDA path, when there is a GPU: forward alone, the handler, and an overlapped pipeline."""
    if not torch.cuda.is_available():
        return None
    handler = make_handler(model_file, gpu_id=0)
    body = (FIXTURES / "mnist_7.png").read_bytes()
    images = np.stack([preprocess(body) for _ in range(batch)])
    x = torch.from_numpy(images).unsqueeze(1).cuda()

    def forward():
        with torch.inference_mode():
            handler.model(x)
        torch.cuda.synchronize()

    out = {"gpu": torch.cuda.get_device_name(0), "batch": batch, "cpu_cores": os.cpu_count(),
           "forward_images_per_s": rate(forward, batch, 2.0),
           "predict_images_per_s": rate(lambda: handler.predict(images, True), batch, 2.0)}
    for form, (name, maps) in FORMS.items():
        if name == "mnist_7.png":
            requests = [{"body": body} for _ in range(batch)]
            out[f"handler_images_per_s, {form}"] = rate(
                lambda: handler.handle(requests, make_context(batch, maps)), batch, 2.0)
    # Decoding and preprocessing on every core, a batch ahead of the GPU.
    workers = max(1, (os.cpu_count() or 2) - 1)
    chunks = [[body] * (batch // workers + 1) for _ in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_preprocess_chunk, chunks))  # start the processes
        started = time.perf_counter()
        done = 0
        pending = [pool.submit(_preprocess_chunk, [body] * batch) for _ in range(min(workers, batches_in_pipeline))]
        submitted = len(pending)
        while pending:
            imgs = pending.pop(0).result()
            if submitted < batches_in_pipeline:
                pending.append(pool.submit(_preprocess_chunk, [body] * batch))
                submitted += 1
            handler.predict(imgs, False)
            done += len(imgs)
        out["pipeline_images_per_s"] = done / (time.perf_counter() - started)
        out["cpu_preprocess_images_per_s"] = rate(
            lambda: list(pool.map(_preprocess_chunk, [[body] * batch] * workers)), batch * workers, 2.0)
    out["pipeline_workers"] = workers
    out["bound"] = ("preprocessing (CPU)" if out["cpu_preprocess_images_per_s"] < out["forward_images_per_s"]
                    else "the model (GPU)")
    return out


def run(model_file: Path = MODEL_FILE, min_seconds: float = 1.0, batches=BATCHES) -> dict:
    threads = int(os.environ.get("DIGITS_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    handler = make_handler(model_file)
    torch.set_num_threads(threads)
    from bench import preprocess as preprocess_bench
    return {"torch_threads": threads, "torch": torch.__version__,
            "preprocess": preprocess_bench.run(),
            "handler": handler_rates(handler, batches, min_seconds),
            "stages_batch_64": stage_split(handler),
            "forward": forward_rates(model_file, batches, min_seconds),
            "gpu": gpu_rates(model_file)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-file", type=Path, default=MODEL_FILE, help="default: %(default)s")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    text = json.dumps(run(args.model_file, args.seconds), indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
