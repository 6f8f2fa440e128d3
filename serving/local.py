"""The real handler run in this process, as a TorchServe worker runs it, without a server.

Evaluation (training/model_card.py), the in-process benchmark (bench/inprocess.py) and the
handler tests all go through here, so they exercise exactly the serving code path:
TorchServe's own ``Context`` and ``RequestProcessor`` classes around ``DigitsHandler`` (or
``NumbersHandler``: ``load_handler(handler_class=NumbersHandler, model_name="numbers")``).
"""
from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

from ts.context import Context, RequestProcessor

from handler.digits_handler import DigitsHandler
from handler.spine import BatchHandler
from serving.archive import MODEL_FILE, MODEL_NAME, MODELS


def context(n: int, headers: list[dict] | dict | None = None, model_file: Path = MODEL_FILE,
            version: str = "local", gpu_id: int | None = None, model_name: str = MODEL_NAME) -> Context:
    """A worker's context for a batch of ``n`` requests; ``headers`` per request or for all."""
    manifest = {"model": {"modelName": model_name, "modelVersion": version, "serializedFile": Path(model_file).name}}
    ctx = Context(model_name, str(Path(model_file).parent), manifest, n, gpu_id, "0.12.0", metrics=mock.MagicMock())
    per_request = headers if isinstance(headers, list) else [dict(headers or {}) for _ in range(n)]
    ctx.request_processor = [RequestProcessor(h) for h in per_request]
    return ctx


def load_handler(model_file: Path | None = None, version: str = "local", gpu_id: int | None = None,
                 handler_class: type[BatchHandler] = DigitsHandler, model_name: str = MODEL_NAME) -> BatchHandler:
    """A handler (DigitsHandler unless told) initialised the way a TorchServe worker initialises
    it, with ``model_file`` or else the model's own network (serving.archive.MODELS)."""
    model_file = model_file or MODELS[model_name][2]
    handler = handler_class()
    handler.initialize(context(1, model_file=model_file, version=version, gpu_id=gpu_id, model_name=model_name))
    return handler


def handle(handler: BatchHandler, requests: list[dict], headers: list[dict] | dict | None = None):
    """One batch through ``handler.handle``; returns [(HTTP status, parsed answer)] and the context."""
    ctx = context(len(requests), headers)
    answers = handler.handle(requests, ctx)
    return [(ctx.get_response_status(i)[0], json.loads(a)) for i, a in enumerate(answers)], ctx
