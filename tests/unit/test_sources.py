"""training.sources: checksums, the message for a missing file, splits that never mix, renderers."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from model.preprocess import preprocess
from tests.conftest import needs_shared_datasets
from training import sources
from training.sources import FILES, SourceCorrupt, SourceMissing, render_trace, render_usps, split, verify


def test_a_missing_file_is_named_with_its_public_original(tmp_path):
    with pytest.raises(SourceMissing) as err:
        verify(["pendigits"], tmp_path)
    message = str(err.value)
    assert str(tmp_path / "pendigits" / "pendigits.tra") in message
    assert "UCI ML repository, dataset 81" in message and "CC BY 4.0" in message


def test_a_file_with_another_sha256_is_refused(tmp_path):
    (tmp_path / "usps").mkdir()
    (tmp_path / "usps" / "usps_train.npz").write_bytes(b"not the USPS training set")
    with pytest.raises(SourceCorrupt) as err:
        verify(["usps"], tmp_path)
    assert FILES["usps"].sha256 in str(err.value)
    assert hashlib.sha256(b"not the USPS training set").hexdigest() in str(err.value)


def test_a_file_with_the_right_sha256_passes(tmp_path, monkeypatch):
    content = b"47,100,27,81,57,37,26,0,0,23,56,53,100,90,40,98,8\n"
    (tmp_path / "pendigits").mkdir()
    (tmp_path / "pendigits" / "pendigits.tra").write_bytes(content)
    monkeypatch.setitem(FILES, "pendigits", sources.SourceFile(
        "pendigits/pendigits.tra", hashlib.sha256(content).hexdigest(), "test", "test"))
    assert verify(["pendigits"], tmp_path) == {"pendigits": tmp_path / "pendigits" / "pendigits.tra"}
    traces, labels = sources.load_pendigits(tmp_path)
    assert traces.shape == (1, 8, 2) and labels.tolist() == [8]


def test_orand_without_its_images_folder_says_so(tmp_path, monkeypatch):
    content = b'{"images": [], "annotations": [], "categories": []}'
    (tmp_path / "orand-car-a").mkdir()
    (tmp_path / "orand-car-a" / "annotations.json").write_bytes(content)
    monkeypatch.setitem(FILES, "orand", sources.SourceFile(
        "orand-car-a/annotations.json", hashlib.sha256(content).hexdigest(), "orand.cl icfhr2014-hdsr", "research"))
    with pytest.raises(SourceMissing, match="images folder .* is missing; get the images from orand.cl"):
        verify(["orand"], tmp_path)


def test_mnist_is_split_by_writer():
    writers = np.repeat(np.arange(60), 50)[np.random.default_rng(0).permutation(3000)]
    train, dev = split("mnist", len(writers), writers)
    assert not set(writers[train]) & set(writers[dev])
    assert len(set(writers[dev])) == 6 and len(train) + len(dev) == 3000


@pytest.mark.parametrize("source, count, held", [("orand", 1080, 200), ("pendigits", 7494, 749), ("usps", 7291, 1000)])
def test_splits_are_disjoint_complete_and_fixed(source, count, held):
    train, dev = split(source, count)
    assert len(dev) == held and not set(train) & set(dev) and len(train) + len(dev) == count
    again_train, again_dev = split(source, count)
    assert (again_dev == dev).all() and (again_train == train).all()


@needs_shared_datasets
def test_the_shared_files_match_the_readme():
    """The real files, checked against the README's sums."""
    assert set(verify()) == set(FILES)


