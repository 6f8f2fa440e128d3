"""The numbers network: a small CNN + CTC reader of a whole string of digits, no segmentation.

Input: strips from ``model.segment.strip`` (N, 1, STRIP_HEIGHT, W): ink near 1 on 0, the
string's digits about 3/4 of the height, W a multiple of STRIDE (a batch is padded with 0 on
the right to its widest strip). Four 3x3 conv blocks; the first two halve height and width,
the last two halve the height only, then the height is averaged away: one feature column per
STRIDE pixels of the strip. Three 1-D convolutions over those columns (each column then sees
about 3 digits of context) give 11 scores per column: CTC's blank (0) and the digits 0-9 (1-10).

One forward call returns the scores and the conv blocks' activations (the page's maps), as the
digits network does (``model/network.py``). ``decode`` reads the scores the CTC way (best path:
collapse repeats, drop blanks) and keeps, for every digit it reads, the columns it was read in.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from model.network import ConvBlock  # the digits network's block: 3x3 conv, batch norm, ReLU

STRIP_HEIGHT = 32  # pixels: a digit about 24 of them, as MNIST's 20 of 28
STRIDE = 4         # strip pixels per output column
BLANK = 0          # CTC's blank class; class d + 1 is digit d
INK_MEAN = 0.1     # about the mean and spread of the strips' pixels, so the first layer sees
INK_STD = 0.3      # inputs near zero mean and unit spread


@dataclass
class NumberNetConfig:
    """Everything needed to rebuild the network; stored with the export."""

    channels: List[int] = field(default_factory=lambda: [32, 48, 64, 96])
    hidden: int = 128
    kernel: int = 5      # of the 1-D convolutions over columns
    layers_1d: int = 3
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class _Column(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class NumberNet(nn.Module):
    """(N, 1, H, W) strips in [0, 1] to (scores (N, W / STRIDE, 11), activations).

    ``scores`` are log-probabilities per column (log-softmax of the logits divided by
    ``temperature``). ``activations`` holds the four conv blocks' post-ReLU outputs, named by
    ``layer_names``."""

    def __init__(self, config: NumberNetConfig | None = None):
        super().__init__()
        self.config = config or NumberNetConfig()
        chans = [1] + list(self.config.channels)
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1]) for i in range(len(chans) - 1))
        self.layer_names: List[str] = [f"conv{i + 1}" for i in range(len(self.blocks))]
        cols = [chans[-1]] + [self.config.hidden] * self.config.layers_1d
        self.columns = nn.ModuleList(_Column(cols[i], cols[i + 1], self.config.kernel)
                                     for i in range(self.config.layers_1d))
        self.dropout = nn.Dropout(self.config.dropout)
        self.out = nn.Conv1d(self.config.hidden, 11, 1)
        self.register_buffer("mean", torch.tensor(INK_MEAN))
        self.register_buffer("std", torch.tensor(INK_STD))
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, strips: torch.Tensor, widths: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``widths``: each strip's own width in pixels (a multiple of STRIDE) when the batch is
        padded to its widest; every layer's input beyond it is then zeroed, as a convolution's
        own padding is, so a strip reads the same padded in a batch or alone."""
        x = (strips - self.mean) / self.std
        x = _keep(x, widths, 1)
        activations: List[torch.Tensor] = []
        step = 1
        for i, block in enumerate(self.blocks):
            x = _keep(block(x), widths, step)
            activations.append(x)
            if i < 2:
                x = F.max_pool2d(x, (2, 2))
                step *= 2
            else:
                x = F.max_pool2d(x, (2, 1))
        x = x.mean(dim=2)  # (N, C, W / STRIDE): the height is gone
        for column in self.columns:
            x = _keep(column(x), widths, step)
        logits = self.out(self.dropout(x)).transpose(1, 2)  # (N, T, 11)
        return F.log_softmax(logits / self.temperature, dim=2), activations


