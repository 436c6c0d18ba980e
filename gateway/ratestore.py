"""The rate-limit storage named by ``limits.rate_storage``: checked at load, built once.

``memory://`` counts per replica; ``redis://host:6379`` (also ``rediss://``,
``redis+unix:///path``, ``redis+sentinel://``, ``redis+cluster://``) shares the counters of
every replica through Redis. The Redis client is the ``redis`` extra
(``pip install 'vllm-thinking-gateway[redis]'``: ``limits[async-redis]``, i.e. coredis).

* At load (``gateway check``, start-up, every reload) the URI must be ``memory://`` or a
  Redis (or Valkey) URI that the ``limits`` library can build a storage from, its client
  installed: otherwise the file is refused (:func:`storage_problem`).
* Whether the server answers is checked too, but only warned about
  (:func:`reachability_warning`): Redis may start after the gateway, and at run time the
  limiter fails open (see :class:`security.RateLimiter`): while the storage is down,
  requests are served unlimited and a warning is logged, rather than every request failing.
* Redis calls get 1-second connect and read timeouts unless the URI sets its own, so a
  blackholed Redis costs a request at most about a second, never a hang.

Error and warning texts never show the URI's password.
"""

from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: seconds; Redis calls on the request path must not hang on an unreachable server
REDIS_TIMEOUT = 1.0
_REDIS_SCHEMES = ("redis", "rediss", "valkey", "valkeys")


def redact(uri: str) -> str:
    """``uri`` without its userinfo part(s) or a ``password=`` query parameter."""
    uri = re.sub(r"(://|,)([^/@,]*)@", lambda m: f"{m.group(1)}***@", uri)
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", uri)


def make_storage(uri: str) -> Any:
    """The async ``limits`` storage for ``uri`` (exceptions wrapped as ``StorageError``;
    Redis timeouts as above)."""
    from limits.storage import storage_from_string

    full = uri if uri.startswith("async+") else "async+" + uri
    options: dict[str, float | str | bool] = {"wrap_exceptions": True}
    scheme = urlsplit(full).scheme.removeprefix("async+")
    if scheme.split("+")[0] in _REDIS_SCHEMES:
        query = parse_qs(urlsplit(full).query)
        for name in ("connect_timeout", "stream_timeout"):
            if name not in query:
                options[name] = REDIS_TIMEOUT
    return storage_from_string(full, **options)


def storage_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be the rate storage (``None``: it can)."""
    from limits.errors import ConfigurationError

    shown = redact(uri)
    try:
        scheme = urlsplit(uri.removeprefix("async+")).scheme
    except ValueError:
        scheme = ""
    if scheme != "memory" and scheme.split("+")[0] not in _REDIS_SCHEMES:
        # the limits library knows more (memcached has no moving window; mongodb's client
        # is not a dependency): the gateway supports these two families
        return (
            "not a rate storage the gateway supports, like memory:// or redis://host:6379, "
            f"got {shown!r}"
        )
    try:
        make_storage(uri)
    except ConfigurationError as exc:
        text = redact(str(exc)).split(" See ")[0]
        if "prerequisite" in text:
            extra = " (install the gateway's `redis` extra)" if scheme.startswith("redis") else ""
            return f"the client library is not installed: {text}{extra}, got {shown!r}"
        return f"cannot be used: {text[:200]}, got {shown!r}"
    except Exception as exc:  # any failure to build it is a refusal
        reason = redact(str(exc))[:200]
        return f"cannot be used ({type(exc).__name__}: {reason}), got {shown!r}"
    return None


def reachability_warning(uri: str, timeout: float = REDIS_TIMEOUT) -> str | None:
    """A warning when a Redis storage does not answer within ``timeout`` (``None``: it
    answered, or the storage is in-process). Plain TCP (and a RESP ``PING`` where the
    connection is not TLS): no event loop, usable from any thread."""
    parts = urlsplit(uri.removeprefix("async+"))
    scheme = parts.scheme
    if scheme.split("+")[0] not in _REDIS_SCHEMES:
        return None
    try:
        if scheme.endswith("+unix"):
            where = parts.path
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(where)
            except OSError:
                sock.close()
                raise
        else:
            first = urlsplit("//" + parts.netloc.rsplit("@", 1)[-1].split(",")[0])
            host = first.hostname or "localhost"
            port = first.port or (26379 if "sentinel" in scheme else 6379)
            where = f"{host}:{port}"
            sock = socket.create_connection((host, port), timeout=timeout)
        with sock:
            if scheme in ("redis", "valkey", "redis+unix", "valkey+unix"):
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                reply = sock.recv(64)
                if reply[:1] not in (b"+", b"-"):
                    return f"rate_storage {redact(uri)}: {where} does not answer like Redis"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        return (
            f"rate_storage {redact(uri)}: cannot reach Redis ({reason}); until it answers, "
            "requests are not rate limited"
        )
    return None
