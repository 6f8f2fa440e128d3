"""The model card's "Why targets are missed": a reason for each target the card misses, none for one met."""
from __future__ import annotations

import copy

from training import model_card

# digits 1.3's figures as its card gives them (MNIST, the sources' development splits, non-digits).
META = {"config": {"channels": [32, 32, 64, 64, 128], "pool_after": [1, 3], "dropout": 0.3, "num_classes": 10},
        "metrics": {"accuracy": 0.9958},
        "recipe": {"epochs": 5, "distill": 1.5, "teacher": "build/teacher/x.pt", "init": "digits 1.2"}}
CARD = {
    "mnist": {"accuracy_ignoring_refusals": 0.9949, "refused_rate": 0.0024},
    "sources": {
        "orand": {"accuracy": 0.9583, "ece": 0.0135, "calibrated_ece": 0.013, "count": 911,
                  "refused_rate": 0.0143, "refused": 13, "read_twice": 73},
        "pendigits": {"accuracy": 0.988, "ece": 0.006, "calibrated_ece": 0.008, "count": 749,
                      "refused_rate": 0.004, "refused": 3},
        "usps": {"accuracy": 0.996, "ece": 0.004, "calibrated_ece": 0.009, "count": 1000,
                 "refused_rate": 0.001, "refused": 1},
    },
    "non_digits": {"scribble": [173, 200], "letter": [173, 200], "noise": [200, 200]},
}


def met_everywhere() -> tuple[dict, dict]:
    m, meta = copy.deepcopy(CARD), copy.deepcopy(META)
    meta["metrics"]["accuracy"] = 0.9975
    m["mnist"]["accuracy_ignoring_refusals"] = 0.997
    m["sources"]["orand"].update(accuracy=0.985, ece=0.008, refused_rate=0.004)
    return m, meta


def test_the_shipped_cards_misses_each_get_their_reason():
    text = "\n".join(model_card.misses(CARD, META))
    assert "## Why targets are missed" in text
    assert "MNIST's targets: missed by 0.12 points as stored and 0.16 as served." in text
    assert "**Cheque digits.**" in text and "**Calibration and refusals.**" in text
    assert "73 of the 911 cheque digits were read twice" in text  # digits 1.4's second reading, counted
    assert "Not yet looked into" not in text  # every missed target has its reason


def test_a_card_that_meets_every_target_says_nothing_is_missed():
    m, meta = met_everywhere()
    assert all(ok for *_, ok in model_card.issue12_rows(m, meta))
    assert model_card.misses(m, meta) == []


def test_only_the_targets_missed_are_explained():
    m, meta = met_everywhere()
    m["mnist"]["accuracy_ignoring_refusals"] = 0.9960  # served only
    text = "\n".join(model_card.misses(m, meta))
    assert "MNIST's targets: missed by 0.05 as served." in text
    assert "as stored" not in text.split("**")[1]
    assert "Cheque digits" not in text and "Calibration and refusals" not in text


def test_a_missed_target_without_a_reason_is_named_not_hidden():
    m, meta = met_everywhere()
    m["sources"]["pendigits"]["accuracy"] = 0.97
    text = "\n".join(model_card.misses(m, meta))
    assert "**Not yet looked into:** UCI pendigits pen traces, development split (refusals are misses): 97.00% " \
           "(wanted ≥ 98.5%)." in text


def test_the_numbers_section_counts_non_digits_answered_and_refused():
    from training.numbers_eval import not_numbers
    records = ([{"truth": "letter", "status": 200, "text": "4", "confidence": 0.95}] * 3 +
               [{"truth": "letter", "status": 200, "text": None, "confidence": 0.3}] +
               [{"truth": "sign", "status": 422, "text": None, "confidence": 0.0}] * 2 +
               [{"truth": "sign", "status": 200, "text": "9", "confidence": 0.6}] * 2)
    table = "\n".join(not_numbers(records))
    assert "| letter | 4 | 25.0% | 75.0% | 75.0% |" in table
    assert "| sign | 4 | 50.0% | 50.0% | 0.0% |" in table
    assert "| all | 8 | 37.5% | 62.5% | 37.5% |" in table


def test_the_numbers_section_counts_separators_where_no_amount_has_one():
    from training.numbers_eval import separators
    records = [{"text": "125000", "written": "1,250.00"},  # thousands and cents: both where amounts have them
               {"text": "19571", "written": "19.571"},
               {"text": "5580", "written": "558.0"},      # a dot one digit before the end: surely wrong
               {"text": "405", "written": "4.0-5"},        # a dash is not an amount's: not counted either way
               {"text": "1250", "written": "12.50"},         # cents
               {"text": "12500", "written": "12,5.00"},      # thousands counted from the cents: wrong
               {"text": "2931", "written": "2931"},         # no separators
               {"text": None, "written": None}]             # unsure: nothing written
    assert separators(records) == {"amounts": 7, "marked": 6, "separators": 9, "odd": 2}


def test_the_numbers_section_counts_dates_read_and_written_and_signs_read_as_digits():
    import numpy as np

    from training.numbers_eval import signed_string, signs
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[:, 4:24, 12:16] = 255  # three upright strokes
    png, text, written = signed_string(images, np.array([1, 7, 4]), np.random.default_rng(0), "dd/dd")
    assert len(text) == 4 and set(text) <= set("174") and written == text[:2] + "/" + text[2:] and png[:4] == b"\x89PNG"
    records = [{"truth": "1205", "text": "1205", "guess": "1205", "written": "12/05"},   # read and written
               {"truth": "1205", "text": "1205", "guess": "1205", "written": "1205"},    # read, its slash not seen
               {"truth": "1205", "text": "12105", "guess": "12105", "written": "12105"},  # the slash read as a 1
               {"truth": "1205", "text": None, "guess": "1205", "written": None}]        # unsure
    table = "\n".join(signs({"dd/dd": (records, ["12/05"] * 4)}))
    assert "| `dd/dd` | 4 | 50.0% | 25.0% | 25.0% |" in table
