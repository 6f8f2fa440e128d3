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
``guess``; the probabilities are still there. A picture the network reads with a top
probability from SECOND_FROM to SECOND_TO is read again by the numbers model's first network:
its probabilities are then the two readings' product and ``second_reading`` says what the numbers
network read (``read_again``). Send ``X-Activations: off`` to leave the
activation maps out of the answer. Every answer carries ``X-Batch-Size``: how many requests
shared its forward pass.
"""
from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np
import torch

import model
from handler.spine import BatchHandler, DigitItem as Item
from model.number_network import STRIDE, STRIP_HEIGHT, choose, read_members, regions
from model.preprocess import InputError, decode, ink_view, png_bytes, to_mnist, to_png_base64, unlike_a_digit
from model.segment import separate_digits, strip_of_ink

logger = logging.getLogger(__name__)

# Below this calibrated confidence the answer is "digit": null with a reason: a digit is named
# when it is more likely right than wrong, the same line as the numbers model's. `make eval`
# (docs/model-card.md) measures what it costs: real digits refused per source, non-digits let through.
MIN_CONFIDENCE = 0.5
# The second reading: a picture the digits network reads with a top probability from SECOND_FROM
# up to SECOND_TO (and that looks like one digit) is read again by numbers 1.4's first network
# (SECOND_FILE, 325k parameters; the archive carries the file), as a short string. The digit it
# reads nearest the centre of the picture is the second opinion: its ten probabilities are
# multiplied in at weight SECOND_WEIGHT (p_digits * p_numbers ** 0.5, normalised), and the
# answer is named from that product with MIN_CONFIDENCE as before. The cheque crops digits misses
# are mostly a digit with a neighbour's stroke touching it: the numbers network, which learnt
# digits in context, parts the two by itself. Measured on the development splits
# (docs/training-report.md, "Digits 1.4: a second reading"), so its figures are optimistic.
SECOND_FROM = 0.4
SECOND_TO = 0.9
SECOND_WEIGHT = 0.5
# The numbers network of the second reading, staged with the handler's modules (serving/archive.py
# puts it in the digits archive's model/): numbers 1.4's first network alone, the one the second
# reading was chosen and measured with, so that digits answers the same whatever numbers version
# is served (training/second_reading.py, make second-reading).
SECOND_FILE = Path(model.__file__).parent / "second_reading.pt"


class DigitsHandler(BatchHandler):
    """Batched digit recognition with per-item errors."""

    MODEL_NAME = "digits"

    def initialize(self, context):
        super().initialize(context)
        extra = {"meta.json": ""}
        self.numbers = self.load_network(SECOND_FILE, (1, 1, STRIP_HEIGHT, 128), extra)
        meta = json.loads(extra["meta.json"])
        self.numbers_version = str(meta.get("metrics", {}).get("version", ""))
        # where the first network's CTC peak lies from a digit's centre (model.number_network.regions)
        self.peak_offset = float(meta.get("peak_offsets", [meta.get("peak_offset", 0.0)])[0])

    def prepare(self, payload) -> Item:
        """The network's 28x28 input (``model.preprocess.preprocess``, step by step), how
        many well-separated digits the picture holds, in how many lines
        (``model.segment.separate_digits``), and the ink view a second reading starts from."""
        view = ink_view(decode(payload))
        image = to_mnist(view[0])
        return Item(image, *separate_digits(view[0]), unlike_a_digit(image), view)

    def infer(self, items: list[Item], want_maps: list[bool]) -> dict:
        results = self.predict(np.stack([item.image for item in items]), any(want_maps))
        results["second"] = self.read_again(items, results["probabilities"])
        return results

    def predict(self, images: np.ndarray, with_maps: bool) -> dict:
        """One forward pass over a batch of 28x28 images; results as numpy arrays on the CPU."""
        return self.forward(torch.from_numpy(images), with_maps)

    def read_again(self, items: list[Item], probabilities: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
        """The second reading of the items the digits network is unsure of (SECOND_FROM to
        SECOND_TO) that look like one digit: their strips read by the numbers network's first
        network in one forward pass (as it is and moved a row up and down, averaged:
        ``model.number_network.read_members``). {k: (the digit read nearest the picture's centre, its ten
        probabilities)}; an item whose strip cannot be made or holds no digit has none."""
        strips = {}
        for k, item in enumerate(items):
            top = float(probabilities[k].max())
            if SECOND_FROM <= top < SECOND_TO and item.unlike is None and item.separate < 2:
                try:
                    strips[k] = strip_of_ink(*item.view)
                except InputError:  # only marks to the numbers model: digits' reading stands
                    continue
                except Exception:  # a bug in a second opinion must not cost the picture its first
                    logger.exception("no second reading for item %d: its strip could not be made", k)
        if not strips:
            return {}
        try:
            return self._read_strips(items, strips)
        except Exception:
            logger.exception("no second reading for a batch of %d: the numbers network failed", len(strips))
            return {}

    def _read_strips(self, items: list[Item], strips: dict) -> dict[int, tuple[int, np.ndarray]]:
        """``read_again``'s strips {k: Strip} through the numbers network, in one forward pass."""
        widest = max(s.image.shape[1] for s in strips.values())
        batch = np.zeros((len(strips), 1, STRIP_HEIGHT, widest), dtype=np.float32)
        for j, s in enumerate(strips.values()):
            batch[j, 0, :, :s.image.shape[1]] = s.image
        lengths = torch.tensor([s.image.shape[1] // STRIDE for s in strips.values()], dtype=torch.long)
        with torch.inference_mode():
            # the first network only (an ensemble's read would run every member and keep the first's)
            members, _ = read_members(self.numbers, torch.from_numpy(batch).to(self.device),
                                      (lengths * STRIDE).to(self.device), first_only=True)
        scores = members[0]
        out = {}
        for (k, s), choice in zip(strips.items(), choose([scores.float().cpu()], lengths)):
            if not choice.reads:
                continue
            ink, offset, scale = items[k].view
            centre = np.array([offset[0] + ink.shape[1] * scale[0] / 2, offset[1] + ink.shape[0] * scale[1] / 2])
            boxes = np.array([s.box(left, right) for left, right in regions(choice.reads, s.image.shape[1], self.peak_offset)],
                             dtype=np.float64)
            nearest = int(np.hypot(*(boxes[:, :2] + boxes[:, 2:] / 2 - centre).T).argmin())
            out[k] = (choice.reads[nearest].digit, choice.reads[nearest].probabilities)
        return out

    def answer(self, item: Item, results: dict, k: int, with_maps: bool) -> dict:
        image, separate, lines = item.image, item.separate, item.lines
        probs = results["probabilities"][k]
        second = results["second"].get(k)
        if second is not None:  # the two readings' product, the second at SECOND_WEIGHT
            probs = probs.astype(np.float64) * second[1].astype(np.float64) ** SECOND_WEIGHT
            probs = probs / probs.sum()
        digit = int(probs.argmax())
        confidence = float(probs[digit])
        out = {
            "digit": digit,
            "confidence": round(confidence, 6),
            "probabilities": [round(float(p), 6) for p in probs],
            "input": to_png_base64(image),
        }
        if second is not None:
            out["second_reading"] = {"model": "numbers", "version": self.numbers_version, "digit": second[0],
                                     "confidence": round(float(second[1][second[0]]), 6)}
        reason = item.unlike
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
