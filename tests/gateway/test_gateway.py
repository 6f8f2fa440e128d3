"""The page's gateway (gateway/), run as `make serve` runs it, in front of a real TorchServe:
what it forwards, what it refuses, how it renews an expired key, and what the page gets
when TorchServe is down or failing."""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from model.preprocess import MAX_BYTES
from serving.server import Gateway
from tests.conftest import FIXTURES, encode, fixture_bytes, free_ports, gateway_for, stop_gateway

UI = Path(__file__).resolve().parents[2] / "ui"
PNG = {"Content-Type": "image/png"}


def predict(gateway: Gateway, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(f"{gateway.url}/api/predict", data=body, headers={**PNG, **(headers or {})}, timeout=60)


def raw_request(url: str, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One request with the path sent exactly as written (requests would tidy /api/../models)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_json_error(r: requests.Response, status: int, error: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "detail"} and body["detail"], body
    if error:
        assert body["error"] == error, body
    return body


# ---------------------------------------------------------------- forwarding

def test_forwards_a_prediction_and_keeps_the_key(stack):
    server, gateway = stack
    r = predict(gateway, fixture_bytes("drawn_7.png"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["digit"] == 7 and body["model"] == "digits"
    assert len(body["probabilities"]) == 10
    assert base64.b64decode(body["input"]).startswith(b"\x89PNG")
    assert [a["layer"] for a in body["activations"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert r.headers["cache-control"] == "no-store"
    for key in server.keys().values():
        assert key not in r.text and key not in str(r.headers)


def test_numbers_are_forwarded_under_the_same_rules(stack):
    _, gateway = stack
    r = requests.post(f"{gateway.url}/api/numbers", data=fixture_bytes("number_2931.png"), headers=PNG, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "2931" and r.json()["model"] == "numbers"
    r = requests.post(f"{gateway.url}/api/numbers", data=b"%PDF-1.4", headers={"Content-Type": "application/pdf"},
                      timeout=60)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_type"
    r = requests.post(f"{gateway.url}/api/numbers", data=b"\x00\x00\x00\x18ftypheic", timeout=60,
                      headers={"Content-Type": "image/heic"})  # an iPhone photo, from the page's batch table
    assert r.status_code == 415 and "as JPEG" in r.json()["detail"], r.text


@pytest.mark.parametrize("name, ctype", [("drawn_3.png", "image/png"), ("jpeg", "image/jpeg"),
                                         ("gif", "image/gif"), ("bmp", "image/bmp"), ("webp", "image/webp")])
def test_every_accepted_image_type_is_forwarded(stack, name, ctype):
    _, gateway = stack
    img = Image.open(FIXTURES / "drawn_3.png").convert("RGBA")
    white = Image.new("RGBA", img.size, "white")
    flat = Image.alpha_composite(white, img).convert("RGB")
    body = fixture_bytes(name) if name.endswith(".png") else encode(flat, name.upper())
    r = predict(gateway, body, {"Content-Type": ctype, "X-Activations": "off"})
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == 3


def test_activations_header_is_passed_on(stack):
    _, gateway = stack
    r = predict(gateway, fixture_bytes("drawn_4.png"), {"X-Activations": "off"})
    assert r.status_code == 200 and "activations" not in r.json()


def test_blank_image_gets_the_models_own_422(stack):
    _, gateway = stack
    blank = encode(Image.new("RGB", (280, 280), "white"), "PNG")
    assert_json_error(predict(gateway, blank), 422, "no_digit")


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("body, ctype", [
    (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "application/pdf"),
    (b"seven", "text/plain"),
    (b'{"data": "xyz"}', "application/json"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    (b"\x89PNG", None),
], ids=["pdf", "text", "json", "svg", "no-type"])
def test_other_content_types_are_refused_with_415(stack, body, ctype):
    _, gateway = stack
    headers = {"Content-Type": ctype} if ctype else {}
    status, h, data = raw_request(gateway.url, "POST", "/api/predict", body, headers)
    assert status == 415 and h["content-type"].startswith("application/json")
    assert json.loads(data)["error"] == "unsupported_type"


def test_a_pdf_posing_as_a_png_is_refused_by_the_model_server(stack):
    _, gateway = stack
    body = assert_json_error(predict(gateway, b"%PDF-1.4\n%%EOF\n"), 415, "unsupported_format")
    assert "PDF" in body["detail"]


def test_oversize_bodies_are_refused_with_413(stack):
    server, gateway = stack
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES)
    assert_json_error(predict(gateway, too_big), 413, "too_large")

    def chunks():  # no Content-Length: the gateway must count as it reads
        for _ in range(6):
            yield bytes(1024 * 1024)
    r = requests.post(f"{gateway.url}/api/predict", data=chunks(), headers=PNG, timeout=60)
    assert_json_error(r, 413, "too_large")


def test_empty_body_is_refused(stack):
    _, gateway = stack
    assert_json_error(predict(gateway, b""), 400, "empty_body")


FORBIDDEN = [
    ("GET", "/models"), ("GET", "/models/digits"), ("POST", "/models?url=digits_2.0.mar"),
    ("PUT", "/models/digits/2.0/set-default"), ("DELETE", "/models/digits/1.0"),
    ("GET", "/api/../models"), ("GET", "/api/models"), ("POST", "/api/models?url=x.mar"),
    ("GET", "/token?type=inference"), ("GET", "/api/token?type=inference"),
    ("POST", "/predictions/digits"), ("POST", "/api/predictions/digits"), ("POST", "/api/predict/../../models"),
    ("POST", "/api/predict/2.0"), ("GET", "/api/predict"), ("PUT", "/api/predict"), ("DELETE", "/api/predict"),
    ("OPTIONS", "/api/predict"), ("GET", "/ping"), ("GET", "/metrics"),
    ("GET", "/../config.properties"), ("GET", "/%2e%2e/config.properties"), ("GET", "/..%2fkey_file.json"),
    ("GET", "/key_file.json"), ("GET", "/config.properties"),
]


@pytest.mark.parametrize("method, path", FORBIDDEN, ids=[f"{m} {p}" for m, p in FORBIDDEN])
def test_nothing_else_is_forwarded_or_served(stack, method, path):
    server, gateway = stack
    status, headers, data = raw_request(gateway.url, method, path, b"\x89PNG" if method != "GET" else None, PNG)
    assert status in (404, 405), (status, data[:200])
    body = json.loads(data)
    assert set(body) == {"error", "detail"}  # the gateway's refusal, not TorchServe's {"code", "type", ...}
    for key in server.keys().values():
        assert key.encode() not in data


def test_other_hosts_are_refused(stack):
    """A page on another site that rebinds its DNS name to 127.0.0.1 still cannot use the gateway."""
    _, gateway = stack
    status, _, _ = raw_request(gateway.url, "POST", "/api/predict", fixture_bytes("drawn_1.png"),
                               {**PNG, "Host": "evil.example:8000"})
    assert status == 400


# ---------------------------------------------------------------- keys

def renewals(gateway: Gateway) -> int:
    return gateway.log.read_text().count("inference key renewed")


def new_inference_key(server) -> str:
    """Have TorchServe issue a new inference key, as it does on request; the old one stops working."""
    r = requests.get(f"{server.management_url}/token", params={"type": "inference"},
                     headers=server.headers("API"), timeout=30)
    assert r.status_code == 200, r.text
    return server.keys()["inference"]


def test_survives_key_expiry(stack):
    server, gateway = stack
    assert predict(gateway, fixture_bytes("drawn_2.png")).status_code == 200  # the gateway holds the key now
    key_file = server.run_dir / "key_file.json"
    expired = server.keys()["inference"]
    as_it_was = key_file.read_text()
    other = new_inference_key(server)
    refused = requests.post(f"{server.inference_url}/predictions/digits", data=fixture_bytes("drawn_2.png"),
                            headers={**PNG, "Authorization": f"Bearer {expired}"}, timeout=30)
    assert refused.status_code == 400 and "InvalidKeyException" in refused.text
    # After a real expiry the file still holds the expired key: put it back, so only the token API helps.
    key_file.write_text(as_it_was)
    before = renewals(gateway)

    with ThreadPoolExecutor(6) as pool:  # several requests meet the expired key at once
        answers = list(pool.map(lambda d: predict(gateway, fixture_bytes(f"drawn_{d}.png")), [2, 5, 6, 0, 8, 9]))
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert [r.json()["digit"] for r in answers] == [2, 5, 6, 0, 8, 9]
    fresh = server.keys()["inference"]
    assert fresh not in (expired, other)  # the gateway asked TorchServe for a new one ...
    assert renewals(gateway) == before + 1  # ... once, not once per request


def test_picks_up_a_key_renewed_elsewhere(stack):
    server, gateway = stack
    assert predict(gateway, fixture_bytes("drawn_1.png")).status_code == 200
    renewed = new_inference_key(server)
    before = renewals(gateway)
    r = predict(gateway, fixture_bytes("drawn_1.png"))
    assert r.status_code == 200 and r.json()["digit"] == 1
    assert server.keys()["inference"] == renewed and renewals(gateway) == before  # read from the file


def access_log_paths(server) -> list[str]:
    """The path of every request in TorchServe's access log, in order."""
    log = (server.run_dir / "logs" / "access_log.log").read_text().splitlines()
    return [line.split('"')[1].split()[1] for line in log if line.count('"') >= 2]


@pytest.fixture(scope="module", autouse=True)
def traffic_start(stack) -> int:
    """Where this module's requests start in TorchServe's access log. The tests of other modules
    call the same TorchServe directly (the session's ``server`` is the stack's), the management
    API too; this module's requests go through the gateway. A ping sent straight to TorchServe
    with a mark of its own, once it shows in the log, marks the start: every earlier request
    was logged before it."""
    server, _ = stack
    mark = f"/ping?from=test_gateway-{uuid.uuid4().hex}"
    assert requests.get(server.inference_url + mark, headers=server.headers("inference"), timeout=60).status_code == 200
    deadline = time.monotonic() + 60  # only catches a log that never shows it
    while mark not in access_log_paths(server):
        assert time.monotonic() < deadline, f"{mark} never showed in TorchServe's access log"
        time.sleep(0.1)
    return access_log_paths(server).index(mark) + 1


def test_torchserve_saw_only_predictions_pings_and_key_requests(stack, traffic_start):
    server, _ = stack
    paths = access_log_paths(server)[traffic_start:]
    assert paths, "TorchServe's access log shows none of this module's requests"
    stray = [p for p in paths if not (p in ("/predictions/digits", "/predictions/numbers", "/ping")
                                      or p == "/token?type=inference")]
    assert not stray, f"requests other than predictions reached TorchServe: {stray}"


# ---------------------------------------------------------------- TorchServe down or failing

@pytest.fixture
def lone_gateway(tmp_path):
    started = []

    def start(inference: int, management: int) -> Gateway:
        gateway = gateway_for(tmp_path, inference, management)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        stop_gateway(gateway)


def test_json_errors_when_torchserve_is_down(lone_gateway):
    inference, management = free_ports(2)  # nothing listens there
    gateway = lone_gateway(inference, management)
    body = assert_json_error(predict(gateway, fixture_bytes("drawn_7.png")), 503, "model_server_down")
    assert "make serve" in body["detail"]
    health = requests.get(f"{gateway.url}/api/health", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert health.json()["max_bytes"] == MAX_BYTES
    page = requests.get(gateway.url + "/", timeout=30)
    assert page.status_code == 200 and "<canvas" in page.text  # the page itself still loads, and can say so
    (gateway.run_dir / "key_file.json").unlink()  # stopped, not just unreachable
    assert_json_error(predict(gateway, fixture_bytes("drawn_7.png")), 503, "model_server_down")


class FakeTorchServe(http.server.ThreadingHTTPServer):
    """Answers every request with one canned TorchServe answer, and records what it was sent."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json"):
        self.answer = (status, body, content_type)
        self.seen: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_any(self):
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, self.path, dict(self.headers)))
                status, body, ctype = outer.answer
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_any

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def torchserve_error(code: int, kind: str, message: str) -> bytes:
    return json.dumps({"code": code, "type": kind, "message": message}, indent=2).encode()


@pytest.mark.parametrize("status, body, ctype, expected, error", [
    (503, torchserve_error(503, "ServiceUnavailableException", "Model \"digits\" has no worker to serve inference request."),
     "application/json", 503, "model_busy"),
    (500, torchserve_error(500, "InternalServerException", "Worker died."), "application/json", 502, "model_server_error"),
    (404, torchserve_error(404, "ModelNotFoundException", "Model not found: digits"), "application/json", 503,
     "model_unavailable"),
    (502, b"<html>Bad Gateway</html>", "text/html", 502, "model_server_error"),
    (400, torchserve_error(400, "InvalidKeyException", "Token Authorization failed."), "application/json", 502,
     "key_refresh_failed"),  # the token API refuses the API key too
], ids=["no-worker", "500", "no-model", "not-json", "key-refused"])
def test_torchserve_failures_become_json_messages(lone_gateway, status, body, ctype, expected, error):
    fake = FakeTorchServe(status, body, ctype)
    try:
        port = fake.server_address[1]
        gateway = lone_gateway(port, port)
        answer = assert_json_error(predict(gateway, fixture_bytes("drawn_7.png")), expected, error)
        assert "<html>" not in answer["detail"]
        method, path, headers = next(s for s in fake.seen if s[1].startswith("/predictions"))
        assert (method, path) == ("POST", "/predictions/digits")
        assert headers["Authorization"] == "Bearer i-key" and headers["Content-Type"] == "image/png"
    finally:
        fake.shutdown()
        fake.server_close()


# ---------------------------------------------------------------- the page itself

def test_page_and_its_assets_are_served_with_a_strict_policy(stack):
    _, gateway = stack
    for name, kind in [("", "text/html"), ("index.html", "text/html"), ("app.js", "javascript"), ("style.css", "text/css")]:
        r = requests.get(f"{gateway.url}/{name}", timeout=30)
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_page_loads_nothing_from_elsewhere():
    names = sorted(p.name for p in UI.iterdir())
    assert {"app.js", "index.html", "style.css"} <= set(names)
    assert all(name.endswith((".html", ".js", ".css")) for name in names), names  # no vendored bundles or fonts
    for name in names:
        text = (UI / name).read_text()
        for needle in ("http://", "https://", "//cdn", "@import", "url("):
            assert needle not in text, (name, needle)
