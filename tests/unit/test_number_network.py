"""The numbers network's CTC reading on constructed scores, the strip it reads, and the boxes
mapped back to the picture sent."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.number_network import (BLANK, SHIFTS, STRIDE, STRIP_HEIGHT, NumberEnsemble, NumberNet, choose, decode,
                                  Platt, read, read_members, regions, string_log_probability)
from model.preprocess import InputError
from model.segment import STRIP_MARGIN, strip
from tests.conftest import encode, number_png


def scores_for(path: list[int], sure: float = 0.9) -> np.ndarray:
    """(T, 11) log-probabilities whose best class per column is ``path`` (a class per column)."""
    p = np.full((len(path), 11), (1 - sure) / 10, np.float32)
    p[np.arange(len(path)), path] = sure
    return np.log(p)


def test_best_path_collapses_repeats_drops_blanks_and_keeps_each_digits_columns():
    b = BLANK
    # 2 2 _ 9 _ _ 3 3 3 _ 3 : "2933" (a blank between the 3s keeps both)
    reads = decode(scores_for([3, 3, b, 10, b, b, 4, 4, 4, b, 4]))
    assert [r.digit for r in reads] == [2, 9, 3, 3]
    assert [(r.first, r.last) for r in reads] == [(0, 1), (3, 3), (6, 8), (10, 10)]
    for r in reads:
        assert r.first <= r.peak <= r.last
        assert r.probabilities.shape == (10,) and r.probabilities.sum() == pytest.approx(1, abs=1e-6)
        assert r.probabilities.argmax() == r.digit  # the blank's share is renormalised away
    assert decode(scores_for([b, b, b])) == []


def test_the_string_probability_sums_every_alignment():
    """Against a brute-force sum over all 11**T paths that collapse to the text."""
    rng = np.random.default_rng(0)
    T = 4
    logits = torch.from_numpy(rng.normal(size=(2, T, 11)).astype(np.float32))
    scores = logits.log_softmax(2)
    texts = [[7, 7], [1]]

    def collapse(path):
        return [k - 1 for k, _ in itertools.groupby(path) if k != BLANK]

    for n, text in enumerate(texts):
        brute = sum(float(np.exp(sum(scores[n, t, c] for t, c in enumerate(path))))
                    for path in itertools.product(range(11), repeat=T) if collapse(path) == text)
        got = string_log_probability(scores, torch.tensor([T, T]), texts)[n]
        assert float(got.exp()) == pytest.approx(brute, rel=1e-4)


def test_regions_part_neighbours_halfway_between_their_peaks():
    reads = decode(scores_for([0, 3, 0, 0, 10, 0, 0, 0, 4, 0]))
    spans = regions(reads, width=10 * STRIDE, offset=0.0)
    centres = [(r.peak + 0.5) * STRIDE for r in reads]
    assert spans[0][0] == 0 and spans[-1][1] == 10 * STRIDE
    assert spans[0][1] == spans[1][0] == pytest.approx((centres[0] + centres[1]) / 2)
    assert all(lo < c < hi for (lo, hi), c in zip(spans, centres))


def test_string_confidence_is_a_probability_rising_with_the_string_probability():
    for platt in (Platt(1.5, 2.0, "logp"), Platt(0.7, -0.1)):
        values = [platt(lp) for lp in (-60.0, -30.0, -3.0, -0.5, -1e-3, -1e-9, 0.0)]
        assert all(0 < v <= 1 for v in values) and values == sorted(values) and values[-2] < 1, platt


def test_a_sure_reading_is_not_capped_below_what_its_odds_say():
    """On log P, no reading could be more sure than sigmoid(b) (numbers 1.2 said at most 0.93);
    on its log-odds, P = 0.999 has odds 999:1 and the confidence follows them."""
    old, new = Platt(3.4, 2.65, "logp"), Platt(1.0, 0.0)
    assert old(0.0) == pytest.approx(1 / (1 + np.exp(-2.65))) and old(np.log(0.999)) < 0.94
    assert new(np.log(0.999)) == pytest.approx(0.999, abs=1e-6) and new(np.log(0.5)) == pytest.approx(0.5)
    assert new(0.0) > 0.999999  # P rounded to 1: the surest it gets, not infinite odds


def test_an_export_without_a_calibration_input_is_calibrated_on_log_p():
    """Exports before numbers 1.3 kept only a and b, fitted on log P: they still read so."""
    assert Platt.from_meta({"a": 3.4, "b": 2.65}) == Platt(3.4, 2.65, "logp")
    assert Platt.from_meta(Platt(0.7, -0.1).to_meta()) == Platt(0.7, -0.1, "logit")
    with pytest.raises(ValueError, match="calibration input"):
        Platt(1.0, 0.0, "probit")(-0.1)


def test_the_strip_is_the_band_of_digits_at_the_networks_height_and_maps_back_to_the_picture():
    png, lefts = number_png("2931", [30, -6, 30])  # the 9 and the 3 touch
    s = strip(png)
    height, width = s.image.shape
    assert height == STRIP_HEIGHT and width % STRIDE == 0
    assert s.image.max() == pytest.approx(1.0) and s.image[:, :STRIP_MARGIN].max() == 0  # ground either side
    x, y, w, h = s.box(0, width)  # the whole strip: every digit, in the canvas's pixels
    assert abs(x - lefts[0]) <= 3 and 150 < h <= 280 and x + w > lefts[-1]
    # the stretch of the strip left of the 9 holds only the 2
    nine = (lefts[1] / s.scale[0] - s.origin[0]) / s.per_pixel + STRIP_MARGIN
    two = s.box(0, nine - 1)
    assert abs(two[0] - lefts[0]) <= 3 and two[0] + two[2] <= lefts[1] + 3


def test_a_strip_batch_reads_the_same_padded_or_alone():
    net = NumberNet().eval()
    a, b = strip(number_png("2931", 30)[0]).image, strip(number_png("45", 30)[0]).image
    batch = np.zeros((2, 1, STRIP_HEIGHT, a.shape[1]), np.float32)
    batch[0, 0], batch[1, 0, :, :b.shape[1]] = a, b
    with torch.inference_mode():
        together, _ = net(torch.from_numpy(batch), torch.tensor([a.shape[1], b.shape[1]]))
        alone, _ = net(torch.from_numpy(b)[None, None])
        unmasked, _ = net(torch.from_numpy(batch))
    assert torch.allclose(together[1, :b.shape[1] // STRIDE], alone[0], atol=1e-5)
    assert not torch.allclose(unmasked[1, :b.shape[1] // STRIDE], alone[0], atol=1e-5)  # what the widths are for


def test_read_averages_the_strip_read_as_it_is_and_a_row_up_and_down():
    """What the handler and the calibration read: per column, the mean of the probabilities of
    the strip and its copies moved by SHIFTS rows, each strip's padding still changing nothing."""
    torch.manual_seed(0)
    net = NumberNet().eval()
    a, b = strip(number_png("2931", 30)[0]).image, strip(number_png("45", 30)[0]).image
    batch = np.zeros((2, 1, STRIP_HEIGHT, a.shape[1]), np.float32)
    batch[0, 0], batch[1, 0, :, :b.shape[1]] = a, b
    with torch.inference_mode():
        scores, maps = read(net, torch.from_numpy(batch), torch.tensor([a.shape[1], b.shape[1]]))
        one = torch.from_numpy(b)[None, None]
        each = [net(torch.roll(one, shift, dims=2))[0].exp() for shift in SHIFTS]
        plain, plain_maps = net(torch.from_numpy(batch), torch.tensor([a.shape[1], b.shape[1]]))
    assert sorted(SHIFTS) == [-1, 0, 1]
    expected = torch.stack(each).mean(0)[0]
    assert torch.allclose(scores[1, :b.shape[1] // STRIDE].exp(), expected, atol=1e-5)
    assert torch.allclose(scores.exp().sum(2), torch.ones(2, scores.shape[1]), atol=1e-5)
    assert not torch.allclose(scores[1, :b.shape[1] // STRIDE].exp(), each[0][0], atol=1e-5)  # moved copies count
    assert len(maps) == len(plain_maps) and all(torch.equal(m, p) for m, p in zip(maps, plain_maps))


def test_one_member_chooses_the_best_path_and_its_probability():
    b = BLANK
    scores = torch.from_numpy(np.stack([scores_for([3, b, 10, 10, b, 4]), scores_for([b, 6, b, b, b, b])]))
    lengths = torch.tensor([6, 6])
    chosen = choose([scores], lengths)
    assert [[r.digit for r in c.reads] for c in chosen] == [[2, 9, 3], [5]]
    expected = string_log_probability(scores, lengths, [[2, 9, 3], [5]])
    assert [c.logp for c in chosen] == pytest.approx(expected.tolist()) and {c.member for c in chosen} == {0}


def test_members_that_disagree_give_the_text_most_probable_on_average():
    """Member 0 reads 27 barely, member 1 reads 21 surely: 21 wins, with member 1's digits and
    a probability between the two members' for it; where they agree, that text and member 0."""
    b = BLANK
    unsure = np.exp(scores_for([3, b, 8, b, b]))
    unsure[2] = 0.01
    unsure[2, 8], unsure[2, 2] = 0.5, 0.42  # column 2: a 7 at 0.5, a 1 at 0.42
    unsure = np.log(unsure)
    sure = scores_for([3, b, 2, b, b], sure=0.99)
    assert [r.digit for r in decode(unsure)] == [2, 7] and [r.digit for r in decode(sure)] == [2, 1]
    members = [torch.from_numpy(unsure)[None], torch.from_numpy(sure)[None]]
    lengths = torch.tensor([5])
    (chosen,) = choose(members, lengths)
    assert [r.digit for r in chosen.reads] == [2, 1] and chosen.member == 1
    each = [float(string_log_probability(m, lengths, [[2, 1]])) for m in members]
    assert chosen.logp == pytest.approx(float(np.log(np.mean(np.exp(each)))), abs=1e-5)
    (agreed,) = choose([members[1], members[1]], lengths)
    assert [r.digit for r in agreed.reads] == [2, 1] and agreed.member == 0
    assert agreed.logp == pytest.approx(each[1], abs=1e-5)


def test_an_ensemble_reads_each_member_in_one_call_and_scripts():
    torch.manual_seed(0)
    nets = [NumberNet().eval(), NumberNet().eval()]
    ensemble = NumberEnsemble(nets).eval()
    x, widths = torch.rand(2, 1, STRIP_HEIGHT, 64), torch.tensor([64, 40])
    with torch.inference_mode():
        members, maps = read_members(torch.jit.script(ensemble), x, widths)
        alone = [read(n, x, widths)[0] for n in nets]
        first, first_maps = read(nets[0], x, widths)
    assert len(members) == 2 and all(torch.allclose(m, a, atol=1e-5) for m, a in zip(members, alone))
    assert all(torch.allclose(m, f, atol=1e-5) for m, f in zip(maps, first_maps))  # the page's maps: member 0's
    with torch.inference_mode():  # a cascade has the first member's reading: the rest, from member 1 on
        rest, _ = read_members(torch.jit.script(ensemble), x, widths, start=1)
    assert len(rest) == 1 and torch.allclose(rest[0], alone[1], atol=1e-5)


def test_a_blank_picture_is_no_digit():
    """(Dots, dashes, underlines and check marks reach the network, which reads no digit in
    them: tests/handler/test_numbers_handler.py.)"""
    from PIL import Image
    with pytest.raises(InputError) as e:
        strip(encode(Image.new("RGBA", (600, 280)), "PNG"))
    assert e.value.code == "no_digit" and e.value.status == 422
