"""What every handler of this project shares: loading the TorchScript network, reading a
request's image, per-item errors, the batch loop and the answer's common fields.

``handler/digits_handler.py`` and ``handler/numbers_handler.py`` subclass ``BatchHandler``
and say only what is theirs: how one request becomes an item for the network (``prepare``),
how the batch's items go through it (``infer``), and one item's answer (``answer``).

A bad item never fails its batch: it gets its own 4xx status and
``{"error": "<code>", "detail": "<what was wrong>"}`` while its neighbours get answers.
Every answer carries ``X-Batch-Size``: how many requests shared the batch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

from model.preprocess import InputError

logger = logging.getLogger(__name__)

ACTIVATIONS_HEADER = "x-activations"
OFF = {"0", "false", "no", "none", "off"}
ON = {"1", "true", "yes", "on"}
PAYLOAD_FIELDS = ("data", "file", "body")  # multipart field names, then the raw body
FORM_TYPE = "application/x-www-form-urlencoded"
GRID_GAP = 1  # pixels between maps in an activation grid


@dataclass
class DigitItem:
    """One picture as the digits handler reads it (here, not in handler/digits_handler.py:
    TorchServe takes a handler module's one class for the handler)."""
    image: np.ndarray                  # the network's 28x28 input
    separate: int                      # well-separated digits in it (model.segment.separate_digits)
    lines: int                         # in how many lines
    unlike: str | None                 # why it does not look like a digit (unlike_a_digit), or None
    view: tuple                        # ink_view's (ink, offset, scale): for the second reading's strip


class BatchHandler(BaseHandler):
    """The batch loop with per-item errors; subclasses read, infer and answer.

    ``ACTIVATIONS_DEFAULT`` says whether maps are in the answer when the client does not send
    ``X-Activations``."""

    ACTIVATIONS_DEFAULT = True
    MODEL_NAME = "model"  # when the manifest names none
    WARM_UP = (1, 1, 28, 28)  # an input's shape, for the first call at start-up

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
        self.model = self.load_network(path, self.WARM_UP, extra)
        self.meta = json.loads(extra["meta.json"])
        self.layers = self.meta["layers"]  # training/train.py's export always writes them
        self.model_name = manifest["model"].get("modelName", self.MODEL_NAME)
        self.version = manifest["model"].get("modelVersion", "")
        self.context = context
        self.initialized = True
        logger.info("%s %s loaded on %s", self.model_name, self.version, self.device)

    def load_network(self, path, warm_up: tuple, extra_files: dict | None = None) -> torch.jit.ScriptModule:
        """A TorchScript network on this worker's device, optimised for inference (``optimize``)
        and called once on zeros of shape ``warm_up``: the first call compiles the graph, not on
        a user's clock. ``extra_files`` is filled as ``torch.jit.load`` fills it."""
        net = optimize(torch.jit.load(str(path), map_location=self.device, _extra_files=extra_files).eval())
        with torch.inference_mode():
            net(torch.zeros(*warm_up, device=self.device))
        return net

    def handle(self, data, context):
        started = time.perf_counter()
        self.context = context
        answers: list[dict | None] = [None] * len(data)
        items, owners = [], []
        for idx, request in enumerate(data):
            try:
                items.append(self.prepare(request_payload(request, body_content_type(context, idx),
                                                           request_content_type(context, idx))))
                owners.append(idx)
            except InputError as e:
                answers[idx] = refuse(context, idx, e.status, e.to_dict())
            except Exception:  # a bug must still fail only its own item
                logger.exception("unexpected error while decoding request %d", idx)
                answers[idx] = refuse(context, idx, 500, {"error": "internal_error",
                                                          "detail": "the image could not be processed"})
        if items:
            want_maps = [wants_activations(context, i, self.ACTIVATIONS_DEFAULT) for i in owners]
            try:
                results = self.infer(items, want_maps)
            except Exception:
                logger.exception("inference failed for a batch of %d", len(items))
                for idx in owners:
                    answers[idx] = refuse(context, idx, 503, {"error": "inference_failed",
                                                              "detail": "the model failed; try again"})
            else:
                for k, idx in enumerate(owners):
                    try:  # the network can find an item unreadable too (numbers: marks, no digit)
                        answers[idx] = self.answer(items[k], results, k, want_maps[k])
                    except InputError as e:
                        answers[idx] = refuse(context, idx, e.status, e.to_dict())
                        continue
                    answers[idx]["model"] = self.model_name
                    answers[idx]["version"] = self.version
        for idx in range(len(data)):
            context.set_response_content_type(idx, "application/json")
            context.set_response_header(idx, "X-Batch-Size", str(len(data)))  # how much company it had
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
        self.count_outcomes(answers, context)
        return [json.dumps(a, separators=(",", ":")) for a in answers]

    def count_outcomes(self, answers: list[dict], context) -> None:
        """Add the batch's answers to the ``Answers`` counter (serving/metrics.yaml) by outcome:
        read, unsure (null with a guess) or the refusal's error code. Never fails the batch."""
        try:
            for outcome, n in sorted(Counter(outcome_of(a) for a in answers).items()):
                context.metrics.add_counter("Answers", n, None, [
                    Dimension("Outcome", outcome), Dimension("ModelVersion", self.version),
                    Dimension("ModelName", self.model_name), Dimension("Level", "Model")])
        except Exception:
            logger.exception("could not count the batch's answers")

    def prepare(self, payload):
        """One request's image (bytes or text) to what ``infer`` takes; raises InputError."""
        raise NotImplementedError

    def infer(self, items: list, want_maps: list[bool]):
        """The whole batch's items through the network, in as few forward passes as possible."""
        raise NotImplementedError

    def answer(self, item, results, k: int, with_maps: bool) -> dict:
        """Item ``k``'s answer (``model`` and ``version`` are added by the spine)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, with_maps: bool) -> dict:
        """One forward pass over (N, 28, 28) float images; probabilities, and when asked the
        activation maps tiled into one uint8 grid per image and layer, as numpy arrays."""
        batch = images.unsqueeze(1).to(self.device, non_blocking=True)
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


def outcome_of(answer: dict) -> str:
    """``read``, ``unsure`` or the error code of one answer."""
    return answer["error"] if "error" in answer else "unsure" if "guess" in answer else "read"


def refuse(context, idx: int, status: int, body: dict) -> dict:
    """Answer request ``idx`` alone with ``status`` and ``{"error", "detail"}``."""
    context.set_response_status(code=status, phrase=body["error"], idx=idx)
    return body


def request_payload(request: dict, content_type: str | None, request_type: str | None = None):
    """The image part of one TorchServe request: bytes, or text holding base64 or a data URL.

    ``content_type`` is the declared type of the body part, ``request_type`` the request's own
    ``Content-Type`` header (``request_content_type``). A JSON object is read as JSON whatever
    type it was sent with (no image starts with ``{``); a lone multipart field is the image
    whatever its name (``-F image=@seven.png``). A form-encoded body (curl's ``-d`` without a
    content type) lost its bytes to TorchServe's form decoding before any handler saw it: it
    gets ``form_encoded`` naming the fix, unless it is a proper form with a ``data`` field."""
    form = bool(request_type) and request_type.startswith(FORM_TYPE)
    value = next((request[k] for k in PAYLOAD_FIELDS if request.get(k) is not None), None)
    if value is None:
        value = lone_field(request, form)
    elif form and isinstance(value, (bytes, bytearray)):
        value = value.replace(b" ", b"+")  # an un-escaped base64 '+' arrives as a space
    if isinstance(value, (bytes, bytearray, str)) and value[:64].lstrip()[:1] in (b"{", "{"):
        try:
            value = json.loads(value)
        except ValueError:  # UnicodeDecodeError included
            raise InputError("bad_json", "the body starts like a JSON object but is not valid JSON") from None
    if isinstance(value, dict):
        if "data" not in value:
            got = ", ".join(f'"{k[:40]}"' for k in list(value)[:5]) or "an empty object"
            raise InputError("missing_data", f'JSON body needs a "data" field holding base64 or a data URL; got {got}')
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


def lone_field(request: dict, form: bool):
    """The image of a request with none of PAYLOAD_FIELDS: its only multipart field, else an
    error saying what it held instead."""
    if form:
        raise InputError("form_encoded", "the body was sent as application/x-www-form-urlencoded (curl -d without "
                         "a Content-Type), so it was read as form fields and the image was lost: send the file with "
                         "--data-binary and a Content-Type such as image/png or application/octet-stream, or JSON "
                         "with Content-Type: application/json", status=415)
    fields = [k for k, v in request.items() if v is not None]
    if len(fields) == 1:
        return request[fields[0]]
    if fields:
        names = ", ".join(f"'{k[:40]}'" for k in sorted(fields)[:5])  # as sent, cut short
        raise InputError("missing_data", f"the form has fields {names} but no 'data' or 'file' field holding the image")
    raise InputError("empty_body", "the request carried no image: send it as the body, or a form field 'data'")


def request_content_type(context, idx: int) -> str | None:
    """Request ``idx``'s own ``Content-Type`` header, lower case."""
    for name, value in (context.get_all_request_header(idx) or {}).items():
        if name.lower() == "content-type" and isinstance(value, str):
            return value.strip().lower()
    return None


def body_content_type(context, idx: int) -> str | None:
    """The declared content type of request ``idx``'s body, lower case."""
    headers = context.get_all_request_header(idx) or {}
    part = headers.get("body")
    if isinstance(part, dict) and part.get("content-type"):
        return str(part["content-type"]).lower()
    return None


def wants_activations(context, idx: int, default: bool = True) -> bool:
    """Whether request ``idx`` wants activation maps: ``X-Activations: off`` (or 0/false/no/none)
    says no, ``on`` (or 1/true/yes) says yes, anything else or nothing gives ``default``."""
    for name, value in (context.get_all_request_header(idx) or {}).items():
        if name.lower() == ACTIVATIONS_HEADER and isinstance(value, str):
            value = value.strip().lower()
            return False if value in OFF else True if value in ON else default
    return default


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
    methods = ["each"] if hasattr(model, "each") else []  # an ensemble's every-member method (numbers)
    try:
        return torch.jit.optimize_for_inference(torch.jit.freeze(model, preserved_attrs=methods),
                                                other_methods=methods or None)
    except Exception:  # an optimisation, never a reason to fail to serve
        logger.exception("optimize_for_inference failed; serving the model as loaded")
        return model
