"""`make eval`: measure the shipped model and write docs/model-card.md with its pictures.

Everything goes through the real serving code path: the handler (with TorchServe's own
Context class, as a worker runs it) decodes the encoded bytes, preprocesses them and runs
the TorchScript model, exactly as for an HTTP request. Figures:

- MNIST test set (10,000): accuracy, per-class accuracy, confusion, calibration (ECE), errors.
- In the wild: every MNIST test digit re-drawn as people send them (training/wild.py).
- Refusals: non-digits refused, real digits wrongly refused.
- Seeds: mean and spread of the recipe over seeds, from docs/seeds.json (`make seeds`).
- Other writers: the development split of each other source (training/sources.py: ORAND-CAR-A
  cheque digits, UCI pendigits pen traces, USPS scans), each digit rendered as users send it;
  accuracy with refusals counted as misses, refusal rate, ECE, the most common confusions.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from handler.digits_handler import MIN_CONFIDENCE, SECOND_FILE, SECOND_FROM, SECOND_TO, SECOND_WEIGHT, DigitsHandler
from model.network import DigitNet, NetConfig, count_parameters
from model.number_network import NumberNet, NumberNetConfig
from model.preprocess import png_bytes
from serving import local
from serving.machine import describe_machine
from training.data import DATA_DIR, load_split
from training.evaluate import calibrated_ece, confusion_matrix, expected_calibration_error, plot_confusion
from training.paper import on_page as _on_page, on_paper
from training.sources import FILES as SOURCE_FILES, SourceCorrupt, SourceMissing, dev_set, plain_dev_set, squared
from training.wild import non_digit_set, wild_set

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "model" / "digits.pt"
DOCS = REPO / "docs"
PICTURES = DOCS / "card"
SEEDS = DOCS / "seeds.json"


# Issue 5's targets.
TARGET_ACCURACY = 0.997
TARGET_WILD_GAP = 0.003
TARGET_ECE = 0.01
TARGET_REFUSED = 0.005
TARGET_PARAMS = 500_000
TARGET_TRAIN_MIN = 30
# Issue 12's targets, per source's development split (refusals counted as misses).
TARGET_SOURCES = {"orand": 0.98, "pendigits": 0.985, "usps": 0.985}
TARGET_MNIST_SERVED = 0.9965
TARGET_NON_DIGITS = 0.85
TARGET_NON_DIGIT_KIND = 0.75  # scribbles and letters, each
TARGET_PARAMS_12 = 1_000_000
SOURCE_NAMES = {"orand": "ORAND-CAR-A cheque digits", "pendigits": "UCI pendigits pen traces",
                "usps": "USPS envelope scans"}


def run(handler: DigitsHandler, payloads: list[bytes], desc: str, batch: int = 64) -> list[tuple[int, dict]]:
    """(HTTP status, answer) for every payload, sent in batches through DigitsHandler.handle."""
    out = []
    for i in tqdm(range(0, len(payloads), batch), desc=desc, unit="batch"):
        out += local.handle(handler, [{"body": p} for p in payloads[i:i + batch]], {"X-Activations": "off"})[0]
    return out


def summarise(results: list[tuple[int, dict]], labels: np.ndarray) -> dict:
    """Accuracy of the top guess, accuracy with refusals counted as misses, accuracy of the
    answered, ECE, and how many answers the numbers network read a second time."""
    probs = np.array([a.get("probabilities", [0.1] * 10) for _, a in results])
    answered = np.array([s == 200 and a.get("digit") is not None for s, a in results])
    predicted = probs.argmax(1)
    return {
        "count": len(labels),
        "accuracy_ignoring_refusals": float((predicted == labels).mean()),
        "accuracy": float(((predicted == labels) & answered).mean()),
        "refused": int((~answered).sum()),
        "refused_rate": float((~answered).mean()),
        "accuracy_of_answered": float((predicted[answered] == labels[answered]).mean()),
        "ece": expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels.astype(np.int64))),
        "read_twice": sum("second_reading" in a for _, a in results),
        "_probs": probs, "_predicted": predicted, "_answered": answered,
    }


# ---------------------------------------------------------------- pictures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_reliability(sets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 15) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 5), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for name, (probs, labels) in sets.items():
        conf, pred = probs.max(1), probs.argmax(1)
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (conf > lo) & (conf <= hi)
            if inside.sum() >= 5:
                xs.append(conf[inside].mean())
                ys.append((pred[inside] == labels[inside]).mean())
        ax.plot(xs, ys, "o-", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Reliability (bins with at least 5 images)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_errors(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, path: Path, limit: int = 60) -> None:
    plt = _plt()
    wrong = np.flatnonzero(predicted != labels)[:limit]
    cols = 10
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3), dpi=100)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{labels[i]} → {predicted[i]}", fontsize=9, color="crimson")
    fig.suptitle("MNIST test digits the model gets wrong (true → predicted)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_class(sets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    width = 0.8 / len(sets)
    for k, (name, (pred, labels)) in enumerate(sets.items()):
        acc = [(pred[labels == d] == d).mean() * 100 for d in range(10)]
        ax.bar(np.arange(10) + (k - (len(sets) - 1) / 2) * width, acc, width, label=name)
    ax.set_xticks(range(10))
    ax.set_xlabel("digit")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(97, 100.2)
    ax.legend(loc="lower left")
    ax.set_title("Per-class accuracy")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- the card

def measure(data_dir: Path = DATA_DIR, non_digits_per_kind: int = 200) -> dict:
    handler = local.load_handler(MODEL, version="card")
    images, labels = load_split("test", data_dir)
    started = time.perf_counter()
    mnist = summarise(run(handler, [png_bytes(im) for im in images], "MNIST test"), labels)
    wild_samples = wild_set(images, labels, seed=0)
    wild = summarise(run(handler, [s.data for s in wild_samples], "in the wild"), labels)
    non = non_digit_set(non_digits_per_kind, seed=0)
    non_results = run(handler, [s.data for s in non], "non-digits")
    refused_by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sample, (status, answer) in zip(non, non_results):
        refused_by_kind[sample.kind][0] += int(status != 200 or answer.get("digit") is None)
        refused_by_kind[sample.kind][1] += 1
    wild_by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sample, pred in zip(wild_samples, wild["_predicted"]):
        for part in sample.kind.split("/"):
            wild_by_kind[part][0] += int(pred == sample.label)
            wild_by_kind[part][1] += 1
    return {"handler": handler, "images": images, "labels": labels, "mnist": mnist, "wild": wild,
            "non_digits": dict(refused_by_kind), "wild_by_kind": dict(wild_by_kind),
            "sources": measure_sources(handler), "forms": measure_forms(handler, images, labels),
            "seconds": time.perf_counter() - started}


FORMS = {"mnist_bilevel": "MNIST test thresholded at half strength (bilevel, as a fax or a thresholded scan)",
         "mnist_small": "MNIST test shrunk to 14x14",
         "usps": "USPS development split as stored: 16x16, light on dark",
         "pendigits": "pendigits development split drawn 28x28, aliased 2-pixel pen, light on dark",
         "mnist_stretched": "MNIST test stretched to fill a 16x16 square, thresholded (as Semeion's collection stores digits)",
         "pendigits_stretched": "pendigits development split drawn, stretched to fill a 16x16 square, thresholded",
         "orand": "ORAND-CAR-A development split cut to each digit's box, greyscale",
         "mnist_box": "MNIST test written in a form's printed box (a grey box around it, dark ink on white, 120x120)",
         "mnist_ruled": "MNIST test written on ruled paper (a grey line through its foot, dark ink on white, 120x120)",
         "mnist_page": "MNIST test, the first 3,000, written 40 pixels tall on a 1600x1200 photo of a page (JPEG)",
         "mnist_notebook": "MNIST test, the first 3,000, written on a notebook's ruled page (pale lines, a red margin)",
         "mnist_squared": "MNIST test, the first 3,000, written on squared paper"}
PAGE_DIGITS = 3000  # a 1600x1200 JPEG takes about 20 ms to read: the first 3,000 keep `make eval` within a minute more


def on_form(image: np.ndarray, kind: str) -> bytes:
    """A 28x28 MNIST digit as written on a form (``kind`` "box": in a printed box; "ruled": on a
    ruled line through its foot), 40x40 with grey lines, as dark ink on white, three times the size."""
    from PIL import Image

    paper = np.zeros((40, 40), dtype=np.float32)
    paper[6:34, 6:34] = image / 255.0
    if kind == "box":
        paper[[1, 38], 1:39] = paper[1:39, [1, 38]] = 0.6
    else:
        foot = 6 + int(np.flatnonzero(image.max(axis=1) > 127)[-1])
        paper[foot, 2:38] = np.maximum(paper[foot, 2:38], 0.6)
    ink = ((1.0 - paper) * 255).astype(np.uint8)
    return png_bytes(np.asarray(Image.fromarray(ink).resize((120, 120), Image.Resampling.BILINEAR)))


def _enlarged(image: np.ndarray) -> np.ndarray:
    """A 28x28 MNIST digit three times the size, as ink in [0, 1] (``training.paper.on_paper``'s)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((84, 84), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def on_page(image: np.ndarray) -> bytes:
    """A 28x28 MNIST digit written small on a page photographed at 1600x1200 (JPEG, quality 85):
    dark ink on white, 40 pixels a side, a third of the way across and half way down."""
    from PIL import Image

    return _on_page(Image.fromarray(255 - image).resize((40, 40), Image.Resampling.BILINEAR), (1600, 1200), (533, 600))


def measure_forms(handler: DigitsHandler, images: np.ndarray, labels: np.ndarray) -> dict:
    """The same digits sent in plainer forms than users' pictures (``FORMS``): what an
    evaluator converting these collections to images might send."""
    from PIL import Image

    sent = {"mnist_bilevel": ([png_bytes(np.where(im > 127, 255, 0).astype(np.uint8)) for im in images], labels),
            "mnist_small": ([png_bytes(np.asarray(Image.fromarray(im).resize((14, 14), Image.Resampling.BOX)))
                             for im in images], labels),
            "mnist_stretched": ([png_bytes(squared(im / 255.0)) for im in images], labels),
            "mnist_box": ([on_form(im, "box") for im in images], labels),
            "mnist_ruled": ([on_form(im, "ruled") for im in images], labels),
            "mnist_page": ([on_page(im) for im in images[:PAGE_DIGITS]], labels[:PAGE_DIGITS]),
            **{f"mnist_{kind}": ([on_paper(_enlarged(im), "ruled" if kind == "notebook" else kind)
                                  for im in images[:PAGE_DIGITS]], labels[:PAGE_DIGITS])
               for kind in ("notebook", "squared")}}
    for name in ("usps", "pendigits", "pendigits_stretched", "orand"):
        try:
            items = plain_dev_set(name)
        except (SourceMissing, SourceCorrupt) as e:
            sent[name] = {"missing": str(e)}
            continue
        sent[name] = ([it.data for it in items], np.array([it.label for it in items]))
    return {name: s if isinstance(s, dict) else summarise(run(handler, s[0], FORMS[name]), s[1])
            for name, s in sent.items()}


def forms_section(m: dict) -> list[str]:
    """The plainer forms' figures beside the same digits' figures above."""
    lines = ["", "## The same digits, sent in plainer forms", "",
             "Not how the page or a phone sends a digit, but how someone converting these collections to "
             "images might: through the handler as above, refusals counted as misses, beside the figure "
             "above for the same digits (MNIST's as stored, the others as users send them). A digit drawn "
             "small in a bilevel picture is enlarged before it is scaled to 20 pixels "
             "(`model.preprocess.soften_small`); before that, thresholded MNIST read 92.5% (first 3,000) and "
             "the aliased pen traces 69%. A form's printed box around a digit, or a ruled line through its "
             "foot, is taken out before the digit is found (`model.preprocess.without_frame`); before that, "
             "6.69% of these MNIST digits in a box and 77.43% on a ruled line were read. The page row is how a "
             "phone sends a form: a digit small on a large photo, which `decode` reads at a quarter of its size "
             "(7 pixels tall); `model.preprocess.ink_view` measures the digit again from the photo's own pixels "
             "around it. Before that, 88.37% of these digits were read. On a notebook's page (`training.paper`) "
             "the ruled lines and the margin join the digit into one shape with the page; they are taken out "
             "first (`model.preprocess.without_paper_lines`). Before that, 0.40% of these digits were read on "
             "the ruled page (squared paper read as now: its 1-pixel lines fade away in the ink map). The "
             "stretched rows are how Semeion's collection (16x16 scans of about 80 Italian writers) stores "
             "a digit: stretched to fill its square whatever its proportions, so a 1 comes out as wide as a "
             "0, and thresholded. Digits 1.2 read 93.71% of MNIST and 90.25% of the pen traces so (its "
             "misses mostly wide 1s, unsure or read as 8); 1.3 learned these forms (`training.sources."
             "plain_payloads`: MNIST's and USPS's training digits stretched, pen traces stretched or "
             "drawn small with an aliased pen).", "",
             "| form | digits | above | accuracy | refused |", "|---|---:|---:|---:|---:|"]
    usual = {"mnist_bilevel": m["mnist"], "mnist_small": m["mnist"], "mnist_box": m["mnist"], "mnist_ruled": m["mnist"],
             "mnist_stretched": m["mnist"], **m["sources"], "pendigits_stretched": m["sources"].get("pendigits", {})}
    for name, title in FORMS.items():
        r = m["forms"][name]
        if "missing" in r:
            lines.append(f"| {title} | not measured: {r['missing']} | | | |")
            continue
        base = usual.get(name, {})
        lines.append(f"| {title} | {r['count']:,} | {format(base['accuracy'], '.2%') if 'accuracy' in base else 'n/a'} | "
                     f"**{r['accuracy']:.2%}** | {r['refused_rate']:.2%} |")
    return lines


def measure_sources(handler: DigitsHandler) -> dict:
    """Each other source's development split through the handler; a missing source is reported
    with the message that says where to get it."""
    out = {}
    for name in SOURCE_NAMES:
        try:
            items = dev_set(name)
        except (SourceMissing, SourceCorrupt) as e:
            out[name] = {"missing": str(e)}
            continue
        labels = np.array([it.label for it in items])
        out[name] = summarise(run(handler, [it.data for it in items], f"{name} development split"), labels)
        out[name]["labels"] = labels
        out[name]["calibrated_ece"] = calibrated_ece(torch.from_numpy(out[name]["_probs"]))
    return out


def confusions(summary: dict, top: int = 4) -> str:
    """The most common misreadings, refusals aside: "7→2 (12), ..."."""
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    for truth, guess in zip(summary["labels"], summary["_predicted"]):
        if truth != guess:
            pairs[(int(truth), int(guess))] += 1
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{t}→{g} ({n})" for (t, g), n in ranked) or "none"


def sources_section(m: dict) -> list[str]:
    """Per source's development split: figures, targets and where the data came from."""
    lines = ["", "## Other writers: development splits", "",
             "Handwriting MNIST never had, from training/sources.py. Each source's development split was held "
             "out before any training and never trained on: MNIST's by writer (QMNIST's writer ids), ORAND-CAR-A's "
             "by file (200 cheque amounts), pendigits' as a random tenth (the file has 30 writers but no writer "
             "ids and its order does not group them, so these writers are also in training: an optimistic "
             "figure), USPS's as its last 1,000 images (no writer ids). Every digit is rendered once as users "
             "send it (cheque digits cropped from the real scan with margins that take in neighbouring digits "
             "and separators; pen traces drawn on a transparent canvas with varied pen and smoothing; USPS as "
             "scans on paper, half with a neighbour's fragment) and sent through the handler. Accuracy counts a "
             "refusal as a miss. *ECE if calibrated* is what a perfectly calibrated model with the same "
             "confidences would show on a split of this size (median of 200 draws, each answer right with "
             "probability its confidence): ECE reads high on small sets. *Read twice*: the share the digits network "
             f"read at {SECOND_FROM:.1f}-{SECOND_TO:.1f} and the numbers network read again (the second reading, "
             f"multiplied in at weight {SECOND_WEIGHT}: handler/digits_handler.py).", "",
             "| source | digits | accuracy | target | refused | ECE | ECE if calibrated | read twice | most common confusions |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, title in SOURCE_NAMES.items():
        r = m["sources"][name]
        if "missing" in r:
            lines.append(f"| {title} | not measured: {r['missing']} | | | | | | | |")
            continue
        lines.append(f"| {title} | {r['count']:,} | **{r['accuracy']:.2%}** | ≥ {TARGET_SOURCES[name]:.1%} | "
                     f"{r['refused_rate']:.2%} | {r['ece']:.2%} | {r['calibrated_ece']:.2%} | "
                     f"{r.get('read_twice', 0) / r['count']:.1%} | {confusions(r)} |")
    lines += ["", "## Sources and licences", "", "| source | file | licence | public original |", "|---|---|---|---|",
              "| MNIST | data/mnist (make data) | CC BY-SA 3.0 (Y. LeCun, C. Cortes) | yann.lecun.com/exdb/mnist |"]
    lines += [f"| {name} | `{f.path}` | {f.licence} | {f.original} |" for name, f in SOURCE_FILES.items()]
    return lines


# The MNIST-only model (make train's seed 0, commit 9d329d4), the teacher of the shipped model's
# distillation: MNIST test as stored and as served.
MNIST_ONLY = {"stored": 0.9971, "served": 0.9965}
# digits 1.2 (commit 8a74db3: learned from scratch with the other writers, held to that model by
# distillation, without the plainer forms), through this card: MNIST test as stored and served,
# cheque digits, pen traces, non-digits refused.
BEFORE = {"version": "1.2", "stored": 0.9957, "served": 0.9951, "orand": 0.9594, "pendigits": 0.9853,
          "non_digits": 0.909}
# The kinds of non-digit BEFORE's figure is over (the card's set has had signs since 2026-12-03).
BEFORE_NON_DIGIT_KINDS = ("blank", "noise", "letter", "shapes", "scribble", "texture")


def non_digits_refused(non: dict[str, list[int]]) -> tuple[int, int]:
    """(refused, sent) over every kind of non-digit."""
    return sum(v[0] for v in non.values()), sum(v[1] for v in non.values())


def misses(m: dict, meta: dict) -> list[str]:
    """Why the card's missed targets are missed, with this card's own figures: a reason for each
    target this card misses (none for a target met), and the missed targets no reason covers yet."""
    def fig(name: str, key: str, fmt: str = ".1%") -> str:
        r = m["sources"][name]
        return "not measured" if "missing" in r or key not in r else format(r[key], fmt)

    stored, served = meta["metrics"]["accuracy"], m["mnist"]["accuracy_ignoring_refusals"]
    non = m["non_digits"]
    refused, sent = non_digits_refused({k: v for k, v in non.items() if k in BEFORE_NON_DIGIT_KINDS})
    recipe = meta.get("recipe", {})
    kind = {k: format(non[k][0] / non[k][1], ".1%") if k in non else "not measured" for k in ("scribble", "letter")}
    missed = [(name, want, got) for name, want, got, ok in issue12_rows(m, meta) if not ok]
    explained = {"mnist": [], "orand": [], "calibration": []}
    others = []
    for name, want, got in missed:
        group = ("mnist" if name.startswith("MNIST test") and "refused" not in name else
                 "orand" if name.startswith(SOURCE_NAMES["orand"] + ", development split") else
                 "calibration" if ": ECE" in name or "refused" in name and not name.startswith("non-digits") else None)
        (explained[group] if group else others).append(name)
    by = [f"{(TARGET_ACCURACY - stored) * 100:.2f} points as stored" if stored < TARGET_ACCURACY else "",
          f"{(TARGET_MNIST_SERVED - served) * 100:.2f} as served" if served < TARGET_MNIST_SERVED else ""]
    reasons = {
        "mnist":
        f"- **MNIST's targets: missed by {' and '.join(b for b in by if b)}.** Reading other writers costs MNIST: their styles "
        "make some of MNIST's digits ambiguous (9 read as 4 beside open 4s, 7 as 1 beside 1s with a long flag, "
        "2 as 7). This network "
        + (f"learned MNIST and the other writers together from scratch ({recipe.get('epochs')} epochs), held by a "
           f"distillation loss (weight {recipe.get('distill')}) to the MNIST-only model's readings of MNIST's "
           f"training images (make train's seed 0: {MNIST_ONLY['stored']:.2%} as stored, {MNIST_ONLY['served']:.2%} "
           "as served)" if recipe.get("teacher") and not recipe.get("init") else
           f"is digits {BEFORE['version']} (MNIST and the other writers learned together from scratch, 44 epochs, held "
           "by a distillation loss to the MNIST-only model's readings of MNIST's training images: make train's seed 0, "
           f"{MNIST_ONLY['stored']:.2%} as stored, {MNIST_ONLY['served']:.2%} as served) trained {recipe.get('epochs')} "
           f"epochs more with the plainer forms added, held the same way (weight {recipe.get('distill')})"
           if recipe.get("teacher") and recipe.get("init") else
           f"was trained {recipe.get('epochs')} epochs on MNIST and the other writers")
        + f": {stored:.2%} as stored and {served:.2%} as served, against {BEFORE['stored']:.2%} / "
        f"{BEFORE['served']:.2%} for digits {BEFORE['version']}, while it reads {fig('orand', 'accuracy')} of the cheque digits (was {BEFORE['orand']:.1%}), "
        f"{fig('pendigits', 'accuracy')} of the pen traces (was {BEFORE['pendigits']:.1%}) and refuses "
        f"{refused / sent:.1%} of the non-digits (was {BEFORE['non_digits']:.1%}; signs aside, which the set "
        "did not have then). Issue 12 puts generalisation "
        "to writers the model never saw above the last tenth of a point on one split. The other trade-offs "
        "measured (docs/training-report.md): the same from scratch without the teacher, 99.31% on MNIST; "
        "fine-tunes of the MNIST-only model, 99.16-99.58% as stored with cheques 79.6-93.4%; weights blended "
        "back towards it, at most 99.70% / 99.63% on MNIST with cheques 79.7% and pen 85.6%.",
        "orand":
        "- **Cheque digits.** Looked at one by one (version 1.2's 37 misses and refusals of the 911; version 1.3 "
        "misses 38, 33 of them the same digits), the misses are of three kinds, in about equal parts. Neighbours inside the crop: cursive amounts join a digit "
        "to the next one, and joined ink is one stroke that digit-finding by connected strokes cannot cut, so the "
        "network sees two digits (\"22\" read as 0, \"188\" as 9, runs of joined strokes refused). 1s: written "
        "with a flag and read as 7, or so thin beside a wide neighbour that digit-finding keeps the neighbour "
        "(a 1 read as the 5 beside it). Shapes that MNIST and the other sources hardly have: angular 5s read as 4, "
        "4s like an S, 6s and 9s with loops and tails. Reading a digit with its neighbours is what the `numbers` "
        "model does; digit-finding cannot tell which of two joined digits the crop was made for. Digits 1.4 "
        "has it read again what the digits network is unsure of (0.4-0.9), the digit nearest the crop's centre "
        f"multiplied in: {fig('orand', 'read_twice', ',')} of the {fig('orand', 'count', ',')} cheque digits were "
        "read twice, and the same network as 1.3 went from 95.83% to the figure above (docs/training-report.md).",
        "calibration":
        "- **Calibration and refusals.** The temperature is fitted on MNIST's held-out "
        "writers and a twentieth of each other source's training split. The cheque digits' ECE "
        f"({fig('orand', 'ece')}, target {TARGET_ECE:.0%}) compares with {fig('orand', 'calibrated_ece')}, what a "
        f"perfectly calibrated model with the same confidences would show on {fig('orand', 'count', ',')} digits "
        "(the sources table): on a split this small, ECE cannot tell 1% from perfect. Digits 1.4's second reading "
        "made it worse (1.3's network alone: 1.35%): the product of two readings is surer than either, and on the "
        "8% of cheque digits read twice it is surer than it is right. The handler refuses below "
        f"{MIN_CONFIDENCE:.0%} calibrated confidence: {fig('orand', 'refused_rate')} of the cheque digits (target "
        f"{TARGET_REFUSED:.1%}), most of them the unsure readings of joined neighbours above; "
        f"{fig('pendigits', 'refused_rate', '.2%')} of the pen traces ({round(m['sources']['pendigits'].get('refused', 0))} "
        f"of {fig('pendigits', 'count', ',')}: on a split this small, one digit is "
        f"{1 / max(m['sources']['pendigits'].get('count', 1), 1):.2%}), {fig('usps', 'refused_rate', '.2%')} of the USPS "
        f"scans and {m['mnist']['refused_rate']:.2%} of MNIST's. Scribbles are single strokes of digit-like size, so only the "
        f"model's confidence can refuse them: {kind['scribble']} (target {TARGET_NON_DIGIT_KIND:.0%}); letters "
        f"{kind['letter']}."}
    if not missed:
        return []
    lines = ["", "## Why targets are missed", ""] + [reasons[group] for group in reasons if explained[group]]
    if others:
        lines.append("- **Not yet looked into:** " + "; ".join(
            f"{name}: {got} (wanted {want})" for name, want, got in missed if name in others) + ".")
    return lines


def issue12_rows(m: dict, meta: dict) -> list[tuple[str, str, str, bool]]:
    """Issue 12's targets against this card's figures: (target, wanted, measured, met) each."""
    mnist, non = m["mnist"], m["non_digits"]
    stored, served = meta["metrics"]["accuracy"], mnist["accuracy_ignoring_refusals"]
    params = count_parameters(DigitNet(NetConfig(**meta["config"]))) + second_reading_parameters()
    refused, sent = non_digits_refused(non)
    non_rate = refused / sent
    rows = [
        ("MNIST test as stored", f"≥ {TARGET_ACCURACY:.2%}", f"{stored:.2%}", stored >= TARGET_ACCURACY),
        ("MNIST test through the handler", f"≥ {TARGET_MNIST_SERVED:.2%}", f"{served:.2%}", served >= TARGET_MNIST_SERVED),
    ]
    for name, title in SOURCE_NAMES.items():
        r = m["sources"][name]
        if "missing" in r:
            rows.append((f"{title}, development split", f"≥ {TARGET_SOURCES[name]:.1%}", "not measured", False))
            continue
        rows += [
            (f"{title}, development split (refusals are misses)", f"≥ {TARGET_SOURCES[name]:.1%}",
             f"{r['accuracy']:.2%}", r["accuracy"] >= TARGET_SOURCES[name]),
            (f"{title}: ECE", f"≤ {TARGET_ECE:.0%}", f"{r['ece']:.2%} (if calibrated: {r['calibrated_ece']:.2%})",
             r["ece"] <= TARGET_ECE),
            (f"{title}: real digits refused", f"≤ {TARGET_REFUSED:.1%}", f"{r['refused_rate']:.2%}",
             r["refused_rate"] <= TARGET_REFUSED),
        ]
    rows += [
        ("MNIST test: real digits refused", f"≤ {TARGET_REFUSED:.1%}", f"{mnist['refused_rate']:.2%}",
         mnist["refused_rate"] <= TARGET_REFUSED),
        ("non-digits refused", f"≥ {TARGET_NON_DIGITS:.0%}", f"{non_rate:.1%}", non_rate >= TARGET_NON_DIGITS),
    ]
    for kind in ("scribble", "letter"):
        if kind in non:
            rate = non[kind][0] / non[kind][1]
            rows.append((f"{kind}s refused", f"≥ {TARGET_NON_DIGIT_KIND:.0%}", f"{rate:.1%}", rate >= TARGET_NON_DIGIT_KIND))
    rows.append(("parameters (the digits network and the second reading's, numbers 1.4's first network)",
                 f"≤ {TARGET_PARAMS_12:,}", f"{params:,}", params <= TARGET_PARAMS_12))
    return rows


def second_reading_parameters() -> int:
    """The parameters of the network the digits handler reads unsure pictures again with
    (model/second_reading.pt: numbers 1.4's first network)."""
    extra = {"meta.json": ""}
    torch.jit.load(str(SECOND_FILE), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["meta.json"])
    return count_parameters(NumberNet(NumberNetConfig(**meta.get("members", [meta.get("config")])[0])))


def issue12_targets(m: dict, meta: dict) -> list[str]:
    """Issue 12's targets against this card's figures, as a table."""
    return (["| target | wanted | measured | met |", "|---|---:|---:|:-:|"] +
            [f"| {name} | {want} | {got} | {'yes' if ok else '**no**'} |" for name, want, got, ok in issue12_rows(m, meta)])


def served_spread(seeds: list[dict]) -> str:
    if not all("served_accuracy" in s for s in seeds):
        return ""
    accs = np.array([s["served_accuracy"] for s in seeds]) * 100
    return (f" As the service sees them (each test image put through `model.preprocess`): "
            f"**{accs.mean():.2f}% ± {accs.std(ddof=1):.2f}** (min {accs.min():.2f}%, max {accs.max():.2f}%).")


def targets_table(m: dict, meta: dict, seeds: list[dict]) -> list[str]:
    """Issue 5's targets against this card's figures."""
    mnist, wild = m["mnist"], m["wild"]
    tensor, served = meta["metrics"]["accuracy"], mnist["accuracy_ignoring_refusals"]
    gap = max(abs(wild["accuracy_ignoring_refusals"] - served), abs(wild["accuracy_ignoring_refusals"] - tensor))
    refused = (mnist["refused"] + wild["refused"]) / (mnist["count"] + wild["count"])
    params = count_parameters(DigitNet(NetConfig(**meta["config"])))
    rows = [
        ("MNIST test accuracy, the standard measure (the 10,000 test images as MNIST stores them)",
         f"≥ {TARGET_ACCURACY:.2%}", f"{tensor:.2%}", tensor >= TARGET_ACCURACY),
        ("the same through the handler (each image decoded and preprocessed again)",
         f"≥ {TARGET_ACCURACY:.2%}", f"{served:.2%}", served >= TARGET_ACCURACY),
        ("in the wild against clean MNIST (worse of the two clean figures)", f"within {TARGET_WILD_GAP * 100:.1f} points",
         f"{gap * 100:.2f} points", gap <= TARGET_WILD_GAP),
        ("expected calibration error (MNIST / in the wild)", f"≤ {TARGET_ECE:.0%}",
         f"{mnist['ece']:.2%} / {wild['ece']:.2%}", max(mnist["ece"], wild["ece"]) <= TARGET_ECE),
        ("real digits wrongly refused (MNIST and in the wild)", f"≤ {TARGET_REFUSED:.1%}", f"{refused:.2%}",
         refused <= TARGET_REFUSED),
        ("parameters", f"≤ {TARGET_PARAMS:,}", f"{params:,}", params <= TARGET_PARAMS),
    ]
    if seeds:
        minutes = float(np.median([s["train_seconds"] for s in seeds])) / 60
        alone = [s for s in seeds if "at once" not in s["machine"]]
        if alone:  # seeds that had the machine to themselves; the others shared its cores
            minutes = float(np.median([s["train_seconds"] for s in alone])) / 60
        n = len(alone) or len(seeds)
        rows.append((f"training time on this CPU ({'the seed' if n == 1 else f'median of the {n} seeds'}"
                     f"{' trained alone' if alone else ''})", f"≤ {TARGET_TRAIN_MIN} min (aim)",
                     f"{minutes:.0f} min", minutes <= TARGET_TRAIN_MIN))
    return (["| target | wanted | measured | met |", "|---|---:|---:|:-:|"] +
            [f"| {name} | {want} | {got} | {'yes' if ok else '**no**'} |" for name, want, got, ok in rows])


def write_card(m: dict) -> str:
    PICTURES.mkdir(parents=True, exist_ok=True)
    mnist, wild, labels = m["mnist"], m["wild"], m["labels"]
    meta = m["handler"].meta
    cm = confusion_matrix(torch.from_numpy(mnist["_predicted"]), torch.from_numpy(labels.astype(np.int64)))
    plot_confusion(cm.tolist(), PICTURES / "confusion.png", f"MNIST test: {mnist['accuracy_ignoring_refusals']:.2%}")
    plot_reliability({"MNIST test": (mnist["_probs"], labels), "in the wild": (wild["_probs"], labels)},
                     PICTURES / "reliability.png")
    plot_errors(m["images"], labels, mnist["_predicted"], PICTURES / "errors.png")
    plot_per_class({"MNIST test": (mnist["_predicted"], labels), "in the wild": (wild["_predicted"], labels)},
                   PICTURES / "per-class.png")
    seeds = json.loads(SEEDS.read_text()) if SEEDS.exists() else []
    recipe = meta.get("recipe", {})
    non_refused, non_total = non_digits_refused(m["non_digits"])
    digits_refused = mnist["refused"] + wild["refused"]
    lines = [
        "# Model card: digits",
        "",
        f"Generated by `make eval` from `model/digits.pt` (version {meta['metrics']['version']}) on {describe_machine()}, "
        f"torch {torch.__version__}; the run took {m['seconds']:.0f} s.",
        "Every figure comes from the real serving code path (the TorchServe handler decoding encoded "
        "images, preprocessing, the TorchScript model).",
        "",
        "## The model",
        "",
        f"- `DigitNet`: conv blocks {meta['config']['channels']}, 2x2 max pooling after "
        f"{['conv%d' % (i + 1) for i in meta['config']['pool_after']]}, dropout {meta['config']['dropout']}, "
        f"linear head; {count_parameters(DigitNet(NetConfig(**meta['config']))):,} parameters.",
        f"- Trained on 55,000 MNIST training images (5,000 held out to validate and to fit the "
        f"temperature {meta['metrics']['temperature']}), {recipe.get('epochs', '?')} epochs, with augmentation; "
        f"{recipe.get('served_mix', 0):.0%} of the images in each batch are taken as the service sees them "
        f"(through `model.preprocess`), the rest as MNIST stores them; see docs/training-report.md."
        if not recipe.get("sources") else
        (f"- Fine-tuned from {recipe['init']}" if recipe.get("init") else "- Trained from scratch")
        + f" for {recipe.get('epochs', '?')} epoch(s) on MNIST's "
        f"training images less a tenth of its writers (held out to validate and to fit the temperature "
        f"{meta['metrics']['temperature']}"
        + (f", with a twentieth of each other source's training split: {recipe.get('calibration_images', 0):,} "
           f"images" if recipe.get("calibrated_on_sources") else "")
        + f"), plus the training splits of {', '.join(x for x in recipe['sources'] if x != 'plain')} rendered "
        "as users send them"
        + (" and, in plainer forms (stretched to fill a square and thresholded, or drawn small with an aliased "
           "pen), digits of MNIST's, USPS's and pendigits' training splits" if "plain" in recipe["sources"] else "")
        + f", and {recipe.get('non_digits', 0):,} non-digits taught with a uniform target "
        f"(training/wild.py's training generators, not the card's)"
        + (f"; a distillation loss (weight {recipe['distill']}) kept its readings of MNIST's training images those "
           f"of {recipe.get('teacher') or recipe.get('init')}" + (" (make train's MNIST-only model)"
                                                                    if recipe.get("teacher") else "")
           if recipe.get("distill") else "")
        + "; see docs/training-report.md.",
        "",
        "## Headline figures",
        "",
        "| set | images | accuracy | ECE | refused |",
        "|---|---|---|---|---|",
        f"| MNIST test, as 28x28 tensors (how training evaluates) | {meta['metrics']['count']:,} | "
        f"{meta['metrics']['accuracy']:.2%} | | |",
        f"| MNIST test | {mnist['count']:,} | **{mnist['accuracy_ignoring_refusals']:.2%}** | {mnist['ece']:.2%} | "
        f"{mnist['refused']} ({mnist['refused_rate']:.2%}) |",
        f"| in the wild | {wild['count']:,} | **{wild['accuracy_ignoring_refusals']:.2%}** | {wild['ece']:.2%} | "
        f"{wild['refused']} ({wild['refused_rate']:.2%}) |",
        f"| non-digits | {non_total:,} | n/a | n/a | {non_refused} ({non_refused / non_total:.1%}) |",
        "",
        f"Accuracy counts the top guess whether or not it was refused. Through the handler, MNIST's own "
        f"images are decoded and put through preprocessing again (cropped, stroke-matched, refitted, recentred): "
        f"{(mnist['accuracy_ignoring_refusals'] - meta['metrics']['accuracy']) * 100:+.2f} points against the "
        f"tensors as MNIST stores them. In the wild minus clean (both through the handler): "
        f"{(wild['accuracy_ignoring_refusals'] - mnist['accuracy_ignoring_refusals']) * 100:+.2f} points; in the wild "
        f"minus the tensor figure: {(wild['accuracy_ignoring_refusals'] - meta['metrics']['accuracy']) * 100:+.2f} points. "
        f"Real digits wrongly refused: {digits_refused} of {mnist['count'] + wild['count']:,} "
        f"({digits_refused / (mnist['count'] + wild['count']):.2%}); the handler answers `\"digit\": null` with a "
        f"reason when the calibrated confidence is below {MIN_CONFIDENCE} or the image is not digit-like.",
    ]
    lines += ["", "## Targets: other writers and refusals (issue 12)", ""] + issue12_targets(m, meta)
    lines += sources_section(m) + forms_section(m) + misses(m, meta)
    lines += ["", "## Targets: MNIST (issue 5)", ""] + targets_table(m, meta, seeds)
    if seeds:
        accs = np.array([s["accuracy"] for s in seeds]) * 100
        lines += [
            "",
            "## The recipe over seeds",
            "",
            f"{len(seeds)} seeds of `make train`'s recipe: MNIST test accuracy **{accs.mean():.2f}% ± {accs.std(ddof=1):.2f}** "
            f"(mean ± sample standard deviation; min {accs.min():.2f}%, max {accs.max():.2f}%); each seed trained "
            "where the table's last column says (docs/seeds.json)." + served_spread(seeds),
            "",
            "| seed | accuracy (tensors) | accuracy (as served) | ECE | training time | how |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {s['seed']} | {s['accuracy']:.2%} | "
                  f"{format(s['served_accuracy'], '.2%') if 'served_accuracy' in s else 'n/a'} | {s['ece']:.2%} | "
                  f"{s['train_seconds'] / 60:.1f} min | {s['machine']} |"
                  for s in seeds]
    lines += [
        "",
        "## In the wild, by condition",
        "",
        "Every MNIST test digit re-drawn as a user's picture (training/wild.py): 48-300 px frames anywhere on a "
        "280x280 canvas, rotated up to 10 degrees, thick or thin strokes, three inks, three grounds "
        "(transparent canvas, white, paper with grain and uneven light), PNG or JPEG (quality 60-95).",
        "",
        "| condition | images | accuracy |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v[1]:,} | {v[0] / v[1]:.2%} |" for k, v in sorted(m["wild_by_kind"].items())]
    lines += ["", "## Non-digits refused", "", "| kind | refused |", "|---|---|"]
    lines += [f"| {k} | {v[0]} of {v[1]} ({v[0] / v[1]:.0%}) |" for k, v in m["non_digits"].items()]
    lines += [
        "",
        "## Pictures",
        "",
        "![confusion matrix](card/confusion.png)",
        "",
        "![reliability diagram](card/reliability.png)",
        "",
        "![per-class accuracy](card/per-class.png)",
        "",
        "![errors](card/errors.png)",
        "",
        "## Limits",
        "",
        "- One digit per image. Several separate digits get `\"digit\": null` with a reason that sends them to "
        "`/predictions/numbers`; digits joined into one stroke, or a digit inside other marks, are read as one shape.",
        "- Letters that look like digits (O, l, S, Z, B) are read as the digit; they are not in the "
        "non-digit set for that reason.",
        "- Signs drawn alone (the `sign` non-digits: dashes, equals signs, full stops, commas, plus signs and check "
        "marks, none of them in training): a dash or an equals sign is refused by its shape (the ink, or each of "
        "its bars, at least three times wider than tall), a full stop as one round dot (its largest disc covers "
        "most of its ink), the others only by the model's confidence. A comma alone is read as a 9 (27 of the "
        "card's 28), and a plus now and then as a 0, a 1 or a 4 (9 of 41; 2026-12-03; teaching separators as "
        "non-digits was tried and not shipped: docs/training-report.md); `numbers` answers `no_digit` for dashes, equals "
        "signs, full stops, and commas and quotes (a round head that holds half the strokes: "
        "`model.segment._comma`), and reads a plus now and then as a 4 or a 7 (5 of the card's 200 signs, "
        "2026-12-03).",
        "- Most of the training handwriting is still MNIST's (American, 1990s); the other sources add "
        "Uruguayan and Chilean cheque amounts, 30 pen-tablet writers and US envelopes: a few hundred "
        "writers more, not the world's handwriting.",
    ]
    text = "\n".join(lines) + "\n"
    (DOCS / "model-card.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="default: %(default)s")
    parser.add_argument("--non-digits", type=int, default=200, help="non-digits per kind (default: %(default)s)")
    args = parser.parse_args()
    print(write_card(measure(args.data_dir, args.non_digits)))


if __name__ == "__main__":
    main()
