"""Write the network `digits` reads unsure pictures again with: a numbers export's first network
alone, as it is in that export (``handler.digits_handler.SECOND_FILE``).

    python -m training.second_reading SRC_NUMBERS_PT model/second_reading.pt   # make second-reading

``digits`` 1.4's second reading was chosen and measured with numbers 1.4's first network
(docs/training-report.md). A file of its own keeps digits' answers the same when the numbers
model changes: digits 1.4 reads with numbers 1.4's first network whatever numbers serves. The
file holds that network's weights, the peak offset the export measured for it (where its CTC
peak lies from a digit's centre, for the digit nearest the picture's centre), and the export's
version; nothing is trained or calibrated again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.number_network import STRIP_HEIGHT, NumberEnsemble
from training.train_numbers import load_ensemble


def extract(source: Path, out: Path) -> dict:
    """Write ``source``'s first network alone to ``out``; returns the meta written with it."""
    extra = {"meta.json": ""}
    torch.jit.load(str(source), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["meta.json"])
    ensemble, _ = load_ensemble([Path(f"{source}#1")])
    first = NumberEnsemble(ensemble.nets[:1]).eval()
    offset = float(meta.get("peak_offsets", [meta.get("peak_offset", 0.0)])[0])
    version = str(meta.get("metrics", {}).get("version", ""))
    written = {"config": first.config.to_dict(), "layers": first.layer_names, "members": [first.config.to_dict()],
               "peak_offset": offset, "peak_offsets": [offset], "metrics": {"version": version},
               "source": f"numbers {version}'s first network ({source.name}), as it is there"}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(first), str(out), _extra_files={"meta.json": json.dumps(written)})
    with torch.inference_mode():  # the same scores as the export's own forward (its first network's)
        sample = torch.rand(2, 1, STRIP_HEIGHT, 96)
        torch.testing.assert_close(torch.jit.load(str(out))(sample)[0], torch.jit.load(str(source))(sample)[0])
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a numbers export (numbers.pt)")
    parser.add_argument("out", type=Path, help="where to write its first network alone")
    args = parser.parse_args()
    print(json.dumps(extract(args.source, args.out), indent=1))


if __name__ == "__main__":
    main()
