"""Request handling: one completion request from its first byte to its last.

:meth:`Gateway.serve` is the only entrance to the completion routes. Each request has one
:class:`owner.Owner`: everything the request acquires (the concurrency slot, the
in-flight gauge, the upstream response with its backend lease, the disconnect watcher) is
pushed on it when acquired and released by it exactly once, whatever happens: success, an
error from the backend, a timeout, the client leaving before or during the answer, a bug.
Errors become answers in one place (:func:`protocol.render_error`) while nothing was sent;
after the first byte a stream ends by the stream contract (:mod:`stream`).

Cancellation is how a request is cut short: the disconnect watcher (the client left) and
:meth:`Gateway.begin_shutdown` (SIGTERM, after the grace period) record why on the
:class:`Exchange` and cancel the request's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from .control import Control
from .errors import (
    ClientDisconnected,
    GatewayError,
    GatewayOverloaded,
    RequestError,
    ServiceUnavailable,
    TimeoutPhase,
    UpstreamAborted,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .metrics import GapCounts, GatewayMetrics, RequestRecord
from .owner import Owner
from .pool import BackendPool
from .profiles import Backend, Profile, ReasoningRules
from .protocol import ENDPOINT_PATHS, FINISH_REPAIRS, Endpoint, render_error
from .reload import ProfileStore
from .responses_handler import proxy_responses
from .responses_ids import ResponseIds
from .security import Admission, Ticket
from .settings import Settings
from .stream import Normalizer, Opened, StreamNormalizer, normalize_response, prime, relay
from .transform import build_upstream_body
from .upstream import UpstreamClient

log = logging.getLogger("gateway")

#: reads a stream up to its first event before the client is answered (failover until then)
Primer = Callable[[Any, float], Awaitable[Opened]]

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON_HEADERS = [(b"content-type", b"application/json")]


class Exchange:
    """The client side of one request: what was sent, and why it was cut short."""

    __slots__ = ("_send", "complete", "cut", "headers", "norm", "started", "status", "task")

    def __init__(self, send: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        #: headers every answer carries (request id, profile version, backend)
        self.headers = headers
        self.started = False
        self.complete = False
        self.status = 0
        #: why the request was cut short: "client_disconnect" | "shutdown"
        self.cut: str | None = None
        #: the stream being relayed, once there is one
        self.norm: Normalizer | None = None
        task = asyncio.current_task()
        assert task is not None
        self.task = task

    def cancel(self, why: str) -> None:
        if self.cut is None and not self.complete:
            self.cut = why
            self.task.cancel()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        message = {
            "type": "http.response.start",
            "status": status,
            "headers": self.headers + headers,
        }
        await self._transmit(message)
        self.started = True
        self.status = status

    async def body(self, data: bytes) -> None:
        await self._transmit({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        self.complete = True
        await self._transmit({"type": "http.response.body", "body": data, "more_body": False})

    async def _transmit(self, message: dict[str, Any]) -> None:
        try:
            await self._send(message)
        except (OSError, RuntimeError) as exc:
            # the transport is gone (e.g. a pipelined request whose client already left:
            # uvicorn's send then raises instead of reporting a disconnect)
            raise ClientDisconnected from exc

    async def whole(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON_HEADERS
    ) -> None:
        await self.start(status, [*headers, (b"content-length", str(len(body)).encode())])
        await self.end(body)

    async def error(self, exc: BaseException) -> None:
        status, body, headers = render_error(exc)
        await self.whole(status, body, [*_JSON_HEADERS, *headers])

    async def stream(
        self,
        opened: Opened,
        norm: Normalizer,
        timeouts: Any,
        total_deadline: float,
        inter_chunk: Any,
    ) -> None:
        """Answer with the primed upstream stream, normalized by ``norm``, to its end; the
        gaps between upstream events go to the ``inter_chunk`` histogram child."""
        self.norm = norm
        await self.start(200, _SSE_HEADERS)
        gaps = GapCounts()
        try:
            tail = await relay(opened, norm, timeouts, total_deadline, self.body, on_gap=gaps)
        finally:
            gaps.flush_into(inter_chunk)
        await self.end(tail)


def watch_disconnect(receive: Any, ex: Exchange, owner: Owner) -> None:
    """Cancel the request when its client goes away (uvicorn reports a disconnect only to
    ``receive()``; the body has been read, so the next message is the disconnect)."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        ex.cancel("client_disconnect")

    owner.push(asyncio.get_running_loop().create_task(watch()).cancel)


