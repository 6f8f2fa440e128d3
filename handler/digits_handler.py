"""TorchServe handler for digits: image in, digit, probabilities and activation maps out.

Per request it accepts a raw image body (PNG, JPEG, BMP, GIF, WebP), a JSON body
``{"data": "<base64 or data URL>"}``, a text body holding base64 or a data URL, or a
multipart form with a ``data`` or ``file`` field. Decoding and preprocessing run per item
(``model.preprocess``); every good item of the batch then goes through the TorchScript
network in one forward pass, on the GPU when TorchServe assigned one.

A bad item never fails its batch: it gets its own 4xx status and
``{"error": "<code>", "detail": "<what was wrong>"}`` while its neighbours get answers.
When the image does not look like a digit, or the model is unsure (calibrated confidence
below ``MIN_CONFIDENCE``), the answer says ``"digit": null`` with a ``reason`` and the best
``guess``; the probabilities are still there. Send ``X-Activations: off`` to leave the
activation maps out of the answer. Every answer carries ``X-Batch-Size``: how many requests
shared its forward pass.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import os
import time

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from model.preprocess import InputError, png_bytes, preprocess, to_png_base64, unlike_a_digit

logger = logging.getLogger(__name__)

ACTIVATIONS_HEADER = "x-activations"
OFF = {"0", "false", "no", "none", "off"}
PAYLOAD_FIELDS = ("data", "file", "body")  # multipart field names, then the raw body
GRID_GAP = 1  # pixels between maps in an activation grid
# Below this calibrated confidence the answer is "digit": null with a reason. Chosen by
# `make eval` (docs/model-card.md): it refuses at most 0.5% of real digits, clean or drawn.
MIN_CONFIDENCE = 0.6


class DigitsHandler(BaseHandler):
    """Batched digit recognition with per-item errors."""

    def initialize(self, context):
        properties = context.system_properties
        manifest = context.manifest
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
            # Workers share the machine's cores: one intra-op thread each unless told otherwise.
            torch.set_num_threads(int(os.environ.get("DIGITS_TORCH_THREADS", "1")))
        path = os.path.join(properties["model_dir"], manifest["model"]["serializedFile"])
        extra = {"meta.json": ""}
        self.model = optimize(torch.jit.load(path, map_location=self.device, _extra_files=extra).eval())
        self.meta = json.loads(extra["meta.json"])
        self.layers = self.meta["layers"]  # training/train.py's export always writes them
        self.model_name = manifest["model"].get("modelName", "digits")
        self.version = manifest["model"].get("modelVersion", "")
        with torch.inference_mode():  # first call compiles the TorchScript graph: not on a user's clock
            self.model(torch.zeros(1, 1, 28, 28, device=self.device))
        self.context = context
        self.initialized = True
        logger.info("digits %s loaded on %s", self.version, self.device)

    def handle(self, data, context):
        started = time.perf_counter()
        self.context = context
        answers: list[dict | None] = [None] * len(data)
        images, owners = [], []
        for idx, request in enumerate(data):
            try:
                images.append(preprocess(request_payload(request, body_content_type(context, idx))))
                owners.append(idx)
            except InputError as e:
                answers[idx] = self._refuse(context, idx, e.status, e.to_dict())
            except Exception:  # a bug must still fail only its own item
                logger.exception("unexpected error while decoding request %d", idx)
                answers[idx] = self._refuse(context, idx, 500, {"error": "internal_error",
                                                                "detail": "the image could not be processed"})
        if images:
            want_maps = [wants_activations(context, i) for i in owners]
            try:
                results = self.predict(np.stack(images), any(want_maps))
            except Exception:
                logger.exception("inference failed for a batch of %d", len(images))
                for idx in owners:
                    answers[idx] = self._refuse(context, idx, 503, {"error": "inference_failed",
                                                                    "detail": "the model failed; try again"})
            else:
                for k, idx in enumerate(owners):
                    answers[idx] = self.answer(images[k], results, k, want_maps[k])
        for idx in range(len(data)):
            context.set_response_content_type(idx, "application/json")
            context.set_response_header(idx, "X-Batch-Size", str(len(data)))  # how much company it had
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
        return [json.dumps(a, separators=(",", ":")) for a in answers]

    def predict(self, images: np.ndarray, with_maps: bool) -> dict:
        """One forward pass over a batch of 28x28 images; results as numpy arrays on the CPU."""
        batch = torch.from_numpy(images).unsqueeze(1).to(self.device, non_blocking=True)
        with torch.inference_mode():
            scores, activations = self.model(batch)
            results = {"probabilities": scores.softmax(1).cpu().numpy()}
            if with_maps:
                # Scale each map to 0-255 and tile the whole batch's grids on the device, so
                # only the grids' bytes travel back and no per-image numpy work is left.
                results["shapes"] = [list(a.shape[1:]) for a in activations]
                results["grids"] = [
                    tile_grids((a * (255.0 / a.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6))).to(torch.uint8)).cpu().numpy()
                    for a in activations
                ]
        return results

    def answer(self, image: np.ndarray, results: dict, k: int, with_maps: bool) -> dict:
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
        if reason is None and confidence < MIN_CONFIDENCE:
            reason = f"the model is unsure: its best guess, {digit}, has only {confidence:.0%} confidence"
        if reason is not None:  # an honest "don't know" beats a confident wrong digit
            out.update(digit=None, guess=digit, reason=reason)
        if with_maps:
            out["activations"] = [
                {"layer": name, "shape": shape, "png": base64.b64encode(png_bytes(grids[k])).decode("ascii")}
                for name, shape, grids in zip(self.layers, results["shapes"], results["grids"])
            ]
        out["model"] = self.model_name
        out["version"] = self.version
        return out

    @staticmethod
    def _refuse(context, idx: int, status: int, body: dict) -> dict:
        context.set_response_status(code=status, phrase=body["error"], idx=idx)
        return body


def request_payload(request: dict, content_type: str | None):
    """The image part of one TorchServe request: bytes, or text holding base64 or a data URL."""
    value = next((request[k] for k in PAYLOAD_FIELDS if request.get(k) is not None), None)
    if value is None:
        raise InputError("empty_body", "the request carried no image: send it as the body, or a form field 'data'")
    if isinstance(value, dict):
        if "data" not in value:
            raise InputError("missing_data", 'JSON body needs a "data" field holding base64 or a data URL')
        value = value["data"]
        if not isinstance(value, str):
            raise InputError("bad_data", f'"data" must be a string (base64 or data URL), got {type(value).__name__}')
        return value
    if isinstance(value, list):
        raise InputError("bad_json", 'expected a JSON object {"data": ...}, got a list; send one image per request')
    if isinstance(value, (bytes, bytearray)) and content_type and content_type.startswith("application/json"):
        raise InputError("bad_json", "the body is declared as JSON but is not valid JSON")
    if not isinstance(value, (bytes, bytearray, str)):
        raise InputError("bad_data", f"unsupported JSON value of type {type(value).__name__}")
    return value


def body_content_type(context, idx: int) -> str | None:
    """The declared content type of request ``idx``'s body, lower case."""
    headers = context.get_all_request_header(idx) or {}
    part = headers.get("body")
    if isinstance(part, dict) and part.get("content-type"):
        return str(part["content-type"]).lower()
    return None


