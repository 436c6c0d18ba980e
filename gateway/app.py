"""``create_app(settings)``: the ASGI application. The only module that imports FastAPI.

One entrance: :class:`GatewayApp` sends the exact completion paths to
:meth:`handler.Gateway.serve` (admission first) and everything else to the FastAPI app, which
has no completion route at all, so no spelling of a completion path (``%0A``, a trailing
slash, ``//``, mixed case, ...) reaches an unguarded handler: those are 404. The completion
routes appear in the OpenAPI document, described statically. Errors of every route are
rendered by :func:`protocol.render_error`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .backend_info import BackendInfo, BackendInfoCollector
from .errors import (
    AdminAuthError,
    GatewayError,
    MethodNotAllowed,
    MetricsAuthError,
    ModelNotFound,
    NotFound,
    ProfileError,
)
from .handler import Gateway
from .metrics import GatewayMetrics, StateCollector
from .playground import add_playground  # playground (#16)
from .pool import BackendPool
from .profiles import ProfileSet, load_profiles
from .protocol import (
    ENDPOINT_PATHS,
    STORED_ENDPOINTS,
    ChatCompletionRequest,
    CompletionRequest,
    Endpoint,
    ResponsesRequest,
    error_body,
    inline_schema,
    render_error,
)
from .reload import ProfileStore
from .security import allows, client_address, header_map
from .server import LIMITS_KEY, SHUTDOWN_KEY, ServerLimits, raise_fd_limit
from .settings import Settings
from .tokens import TokenizerCache
from .upstream import UpstreamClient

log = logging.getLogger("gateway")

_HOT_ROUTES: dict[str, Endpoint] = {path: ep for ep, path in ENDPOINT_PATHS.items()}
#: Azure OpenAI's paths (``AzureOpenAI(base_url=...)``): the deployment names the model
_AZURE_ROUTE = re.compile(
    r"(?:/openai|/v1)?/deployments/(?P<model>[A-Za-z0-9._:-]{1,256})/(?P<route>chat/completions|completions)"
)
_AZURE_ENDPOINTS: dict[str, Endpoint] = {"chat/completions": "chat", "completions": "completions"}
_OPENAPI_MODELS: dict[str, type[BaseModel]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "responses": ResponsesRequest,
}
#: a stored response: ``/v1/responses/{id}`` and ``/v1/responses/{id}/cancel`` (#15)
_STORED_PREFIX = "/v1/responses/"
_STORED_METHODS = {"responses_get": "GET", "responses_cancel": "POST"}


def stored_route(path: str) -> tuple[Endpoint, str] | None:
    """``(endpoint, response id)`` for a stored-response path, else None."""
    if not path.startswith(_STORED_PREFIX):
        return None
    rest = path[len(_STORED_PREFIX) :]
    response_id, slash, tail = rest.partition("/")
    endpoint = STORED_ENDPOINTS.get(slash + tail)
    if endpoint is None or not response_id:
        return None
    return endpoint, response_id


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    import orjson

    return Response(orjson.dumps(obj), status, headers, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    status, body, headers = render_error(exc)
    return Response(
        body,
        status,
        {k.decode(): v.decode() for k, v in headers},
        media_type="application/json",
    )


class GatewayApp:
    """The ASGI entry point (see module doc). Pure ASGI on the hot path (STYLE 2.11):
    FastAPI's middleware stack wraps every ``send`` of every chunk, which measured about a
    fifth of the gateway's CPU under streaming load."""

    def __init__(self, api: FastAPI, cors_origins: tuple[str, ...] = ()) -> None:
        self.api = api
        self._entry: ASGIApp = self._route
        if cors_origins:  # off by default; when on, it answers preflights for every route
            self._entry = CORSMiddleware(
                self._route,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=[
                    "authorization",
                    "api-key",
                    "content-type",
                    "x-request-id",
                    "x-gateway-variant",
                ],
                expose_headers=["x-request-id", "x-gateway-profile-version", "x-gateway-backend"],
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root = scope.get("root_path") or ""
            if root and path.startswith(root):
                path = path[len(root) :]
            raw: bytes = scope.get("raw_path") or b""
            pct = raw.find(b"%")
            if pct != -1 and not raw[:pct].startswith(root.encode() + b"/v1/models/"):
                # No route is spelled with percent-encoding: serving /%61dmin/reload as
                # /admin/reload would let it past a proxy that filters by the raw path.
                unknown = NotFound(f"Unknown path: {scope['method']} {raw.decode('latin-1')}")
                await error_response(unknown)(scope, receive, send)
                return
            endpoint = _HOT_ROUTES.get(path)
            deployment = None
            if endpoint is None and "/deployments/" in path:
                m = _AZURE_ROUTE.fullmatch(path)
                if m is not None:  # Azure OpenAI clients: the model is in the path
                    endpoint = _AZURE_ENDPOINTS[m["route"]]
                    deployment = m["model"]
            if endpoint is not None:
                gateway: Gateway = self.api.state.gateway
                if scope["method"] == "POST":
                    await gateway.serve(scope, receive, send, endpoint, deployment)
                else:
                    exc = MethodNotAllowed(
                        f"Method {scope['method']} not allowed on {path}", "POST"
                    )
                    version = gateway.store.current.version
                    response = error_response(exc)
                    response.headers["x-gateway-profile-version"] = version
                    await response(scope, receive, send)
                return
            stored = stored_route(path)
            if stored is not None:  # GET /v1/responses/{id}, POST .../{id}/cancel (#15)
                endpoint, response_id = stored
                method = _STORED_METHODS[endpoint]
                if scope["method"] == method:
                    scope = {**scope, "path_params": {"response_id": response_id}}
                    await self.api.state.gateway.serve(scope, receive, send, endpoint)
                else:
                    exc = MethodNotAllowed(
                        f"Method {scope['method']} not allowed on {path}", method
                    )
                    response = error_response(exc)
                    version = self.api.state.gateway.store.current.version
                    response.headers["x-gateway-profile-version"] = version
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
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
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
            pool = BackendPool(snapshot.health, up.probe, info=BackendInfo(up.fetch))
            pool.start(lambda: store.current)
            gateway = app.state.gateway = Gateway(settings, store, up, pool, metrics)
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
            fds = raise_fd_limit()
            wanted = 2 * snapshot.limits.max_in_flight + 256
            if fds < wanted:
                log.warning(
                    "open-file limit %d holds about %d streams (2 sockets each), less than "
                    "limits.max_in_flight=%d: raise it (ulimit -n / the container's nofile) "
                    "or lower the limit; past it new requests get 503 gateway_overloaded",
                    fds,
                    (fds - 256) // 2,
                    snapshot.limits.max_in_flight,
                )
            try:
                # lifespan state: read by the guarded HTTP protocol (gateway.server)
                yield {LIMITS_KEY: ServerLimits.from_settings(settings), SHUTDOWN_KEY: gateway}
            finally:
                if sighup:
                    loop.remove_signal_handler(signal.SIGHUP)
                await pool.aclose()
                await store.aclose()

    app = FastAPI(title="gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.router.redirect_slashes = False  # a trailing slash is a 404, never a redirect

    def gw(request: Request) -> Gateway:
        return request.app.state.gateway  # type: ignore[no-any-return]

    async def visible_models(request: Request) -> list[str]:
        """The public model names the caller's key may use (all without keys)."""
        g = gw(request)
        snapshot = g.profiles
        headers = header_map(request.scope["headers"])
        key = await g.admission.authenticate(snapshot, headers, client_address(request.scope))
        return [name for name in snapshot.models if allows(key, name)]

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "gateway"}

    async def models(request: Request) -> Response:
        data = [model_object(name) for name in await visible_models(request)]
        return json_response({"object": "list", "data": data})

    async def model(request: Request) -> Response:
        """``client.models.retrieve``: a model the key may not use looks absent."""
        name = request.path_params["model_id"]
        if name not in await visible_models(request):
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        return json_response(model_object(name))

    def model_backends(g: Gateway) -> list[tuple[str, Any]]:
        return [
            (name, b)
            for name, p in g.profiles.models.items()
            if p.variant is None
            for b in p.backends
        ]

    async def health(request: Request) -> Response:
        """Liveness for anyone who can reach it: states by configured names, never the
        internal URLs (those are in /admin/profiles)."""
        g = gw(request)
        return json_response(
            {
                "status": "ok",
                "profile_version": g.profiles.version,
                "backends": g.pool.describe(model_backends(g)),
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
            raise NotFound(f"Unknown path: {request.method} {request.url.path}")
        given = header_map(request.scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise AdminAuthError("Invalid admin token")

    async def admin_profiles(request: Request) -> Response:
        check_admin(request)
        g = gw(request)
        store = g.store
        return json_response(
            {
                **store.current.describe(),
                "loaded_at": store.loaded_at,
                "reloads": store.counts,
                "last_error": store.last_error,
                "backends": g.pool.describe(
                    model_backends(g),
                    urls=True,
                    upstream={n: p.upstream_model for n, p in g.profiles.models.items()},
                ),
                "in_flight": g.admission.gate.total,
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
    app.add_api_route("/v1/models", models, methods=["GET"], response_class=Response)
    app.add_api_route("/v1/models/{model_id:path}", model, methods=["GET"], response_class=Response)

    async def metrics_route(request: Request) -> Response:
        token = settings.metrics_token
        if token is not None:  # Prometheus sends it (authorization: {credentials: ...})
            given = header_map(request.scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {token}".encode()):
                raise MetricsAuthError("Invalid metrics token")
        g = gw(request)
        up = [
            (name, b.name, g.pool.available(b))
            for name, p in g.profiles.models.items()
            if p.variant is None
            for b in p.backends
        ]
        extra: list[Any] = [StateCollector(up, g.profiles.version)]
        if g.pool.info is not None:  # each backend's scraped load and max_model_len
            served = [
                (name, b, p.upstream_model)
                for name, p in g.profiles.models.items()
                if p.variant is None
                for b in p.backends
            ]
            extra.append(BackendInfoCollector(g.pool.info, served))
        body = g.metrics.exposition(extra)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics_route, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"], response_class=Response)
    app.add_api_route("/ready", ready, methods=["GET"], response_class=Response)
    add_playground(app, settings, visible_models)  # playground (#16): GET /, /playground/*

    async def on_error(request: Request, exc: Exception) -> Response:
        """The side routes' error boundary: the same renderer as the completion routes."""
        if isinstance(exc, StarletteHTTPException):
            method, path = request.method, request.url.path
            if exc.status_code == 405:
                exc = MethodNotAllowed(f"Method {method} not allowed on {path}", "GET")
            else:
                exc = NotFound(f"Unknown path: {method} {path}")
        status, _, _ = render_error(exc)
        if status >= 500:
            log.error("error on %s", request.url.path, exc_info=exc)
        return error_response(exc)

    # GatewayError and HTTPException are answered by the inner exception middleware; only
    # the gateway's own bugs reach the outermost one (which answers, then re-raises so
    # uvicorn logs the traceback).
    app.add_exception_handler(GatewayError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_error)
    app.add_exception_handler(Exception, on_error)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return GatewayApp(app, settings.cors_origins)


def app_from_env() -> GatewayApp:
    """The app for ``uvicorn --factory`` (worker processes): settings from the environment.
    A worker is a fresh interpreter: it sets up logging itself (else its access log is
    lost)."""
    from .logs import configure

    settings = Settings.from_env()
    configure(settings.log_level)
    return create_app(settings)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the completion routes, described statically (they are served
    by :class:`GatewayApp`, not by a FastAPI route)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for endpoint, path in ENDPOINT_PATHS.items():
            schema["paths"][path] = {
                "post": {
                    "operationId": f"create_{endpoint}",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": inline_schema(_OPENAPI_MODELS[endpoint])}
                        },
                    },
                    "responses": {"200": {"description": "a completion or an event stream"}},
                }
            }
        param = {
            "name": "response_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        }
        answers = {"200": {"description": "the stored response"}}
        schema["paths"]["/v1/responses/{response_id}"] = {
            "get": {"operationId": "get_response", "parameters": [param], "responses": answers}
        }
        schema["paths"]["/v1/responses/{response_id}/cancel"] = {
            "post": {"operationId": "cancel_response", "parameters": [param], "responses": answers}
        }
        app.openapi_schema = schema
    return app.openapi_schema
