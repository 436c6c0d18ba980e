"""The front door: client API keys, concurrency caps and request-rate limits.

* Keys: ``GATEWAY_API_KEYS`` (comma-separated keys) and/or the profile file's
  ``auth.keys_file`` (one sha256 hex digest per line, optionally followed by the models that
  key may use: ``<sha256> model-a,model-b``). Only digests are kept; a presented key is hashed
  and compared with every digest in constant time. With no key configured the gateway serves
  anyone (and says so at start-up).
* A key not allowed a model gets 404 ``model_not_found``, as OpenAI answers for models an
  account cannot see; ``/v1/models`` lists only the models the key may use.
* Concurrency: a global cap and a per-key cap on requests in flight (429, ``Retry-After``).
  These counters are per replica.
* Rate: requests per key (per client address without keys) through the ``limits`` library,
  moving window; ``memory://`` storage is per replica, ``redis://...`` is shared by replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from .errors import AuthError, TooManyRequests


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

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: bytes | None) -> ClientKey | None:
        """The key presented as ``Authorization: Bearer <key>``; None when keys are off."""
        if not self.keys:
            return None
        raw = (authorization or b"").decode("latin-1")
        scheme, _, token = raw.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Missing API key: send Authorization: Bearer <key>.")
        presented = digest(token.strip())
        found = None
        for key in self.keys:  # every digest compared, in constant time each
            if hmac.compare_digest(presented, key.digest):
                found = key
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
                "The gateway is at its concurrency limit; retry shortly.",
                "concurrency_limit_exceeded",
                1,
            )
        if self.per_key.get(who, 0) >= max_per_key:
            raise TooManyRequests(
                "Too many concurrent requests for this API key.", "concurrency_limit_exceeded", 1
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
    """Requests per key in a moving window, on ``limits`` storage (memory or Redis)."""

    def __init__(self, storage_uri: str) -> None:
        self.storage_uri = storage_uri
        uri = storage_uri if storage_uri.startswith("async+") else "async+" + storage_uri
        self._limiter = MovingWindowRateLimiter(storage_from_string(uri))
        self._items: dict[str, RateLimitItem] = {}

    async def hit(self, rate: str, who: str) -> None:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(rate)
        if await self._limiter.hit(item, "gateway", who):
            return
        stats = await self._limiter.get_window_stats(item, "gateway", who)
        retry = math.ceil(stats.reset_time - time.time())
        raise TooManyRequests(
            f"Rate limit of {rate} exceeded for this API key.", "rate_limit_exceeded", retry
        )
