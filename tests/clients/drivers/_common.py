"""Shared by the client drivers (run in the clients venvs, not the gateway's).

A driver is ``python DRIVER.py JOB.json OUT.json``. JOB holds ``base_url``, ``api_key``,
``models`` (role -> model name) and ``cases`` (``{"id", "kind", ...}``); the driver runs each
case with its library the way an application would and writes ``{"results": {id: result},
"versions": {...}, "outbound": [...]}`` to OUT. Libraries print banners to stdout, so results
never go there.

A result says what the APPLICATION finally sees: ``ok`` (no exception), ``text``, ``reasoning``
(what the library exposes, ``None`` if it exposes none), ``reasoning_shown`` (how many times
the reasoning text reached the application, summed over every place the library puts it),
``finish_reason``, ``partial`` (text the application had already shown when an exception came)
and ``error`` (type, its classes, message, status, code).

Every connection that is not to loopback is refused and recorded in ``outbound``: tests may
only talk to loopback, and a library that phones home (model price lists, telemetry) must not
slow or break the run.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

OUTBOUND: list[str] = []
_LOOPBACK = ("127.", "::1", "localhost")


def _guard_network() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(address: Any) -> bool:
        host = address[0] if isinstance(address, tuple) else str(address)
        return isinstance(host, str) and host.startswith(_LOOPBACK)

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address):
            OUTBOUND.append(repr(address))
            raise ConnectionRefusedError(f"client conformance suite: no traffic to {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address):
            OUTBOUND.append(repr(address))
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not str(name).startswith(_LOOPBACK):
            OUTBOUND.append(f"dns:{name}")
            raise socket.gaierror(
                socket.EAI_NONAME, f"client conformance suite: no lookup of {name}"
            )
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


_guard_network()


def error_info(exc: BaseException) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    code = getattr(exc, "code", None)
    if code is None and isinstance(body, dict):
        code = body.get("code")
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if not isinstance(status, int):
        status = None
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "classes": [k.__name__ for k in type(exc).__mro__],
        "message": str(exc)[:2000],
        "status": status,
        "code": code if isinstance(code, (str, int)) or code is None else str(code),
        "cause": type(exc.__cause__).__name__ if exc.__cause__ is not None else None,
    }


def result(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ok": True,
        "text": None,
        "reasoning": None,
        "reasoning_shown": 0,
        "finish_reason": None,
        "partial": None,
        "error": None,
    }
    base.update(fields)
    return base


class Partial:
    """What a streaming case had shown before an exception: drivers append to ``text``."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoning_chars = 0


def count_shown(reasoning: str | None, chars: int) -> int:
    """How many times the reasoning reached the application: chars received over its length."""
    if not reasoning:
        return 0
    return round(chars / len(reasoning))


Case = dict[str, Any]
Handler = Callable[[Case, Partial], Any]


def run(handlers: dict[str, Handler], dists: list[str]) -> None:
    """Run every case of the job with its handler (sync or async); write the results and
    the versions of the distributions ``dists``."""
    versions = {d: importlib.metadata.version(d) for d in dists}
    job_path, out_path = sys.argv[1], sys.argv[2]
    with open(job_path) as f:
        job = json.load(f)
    results: dict[str, Any] = {}
    for case in job["cases"]:
        case = {**job, **case}
        case.pop("cases", None)
        handler = handlers.get(case["kind"])
        if handler is None:
            results[case["id"]] = {"unsupported": True}
            continue
        partial = Partial()
        started = time.monotonic()
        try:
            out = handler(case, partial)
            if inspect.isawaitable(out):
                out = asyncio.run(out)
        except Exception as exc:  # what the application would catch
            out = result(
                ok=False,
                partial=partial.text,
                error=error_info(exc),
                traceback=traceback.format_exc()[-3000:],
            )
        out["elapsed"] = round(time.monotonic() - started, 3)
        results[case["id"]] = out
    with open(out_path, "w") as f:
        json.dump({"results": results, "versions": versions, "outbound": OUTBOUND}, f, indent=1)
