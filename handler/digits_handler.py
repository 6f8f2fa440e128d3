"""TorchServe handler for digits: image in, digit, probabilities and activation maps out.

Per request it accepts a raw image body (PNG, JPEG, BMP, GIF, WebP), a JSON body
``{"data": "<base64 or data URL>"}``, a text body holding base64 or a data URL, or a
multipart form with a ``data`` or ``file`` field. Decoding and preprocessing run per item
(``model.preprocess``); every good item of the batch then goes through the TorchScript
network in one forward pass, on the GPU when TorchServe assigned one. The batch loop, request
decoding and per-item errors are the handlers' shared spine (``handler/spine.py``).

A bad item never fails its batch: it gets its own 4xx status and
``{"error": "<code>", "detail": "<what was wrong>"}`` while its neighbours get answers.
When the image does not look like a digit, holds several digits (then the reason names
``/predictions/numbers``), or the model is unsure (calibrated confidence
below ``MIN_CONFIDENCE``), the answer says ``"digit": null`` with a ``reason`` and the best
``guess``; the probabilities are still there. Send ``X-Activations: off`` to leave the
activation maps out of the answer. Every answer carries ``X-Batch-Size``: how many requests
shared its forward pass.
"""
from __future__ import annotations

import base64

import numpy as np
import torch

from handler.spine import BatchHandler
from model.preprocess import decode, ink_view, png_bytes, to_mnist, to_png_base64, unlike_a_digit
from model.segment import separate_digits

# Below this calibrated confidence the answer is "digit": null with a reason: a digit is named
# when it is more likely right than wrong, the same line as the numbers model's. `make eval`
# (docs/model-card.md) measures what it costs: real digits refused per source, non-digits let through.
MIN_CONFIDENCE = 0.5


class DigitsHandler(BatchHandler):
    """Batched digit recognition with per-item errors."""

    MODEL_NAME = "digits"

    def prepare(self, payload) -> tuple[np.ndarray, tuple[int, int]]:
        """The network's 28x28 input (``model.preprocess.preprocess``, step by step) and how
        many well-separated digits the picture holds, in how many lines
        (``model.segment.separate_digits``)."""
        ink = ink_view(decode(payload))[0]
        return to_mnist(ink), separate_digits(ink)

    def infer(self, items: list[tuple[np.ndarray, tuple[int, int]]], want_maps: list[bool]) -> dict:
        return self.predict(np.stack([image for image, _ in items]), any(want_maps))

    def predict(self, images: np.ndarray, with_maps: bool) -> dict:
        """One forward pass over a batch of 28x28 images; results as numpy arrays on the CPU."""
        return self.forward(torch.from_numpy(images), with_maps)

    def answer(self, item: tuple[np.ndarray, tuple[int, int]], results: dict, k: int, with_maps: bool) -> dict:
        image, (separate, lines) = item
        probs = results["probabilities"][k]
        digit = int(probs.argmax())
        confidence = float(probs[digit])
        out = {
            "digit": digit,
            "confidence": round(confidence, 6),
            "probabilities": [round(float(p), 6) for p in probs],
            "input": to_png_base64(image),
        }
        reason = unlike_a_digit(image)
        if reason is None and separate >= 2:  # a number: one digit of it would be a wrong answer
            reason = (f"this looks like {separate} digits, not one: send it to /predictions/numbers "
                      "to read them all" if lines == 1 else
                      f"this looks like {separate} digits in {lines} lines, not one digit: send each line "
                      "to /predictions/numbers to read it")
        if reason is None and confidence < MIN_CONFIDENCE:
            reason = f"the model is unsure: its best guess, {digit}, has only {confidence:.0%} confidence"
        if reason is not None:  # an honest "don't know" beats a confident wrong digit
            out.update(digit=None, guess=digit, reason=reason)
        if with_maps:
            out["activations"] = [
                {"layer": name, "shape": shape, "png": base64.b64encode(png_bytes(grids[k])).decode("ascii")}
                for name, shape, grids in zip(self.layers, results["shapes"], results["grids"])
            ]
        return out
