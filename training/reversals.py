"""Corrections to learn from, before real people have sent any: mirrored digits.

Children learning to write often reverse 3, 7 and 9. The shipped model, trained on MNIST,
misreads nearly every mirrored 3, 7 and 9 (as 8, 5 and 8 mostly), so they make a realistic
batch of corrections: the picture, what the model answered through the real handler, and the
digit that was meant. Only pictures the model got wrong (or declined) are kept, as only those
would be corrected on the page.

    python -m training.reversals --count 300          # into feedback_db (config.properties)

The images are MNIST *training* digits, mirrored and redrawn as people send them
(training/wild.py's ``render_digit``), so none of them is in the golden set that judges a
release (MNIST test). The rows are stored with the client key ``simulated``.

For ``numbers`` (``--model numbers``), strings of 3 to 5 MNIST training digits side by side
(as the card's synthetic strings, training/numbers_eval.py), every 3, 7 and 9 in them mirrored:
the shipped cascade misreads about seven in ten of them.

    python -m training.reversals --model numbers --count 300
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from serving import local
from serving.archive import MODELS
from serving.feedback import Correction, FeedbackStore, db_path
from training.data import DATA_DIR, load_split
from training.wild import render_digit

DIGITS = (3, 7, 9)


def mirrored(count: int, digits=DIGITS, seed: int = 0, data_dir: Path = DATA_DIR,
             start: int = 0) -> list[tuple[bytes, int]]:
    """``count`` pictures of mirrored MNIST training digits (of ``digits``) as people send them,
    with the digit meant; ``start`` skips that many candidates (a second, disjoint batch)."""
    images, labels = load_split("train", data_dir)
    rng = np.random.default_rng(seed)
    pool = rng.permutation(np.flatnonzero(np.isin(labels, digits)))[start:start + count]
    return [(render_digit(np.ascontiguousarray(images[i][:, ::-1]), rng)[0], int(labels[i])) for i in pool]


def mirrored_numbers(count: int, seed: int = 0, data_dir: Path = DATA_DIR) -> list[tuple[bytes, str]]:
    """``count`` strings of 3 to 5 MNIST training digits (``numbers_eval.synthetic_string``), every
    3, 7 and 9 among them mirrored, with the digits meant."""
    from training.numbers_eval import synthetic_string

    images, labels = load_split("train", data_dir)
    images = images.copy()
    turned = np.isin(labels, DIGITS)
    images[turned] = images[turned][:, :, ::-1]
    rng = np.random.default_rng(seed)
    return [synthetic_string(images, labels, rng, 3 + k % 3)[:2] for k in range(count)]


def misread(pictures: list[tuple[bytes, int | str]], model_file: Path | None = None,
            version: str = "1.0", model: str = "digits") -> list[Correction]:
    """The pictures ``model`` (the network in ``model_file``, by default the shipped one) gets
    wrong through the real handler, as the corrections a person would send (answer ``None``
    where the model declined)."""
    from handler.digits_handler import DigitsHandler
    from handler.numbers_handler import NumbersHandler

    handler_class, key = {"digits": (DigitsHandler, "digit"), "numbers": (NumbersHandler, "text")}[model]
    handler = local.load_handler(model_file or MODELS[model][2], version=version, handler_class=handler_class,
                                 model_name=model)
    out = []
    for i in range(0, len(pictures), 32):
        chunk = pictures[i:i + 32]
        answers, _ = local.handle(handler, [{"body": data} for data, _ in chunk], {"X-Activations": "off"})
        for (data, label), (status, a) in zip(chunk, answers):
            if status == 200 and a[key] != label:
                fmt = "PNG" if data.startswith(b"\x89PNG") else "JPEG"
                answer = None if a[key] is None else str(a[key])
                out.append(Correction(model, version, str(label), answer, data, fmt))
    return out


def main() -> None:
    from serving.server import read_properties

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("digits", "numbers"), default="digits", help="default: %(default)s")
    p.add_argument("--count", type=int, default=300, help="mirrored pictures to try (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--db", type=Path, help="the feedback file (default: feedback_db in config.properties)")
    p.add_argument("--version", default="1.0", help="the version said to have answered (default: %(default)s)")
    args = p.parse_args()
    store = FeedbackStore(args.db or db_path(read_properties()), per_minute=10 ** 9)
    pictures = (mirrored_numbers if args.model == "numbers" else mirrored)(args.count, seed=args.seed)
    corrections = misread(pictures, version=args.version, model=args.model)
    for c in corrections:
        store.add(c, client="simulated")
    what = "strings with mirrored digits" if args.model == "numbers" else "mirrored digits"
    print(f"{len(corrections)} of {args.count} {what} were misread by {args.model}; stored them in {store.path}")


if __name__ == "__main__":
    main()
