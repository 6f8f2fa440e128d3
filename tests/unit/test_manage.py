"""serving.server.TorchServe.manage: TorchServe 0.12's transient management errors are retried,
real errors are not, and an error that persists reaches the caller.

A small HTTP server on a free loopback port plays the management API: it answers each call
with the next scripted reply and records what it was asked, so the tests see exactly how many
times the helper called and with which key.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving import server as serving_server
from serving.server import TorchServe, free_ports

RACE = (500, {"code": 500, "type": "ConcurrentModificationException", "message": None})
STARTING = (500, {"code": 500, "type": "InternalServerException", "message": "Failed to start workers"})
OK = (200, {"status": "Workers scaled to 1 for model: digits"})
CONFLICT = (409, {"code": 409, "type": "ConflictStatusException", "message": "Model version 2.0 is already registered"})


class ScriptedAPI:
    """A loopback HTTP server that answers calls with ``replies`` in order, then the last one."""

    def __init__(self, replies: list[tuple[int, dict]]):
        self.replies = list(replies)
        self.calls: list[tuple[str, str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                api.calls.append((self.command, self.path, self.headers.get("Authorization", "")))
                status, body = api.replies.pop(0) if len(api.replies) > 1 else api.replies[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        (self.port,) = free_ports(1)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(serving_server, "MANAGE_BACKOFF_S", 0.01)


def server_at(tmp_path, port: int) -> TorchServe:
    """A TorchServe object (not started) whose management API is the scripted server, with a key file."""
    srv = TorchServe(tmp_path, tmp_path, overrides={"management_address": f"http://127.0.0.1:{port}"})
    keys = {"management": {"key": "m-key"}, "inference": {"key": "i-key"}, "API": {"key": "a-key"}}
    (tmp_path / "key_file.json").write_text(json.dumps(keys))
    return srv


def test_a_scaling_race_is_retried_until_it_succeeds(tmp_path, fast_backoff):
    with ScriptedAPI([RACE, RACE, OK]) as api:
        r = server_at(tmp_path, api.port).manage("PUT", "models/digits/2.0?min_worker=1&max_worker=1&synchronous=true")
    assert r.status_code == 200 and "Workers scaled" in r.json()["status"]
    assert [c[:2] for c in api.calls] == [("PUT", "/models/digits/2.0?min_worker=1&max_worker=1&synchronous=true")] * 3
    assert {c[2] for c in api.calls} == {"Bearer m-key"}


def test_a_registration_is_retried_on_the_race_only(tmp_path, fast_backoff):
    """POST is not idempotent: a worker-start failure may have registered the model, so only the
    race (raised before anything changes) is retried; the other 500 comes straight back."""
    with ScriptedAPI([RACE, OK]) as api:
        assert server_at(tmp_path, api.port).manage("POST", "models?url=digits_2.0.mar").status_code == 200
    assert len(api.calls) == 2
    with ScriptedAPI([STARTING, OK]) as api:
        r = server_at(tmp_path, api.port).manage("POST", "models?url=digits_2.0.mar")
    assert r.status_code == 500 and "Failed to start workers" in r.text
    assert len(api.calls) == 1


def test_a_persistent_error_reaches_the_caller_after_the_last_attempt(tmp_path, fast_backoff):
    with ScriptedAPI([RACE]) as api:
        r = server_at(tmp_path, api.port).manage("PUT", "models/digits?min_worker=2", attempts=4)
    assert r.status_code == 500 and "ConcurrentModificationException" in r.text
    assert len(api.calls) == 4


def test_client_errors_are_not_retried(tmp_path, fast_backoff):
    with ScriptedAPI([CONFLICT, OK]) as api:
        r = server_at(tmp_path, api.port).manage("POST", "models?url=digits_2.0.mar")
    assert r.status_code == 409
    assert len(api.calls) == 1


def test_a_refused_connection_is_retried_for_reads_and_then_raised(tmp_path, fast_backoff, caplog):
    import requests

    (port,) = free_ports(1)  # nothing listens there
    with pytest.raises(requests.ConnectionError):
        server_at(tmp_path, port).manage("GET", "models", attempts=3)
    retries = [r.getMessage() for r in caplog.records if "transient" in r.getMessage()]
    assert len(retries) == 2 and all("ConnectionError" in m for m in retries), retries
