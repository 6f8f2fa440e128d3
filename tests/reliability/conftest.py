"""Fixtures and helpers of the reliability tests. Each test puts its figures under a section of
``figures``, and the timed ones (recovery time, throughput) also under ``targets``; the report
of them is ``tests/reliability/figures.py``'s."""
from __future__ import annotations

import psutil
import pytest

from tests.conftest import SHIPPED_VERSION, fixture_bytes
from tests.reliability.figures import FIGURES, TARGETS

DIGIT_IMAGES = [f"{kind}_{d}.png" for kind in ("mnist", "drawn", "canvas") for d in range(10)]


@pytest.fixture(scope="session")
def figures() -> dict[str, dict[str, object]]:
    return FIGURES


@pytest.fixture(scope="session")
def targets():
    """``targets(what, measured, target, unit)``: record a timed figure against its upper bound."""
    def record(what: str, measured: float, target: float, unit: str = "s") -> None:
        TARGETS.append({"what": what, "measured": measured, "target": target, "unit": unit,
                        "met": measured <= target})
    return record


def read_alone(client) -> dict[str, int]:
    """The digit the server reads in each fixture sent alone: what a loaded server must also say."""
    answers = {}
    for name in DIGIT_IMAGES:
        r = client.predict(fixture_bytes(name), headers={"Content-Type": "image/png", "X-Activations": "off"})
        assert r.status_code == 200, (name, r.text)
        answers[name] = r.json()["digit"]
    return answers


def worker_snapshot(client, version: str = SHIPPED_VERSION) -> list[tuple]:
    """(id, pid, start time, status) of each worker: a restart changes the pid and start time."""
    return sorted((w["id"], w["pid"], w["startTime"], w["status"]) for w in client.workers(version))


def worker_rss_mb(client, version: str = SHIPPED_VERSION) -> dict[int, float]:
    """Resident memory of each worker process, in MiB, by pid."""
    return {w["pid"]: round(psutil.Process(w["pid"]).memory_info().rss / 2**20, 1) for w in client.workers(version)}
