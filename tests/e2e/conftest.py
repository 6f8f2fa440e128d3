"""A real TorchServe on free loopback ports, started from a temporary directory."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest
import requests

from serving.archive import build_archive
from serving.server import TorchServe


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """Archives of the shipped model as versions 1.0 and 2.0, built the way `make archive` does."""
    store = tmp_path_factory.mktemp("model_store")
    for version in ("1.0", "2.0"):
        build_archive(version, store)
    return store


def start_server(run_dir: Path, store: Path) -> TorchServe:
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    server = TorchServe(run_dir, store, overrides={
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
    })
    server.start(timeout=240)
    return server


def stop_server(server: TorchServe) -> None:
    """Stop it and check that the frontend and every worker are gone."""
    pid = server.pid()
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)] if pid else []
    server.stop()
    _, alive = psutil.wait_procs(tree, timeout=20)
    for p in alive:
        p.kill()
    assert not alive, f"TorchServe left processes running: {alive}"


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_store):
    srv = start_server(tmp_path_factory.mktemp("run"), model_store)
    yield srv
    stop_server(srv)


class Client:
    """HTTP calls to one server with its current keys."""

    def __init__(self, server: TorchServe):
        self.server = server

    def predict(self, body, path: str = "digits", headers: dict | None = None, **kw) -> requests.Response:
        h = {**self.server.headers("inference"), **(headers or {})}
        return requests.post(f"{self.server.inference_url}/predictions/{path}", data=body, headers=h, timeout=60, **kw)

    def manage(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.server.management_url}/{path}",
                                headers=self.server.headers("management"), timeout=120, **kw)

    def workers(self, version: str) -> list[dict]:
        r = self.manage("GET", f"models/digits/{version}")
        r.raise_for_status()
        return r.json()[0]["workers"]

    def wait_workers(self, version: str, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers(version)
            if len(workers) == count and all(w["status"] == "READY" for w in workers):
                return workers
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} READY workers, got {workers}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def client(server) -> Client:
    return Client(server)
