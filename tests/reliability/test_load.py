"""A bounded soak: concurrency 32 on loopback, zero errors, every answer its own, memory stable.

``make test`` soaks for 15 s and at least ``MIN_REQUESTS`` requests (a busy machine takes
longer, it does not see less); ``make soak`` sets ``DIGITS_SOAK_SECONDS`` for a longer run.
Throughput and latency are figures for the report, not verdicts.
Resident memory of each worker is taken after a short warm-up (the first batches grow the
allocator's pools once) and again at the end; the workers must be the same processes.
"""
from __future__ import annotations

import os

import psutil

from tests.reliability.conftest import read_alone, worker_rss_mb, worker_snapshot
from tests.reliability.load import Load

SOAK_SECONDS = float(os.environ.get("DIGITS_SOAK_SECONDS", "15"))
CONCURRENCY = 32
WARM_UP_SECONDS = 3
MIN_REQUESTS = 1000  # the quiet machine sends about 4,000 in 15 s
RSS_GROWTH_MB = 48  # allowed growth per worker over the soak (allocator noise, not a leak)


def test_soak_at_concurrency_32_has_no_errors_and_stable_memory(client, figures):
    alone = read_alone(client)
    frontend = psutil.Process(client.server.pid())

    def load(seconds: float, min_requests: int = 0) -> Load:
        return Load(client.server.inference_url, client.server.headers("inference"), alone,
                    concurrency=CONCURRENCY, seconds=seconds, maps_every=4, min_requests=min_requests).start().wait()

    warm = load(WARM_UP_SECONDS)
    assert not warm.failed, warm.failed[:3]
    workers, rss_start, java_start = worker_snapshot(client), worker_rss_mb(client), frontend.memory_info().rss
    soak = load(SOAK_SECONDS, MIN_REQUESTS)
    rss_end, java_end = worker_rss_mb(client), frontend.memory_info().rss
    print(f"\nsoak: {soak.summary()}; worker RSS MiB {rss_start} -> {rss_end}")

    figures["Load"] = {
        "soak": f"{SOAK_SECONDS:.0f} s at concurrency {CONCURRENCY}, every 4th request with activation maps",
        "requests sent": len(soak.sent) + len(warm.sent),
        "errors (wrong answers included)": len(soak.failed) + len(warm.failed),
        "throughput": f"{soak.rate():.0f} requests/s",
        "latency p50 / p99": f"{soak.latency_ms(0.5)} ms / {soak.latency_ms(0.99)} ms",
        "worker RSS at start -> end (MiB)": ", ".join(f"pid {p}: {rss_start[p]} -> {rss_end.get(p)}" for p in rss_start),
        "frontend (Java) RSS at start -> end (MiB)": f"{java_start / 2**20:.0f} -> {java_end / 2**20:.0f}",
    }
    assert not soak.failed, soak.failed[:5]
    assert len(soak.sent) >= MIN_REQUESTS, f"the soak stopped after {len(soak.sent)} requests"
    assert worker_snapshot(client) == workers, "a worker restarted during the soak"
    for pid, start in rss_start.items():
        assert rss_end[pid] - start <= RSS_GROWTH_MB, f"worker {pid} grew from {start} to {rss_end[pid]} MiB"
