"""The pod's readiness probe (deploy/pod.py) against a real TorchServe: the session's server,
with its own key file, exactly as the kubelet runs it from the Deployment."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import requests

from deploy.pod import container_settings, ready
from serving.server import free_port_overrides, free_ports, model_settings, read_properties, served_archives
from tests.conftest import gateway_for, stop_gateway
from tests.deploy.test_manifests import container, render

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_deployments_readiness_command_passes_on_a_server_with_ready_workers(server):
    command = container({d["kind"]: d for d in render("base")})["readinessProbe"]["exec"]["command"]
    assert command[0] == "python"
    env = {**os.environ, "DIGITS_RUN_DIR": str(server.run_dir)}
    # The image's python is its venv's (first on PATH); here it is this interpreter.
    probe = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    # Every model loaded at start is asked about, with its configured workers; all of them need
    # not be READY yet (the server's start waits for one answer per model), one per model must.
    props = read_properties(server.run_dir / "config.properties")
    models = json.loads(props["models"])
    expected = "; ".join(rf"{name}: (\d+) of {models[name][version]['minWorkers']} workers READY"
                         for name, version, _ in served_archives(props))
    found = re.fullmatch(f"ok: {expected}", probe.stdout.strip())
    assert found and all(int(n) >= 1 for n in found.groups()), probe.stdout


def test_not_ready_with_a_wrong_key(server, tmp_path):
    shutil.copy(server.run_dir / "config.properties", tmp_path / "config.properties")
    keys = json.loads((server.run_dir / "key_file.json").read_text())
    for entry in keys.values():
        entry["key"] = "not-the-key"
    (tmp_path / "key_file.json").write_text(json.dumps(keys))
    ok, why = ready(tmp_path)
    assert not ok and "HTTP 400" in why and "InvalidKeyException" in why, why


def test_ready_renews_a_refused_management_key(server):
    """Management keys expire (token_expiration_min); the probe gets a new one with the API key.
    Expiry is simulated by a key TorchServe never issued, in the server's own key file."""
    key_file = server.run_dir / "key_file.json"
    original = key_file.read_text()
    keys = json.loads(original)
    keys["management"]["key"] = "expired-key"
    key_file.write_text(json.dumps(keys))
    try:
        ok, why = ready(server.run_dir)
        assert ok, why
        assert server.keys()["management"] not in ("expired-key", json.loads(original)["management"]["key"])
    finally:
        if server.keys()["management"] == "expired-key":  # not renewed: the original key still holds
            key_file.write_text(original)


def test_not_ready_without_a_server(tmp_path):
    props = {**read_properties(), **free_port_overrides()}  # nothing listens on these ports
    (tmp_path / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (tmp_path / "key_file.json").write_text(json.dumps({k: {"key": "k"} for k in ("management", "inference", "API")}))
    ok, why = ready(tmp_path)
    assert not ok and "unreachable" in why, why


def test_not_ready_while_a_model_has_no_workers(server, client):
    settings = model_settings(read_properties(server.run_dir / "config.properties"))
    r = client.manage("POST", "models", params={
        "url": "digits_2.0.mar", "model_name": "digits_idle", "initial_workers": 0, "synchronous": "true",
        "batch_size": settings["batchSize"], "max_batch_delay": settings["maxBatchDelay"]})
    assert r.status_code == 200, r.text
    try:
        ok, why = ready(server.run_dir, models=["digits_idle"])
        assert not ok and why == "digits_idle: 0 of 0 workers READY", why
        ok, why = ready(server.run_dir, models=["no_such_model"])
        assert not ok and "HTTP 404" in why, why
    finally:
        assert client.manage("DELETE", "models/digits_idle/2.0").status_code == 200


def test_the_container_moves_only_the_gateways_bind_host_and_its_writable_files():
    props = read_properties()
    out = container_settings(props, {"DIGITS_GATEWAY_HOST": "0.0.0.0", "DIGITS_ALLOWED_HOSTS": "digits,digits.ns.svc",
                                     "DIGITS_FEEDBACK_DB": "/var/lib/digits/feedback.sqlite3"})
    port = props["gateway_address"].rsplit(":", 1)[1]
    expected = {"gateway_address": f"http://0.0.0.0:{port}", "gateway_allowed_hosts": "digits,digits.ns.svc"}
    if "feedback_db" in props:
        expected["feedback_db"] = "/var/lib/digits/feedback.sqlite3"
    assert out == expected
    assert container_settings(props, {}) == {"gateway_address": props["gateway_address"]}


def test_the_gateway_answers_the_allowed_host_names_only(tmp_path):
    (inference, management) = free_ports(2)  # no TorchServe: health then says so, with a 503
    gateway = gateway_for(tmp_path, inference, management)
    with open(tmp_path / "config.properties", "a") as f:
        f.write("gateway_allowed_hosts=digits,digits.ns.svc\n")
    gateway.start()
    try:
        for host in ("digits", "digits.ns.svc", "localhost"):
            r = requests.get(f"{gateway.url}/api/health", headers={"Host": host}, timeout=30)
            assert r.status_code == 503 and r.json()["error"] == "model_server_down", (host, r.text)
        r = requests.get(f"{gateway.url}/api/health", headers={"Host": "evil.example"}, timeout=30)
        assert r.status_code == 400, r.text
    finally:
        stop_gateway(gateway)


def test_the_liveness_request_is_answered_by_the_gateway(stack):
    server, gateway = stack
    probe = container({d["kind"]: d for d in render("base")})["livenessProbe"]["httpGet"]
    headers = {h["name"]: h["value"] for h in probe["httpHeaders"]}
    r = requests.get(f"{gateway.url}{probe['path']}", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