class NumberEnsemble(nn.Module):
    """Several NumberNets trained apart (another width, another run) reading the same strips.
    ``forward`` is the first member's, so the maps and the warm-up are a NumberNet's; ``each``
    gives every member's scores in one call, for ``read_members`` and ``choose``."""

    def __init__(self, nets: List[NumberNet]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.config = nets[0].config
        self.layer_names: List[str] = nets[0].layer_names

    def forward(self, strips: torch.Tensor, widths: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return self.nets[0](strips, widths)

    @torch.jit.export
    def each(self, strips: torch.Tensor, widths: Optional[torch.Tensor] = None, start: int = 0
             ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Every member's (N, T, 11) log-probabilities from member ``start`` on (a cascade has the
        first's already), and the activations of the first member read."""
        scores: List[torch.Tensor] = []
        activations: List[torch.Tensor] = []
        for i, net in enumerate(self.nets):
            if i >= start:
                s, a = net(strips, widths)
                scores.append(s)
                if i == start:
                    activations = a
        return scores, activations


def _keep(x: torch.Tensor, widths: Optional[torch.Tensor], step: int) -> torch.Tensor:
    """``x`` (N, ..., W') with the columns at or beyond each strip's width (``widths`` in strip
    pixels, ``step`` strip pixels per column of ``x``) set to 0; ``x`` itself without widths."""
    if widths is None:
        return x
    inside = torch.arange(x.shape[-1], device=x.device)[None, :] < (widths // step)[:, None]
    shape = [x.shape[0]] + [1] * (x.dim() - 2) + [x.shape[-1]]
    return x * inside.view(shape).to(x.dtype)


SHIFTS = (0, -1, 1)  # rows each strip is moved by for one of its readings


def read(net: nn.Module, strips: torch.Tensor, widths: Optional[torch.Tensor] = None
         ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``net``'s (N, T, 11) log-probabilities for ``strips``, each strip read as it is and moved
    a row up and down (SHIFTS), the readings' column probabilities averaged, in one forward
    pass; and the activations of the unmoved strips. A digit a row off the heights training put
    it at is read more surely this way (docs/training-report-numbers.md). An ensemble's: its
    first member's (``read_members`` gives every member's)."""
    members, activations = read_members(net, strips, widths)
    return members[0], activations


def read_members(net: nn.Module, strips: torch.Tensor, widths: Optional[torch.Tensor] = None,
                 first_only: bool = False, start: int = 0, unmoved: Optional[torch.Tensor] = None
                 ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """``read`` for a NumberNet or a NumberEnsemble: each member's (N, T, 11) log-probabilities
    (one for a NumberNet, or with ``first_only``; an ensemble's from member ``start`` on), every
    strip read as it is and moved a row up and down, in one call; and the activations of the
    unmoved strips by the first member read. ``unmoved``: the first member's scores (its forward's
    log-probabilities) for the strips as they are, already in hand: only the moved readings are
    made, averaged with it (no activations then)."""
    n = strips.shape[0]
    shifts = [s for s in SHIFTS if s or unmoved is None]
    batch = torch.cat([torch.roll(strips, shift, dims=2) if shift else strips for shift in shifts])
    repeated = None if widths is None else widths.repeat(len(shifts))
    if hasattr(net, "each") and not first_only:
        members, activations = net.each(batch, repeated, start) if start else net.each(batch, repeated)
    else:
        scores, activations = net(batch, repeated)
        members = [scores]
    out = []
    for i, scores in enumerate(members):
        readings = scores.float().exp().view(len(shifts), n, scores.shape[1], scores.shape[2])
        if unmoved is not None and i == 0:
            readings = torch.cat([unmoved.float().exp()[None], readings])  # in SHIFTS' order, as if read together
        out.append(readings.mean(0).clamp_min(1e-30).log())
    return out, ([a[:n] for a in activations] if unmoved is None else [])


@dataclass
class Choice:
    """One strip's reading: the digits as the member that read them so (``member``), and
    log P(text), P the members' mean (the string confidence's input)."""
    reads: list
    logp: float
    member: int


def choose(members: List[torch.Tensor], lengths: torch.Tensor) -> list[Choice]:
    """Each strip's reading: every member's best path is a candidate text (no digit at all is
    one too), each candidate scored by its CTC probability averaged over the members (every
    alignment summed within a member); the most probable wins. Averaging the members' columns
    would not do: they put a digit's spike in different columns (a product of the members'
    probabilities chose as well but left the confidence worse calibrated; docs/training-report-numbers.md).
    With one member this is best-path decoding and its log P."""
    decoded = [[decode(m[k, :int(lengths[k])].numpy()) for k in range(len(lengths))] for m in members]
    candidates: list[list[tuple[int, ...]]] = []
    for k in range(len(lengths)):
        texts: list[tuple[int, ...]] = []
        for reads in decoded:
            text = tuple(r.digit for r in reads[k])
            if text not in texts:
                texts.append(text)
        candidates.append(texts)
    owner = [k for k, texts in enumerate(candidates) for _ in texts]
    flat = [list(t) for texts in candidates for t in texts]
    index = torch.tensor(owner, dtype=torch.long)
    each = torch.stack([string_log_probability(m.index_select(0, index), lengths.index_select(0, index), flat)
                        for m in members])
    total = torch.logsumexp(each, 0) - math.log(len(members))  # log of the members' mean P(text)
    out, at = [], 0
    for k, texts in enumerate(candidates):
        scores = total[at:at + len(texts)]
        best = int(scores.argmax())
        member = next(i for i, reads in enumerate(decoded) if tuple(r.digit for r in reads[k]) == texts[best])
        out.append(Choice(decoded[member][k], float(scores[best]), member))
        at += len(texts)
    return out


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@dataclass
class Read:
    """One digit as the network read it: the digit, its 10 probabilities (its peak column's,
    renormalised over the digits) and the columns [first, last] of its run in the best path."""
    digit: int
    probabilities: np.ndarray
    first: int
    last: int
    peak: int


def decode(scores: np.ndarray) -> list[Read]:
    """Best-path CTC decoding of one strip's (T, 11) log-probabilities: the most likely class
    per column, repeats collapsed, blanks dropped. Each digit keeps its run of columns and the
    column where it is surest (its peak)."""
    best = scores.argmax(axis=1)
    out: list[Read] = []
    t = 0
    while t < len(best):
        label = int(best[t])
        end = t
        while end + 1 < len(best) and best[end + 1] == label:
            end += 1
        if label != BLANK:
            peak = t + int(scores[t:end + 1, label].argmax())
            p = np.exp(scores[peak, 1:].astype(np.float64))
            out.append(Read(label - 1, (p / p.sum()).astype(np.float32), t, end, peak))
        t = end + 1
    return out


def string_log_probability(scores: torch.Tensor, lengths: torch.Tensor, texts: list[list[int]]) -> torch.Tensor:
    """log P(text | strip) under CTC (every alignment summed, not just the best path), for a
    batch of (N, T, 11) log-probabilities with each strip's own column count ``lengths``;
    an empty text is the all-blank path."""
    targets = torch.tensor([d + 1 for t in texts for d in t], dtype=torch.long)
    target_lengths = torch.tensor([len(t) for t in texts], dtype=torch.long)
    loss = F.ctc_loss(scores.transpose(0, 1), targets, lengths, target_lengths, blank=BLANK,
                      reduction="none", zero_infinity=False)
    return -loss


def centres(reads: list[Read], offset: float = 0.0) -> list[float]:
    """Each read digit's centre in strip pixels: its peak column's centre moved by ``offset``
    (where CTC puts a digit's peak relative to the digit's centre, measured at training)."""
    return [(r.peak + 0.5) * STRIDE + offset for r in reads]


def regions(reads: list[Read], width: int, offset: float = 0.0) -> list[tuple[float, float]]:
    """Each read digit's stretch of the strip, [left, right) in strip pixels, around its
    ``centres`` (``stretches``)."""
    return stretches(centres(reads, offset), width)


def stretches(middle: list[float], width: int) -> list[tuple[float, float]]:
    """The stretches of a strip ``width`` pixels wide around digit centres ``middle`` (left to
    right): neighbours part halfway between centres; the first starts at 0, the last ends at
    ``width``."""
    bounds = [0.0] + [(a + b) / 2 for a, b in zip(middle, middle[1:])] + [float(width)]
    return [(max(0.0, lo), min(float(width), hi)) for lo, hi in zip(bounds, bounds[1:])]


class Platt(NamedTuple):
    """A string confidence's calibration: ``sigmoid(a * x + b)``, fitted on held-out training
    strings, ``x`` the reading's log-odds ``log(P / (1 - P))`` (``on="logit"``), P = P(reading |
    strip). Exports before numbers 1.3 were fitted on ``log P`` itself (``on="logp"``): log P is at
    most 0, so no reading could be more sure than sigmoid(b) (0.93 for 1.2's first network), however
    sure the network was (docs/training-report-numbers.md)."""
    a: float
    b: float
    on: str = "logit"

    @classmethod
    def from_meta(cls, d: dict) -> "Platt":
        return cls(float(d["a"]), float(d["b"]), str(d.get("on", "logp")))  # no "on": an export before 1.3

    def to_meta(self) -> dict:
        return {"a": self.a, "b": self.b, "on": self.on}

    def __call__(self, log_probability: float) -> float:
        """The calibrated probability that a reading with this log P(reading | strip) is right."""
        return float(1.0 / (1.0 + np.exp(-(self.a * string_feature(log_probability, self.on) + self.b))))


def string_feature(log_probability, on: str = "logit"):
    """What a Platt fit reads of log P (a float or an array): log P in [-50, 0] (``"logp"``), or
    the log-odds log P - log(1 - P) in [-50, 20] (``"logit"``: P = 1 - 2e-9 is as sure as it gets)."""
    lp = np.clip(np.asarray(log_probability, dtype=np.float64), -50.0, 0.0)
    if on == "logp":
        return lp
    if on != "logit":
        raise ValueError(f"unknown calibration input {on!r}")
    with np.errstate(divide="ignore"):
        return np.clip(lp - np.log(-np.expm1(lp)), -50.0, 20.0)


def sent_on(log_probability: float, threshold: float, first: Platt) -> bool:
    """A cascade's rule: a strip whose first-network reading has a string confidence (with the
    first network's calibration ``first``) below ``threshold`` is read again by every network."""
    return first(log_probability) < threshold
