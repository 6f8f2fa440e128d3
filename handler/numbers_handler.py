"""TorchServe handler for numbers: a picture of a handwritten number in, the string and a box,
probabilities and confidence per digit out.

Same input forms, per-item errors and ``X-Batch-Size`` as ``digits`` (the shared spine,
``handler/spine.py``). Each picture becomes a strip 32 pixels tall (``model.segment.strip``),
the batch's strips are padded to the widest and read by the numbers network
(``model/number_network.py``, CNN + CTC, no segmentation), the whole batch in each forward pass.
The first network reads every strip as it is; a strip it reads with a string confidence of
SURE_AS_IT_IS or more is answered from that reading. The others are read again moved a row up
and down, the three readings' column probabilities averaged (``model.number_network.read_members``,
as training calibrated the confidence on). A cascade export (the shipped one) then reads the
strips that are still unsure (``model.number_network.sent_on``) with the networks after the
first (the first's scores are kept), each strip's text the members' best paths' candidate with
the highest CTC probability averaged over the members (``model.number_network.choose``), its
digits, columns and boxes those of a member that read that text; each answer has its own
calibration. An ensemble export without a cascade reads every strip with every member, moved
too, in one pass.

The answer::

    {"text": "2931", "written": "2931", "confidence": 0.97,
     "digits": [{"digit": 2, "confidence": 0.99, "probabilities": [...10], "box": [x, y, w, h],
                 "columns": [left, right]}, ...],
     "marks": [{"mark": "comma", "after": 1, "box": [x, y, w, h]}, ...],
     "input": "<PNG: the strip the network read>", "model": "numbers", "version": "1.5"}

``confidence`` is the calibrated probability that the whole string is right: Platt scaling of
the log-odds of the CTC probability of the reading (an ensemble's: averaged over its members;
``model.number_network.Platt``), fitted on
strings held out of training (the export's meta.json; docs/model-card.md shows how well it
holds on the development splits). Below ``MIN_STRING_CONFIDENCE`` ``"text"`` is null, with the
best ``guess`` and a ``reason``. A reading of one or two digits is also null when the ``digits``
network, reading each digit alone, would not name it (``ALONE_LENGTH``: most non-digits that get
a text are read as one or two digits). Each digit's ``probabilities`` are its peak column's, renormalised over the ten digits; its
``columns`` are its stretch of the ``input`` strip, and its ``box`` the digit ink in that
stretch, in the pixels of the picture sent. ``marks`` are the separators and other small marks
level with the digits that the text leaves out (``model.segment.Mark``), and the digit-sized
parts the network read no digit in (``model.segment.Strip.unread``: a currency sign, a date's
slash, a bracket; their ink is in no digit's box): what each looks like ("dot", "comma",
"apostrophe", "dash", "slash" or "mark"), how many digits of the text come before it (counted
from the digits' ink), and its box; ``written`` is the text with the separators between its
digits put back (``written``: "1,250.00" where the text is "125000", "12/05" for "1205"). ``X-Activations: on`` gives each digit the conv
layers' maps over its stretch (off by default). A blank picture, one holding only marks, or
one whose marks the network reads as no digit at all is a 422 ``no_digit``.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import torch

import model
from handler.digits_handler import MIN_CONFIDENCE as DIGIT_MIN_CONFIDENCE
from handler.digits_handler import DigitsHandler
from handler.spine import BatchHandler, tile_grids
from model.number_network import STRIDE, STRIP_HEIGHT, Platt, centres, choose, read_members, sent_on, stretches
from model.preprocess import InputError, png_bytes, to_mnist, to_png_base64, unlike_a_digit
from model.segment import Strip, strip

# Below this calibrated string confidence the text is null. Chosen on the held-out training
# strings (docs/training-report-numbers.md): with a calibrated confidence, 0.5 answers exactly
# when the reading is more likely right than wrong.
MIN_STRING_CONFIDENCE = 0.5
# A strip the first network reads, as it is, with at least this string confidence (its
# calibration) is answered from that one reading, not read again moved a row up and down. On the
# export's 1,500 held-out calibration strings, 27% of them; the moved readings changed none of
# their texts, 407 of 409 were right, and their confidence stayed calibrated (at 0.95, 57% of the
# strings but cheques answered alone were 93.5% right at 0.988 confidence):
# docs/training-report-numbers.md. A strip less sure costs what it did: its unmoved reading is kept.
SURE_AS_IT_IS = 0.99
# A reading of at most this many digits stands only if the digits network, reading each digit
# alone (its stretch of the strip, preprocessed as digits preprocesses a picture), would answer
# it: the stretch looks like a digit (``unlike_a_digit``), digits would not call itself unsure
# (DIGIT_MIN_CONFIDENCE) and does not read another digit at ALONE_DISAGREE or more. Of the
# pictures holding no number that numbers answered with a text, 88% were read as one or two
# digits. Chosen on training data (training/wild.py's training non-digits; strings of one or two
# MNIST training digits and pendigits training traces): non-digits answered 35.6% -> 11.3%,
# right readings made null 3 of 600 and 7 of 400. Longer readings are not checked: the card's
# three-digit synthetic strings would lose 3 of 200 right readings for little more refused, and on
# 3-7-digit strings digits disagrees with right readings about as often as with wrong ones.
ALONE_LENGTH = 2
ALONE_DISAGREE = 0.9
# The digits network, staged with the handler's modules (serving/archive.py puts it in the
# numbers archive's model/ too).
DIGITS_FILE = Path(model.__file__).parent / "digits.pt"


# The marks ``written`` puts back. Not an apostrophe: a piece of a digit broken off at its top
# looks like one (1 of 300 synthetic strings of MNIST digits), and Swiss 1'000s are rarer.
SEPARATORS = {"dot": ".", "comma": ",", "dash": "-", "slash": "/"}


def written(text: str, marks: list[dict]) -> str:
    """``text`` with the separators among ``marks`` put back where they were seen ("125000" with
    a comma after 1 digit and a dot after 4: "1,250.00"); other marks (apostrophes too) are left
    out, and so are separators before the first digit or after the last (a full stop, an
    amount's closing dash)."""
    places = {}
    for m in marks:  # one separator between two digits: the first seen there
        if m["mark"] in SEPARATORS and 0 < m["after"] < len(text):
            places.setdefault(m["after"], SEPARATORS[m["mark"]])
    return "".join(places.get(k, "") + d for k, d in enumerate(text))


class NumbersHandler(BatchHandler):
    """Batched reading of handwritten numbers with per-item errors."""

    MODEL_NAME = "numbers"
    ACTIVATIONS_DEFAULT = False  # maps for every digit of a long string: ask for them
    WARM_UP = (1, 1, STRIP_HEIGHT, 128)  # a strip: the first request meets a warm graph

    def initialize(self, context):
        super().initialize(context)
        self.platt = Platt.from_meta(self.meta["calibration"])
        # where each member's CTC peak lies from a digit's centre (an ensemble's members differ)
        self.peak_offsets = [float(o) for o in self.meta.get("peak_offsets", [self.meta.get("peak_offset", 0.0)])]
        if hasattr(self.model, "each"):  # an ensemble's every-member reading: warm too, off the users' clock
            with torch.inference_mode():
                self.model.each(torch.zeros(*self.WARM_UP, device=self.device), None)
        # A cascade: the first member reads every strip, the whole ensemble only the strips the
        # first member is less sure of than the threshold (each reading with its own calibration).
        cascade = self.meta.get("cascade")
        self.cascade = None if cascade is None else (
            float(cascade["threshold"]), Platt.from_meta(cascade["first"]))
        self.digits = self.load_network(DIGITS_FILE, DigitsHandler.WARM_UP)

    def prepare(self, payload) -> Strip:
        return strip(payload, marks=True)

    def infer(self, items: list[Strip], want_maps: list[bool]) -> dict:
        """All strips, padded with ground to the widest: read once as they are; the strips that
        reading is unsure of read again moved a row up and down too (and by the whole ensemble
        where a cascade's first network is still unsure), each step one forward pass."""
        widest = max(s.image.shape[1] for s in items)
        batch = np.zeros((len(items), 1, STRIP_HEIGHT, widest), dtype=np.float32)
        for k, s in enumerate(items):
            batch[k, 0, :, :s.image.shape[1]] = s.image
        lengths = torch.tensor([s.image.shape[1] // STRIDE for s in items], dtype=torch.long)
        with torch.inference_mode():
            # each strip's own width: the padding changes nothing (model/number_network.py)
            x, widths = torch.from_numpy(batch).to(self.device), (lengths * STRIDE).to(self.device)
            first = self.cascade[1] if self.cascade is not None else self.platt
            platts = [first] * len(items)
            if self.cascade is None and hasattr(self.model, "each"):  # an ensemble without a cascade: all read all
                members, activations = read_members(self.model, x, widths)
                choices = choose([m.cpu() for m in members], lengths)
                todo = []
            else:  # the first network reads every strip as it is
                scores, activations = self.model(x, widths)
                choices = choose([scores.float().cpu()], lengths)
                sure = max(SURE_AS_IT_IS, self.cascade[0] if self.cascade is not None else 0.0)  # never below the cascade's bar
                todo = [k for k, c in enumerate(choices) if first(c.logp) < sure]
            if todo:  # moved a row up and down too, the three readings averaged
                at = torch.tensor(todo, dtype=torch.long)
                on = at.to(self.device)
                moved, _ = read_members(self.model, x[on], widths[on], first_only=True, unmoved=scores[on])
                for k, c in zip(todo, choose([moved[0].cpu()], lengths[at])):
                    choices[k] = c
                unsure = [j for j, k in enumerate(todo) if self.cascade is not None
                          and sent_on(choices[k].logp, self.cascade[0], first)]
                if unsure:  # and by the rest of the cascade's networks
                    sub = torch.tensor(unsure, dtype=torch.long)
                    picks = at[sub]
                    there = picks.to(self.device)
                    rest, _ = read_members(self.model, x[there], widths[there], start=1)
                    for k, c in zip(picks.tolist(), choose([moved[0][sub.to(self.device)].cpu()] + [m.cpu() for m in rest],
                                                           lengths[picks])):
                        choices[k], platts[k] = c, self.platt
            # each digit's stretch of its strip, for its box (answer) and for reading it alone
            middles = [centres(c.reads, self.peak_offsets[c.member]) for c in choices]
            spans = [stretches(m, s.image.shape[1]) for s, m in zip(items, middles)]
            short = [k for k, c in enumerate(choices)  # a reading already unsure is null anyway
                     if 0 < len(c.reads) <= ALONE_LENGTH and platts[k](c.logp) >= MIN_STRING_CONFIDENCE]
            results = {"reads": [c.reads for c in choices], "logp": [c.logp for c in choices], "platt": platts,
                       "widest": widest, "spans": spans, "centres": middles,
                       "alone": self.read_alone(items, spans, short)}
            if any(want_maps):
                results["activations"] = [a.cpu() for a in activations]
        return results

    def read_alone(self, items: list[Strip], spans: list[list[tuple[float, float]]], short: list[int]
                   ) -> dict[int, list]:
        """The digits of strips ``short`` (their stretches ``spans[k]``) read alone by the digits
        network, in one forward pass (inside ``infer``'s inference mode): {k: [(probabilities or
        None, why it is unlike a digit or None) per digit]} (None probabilities: the digit's
        stretch holds no ink)."""
        parts = []  # (k, the digit's 28x28 input, or None where its stretch holds no ink)
        for k in short:
            for left, right in spans[k]:
                try:
                    parts.append((k, to_mnist(items[k].image[:, int(round(left)):int(round(right))])))
                except InputError:
                    parts.append((k, None))
        images = [image for _, image in parts if image is not None]
        probabilities = iter([])
        if images:
            scores, _ = self.digits(torch.from_numpy(np.stack(images))[:, None].to(self.device))
            probabilities = iter(scores.softmax(1).cpu().numpy())
        out: dict[int, list] = {}
        for k, image in parts:
            out.setdefault(k, []).append((None, None) if image is None else (next(probabilities), unlike_a_digit(image)))
        return out

    @staticmethod
    def alone_reason(alone: list | None, text: str) -> str | None:
        """Why a short reading does not stand (``read_alone``'s list for it), or None."""
        for i, (p, unlike) in enumerate(alone or []):
            digit = f"the {text[i]}" + ("" if len(text) == 1 else f" (digit {i + 1})")
            if p is None or unlike is not None:
                return (f"this does not look like a number: {digit} does not look like a digit "
                        f"({unlike or 'its stretch holds no ink'})")
            best = int(p.argmax())
            if p[best] < DIGIT_MIN_CONFIDENCE:
                return (f"this does not look like a number: reading {digit} alone, the digits model is sure of "
                        f"no digit (best guess {best}, {p[best]:.0%})")
            if best != int(text[i]) and p[best] >= ALONE_DISAGREE:
                return (f"the models disagree: numbers reads {digit}, the digits model, reading it alone, "
                        f"a {best} ({p[best]:.0%})")
        return None

    def answer(self, s: Strip, results: dict, k: int, with_maps: bool) -> dict:
        reads = results["reads"][k]
        if not reads:
            raise InputError("no_digit", "no digit found: the network reads the marks in the picture as no digit",
                             status=422)
        unread = s.unread(results["centres"][k])  # a currency sign, a date's slash: out of the digits' boxes
        digits, middles = [], []  # middles: where each digit's ink lies, for the marks' places
        for r, (left, right) in zip(reads, results["spans"][k]):
            box, middle = s.place(left, right)
            middles.append(middle)
            entry = {"digit": r.digit, "confidence": round(float(r.probabilities[r.digit]), 6),
                     "probabilities": [round(float(p), 6) for p in r.probabilities],
                     "box": list(box), "columns": [int(round(left)), int(round(right))]}
            if with_maps:
                entry["activations"] = self._maps(results, k, left, right)
            digits.append(entry)
        text = "".join(str(r.digit) for r in reads)
        confidence = results["platt"][k](results["logp"][k])
        marks = [{"mark": m.kind, "after": sum(c < m.column for c in middles), "box": list(m.box)}
                 for m in sorted(s.marks + unread, key=lambda m: m.column)]
        out = {"text": text, "written": written(text, marks), "confidence": round(confidence, 6), "digits": digits,
               "marks": marks, "input": to_png_base64(s.image)}
        if confidence < MIN_STRING_CONFIDENCE:  # an honest "don't know" beats a confident wrong number
            weakest = min(range(len(digits)), key=lambda i: digits[i]["confidence"])
            out.update(text=None, written=None, guess=text, reason=(
                f"the model is unsure: its best reading, {text}, has only {confidence:.0%} confidence "
                f"(least sure: digit {weakest + 1}, {digits[weakest]['digit']}, {digits[weakest]['confidence']:.0%})"))
        elif (reason := self.alone_reason(results["alone"].get(k), text)) is not None:
            out.update(text=None, written=None, guess=text, reason=reason)
        return out

    def _maps(self, results: dict, k: int, left: float, right: float) -> list[dict]:
        """Each conv layer's maps over strip columns [left, right), tiled into one PNG."""
        out = []
        for name, a in zip(self.layers, results["activations"]):
            per = a.shape[3] / results["widest"]  # the layer's columns per strip pixel
            lo = int(np.floor(left * per))
            part = a[k:k + 1, :, :, lo:max(int(np.ceil(right * per)), lo + 1)]
            scaled = (part * (255.0 / part.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6))).to(torch.uint8)
            out.append({"layer": name, "shape": list(part.shape[1:]),
                        "png": base64.b64encode(png_bytes(tile_grids(scaled)[0].numpy())).decode("ascii")})
        return out
