"""Model versions and workers through the management API (README, "Versions and workers")."""
from __future__ import annotations

import pytest

from serving.server import model_settings
from tests.conftest import SHIPPED_VERSION as SHIPPED, Client, fixture_bytes, start_server, stop_server

PNG = {"Content-Type": "image/png", "X-Activations": "off"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, model_store):
    srv = start_server(tmp_path_factory.mktemp("versions"), model_store)
    yield Client(srv)
    stop_server(srv)


def test_register_predict_default_scale_unregister(fresh):
    c = fresh
    settings = model_settings(c.server.props)
    register = (f"models?url=digits_2.0.mar&model_name=digits&initial_workers=1&synchronous=true"
                f"&batch_size={settings['batchSize']}&max_batch_delay={settings['maxBatchDelay']}")
    r = c.manage("POST", register)
    assert r.status_code == 200, r.text
    assert c.manage("POST", register).status_code == 409  # the same version twice

    seven = fixture_bytes("drawn_7.png")
    r = c.predict(seven, "digits/2.0", headers=PNG)
    assert r.status_code == 200 and r.json()["version"] == "2.0" and r.json()["digit"] == 7
    assert c.predict(seven, headers=PNG).json()["version"] == SHIPPED  # still the default

    assert c.manage("PUT", "models/digits/2.0/set-default").status_code == 200
    assert c.predict(seven, headers=PNG).json()["version"] == "2.0"
    described = c.manage("GET", "models/digits/all").json()
    assert {m["modelVersion"]: m["batchSize"] for m in described} == {SHIPPED: settings["batchSize"],
                                                                      "2.0": settings["batchSize"]}

    assert c.manage("PUT", "models/digits/2.0?min_worker=3&max_worker=3&synchronous=true").status_code == 200
    assert len(c.wait_workers("2.0", 3)) == 3
    assert c.manage("PUT", "models/digits/2.0?min_worker=1&max_worker=1&synchronous=true").status_code == 200
    assert len(c.wait_workers("2.0", 1)) == 1
    assert c.predict(seven, headers=PNG).json()["digit"] == 7

    assert c.manage("DELETE", f"models/digits/{SHIPPED}").status_code == 200
    assert c.predict(seven, f"digits/{SHIPPED}", headers=PNG).status_code == 404
    assert [m["modelVersion"] for m in c.manage("GET", "models/digits/all").json()] == ["2.0"]


# Registration from outside the model store is refused: tests/reliability/test_security.py.
