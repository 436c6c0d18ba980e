"""The HTTP server: uvicorn with httptools, guarded where httptools has no limits.

httptools (llhttp) accepts request heads of any size and takes forever to send them: one
connection that sent 400 MB of header lines took the process from 83 MB to 478 MB. The
guarded protocol keeps uvicorn's fast parser and adds, per request head:

* ``max_header_bytes`` (request line + headers) and ``max_headers``: over either, ``431``
  and the connection is closed. Counted on the bytes of each read that ends while the head
  is still incomplete, so the cost is one addition per read.
* ``header_timeout``: a connection that has not finished its head this many seconds after it
  opened (or after its previous response) gets ``408`` and is closed (slow-loris). uvicorn's
  own keep-alive timer is cancelled by every byte, so it cannot bound this.
* graceful shutdown: when uvicorn starts shutting down it calls ``shutdown()`` on every
  connection; the first call tells the gateway, which gives requests in flight
  ``shutdown_grace`` seconds and then ends streams well (a final event and ``[DONE]``).

Idle keep-alive connections are closed after ``keepalive_timeout`` (uvicorn's setting).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .protocol import error_body
from .settings import Settings

#: the lifespan state key under which the app publishes its :class:`ServerLimits`
LIMITS_KEY = "gateway.server_limits"
#: the lifespan state key of an object with ``begin_shutdown()``
SHUTDOWN_KEY = "gateway.shutdown"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout)


_DEFAULT_LIMITS = ServerLimits()


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a refused request head."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads (see module doc)."""

    # slots, not more entries in uvicorn's per-connection instance dict (memory per stream)
    __slots__ = (
        "_head_bytes",
        "_head_count",
        "_head_timer",
        "_in_head",
        "_limits",
        "_parsed",
        "_refusal",
        "_running",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.app_state.get(LIMITS_KEY, _DEFAULT_LIMITS)
        self._limits: ServerLimits = limits
        self._in_head = True
        self._head_bytes = 0
        self._head_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        #: (status, message) once the head was refused
        self._refusal: tuple[int, str] | None = None
        #: bytes of the request line and headers parsed so far
        self._parsed = 0
        #: requests of this connection whose app task runs (pipelining: not only the last)
        self._running: list[Any] = []

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        # uvicorn marks only the last request parsed as disconnected; with pipelining the
        # one running is another, which would then write into a closed transport
        for cycle in self._running:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._running.clear()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = [c for c in self._running if not c.response_complete]
        self._running.append(cycle)
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(431, "Request header fields too large.")

    def shutdown(self) -> None:
        gateway = self.app_state.get(SHUTDOWN_KEY)
        if gateway is not None:
            gateway.begin_shutdown()
        super().shutdown()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_count = 0
        self._parsed = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._parsed += len(name) + len(value) + 4
        if self._head_count > self._limits.max_headers:
            self._refusal = (431, "Too many request header fields.")
            # stops the parser; uvicorn answers through send_400_response (below)
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        if self._parsed > self._limits.max_header_bytes:  # a head that came in one read
            self._refusal = (431, "Request header fields too large.")
            raise _HeadRefused
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser refuses: ours is OpenAI-style JSON, and
        never a second response written into one still being sent (input after a request
        that is still being answered: the connection closes when that answer ends)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self._refusal is None:
            cycle.keep_alive = False  # answer the request in progress, then close
            self.flow.pause_reading()
            return
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            self._refuse(400, "Invalid HTTP request.", "invalid_http_request")

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn calls this for an Upgrade request (websocket, h2c): the gateway speaks
        # neither, so it is refused at once (uvicorn would log two warnings per request and
        # leave its body unread until the body timeout)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(400, "Protocol upgrades are not supported.", "upgrade_not_supported")

    # -- helpers ---------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_expired)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        # Armed when a connection opens and when each further request on it begins (the
        # idle wait between requests is uvicorn's keep-alive timer).
        if self._in_head and self.transport is not None and not self.transport.is_closing():
            self._refuse(408, "Request header timeout.")

    def _refuse(self, status: int, message: str, code: str | None = None) -> None:
        if self.transport.is_closing():
            return
        self._refusal = (status, message)
        codes = {408: "header_timeout", 431: "request_header_fields_too_large"}
        body = orjson.dumps(
            error_body(message, "invalid_request_error", code=code or codes.get(status))
        )
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()
        self._in_head = False
        self._disarm_head_timer()


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (the soft default, often
    1024, would cap a gateway at about 500 streams: each holds a client and an upstream
    socket). Returns the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` (one place for all modes)."""
    trusted = settings.forwarded_allow_ips.strip()
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "http": GuardedHttpToolsProtocol,
        "timeout_keep_alive": settings.keepalive_timeout,
        "timeout_graceful_shutdown": settings.shutdown_grace + 5,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "server_header": False,
        # no websocket routes: an Upgrade request is plain HTTP, under every limit above
        # (with uvicorn's websocket handling one such request held its socket forever)
        "ws": "none",
    }


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    return uvicorn.Config(app, **{**uvicorn_options(settings), **overrides})
