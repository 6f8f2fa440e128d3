"""Ray's overhead on a bulk job: the handler in plain processes vs `make bulk`'s Ray Data job.

    python -m bench.bulk                       # measure; store under "bulk" in docs/benchmarks.json
                                               # and rewrite docs/benchmarks.md from it
    python -m bench.bulk --write-mnist build/bulk-in   # MNIST's test digits as PNG files (`make bulk-sample`)

Same PNG files, same batch size, same number of workers on both sides, each worker one torch
thread. The baseline is the job's own per-batch work (``bulk.job.read_paths``: read the files,
``DigitsHandler.handle``, one JSON line each, written to a file) in N plain processes sharing
the files; the Ray side is ``bulk.job.run`` with N actors on a Ray started beforehand. Each
side reads a small and a large set as whole jobs, and images/s is the difference in images over
the difference in seconds: the start (workers spawning, the handler loading) cancels out and
is reported on its own. Medians of ``--repeats`` alternating rounds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

from bulk import job
from serving.machine import describe_machine

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "docs" / "benchmarks.json"
TARGET = 0.80  # of the in-process images/s (issue 14)


def write_mnist(folder: Path, count: int | None = None) -> int:
    """MNIST's test digits as 28x28 PNG files named ``<index>_<label>.png``; returns how many."""
    from PIL import Image

    from training.data import load_split

    images, labels = load_split("test")
    folder.mkdir(parents=True, exist_ok=True)
    n = len(images) if count is None else min(count, len(images))
    for i in range(n):
        Image.fromarray(images[i]).save(folder / f"{i:05d}_{labels[i]}.png", optimize=False)
    return n


def marginal_rate(small: tuple[int, float], large: tuple[int, float]) -> float:
    """Images/s of the extra images in the larger job: (N2 - N1) / (T2 - T1). The fixed cost of
    a job (workers starting, the handler loading) cancels out, and so does any bunching of
    the last batches, which a rate between the first and the last batch written would count."""
    return (large[0] - small[0]) / (large[1] - small[1])


def _share(paths: list[str], batch: int, out: str) -> None:
    """One baseline process: load the handler, then read its paths batch by batch into ``out``."""
    handler = job.load_model("digits")
    with open(out, "w") as f:
        for i in range(0, len(paths), batch):
            results = job.read_paths(handler, paths[i:i + batch])
            f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in results))
            f.flush()


class CpuMeter:
    """CPU seconds of this process and all its descendants (Ray's GCS, raylet, actors; the pool's
    processes) over a stretch. The descendants are polled, since an actor's CPU cannot be read
    once it has exited: each is counted up to its last poll, at most ``POLL_S`` short."""

    POLL_S = 0.1

    def __enter__(self):
        self.seen: dict[int, float] = {}
        self.start = {p.pid: cpu for p, cpu in self._poll()}
        self.self_start = time.process_time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        for p in psutil.Process().children(recursive=True):
            try:
                t = p.cpu_times()
                yield p, t.user + t.system
            except psutil.Error:
                continue

    def _run(self):
        while not self._stop.wait(self.POLL_S):
            for p, cpu in self._poll():
                self.seen[p.pid] = cpu

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for p, cpu in self._poll():
            self.seen[p.pid] = cpu
        self.seconds = time.process_time() - self.self_start + sum(
            cpu - self.start.get(pid, 0.0) for pid, cpu in self.seen.items())


def inprocess_job(paths: list[str], workers: int, batch: int, tmp: Path) -> tuple[float, float]:
    """Wall and CPU seconds for the handler in ``workers`` fresh plain processes to read ``paths``."""
    with CpuMeter() as cpu:
        started = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_share, [paths[k::workers] for k in range(workers)], [batch] * workers,
                          [str(tmp / f"share{k}.jsonl") for k in range(workers)]))
        seconds = time.perf_counter() - started
    return seconds, cpu.seconds


