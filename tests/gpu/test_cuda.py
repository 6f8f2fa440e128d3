"""The handlers' CUDA path: a TorchServe worker given a ``gpu_id`` reads on that GPU, and its
answers are the CPU's answers.

These run only where torch sees a CUDA GPU (CI's machines have none, so they are skipped
there, saying so); ``make gpu-check`` runs them with the GPU benchmark on a GPU machine, and
docs/benchmarks.md quotes that run.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from handler.numbers_handler import NumbersHandler
from serving import local
from serving.archive import NUMBERS_FILE
from tests.conftest import SHIPPED_MODEL, fixture_bytes, number_png

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: torch.cuda.is_available() is false")


@pytest.fixture(scope="module")
def digits():
    return {"gpu": local.load_handler(SHIPPED_MODEL, version="gpu", gpu_id=0),
            "cpu": local.load_handler(SHIPPED_MODEL, version="cpu")}


@pytest.fixture(scope="module")
def numbers():
    load = lambda gpu_id: local.load_handler(NUMBERS_FILE, version="n", gpu_id=gpu_id,
                                             handler_class=NumbersHandler, model_name="numbers")
    return {"gpu": load(0), "cpu": load(None)}


def test_a_worker_given_a_gpu_reads_on_it(digits, numbers):
    for handlers in (digits, numbers):
        gpu = handlers["gpu"]
        assert gpu.device == torch.device("cuda:0") and handlers["cpu"].device == torch.device("cpu")
        with torch.inference_mode():
            scores, maps = gpu.model(torch.zeros(*gpu.WARM_UP, device=gpu.device))
        assert scores.is_cuda and all(m.is_cuda for m in maps)


def test_digits_on_the_gpu_answer_as_on_the_cpu(digits, digit_fixtures):
    fixtures = digit_fixtures
    requests = [{"body": fixture_bytes(name)} for name, _ in fixtures]
    requests.insert(5, {"body": fixture_bytes(fixtures[0][0])[:200]})  # a truncated PNG fails alone
    answers = {where: local.handle(h, requests)[0] for where, h in digits.items()}
    assert answers["gpu"][5][0] == 400 and answers["gpu"][5][1]["error"] == "corrupt_image"
    del answers["gpu"][5], answers["cpu"][5]
    for (name, truth), (status, gpu), (_, cpu) in zip(fixtures, answers["gpu"], answers["cpu"]):
        assert status == 200 and gpu["digit"] == cpu["digit"] and gpu.get("guess") == cpu.get("guess"), name
        assert truth in (gpu["digit"], gpu.get("guess")), name
        np.testing.assert_allclose(gpu["probabilities"], cpu["probabilities"], atol=2e-3)
        assert [m["layer"] for m in gpu["activations"]] == [m["layer"] for m in cpu["activations"]]
        for g, c in zip(gpu["activations"], cpu["activations"]):  # the maps the page draws: the same picture
            g, c = (np.asarray(Image.open(io.BytesIO(base64.b64decode(m["png"]))), dtype=float) for m in (g, c))
            assert g.shape == c.shape and np.abs(g - c).mean() < 1.0, name


def test_numbers_on_the_gpu_answer_as_on_the_cpu(numbers):
    """Both passes of the cascade on the GPU: the touching string goes on to every network, the
    others are answered by the first; a corrupt picture in the batch is refused alone."""
    pngs = [number_png("2931", [30, -6, 30])[0], number_png("40517")[0], fixture_bytes("number_2931.png"),
            fixture_bytes("number_13579.png")]
    gpu = numbers["gpu"]
    went_on = gpu.infer([gpu.prepare(p) for p in pngs], [False] * len(pngs))["platt"]
    assert went_on == [gpu.cascade[1]] * 3 + [gpu.platt]  # only the touching string went on
    requests = [{"body": p} for p in pngs]
    requests.insert(1, {"body": pngs[1][:100]})  # a truncated PNG fails alone
    answers = {where: local.handle(h, requests)[0] for where, h in numbers.items()}
    assert answers["gpu"][1][0] == 400 and answers["gpu"][1][1]["error"] == "corrupt_image"
    del answers["gpu"][1], answers["cpu"][1]
    for (status, gpu), (_, cpu) in zip(answers["gpu"], answers["cpu"]):
        assert status == 200 and gpu["text"] == cpu["text"] and gpu.get("guess") == cpu.get("guess")
        assert abs(gpu["confidence"] - cpu["confidence"]) < 5e-3
        assert [d["box"] for d in gpu["digits"]] == [d["box"] for d in cpu["digits"]]
    assert [a[1]["text"] or a[1]["guess"] for a in answers["gpu"]] == ["2931", "40517", "2931", "13579"]