def wants_activations(context, idx: int) -> bool:
    """False when the client sent ``X-Activations: off`` (or 0/false/no/none)."""
    for name, value in (context.get_all_request_header(idx) or {}).items():
        if name.lower() == ACTIVATIONS_HEADER and isinstance(value, str):
            return value.strip().lower() not in OFF
    return True


def tile_grids(maps: torch.Tensor) -> torch.Tensor:
    """Tile each image's C maps (N, C, H, W) into one near-square grid per image, row by row
    with GRID_GAP pixels between maps: (N, rows * (H + gap) - gap, cols * (W + gap) - gap)."""
    n, c, h, w = maps.shape
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    tiles = maps.new_zeros((n, rows * cols, h + GRID_GAP, w + GRID_GAP))
    tiles[:, :c, :h, :w] = maps
    grid = tiles.view(n, rows, cols, h + GRID_GAP, w + GRID_GAP).permute(0, 1, 3, 2, 4)
    return grid.reshape(n, rows * (h + GRID_GAP), cols * (w + GRID_GAP))[:, :-GRID_GAP, :-GRID_GAP]


def optimize(model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Freeze the scripted network and fold batch norm into the convolutions for inference
    (``torch.jit.optimize_for_inference``): about twice the images/s on one CPU thread at
    batch 16 (bench/inprocess.py measures it), same outputs to within 1e-6. Falls back to the
    model as loaded if this torch cannot optimise it."""
    try:
        return torch.jit.optimize_for_inference(torch.jit.freeze(model))
    except Exception:  # an optimisation, never a reason to fail to serve
        logger.exception("optimize_for_inference failed; serving the model as loaded")
        return model
