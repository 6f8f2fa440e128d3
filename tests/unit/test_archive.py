"""Building a model archive (serving/archive.py), as make serve and every test server do."""
from __future__ import annotations

import tempfile
import zipfile

from serving.archive import build_archive


def test_building_an_archive_leaves_another_builds_files_alone(tmp_path, monkeypatch):
    """torch-model-archiver copies a model's files into $TMPDIR/<model name>, deleting whatever is
    there first. Two archives of one model built at once (make test's workers each build the ones
    their TorchServe serves) deleted each other's files under the shared /tmp, and one build
    failed with a missing handler. Each build now stages in a folder of its own."""
    shared = tmp_path / "tmp"
    other = shared / "digits"  # another build of digits, half way through
    other.mkdir(parents=True)
    (other / "digits_handler.py").write_text("another build's handler")
    monkeypatch.setenv("TMPDIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    mar = build_archive("9.9", tmp_path / "store")
    assert (other / "digits_handler.py").read_text() == "another build's handler"
    assert mar.name == "digits_9.9.mar" and "digits_handler.py" in zipfile.ZipFile(mar).namelist()
