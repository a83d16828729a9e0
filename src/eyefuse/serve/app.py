"""The web service (`eyefuse serve`): prediction and Grad-CAM for uploaded photograph pairs, with a page.

Over 500 lines on purpose: this is the one FastAPI application, and a reader follows a request
through it in one file (host check, security headers, endpoints, the model slots, the error
handlers). Parsing the multipart uploads is `eyefuse.serve.multipart`; predicting is
`eyefuse.serve.predict`.

Endpoints (every error is JSON ``{"error": message}``, also for 404, 405 and validation errors):

- ``GET /``: a small page (``static/``, no external resources) to pick two photographs and see the
  probabilities as bars, the warnings and the Grad-CAM heatmaps.
- ``GET /health``: ``{"status": "ok"}``.
- ``GET /v1/model``: labels (+ long names), thresholds, input size, preprocessing, head and
  architecture, model kind (``pytorch`` | ``onnx``), eyefuse version, the service's limits.
- ``POST /v1/predict``: ``multipart/form-data`` with files ``left`` and/or ``right`` (optional text
  field ``id``) -> `PatientPrediction.to_dict()`, the same JSON as one patient of ``eyefuse predict``.
- ``POST /v1/explain``: the same, plus optional ``labels`` (``D,G``) -> probabilities and, per
  explained label, a PNG (base64) with the left and right Grad-CAM overlays side by side.

Decisions where the task left room:

- Status codes for uploads (the content is judged by its bytes; file name and content type are
  ignored): 413 for a body over ``max_upload_mb`` (declared by Content-Length, or counted while it
  is read, so an unbounded chunked body is cut off early) and for an image over the decompression
  bomb limit (`eyefuse.data.decode.MAX_PIXELS`, by header, before decoding); 415 for bytes that
  are not a complete image (not an image, truncated or corrupt, unsupported pixel format) and for a
  body that is not ``multipart/form-data``; 422 for a request that is well-formed but unusable: no
  photograph at all, an empty file, an image too small or without a field of view, an unknown or
  repeated form field, an unknown label; 400 for a malformed multipart body.
- An uploaded file that cannot be used is an error of the request, not a warning: the client chose
  to send it. Only an eye that was not sent is predicted around, with the warning ``predict`` gives.
  A file part with an empty file name and no bytes (what a browser sends for an empty file input)
  counts as not sent.
- Uploads are parsed in memory (never written to disk, whatever their names); a body can hold at
  most ``max_upload_mb`` MiB (2**20 bytes), so memory is bounded by that per request in flight.
- Concurrency: model work (preprocessing included) runs in a pool of ``max_concurrency`` threads,
  off the event loop; a request waits for a free slot up to ``queue_timeout_s`` seconds, then gets
  503 with ``Retry-After``. With a PyTorch model the forward passes are serialised by a lock (the
  model keeps per-call state, the attention maps that Grad-CAM reads; and one forward already uses
  every core); preprocessing still runs in parallel. ONNX Runtime sessions are thread-safe.
- ``/v1/model`` names the checkpoint by its last two path components (``run/best``) or the ONNX file
  name, never the full server path, which would disclose the server's file system layout.
- ``/v1/explain`` with an ONNX model answers 501 (Grad-CAM needs gradients, i.e. the PyTorch
  checkpoint); ``/v1/model`` says so in ``explain_available``.
- The interactive API docs (``/docs``) are disabled: they load scripts from a CDN. The OpenAPI schema
  stays at ``/openapi.json``.
- Responses carry a strict Content-Security-Policy (only this origin; images also from ``data:`` and
  ``blob:`` for the heatmaps and the previews) and ``Cache-Control: no-store`` on the API (patient data).
- An unexpected exception in one request is logged and answered with 500; the service goes on.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from eyefuse import ODIR_LABEL_NAMES, ODIR_LABELS, __version__
from eyefuse.data.laterality import input_warnings, same_photograph
from eyefuse.data.preprocess import PreprocessError, preprocess_image
from eyefuse.errors import ConfigError, EyefuseError
from eyefuse.serve.explain import explain_pair, render_pair
from eyefuse.serve.multipart import MIB, RequestError, Upload, form_schema, read_multipart, shown_name
from eyefuse.serve.predict import SIDES, Predictor, PreparedPair, pair_id_from_files
from eyefuse.utils.optional import optional_import

logger = logging.getLogger("eyefuse.serve")

STATIC_DIR = Path(__file__).with_name("static")
#: Seconds a request waits for a free model slot before it is answered 503.
QUEUE_TIMEOUT_S = 60.0

#: PreprocessError reasons (by their start) -> HTTP status; anything else is 422.
REASON_STATUS: tuple[tuple[str, int], ...] = (
    ("image too large", 413),
    ("not an image", 415),
    ("truncated", 415),
    ("unsupported pixel format", 415),
    ("empty file", 422),
    ("image too small", 422),
    ("no field of view", 422),
)

_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

T = TypeVar("T")


def status_for_reason(reason: str) -> int:
    """The HTTP status for a `PreprocessError` reason (see `REASON_STATUS`)."""
    return next((status for start, status in REASON_STATUS if reason.startswith(start)), 422)


# --- the service --------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str, extra: Sequence[str] | None = None) -> list[str]:
    """The Host header names the service answers when bound to `host`: for a loopback address its
    local names (so a web page of another site that rebinds its DNS name to 127.0.0.1 is refused),
    for a specific address that address, for a wildcard bind (0.0.0.0, ::) any name. `extra`
    (`--allowed-hosts`) replaces the list; ``*`` allows every name."""
    if extra:
        return [h.strip().strip("[]") for h in extra if h.strip()]
    if _is_loopback(host):
        return sorted({host.strip("[]"), "127.0.0.1", "localhost", "::1"})
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return [host.strip("[]")]


class HostCheck:
    """Pure ASGI middleware answering 400 to a request whose Host header (without its port) is not
    one of `allowed` (DNS rebinding: a foreign page reaching a local service under its own name)."""

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.allowed:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            name = _host_name(headers.get("host", ""))
            if name not in self.allowed:
                body = b'{"detail": "Host header not allowed (see eyefuse serve --allowed-hosts)"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _host_name(header: str) -> str:
    """`example.org:8000` -> `example.org`; `[::1]:8000` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def checkpoint_name(source: Path) -> str:
    """How `/v1/model` names the model: the ONNX file name, or a checkpoint folder's last two
    components (``run/best``); never the full server path."""
    if source.suffix.lower() == ".onnx" or source.parent.name in ("", "."):
        return source.name
    return f"{source.parent.name}/{source.name}"


