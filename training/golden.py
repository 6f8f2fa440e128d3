"""The golden set a release is judged on: fixed images, each as the bytes a client would send.

    python -m training.golden                     # build/golden/digits.npz (make release builds it)
    python -m training.golden --mnist 300 --dev none --out /tmp/golden.npz   # small, for tests
    python -m training.golden --model numbers     # build/golden/numbers.npz (make release MODEL=numbers)

For ``digits``: a seeded sample of MNIST test digits (PNG, as the page's upload would send them),
plus the development split of every other handwriting source that is present
(training/sources.py: ORAND-CAR-A cheques, pendigits traces, USPS scans; none of them is ever
trained on), up to ``--per-source`` of each. For ``numbers``: the model card's strings
(training/numbers_eval.py): synthetic strings of 3-7 MNIST test digits, ORAND-CAR-A's
development amounts and strings of pendigits' development traces, each labelled with its
digits. The same arguments always give the same set, so two releases are judged on the same
images. serving/release.py reads the file; it never imports training/.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model.preprocess import png_bytes
from training.data import DATA_DIR, load_split

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "build" / "golden"  # <model>.npz
DEV_SOURCES = ("orand", "pendigits", "usps")
NUMBERS_DEV = ("orand", "pendigits")


def mnist_sample(count: int, seed: int = 0, data_dir: Path = DATA_DIR) -> tuple[list[bytes], list[int]]:
    """``count`` MNIST test digits, a fixed seeded draw, as PNG bytes, with their labels."""
    images, labels = load_split("test", data_dir)
    pick = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    return [png_bytes(images[i]) for i in pick], [int(labels[i]) for i in pick]


def dev_sample(source: str, count: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """Up to ``count`` items of a source's development split, a fixed seeded draw."""
    from training import sources  # reads ../shared/datasets; absent on machines without them

    items = sources.dev_set(source, seed=seed)
    pick = np.sort(np.random.default_rng(seed).permutation(len(items))[:count])
    return [items[i].data for i in pick], [items[i].label for i in pick]


def build(out: Path, mnist: int = 2000, dev: tuple[str, ...] = DEV_SOURCES, per_source: int = 500,
          seed: int = 0) -> dict[str, int]:
    """Write the golden set to ``out`` (npz: the images' bytes end to end, their offsets, labels
    and source names); returns how many images each source gave."""
    data, labels = mnist_sample(mnist, seed)
    counts = {"mnist-test": len(data)}
    names = ["mnist-test"] * len(data)
    for source in dev:
        try:
            d, lab = dev_sample(source, per_source, seed)
        except (ImportError, OSError, ValueError, KeyError) as e:  # a source not on this machine
            print(f"golden set: no {source} development split here ({type(e).__name__}: {e}); left out")
            continue
        data += d
        labels += lab
        names += [f"{source}-dev"] * len(d)
        counts[f"{source}-dev"] = len(d)
    _write(out, data, np.array(labels, dtype=np.int64), names)
    return counts


def build_numbers(out: Path, synthetic: int = 600, dev: tuple[str, ...] = NUMBERS_DEV, per_source: int = 200,
                  seed: int = 0) -> dict[str, int]:
    """Write the numbers golden set to ``out``: ``synthetic`` of the model card's synthetic strings
    and up to ``per_source`` strings of each development split in ``dev``, labelled with their
    digits; returns how many strings each source gave."""
    from training import numbers_eval

    items = numbers_eval.synthetic_set(synthetic, seed=seed)
    data, labels = [d for d, _, _ in items], [t for _, t, _ in items]
    counts = {"synthetic": len(data)}
    names = ["synthetic"] * len(data)
    for source in dev:
        try:
            items = numbers_eval.orand_set() if source == "orand" else numbers_eval.pendigits_set(per_source, seed)
        except (ImportError, OSError, ValueError, KeyError) as e:  # a source not on this machine
            print(f"golden set: no {source} development split here ({type(e).__name__}: {e}); left out")
            continue
        pick = np.sort(np.random.default_rng(seed).permutation(len(items))[:per_source])
        data += [items[i][0] for i in pick]
        labels += [items[i][1] for i in pick]
        names += [f"{source}-dev"] * len(pick)
        counts[f"{source}-dev"] = len(pick)
    _write(out, data, np.array(labels, dtype=str), names)
    return counts


def _write(out: Path, data: list[bytes], labels: np.ndarray, names: list[str]) -> None:
    """The set as npz: the pictures' bytes end to end, their offsets, labels and source names."""
    offsets = np.cumsum([0] + [len(b) for b in data])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, blob=np.frombuffer(b"".join(data), dtype=np.uint8), offsets=offsets,
                        labels=labels, sources=np.array(names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("digits", "numbers"), default="digits", help="default: %(default)s")
    p.add_argument("--out", type=Path, help=f"default: {GOLDEN_DIR.relative_to(REPO)}/<model>.npz")
    p.add_argument("--mnist", type=int, default=2000, help="digits: MNIST test digits (default: %(default)s)")
    p.add_argument("--synthetic", type=int, default=600,
                   help="numbers: synthetic strings of MNIST test digits (default: %(default)s)")
    p.add_argument("--dev", help="development splits to add, comma-separated, or 'none' (default: "
                                 f"{','.join(DEV_SOURCES)}; numbers: {','.join(NUMBERS_DEV)})")
    p.add_argument("--per-source", type=int,
                   help="at most this many of each (default: 500 digits, 200 strings)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    args = p.parse_args()
    numbers = args.model == "numbers"
    dev = (NUMBERS_DEV if numbers else DEV_SOURCES) if args.dev is None else (
        () if args.dev == "none" else tuple(s for s in args.dev.split(",") if s))
    args.out = args.out or GOLDEN_DIR / f"{args.model}.npz"
    counts = (build_numbers(args.out, args.synthetic, dev, args.per_source or 200, args.seed) if numbers
              else build(args.out, args.mnist, dev, args.per_source or 500, args.seed))
    print(f"wrote {args.out}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


if __name__ == "__main__":
    main()
