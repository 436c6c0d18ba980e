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

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

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

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

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
        if self._head_timer is None:
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self._limits.max_headers:
            self._refusal = (431, "Too many request header fields.")
            # stops the parser; uvicorn answers through send_400_response (below)
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

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

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
        self._refusal = (status, message)
        body = message.encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()
        self._in_head = False
        self._disarm_head_timer()


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
    }


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    return uvicorn.Config(app, **{**uvicorn_options(settings), **overrides})
