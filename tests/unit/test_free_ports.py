"""serving.server.free_ports under `make test`'s two pytest-xdist workers: each worker picks
from its own share of ports, so two servers started at once in two workers never get one port."""
from __future__ import annotations

import socket

from serving.server import SHARED_PORTS, free_ports


def ports_of(monkeypatch, worker: str, count: int = 2, n: int = 5) -> list[int]:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    return free_ports(n)


def test_two_workers_pick_from_shares_that_do_not_meet(monkeypatch):
    middle = (SHARED_PORTS[0] + SHARED_PORTS[1]) // 2
    first = [p for _ in range(20) for p in ports_of(monkeypatch, "gw0")]
    second = [p for _ in range(20) for p in ports_of(monkeypatch, "gw1")]
    assert all(SHARED_PORTS[0] <= p < middle for p in first) and all(middle <= p < SHARED_PORTS[1] for p in second)
    assert len(set(ports_of(monkeypatch, "gw0", n=5))) == 5


def test_the_ports_are_free_to_listen_on(monkeypatch):
    for worker in ("gw0", "gw1", ""):  # "": outside pytest-xdist, the OS picks
        for port in ports_of(monkeypatch, worker):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
                s.listen()
