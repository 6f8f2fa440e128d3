"""The numbers training's batches: strips of about one width each (a batch is padded to its
widest), every new string trained on once and soon, the rest of each batch replayed."""
from __future__ import annotations

from itertools import count

import numpy as np

from model.number_network import STRIP_HEIGHT
from training.train_numbers import WAITING, Batches, Sample


def strings(seed: int = 1):
    """New strings of 2-60 columns (8-240 strip pixels), numbered in the order they are made."""
    rng = np.random.default_rng(seed)
    for k in count():
        yield Sample(np.zeros((STRIP_HEIGHT, 4 * int(rng.integers(2, 61))), np.float32), [k], "mnist")


def padding(batch: list[Sample]) -> float:
    """The share of the padded batch that is padding."""
    widths = np.array([s.strip.shape[1] for s in batch])
    return 1.0 - widths.mean() / widths.max()


def test_batches_hold_strips_of_about_one_width_and_every_new_string_once():
    size, fresh = 32, 0.35
    batches = Batches(strings(), size, fresh, replay=400, rng=np.random.default_rng(0))
    first_seen: dict[int, int] = {}
    new_per_batch, padded = [], []
    for step in range(400):
        batch = batches.next()
        assert len(batch) == size
        new = [s.text[0] for s in batch if s.text[0] not in first_seen]
        first_seen.update({k: step for k in new})
        new_per_batch.append(len(new))
        padded.append(padding(batch))
    # the first batch is all new (nothing to replay yet), then 35% of each
    assert new_per_batch[0] == size and set(new_per_batch[1:]) == {round(fresh * size)}
    # every string made is trained on, and none waits for ever: the oldest waiting string goes
    # into every batch, so one waits at most as many batches as strings wait in line
    made = sum(batches.made.values())
    waiting = {s.text[0] for s in batches.waiting}
    assert set(first_seen) | waiting == set(range(made)) and not waiting & set(first_seen)
    per_batch = round(fresh * size)
    late = max(step - (k - size) // per_batch for k, step in first_seen.items() if k >= size)
    assert late <= WAITING * per_batch
    # random batches of such strings are padded by about half; these by much less (seeded: fixed)
    random_batches = [[next(g) for _ in range(size)] for g in [strings(3)] for _ in range(200)]
    assert np.mean(padded[1:]) < 0.6 * np.mean([padding(b) for b in random_batches])
