"""Upstream calls on one pooled ``aiohttp.ClientSession`` per process.

This is the only module that imports the HTTP client; aiohttp's exceptions become the
gateway's :mod:`errors` in one table (:func:`map_client_errors`, the httpx
``map_httpcore_exceptions`` pattern) and nowhere else. aiohttp was chosen by measurement: on
this project's 2-core machines a pass-through proxy kept 53% (non-stream) / 100% (stream) of
direct throughput with aiohttp against 6% / 15% with ``httpx.AsyncClient``.

Health probes use a session of their own, so they never wait behind client traffic for a
pooled connection. Redirects from a backend are never followed (a 3xx is a protocol error):
following one would re-send the prompt to another origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Literal, Self

import aiohttp
import orjson

from .errors import (
    GatewayOverloaded,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .profiles import Backend

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
#: an error body larger than this is cut: only its OpenAI error fields are used
_MAX_ERROR_BODY = 64 * 1024
#: an error message from a backend is cut to this many characters
_MAX_ERROR_MESSAGE = 1000

Phase = Literal["connect", "read"]

# Most specific first. Each entry: (aiohttp exception, the gateway's error for the request
# phase, the gateway's error for the body-reading phase).
_Make = Callable[[str], UpstreamError]
_ERROR_TABLE: tuple[tuple[type[BaseException], _Make, _Make], ...] = (
    (aiohttp.ClientPayloadError, UpstreamDisconnected, UpstreamDisconnected),
    (aiohttp.ServerDisconnectedError, UpstreamUnavailable, UpstreamDisconnected),
    (aiohttp.ClientResponseError, UpstreamProtocolError, UpstreamProtocolError),
    (aiohttp.ClientConnectorError, UpstreamUnavailable, UpstreamDisconnected),
    (aiohttp.ClientConnectionError, UpstreamUnavailable, UpstreamDisconnected),
    (aiohttp.InvalidURL, UpstreamUnavailable, UpstreamUnavailable),
    (aiohttp.ClientError, UpstreamProtocolError, UpstreamProtocolError),
    (OSError, UpstreamUnavailable, UpstreamDisconnected),
)


#: errnos that mean the gateway itself ran out of something (not the backend's fault)
_LOCAL_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@contextlib.contextmanager
def _local_resources() -> Iterator[None]:
    """Out of file descriptors (or buffers, memory) while connecting: a 503 of the
    gateway's, which must not count against the backend's health."""
    try:
        yield
    except (aiohttp.ClientConnectorError, OSError) as exc:
        code = getattr(getattr(exc, "os_error", exc), "errno", None)
        if isinstance(code, int) and code in _LOCAL_EXHAUSTION:
            fds = code in (errno.EMFILE, errno.ENFILE)
            raise GatewayOverloaded(
                f"The gateway is out of resources ({os.strerror(code)}); retry shortly.",
                "file_descriptors" if fds else "system_resources",
            ) from exc
        raise


def mapped(
    exc: aiohttp.ClientError | OSError, backend: str, phase: Phase, connect_timeout: float = 0.0
) -> UpstreamError:
    """The gateway's error for an exception of the HTTP client (the one table)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout("connect", connect_timeout)
    for exc_type, on_connect, on_read in _ERROR_TABLE:
        if isinstance(exc, exc_type):
            make = on_connect if phase == "connect" else on_read
            what = "is unreachable" if phase == "connect" else "broke the connection"
            return make(f"backend {backend} {what}: {exc.__class__.__name__}")
    raise AssertionError("unreachable: the table ends with the base classes")


@contextlib.contextmanager
def map_client_errors(backend: str, phase: Phase, connect_timeout: float = 0.0) -> Iterator[None]:
    """Every exception of the HTTP client becomes an :class:`UpstreamError`
    (``raise ... from exc``); anything else (our own bugs, cancellation) passes unchanged.
    (The per-chunk reads use :func:`mapped` in an ``except`` clause: the same table without
    a context manager per read.)"""
    try:
        yield
    except UpstreamError:
        raise
    except (aiohttp.ClientError, OSError) as exc:
        raise mapped(exc, backend, phase, connect_timeout) from exc


