"""The Starlette application of ``sdmark serve``.

Every CPU-bound step (reading, verifying, marking, thumbnails) runs in the engine's thread pool,
never on the event loop. The body limit acts while the body streams; the body must keep a minimum
pace; it is received before a CPU place is taken, so slow uploads cannot fill the admission gate.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sdmark import __version__
from sdmark.core.errors import SdmarkError
from sdmark.serve import page
from sdmark.serve.limits import BodyLimit, BodyTooLarge, PacedReceive, UploadTooSlow
from sdmark.serve.metrics import Metrics
from sdmark.serve.openapi import docs_page, openapi_document
from sdmark.serve.settings import ServeSettings
from sdmark.serve.uploads import UploadRejected, keep_copy, receive_uploads
from sdmark.serve.work import Engine, Ticket, WorkTimeout

log = logging.getLogger("sdmark.serve")
ROUTES = frozenset({"/", "/v1/verify", "/v1/mark", "/v1/schemes", "/healthz", "/metrics", "/docs", "/openapi.json"})
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
MARK_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def create_app(settings: ServeSettings | None = None) -> Starlette:
    """A ready application; the engine (schemes, pool) is built at start-up, once per process."""
    settings = settings or ServeSettings.from_env()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = Engine(settings)
        engine.warm_up()
        app.state.engine = engine
        try:
            yield
        finally:
            engine.close()

    def reject_large(scope: dict[str, Any], exc: BodyTooLarge) -> Any:
        metrics.rejections.labels(reason="too_large").inc()
        # Connection: close makes the server drop the connection instead of draining the rest of the body.
        return _error(413, str(exc), wants_html=_is_page(scope), headers={"connection": "close"})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/", page_report, methods=["POST"]),
        Route("/v1/verify", verify, methods=["POST"]),
        Route("/v1/mark", mark, methods=["POST"]),
        Route("/v1/schemes", schemes, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=page.STATIC, follow_symlink=False), name="static"),
    ]
    app = Starlette(
        routes=routes,
        # Observed is outermost so that a 413 from BodyLimit is counted and gets the security headers.
        middleware=[Middleware(Observed, metrics=metrics),
                    Middleware(BodyLimit, limit=settings.max_upload_bytes, on_reject=reject_large)],
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    return app


def app_from_environment() -> Starlette:
    """The factory uvicorn calls in each worker (``--workers``): settings from ``SDMARK_SERVE_*``.

    With ``log_images`` it also sends the ``sdmark.serve`` log to stderr (uvicorn configures only its own)."""
    settings = ServeSettings.from_env()
    if settings.log_images and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s sdmark.serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return create_app(settings)


class Observed:
    """ASGI middleware: request count and latency per route, and the security headers on every answer."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/static" if path.startswith("/static/") else "other")
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.metrics.requests.labels(route=route, method=scope.get("method", ""), status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


def _is_page(scope: dict[str, Any]) -> bool:
    return scope.get("path") == "/"


def _error(status: int, message: str, *, wants_html: bool = False,
           headers: dict[str, str] | None = None) -> Response:
    """The one error shape: ``{"error": message, "status": code}``, or the page with the message."""
    if wants_html:
        return HTMLResponse(page.render_error(status, message), status_code=status, headers=headers)
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "not found")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed here")


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _busy(request: Request, html: bool = False) -> Response:
    settings: ServeSettings = request.app.state.settings
    _metrics(request).rejections.labels(reason="busy").inc()
    return _error(503, "the server is busy; try again shortly", wants_html=html,
                  headers={"Retry-After": str(settings.retry_after_s)})


async def _checked(request: Request, folder: Path, max_files: int, html: bool = False) -> Any:
    """The uploads of the request, stored in ``folder``, or the error response that refuses them."""
    settings: ServeSettings = request.app.state.settings
    # The body must keep a pace: an idle or trickling connection is answered 408 after the grace
    # period instead of holding its place for the whole timeout.
    paced = PacedReceive(request.receive, timeout_s=settings.timeout_s, min_rate=settings.min_upload_rate,
                         grace_s=settings.upload_grace_s)
    try:
        uploads = await receive_uploads(Request(request.scope, paced), folder, max_files, settings.max_upload_bytes)
    except UploadTooSlow as exc:
        _metrics(request).rejections.labels(reason="timeout").inc()
        return _error(408, str(exc), wants_html=html, headers={"connection": "close"})
    except UploadRejected as exc:
        _metrics(request).rejections.labels(reason=exc.reason).inc()
        return _error(exc.status, exc.message, wants_html=html)
    for upload in uploads:
        if settings.log_images:  # the operator's opt-in; names are repr()'d so they cannot forge log lines
            log.info("upload %r %s %d bytes sha256=%s", upload.name, upload.format, upload.size, upload.sha256)
        if settings.store_dir is not None:
            keep_copy(upload, settings.store_dir)
    return uploads


async def _run(request: Request, ticket: Ticket, job: Any, html: bool = False) -> Any:
    try:
        return await _engine(request).run(ticket, job)
    except WorkTimeout as exc:
        _metrics(request).rejections.labels(reason="timeout").inc()
        return _error(504, str(exc), wants_html=html)