def ray_job(listing: Path, count: int, workers: int, batch: int, tmp: Path) -> tuple[float, float]:
    """Wall and CPU seconds for ``bulk.job.run`` with ``workers`` actors to read ``listing`` into a
    fresh OUT, on the Ray already started (its driver, GCS, raylet and actors all counted)."""
    out = tmp / "ray.jsonl"
    out.unlink(missing_ok=True)
    with CpuMeter() as cpu:
        started = time.perf_counter()
        job.run(listing, out, workers=workers, batch_size=batch, progress=False, log=lambda _: None)
        seconds = time.perf_counter() - started
    lines = out.read_text().count("\n")
    assert lines == count, f"the Ray job wrote {lines} lines for {count} images"
    return seconds, cpu.seconds


def run(count: int = 10000, small: int = 1000, batch: int = 64, repeats: int = 3,
        workers: tuple[int, ...] | None = None) -> dict:
    """Both sides at each worker count, on ``small`` and ``count`` images, ``repeats`` alternating rounds; medians."""
    import ray

    cores = os.cpu_count() or 1
    workers = workers or tuple(sorted({1, cores}))
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": describe_machine(), "images": count,
              "small": small, "batch": batch, "repeats": repeats, "load_start": os.getloadavg()[0], "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        tmp = Path(tmp)
        write_mnist(tmp / "in", count)
        paths = job.list_inputs(tmp / "in")
        sizes = {n: paths[:n] for n in (small, count)}
        for n, some in sizes.items():
            (tmp / f"list{n}.txt").write_text("\n".join(some) + "\n")
        started = time.perf_counter()
        job.start_ray(cpus=cores)
        result["ray_init_s"] = time.perf_counter() - started
        try:
            # Once, unmeasured: the first job pays for importing Ray Data and starting its own actors.
            ray_job(tmp / f"list{small}.txt", small, 1, batch, tmp)
            inprocess_job(sizes[small], 1, batch, tmp)
            for w in workers:
                runs = {"in process": {n: [] for n in sizes}, "ray": {n: [] for n in sizes}}
                for _ in range(repeats):
                    for n, some in sizes.items():
                        runs["in process"][n].append(inprocess_job(some, w, batch, tmp))
                        runs["ray"][n].append(ray_job(tmp / f"list{n}.txt", n, w, batch, tmp))
                row = {"workers": w}
                for side, by_size in runs.items():
                    pairs = list(zip(by_size[small], by_size[count]))
                    rates = [marginal_rate((small, a[0]), (count, b[0])) for a, b in pairs]
                    cpu_ms = [1000 / marginal_rate((small, a[1]), (count, b[1])) for a, b in pairs]
                    row[side] = {"images_s": statistics.median(rates), "all_images_s": [round(r) for r in rates],
                                 "cpu_ms_per_image": statistics.median(cpu_ms),
                                 "all_cpu_ms": [round(c, 3) for c in cpu_ms],
                                 "job_s": {str(n): statistics.median(r[0] for r in rs) for n, rs in by_size.items()}}
                row["ratio"] = row["ray"]["images_s"] / row["in process"]["images_s"]
                # On cores kept busy, images/s is cores / CPU per image: the load-proof comparison.
                row["cpu_ratio"] = row["in process"]["cpu_ms_per_image"] / row["ray"]["cpu_ms_per_image"]
                print(f"{w} workers: in process {row['in process']['images_s']:.0f} images/s "
                      f"({row['in process']['cpu_ms_per_image']:.3f} CPU-ms/image), Ray {row['ray']['images_s']:.0f} "
                      f"images/s ({row['ray']['cpu_ms_per_image']:.3f} CPU-ms/image): {row['ratio']:.0%} by the clock, "
                      f"{row['cpu_ratio']:.0%} by CPU", flush=True)
                result["rows"].append(row)
        finally:
            ray.shutdown()
    result["load_end"] = os.getloadavg()[0]
    return result


