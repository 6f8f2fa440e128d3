"""The network digits reads unsure pictures again with is a numbers export's first network alone."""
from __future__ import annotations

import json
import zipfile

import torch

from model.number_network import STRIP_HEIGHT
from serving.archive import NUMBERS_FILE, build_archive
from training.second_reading import extract


def test_an_exports_first_network_alone_reads_as_the_export_and_keeps_its_peak_offset(tmp_path):
    out = tmp_path / "second.pt"
    meta = extract(NUMBERS_FILE, out)
    extra = {"meta.json": ""}
    shipped = torch.jit.load(str(NUMBERS_FILE), _extra_files=extra)
    source = json.loads(extra["meta.json"])
    alone = torch.jit.load(str(out), _extra_files=(written := {"meta.json": ""}))
    assert json.loads(written["meta.json"]) == meta
    assert meta["peak_offsets"] == source["peak_offsets"][:1] and meta["metrics"]["version"] == source["metrics"]["version"]
    assert sum(p.numel() for p in alone.parameters()) < sum(p.numel() for p in shipped.parameters())  # one of two
    with torch.inference_mode():
        strips = torch.rand(3, 1, STRIP_HEIGHT, 160)
        assert torch.equal(alone(strips)[0], shipped(strips)[0])


def test_the_digits_archive_carries_the_second_reading_not_the_numbers_model(tmp_path):
    names = zipfile.ZipFile(build_archive("9.9", tmp_path)).namelist()
    assert any(n.endswith("model/second_reading.pt") for n in names), names
    assert not any(n.endswith("numbers.pt") for n in names), names