async def _with_uploads(request: Request, handle: Any, *, max_files: int = 1, html: bool = False) -> Response:
    """Receive and sniff the request's uploads, then admit it to the CPU (503 when saturated) and
    answer with ``await handle(engine, ticket, uploads)``.

    The body is received first, holding only a place among the uploads arriving (``receiving``),
    so a slow or stalled upload never holds one of the few CPU places. A server already saturated
    refuses before reading the body. The CPU ticket's place is given back on the way out unless
    its work was submitted (the engine then gives it back when that work ends)."""
    engine = _engine(request)
    if engine.gate.full:  # would be refused after the upload anyway: spare the client sending it
        return _busy(request, html=html)
    arriving = engine.receive_place()
    if arriving is None:
        return _busy(request, html=html)
    try:
        uploads = await _checked(request, arriving.folder, max_files=max_files, html=html)
        if isinstance(uploads, Response):
            return uploads
        ticket = engine.admit(arriving.folder)
        if ticket is None:
            return _busy(request, html=html)
        arriving.hand_over()
    finally:
        arriving.release()
    try:
        return await handle(engine, ticket, uploads)
    finally:
        if not ticket.submitted:
            ticket.release()


async def verify(request: Request) -> Response:
    """``POST /v1/verify``: the ``sdmark verify --json`` report of the image in the field ``file``."""

    async def handle(engine: Any, ticket: Ticket, uploads: Any) -> Response:
        reports = await _run(request, ticket, lambda: engine.verify_uploads(uploads))
        if isinstance(reports, Response):
            return reports
        _metrics(request).count_reports(reports)
        report = reports[0]
        # The image passed sniffing but could not be decoded or checked: the report says why.
        # Serialised exactly as `sdmark verify --json` prints it (non-JSON values as str, not a 500).
        return Response(json.dumps(report, ensure_ascii=False, default=str), status_code=422 if report.get("error") else 200,
                        media_type="application/json", headers={"cache-control": "no-store"})

    return await _with_uploads(request, handle)


async def page_report(request: Request) -> Response:
    """``POST /``: the same reports as HTML (the page's form without JavaScript, and its script)."""
    settings: ServeSettings = request.app.state.settings
    fragment = request.query_params.get("fragment") == "1"

    async def handle(engine: Any, ticket: Ticket, uploads: Any) -> Response:
        def job() -> list[dict[str, Any]]:
            return [page.view(engine.verify_path(u.path, u.name), page.thumbnail_data_uri(u.path)) for u in uploads]

        views = await _run(request, ticket, job, html=True)
        if isinstance(views, Response):
            return views
        _metrics(request).count_reports([v["report"] for v in views])
        html = page.render_reports(views) if fragment else page.render_index(views)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    return await _with_uploads(request, handle, max_files=settings.max_files, html=True)


async def mark(request: Request) -> Response:
    """``POST /v1/mark``: run the operator's chain on the upload; off without a configured token."""
    settings: ServeSettings = request.app.state.settings
    if not settings.token:
        return _error(404, "marking is off on this server (the operator has set no token)")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
        _metrics(request).rejections.labels(reason="unauthorized").inc()
        return _error(401, "a valid bearer token is required",
                      headers={"WWW-Authenticate": 'Bearer realm="sdmark"'})
    fmt = request.query_params.get("format", "png").lower()
    if fmt not in MARK_FORMATS:
        return _error(422, f"format must be one of {', '.join(MARK_FORMATS)}")

    async def handle(engine: Any, ticket: Ticket, uploads: Any) -> Response:
        folder = ticket.folder
        try:
            done = await _run(request, ticket, lambda: engine.mark(uploads[0], folder, fmt))
        except SdmarkError as exc:  # the chain refused or failed this image
            return _error(422, str(exc))
        if isinstance(done, Response):
            return done
        data, summary = done
        stages = ",".join(stage.get("stage", "?") for stage in (summary.get("record") or {}).get("stages") or [])
        return Response(data, media_type=MARK_FORMATS[fmt], headers={
            "content-disposition": f'attachment; filename="marked.{"jpg" if fmt == "jpeg" else fmt}"',
            "x-sdmark-stages": stages, "cache-control": "no-store"})

    return await _with_uploads(request, handle)


async def schemes(request: Request) -> Response:
    """``GET /v1/schemes``: every scheme verify knows and whether this server checks it."""
    from sdmark.plugins.watermark.schemes import scheme_registry

    checked = {scheme.name for scheme in _engine(request).schemes}
    return JSONResponse({"schemes": [
        {"name": s.name, "decoder": s.decoder, "description": s.description, "costly": bool(s.costly),
         "checked": s.name in checked} for s in scheme_registry(_engine(request).runtime)]})


async def healthz(request: Request) -> Response:
    engine = _engine(request)
    return JSONResponse({"status": "ok", "version": __version__, "schemes": [s.name for s in engine.schemes],
                         "busy": engine.gate.held, "capacity": engine.gate.capacity, "receiving": engine.receiving.held,
                         "mark": bool(request.app.state.settings.token)})


async def metrics_endpoint(request: Request) -> Response:
    return Response(_metrics(request).render(), media_type=Metrics.content_type)


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.settings))


async def docs(request: Request) -> Response:
    return HTMLResponse(docs_page(openapi_document(request.app.state.settings)))


async def index(request: Request) -> Response:
    return HTMLResponse(page.render_index([]))
