"""``create_app(settings)``: the ASGI application. The only module that imports FastAPI.

The hot routes are plain Starlette endpoints (``Request -> Response``) so no dependency
injection or response-model machinery runs per request; bodies are validated once by
:func:`protocol.parse_request`.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import (
    AdminAuthError,
    GatewayError,
    ModelNotFound,
    ProfileError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .profiles import Backend, Profile, ProfileSet, load_profiles
from .protocol import Endpoint, error_body, error_body_for, parse_request
from .reload import ProfileStore
from .settings import Settings
from .stream import StreamNormalizer, normalize_response, relay
from .tokens import TokenizerCache
from .transform import build_upstream_body
from .upstream import UpstreamClient

log = logging.getLogger("gateway")

_UPSTREAM_PATH: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status, headers, media_type="application/json")


def error_response(exc: GatewayError) -> Response:
    if isinstance(exc, UpstreamStatusError):
        # Pass the backend's error on with its status; wrap a body that is not OpenAI-shaped.
        try:
            body = orjson.loads(exc.body)
        except orjson.JSONDecodeError:
            body = None
        if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
            text = exc.body.decode("utf-8", "replace")[:2000] or exc.message
            body = error_body(text, "upstream_error", code=exc.status)
        return json_response(body, exc.status)
    return json_response(error_body_for(exc), exc.status)


class EventStreamResponse(Response):
    """An SSE response that stops the stream as soon as the client disconnects.

    uvicorn speaks ASGI 2.3, where a disconnect is only seen by ``receive()``: a watcher task
    waits on it and cancels the streaming task, so the body iterator's ``finally`` closes the
    upstream at once, even while the upstream is silent.
    """

    def __init__(self, stream: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.stream = stream
        self.raw_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for frame in self.stream:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not disconnected:
                raise
            task.uncancel()
        finally:
            watcher.cancel()
            await self.stream.aclose()  # type: ignore[attr-defined]


VARIANT_HEADER = b"x-gateway-variant"


class Gateway:
    """Per-process state: the profile store and the upstream client."""

    def __init__(self, settings: Settings, store: ProfileStore, upstream: UpstreamClient) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self._rr: dict[str, Iterator[Backend]] = {}

    @property
    def profiles(self) -> ProfileSet:
        return self.store.current

    def pick_backend(self, profile: Profile) -> Backend:
        if len(profile.backends) == 1:
            return profile.backends[0]
        it = self._rr.get(profile.name)
        if it is None:
            it = self._rr[profile.name] = itertools.cycle(profile.backends)
        return next(it)

    async def handle(self, raw: bytes, endpoint: Endpoint, variant: str | None = None) -> Response:
        body = parse_request(raw, endpoint)
        profiles = self.store.current  # one snapshot for the whole request
        name = f"{body['model']}:{variant}" if variant else body["model"]
        profile = profiles.get(name)
        if profile is None:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        upstream_body, wants_usage = build_upstream_body(body, profile, endpoint)
        payload = orjson.dumps(upstream_body)
        backend = self.pick_backend(profile)
        t = profile.timeouts
        loop = asyncio.get_running_loop()
        started = loop.time()
        headers = {"x-gateway-profile-version": profiles.version}
        if body.get("stream"):
            try:
                async with asyncio.timeout_at(started + min(t.first_token, t.total)):
                    resp = await self.upstream.post(
                        backend, _UPSTREAM_PATH[endpoint], payload, connect_timeout=t.connect
                    )
            except TimeoutError:
                raise UpstreamTimeout("first_token", t.first_token) from None
            norm = StreamNormalizer(
                public_model=profile.name,
                endpoint=endpoint,
                stop_text=profile.stop_text,
                include_usage=wants_usage,
                n=int(body.get("n") or 1),
                reasoning=profile.reasoning,
                assistant_prefix=profile.assistant_prefix,
            )
            raw_headers = [*_SSE_HEADERS, *((k.encode(), v.encode()) for k, v in headers.items())]
            return EventStreamResponse(relay(resp, norm, t, started), raw_headers)
        try:
            async with asyncio.timeout_at(started + t.total):
                resp = await self.upstream.post(
                    backend, _UPSTREAM_PATH[endpoint], payload, connect_timeout=t.connect
                )
                try:
                    raw = await resp.read_all()
                finally:
                    resp.close(reuse=True)
        except TimeoutError:
            raise UpstreamTimeout("total", t.total) from None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamProtocolError("upstream sent an unexpected response")
        normalize_response(
            obj,
            public_model=profile.name,
            endpoint=endpoint,
            stop_text=profile.stop_text,
            reasoning=profile.reasoning,
            assistant_prefix=profile.assistant_prefix,
        )
        return json_response(obj, headers=headers)


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError  # the client left before sending its request
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


_HOT_ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
}


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
                variant = None
                for key, value in scope["headers"]:
                    if key == VARIANT_HEADER:
                        variant = value.decode("latin-1").strip() or None
                response: Response
                try:
                    response = await gateway.handle(await read_body(receive), endpoint, variant)
                except GatewayError as exc:
                    if exc.status >= 500:
                        log.warning("POST %s -> %d %s", scope["path"], exc.status, exc.code)
                    response = error_response(exc)
                except Exception:
                    log.exception("unhandled error on POST %s", scope["path"])
                    response = json_response(
                        error_body("Internal gateway error", "server_error", code="internal_error"),
                        500,
                    )
                await response(scope, receive, send)
                return
        await self.api(scope, receive, send)


def create_app(
    settings: Settings, profiles: ProfileSet | None = None, tokenizers: TokenizerCache | None = None
) -> GatewayApp:
    """Build the app. ``profiles`` defaults to loading ``settings.config`` at start-up."""
    tokenizer_cache = tokenizers or TokenizerCache()

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
            app.state.gateway = Gateway(settings, store, up)
            log.info(
                "serving %d model(s), profile version %s", len(snapshot.models), snapshot.version
            )
            if settings.admin_token is None:
                log.info("admin routes are off (set GATEWAY_ADMIN_TOKEN to enable /admin/*)")
            try:
                yield
            finally:
                if sighup:
                    loop.remove_signal_handler(signal.SIGHUP)
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
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "gateway"}
            for name in gw(request).profiles.models
        ]
        return json_response({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "profile_version": gw(request).profiles.version})

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
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])

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
