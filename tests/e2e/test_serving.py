"""End to end: real HTTP to a real TorchServe running the real archive."""
from __future__ import annotations

import base64
import re
import threading
import time

import pytest
import requests

from tests.conftest import SHIPPED_VERSION, data_url, fixture_bytes

FORMS = {
    "raw PNG": lambda png: ({"data": png, "headers": {"Content-Type": "image/png"}}),
    "octet-stream": lambda png: ({"data": png, "headers": {"Content-Type": "application/octet-stream"}}),
    "JSON base64": lambda png: ({"json": {"data": base64.b64encode(png).decode()}}),
    "JSON data URL": lambda png: ({"json": {"data": data_url(png)}}),
    "text data URL": lambda png: ({"data": data_url(png), "headers": {"Content-Type": "text/plain"}}),
    "multipart file": lambda png: ({"files": {"file": ("digit.png", png, "image/png")}}),
    "multipart data": lambda png: ({"files": {"data": ("digit.png", png, "image/png")}}),
}


def post(client, form: dict, path: str = "digits", extra_headers: dict | None = None) -> requests.Response:
    headers = {**client.server.headers("inference"), "X-Activations": "off", **form.get("headers", {}),
               **(extra_headers or {})}
    kwargs = {k: v for k, v in form.items() if k != "headers"}
    return requests.post(f"{client.server.inference_url}/predictions/{path}", headers=headers, timeout=60, **kwargs)


@pytest.mark.parametrize("form", FORMS)
def test_fixtures_are_read_in_every_input_form(client, digit_fixtures, form):
    wrong = []
    for name, digit in digit_fixtures:
        r = post(client, FORMS[form](fixture_bytes(name)))
        assert r.status_code == 200, (name, r.text)
        body = r.json()
        if body["digit"] != digit:
            wrong.append((name, body["digit"]))
        assert body["model"] == "digits" and body["version"] == SHIPPED_VERSION
    assert not wrong


def test_answer_carries_probabilities_maps_and_the_models_eye(client):
    r = client.predict(fixture_bytes("drawn_8.png"), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["digit"] == 8 and len(body["probabilities"]) == 10
    assert abs(sum(body["probabilities"]) - 1) < 1e-4
    assert [a["layer"] for a in body["activations"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert base64.b64decode(body["input"]).startswith(b"\x89PNG")
    assert "\n" not in r.text  # compact JSON


def test_concurrent_requests_are_batched_and_a_corrupt_one_fails_alone(client):
    n = 24
    bodies = [fixture_bytes(f"drawn_{i % 10}.png") for i in range(n)]
    bodies[5] = bodies[5][:150]  # truncated PNG
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def send(i):
        barrier.wait()
        results[i] = client.predict(bodies[i], headers={"Content-Type": "image/png", "X-Activations": "off"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[5].status_code == 400 and results[5].json()["error"] == "corrupt_image"
    for i, r in enumerate(results):
        if i != 5:
            assert r.status_code == 200 and r.json()["digit"] == i % 10, (i, r.text)
    assert max(int(r.headers["X-Batch-Size"]) for r in results) > 1, "no request shared a forward pass"


# Bad inputs (about forty kinds, alone and in batches), keys, expiry and loopback are tested
# in tests/reliability (test_bad_inputs.py, test_security.py).


def test_the_frontend_logs_each_request_once_and_keeps_stdout_for_warnings(client):
    """serving/log4j2.xml: requests reach the access log, the frontend's log has no DEBUG lines
    and no line twice (TorchServe's own configuration writes each twice, and copies every line
    and metric to stdout, a file nothing rolls), and stdout gets no per-request lines."""
    run_dir = client.server.run_dir
    stdout_before = (run_dir / "torchserve.out").stat().st_size
    access = run_dir / "logs" / "access_log.log"
    seen = access.read_text().count("/predictions/digits")
    for d in range(10):
        assert post(client, FORMS["raw PNG"](fixture_bytes(f"drawn_{d}.png"))).status_code == 200
    assert access.read_text().count("/predictions/digits") >= seen + 10
    lines = (run_dir / "logs" / "ts_log.log").read_text().splitlines()
    assert lines and not [ln for ln in lines if "[DEBUG]" in ln]
    assert not [a for a, b in zip(lines, lines[1:]) if a == b], "a line written twice"
    with open(run_dir / "torchserve.out") as out:
        out.seek(stdout_before)
        assert "/predictions/" not in out.read()


def answers_counted(server) -> dict[tuple[str, str, str], float]:
    """The ``Answers`` counter on TorchServe's metrics port: {(model, version, outcome): count}."""
    text = requests.get(f"{server.metrics_url}/metrics", timeout=30).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("Answers{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[(labels["ModelName"], labels["ModelVersion"], labels["Outcome"])] = float(line.rsplit(" ", 1)[1])
    return counts


def test_metrics_count_each_model_versions_answers_by_outcome(client):
    """GET /metrics (Prometheus text): TorchServe's request counters, and serving/metrics.yaml's
    Answers by model, version and outcome (read, unsure, or the refusal's error code)."""
    before = answers_counted(client.server)
    read = [post(client, FORMS["raw PNG"](fixture_bytes(f"drawn_{d}.png"))) for d in (1, 2)]
    corrupt = post(client, FORMS["raw PNG"](fixture_bytes("drawn_1.png")[:150]))
    number = post(client, FORMS["raw PNG"](fixture_bytes("number_2931.png")), path="numbers")
    assert [r.status_code for r in (*read, corrupt, number)] == [200, 200, 400, 200]
    version, numbers_version = read[0].json()["version"], number.json()["version"]
    wanted = {("digits", version, "read"): 2, ("digits", version, "corrupt_image"): 1,
              ("numbers", numbers_version, "read" if number.json()["text"] else "unsure"): 1}
    deadline = time.monotonic() + 60  # the workers' metric lines reach the frontend after the answers
    while True:
        after = answers_counted(client.server)
        added = {key: after.get(key, 0) - before.get(key, 0) for key in wanted}
        if added == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert added == wanted
    text = requests.get(f"{client.server.metrics_url}/metrics", timeout=30).text
    assert re.search(r'^ts_inference_requests_total\{model_name="digits".*\} [1-9]', text, re.M), text[:500]
