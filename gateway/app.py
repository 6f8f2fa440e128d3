"""The web page's gateway: the files in ui/ and one forwarded call, on one origin.

TorchServe's token authorization covers inference and management alike, so a browser must
never hold its keys. This small Starlette app stands in front of it on loopback:

- ``GET /`` and the other files of ``ui/`` (static, no build step);
- ``POST /api/predict``: an image body (PNG, JPEG, GIF, BMP or WebP, at most
  ``model.preprocess.MAX_BYTES``) forwarded to TorchServe's ``/predictions/digits`` with the
  inference key, and TorchServe's answer passed back;
- ``POST /api/numbers``: the same, forwarded to ``/predictions/numbers`` (a handwritten number);
- ``GET /api/health``: whether TorchServe answers, and the upload limits the page enforces;
- ``POST /api/feedback``: a correction the person agreed to share (``serving/feedback.py``),
  stored in the SQLite file ``feedback_db``; TorchServe is not involved.

Nothing else is forwarded: there is no route to the management API or to any other
inference path. Every error reaches the page as ``{"error": code, "detail": sentence}``.

Keys come from the server's ``key_file.json``. Inference keys expire (``token_expiration_min``);
TorchServe then answers 400 ``InvalidKeyException`` but leaves the expired key in the file.
The gateway then re-reads the file (a restarted server writes new keys) and, if that holds
the same stale key, asks ``GET {management}/token?type=inference`` with the API key, which
makes TorchServe write a fresh inference key to the file, and retries once.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from model.preprocess import FORMATS, MAX_BYTES
from serving.archive import MODEL_NAME
from serving.feedback import MAX_BODY, FeedbackError, FeedbackStore, client_key, parse

logger = logging.getLogger("gateway")

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
# The formats model.preprocess decodes, as the MIME types browsers send for them.
ACCEPTED_TYPES = tuple(sorted(f"image/{fmt.lower()}" for fmt in FORMATS))
TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-ms-bmp": "image/bmp",
                "image/x-bmp": "image/bmp"}
FORWARDED_HEADERS = ("x-activations",)  # the only request header the page may pass on
TIMEOUT = httpx.Timeout(60.0, connect=5.0)  # a cold worker can take seconds; a dead port fails fast

# What the page is allowed to load: only this origin, plus data:/blob: images it makes itself.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class GatewayError(Exception):
    """An answer for the page that is not TorchServe's: a status and a JSON reason."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail)


