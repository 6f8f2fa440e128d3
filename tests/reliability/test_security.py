"""Security of the serving side: keys, loopback, registration sources, request size.

See docs/security.md for the threat model these tests hold up, and for what a production
deployment adds in front of TorchServe.
"""
from __future__ import annotations

import ipaddress
import json
import stat
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import requests

from model.preprocess import MAX_BYTES
from serving.server import CONFIG, TorchServe, read_properties
from tests.conftest import fixture_bytes, start_server, stop_server

PNG = {"Content-Type": "image/png", "X-Activations": "off"}
# TorchServe reads token_expiration_min as a double: 0.2 is 12 seconds, long enough for a key
# to be used at once on a busy machine, short enough to wait out.
EXPIRY_MIN = 0.2


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def refused(r: requests.Response) -> bool:
    """TorchServe 0.12 refuses a bad key with 400 InvalidKeyException (not 401)."""
    return r.status_code == 400 and r.json().get("type") == "InvalidKeyException"


# ---------------------------------------------------------------- keys

def test_inference_and_management_take_only_their_own_key(server):
    keys = server.keys()
    inference, management = server.inference_url, server.management_url
    png = fixture_bytes("mnist_4.png")

    def predict(headers):
        return requests.post(f"{inference}/predictions/digits", data=png, headers={**PNG, **headers}, timeout=30)

    def models(headers):
        return requests.get(f"{management}/models", headers=headers, timeout=30)

    wrong = {
        "no header": {},
        "a wrong key": bearer("not-the-key"),
        "an empty key": bearer(""),
        "the key without Bearer": {"Authorization": keys["inference"]},
        "the key as Basic auth": {"Authorization": f"Basic {keys['inference']}"},
    }
    for what, headers in wrong.items():
        assert refused(predict(headers)), f"inference took {what}"
        assert refused(models(headers)), f"management took {what}"
    for other in ("management", "API"):
        assert refused(predict(bearer(keys[other]))), f"inference took the {other} key"
    for other in ("inference", "API"):
        assert refused(models(bearer(keys[other]))), f"management took the {other} key"
    # the model API itself, and the health check, are behind the keys too
    assert refused(requests.post(f"{management}/models?url=digits_2.0.mar", timeout=30))
    assert refused(requests.delete(f"{management}/models/digits/1.0", timeout=30))
    assert refused(requests.get(f"{inference}/ping", timeout=30))
    # only the API key may mint keys
    for other in ("inference", "management"):
        r = requests.get(f"{management}/token?type=inference", headers=bearer(keys[other]), timeout=30)
        assert refused(r), f"the {other} key minted a key"
    assert predict(bearer(keys["inference"])).status_code == 200
    assert models(bearer(keys["management"])).status_code == 200


def test_the_key_file_is_private(server):
    key_file = server.run_dir / "key_file.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert set(json.loads(key_file.read_text())) == {"inference", "management", "API"}


class ShortLivedKeys(TorchServe):
    """A server whose keys outlive its start-up by seconds only: every key it hands out is
    minted fresh with the API key (which does not expire)."""

    def refresh(self, api: str) -> str:
        r = requests.get(f"{self.management_url}/token?type={api}", headers=bearer(self.keys()["API"]), timeout=10)
        r.raise_for_status()
        return self.keys()[api]

    def headers(self, api: str = "inference") -> dict[str, str]:
        return bearer(self.refresh(api) if api in ("inference", "management") else self.keys()[api])


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory, model_store):
    models = json.loads(read_properties(CONFIG)["models"])
    for settings in models["digits"].values():
        settings.update(minWorkers=1, maxWorkers=1)
    srv = start_server(tmp_path_factory.mktemp("expiry"), model_store, server_class=ShortLivedKeys,
                       overrides={"token_expiration_min": str(EXPIRY_MIN), "default_workers_per_model": "1",
                                  "models": json.dumps(models)})
    yield srv
    stop_server(srv)


