"""Admission as one unit, without sockets: what is refused, in what order, and that the
concurrency slot is taken only after the body arrived and released exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.errors import (
    AuthError,
    ClientDisconnected,
    ModelNotFound,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    TooManyRequests,
)
from gateway.owner import Owner
from gateway.profiles import parse_profiles
from gateway.security import Admission, digest
from tests.virtual_time import run_virtual

PROFILES = parse_profiles(
    """
limits: {max_in_flight: 2, key_max_in_flight: 1, body_timeout: 30, max_body_bytes: 2048}
models:
  r1: {backends: [{url: "http://127.0.0.1:9"}]}
  other: {backends: [{url: "http://127.0.0.1:9"}]}
""",
    "<test>",
)
BODY = orjson.dumps({"model": "r1", "messages": [{"role": "user", "content": "hi"}]})


def scope(*headers: tuple[bytes, bytes], client: str = "10.0.0.1") -> dict[str, Any]:
    return {"type": "http", "headers": list(headers), "client": (client, 5555)}


def receiver(*messages: dict[str, Any] | float) -> Any:
    """An ASGI receive() that yields the messages; a number stalls that many seconds."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        while queue:
            m = queue.pop(0)
            if isinstance(m, float | int):
                await asyncio.sleep(m)
                continue
            return m
        await asyncio.sleep(10_000)
        return {"type": "http.disconnect"}

    return receive


def body(data: bytes = BODY, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


async def admit(admission: Admission, sc: dict[str, Any], receive: Any) -> Any:
    owner = Owner()
    try:
        ticket = await admission.admit(PROFILES, sc, receive, "chat", owner)
        assert admission.gate.total == 1  # held while the request runs
        return ticket
    finally:
        owner.close()


def test_admits_and_releases_the_slot_once() -> None:
    adm = Admission()
    ticket, _ = run_virtual(admit(adm, scope(), receiver(body())))
    assert ticket.profile.name == "r1" and ticket.body["model"] == "r1"
    assert adm.gate.total == 0 and adm.gate.per_key == {}


def test_slot_is_taken_only_after_the_body_arrived() -> None:
    """Slow-body connections must not hold slots: a drip-feeding client times out (408)
    while others are admitted."""
    adm = Admission()

    async def go() -> tuple[BaseException | None, int]:
        slow = asyncio.ensure_future(
            admit(adm, scope(client="10.0.0.9"), receiver(body(b"{", more=True), 100.0))
        )
        await asyncio.sleep(1)
        assert adm.gate.total == 0  # the slow one holds nothing
        await admit(adm, scope(client="10.0.0.2"), receiver(body()))
        try:
            await slow
        except RequestTimeout as exc:
            return exc, adm.gate.total
        return None, adm.gate.total

    (exc, held), elapsed = run_virtual(go())
    assert isinstance(exc, RequestTimeout) and exc.status == 408
    assert elapsed == pytest.approx(30)  # limits.body_timeout
    assert held == 0


def test_client_gone_before_its_body() -> None:
    adm = Admission()
    with pytest.raises(ClientDisconnected):
        run_virtual(admit(adm, scope(), receiver({"type": "http.disconnect"})))
    assert adm.gate.total == 0


def test_body_over_the_limit_declared_or_streamed() -> None:
    adm = Admission()
    with pytest.raises(RequestTooLarge):
        run_virtual(admit(adm, scope((b"content-length", b"99999")), receiver(body())))
    chunks = [body(b"x" * 1000, more=True) for _ in range(3)]
    with pytest.raises(RequestTooLarge):
        run_virtual(admit(adm, scope(), receiver(*chunks)))
    assert adm.gate.total == 0


def test_keys_duplicates_and_models() -> None:
    adm = Admission(env_keys=("sk-1",))
    with pytest.raises(AuthError):
        run_virtual(admit(adm, scope(), receiver(body())))
    with pytest.raises(AuthError):
        run_virtual(admit(adm, scope((b"authorization", b"Bearer nope")), receiver(body())))
    twice = ((b"authorization", b"Bearer sk-1"), (b"authorization", b"Bearer nope"))
    with pytest.raises(RequestError, match="more than one authorization"):
        run_virtual(admit(adm, scope(*twice), receiver(body())))
    ok, _ = run_virtual(admit(adm, scope((b"authorization", b"Bearer sk-1")), receiver(body())))
    assert ok.key is not None and ok.key.digest == digest("sk-1")
    unknown = orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(ModelNotFound):
        run_virtual(admit(adm, scope((b"authorization", b"Bearer sk-1")), receiver(body(unknown))))
    assert adm.gate.total == 0


def test_concurrency_caps_refuse_with_retry_after() -> None:
    adm = Admission()

    async def go() -> list[Any]:
        held: list[Owner] = []
        results: list[Any] = []
        for client in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"):
            owner = Owner()
            try:
                await adm.admit(PROFILES, scope(client=client), receiver(body()), "chat", owner)
                held.append(owner)
                results.append("ok")
            except TooManyRequests as exc:
                results.append((exc.code, exc.retry_after))
        for owner in held:
            owner.close()
        return results

    results, _ = run_virtual(go())
    # key_max_in_flight 1 (per address here), max_in_flight 2
    assert results == [
        "ok",
        ("concurrency_limit_exceeded", 1),
        "ok",
        ("concurrency_limit_exceeded", 1),
    ]
    assert adm.gate.total == 0