class Service:
    """The state behind the endpoints: the predictor, the limits and the model slots."""

    def __init__(
        self, predictor: Predictor, *, max_upload_mb: float, max_concurrency: int, queue_timeout_s: float
    ) -> None:
        self.predictor = predictor
        self.limit = int(max_upload_mb * MIB)
        self.max_upload_mb = max_upload_mb
        self.max_concurrency = max_concurrency
        self.queue_timeout_s = queue_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="eyefuse-model")
        # A PyTorch model keeps per-call state (attention maps read by Grad-CAM): one forward at a time.
        self.model_lock = threading.Lock() if predictor.backend == "torch" else None
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self.waiting = 0

    # -- bounded model work --

    def _slots(self) -> asyncio.Semaphore:
        # Bound to the running loop: a test client may run each request on a fresh loop.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the model thread pool once a slot is free (503 after
        `queue_timeout_s`). Library errors become 422; anything unexpected 500 (and is logged)."""
        slots = self._slots()
        self.waiting += 1
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.queue_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(
                503,
                f"the service is busy ({self.max_concurrency} request(s) in progress, {self.waiting - 1} "
                f"waiting longer than {self.queue_timeout_s:g} s); try again shortly",
                headers={"Retry-After": "5"},
            ) from None
        finally:
            self.waiting -= 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))
        # The slot is freed when the work ends, not when a disconnected client's task is cancelled.
        future.add_done_callback(lambda _: slots.release())
        try:
            return await asyncio.shield(future)
        except RequestError:
            raise
        except EyefuseError as e:
            raise RequestError(422, str(e)) from None
        except Exception as e:
            logger.exception("request failed")
            raise RequestError(
                500, f"internal error while processing the request ({type(e).__name__}); the service goes on"
            ) from None

    def _with_model(self, fn: Callable[[], T]) -> T:
        if self.model_lock is None:
            return fn()
        with self.model_lock:
            return fn()

    # -- work done in the pool --

    def prepare(self, patient_id: str, uploads: Mapping[str, Upload | None]) -> PreparedPair:
        """Preprocess the uploaded eyes; an unusable upload is a `RequestError` with its status."""
        images: dict[str, np.ndarray | None] = {}
        fovs: dict[str, Any] = {}
        notes: dict[str, list[str]] = {side: [] for side in SIDES}
        for side in SIDES:
            upload = uploads.get(side)
            images[side], fovs[side] = None, None
            if upload is None:
                continue
            named = f" ({shown_name(upload.filename)!r})" if upload.filename else ""
            where = f"form field {side!r}{named}"
            try:
                images[side], fovs[side] = preprocess_image(
                    bytes(upload.data), self.predictor.preprocess, name=where, notes=notes[side]
                )
            except PreprocessError as e:
                raise RequestError(status_for_reason(e.reason), f"{where}: {e.reason}") from None
        missing = [side for side in SIDES if images[side] is None]
        # The wording of `Predictor.prepare_pair`, so the service and `eyefuse predict` agree.
        warnings = [
            f"{side} eye: no image given; predicted from the {'right' if side == 'left' else 'left'} eye only"
            for side in missing
        ]
        left, right = (uploads.get(side) for side in SIDES)
        same = same_photograph(*(None if u is None else u.data for u in (left, right)))
        warnings += input_warnings(images, same_file=same, notes=notes)
        return PreparedPair(patient_id, images, fovs, warnings)

    def predict(self, patient_id: str, uploads: Mapping[str, Upload | None]) -> dict[str, Any]:
        prepared = self.prepare(patient_id, uploads)
        (prediction,) = self._with_model(lambda: self.predictor.predict_prepared([prepared]))
        if prediction.failed:
            raise RequestError(422, prediction.error or "the patient could not be predicted")
        return prediction.to_dict()

    def explain(
        self, patient_id: str, uploads: Mapping[str, Upload | None], labels: list[str] | None
    ) -> dict[str, Any]:
        prepared = self.prepare(patient_id, uploads)
        expl = self._with_model(
            lambda: explain_pair(
                self.predictor,
                prepared.images["left"],
                prepared.images["right"],
                labels,
                patient_id=patient_id,
            )
        )
        overlays = []
        for label in expl.labels:
            p, thr = expl.probabilities[label], expl.thresholds[label]
            positive = label in expl.predicted
            name = self.long_name(label)
            title = f"{label} ({name})" if name != label else label
            heading = f"{title}: p = {p:.3f}, threshold {thr:.2f}, {'positive' if positive else 'negative'}"
            rgb = render_pair(expl.images, expl.cams[label], heading)
            ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:  # pragma: no cover - PNG encoding of a uint8 image does not fail
                raise RuntimeError("could not encode the heatmap as PNG")
            overlays.append(
                {
                    "label": label,
                    "name": name,
                    "probability": float(p),
                    "threshold": float(thr),
                    "positive": positive,
                    "media_type": "image/png",
                    "width": int(rgb.shape[1]),
                    "height": int(rgb.shape[0]),
                    "png_base64": base64.b64encode(png.tobytes()).decode("ascii"),
                }
            )
        return {
            "id": patient_id,
            "probabilities": expl.probabilities,
            "thresholds": expl.thresholds,
            "labels": expl.predicted,
            "explained": expl.labels,
            "warnings": prepared.warnings,
            "eyes_present": {side: expl.images[side] is not None for side in SIDES},
            "method": "Grad-CAM on each eye's last feature map; both eyes of a label normalized jointly, "
            "so the colours compare the eyes",
            "overlays": overlays,
        }

    # -- descriptions --

    def long_name(self, label: str) -> str:
        if tuple(self.predictor.label_names) == ODIR_LABELS:
            return ODIR_LABEL_NAMES.get(label, label)
        return label

    def model_info(self) -> dict[str, Any]:
        pred = self.predictor
        meta = pred.meta
        model_cfg = meta.model_config
        thresholds = {k: float(t) for k, t in zip(pred.label_names, pred.thresholds, strict=True)}
        return {
            "model_kind": "pytorch" if pred.backend == "torch" else "onnx",
            "checkpoint": checkpoint_name(pred.source),
            "eyefuse_version": __version__,
            "labels": [
                {"label": k, "name": self.long_name(k), "threshold": thresholds[k]} for k in pred.label_names
            ],
            "label_names": list(pred.label_names),
            "thresholds": thresholds,
            "thresholds_fitted": meta.thresholds_fitted,
            "calibrated": meta.calibrated,
            "decision_rule": "a label is positive when its probability > its threshold",
            "head": pred.head,
            "architecture": {
                key: model_cfg.get(key) for key in ("backbone", "attention", "attention_placement", "fusion")
            },
            "input_size": int(pred.preprocess.size),
            "preprocessing": dict(meta.preprocess),
            "explain_available": pred.backend == "torch",
            "limits": {
                "max_upload_mb": self.max_upload_mb,
                "max_concurrency": self.max_concurrency,
                "queue_timeout_s": self.queue_timeout_s,
            },
        }

    # -- request parsing --

    async def read_patient(
        self, request: Request, extra_fields: Sequence[str] = ()
    ) -> tuple[str, dict[str, Upload | None], dict[str, str]]:
        """The patient ID, the uploaded eyes (None where not sent) and the text fields of a request."""
        parts = await read_multipart(request, self.limit, (*SIDES, "id", *extra_fields), files=SIDES)
        uploads: dict[str, Upload | None] = {}
        for side in SIDES:
            part = parts.get(side)
            # An empty file input of an HTML form sends a part with filename="" and no bytes.
            uploads[side] = None if part is None or (not part.data and not part.filename) else part
        if all(u is None for u in uploads.values()):
            raise RequestError(
                422,
                "no photograph given: send the left and/or the right eye as the multipart files "
                "'left' and 'right'",
            )
        text: dict[str, str] = {}
        for name, part in parts.items():
            if name in SIDES:
                continue
            try:
                text[name] = part.data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise RequestError(422, f"form field {name!r} is not UTF-8 text") from None
        patient_id = text.get("id", "")
        if not patient_id:
            # `{ID}_left.jpg` / `{ID}_right.jpg` give the ID, as for `eyefuse predict`; the names are
            # only read as text.
            names = [Path(u.filename) if u is not None and u.filename else None for u in uploads.values()]
            patient_id = pair_id_from_files(*names) if any(names) else "patient"
        if not patient_id.isprintable():
            raise RequestError(422, "form field 'id' holds control characters")
        return patient_id, uploads, text

    def parse_labels(self, text: str | None) -> list[str] | None:
        """The ``labels`` form field (``D,G``) as a list; None (the default labels) when absent."""
        if not text:
            return None
        items = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
        if not items:
            raise RequestError(422, "form field 'labels' names no label; give e.g. D,G or leave it out")
        unknown = [s for s in items if s not in self.predictor.label_names]
        if unknown:
            raise RequestError(
                422,
                f"form field 'labels': unknown label(s) {', '.join(shown_name(s) for s in unknown)}; "
                f"the model's labels are {', '.join(self.predictor.label_names)}",
            )
        return items


# --- middleware and handlers ----------------------------------------------------------------------


class SecurityHeaders:
    """Pure ASGI middleware adding the Content-Security-Policy and related headers to every
    response, and ``Cache-Control: no-store`` to the API's (they hold patient data)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith("/v1/")

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {shown_name(request.url.path)}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed for {request.url.path}"
        return _error(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        ]
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error", exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the service goes on")