def error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class InferenceKey:
    """TorchServe's inference key, cached, and renewed when TorchServe says it expired."""

    def __init__(self, key_file: Path, management_url: str):
        self.key_file = key_file
        self.management_url = management_url
        self._key: str | None = None
        self._lock = asyncio.Lock()

    def _read(self) -> dict[str, str]:
        try:
            raw = json.loads(self.key_file.read_text())
            return {name: entry["key"] for name, entry in raw.items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GatewayError(503, "model_server_down",
                               "The model server is not running (it has no key file); start it with make serve.") from e

    def current(self) -> str:
        if self._key is None:
            self._key = self._read()["inference"]
        return self._key

    async def renew(self, stale: str, client: httpx.AsyncClient) -> None:
        """Replace ``stale``, the key TorchServe just refused, once, however many requests saw it fail."""
        async with self._lock:
            if self._key != stale:  # a concurrent request has renewed it already
                return
            keys = self._read()
            if keys["inference"] != stale:  # the server restarted, or someone else renewed it
                self._key = keys["inference"]
                return
            try:
                r = await client.get(f"{self.management_url}/token", params={"type": "inference"},
                                     headers={"Authorization": f"Bearer {keys['API']}"})
            except httpx.HTTPError as e:
                raise GatewayError(503, "model_server_down", "The model server's key expired and it could not "
                                   "be reached for a new one.") from e
            if r.status_code != 200:
                raise GatewayError(502, "key_refresh_failed", f"The model server refused to issue a new inference "
                                   f"key (HTTP {r.status_code}).")
            self._key = self._read()["inference"]  # TorchServe writes the new key to the file
            logger.info("inference key renewed")


def is_invalid_key(r: httpx.Response) -> bool:
    return r.status_code == 400 and "InvalidKeyException" in r.text


def translate(r: httpx.Response, model: str = MODEL_NAME) -> Response:
    """TorchServe's answer, as the page gets it: JSON, with a status the page can act on."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code == 200 and isinstance(body, dict) and ("digit" in body or "text" in body):  # digits, numbers
        return Response(r.content, media_type="application/json")
    if isinstance(body, dict) and "error" in body and "detail" in body:  # the handler's own refusal
        return error_response(r.status_code, str(body["error"]), str(body["detail"]))
    kind = body.get("type", "") if isinstance(body, dict) else ""
    message = str(body.get("message", "")) if isinstance(body, dict) else ""  # never echo an HTML page
    if kind == "InvalidKeyException":
        raise GatewayError(502, "model_server_auth", "The model server refused the gateway's key, even a fresh one.")
    if r.status_code == 404:
        raise GatewayError(503, "model_unavailable", f"The model server has no '{model}' model loaded.")
    if r.status_code == 413:
        raise GatewayError(413, "too_large", f"The image is larger than {MAX_BYTES // (1024 * 1024)} MB.")
    if r.status_code in (503, 507):
        raise GatewayError(503, "model_busy", "The model could not answer just now; try again in a moment.")
    logger.warning("unexpected answer from TorchServe: HTTP %s %s", r.status_code, message)
    raise GatewayError(502, "model_server_error",
                       f"The model server failed (HTTP {r.status_code}{': ' + message if message else ''}).")


async def read_body(request: Request) -> bytes:
    """The request body, refused as soon as it is known to be over the limit."""
    too_large = GatewayError(413, "too_large", f"The image is larger than {MAX_BYTES // (1024 * 1024)} MB.")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise GatewayError(400, "bad_request", "Content-Length is not a number.")
        if int(declared) > MAX_BYTES:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BYTES:
            raise too_large
    if not body:
        raise GatewayError(400, "empty_body", "The request carried no image.")
    return bytes(body)


def content_type(request: Request) -> str:
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    ctype = TYPE_ALIASES.get(declared, declared)
    if ctype not in ACCEPTED_TYPES:
        sent = f"'{declared}'" if declared else "no content type"
        if declared.startswith(("image/heic", "image/heif")):
            sent += " (an iPhone's default photo format: share or export it as JPEG)"
        raise GatewayError(415, "unsupported_type",
                           f"Only PNG, JPEG, GIF, BMP and WebP images are accepted; this request sent {sent}.")
    return ctype


def create_app(key_file: Path, inference_url: str, management_url: str, ui_dir: Path = UI_DIR,
               allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
               feedback: FeedbackStore | None = None, models: tuple[str, ...] = (MODEL_NAME,)) -> Starlette:
    """The gateway for the TorchServe whose keys are in ``key_file``; corrections go to
    ``feedback`` (answered 503 when there is none) for the served ``models``."""
    secret = os.urandom(32)  # names clients for the rate limit; never written anywhere
    keys = InferenceKey(Path(key_file), management_url.rstrip("/"))
    predict_url = f"{inference_url.rstrip('/')}/predictions/{MODEL_NAME}"
    numbers_url = f"{inference_url.rstrip('/')}/predictions/numbers"
    ping_url = f"{inference_url.rstrip('/')}/ping"

    async def call(request: Request, method: str, url: str, headers: dict | None = None, **kw) -> httpx.Response:
        """One call to TorchServe with the inference key, retried once with a renewed key."""
        client: httpx.AsyncClient = request.app.state.client

        async def send(key: str) -> httpx.Response:
            try:
                return await client.request(method, url, headers={**(headers or {}), "Authorization": f"Bearer {key}"},
                                            **kw)
            except httpx.TimeoutException as e:
                raise GatewayError(504, "model_server_timeout", "The model server took too long to answer.") from e
            except httpx.TransportError as e:
                raise GatewayError(503, "model_server_down",
                                   "The model server is not answering; is it running? Start it with make serve.") from e

        key = keys.current()
        r = await send(key)
        if is_invalid_key(r):
            await keys.renew(key, client)
            r = await send(keys.current())
        return r

    async def predict(request: Request) -> Response:
        return await forward(request, predict_url, MODEL_NAME)

    async def predict_numbers(request: Request) -> Response:
        return await forward(request, numbers_url, "numbers")

    async def forward(request: Request, url: str, model: str) -> Response:
        """One picture to ``model`` under the same checks (type, size, forwarded headers)."""
        try:
            ctype = content_type(request)
            body = await read_body(request)
            headers = {"Content-Type": ctype}
            for name in FORWARDED_HEADERS:
                if name in request.headers:
                    headers[name] = request.headers[name]
            return translate(await call(request, "POST", url, content=body, headers=headers), model)
        except GatewayError as e:
            return e.response()

    async def health(request: Request) -> Response:
        limits = {"max_bytes": MAX_BYTES, "types": list(ACCEPTED_TYPES), "model": MODEL_NAME}
        try:
            r = await call(request, "GET", ping_url)
        except GatewayError as e:
            return JSONResponse({"status": "unavailable", "error": e.error, "detail": e.detail, **limits},
                                status_code=e.status)
        if r.status_code != 200:
            return JSONResponse({"status": "unavailable", "error": "model_server_error",
                                 "detail": f"The model server's health check answered HTTP {r.status_code}.",
                                 **limits}, status_code=503)
        return JSONResponse({"status": "ok", **limits})

    async def post_feedback(request: Request) -> Response:
        if feedback is None:
            return error_response(503, "feedback_off", "This gateway keeps no corrections (no feedback_db).")
        declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if declared != "application/json":
            return error_response(415, "unsupported_type", "Send the correction as application/json.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return error_response(413, "too_large", f"The image is larger than {MAX_BYTES // (1024 * 1024)} MB.")
        try:
            payload = json.loads(body)
        except ValueError:
            return error_response(400, "bad_json", "The body is not valid JSON.")
        try:
            correction = await asyncio.to_thread(parse, payload, models)
            client = client_key(secret, request.client.host if request.client else "")
            row = await asyncio.to_thread(feedback.add, correction, client)
        except FeedbackError as e:
            return error_response(e.status, e.error, e.detail)
        logger.info("feedback %d stored: %s %s answered %s, labelled %s", row, correction.model,
                    correction.version, correction.answer, correction.label)
        return JSONResponse({"id": row}, status_code=201)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: ("not_found", "There is nothing at this address."),
                 405: ("method_not_allowed", "This address does not accept that method.")}
        error, detail = codes.get(exc.status_code, ("http_error", str(exc.detail)))
        return error_response(exc.status_code, error, detail, headers=getattr(exc, "headers", None))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # trust_env=False: a proxy from the environment must never see the keys.
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
            app.state.client = client
            yield

    routes = [
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/numbers", predict_numbers, methods=["POST"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/feedback", post_feedback, methods=["POST"]),
        Mount("/", app=StaticFiles(directory=ui_dir, html=True)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
                                Middleware(SecurityHeaders)],
                    exception_handlers={HTTPException: http_error})
    app.state.keys = keys
    return app


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer, and keeps API answers out of caches."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_api = scope["path"].startswith("/api/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if is_api:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def split_address(address: str) -> tuple[str, int]:
    """``http://127.0.0.1:8000`` -> ("127.0.0.1", 8000)."""
    parts = urlsplit(address)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(f"gateway_address must look like http://127.0.0.1:8000, not {address!r}")
    return parts.hostname, parts.port
