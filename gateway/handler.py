"""Request handling: one OpenAI-compatible request from validated body to response.

``Gateway`` owns what a request needs (profile snapshot, backend pool, upstream client,
metrics, limits) and turns a request into a JSON response or an SSE stream, with failover
before the first byte. It knows nothing of FastAPI; ``app.py`` routes requests to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import (
    GatewayError,
    ModelNotFound,
    RequestTooLarge,
    TimeoutPhase,
    TooManyRequests,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .metrics import GatewayMetrics, RequestRecord
from .pool import BackendPool, BackendState
from .profiles import Backend, Profile, ProfileSet, Timeouts
from .protocol import (
    ENDPOINT_PATHS,
    Endpoint,
    error_body,
    error_body_for,
    parse_request,
)
from .reload import ProfileStore
from .security import (
    ClientKey,
    ConcurrencyGate,
    KeyRing,
    RateLimiter,
    allows,
    digest,
)
from .settings import Settings
from .stream import Opened, StreamNormalizer, ended, normalize_response, prime, relay
from .transform import build_upstream_body, check_request
from .upstream import UpstreamClient, UpstreamResponse

log = logging.getLogger("gateway")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
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
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    return json_response(error_body_for(exc), exc.status, headers)


class EventStreamResponse(Response):
    """An SSE response that stops the stream as soon as the client disconnects.

    uvicorn speaks ASGI 2.3, where a disconnect is only seen by ``receive()``: a watcher task
    waits on it and cancels the streaming task, so the body iterator's ``finally`` closes the
    upstream at once, even while the upstream is silent.
    """

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        headers: list[tuple[bytes, bytes]],
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.status_code = 200
        self.stream = stream
        self.raw_headers = headers
        #: runs last, whatever happened (even if the stream never started): idempotent
        self.cleanup = cleanup

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
            if self.cleanup is not None:
                self.cleanup()


VARIANT_HEADER = b"x-gateway-variant"


class Gateway:
    """Per-process state: the profile store and the upstream client."""

    def __init__(
        self,
        settings: Settings,
        store: ProfileStore,
        upstream: UpstreamClient,
        pool: BackendPool,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.pool = pool
        self.metrics = metrics
        self.gate = ConcurrencyGate()
        self._env_keys = [ClientKey(digest(k)) for k in settings.api_keys]
        self._keyring: tuple[str, KeyRing] | None = None
        self._rate: RateLimiter | None = None

    def keyring(self, snapshot: ProfileSet) -> KeyRing:
        """Keys from the environment plus the snapshot's keys file (rebuilt on reload)."""
        if self._keyring is None or self._keyring[0] != snapshot.version:
            keys = [*self._env_keys, *(ClientKey(d, m) for d, m in snapshot.key_digests)]
            self._keyring = (snapshot.version, KeyRing(keys))
        return self._keyring[1]

    def rate_limiter(self, storage: str) -> RateLimiter:
        if self._rate is None or self._rate.storage_uri != storage:
            self._rate = RateLimiter(storage)
        return self._rate

    @property
    def profiles(self) -> ProfileSet:
        return self.store.current

    async def handle(
        self,
        raw: bytes,
        endpoint: Endpoint,
        headers: dict[bytes, bytes] | None = None,
        rec: RequestRecord | None = None,
        key: ClientKey | None = None,
    ) -> Response:
        headers = headers or {}
        rec = rec or RequestRecord(request_id(None), endpoint)
        body = parse_request(raw, endpoint)
        profiles = self.store.current  # one snapshot for the whole request
        variant = headers.get(VARIANT_HEADER, b"").decode("latin-1").strip()
        name = f"{body['model']}:{variant}" if variant else body["model"]
        profile = profiles.get(name)
        if profile is None or not allows(key, profile.name):
            # a model the key may not use looks exactly like one that does not exist
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        check_request(body, endpoint, profile, profiles.limits)
        rec.model = profile.name
        rec.stream = bool(body.get("stream"))
        self.metrics.in_flight.labels(rec.model).inc()
        rec.in_flight = True
        upstream_body, wants_usage = build_upstream_body(body, profile, endpoint)
        payload = orjson.dumps(upstream_body)
        t = profile.timeouts
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + t.total
        stream = bool(body.get("stream"))
        sticky = affinity_key(profile, body, headers)
        out_headers = {"x-gateway-profile-version": profiles.version}
        tried: set[str] = set()
        last: UpstreamError | None = None
        rec.overhead = time.perf_counter() - rec.started
        for _attempt in range(1 + profile.retries):
            if loop.time() >= total_deadline:
                break
            backend = self.pool.pick(profile.backends, tried, sticky)
            if backend is None:
                break
            tried.add(backend.url)
            rec.backend = backend.name
            rec.retries = len(tried) - 1
            state = self.pool.state(backend)
            state.outstanding += 1
            try:
                if stream:
                    opened = await self._open_stream(
                        backend, endpoint, payload, t, total_deadline, rec.request_id
                    )
                else:
                    raw_resp = await self._fetch(
                        backend, endpoint, payload, total_deadline, t, rec.request_id
                    )
            except UpstreamError as exc:
                state.outstanding -= 1
                if isinstance(exc, UpstreamStatusError) and exc.status < 500:
                    raise  # the backend judged the request itself: another would agree
                self.pool.failure(backend, exc.code or exc.message)
                last = exc
                continue
            except BaseException:
                state.outstanding -= 1
                raise
            self.pool.success(backend)
            out_headers["x-gateway-backend"] = backend.name
            if stream:
                norm = self._normalizer(profile, endpoint, body, wants_usage)
                return self._stream_response(
                    rec, state, opened, norm, t, total_deadline, out_headers
                )
            state.outstanding -= 1
            t_resp = time.perf_counter()
            obj = self._finish_json(raw_resp, profile, endpoint)
            response = json_response(obj, headers=out_headers)
            rec.overhead += time.perf_counter() - t_resp
            self._json_done(rec, obj)
            return response
        if stream and isinstance(last, UpstreamTimeout) and last.phase in ("first_token", "total"):
            # Nothing reached the client and no backend produced a first token in time: the
            # stream contract still holds (a final chunk, then [DONE]).
            norm = self._normalizer(profile, endpoint, body, wants_usage)
            frames = ended(
                norm,
                f"{last.phase}_timeout",
                on_close=lambda n, o: self._stream_done(rec, n, o),
            )
            return EventStreamResponse(frames, _sse_headers(out_headers))
        if last is None:
            last = (
                UpstreamTimeout("total", t.total)
                if tried
                else UpstreamUnavailable(f"no backend available for `{profile.name}`")
            )
        raise last

    def _stream_response(
        self,
        rec: RequestRecord,
        state: BackendState,
        opened: Opened,
        norm: StreamNormalizer,
        t: Timeouts,
        total_deadline: float,
        out_headers: dict[str, str],
    ) -> EventStreamResponse:
        """The client's stream; its end is accounted exactly once, however it ends."""
        closed = False

        def done(n: StreamNormalizer, overhead: float) -> None:
            nonlocal closed
            if not closed:
                closed = True
                state.outstanding -= 1
                self._stream_done(rec, n, overhead)

        def abandon() -> None:
            if not closed:  # the client left before the stream even started
                opened.resp.close(reuse=False)
                norm.close("client_disconnect")
                done(norm, 0.0)

        gap = self.metrics.inter_chunk.labels(rec.model).observe
        frames = relay(opened, norm, t, total_deadline, on_close=done, on_gap=gap)
        return EventStreamResponse(frames, _sse_headers(out_headers), cleanup=abandon)

    async def _post(
        self, backend: Backend, endpoint: Endpoint, payload: bytes, t: Timeouts, rid: str
    ) -> UpstreamResponse:
        return await self.upstream.post(
            backend, ENDPOINT_PATHS[endpoint], payload, connect_timeout=t.connect, request_id=rid
        )

    async def _open_stream(
        self,
        backend: Backend,
        endpoint: Endpoint,
        payload: bytes,
        t: Timeouts,
        total: float,
        rid: str,
    ) -> Opened:
        loop = asyncio.get_running_loop()
        first_token = loop.time() + t.first_token
        deadline = min(first_token, total)
        phase: TimeoutPhase = "first_token" if first_token < total else "total"
        resp = None
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self._post(backend, endpoint, payload, t, rid)
            return await prime(resp, deadline)
        except TimeoutError:
            if resp is not None:
                resp.close(reuse=False)
            raise UpstreamTimeout(
                phase, t.first_token if phase == "first_token" else t.total
            ) from None
        except BaseException:
            if resp is not None:
                resp.close(reuse=False)
            raise

    async def _fetch(
        self,
        backend: Backend,
        endpoint: Endpoint,
        payload: bytes,
        total: float,
        t: Timeouts,
        rid: str,
    ) -> bytes:
        try:
            async with asyncio.timeout_at(total):
                resp = await self._post(backend, endpoint, payload, t, rid)
                try:
                    return await resp.read_all()
                finally:
                    resp.close(reuse=True)
        except TimeoutError:
            raise UpstreamTimeout("total", t.total) from None

    def _normalizer(
        self, profile: Profile, endpoint: Endpoint, body: dict[str, Any], wants_usage: bool
    ) -> StreamNormalizer:
        return StreamNormalizer(
            public_model=profile.name,
            endpoint=endpoint,
            stop_text=profile.stop_text,
            include_usage=wants_usage,
            n=int(body.get("n") or 1),
            reasoning=profile.reasoning,
            assistant_prefix=profile.assistant_prefix,
        )

    def _finish_json(self, raw: bytes, profile: Profile, endpoint: Endpoint) -> dict[str, Any]:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamProtocolError("upstream sent an unexpected response")
        return normalize_response(
            obj,
            public_model=profile.name,
            endpoint=endpoint,
            stop_text=profile.stop_text,
            reasoning=profile.reasoning,
            assistant_prefix=profile.assistant_prefix,
        )

    def finish(self, rec: RequestRecord) -> None:
        """Observe a request once: metrics and the access-log line."""
        if rec.done:
            return
        rec.done = True
        if rec.slot is not None:
            self.gate.release(rec.slot)
        if rec.in_flight:
            self.metrics.in_flight.labels(rec.model).dec()
        self.metrics.observe(rec)

    def _stream_done(self, rec: RequestRecord, norm: StreamNormalizer, overhead: float) -> None:
        rec.overhead += overhead
        rec.cause = norm.cause
        rec.finishes = norm.finishes
        rec.usage = norm.usage
        rec.stop_text_hits = norm.stop_text_hits
        rec.reasoning_chars = norm.reasoning_chars
        if norm.first_text_at is not None:
            rec.ttft = norm.first_text_at - rec.started
        if norm.first_content_at is not None:
            rec.ttfc = norm.first_content_at - rec.started
        self.finish(rec)

    def _json_done(self, rec: RequestRecord, obj: dict[str, Any]) -> None:
        for ch in obj.get("choices") or ():
            final = ch.get("finish_reason")
            rec.finishes.append((ch.get("upstream_finish_reason", final), final))
            if ch.get("gateway_termination") == "stop_text":
                rec.stop_text_hits += 1
        usage = obj.get("usage")
        rec.usage = usage if isinstance(usage, dict) else None
        self.finish(rec)


def request_id(given: bytes | None) -> str:
    """The client's ``x-request-id`` if it is sane (bounded, safe characters), else a new one."""
    if given:
        value = given.decode("latin-1")[:128]
        if _SAFE_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def _sse_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [*_SSE_HEADERS, *((k.encode(), v.encode()) for k, v in headers.items())]


def affinity_key(profile: Profile, body: dict[str, Any], headers: dict[bytes, bytes]) -> str | None:
    """The conversation key for a sticky backend, or None to balance."""
    if profile.affinity == "header":
        value = headers.get(profile.affinity_header.encode())
        return value.decode("latin-1") if value else None
    if profile.affinity == "prefix":
        if "messages" in body:
            msgs = body["messages"]
            system = [m for m in msgs if m.get("role") in ("system", "developer")]
            first_user = next((m for m in msgs if m.get("role") == "user"), None)
            stable = [*system, first_user] if first_user else system
            return orjson.dumps([m.get("content") for m in stable]).decode()
        prompt = body.get("prompt")
        return prompt[:512] if isinstance(prompt, str) else None
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError  # the client left before sending its request
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