class Gateway:
    """Per-process request handling: profiles, admission, backends, upstream, metrics."""

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
        #: stored-response ids name their backend (#15)
        self.response_ids = ResponseIds(settings.response_id_key)
        self.admission = Admission(settings.api_keys, settings.api_key_header, self.response_ids)
        #: reasoning control, per-backend max_tokens, budget forcing (#17, #13 item 5)
        self.control = Control(pool.info, upstream, pool, metrics.registry)
        self.shutting_down = False
        self._exchanges: set[Exchange] = set()

    @property
    def profiles(self) -> Any:
        return self.store.current

    def begin_shutdown(self) -> None:
        """SIGTERM: no new requests; those in flight get ``shutdown_grace`` seconds, then
        are cut (streams end with a final event and ``[DONE]``). Idempotent."""
        if self.shutting_down:
            return
        self.shutting_down = True
        loop = asyncio.get_running_loop()
        log.info(
            "shutting down: %d request(s) in flight get %gs",
            len(self._exchanges),
            self.settings.shutdown_grace,
        )
        loop.call_later(self.settings.shutdown_grace, self._cut_all)

    def _cut_all(self) -> None:
        for ex in list(self._exchanges):
            ex.cancel("shutdown")

    # -- the entrance ----------------------------------------------------------------------

    async def serve(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        endpoint: Endpoint,
        deployment: str | None = None,
    ) -> None:
        """Serve one completion request; never raises for anything a request can do.
        ``deployment``: the model named by an Azure-style path."""
        snapshot = self.store.current  # one snapshot for the whole request
        rid = request_id(scope["headers"])
        rec = RequestRecord(rid, endpoint)
        ex = Exchange(
            send,
            [
                (b"x-request-id", rid.encode()),
                (b"x-gateway-profile-version", snapshot.version.encode()),
            ],
        )
        owner = Owner()
        owner.push(self._observe, rec, ex)
        self._exchanges.add(ex)  # from its first byte: a shutdown cuts a slow body too
        owner.push(self._exchanges.discard, ex)
        try:
            try:
                if self.shutting_down:
                    raise ServiceUnavailable("The gateway is shutting down; retry.")
                ticket = await self.admission.admit(
                    snapshot, scope, receive, endpoint, owner, deployment
                )
                rec.model = ticket.profile.name
                rec.stream = ticket.stream
                gauge = self.metrics.in_flight.labels(rec.model)
                gauge.inc()
                owner.push(gauge.dec)
                watch_disconnect(receive, ex, owner)
                await self._proxy(ticket, rec, ex, owner)
            except asyncio.CancelledError:
                if ex.cut is None:
                    raise  # not ours (the server is cancelling everything)
                ex.task.uncancel()
                await self._after_cut(ex)
            except ClientDisconnected:
                ex.cut = "client_disconnect"
                if ex.norm is not None:
                    ex.norm.close("client_disconnect")
            except Exception as exc:
                await self._fail(exc, ex, rec)
        finally:
            owner.close()

    async def _after_cut(self, ex: Exchange) -> None:
        if ex.cut == "client_disconnect":
            if ex.norm is not None:
                ex.norm.close("client_disconnect")
            return
        # shutdown: a stream gets its end; a request not yet answered gets 503
        if ex.norm is not None and ex.started:
            with contextlib.suppress(OSError):
                await ex.end(ex.norm.close("shutdown"))
        elif not ex.started:
            await ex.error(ServiceUnavailable("The gateway is shutting down; retry."))

    async def _fail(self, exc: Exception, ex: Exchange, rec: RequestRecord) -> None:
        """The error boundary of a request."""
        if isinstance(exc, GatewayError):
            rec.error = exc.code
            rec.limit = getattr(exc, "limit", None)
            if isinstance(exc, UpstreamTimeout) and rec.stream:
                rec.cause = exc.code  # a stream that timed out before its first byte
            if exc.status >= 500:
                log.warning("request %s -> %d %s", rec.request_id, exc.status, exc.code)
        else:
            rec.error = "internal_error"
            log.error("unhandled error in request %s", rec.request_id, exc_info=exc)
        if not ex.started:
            await ex.error(exc)
        elif not ex.complete:
            # After the first byte errors are data: end the stream as the contract says.
            norm = ex.norm
            tail = norm.close("gateway_error") if norm is not None else b""
            with contextlib.suppress(OSError):
                await ex.end(tail)

    def _observe(self, rec: RequestRecord, ex: Exchange) -> None:
        if ex.cut == "client_disconnect" and not ex.started:
            rec.status = 499  # the client went away before its answer started
        else:
            rec.status = ex.status or 499
        if ex.cut is not None and rec.cause is None:
            rec.cause = ex.cut
        norm = ex.norm
        if norm is not None:
            self._stream_record(rec, norm)
        self.metrics.observe(rec)

    # -- upstream --------------------------------------------------------------------------

    async def _proxy(self, t: Ticket, rec: RequestRecord, ex: Exchange, owner: Owner) -> None:
        """Try backends until one answers (failover before the first byte), then answer."""
        profile, endpoint = t.profile, t.endpoint
        if endpoint != "chat" and endpoint != "completions":
            await proxy_responses(self, t, rec, ex, owner)  # the Responses API (#15)
            return
        upstream_body, wants_usage = build_upstream_body(t.body, profile, endpoint)
        # reasoning control (#17): its 400s, the request's own reasoning rules
        plan = self.control.plan(t, upstream_body)
        t, profile = plan.ticket, plan.ticket.profile
        reasoning = reasoning_rules(t)
        n_choices = choice_count(t.body)
        await self.control.ready(plan)  # each backend's max_model_len, when first asked
        total_deadline = asyncio.get_running_loop().time() + profile.timeouts.total
        rec.overhead = time.perf_counter() - rec.started

        async def failover() -> tuple[Backend, Opened | bytes]:
            return await self.failover(
                t,
                rec,
                ex,
                owner,
                path=ENDPOINT_PATHS[endpoint],
                payload_for=lambda backend: self.control.payload(plan, backend),  # #13 item 5
                total_deadline=total_deadline,
                sticky=affinity_key(profile, t.body, t.headers),
            )

        try:
            backend, result = await failover()
        except UpstreamStatusError as exc:
            if not self.control.relearn(plan, rec.backend, exc):
                raise
            backend, result = await failover()  # its shorter context learned: once more
        # budget forcing, the thinking-off quirk (#17)
        result = await self.control.after(
            plan, result, backend, owner, rec.request_id, total_deadline
        )
        # a stream can last minutes: nothing held for retries is needed any more
        upstream_body = {}
        plan.release()
        if isinstance(result, Opened):
            await self._stream(
                result, t, rec, ex, total_deadline, wants_usage, reasoning, n_choices
            )
        else:
            await self._json(result, profile, endpoint, rec, ex, reasoning)

    async def failover(
        self,
        t: Ticket,
        rec: RequestRecord,
        ex: Exchange,
        owner: Owner,
        *,
        path: str,
        payload_for: Callable[[Backend], bytes],
        total_deadline: float,
        sticky: str | None,
        backends: Sequence[Backend] | None = None,
        retries: int | None = None,
        primer: Primer = prime,
        client_error: Callable[[UpstreamStatusError], Exception] | None = None,
    ) -> tuple[Backend, Opened | bytes]:
        """Try backends until one answers (failover before the first byte): the one loop
        of every route. ``payload_for`` gives the body for a backend (built once, or per
        backend); ``client_error`` may translate a backend's 4xx, which is never retried
        (another backend would agree). Returns the backend that answered and its answer."""
        profile = t.profile
        backends = profile.backends if backends is None else backends
        retries = profile.retries if retries is None else retries
        loop = asyncio.get_running_loop()
        tried: set[str] = set()
        last: UpstreamError | None = None
        for _ in range(1 + retries):
            if loop.time() >= total_deadline:
                break
            backend, rec.route = self.pool.choose(backends, tried, sticky)
            if backend is None:
                break
            tried.add(backend.url)
            rec.backend = backend.name
            rec.retries = len(tried) - 1
            try:
                result = await self.attempt(
                    backend, t, rec, owner, path, payload_for(backend), total_deadline,
                    stream=rec.stream, primer=primer,
                )  # fmt: skip
            except UpstreamError as exc:
                if isinstance(exc, UpstreamStatusError) and exc.client_error:
                    raise (client_error(exc) if client_error else exc) from None
                self.pool.failure(backend, exc.code or exc.message)
                last = exc
                continue
            self.pool.success(backend)
            ex.headers.append((b"x-gateway-backend", backend.name.encode()))
            return backend, result
        if last is None:
            last = (
                UpstreamTimeout("total", profile.timeouts.total)
                if tried
                else UpstreamUnavailable(f"no backend available for `{profile.name}`")
            )
        raise last

    async def attempt(
        self,
        backend: Backend,
        ticket: Ticket,
        rec: RequestRecord,
        owner: Owner,
        path: str,
        payload: bytes | None,
        total_deadline: float,
        *,
        stream: bool,
        method: str = "POST",
        primer: Primer = prime,
    ) -> Opened | bytes:
        """One backend: a primed stream (``primer`` reads up to its first event), or a whole
        body. Raises UpstreamError (GatewayOverloaded when the gateway's own connection cap
        or descriptors ran out)."""
        t = ticket.profile.timeouts
        deadline, phase, seconds = total_deadline, "total", t.total
        if stream:
            first_token = asyncio.get_running_loop().time() + t.first_token
            if first_token < total_deadline:
                deadline, phase, seconds = first_token, "first_token", t.first_token
        cap = self.settings.max_upstream_connections
        if cap and self.pool.leased >= cap:
            raise GatewayOverloaded(
                f"All {cap} upstream connections are in use (GATEWAY_MAX_UPSTREAM_CONNECTIONS); "
                "retry shortly.",
                "upstream_connections",
            )
        resp = None
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self.upstream.post(
                    backend,
                    path,
                    payload,
                    self.pool.lease(backend),
                    connect_timeout=t.connect,
                    request_id=rec.request_id,
                    method=method,
                )
                owner.push(resp.close)  # the owner's backstop; idempotent
                if stream:
                    return await primer(resp, deadline)
                body = await resp.read_all(ticket.snapshot.limits.max_upstream_body_bytes)
            resp.close(reuse=True)
            return body
        except TimeoutError:
            if resp is not None:
                resp.close()
            ph: TimeoutPhase = "first_token" if phase == "first_token" else "total"
            raise UpstreamTimeout(ph, seconds) from None
        except BaseException:
            if resp is not None:
                resp.close()
            raise

    async def _stream(
        self,
        opened: Opened,
        t: Ticket,
        rec: RequestRecord,
        ex: Exchange,
        total_deadline: float,
        wants_usage: bool,
        reasoning: ReasoningRules | None,
        n_choices: int,
    ) -> None:
        profile = t.profile
        norm = StreamNormalizer(
            public_model=profile.name,
            endpoint=t.endpoint,
            stop_text=profile.stop_text,
            include_usage=wants_usage,
            n=n_choices,
            reasoning=reasoning,
            assistant_prefix=profile.assistant_prefix,
            termination=profile.stream_termination,
        )
        await ex.stream(
            opened,
            norm,
            profile.timeouts,
            total_deadline,
            self.metrics.inter_chunk.labels(rec.model),
        )

    async def _json(
        self,
        raw: bytes,
        profile: Profile,
        endpoint: Endpoint,
        rec: RequestRecord,
        ex: Exchange,
        reasoning: ReasoningRules | None,
    ) -> None:
        t0 = time.perf_counter()
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not (
            choices is None
            or (isinstance(choices, list) and all(isinstance(c, dict) for c in choices))
        ):
            raise UpstreamProtocolError("upstream sent an unexpected response")
        if profile.stream_termination == "error" and any(
            isinstance(ch, dict)
            and isinstance(reason := ch.get("finish_reason"), str)
            and reason in FINISH_REPAIRS
            for ch in obj.get("choices") or ()
        ):
            raise UpstreamAborted("The model server aborted the request; the answer is incomplete.")
        obj = normalize_response(
            obj,
            public_model=profile.name,
            endpoint=endpoint,
            stop_text=profile.stop_text,
            reasoning=reasoning,
            assistant_prefix=profile.assistant_prefix,
        )
        body = orjson.dumps(obj)
        rec.overhead += time.perf_counter() - t0
        for ch in obj.get("choices") or ():
            final = ch.get("finish_reason")
            rec.finishes.append((ch.get("upstream_finish_reason", final), final))
            if ch.get("gateway_termination") == "stop_text":
                rec.stop_text_hits += 1
        usage = obj.get("usage")
        rec.usage = usage if isinstance(usage, dict) else None
        await ex.whole(200, body)

    @staticmethod
    def _stream_record(rec: RequestRecord, norm: Normalizer) -> None:
        rec.overhead += norm.overhead
        rec.cause = norm.cause
        rec.finishes = norm.finishes
        rec.usage = norm.usage
        rec.stop_text_hits = norm.stop_text_hits
        rec.reasoning_chars = norm.reasoning_chars
        if norm.first_text_at is not None:
            rec.ttft = norm.first_text_at - rec.started
        if norm.first_content_at is not None:
            rec.ttfc = norm.first_content_at - rec.started


