"""TorchServe handler for numbers: a picture of a handwritten number in, the string and a box,
probabilities and confidence per digit out.

Same input forms, per-item errors and ``X-Batch-Size`` as ``digits`` (the shared spine,
``handler/spine.py``). Each picture is cut into digits by ``model.segment`` (with candidate
cuts for touching digits), and every crop of the whole batch goes through the ``digits``
TorchScript network in one forward pass; each part then keeps the cut the network is most
sure of.

The answer::

    {"text": "2931", "confidence": 0.97,
     "digits": [{"digit": 2, "confidence": 0.99, "probabilities": [...10], "box": [x, y, w, h]}, ...],
     "input": "<PNG: the digits side by side as the network read them, 28 pixels each>",
     "model": "numbers", "version": "1.0"}

``confidence`` is the product of the digits' confidences: the probability that the whole
string is right if the cuts are right and the digits' errors are independent (docs/model-card.md
measures how well that holds). When it is below ``MIN_STRING_CONFIDENCE``, or a digit is below
the digits model's ``MIN_CONFIDENCE`` or does not look like a digit, ``"text"`` is null, with
the best ``guess`` and a ``reason``. Boxes are in the pixels of the picture sent. Activation
maps are off unless the request says ``X-Activations: on``; then each digit carries its own.
A blank picture, or one holding only marks, is a 422 ``no_digit``.
"""
from __future__ import annotations

import base64

import numpy as np
import torch

from handler.spine import BatchHandler
from model.preprocess import png_bytes, to_png_base64, unlike_a_digit
from model.segment import Segmented, choose, segment

# Same rule as the digits model's for one digit (handler/digits_handler.py's MIN_CONFIDENCE).
MIN_CONFIDENCE = 0.6
# Below this string confidence the text is null. Set by hand, not tuned: the string confidence
# is overconfident (docs/model-card.md, numbers section, measures it and how often answers are
# null), so a threshold on it cannot promise an error rate yet.
MIN_STRING_CONFIDENCE = 0.5


class NumbersHandler(BatchHandler):
    """Batched reading of handwritten numbers with per-item errors."""

    MODEL_NAME = "numbers"
    ACTIVATIONS_DEFAULT = False  # up to a dozen digits, each with its maps: ask for them

    def prepare(self, payload) -> Segmented:
        return segment(payload)

    def infer(self, items: list[Segmented], want_maps: list[bool]) -> dict:
        crops = [c for seg in items for c in seg.crops]
        results = self.forward(torch.from_numpy(np.stack(crops)), any(want_maps))
        results["starts"] = np.cumsum([0] + [len(seg.crops) for seg in items])
        return results

    def answer(self, seg: Segmented, results: dict, k: int, with_maps: bool) -> dict:
        first = int(results["starts"][k])
        probabilities = results["probabilities"][first:int(results["starts"][k + 1])]
        read = choose(seg, probabilities)
        digits, refused = [], []
        for d, probs in read:
            digit = int(probs.argmax())
            confidence = float(probs[digit])
            entry = {"digit": digit, "confidence": round(confidence, 6),
                     "probabilities": [round(float(p), 6) for p in probs], "box": list(d.box)}
            why = unlike_a_digit(d.image)
            if why is None and confidence < MIN_CONFIDENCE:
                why = f"only {confidence:.0%} confident"
            if why is not None:
                refused.append(f"digit {len(digits) + 1} (best guess {digit}): {why}")
            if with_maps:
                at = first + _index_of(seg, d)
                entry["activations"] = [
                    {"layer": name, "shape": shape, "png": base64.b64encode(png_bytes(grids[at])).decode("ascii")}
                    for name, shape, grids in zip(self.layers, results["shapes"], results["grids"])
                ]
            digits.append(entry)
        text = "".join(str(e["digit"]) for e in digits)
        confidence = float(np.prod([e["confidence"] for e in digits]))
        out = {"text": text, "confidence": round(confidence, 6), "digits": digits,
               "input": to_png_base64(np.hstack([d.image for d, _ in read]))}
        reason = None
        if refused:
            reason = "the model is unsure of " + "; ".join(refused)
        elif confidence < MIN_STRING_CONFIDENCE:
            reason = f"the model is unsure: its best reading, {text}, has only {confidence:.0%} confidence"
        if reason is not None:  # an honest "don't know" beats a confident wrong number
            out.update(text=None, guess=text, reason=reason)
        return out


def _index_of(seg: Segmented, digit) -> int:
    """Where ``digit``'s image sits among ``seg.crops`` (the forward pass's order)."""
    return next(i for i, c in enumerate(seg.crops) if c is digit.image)