class Lease:
    """One unit of a backend's ``outstanding`` count, released exactly once.

    Owned by whoever holds the upstream response (``UpstreamResponse.aclose`` releases it),
    or by the attempt that failed before a response existed."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class UpstreamResponse:
    """A backend's successful (2xx) response, read incrementally. Owns the connection and
    the backend lease; :meth:`close` releases both, once."""

    __slots__ = ("_lease", "_resp", "backend", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, backend: Backend, lease: Lease) -> None:
        self._resp: aiohttp.ClientResponse | None = resp
        self._lease = lease
        self.backend = backend
        self.status = resp.status
        self.headers = resp.headers

    async def read_chunk(self) -> bytes:
        """The next bytes available; ``b""`` at the end of the body."""
        assert self._resp is not None, "read after close"
        try:
            return await self._resp.content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise mapped(exc, self.backend.name, "read") from exc

    def read_nowait(self) -> bytes:
        """The bytes already received, without waiting; ``b""`` if none (or at the end)."""
        assert self._resp is not None, "read after close"
        try:
            return self._resp.content.read_nowait()
        except (aiohttp.ClientError, OSError) as exc:
            raise mapped(exc, self.backend.name, "read") from exc

    async def read_all(self, limit: int) -> bytes:
        """The whole body; more than ``limit`` bytes is a protocol error."""
        assert self._resp is not None, "read after close"
        chunks: list[bytes] = []
        size = 0
        with map_client_errors(self.backend.name, "read"):
            while chunk := await self._resp.content.readany():
                size += len(chunk)
                if size > limit:
                    raise UpstreamProtocolError(
                        f"backend {self.backend.name} sent a body larger than {limit} bytes"
                    )
                chunks.append(chunk)
        return b"".join(chunks)

    def close(self, *, reuse: bool = False) -> None:
        """Release the connection to the pool (``reuse``) or close it, which makes vLLM
        abort the request; release the backend lease. Idempotent and synchronous, so it is
        safe in ``finally`` under cancellation."""
        resp, self._resp = self._resp, None
        if resp is not None:
            if reuse:
                resp.release()
            else:
                resp.close()
        self._lease.release()


def _error_fields(status: int, raw: bytes, backend: str) -> UpstreamStatusError:
    """Only the OpenAI error fields of a backend's error body (never the raw body)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        code = err.get("code")
        param = err.get("param")
        type_ = err.get("type")
        return UpstreamStatusError(
            status,
            err["message"][:_MAX_ERROR_MESSAGE],
            type_=type_[:100] if isinstance(type_, str) else None,
            code=code
            if isinstance(code, int) or (isinstance(code, str) and len(code) < 100)
            else None,
            param=param[:200] if isinstance(param, str) else None,
        )
    return UpstreamStatusError(status, f"backend {backend} answered {status}", code=status)


class UpstreamClient:
    """One pooled HTTP client for every backend; owned by the app's lifespan."""

    def __init__(self, *, max_connections: int = 0) -> None:
        #: 0: no pool limit (the gateway's in-flight cap bounds connections instead, so a
        #: request never waits silently for one)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
            skip_auto_headers=("User-Agent",),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for session in (self._session, self._probe_session):
            if session is not None:
                await session.close()
        self._session = self._probe_session = None

    async def post(
        self,
        backend: Backend,
        path: str,
        body: bytes | None,
        lease: Lease,
        *,
        connect_timeout: float,
        request_id: str | None = None,
        method: str = "POST",
    ) -> UpstreamResponse:
        """POST ``body`` (or send ``method``: a stored response's GET); return the response
        once its headers arrived. The response owns ``lease`` from then on; on any failure
        the lease is released here.

        Raises :class:`UpstreamUnavailable` (cannot connect), :class:`UpstreamTimeout`
        (connect phase), :class:`UpstreamStatusError` (4xx/5xx) or
        :class:`UpstreamProtocolError` (garbled, redirect). The caller bounds the wait for
        headers with its own deadline."""
        assert self._session is not None, "UpstreamClient used outside its context"
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=None
        )
        headers = dict(_JSON_HEADERS)
        if backend.api_key:
            headers["Authorization"] = f"Bearer {backend.api_key}"
        if request_id:
            headers["X-Request-Id"] = request_id
        try:
            # (inner first: our own exhaustion must not become the backend's error)
            with map_client_errors(backend.name, "connect", connect_timeout), _local_resources():
                resp = await self._session.request(
                    method,
                    backend.url + path,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                )
        except BaseException:
            lease.release()
            raise
        if resp.status < 300:
            return UpstreamResponse(resp, backend, lease)  # it owns the lease now
        lease.release()
        try:
            if resp.status < 400:
                raise UpstreamProtocolError(
                    f"backend {backend.name} answered {resp.status} (a redirect); "
                    "redirects are not followed"
                )
            with map_client_errors(backend.name, "read"):
                raw = await resp.content.read(_MAX_ERROR_BODY)
            raise _error_fields(resp.status, raw, backend.name)
        finally:
            resp.close()

    async def fetch(self, backend: Backend, path: str, seconds: float, limit: int) -> bytes:
        """``GET path`` of a backend on the probe session (never behind client traffic): the
        body of a 2xx answer received within ``seconds``, at most ``limit`` bytes.

        Raises :class:`UpstreamTimeout`, :class:`UpstreamStatusError` (not 2xx) or another
        :class:`UpstreamError`."""
        assert self._probe_session is not None, "UpstreamClient used outside its context"
        headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else None
        try:
            async with asyncio.timeout(seconds):
                with map_client_errors(backend.name, "connect", seconds):
                    async with self._probe_session.get(
                        backend.url + path, headers=headers, allow_redirects=False
                    ) as resp:
                        if not 200 <= resp.status < 300:
                            raise UpstreamStatusError(
                                resp.status, f"backend {backend.name} answered {resp.status}"
                            )
                        chunks: list[bytes] = []
                        size = 0
                        while chunk := await resp.content.readany():
                            size += len(chunk)
                            if size > limit:
                                raise UpstreamProtocolError(
                                    f"backend {backend.name} sent more than {limit} bytes"
                                )
                            chunks.append(chunk)
        except TimeoutError:
            raise UpstreamTimeout("total", seconds) from None
        return b"".join(chunks)

    async def probe(self, backend: Backend, seconds: float) -> bool:
        """``GET /health`` of a backend: True for a 2xx within ``seconds``."""
        assert self._probe_session is not None, "UpstreamClient used outside its context"
        headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else None
        try:
            async with self._probe_session.get(
                backend.url + "/health",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
                allow_redirects=False,
            ) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
