"""The front door: client API keys, concurrency caps and request-rate limits.

* Keys: ``GATEWAY_API_KEYS`` (comma-separated keys) and/or the profile file's
  ``auth.keys_file`` (one sha256 hex digest per line, optionally followed by the models that
  key may use: ``<sha256> model-a,model-b``). Only digests are kept; a presented key is hashed
  and its digest looked up (timing reveals nothing of a key, only of its hash). With no key
  configured the gateway serves anyone (and says so at start-up).
* A key not allowed a model gets 404 ``model_not_found``, as OpenAI answers for models an
  account cannot see; ``/v1/models`` lists only the models the key may use.
* Concurrency: a global cap and a per-key cap on requests in flight (429, ``Retry-After``).
  These counters are per replica.
* Rate: requests per key (per client address without keys) through the ``limits`` library,
  moving window; ``memory://`` storage is per replica, ``redis://...`` is shared by replicas.

:class:`Admission` is the one way into a completion route: auth, rate limit, body (under a
deadline), validation, the per-key model check, request limits and the concurrency slot, all
from one profile snapshot; everything it takes is released by the request's exit stack, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from .errors import (
    AuthError,
    ClientDisconnected,
    ModelNotFound,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    ResponseNotFound,
    TooManyRequests,
)
from .owner import Owner
from .profiles import LimitsSpec, Profile, ProfileSet
from .protocol import Endpoint, parse_request
from .ratestore import make_storage, redact
from .responses_ids import ResponseIds
from .transform import check_request

log = logging.getLogger("gateway.security")


@dataclass(frozen=True, slots=True)
class ClientKey:
    digest: bytes
    #: the models this key may use; None = all
    models: frozenset[str] | None = None

    @property
    def id(self) -> str:
        """A short, non-secret name for limits and logs."""
        return "key-" + self.digest.hex()[:8]


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: list[ClientKey]) -> None:
        self.keys = keys
        # Looked up by digest: the digest reveals nothing of the key, and a dict makes the
        # cost of a wrong key independent of how many keys there are.
        self._by_digest = {k.digest: k for k in keys}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: bytes | None) -> ClientKey | None:
        """The key presented as ``Authorization: Bearer <key>``; None when keys are off.

        The key's bytes are hashed as sent: a key configured as UTF-8 text matches the
        same key sent as UTF-8 bytes."""
        if not self.keys:
            return None
        scheme, _, token = (authorization or b"").partition(b" ")
        token = token.strip(b" \t")
        if scheme.lower() != b"bearer" or not token:
            raise AuthError("Missing API key: send Authorization: Bearer <key>.")
        found = self._by_digest.get(hashlib.sha256(token).digest())
        if found is None:
            raise AuthError("Incorrect API key provided.")
        return found


def allows(key: ClientKey | None, model: str) -> bool:
    """Whether ``key`` may use the public model ``model`` (variants follow their model)."""
    if key is None or key.models is None:
        return True
    return model.split(":", 1)[0] in key.models


class ConcurrencyGate:
    """In-flight caps, global and per key (per replica)."""

    def __init__(self) -> None:
        self.total = 0
        self.per_key: dict[str, int] = {}

    def acquire(self, who: str, max_total: int, max_per_key: int) -> None:
        if self.total >= max_total:
            raise TooManyRequests(
                "The gateway is at its concurrency limit (limits.max_in_flight); retry shortly.",
                "concurrency_limit_exceeded",
                1,
                "max_in_flight",
            )
        if self.per_key.get(who, 0) >= max_per_key:
            raise TooManyRequests(
                "Too many concurrent requests for this API key (limits.key_max_in_flight).",
                "concurrency_limit_exceeded",
                1,
                "key_max_in_flight",
            )
        self.total += 1
        self.per_key[who] = self.per_key.get(who, 0) + 1

    def release(self, who: str) -> None:
        self.total -= 1
        left = self.per_key.get(who, 1) - 1
        if left:
            self.per_key[who] = left
        else:
            self.per_key.pop(who, None)


class RateLimiter:
    """Requests per key in a moving window, on ``limits`` storage (memory or Redis).

    A storage that fails (Redis down) fails open: the request is served and a warning is
    logged (at most every 10 s), as Envoy's rate-limit filter does by default."""

    def __init__(self, storage_uri: str) -> None:
        self.storage_uri = storage_uri
        self._limiter = MovingWindowRateLimiter(make_storage(storage_uri))
        self._items: dict[str, RateLimitItem] = {}
        self._warned = -math.inf

    @contextlib.contextmanager
    def _fail_open(self) -> Iterator[None]:
        try:
            yield
        except StorageError as exc:
            if time.monotonic() - self._warned > 10:
                self._warned = time.monotonic()
                log.warning(
                    "rate limit storage %s failed (%s): serving without rate limits",
                    redact(self.storage_uri),
                    type(exc.storage_error).__name__,
                )

    def _item(self, rate: str) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(rate)
        return item

    async def _refuse(
        self, item: RateLimitItem, space: str, who: str, message: str, limit: str = "key_rate"
    ) -> None:
        stats = await self._limiter.get_window_stats(item, space, who)
        retry = math.ceil(stats.reset_time - time.time())
        raise TooManyRequests(message, "rate_limit_exceeded", retry, limit)

    async def hit(self, rate: str, who: str) -> None:
        item = self._item(rate)
        with self._fail_open():
            if not await self._limiter.hit(item, "gateway", who):
                await self._refuse(
                    item, "gateway", who, f"Rate limit of {rate} exceeded for this API key."
                )

    async def check_failures(self, rate: str, address: str) -> None:
        """429 for an address whose failed authentications are over ``rate``."""
        item = self._item(rate)
        with self._fail_open():
            if not await self._limiter.test(item, "auth-failures", address):
                await self._refuse(
                    item,
                    "auth-failures",
                    address,
                    "Too many failed authentications; retry later.",
                    "auth_failure_rate",
                )

    async def record_failure(self, rate: str, address: str) -> None:
        with self._fail_open():
            await self._limiter.hit(self._item(rate), "auth-failures", address)


