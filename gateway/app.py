"""``create_app(settings)``: the ASGI application. The only module that imports FastAPI.

The two completion routes reach :class:`handler.Gateway` through a thin pure-ASGI layer
(authentication and limits first); everything else (lifespan, models, health, metrics, admin)
is a FastAPI route. Bodies are validated once, by :func:`protocol.parse_request`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import (
    AdminAuthError,
    GatewayError,
    ProfileError,
    RequestTooLarge,
)
from .handler import (
    Gateway,
    error_response,
    json_response,
    read_body,
    request_id,
)
from .metrics import GatewayMetrics, RequestRecord, StateCollector
from .pool import BackendPool
from .profiles import ProfileSet, load_profiles
from .protocol import (
    ENDPOINT_PATHS,
    ChatCompletionRequest,
    CompletionRequest,
    Endpoint,
    error_body,
    inline_schema,
)
from .reload import ProfileStore
from .security import (
    allows,
)
from .settings import Settings
from .tokens import TokenizerCache
from .upstream import UpstreamClient

log = logging.getLogger("gateway")

_HOT_ROUTES: dict[str, Endpoint] = {path: ep for ep, path in ENDPOINT_PATHS.items()}


class GatewayApp:
    """The ASGI entry point: the two completion routes go straight to :class:`Gateway`;
    everything else (and lifespan) to the FastAPI app.

    Pure ASGI on the hot path (STYLE 2.11): FastAPI's middleware stack wraps every ``send``
    of every chunk, which measured about a fifth of the gateway's CPU under streaming load.
    """

    def __init__(self, api: FastAPI) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = _HOT_ROUTES.get(scope["path"])
            if endpoint is not None:
                gateway: Gateway = self.api.state.gateway
                headers = dict(scope["headers"])
                rec = RequestRecord(request_id(headers.get(b"x-request-id")), endpoint)
                response: Response
                try:
                    snapshot = gateway.store.current
                    limits = snapshot.limits
                    key = gateway.keyring(snapshot).authenticate(headers.get(b"authorization"))
                    declared = headers.get(b"content-length", b"")
                    if declared.isdigit() and int(declared) > limits.max_body_bytes:
                        raise RequestTooLarge(limits.max_body_bytes)
                    who = key.id if key else (scope.get("client") or ("anonymous",))[0]
                    if limits.key_rate:
                        await gateway.rate_limiter(limits.rate_storage).hit(limits.key_rate, who)
                    gateway.gate.acquire(who, limits.max_in_flight, limits.key_max_in_flight)
                    rec.slot = who
                    raw = await read_body(receive, limits.max_body_bytes)
                    response = await gateway.handle(raw, endpoint, headers, rec, key)
                except asyncio.CancelledError:
                    rec.status = 499  # the client went away before its answer started
                    gateway.finish(rec)
                    raise
                except GatewayError as exc:
                    if exc.status >= 500:
                        log.warning("POST %s -> %d %s", scope["path"], exc.status, exc.code)
                    rec.status, rec.error = exc.status, exc.code
                    gateway.finish(rec)
                    response = error_response(exc)
                except Exception:
                    log.exception("unhandled error on POST %s", scope["path"])
                    rec.status, rec.error = 500, "internal_error"
                    gateway.finish(rec)
                    response = json_response(
                        error_body("Internal gateway error", "server_error", code="internal_error"),
                        500,
                    )
                response.headers["x-request-id"] = rec.request_id
                await response(scope, receive, send)
                return
        await self.api(scope, receive, send)


def create_app(
    settings: Settings,
    profiles: ProfileSet | None = None,
    tokenizers: TokenizerCache | None = None,
    registry: CollectorRegistry | None = None,
) -> GatewayApp:
    """Build the app. ``profiles`` defaults to loading ``settings.config`` at start-up;
    metrics go to ``registry`` (a fresh one by default)."""
    tokenizer_cache = tokenizers or TokenizerCache()
    metrics = GatewayMetrics(registry or CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        snapshot = profiles
        if snapshot is None:
            snapshot = await asyncio.to_thread(
                load_profiles, settings.config, tokenizer_cache.resolve
            )
        is_file = await asyncio.to_thread(Path(settings.config).is_file)
        path = settings.config if is_file else None
        store = ProfileStore(path, snapshot, tokenizer_cache)
        store.on_result = lambda result: metrics.reloads.labels(result).inc()
        loop = asyncio.get_running_loop()
        sighup = False
        if path is not None:
            if settings.watch:
                store.start_watching()
            try:
                loop.add_signal_handler(signal.SIGHUP, store.trigger, "SIGHUP")
                sighup = True
            except (RuntimeError, ValueError, NotImplementedError):
                log.debug("SIGHUP reload unavailable (not the main thread)")
        async with UpstreamClient(max_connections=settings.max_upstream_connections) as up:
            pool = BackendPool(snapshot.health, up.probe)
            pool.start(lambda: store.current)
            app.state.gateway = Gateway(settings, store, up, pool, metrics)
            log.info(
                "serving %d model(s), profile version %s", len(snapshot.models), snapshot.version
            )
            if not settings.api_keys and not snapshot.key_digests:
                log.warning(
                    "no client API keys configured: the gateway serves anyone who can reach "
                    "it (set GATEWAY_API_KEYS or auth.keys_file)"
                )
            if settings.admin_token is None:
                log.info("admin routes are off (set GATEWAY_ADMIN_TOKEN to enable /admin/*)")
            try:
                yield
            finally:
                if sighup:
                    loop.remove_signal_handler(signal.SIGHUP)
                await pool.aclose()
                await store.aclose()

    app = FastAPI(title="gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    def gw(request: Request) -> Gateway:
        return request.app.state.gateway  # type: ignore[no-any-return]

    # Served by GatewayApp before FastAPI sees them; registered so that mounting the FastAPI
    # app alone still works and the routes appear in its OpenAPI schema.
    async def chat_completions(request: Request) -> Response:
        return await gw(request).handle(await request.body(), "chat")

    async def completions(request: Request) -> Response:
        return await gw(request).handle(await request.body(), "completions")

    async def models(request: Request) -> Response:
        g = gw(request)
        snapshot = g.profiles
        auth = request.headers.get("authorization")
        key = g.keyring(snapshot).authenticate(auth.encode("latin-1") if auth else None)
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "gateway"}
            for name in snapshot.models
            if allows(key, name)
        ]
        return json_response({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        g = gw(request)
        return json_response(
            {
                "status": "ok",
                "profile_version": g.profiles.version,
                "backends": g.pool.describe(g.profiles.backends()),
            }
        )

    async def ready(request: Request) -> Response:
        """Ready when every model has at least one healthy backend."""
        g = gw(request)
        missing = sorted(
            name
            for name, p in g.profiles.models.items()
            if p.variant is None and not any(g.pool.available(b) for b in p.backends)
        )
        body = {"ready": not missing, "models_without_backend": missing}
        return json_response(body, 200 if not missing else 503)

    def check_admin(request: Request) -> None:
        token = settings.admin_token
        if token is None:  # admin routes are off: indistinguishable from an unknown path
            raise StarletteHTTPException(404)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise AdminAuthError("Invalid admin token")

    async def admin_profiles(request: Request) -> Response:
        check_admin(request)
        store = gw(request).store
        return json_response(
            {
                **store.current.describe(),
                "loaded_at": store.loaded_at,
                "reloads": store.counts,
                "last_error": store.last_error,
            }
        )

    async def admin_reload(request: Request) -> Response:
        check_admin(request)
        store = gw(request).store
        try:
            snapshot = await store.reload("admin")
        except ProfileError as exc:
            body = error_body(exc.message, "invalid_profile", code="profile_invalid")
            body["error"]["errors"] = exc.errors
            body["error"]["serving_version"] = store.current.version
            return json_response(body, 422)
        return json_response({"version": snapshot.version, "models": list(snapshot.models)})

    app.add_route("/admin/profiles", admin_profiles, methods=["GET"])
    app.add_route("/admin/reload", admin_reload, methods=["POST"])
    for path, endpoint_fn, model in (
        (ENDPOINT_PATHS["chat"], chat_completions, ChatCompletionRequest),
        (ENDPOINT_PATHS["completions"], completions, CompletionRequest),
    ):
        # Documented here (request body schema for clients and schemathesis); served by
        # GatewayApp, which reads and validates the body itself.
        app.add_api_route(
            path,
            endpoint_fn,
            methods=["POST"],
            response_class=Response,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": inline_schema(model)}},
                }
            },
        )
    app.add_api_route("/v1/models", models, methods=["GET"], response_class=Response)

    async def metrics_route(request: Request) -> Response:
        g = gw(request)
        up = [
            (name, b.name, g.pool.available(b))
            for name, p in g.profiles.models.items()
            if p.variant is None
            for b in p.backends
        ]
        body = g.metrics.exposition([StateCollector(up, g.profiles.version)])
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics_route, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"], response_class=Response)
    app.add_api_route("/ready", ready, methods=["GET"], response_class=Response)

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.code)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            msg = f"Unknown path: {request.method} {request.url.path}"
            body = error_body(msg, "invalid_request_error", code="not_found")
        elif exc.status_code == 405:
            msg = f"Method {request.method} not allowed on {request.url.path}"
            body = error_body(msg, "invalid_request_error", code="method_not_allowed")
        else:
            body = error_body(str(exc.detail), "invalid_request_error", code=exc.status_code)
        return json_response(body, exc.status_code, dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return json_response(
            error_body("Internal gateway error", "server_error", code="internal_error"), 500
        )

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    return GatewayApp(app)


def app_from_env() -> GatewayApp:
    """The app for ``uvicorn --factory`` (worker processes): settings from the environment."""
    return create_app(Settings.from_env())