# --- the application ----------------------------------------------------------------------------


def create_app(
    checkpoint: str | Path,
    *,
    max_upload_mb: float = 20,
    max_concurrency: int = 2,
    device: str = "cpu",
    queue_timeout_s: float = QUEUE_TIMEOUT_S,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The FastAPI application serving `checkpoint` (checkpoint folder, run folder or ``.onnx``).

    Args:
        checkpoint: the model; loaded now, so a bad checkpoint fails before the service starts.
        max_upload_mb: largest request body in MiB (both photographs together).
        max_concurrency: requests whose model work runs at once; others wait.
        device: torch device for a PyTorch checkpoint (ONNX runs on the CPU).
        queue_timeout_s: how long a request waits for a free slot before it is answered 503.
        allowed_hosts: Host header names answered (others get 400); None answers any (`serve`
            always passes `allowed_hosts_for` its address).
    """
    if not (isinstance(max_upload_mb, (int, float)) and math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise ConfigError(f"--max-upload-mb must be a positive number of MB, not {max_upload_mb!r}")
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ConfigError(f"--workers-concurrency must be a whole number >= 1, not {max_concurrency!r}")
    if not queue_timeout_s > 0:
        raise ConfigError(f"queue_timeout_s must be positive, not {queue_timeout_s!r}")
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    service = Service(
        predictor,
        max_upload_mb=max_upload_mb,
        max_concurrency=max_concurrency,
        queue_timeout_s=queue_timeout_s,
    )
    index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        yield
        service.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="eyefuse",
        version=__version__,
        description="Binocular fundus photograph classification (ODIR-5K labels) with Grad-CAM.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(SecurityHeaders)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=list(allowed_hosts))  # outermost: checked first
    _install_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(index_html)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: answers while the service runs."""
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model's labels, thresholds, input size, preprocessing and kind."""
        return service.model_info()

    @app.post("/v1/predict", openapi_extra=form_schema("left", "right", "id"))
    async def predict(request: Request) -> dict[str, Any]:
        """Probabilities and decided labels for one patient's photographs (one eye may be missing)."""
        patient_id, uploads, _ = await service.read_patient(request)
        return await service.run(service.predict, patient_id, uploads)

    @app.post("/v1/explain", openapi_extra=form_schema("left", "right", "id", "labels"))
    async def explain(request: Request) -> dict[str, Any]:
        """Grad-CAM overlays (left and right side by side, base64 PNG) for the chosen labels."""
        if predictor.backend != "torch":
            raise RequestError(
                501,
                f"Grad-CAM needs the PyTorch checkpoint (gradients); this service runs the ONNX model "
                f"{checkpoint_name(predictor.source)}. Start it with the checkpoint folder to get heatmaps",
            )
        patient_id, uploads, text = await service.read_patient(request, ("labels",))
        labels = service.parse_labels(text.get("labels"))
        return await service.run(service.explain, patient_id, uploads, labels)

    return app


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_mb: float = 20,
    max_concurrency: int = 2,
    device: str = "cpu",
    queue_timeout_s: float = QUEUE_TIMEOUT_S,
    log_level: str = "info",
    allowed_hosts: Sequence[str] | None = None,
) -> None:
    """`eyefuse serve`: load the model and serve it with uvicorn until interrupted (Ctrl-C).

    Binds 127.0.0.1 by default; the service has no authentication, so another address is logged
    as a warning. Requests whose Host header does not name the address served are refused
    (`allowed_hosts_for`; `allowed_hosts` replaces that list, ``*`` allows any).
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {port!r}")
    app = create_app(
        checkpoint,
        max_upload_mb=max_upload_mb,
        max_concurrency=max_concurrency,
        device=device,
        queue_timeout_s=queue_timeout_s,
        allowed_hosts=allowed_hosts_for(host, allowed_hosts),
    )
    uvicorn = optional_import("uvicorn", "serve")

    if not _is_loopback(host):
        logger.warning(
            "binding %s: the service has no authentication; anyone who can reach this address can "
            "upload photographs to it",
            host,
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


__all__ = [
    "REASON_STATUS",
    "HostCheck",
    "Service",
    "allowed_hosts_for",
    "checkpoint_name",
    "create_app",
    "serve",
    "status_for_reason",
]