def test_keys_expire_and_the_api_key_mints_new_ones(short_lived, figures):
    srv = short_lived
    png = fixture_bytes("mnist_6.png")

    def predict(key):
        return requests.post(f"{srv.inference_url}/predictions/digits", data=png, headers={**PNG, **bearer(key)},
                             timeout=30)

    def models(key):
        return requests.get(f"{srv.management_url}/models", headers=bearer(key), timeout=30)

    asked = time.time()
    inference, management = srv.refresh("inference"), srv.refresh("management")
    minted = time.time()
    raw = json.loads((srv.run_dir / "key_file.json").read_text())
    expires = datetime.fromisoformat(raw["inference"]["expiration time"].replace("Z", "+00:00")).timestamp()
    lifetime = EXPIRY_MIN * 60  # the file's times are whole seconds: a second either way
    assert asked + lifetime - 1 <= expires <= minted + lifetime + 1, "the key file states another lifetime"
    assert predict(inference).status_code == 200 and models(management).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    assert refused(predict(inference)), "an expired inference key was taken"
    assert refused(models(management)), "an expired management key was taken"
    fresh = srv.refresh("inference")
    assert fresh != inference and predict(fresh).status_code == 200
    assert refused(predict(inference)), "the old key came back to life"
    figures.setdefault("Security", {})["key expiry"] = (
        f"keys minted for {EXPIRY_MIN * 60:.0f} s were refused {time.time() - minted:.1f} s later; "
        "a key minted with the API key was taken")


# ---------------------------------------------------------------- addresses

def test_every_address_in_the_configuration_is_loopback():
    props = read_properties(CONFIG)
    for name in ("inference_address", "management_address", "metrics_address"):
        assert props[name].startswith(("http://127.0.0.1:", "https://127.0.0.1:")), (name, props[name])
    for name in ("grpc_inference_address", "grpc_management_address"):
        assert props.get(name) == "127.0.0.1", (name, props.get(name))


def loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 as Java's dual-stack sockets show it (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_every_port_is_on_loopback(server, figures):
    pids = {server.pid(), *(c.pid for c in psutil.Process(server.pid()).children(recursive=True))}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    ports = sorted(c.laddr.port for c in listening)
    assert len(ports) >= 3 and all(loopback(c.laddr.ip) for c in listening), listening
    figures.setdefault("Security", {})["listening sockets of a running server"] = (
        f"{len(ports)}, all on 127.0.0.1 (inference, management, metrics, gRPC)")


# ---------------------------------------------------------------- where models may come from

class Recorder(BaseHTTPRequestHandler):
    """A loopback HTTP server holding a real archive, which records whether anyone fetched it."""
    hits: list[str] = []
    archive = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.archive)))
        self.end_headers()
        self.wfile.write(self.archive)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_host(model_store):
    Recorder.hits, Recorder.archive = [], (model_store / "digits_2.0.mar").read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_registration_takes_archives_from_the_model_store_only(client, model_store, archive_host, tmp_path, figures):
    outside = tmp_path / "digits_9.0.mar"
    outside.write_bytes((model_store / "digits_2.0.mar").read_bytes())
    urls = {
        "http URL of a real archive": f"{archive_host}/digits_2.0.mar",
        "https URL": "https://example.com/digits.mar",
        "file URL outside the store": f"file://{outside}",
        "absolute path outside the store": str(outside),
        "file URL of a system file": "file:///etc/passwd",
        "path climbing out of the store": "../digits_1.0.mar",
        "store path then climbing out": f"file://{model_store}/../{outside.parent.name}/{outside.name}",
    }
    for what, url in urls.items():
        r = client.manage("POST", "models", params={"url": url, "model_name": "evil", "initial_workers": "0",
                                                    "synchronous": "true"})
        assert r.status_code in (400, 404), f"{what}: {r.status_code} {r.text[:200]}"
        assert "evil" not in client.manage("GET", "models").text, what
    assert Recorder.hits == [], f"TorchServe fetched {Recorder.hits}"
    # the control: an archive in the store, by its name, is taken
    r = client.manage("POST", "models", params={"url": "digits_2.0.mar", "model_name": "probe",
                                                "initial_workers": "0", "synchronous": "true"})
    assert r.status_code == 200, r.text
    assert client.manage("DELETE", "models/probe/2.0").status_code == 200
    figures.setdefault("Security", {})["registration sources refused (none fetched)"] = len(urls)


# ---------------------------------------------------------------- size

def test_a_request_size_limit_is_set_above_the_handlers_own(server):
    """The frontend refuses bodies over max_request_size (413, tests/reliability/test_bad_inputs.py);
    it sits just above the handler's image limit so that images up to that get a JSON reason."""
    limit = int(read_properties(Path(server.config_path))["max_request_size"])
    assert MAX_BYTES < limit <= 6_553_500, limit
    assert int(read_properties(CONFIG)["max_request_size"]) == limit
