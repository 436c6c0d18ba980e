from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, sse_events


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    # timeout: a hung stream fails the test within seconds instead of hanging the run
    with openai.OpenAI(base_url=gateway.base_url, api_key="t", max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
async def aclient(gateway: GatewayServer) -> Any:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="t", max_retries=0, timeout=10
    ) as c:
        yield c


@pytest.fixture
def raw(gateway: GatewayServer) -> Any:
    """POST a JSON body, return (status, headers, decoded SSE events or JSON body)."""

    def post(
        path: str, body: dict[str, Any], timeout: float = 10
    ) -> tuple[int, httpx.Headers, Any]:
        r = httpx.post(gateway.base_url + path, json=body, timeout=timeout)
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            return r.status_code, r.headers, sse_events(r.content)
        return r.status_code, r.headers, r.json()

    return post
