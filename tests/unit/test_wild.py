"""The evaluation sets of `make eval`: realistic renderings and non-digits, through the handler."""
from __future__ import annotations

import numpy as np
import pytest

from model.preprocess import InputError, preprocess
from serving import local
from tests.conftest import SHIPPED_MODEL
from training.data import load_split
from training.wild import NON_DIGITS, non_digit_set, training_separators, wild_set


@pytest.fixture(scope="module")
def test_digits():
    images, labels = load_split("test")
    pick = np.random.default_rng(7).permutation(len(labels))[:120]
    return images[pick], labels[pick]


def test_sets_are_deterministic(test_digits):
    images, labels = test_digits
    a, b = wild_set(images[:5], labels[:5], seed=3), wild_set(images[:5], labels[:5], seed=3)
    assert [s.data for s in a] == [s.data for s in b]
    assert [s.data for s in wild_set(images[:5], labels[:5], seed=4)] != [s.data for s in a]
    assert [s.data for s in non_digit_set(2, seed=1)] == [s.data for s in non_digit_set(2, seed=1)]


def test_wild_digits_cover_every_condition_and_are_read(test_digits):
    images, labels = test_digits
    samples = wild_set(images, labels, seed=0)
    kinds = {part for s in samples for part in s.kind.split("/")}
    assert {"transparent", "white", "paper", "black", "blue", "red", "thick", "thin", "png", "jpeg"} <= kinds
    handler = local.load_handler(SHIPPED_MODEL)
    results, _ = local.handle(handler, [{"body": s.data} for s in samples], {"X-Activations": "off"})
    read = sum(status == 200 and answer["digit"] == s.label for s, (status, answer) in zip(samples, results))
    assert read >= 0.97 * len(samples), f"read {read} of {len(samples)}"


def test_non_digits_are_mostly_refused():
    samples = non_digit_set(8, seed=5)
    assert {s.kind for s in samples} == set(NON_DIGITS)
    handler = local.load_handler(SHIPPED_MODEL)
    results, _ = local.handle(handler, [{"body": s.data} for s in samples], {"X-Activations": "off"})
    refused = {kind: 0 for kind in NON_DIGITS}
    for s, (status, answer) in zip(samples, results):
        refused[s.kind] += status == 422 or answer.get("digit") is None
    assert refused["noise"] == 8 and refused["blank"] >= 6, refused
    assert sum(refused.values()) >= 0.4 * len(samples), refused


def test_training_separators_are_seeded_marks_with_ink():
    """training.train --separators' commas, quotes, colons and full stops: the same for a seed,
    each with ink that preprocessing finds (none comes out blank)."""
    a = training_separators(12, seed=3)
    assert [s.data for s in a] == [s.data for s in training_separators(12, seed=3)]
    assert [s.data for s in a] != [s.data for s in training_separators(12, seed=4)]
    assert {s.label for s in a} == {-1}
    for s in a:
        assert preprocess(s.data).max() > 0.5


def test_blank_pages_are_blank_to_preprocessing():
    for s in non_digit_set(6, seed=2):
        if s.kind == "blank":
            with pytest.raises(InputError):
                preprocess(s.data)
