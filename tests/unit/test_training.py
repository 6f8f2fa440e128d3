"""Training in quick mode end to end, and the MNIST loader."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from model.preprocess import png_bytes, preprocess
from training.data import DATA_DIR, load_split, read_idx, served_form
from training.train import parse_args, train


def test_quick_training_writes_a_working_export(tmp_path):
    metrics = train(parse_args(["--quick", "--out", str(tmp_path), "--seed", "1"]))
    for name in ("checkpoint.pt", "digits.pt", "report.md", "confusion.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert metrics["count"] == 1000 and 0 <= metrics["accuracy"] <= 1
    cm = np.array(metrics["confusion"])
    assert cm.sum() == 1000 and cm.trace() == round(metrics["accuracy"] * 1000)
    report = (tmp_path / "report.md").read_text()
    assert "Test accuracy" in report and "| 9 |" in report
    assert json.loads((tmp_path / "metrics.json").read_text())["quick"] is True
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["config"]["channels"] and checkpoint["state_dict"]
    extra = {"meta.json": ""}
    scripted = torch.jit.load(str(tmp_path / "digits.pt"), _extra_files=extra)
    scores, maps = scripted(torch.zeros(2, 1, 28, 28))
    meta = json.loads(extra["meta.json"])
    assert scores.shape == (2, 10) and len(maps) == len(meta["layers"])
    assert 0 <= meta["metrics"]["served_accuracy"] <= 1 and meta["recipe"]["seed"] == 1
    assert "as the service sees them" in report


def test_idx_loader_reads_gzip_and_names_the_fetch_command(tmp_path):
    raw = DATA_DIR / "t10k-labels-idx1-ubyte"
    with open(raw, "rb") as f, gzip.open(tmp_path / "labels.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    labels = read_idx(tmp_path / "labels")
    assert labels.shape == (10_000,) and np.array_equal(labels, read_idx(raw))
    with pytest.raises(FileNotFoundError, match="make data"):
        read_idx(tmp_path / "missing-idx3-ubyte")


def test_images_as_served_are_what_the_handler_computes():
    """Training's second form of each image is the handler's preprocessing of that image sent as a PNG."""
    images, _ = load_split("test")
    served = served_form(images[:40])
    for image, seen in zip(images[:40], served):
        np.testing.assert_array_equal(seen, preprocess(png_bytes(image)))
    assert served.dtype == np.float32 and served.shape == (40, 28, 28)


def test_calibrated_ece_is_the_ece_sampling_alone_gives_a_set_of_that_size():
    """The card sets each measured ECE beside this figure: a perfectly calibrated model still
    shows an ECE above zero on a few hundred answers, and less on more."""
    from training.evaluate import calibrated_ece, expected_calibration_error

    probs = torch.full((800, 10), 0.2 / 9)
    probs[:, 3] = 0.8  # 800 answers of 3, each at 80% confidence
    floor = calibrated_ece(probs)
    assert 0 < floor < 0.05
    assert calibrated_ece(probs.repeat(20, 1)) < floor / 2  # 16,000 answers
    right_80 = torch.where(torch.arange(800) % 5 != 0, 3, 4)  # right exactly 80% of the time
    right_60 = torch.where(torch.arange(800) % 5 < 3, 3, 4)  # overconfident: right 60% of the time
    assert expected_calibration_error(probs, right_80) < floor < 0.05 < expected_calibration_error(probs, right_60)


def test_a_network_trained_from_scratch_is_held_to_a_teachers_readings(tmp_path):
    """--teacher names the model whose readings of MNIST the network is held to (the shipped
    model's recipe: trained from scratch on every source, held to the MNIST-only model);
    distillation with no model to hold it to is refused, not silently skipped."""
    from tests.conftest import SHIPPED_MODEL

    metrics = train(parse_args(["--quick", "--out", str(tmp_path), "--distill", "1.0", "--teacher", str(SHIPPED_MODEL)]))
    assert metrics["teacher"] == str(SHIPPED_MODEL) and metrics["init"] is None
    extra = {"meta.json": ""}
    torch.jit.load(str(tmp_path / "digits.pt"), _extra_files=extra)
    assert json.loads(extra["meta.json"])["recipe"]["teacher"] == str(SHIPPED_MODEL)
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--distill", "1.0"])