def section(bulk: dict | None) -> str:
    """The report's section on Ray's overhead (bench/__main__.py appends it)."""
    if not bulk:
        return ""
    small, count = bulk["small"], bulk["images"]
    lines = ["## Bulk jobs: Ray's overhead\n",
             f"`make bulk`'s Ray Data job against the same work in plain processes (`python -m bench.bulk`, "
             f"{bulk['date']}, {bulk['machine']}; 1-minute load {bulk['load_start']:.2f} at the start, "
             f"{bulk['load_end']:.2f} at the end). MNIST test PNGs, batch {bulk['batch']}, one torch thread per "
             f"worker. Each side reads {small:,} and then {count:,} images as a whole job, and each figure is the "
             f"difference between the two jobs divided by the {count - small:,} extra images, so each job's fixed "
             f"start cancels out. Medians of {bulk['repeats']} alternating rounds (every round in brackets).\n",
             "- **images/s** by the clock: what a person waits for, but on a shared machine it moves with "
             "everyone else's load.",
             "- **CPU-ms per image**: every process of the job counted (Ray: the driver, GCS, raylet and the "
             "actors; in process: the pool's processes), so other people's load hardly moves it. On cores the job "
             "keeps busy, images/s is the cores divided by it, so the ratio of the two is Ray's share of the plain "
             f"processes' throughput on the same cores. Target: at least {TARGET:.0%}.\n",
             "| workers | in process images/s | Ray images/s | by the clock | in process CPU-ms/image | "
             "Ray CPU-ms/image | by CPU | met (by CPU) |",
             "|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for r in bulk["rows"]:
        p, y = r["in process"], r["ray"]
        lines.append(f"| {r['workers']} | {p['images_s']:,.0f} {p['all_images_s']} | {y['images_s']:,.0f} "
                     f"{y['all_images_s']} | {r['ratio']:.0%} | {p['cpu_ms_per_image']:.3f} {p['all_cpu_ms']} | "
                     f"{y['cpu_ms_per_image']:.3f} {y['all_cpu_ms']} | {r['cpu_ratio']:.0%} | "
                     f"{'yes' if r['cpu_ratio'] >= TARGET else '**no**'} |")
    starts = "; ".join(f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}: in process {r['in process']['job_s'][str(small)]:.1f} s / "
                       f"{r['in process']['job_s'][str(count)]:.1f} s, Ray {r['ray']['job_s'][str(small)]:.1f} s / "
                       f"{r['ray']['job_s'][str(count)]:.1f} s" for r in bulk["rows"])
    lines += ["", f"Whole jobs of {small:,} / {count:,} images, medians: {starts}. Starting the local Ray itself "
              f"(`ray.init`) took {bulk['ray_init_s']:.1f} s more, once per `make bulk`. The fixed start (processes "
              "or actors starting and loading the handler) is a few seconds, which a backlog of millions of images "
              "does not notice. Ray's driver, raylet and object store share the workers' cores here; on a cluster "
              "they sit on the head node ([bulk.md](bulk.md) explains scaling out).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-mnist", type=Path, metavar="FOLDER", help="only write MNIST's test PNGs there")
    parser.add_argument("--images", type=int, default=10000, help="images in the larger job (default: %(default)s)")
    parser.add_argument("--small", type=int, default=1000, help="images in the smaller job (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--raw", type=Path, default=RAW, help="the bench's figures to add to (default: %(default)s)")
    args = parser.parse_args()
    if args.write_mnist:
        print(f"wrote {write_mnist(args.write_mnist)} PNG files into {args.write_mnist}")
        return
    result = run(args.images, args.small, repeats=args.repeats)
    saved = json.loads(args.raw.read_text()) if args.raw.exists() else {}
    saved["bulk"] = result
    args.raw.write_text(json.dumps(saved, indent=1))
    print(f"stored under 'bulk' in {args.raw}")
    if {"http", "inprocess", "env"} <= saved.keys():
        from bench.__main__ import write_report

        write_report(args.raw.with_suffix(".md"), saved["http"], saved["inprocess"], saved["env"],
                     saved["env"].get("command", "make bench"), saved["bulk"], saved.get("numbers"))
        print(f"rewrote {args.raw.with_suffix('.md')}")


if __name__ == "__main__":
    main()
