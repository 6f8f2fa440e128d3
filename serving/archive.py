"""Build the versioned model archives: ``model_store/digits_<version>.mar`` and
``model_store/numbers_<version>.mar``.

    python -m serving.archive                                  # make archive
    python -m serving.archive --model numbers --version 1.3    # make archive NUMBERS_VERSION=1.3

Each archive carries its TorchScript network (``model/digits.pt``; ``model/numbers.pt`` for
``numbers``), its handler and exactly the modules the handler imports, and the other model's
network: ``digits`` reads the pictures it is unsure of again with numbers 1.4's first network
(``model/second_reading.pt``), ``numbers`` a short number's digits alone with the digits network
(``model/digits.pt``). Nothing else from the repository. The version defaults to the one the network's export stored in its meta.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "digits"
MODEL_FILE = REPO / "model" / "digits.pt"
NUMBERS_FILE = REPO / "model" / "numbers.pt"
HANDLER = REPO / "handler" / "digits_handler.py"
# What the handler imports from the repository, staged as a package inside the archive.
SERVING_MODULES = ("model/__init__.py", "model/preprocess.py", "model/segment.py", "model/network.py",
                   "model/number_network.py", "handler/__init__.py", "handler/spine.py")
# Each served model: its handler, the modules that handler imports, and its network.
MODELS = {
    # digits reads the pictures it is unsure of again with a numbers network (handler.digits_handler.SECOND_FILE)
    MODEL_NAME: (HANDLER, SERVING_MODULES + ("model/second_reading.pt",), MODEL_FILE),
    # numbers reads a short number's digits alone with the digits network too (handler.numbers_handler.DIGITS_FILE)
    "numbers": (REPO / "handler" / "numbers_handler.py",
                SERVING_MODULES + ("handler/digits_handler.py", "model/digits.pt"), NUMBERS_FILE),
}


def stored_meta(model_file: Path) -> dict:
    """The meta.json written into a TorchScript file at export (training/train.py,
    training/train_numbers.py), read from the zip without loading the network."""
    with zipfile.ZipFile(model_file) as z:
        name = next(n for n in z.namelist() if n.endswith("/extra/meta.json"))
        return json.loads(z.read(name))


def stored_version(model_file: Path) -> str:
    """The version written into the export's meta.json."""
    return str(stored_meta(model_file)["metrics"]["version"])


def archive_path(version: str, store: Path, model_name: str = MODEL_NAME) -> Path:
    return Path(store) / f"{model_name}_{version}.mar"


def run_archiver(args: list[str]) -> None:
    """torch-model-archiver with ``args``, staging in a folder of its own: it copies a model's
    files into ``$TMPDIR/<model name>`` after deleting whatever is there, so two archives of one
    model built at once (make test's workers) would delete each other's files under a shared /tmp."""
    with tempfile.TemporaryDirectory() as staging:
        subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")), *args], check=True,
                       env={**os.environ, "TMPDIR": staging})


def build_archive(version: str, store: Path, model_file: Path | None = None, model_name: str = MODEL_NAME) -> Path:
    """Write ``<model_name>_<version>.mar`` into ``store`` and return its path; the network is
    ``model_file``, by default the model's own (``MODELS``)."""
    handler, modules, default_file = MODELS[model_name]
    model_file = model_file or default_file
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "extra"
        for rel in modules:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, staged / rel)
        export = Path(tmp) / "out"
        export.mkdir()
        run_archiver(["--model-name", model_name, "--version", version,
                      "--serialized-file", str(model_file), "--handler", str(handler),
                      "--extra-files", str(staged), "--export-path", str(export), "--force"])
        target = archive_path(version, store, model_name)
        shutil.move(str(export / f"{model_name}.mar"), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default=MODEL_NAME, help="default: %(default)s")
    parser.add_argument("--version", help="model version (default: the one stored in the model file)")
    parser.add_argument("--store", type=Path, default=REPO / "model_store", help="default: %(default)s")
    parser.add_argument("--model-file", type=Path, default=None,
                        help="TorchScript file (default: model/digits.pt, or model/numbers.pt for numbers)")
    args = parser.parse_args()
    version = args.version or stored_version(args.model_file or MODELS[args.model][2])
    print(f"wrote {build_archive(version, args.store, args.model_file, args.model)}")


if __name__ == "__main__":
    main()
