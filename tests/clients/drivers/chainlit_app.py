"""A Chainlit app, run through Chainlit's own message path without a browser.

The ``@cl.on_message`` handler is the one of Chainlit's OpenAI/DeepSeek-R1 examples: a
``cl.Step("Thinking")`` fed from ``delta.reasoning_content`` and a ``cl.Message`` fed with
``stream_token``. Each user message goes through ``chainlit.socket.process_message`` (what the
socket.io handler calls), on a real ``WebsocketSession`` whose ``emit`` records the events the
browser would get; a small model of the UI applies them (new/update message, stream start and
tokens). So the result is what the user sees: the answer, the Thinking step, and the error
Chainlit shows when the handler raises.

Run with CHAINLIT_APP_ROOT set to a scratch directory (Chainlit writes .chainlit/ there).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import chainlit as cl
from _common import Case, Partial, result, run
from chainlit.session import WebsocketSession
from chainlit.socket import process_message
from openai import AsyncOpenAI

CURRENT: dict[str, Any] = {}


class UI:
    """What the browser shows: messages and steps by id, as Chainlit's events build them."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.tokens = 0

    async def emit(self, event: str, data: Any) -> None:
        if event in ("new_message", "update_message", "stream_start"):
            item = self.items.setdefault(data["id"], {})
            if data["id"] not in self.order:
                self.order.append(data["id"])
            item.update(
                name=data.get("name"),
                type=data.get("type"),
                output=data.get("output") or "",
                error=bool(data.get("isError")),
            )
        elif event == "stream_token":
            self.tokens += 1
            item = self.items.setdefault(data["id"], {"output": ""})
            item["output"] = (
                data["token"] if data.get("isSequence") else item["output"] + data["token"]
            )

    async def emit_call(self, *args: Any, **kwargs: Any) -> None:
        return None

    def shown(self) -> list[dict[str, Any]]:
        return [self.items[i] for i in self.order]


@cl.on_message
async def on_message(message: cl.Message) -> None:
    client: AsyncOpenAI = CURRENT["client"]
    case: Case = CURRENT["case"]
    history = cl.user_session.get("message_history") or []
    history.append({"role": "user", "content": message.content})
    kw: dict[str, Any] = {"model": case["model"], "messages": history}
    if case.get("extra_body"):
        kw["extra_body"] = case["extra_body"]
    if case["kind"] == "nonstream":
        resp = await client.chat.completions.create(**kw)
        answer = cl.Message(content=resp.choices[0].message.content or "")
        await answer.send()
    elif case["kind"] == "usage_loop":
        # The everyday loop of Chainlit examples, with token usage asked for: the usage chunk
        # has "choices": [] and choices[0] raises IndexError.
        answer = cl.Message(content="")
        stream = await client.chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True}
        )
        async for part in stream:
            if token := part.choices[0].delta.content or "":
                await answer.stream_token(token)
        await answer.send()
    else:
        answer = cl.Message(content="")
        stream = await client.chat.completions.create(**kw, stream=True)
        async with cl.Step(name="Thinking") as thinking:
            async for part in stream:
                delta = part.choices[0].delta
                if reasoning := getattr(delta, "reasoning_content", None):
                    await thinking.stream_token(reasoning)
                elif token := delta.content or "":
                    await answer.stream_token(token)
        await answer.send()
    history.append({"role": "assistant", "content": answer.content})
    cl.user_session.set("message_history", history)


async def _say(ui: UI, session: WebsocketSession, text: str) -> None:
    payload = {
        "message": {
            "id": str(uuid.uuid4()),
            "threadId": session.thread_id,
            "output": text,
            "name": "User",
            "type": "user_message",
            "createdAt": "2026-01-01T00:00:00Z",
        }
    }
    await process_message(session, payload)  # type: ignore[arg-type]


def _session(ui: UI) -> WebsocketSession:
    return WebsocketSession(
        id=str(uuid.uuid4()),
        socket_id=str(uuid.uuid4()),
        emit=ui.emit,
        emit_call=ui.emit_call,  # type: ignore[arg-type]
        user_env={},
        client_type="webapp",
    )


def _seen(ui: UI, partial: Partial) -> dict[str, Any]:
    shown = ui.shown()
    answers = [i for i in shown if i.get("type") == "assistant_message" and not i["error"]]
    thinking = [i for i in shown if i.get("name") == "Thinking"]
    errors = [i for i in shown if i["error"]]
    text = answers[-1]["output"] if answers else None
    partial.text = text or ""
    out = result(
        text=text,
        reasoning=thinking[-1]["output"] if thinking and thinking[-1]["output"] else None,
        reasoning_shown=1 if thinking and thinking[-1]["output"] else 0,
        answers=[a["output"] for a in answers],
        tokens=ui.tokens,
    )
    if errors:  # Chainlit caught the exception and shows it: that is what the user sees
        out.update(
            ok=False,
            partial=text,
            error={
                "type": "chainlit-error",
                "message": errors[-1]["output"],
                "classes": [],
                "status": None,
                "code": None,
            },
        )
    return out


async def converse(case: Case, partial: Partial) -> dict[str, Any]:
    async with AsyncOpenAI(
        base_url=case["base_url"], api_key=case["api_key"], max_retries=0, timeout=30
    ) as client:
        CURRENT.update(client=client, case=case)
        ui = UI()
        session = _session(ui)
        turns = 3 if case["kind"] == "history" else 1
        for turn in range(turns):
            suffix = f" (turn {turn + 1})" if turns > 1 else ""
            await _say(ui, session, case["prompt"] + suffix)
        out = _seen(ui, partial)
        if turns > 1:
            out["texts"] = out["answers"]
        return out


async def async_case(case: Case, partial: Partial) -> dict[str, Any]:
    """Two users at once (two sessions), as a Chainlit server serves them."""
    async with AsyncOpenAI(
        base_url=case["base_url"], api_key=case["api_key"], max_retries=0, timeout=30
    ) as client:
        CURRENT.update(client=client, case={**case, "kind": "stream"})
        uis = [UI(), UI()]
        await asyncio.gather(*(_say(ui, _session(ui), case["prompt"]) for ui in uis))
        seen = [_seen(ui, Partial()) for ui in uis]
    return result(
        ok=all(s["ok"] for s in seen),
        text=seen[0]["text"],
        texts=[s["text"] for s in seen],
        error=next((s["error"] for s in seen if s["error"]), None),
    )


if __name__ == "__main__":
    run(
        {
            "nonstream": converse,
            "stream": converse,
            "history": converse,
            "usage_loop": converse,
            "async": async_case,
        },
        ["chainlit", "openai"],
    )
