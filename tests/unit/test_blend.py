"""training.blend: the weights between a starting model and its fine-tune."""
from __future__ import annotations

import torch

from model.network import DigitNet
from training.blend import blend


def test_the_blend_runs_from_the_start_to_the_fine_tune():
    torch.manual_seed(0)
    start, tuned = DigitNet().state_dict(), DigitNet().state_dict()
    tuned["convs.0.bn.num_batches_tracked"] = torch.tensor(500)
    tuned["temperature"] = torch.tensor(0.7)
    assert all(torch.equal(blend(start, tuned, 0.0)[k], start[k]) for k in start if k not in
               ("convs.0.bn.num_batches_tracked", "temperature"))
    whole = blend(start, tuned, 1.0)
    for k in tuned:
        torch.testing.assert_close(whole[k], tuned[k])
    half = blend(start, tuned, 0.5)
    torch.testing.assert_close(half["fc.weight"], (start["fc.weight"] + tuned["fc.weight"]) / 2)
    # Counters and the temperature are not averaged: the temperature is fitted again after blending.
    assert half["convs.0.bn.num_batches_tracked"] == 500 and half["temperature"] == tuned["temperature"]
    net = DigitNet()
    net.load_state_dict(half)  # a network loads it as it is