def test_a_pen_trace_is_drawn_as_a_canvas_the_service_reads():
    seven = np.array([[10, 100], [60, 100], [100, 100], [80, 70], [60, 45], [45, 25], [35, 10], [30, 0]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = preprocess(render_trace(seven, rng))
        assert x.shape == (28, 28) and x.max() == pytest.approx(1.0)
        rows = np.flatnonzero(x.max(1) > 0.5)
        assert rows[-1] - rows[0] >= 16  # a tall digit, whatever the pen and smoothing


def test_a_usps_scan_keeps_the_digit_not_its_neighbour():
    one = np.zeros((16, 16), np.float32)
    one[1:15, 7:9] = 1.0
    zero = np.zeros((16, 16), np.float32)
    zero[2:14, 3:13] = 1.0
    zero[4:12, 5:11] = 0.0
    rng = np.random.default_rng(3)
    alone = preprocess(render_usps(one, np.random.default_rng(3)))
    beside = preprocess(render_usps(one, rng, neighbour=zero))
    # A 1 stays a narrow upright stroke: the neighbour's fragment did not widen the crop.
    assert (alone.max(0) > 0.5).sum() <= 8 and (beside.max(0) > 0.5).sum() <= 8


@pytest.mark.parametrize("source, count", [("orand", 1080), ("pendigits", 7494), ("usps", 7291)])
def test_the_calibration_part_comes_from_the_training_split_only(source, count):
    train, dev = split(source, count)
    learn, calibrate = sources.calibration_part(source, train)
    assert not set(calibrate) & set(dev) and not set(calibrate) & set(learn)
    assert sorted(np.concatenate([learn, calibrate])) == sorted(train)
    assert 0.03 * len(train) < len(calibrate) < 0.07 * len(train)  # a twentieth, give or take the draw
    again_learn, again_calibrate = sources.calibration_part(source, train)
    assert (again_calibrate == calibrate).all() and (again_learn == learn).all()


@needs_shared_datasets
def test_the_plain_forms_are_each_development_split_as_plain_pngs():
    """The card's plainer forms: the same development digits, the same labels, as small PNGs."""
    import io

    from PIL import Image
    for source, size in (("usps", (16, 16)), ("pendigits", (28, 28)), ("pendigits_stretched", (16, 16)), ("orand", None)):
        plain, users = sources.plain_dev_set(source), sources.dev_set(source.split("_")[0])
        assert [it.label for it in plain] == [it.label for it in users], source
        pictures = [Image.open(io.BytesIO(it.data)) for it in plain[:50]]
        assert all(p.format == "PNG" and p.mode == "L" for p in pictures), source
        if size:
            assert {p.size for p in pictures} == {size}, source


def test_a_digit_squared_as_semeion_stores_it_fills_its_bitmap():
    """``squared``: a narrow 1 with a flag stretched to fill 16x16 reaches all four sides,
    thresholded to two values; with its proportions kept it stays narrow and upright in the
    middle."""
    one = np.zeros((40, 30), np.float32)
    one[5:35, 12:16] = 1.0
    one[5:9, 8:12] = 1.0
    wide = sources.squared(one)
    assert wide.shape == (16, 16) and set(np.unique(wide)) == {0, 255}
    assert wide[0].any() and wide[-1].any() and wide[:, 0].any() and wide[:, -1].any()
    kept = sources.squared(one, side=28, stretch=False, bilevel=False)
    cols = np.flatnonzero(kept.max(0) > 127)
    assert kept.shape == (28, 28) and kept[0].any() and kept[-1].any() and len(cols) <= 8 and 9 <= cols[0] <= 11


@needs_shared_datasets
def test_the_plain_training_forms_are_pictures_the_service_reads():
    """``plain_payloads``: a round is MNIST_PLAIN MNIST digits, USPS_PLAIN USPS digits and half of
    pendigits' learning part, each a picture the service accepts, every digit among the labels;
    the calibration round is about a tenth of that."""
    payloads = sources.plain_payloads("train", 1, np.random.default_rng(0))
    pen_train, _ = split("pendigits", 7494)
    learn, _ = sources.calibration_part("pendigits", pen_train)
    assert len(payloads) == sources.MNIST_PLAIN + sources.USPS_PLAIN + len(learn) // 2
    assert {label for _, label in payloads} == set(range(10))
    for data, _ in payloads[::500]:
        assert preprocess(data).shape == (28, 28)
    calibration = sources.plain_payloads("calibration", 1, np.random.default_rng(0))
    assert 0 < len(calibration) < len(payloads) // 8