#: a request may ask for its reasoning in other fields than the profile's (comma-separated)
REASONING_FIELD_HEADER = b"x-gateway-reasoning-field"
_REASONING_FIELDS = frozenset({"reasoning_content", "reasoning"})


def reasoning_rules(t: Ticket) -> ReasoningRules | None:
    """The profile's reasoning rules, with the fields this request asked for, if it did."""
    rules = t.profile.reasoning
    wanted = t.headers.get(REASONING_FIELD_HEADER)
    if rules is None or wanted is None:
        return rules
    fields = tuple(dict.fromkeys(f.strip() for f in wanted.decode("latin-1").split(",")))
    if not fields or not _REASONING_FIELDS.issuperset(fields):
        raise RequestError(
            "x-gateway-reasoning-field: one or both of reasoning_content, reasoning",
            param="x-gateway-reasoning-field",
        )
    return dataclasses.replace(rules, fields=fields)


def choice_count(body: dict[str, Any]) -> int:
    """How many choices the upstream streams: ``n`` per prompt, and a completion request
    may carry a list of prompts (strings or token-id lists)."""
    n = int(body.get("n") or 1)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        n *= len(prompt)
    return n


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``x-request-id`` if it is sane (up to 128 safe characters); anything
    else, an over-long one included, is replaced by a new id."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _SAFE_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


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
            try:
                return orjson.dumps([m.get("content") for m in stable]).decode()
            except orjson.JSONEncodeError:
                return None
        prompt = body.get("prompt")
        return prompt[:512] if isinstance(prompt, str) else None
    return None
