"""`make bulk` on a real local Ray (2 CPUs, a small object store): a few hundred images made from
the fixtures, with bad files among them, read by the job and by the real TorchServe over HTTP."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
from PIL import Image, ImageOps

from bulk import job
from serving.archive import MODEL_FILE
from tests.conftest import FIXTURES, encode

VARIANTS = ("png", "bigger", "smaller", "recoloured", "jpeg", "bmp", "webp")
BAD = {"corrupt.png": "corrupt_image", "notes.txt": "not_an_image", "empty.png": "empty_body"}
MISSING = "no-such-dir/scan.png"
PROBABILITY_TOLERANCE = 1e-5  # the handler rounds to 6 places; both sides run the same code


def variant(src: Path, kind: str) -> tuple[str, bytes]:
    """One file made from a fixture: resized, recoloured or re-encoded, as scans arrive."""
    img = Image.open(src)
    if img.mode == "RGBA":  # the drawings are dark strokes on transparency: put them on paper
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
    grey = img.convert("L")
    if kind == "png":
        return "png", src.read_bytes()
    if kind == "bigger":
        return "png", encode(grey.resize((grey.width * 3, grey.height * 3), Image.BILINEAR), "PNG")
    if kind == "smaller":
        return "png", encode(grey.resize((max(28, grey.width // 2),) * 2, Image.LANCZOS), "PNG")
    if kind == "recoloured":
        return "png", encode(ImageOps.colorize(grey, black="navy", white="lightyellow"), "PNG")
    if kind == "jpeg":
        return "jpg", encode(grey.convert("RGB"), "JPEG", quality=85)
    if kind == "bmp":
        return "bmp", encode(grey, "BMP")
    return "webp", encode(grey, "WEBP", lossless=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    """A list file naming 210 images and 4 bad inputs; returns it, the good paths and the bad ones' codes."""
    folder = tmp_path_factory.mktemp("bulk-in")
    good = []
    for src in sorted(FIXTURES.glob("*.png")):
        for kind in VARIANTS:
            suffix, data = variant(src, kind)
            path = folder / f"{src.stem}-{kind}.{suffix}"
            path.write_bytes(data)
            good.append(str(path))
    png = (FIXTURES / "mnist_3.png").read_bytes()
    (folder / "corrupt.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.txt").write_text("seven, maybe")
    (folder / "empty.png").write_bytes(b"")
    bad = {str(folder / name): code for name, code in BAD.items()}
    bad[str(folder / MISSING)] = "unreadable"
    listing = folder / "inputs.txt"
    everything = good[:100] + list(bad) + good[100:]  # the bad ones in the middle of the stream
    listing.write_text("\n".join(everything) + "\n")
    return listing, good, bad


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of this test's own, even where RAY_ADDRESS names a cluster. Its workers run at the
    test's own priority: Ray starts them at niceness 15, which on a machine busy with other work
    starves them and stretches this module from seconds to minutes."""
    address = os.environ.pop("RAY_ADDRESS", None)
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    job.start_ray(cpus=2, object_store_mb=100)
    yield
    ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address
    if niceness is None:
        os.environ.pop("RAY_worker_niceness", None)
    else:
        os.environ["RAY_worker_niceness"] = niceness


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(local_ray, inputs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bulk-out") / "results.jsonl"
    summary = job.run(inputs[0], out, workers=2, batch_size=32, progress=False)
    return out, summary


def test_every_input_gets_exactly_one_line(full_run, inputs):
    out, summary = full_run
    _, good, bad = inputs
    paths = [r["path"] for r in lines(out)]
    assert sorted(paths) == sorted(good + list(bad))
    unsure = sum("guess" in r for r in lines(out))
    assert summary == {"inputs": len(good) + len(bad), "already_in_out": 0, "read": len(good) + len(bad),
                       "unsure": unsure, "errors": len(bad)}


def test_answers_match_the_server(full_run, inputs, client):
    out, _ = full_run
    _, good, _ = inputs
    results = {r["path"]: r for r in lines(out)}
    version = job.stored_version(MODEL_FILE)
    for path in good:
        r = client.predict(Path(path).read_bytes(), headers={"X-Activations": "off"})
        served, mine = r.json(), results[path]
        assert mine["status"] == r.status_code == 200, (path, served)
        assert (mine["model"], mine["version"]) == ("digits", version)
        for key in ("digit", "guess", "reason"):
            assert mine.get(key) == served.get(key), (path, key, mine, served)
        assert mine["probabilities"] == pytest.approx(served["probabilities"], abs=PROBABILITY_TOLERANCE), path
        assert "input" not in mine and "activations" not in mine  # lines stay small


def test_bad_files_are_their_own_lines(full_run, inputs):
    out, _ = full_run
    _, good, bad = inputs
    results = {r["path"]: r for r in lines(out)}
    for path, code in bad.items():
        r = results[path]
        assert r["error"] == code and r["detail"], r
        assert "digit" not in r and r["model"] == "digits"
    assert results[next(p for p in bad if p.endswith(MISSING))]["status"] is None  # never reached the handler
    assert sum("digit" in results[p] for p in good) == len(good)  # the rest were all read


def test_a_resumed_run_adds_only_what_is_missing(full_run, inputs, tmp_path):
    finished, _ = full_run
    listing, good, bad = inputs
    whole = finished.read_text().splitlines(keepends=True)
    out = tmp_path / "results.jsonl"
    kept = whole[:150]
    out.write_text("".join(kept) + whole[150][: len(whole[150]) // 2])  # killed while writing line 151
    summary = job.run(listing, out, workers=2, batch_size=32, progress=False)
    assert summary["already_in_out"] == 150 and summary["read"] == len(whole) - 150
    final = out.read_text().splitlines(keepends=True)
    assert final[:150] == kept  # the earlier lines were kept, not read again
    assert sorted(r["path"] for r in lines(out)) == sorted(good + list(bad))  # one line per input
    again = job.run(listing, out, workers=2, batch_size=32, progress=False)
    assert again["read"] == 0 and out.read_text().splitlines(keepends=True) == final


def test_a_folder_is_every_file_under_it(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.png", "a/b/two.jpg", "three.png"):
        (tmp_path / name).write_bytes(b"x")
    assert job.list_inputs(tmp_path) == sorted(str(tmp_path / n) for n in ("a/b/two.jpg", "a/one.png", "three.png"))


def test_numbers_read_as_the_server_reads_them(local_ray, client, tmp_path):
    """MODEL=numbers: the second handler through the same job, against /predictions/numbers."""
    folder = tmp_path / "numbers"
    folder.mkdir()
    for name in ("number_2931.png", "number_40517.png", "drawn_7.png"):
        (folder / name).write_bytes((FIXTURES / name).read_bytes())
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "numbers.jsonl"
    summary = job.run(folder, out, model="numbers", workers=1, batch_size=8, progress=False)
    assert summary["read"] == 4 and summary["errors"] == 1
    results = {Path(r["path"]).name: r for r in lines(out)}
    assert results["empty.png"]["error"] == "empty_body"
    for name in ("number_2931.png", "number_40517.png", "drawn_7.png"):
        r = client.predict((folder / name).read_bytes(), path="numbers")
        served, mine = r.json(), results[name]
        assert mine["status"] == r.status_code and mine["model"] == served["model"] == "numbers", (name, served)
        for key in ("text", "guess", "reason"):
            assert mine.get(key) == served.get(key), (name, key, mine, served)
        assert [d["box"] for d in mine["digits"]] == [d["box"] for d in served["digits"]], name
        for a, b in zip(mine["digits"], served["digits"]):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=PROBABILITY_TOLERANCE), name
    assert results["number_2931.png"]["text"] == "2931"  # the fixture's own digits, as a person reads them


def test_only_models_that_exist_are_accepted(tmp_path):
    with pytest.raises(job.UnknownModel, match="no model 'letters' here.*digits, numbers"):
        job.run(tmp_path, tmp_path / "out.jsonl", model="letters", progress=False)
    assert not (tmp_path / "out.jsonl").exists()
