"""Build the versioned model archive: ``model_store/digits_<version>.mar``.

    python -m serving.archive --version 1.0        # make archive VERSION=1.0

The archive carries the TorchScript network, the handler and exactly the modules the
handler imports (``model/preprocess.py``), nothing else from the repository.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "digits"
MODEL_FILE = REPO / "model" / "digits.pt"
HANDLER = REPO / "handler" / "digits_handler.py"
# What the handler imports from the repository, staged as a package inside the archive.
SERVING_MODULES = ("model/__init__.py", "model/preprocess.py", "handler/__init__.py", "handler/spine.py")


def archive_path(version: str, store: Path) -> Path:
    return Path(store) / f"{MODEL_NAME}_{version}.mar"


def build_archive(version: str, store: Path, model_file: Path = MODEL_FILE) -> Path:
    """Write ``digits_<version>.mar`` into ``store`` and return its path."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "extra"
        for rel in SERVING_MODULES:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, staged / rel)
        export = Path(tmp) / "out"
        export.mkdir()
        subprocess.run([
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", MODEL_NAME, "--version", version,
            "--serialized-file", str(model_file), "--handler", str(HANDLER),
            "--extra-files", str(staged), "--export-path", str(export), "--force",
        ], check=True)
        target = archive_path(version, store)
        shutil.move(str(export / f"{MODEL_NAME}.mar"), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1.0", help="model version (default: %(default)s)")
    parser.add_argument("--store", type=Path, default=REPO / "model_store", help="default: %(default)s")
    parser.add_argument("--model-file", type=Path, default=MODEL_FILE, help="TorchScript file (default: %(default)s)")
    args = parser.parse_args()
    print(f"wrote {build_archive(args.version, args.store, args.model_file)}")


if __name__ == "__main__":
    main()