#: headers that must appear at most once (the first and the last copy could disagree)
_SINGLE_HEADERS = frozenset({b"authorization", b"api-key", b"content-length", b"x-gateway-variant"})
VARIANT_HEADER = b"x-gateway-variant"


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request headers by (lower-case) name; a repeated security-relevant header is a
    400, so no two parts of the gateway can read different copies of it."""
    out: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in out and name in _SINGLE_HEADERS:
            raise RequestError(f"more than one {name.decode()} header", param=name.decode())
        out[name] = value
    return out


def client_address(scope: Any) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "anonymous"


async def read_body(receive: Any, limits: LimitsSpec) -> bytes:
    """The whole request body, at most ``max_body_bytes``, within ``body_timeout`` seconds
    (408 after it); a client that leaves meanwhile raises :class:`ClientDisconnected`."""
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise RequestTooLarge(limits.max_body_bytes)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(limits.body_timeout) from None


@dataclass(frozen=True, slots=True)
class Ticket:
    """What admission established; the rest of the request uses only this."""

    snapshot: ProfileSet
    profile: Profile
    key: ClientKey | None
    #: the validated request body (``max_tokens`` already clamped)
    body: dict[str, Any]
    headers: dict[bytes, bytes]
    endpoint: Endpoint
    #: the client asked for a stream (``"stream": true``)
    stream: bool = False


class Admission:
    """Keys, rate limits and concurrency caps of one process (see module doc)."""

    def __init__(
        self,
        env_keys: tuple[str, ...] = (),
        api_key_header: bool = False,
        response_ids: ResponseIds | None = None,
    ) -> None:
        self.gate = ConcurrencyGate()
        #: places a stored response's id (its profile and backend)
        self.response_ids = response_ids or ResponseIds()
        #: accept ``api-key: <key>`` (Azure style) as well as ``Authorization: Bearer``
        self.api_key_header = api_key_header
        self._env_keys = [ClientKey(digest(k)) for k in env_keys]
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

    async def authenticate(
        self, snapshot: ProfileSet, headers: dict[bytes, bytes], address: str
    ) -> ClientKey | None:
        """The caller's key (None when keys are off). Failed attempts are counted per client
        address; past ``limits.auth_failure_rate`` the address gets 429 without a check."""
        keyring = self.keyring(snapshot)
        if not keyring.enabled:
            return None
        limits = snapshot.limits
        rate = limits.auth_failure_rate
        if rate:
            await self.rate_limiter(limits.rate_storage).check_failures(rate, address)
        authorization = headers.get(b"authorization")
        if self.api_key_header and b"api-key" in headers:
            if authorization is not None:
                raise RequestError("Send the key in Authorization or in api-key, not both.")
            authorization = b"Bearer " + headers[b"api-key"]
        try:
            return keyring.authenticate(authorization)
        except AuthError:
            if rate:
                await self.rate_limiter(limits.rate_storage).record_failure(rate, address)
            raise

    async def admit(
        self,
        snapshot: ProfileSet,
        scope: dict[str, Any],
        receive: Any,
        endpoint: Endpoint,
        owner: Owner,
        deployment: str | None = None,
    ) -> Ticket:
        """Admit one completion request or raise the refusal. The concurrency slot is taken
        last, after the body arrived, and its release is pushed on ``owner``."""
        limits = snapshot.limits
        headers = header_map(scope["headers"])
        address = client_address(scope)
        key = await self.authenticate(snapshot, headers, address)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestTooLarge(limits.max_body_bytes)
        who = key.id if key else address
        if limits.key_rate:
            await self.rate_limiter(limits.rate_storage).hit(limits.key_rate, who)
        raw = await read_body(receive, limits)
        if endpoint == "responses_get" or endpoint == "responses_cancel":
            stored, ref = self._stored(snapshot, scope, key, endpoint == "responses_get")
            self.gate.acquire(who, limits.max_in_flight, limits.key_max_in_flight)
            owner.push(self.gate.release, who)
            return Ticket(
                snapshot, stored, key, ref, headers, endpoint, stream=ref.get("stream") is True
            )
        body, chars = parse_request(raw, endpoint, deployment)
        if body.get("stream") is True and scope.get("http_version") == "1.0":
            # an HTTP/1.0 client cannot read a chunked (streamed) answer
            raise RequestError(
                "Streaming needs HTTP/1.1: send stream: false, or use HTTP/1.1.", param="stream"
            )
        variant = headers.get(VARIANT_HEADER, b"").decode("latin-1").strip()
        name = f"{body['model']}:{variant}" if variant else body["model"]
        profile = snapshot.get(name)
        if profile is None or not allows(key, profile.name):
            # a model the key may not use looks exactly like one that does not exist
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        check_request(body, endpoint, profile, limits, chars)
        self.gate.acquire(who, limits.max_in_flight, limits.key_max_in_flight)
        owner.push(self.gate.release, who)
        return Ticket(
            snapshot, profile, key, body, headers, endpoint, stream=body.get("stream") is True
        )

    def _stored(
        self, snapshot: ProfileSet, scope: dict[str, Any], key: ClientKey | None, get: bool
    ) -> tuple[Profile, dict[str, Any]]:
        """A stored response's profile, from its id (GET / cancel: no body to validate), and
        what is asked of it (``stream``, ``starting_after``: replaying a background
        response's events). An id the gateway cannot place, or of a model the key may not
        use, is absent."""
        response_id = str(scope.get("path_params", {}).get("response_id", ""))
        located = self.response_ids.locate(snapshot, response_id)
        if located is None or not allows(key, located[0].name):
            raise ResponseNotFound(response_id)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ref: dict[str, Any] = {"response_id": response_id}
        if get and any(v.lower() in ("true", "1") for v in query.get("stream", ())):
            # replaying a background response's events (resuming its stream)
            if scope.get("http_version") == "1.0":
                raise RequestError("Streaming needs HTTP/1.1.", param="stream")
            ref["stream"] = True
            after = query.get("starting_after", [])
            if after:
                digits = after[0]
                if len(after) > 1 or not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
                    raise RequestError(
                        "starting_after: a sequence number (0 or more)", param="starting_after"
                    )
                ref["starting_after"] = int(after[0])
        return located[0], ref
