"""Serving the Responses API (#15): ``POST /v1/responses`` and a stored response's ``GET`` and
``cancel``, after :meth:`handler.Gateway.serve` admitted them (the same entrance, admission,
owner, error boundary, metrics and access log as a chat completion).

* create: the profile's transform (:mod:`responses`), failover before the first byte as for
  chat, each attempt naming its response (:mod:`responses_ids`) so that the id the client
  gets says which backend stores it; a ``previous_response_id`` pins the request to that
  backend (no failover: no other backend knows the conversation). Streams are primed past
  ``response.created`` (:func:`responses_stream.prime`) and relayed by :func:`stream.relay`
  with a :class:`responses_stream.ResponsesStreamNormalizer`.
* ``GET`` / ``cancel``: forwarded to the backend the id names (admission placed it and checked
  the key may use its model), answered with the stored response normalized as a
  non-stream answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from .errors import (
    RequestError,
    ResponseNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from .metrics import RequestRecord
from .owner import Owner
from .profiles import Backend, Profile
from .responses import (
    STATUS_FINISH,
    affinity_key,
    build_upstream_body,
    normalize_response,
    usage_record,
)
from .responses_stream import ResponsesStreamNormalizer, prime
from .security import Ticket, allows
from .stream import Opened

if TYPE_CHECKING:
    from .handler import Exchange, Gateway

PATH = "/v1/responses"


class RouteMissing(UpstreamStatusError):
    """The backend has no ``/v1/responses`` (a server older than vLLM 0.10, or not vLLM)."""

    def __init__(self) -> None:
        super().__init__(
            404,
            "The model's backend does not serve the Responses API (/v1/responses); use "
            "/v1/chat/completions, or a vLLM that serves it (0.10 or newer).",
            code="responses_unsupported",
        )


async def proxy_responses(
    gw: Gateway, t: Ticket, rec: RequestRecord, ex: Exchange, owner: Owner
) -> None:
    if t.endpoint == "responses":
        await _create(gw, t, rec, ex, owner)
    else:
        await _stored(gw, t, rec, ex, owner)


async def _create(gw: Gateway, t: Ticket, rec: RequestRecord, ex: Exchange, owner: Owner) -> None:
    profile = t.profile
    body = build_upstream_body(t.body, profile)
    backends: tuple[Backend, ...] = profile.backends
    retries = profile.retries
    sticky = affinity_key(profile, t.body, t.headers)
    previous = t.body.get("previous_response_id")
    if previous is not None:
        # the conversation lives on one backend: only it can continue it
        located = gw.response_ids.locate(t.snapshot, previous)
        if located is None or not allows(t.key, located[0].name):
            raise ResponseNotFound(previous)
        url = located[1].url
        backends = tuple(b for b in profile.backends if b.url == url)
        if not backends:
            raise ResponseNotFound(previous)
        retries, sticky = 0, None
    total_deadline = asyncio.get_running_loop().time() + profile.timeouts.total
    rec.overhead = time.perf_counter() - rec.started

    def payload_for(backend: Backend) -> bytes:
        # each attempt names its response: the id says which backend stores it
        body["request_id"] = gw.response_ids.mint(profile, backend)
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError:  # orjson reads 1024 levels but writes only 255
            raise RequestError("The request body is nested too deeply.") from None

    _, result = await gw.failover(
        t,
        rec,
        ex,
        owner,
        path=PATH,
        payload_for=payload_for,
        total_deadline=total_deadline,
        sticky=sticky,
        backends=backends,
        retries=retries,
        primer=prime,
        client_error=_route_missing,
    )
    body = {}  # a stream can last minutes: nothing held for retries is needed any more
    if isinstance(result, Opened):
        await _stream(gw, result, profile, t, rec, ex, total_deadline)
    else:
        await _json(result, profile, rec, ex)


def _route_missing(exc: UpstreamStatusError) -> UpstreamStatusError:
    """A 404 without an OpenAI error body is a backend without the route, said plainly."""
    if exc.status == 404 and exc.upstream_code == 404 and exc.message.endswith("answered 404"):
        return RouteMissing()
    return exc


async def _stream(
    gw: Gateway,
    opened: Opened,
    profile: Profile,
    t: Ticket,
    rec: RequestRecord,
    ex: Exchange,
    total_deadline: float,
    starting_after: int | None = None,
) -> None:
    norm = ResponsesStreamNormalizer(
        public_model=profile.name,
        stop_text=profile.stop_text,
        reasoning=profile.reasoning,
        assistant_prefix=profile.assistant_prefix,
        termination=profile.stream_termination,
        max_chars=t.snapshot.limits.max_upstream_body_bytes,
        starting_after=starting_after,
    )
    await ex.stream(
        opened, norm, profile.timeouts, total_deadline, gw.metrics.inter_chunk.labels(rec.model)
    )


async def _json(raw: bytes, profile: Profile, rec: RequestRecord, ex: Exchange) -> None:
    t0 = time.perf_counter()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("output", []), list):
        raise UpstreamProtocolError("upstream sent an unexpected response")
    obj = normalize_response(obj, profile)
    body = orjson.dumps(obj)
    rec.overhead += time.perf_counter() - t0
    status = obj.get("status")
    finish = STATUS_FINISH.get(status) if isinstance(status, str) else None
    if finish is not None:
        gateway_stop = obj.get("gateway_termination") == "stop_text"
        rec.finishes.append((None if gateway_stop else finish, finish))
        rec.stop_text_hits += gateway_stop
    rec.usage = usage_record(obj.get("usage"))
    await ex.whole(200, body)


async def _stored(gw: Gateway, t: Ticket, rec: RequestRecord, ex: Exchange, owner: Owner) -> None:
    """``GET /v1/responses/{id}`` (or its events again: ``stream=true``) or its ``cancel``,
    on the backend that stores it."""
    response_id: str = t.body["response_id"]
    located = gw.response_ids.locate(t.snapshot, response_id)
    if located is None:  # admission placed it in this very snapshot
        raise ResponseNotFound(response_id)
    profile = t.profile
    backend = next((b for b in profile.backends if b.url == located[1].url), located[1])
    rec.backend = backend.name
    deadline = asyncio.get_running_loop().time() + profile.timeouts.total
    cancel = t.endpoint == "responses_cancel"
    path = f"{PATH}/{response_id}/cancel" if cancel else f"{PATH}/{response_id}"
    try:
        raw = await gw.attempt(
            backend,
            t,
            rec,
            owner,
            path,
            b"" if cancel else None,
            deadline,
            stream=False,
            method="POST" if cancel else "GET",
        )
        assert isinstance(raw, bytes)
        if t.body.get("stream"):
            opened = await _replay(gw, backend, t, path, raw, deadline, rec, owner)
    except UpstreamError as exc:
        if not (isinstance(exc, UpstreamStatusError) and exc.client_error):
            gw.pool.failure(backend, exc.code or exc.message)
        raise
    gw.pool.success(backend)
    ex.headers.append((b"x-gateway-backend", backend.name.encode()))
    if t.body.get("stream"):
        after = t.body.get("starting_after")
        await _stream(gw, opened, profile, t, rec, ex, deadline, after)
    else:
        await _json(raw, profile, rec, ex)


async def _replay(
    gw: Gateway,
    backend: Backend,
    t: Ticket,
    path: str,
    stored: bytes,
    deadline: float,
    rec: RequestRecord,
    owner: Owner,
) -> Opened:
    """A background response's events from the start (vLLM keeps them; it drops the
    connection for any other response, and waits forever on a cancelled or failed one):
    the client's ``starting_after`` is applied to the gateway's own numbering, which the same
    events always get again."""
    try:
        obj = orjson.loads(stored)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("upstream sent a response that is not JSON") from None
    if not isinstance(obj, dict) or obj.get("background") is not True:
        raise RequestError(
            "stream: only a background response's events can be streamed again; GET it "
            "without stream=true",
            param="stream",
        )
    if obj.get("status") in ("cancelled", "failed"):
        raise RequestError(
            f"stream: the response is {obj.get('status')}; GET it without stream=true",
            param="stream",
        )
    opened = await gw.attempt(
        backend, t, rec, owner, path + "?stream=true", None, deadline,
        stream=True, method="GET", primer=prime,
    )  # fmt: skip
    assert isinstance(opened, Opened)
    return opened


def stored_id(scope: dict[str, Any]) -> str:
    """The response id of a stored-response route (set by :class:`app.GatewayApp`)."""
    return str(scope.get("path_params", {}).get("response_id", ""))
