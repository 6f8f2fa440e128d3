"""`make seeds`: train the shipped recipe with other seeds and record the spread.

    python -m training.seeds --seeds 1 2

Each run writes to build/seeds/seed<N>/; the figures of every seed run so far (seed 0 is
the shipped model, from build/train/ or the existing record) are kept in docs/seeds.json,
which `make eval` quotes in the model card.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.train import parse_args, train

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "docs" / "seeds.json"
KEEP = ("seed", "accuracy", "ece", "errors", "served_accuracy", "served_errors", "train_seconds", "epochs",
        "parameters", "precision", "machine", "torch")


def record(metrics: dict) -> None:
    """Add or replace one seed's figures in docs/seeds.json."""
    runs = {r["seed"]: r for r in (json.loads(RECORD.read_text()) if RECORD.exists() else [])}
    runs[metrics["seed"]] = {k: metrics[k] for k in KEEP if k in metrics}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps([runs[s] for s in sorted(runs)], indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2],
                        help="seeds to train (default: %(default)s); none just records build/train")
    args = parser.parse_args()
    shipped = REPO / "build" / "train" / "metrics.json"
    if shipped.exists():
        record(json.loads(shipped.read_text()))
    for seed in args.seeds:
        record(train(parse_args(["--seed", str(seed), "--out", str(REPO / "build" / "seeds" / f"seed{seed}")])))
    print(RECORD.read_text())


if __name__ == "__main__":
    main()
