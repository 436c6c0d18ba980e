"""Per-request control of what goes upstream, decided once per request (:class:`Plan`):

* **Reasoning control** (#17): every client dialect is read, checked and translated into what
  the backend understands, per the profile's ``reasoning.control``:

  - OpenAI ``reasoning_effort``: ``none|minimal|low|medium|high|xhigh`` (and vLLM's ``max``);
  - the unified ``reasoning: {effort, max_tokens, exclude, enabled}`` (``summary`` is
    accepted and ignored);
  - Anthropic-style ``thinking: {type: enabled, budget_tokens} | {type: disabled} |
    {type: adaptive}`` (``display: omitted`` hides the reasoning);
  - vLLM's own ``thinking_token_budget`` (``-1``: unlimited) and an explicit
    ``chat_template_kwargs`` switch.

  Several may be sent if they agree; disagreeing ones are a 400 naming both. An effort maps to
  a budget (``control.efforts``); no ask means ``control.default_budget``. Thinking off
  (effort ``none``, ``enabled: false``, ``type: disabled``) sets the template switch
  (``control.off_switch``, e.g. ``chat_template_kwargs.enable_thinking: false``) or, for a
  template without one, becomes a budget of 0. ``exclude`` (or ``display: omitted``) hides the
  reasoning for that request (``mode: hide``). A budget goes upstream as
  ``thinking_token_budget`` (``control.enforce: backend``) or is enforced by the gateway
  (``enforce: gateway``, :mod:`forcing`). ``max_tokens`` must leave room for the answer: a
  client's ``max_tokens`` at or below the budget is a 400 (``short_max_tokens: reject``) or
  raised to budget + ``answer_room`` (``raise``); one the gateway set is always raised.
  The dialects themselves never go upstream (vLLM would turn ``reasoning_effort`` into
  ``enable_thinking`` behind the profile's back); the client's own ``chat_template_kwargs``
  are kept.

* **max_tokens each backend accepts** (#13 item 5): vLLM refuses ``max_tokens`` above its
  ``max_model_len`` (and clamps prompt + max_tokens above it silently). A value the gateway
  set (``max_tokens_limit`` filling an absent one, ``defaults``, ``overrides``, a raise) is
  capped per chosen backend to the ``max_model_len`` it reports (:mod:`backend_info`); so is
  a client's own value under ``max_tokens_policy: clamp`` (the default). Under ``reject`` a
  client's explicit value is sent as asked, and vLLM's 400 reaches the client. A
  backend-enforced budget is kept ``answer_room`` below the capped value. If a backend
  refuses anyway (it restarted with a shorter context), the limit in its message is learned
  and the request is tried again.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from .backend_info import BackendInfo
from .control_spec import EFFORTS, ReasoningControl
from .errors import RequestError, UpstreamStatusError, UpstreamTimeout
from .forcing import Force, ForcingSource, continue_json
from .owner import Owner
from .profiles import Backend, Profile
from .reasoning import OPEN
from .security import Ticket
from .stream import ChunkSource, Opened
from .upstream import UpstreamClient, UpstreamResponse

if TYPE_CHECKING:
    from .pool import BackendPool

#: the client dialects the gateway translates (removed from the upstream body)
DIALECTS = ("reasoning_effort", "reasoning", "thinking")
_MAX_KEYS = ("max_tokens", "max_completion_tokens")
_REFUSED_LEN = re.compile(r"cannot be greater than max_model_len=([1-9]\d{0,11})\b")
#: seconds a request waits for a backend's first /v1/models answer
MODELS_WAIT = 2.0


@dataclass(slots=True)
class Ask:
    """What one dialect asked for."""

    source: str
    #: False: thinking off; True: on; None: not said
    enabled: bool | None = None
    #: a budget was named (``budget`` None then means unlimited)
    budget_set: bool = False
    budget: int | None = None
    effort: str | None = None
    exclude: bool = False


def _bad(message: str, param: str) -> RequestError:
    return RequestError(message, param=param)


#: the largest budget a request may name (what vLLM's int32 token counters hold)
MAX_BUDGET = 2**31 - 1


def _int(value: Any, param: str, low: int) -> int:
    if type(value) is not int or not low <= value <= MAX_BUDGET:
        raise _bad(f"{param}: must be an integer from {low} to {MAX_BUDGET}, got {value!r}", param)
    return value


def _effort(value: Any, param: str, efforts: dict[str, int | None]) -> Ask:
    if not isinstance(value, str) or value not in EFFORTS:
        raise _bad(f"{param}: must be one of {', '.join(EFFORTS)}, got {value!r}", param)
    if value == "none":
        return Ask(param, enabled=False, effort=value)
    return Ask(param, enabled=True, budget_set=True, budget=efforts[value], effort=value)


def _unified(value: Any, efforts: dict[str, int | None]) -> Ask:
    if not isinstance(value, dict):
        raise _bad(
            "reasoning: must be an object {effort, max_tokens, exclude, enabled}", "reasoning"
        )
    unknown = sorted(set(value) - {"effort", "max_tokens", "exclude", "enabled", "summary"})
    if unknown:
        raise _bad(f"reasoning.{unknown[0]}: unknown field", f"reasoning.{unknown[0]}")
    effort, tokens, enabled = value.get("effort"), value.get("max_tokens"), value.get("enabled")
    if effort is not None and tokens is not None:
        raise _bad("reasoning: send effort or max_tokens, not both", "reasoning")
    exclude = value.get("exclude")
    if exclude is not None and not isinstance(exclude, bool):
        raise _bad(f"reasoning.exclude: must be a boolean, got {exclude!r}", "reasoning.exclude")
    if enabled is not None and not isinstance(enabled, bool):
        raise _bad(f"reasoning.enabled: must be a boolean, got {enabled!r}", "reasoning.enabled")
    if effort is not None:
        ask = _effort(effort, "reasoning.effort", efforts)
        ask.source = "reasoning"
    elif tokens is not None:
        ask = Ask("reasoning", True, True, _int(tokens, "reasoning.max_tokens", 0))
    elif enabled:
        ask = _effort("medium", "reasoning.enabled", efforts)  # OpenRouter: medium
        ask.source = "reasoning"
    else:
        ask = Ask("reasoning")
    if enabled is False:
        if ask.enabled:
            raise _bad("reasoning: enabled is false but an effort or budget is set", "reasoning")
        ask.enabled = False
    ask.exclude = exclude is True
    return ask


def _anthropic(value: Any) -> Ask:
    if not isinstance(value, dict):
        raise _bad("thinking: must be an object {type, budget_tokens}", "thinking")
    kind = value.get("type")
    exclude = value.get("display") == "omitted"
    if kind == "enabled":
        budget = _int(value.get("budget_tokens"), "thinking.budget_tokens", 0)
        return Ask("thinking", True, True, budget, exclude=exclude)
    if kind == "disabled":
        return Ask("thinking", False)
    if kind == "adaptive":
        return Ask("thinking", True, exclude=exclude)
    raise _bad(
        f"thinking.type: must be enabled, disabled or adaptive, got {kind!r}", "thinking.type"
    )


def read_asks(
    body: dict[str, Any], control: ReasoningControl, client_kwargs: Any = None
) -> list[Ask]:
    """Every reasoning ask of a request, checked (400 naming the field). ``body`` has the
    profile's defaults and overrides applied (a profile may set a default effort); the
    template switch counts as an ask only when the client sent it (``client_kwargs``)."""
    asks = []
    efforts = control.efforts
    if body.get("reasoning_effort") is not None:
        asks.append(_effort(body["reasoning_effort"], "reasoning_effort", efforts))
    if body.get("reasoning") is not None:
        asks.append(_unified(body["reasoning"], efforts))
    if body.get("thinking") is not None:
        asks.append(_anthropic(body["thinking"]))
    budget = body.get("thinking_token_budget")
    if budget is not None:
        value = _int(budget, "thinking_token_budget", -1)
        asks.append(Ask("thinking_token_budget", None, True, None if value == -1 else value))
    switch = control.off_switch
    if switch and isinstance(client_kwargs, dict) and isinstance(client_kwargs.get(switch), bool):
        asks.append(Ask(f"chat_template_kwargs.{switch}", client_kwargs[switch]))
    return asks


def merge_asks(asks: list[Ask]) -> Ask:
    """One ask from several that agree; a 400 naming the two that do not."""
    out = Ask("+".join(a.source for a in asks))
    on: Ask | None = None
    sized: Ask | None = None
    for a in asks:
        if a.enabled is not None:
            if on is not None and on.enabled != a.enabled:
                raise _bad(
                    f"conflicting reasoning controls: {on.source} turns thinking "
                    f"{'on' if on.enabled else 'off'}, {a.source} turns it "
                    f"{'on' if a.enabled else 'off'}",
                    a.source,
                )
            on = on or a
        if a.budget_set:
            if sized is not None and sized.budget != a.budget:
                raise _bad(
                    f"conflicting reasoning budgets: {sized.source} asks for "
                    f"{_tokens(sized.budget)}, {a.source} for {_tokens(a.budget)}",
                    a.source,
                )
            sized = sized or a
        out.exclude = out.exclude or a.exclude
        out.effort = out.effort or a.effort
    if on is not None:
        out.enabled = on.enabled
    if sized is not None:
        out.budget_set, out.budget = True, sized.budget
    if out.enabled is False and sized is not None and sized.budget != 0:
        raise _bad(
            f"conflicting reasoning controls: {on.source if on else ''} turns thinking off, "
            f"{sized.source} asks for {_tokens(sized.budget)}",
            sized.source,
        )
    return out


def _tokens(budget: int | None) -> str:
    return "an unlimited budget" if budget is None else f"a budget of {budget} tokens"


@dataclass(slots=True)
class Plan:
    """What the gateway decided for one request (module doc)."""

    ticket: Ticket
    body: dict[str, Any]
    #: the reasoning budget in force (None: unlimited)
    budget: int | None = None
    #: the template switch turned thinking off for this request
    thinking_off: bool = False
    #: the gateway enforces ``budget`` (budget forcing)
    force: bool = False
    #: the client's max tokens for the whole answer, when a non-stream first part is
    #: limited to the budget (budget forcing)
    answer_max: int | None = None
    #: max_tokens may be capped per backend (see module doc)
    cap: bool = True
    #: payload bytes per backend URL
    payloads: dict[str, bytes] = field(default_factory=dict)
    #: backends whose refusal already taught a shorter max_model_len
    relearned: set[str] = field(default_factory=set)

    @property
    def profile(self) -> Profile:
        return self.ticket.profile

    def release(self) -> None:
        """A backend answered: what was kept for other attempts can go (budget forcing
        still needs the body for its second request)."""
        self.payloads.clear()
        if not self.force:
            self.body = {}


class Control:
    """Builds a :class:`Plan` per request and the upstream bytes per backend; runs budget
    forcing's second request (:mod:`forcing`)."""

    def __init__(
        self,
        info: BackendInfo | None,
        upstream: UpstreamClient | None = None,
        pool: BackendPool | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.info = info
        self.upstream = upstream
        self.pool = pool
        registry = registry or CollectorRegistry()
        self.controls = Counter(
            "gateway_reasoning_controls",
            "Requests whose reasoning the gateway steered, by kind (budget_backend, "
            "budget_gateway, thinking_off, hidden)",
            ["model", "kind"],
            registry=registry,
        )
        self.forced = Counter(
            "gateway_reasoning_forced_stops",
            "Reasoning the gateway ended at its budget (budget forcing)",
            ["model"],
            registry=registry,
        )

    def plan(self, t: Ticket, body: dict[str, Any]) -> Plan:
        """``body`` (the upstream body, built) is edited in place; raises RequestError."""
        plan = Plan(t, body)
        client_max = next((t.body[k] for k in _MAX_KEYS if t.body.get(k) is not None), None)
        plan.cap = client_max is None or t.profile.max_tokens_policy == "clamp"
        if t.endpoint not in ("chat", "completions"):
            return plan  # other APIs (Responses) speak their own reasoning fields
        rules = t.profile.reasoning
        if rules is None:
            for key in DIALECTS:
                body.pop(key, None)  # a model that does not reason: nothing to steer
            return plan
        c = rules.control
        client_kwargs = t.body.get("chat_template_kwargs")
        asks = read_asks(body, c, client_kwargs)
        ask = merge_asks(asks) if asks else Ask("")
        for key in (*DIALECTS, "thinking_token_budget"):
            body.pop(key, None)
        kwargs = body.get("chat_template_kwargs")
        kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
        switch = c.off_switch if t.endpoint == "chat" else None
        budget = ask.budget if ask.budget_set else c.default_budget
        if switch and ask.enabled is not None:
            forced = t.profile.overrides.get("chat_template_kwargs")
            sent = isinstance(client_kwargs, dict) and switch in client_kwargs
            if not sent and not (isinstance(forced, dict) and switch in forced):
                kwargs[switch] = ask.enabled  # the client's ask beats the profile's default
        if kwargs:
            body["chat_template_kwargs"] = kwargs
        if switch and kwargs.get(switch) is False:
            plan.thinking_off = True  # the template closes an empty think block
            budget = None
        elif ask.enabled is False:
            budget = 0  # no switch (or the profile forces thinking on): end it at once
        profile = t.profile
        new_rules = rules
        if ask.exclude and rules.mode != "hide":
            new_rules = replace(new_rules, mode="hide")
        if plan.thinking_off:
            # the template closed an empty think block: the output is the answer
            new_rules = replace(new_rules, starts_in_reasoning=False)
            if OPEN in profile.assistant_prefix:
                _drop_prefix(body, profile.assistant_prefix)
                profile = replace(profile, assistant_prefix="")
        if new_rules is not rules or profile is not t.profile:
            profile = replace(profile, reasoning=new_rules)
            plan.ticket = replace(t, profile=profile)
        plan.budget = budget
        if budget is not None:
            self._room_for_answer(plan, c, client_max)
            if c.enforce == "backend":
                body["thinking_token_budget"] = budget
            else:
                self._forcing(plan, c)
        name = profile.name
        if budget is not None:
            self.controls.labels(name, f"budget_{c.enforce}").inc()
        if plan.thinking_off:
            self.controls.labels(name, "thinking_off").inc()
        if ask.exclude:
            self.controls.labels(name, "hidden").inc()
        return plan

    @staticmethod
    def _room_for_answer(plan: Plan, c: ReasoningControl, client_max: int | None) -> None:
        body, budget = plan.body, plan.budget
        assert budget is not None
        keys = [k for k in _MAX_KEYS if body.get(k) is not None]
        current = body[keys[-1]] if keys else None  # vLLM: max_completion_tokens wins
        if current is None or current > budget:
            return
        if client_max is not None and c.short_max_tokens == "reject":
            # the field that counts (vLLM: max_completion_tokens wins), with its own value
            key = next(k for k in reversed(_MAX_KEYS) if plan.ticket.body.get(k) is not None)
            asked = plan.ticket.body[key]
            raise _bad(
                f"{key} ({asked}) must be larger than the reasoning budget ({budget} tokens) "
                "to leave room for the answer: raise it or ask for less reasoning",
                key,
            )
        for k in keys:
            body[k] = budget + c.answer_room
        plan.cap = True  # the gateway's own value now

    @staticmethod
    def _forcing(plan: Plan, c: ReasoningControl) -> None:
        body = plan.body
        if plan.ticket.endpoint != "chat":
            raise _bad(
                "a reasoning budget for this model is enforced by the gateway, on "
                "/v1/chat/completions only",
                "thinking_token_budget",
            )
        if (body.get("n") or 1) != 1:
            raise _bad("n: a reasoning budget the gateway enforces needs n = 1 for this model", "n")
        plan.force = True
        if c.continuation == "completions":
            body["return_prompt_text"] = True  # the prompt the continuation extends
        if body.get("stream"):
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            opts["continuous_usage_stats"] = True  # token counts as they stream
            body["stream_options"] = opts
            return
        # non-stream: the first part ends at the budget; the rest is continued
        assert plan.budget is not None
        keys = [k for k in _MAX_KEYS if body.get(k) is not None]
        plan.answer_max = body[keys[-1]] if keys else None
        for k in keys:
            del body[k]
        body["max_tokens"] = max(1, plan.budget)

    # -- per backend -------------------------------------------------------------------------

    async def ready(self, plan: Plan) -> None:
        """Wait (at most :data:`MODELS_WAIT` s) for a first ``/v1/models`` answer from the
        model's backends that were never asked yet (a request right after start or reload);
        immediate otherwise."""
        if self.info is not None and plan.cap:
            await self.info.first_models(plan.profile.backends, MODELS_WAIT)

    def payload(self, plan: Plan, backend: Backend) -> bytes:
        """The upstream bytes for ``backend``: max_tokens (and a backend-enforced budget)
        within what it accepts."""
        cached = plan.payloads.get(backend.url)
        if cached is not None:
            return cached
        body = plan.body
        limit = self.max_model_len(plan, backend)
        if limit is not None and plan.cap:
            body = capped(body, limit, plan.profile)
        try:
            raw = orjson.dumps(body)
        except orjson.JSONEncodeError:  # orjson reads 1024 levels but writes only 255
            raise RequestError("The request body is nested too deeply.") from None
        plan.payloads[backend.url] = raw
        return raw

    def max_model_len(self, plan: Plan, backend: Backend) -> int | None:
        if self.info is None:
            return None
        return self.info.max_model_len(backend, plan.profile.upstream_model)

    async def after(
        self,
        plan: Plan,
        result: Opened | bytes,
        backend: Backend,
        owner: Owner,
        request_id: str,
        deadline: float,
    ) -> Opened | bytes:
        """What the client gets from a backend's answer: budget forcing (a stream that may
        continue with a second request, a non-stream answer completed by one), the
        thinking-off quirk made consistent."""
        if plan.force:
            force = await self._force(plan, backend, result)

            async def start(path: str, body: dict[str, Any]) -> ChunkSource:
                return await self._post(plan, backend, path, body, request_id)

            if isinstance(result, Opened):
                source = ForcingSource(result, force, start)
                owner.push(source.close)  # the owner's backstop; idempotent
                return source.opened()

            async def whole(path: str, body: dict[str, Any]) -> bytes:
                try:
                    async with asyncio.timeout_at(deadline):
                        resp = await self._post(plan, backend, path, body, request_id)
                        try:
                            limits = plan.ticket.snapshot.limits
                            return await resp.read_all(limits.max_upstream_body_bytes)
                        finally:
                            resp.close()
                except TimeoutError:
                    raise UpstreamTimeout("total", plan.profile.timeouts.total) from None

            return await continue_json(result, force, whole)
        if plan.thinking_off and isinstance(result, bytes):
            try:
                obj = orjson.loads(result)
            except orjson.JSONDecodeError:
                return result  # the handler refuses it
            if isinstance(obj, dict):
                fix_thinking_off(obj)
                return orjson.dumps(obj)
        return result

    async def _force(self, plan: Plan, backend: Backend, result: Opened | bytes) -> Force:
        profile = plan.profile
        rules = profile.reasoning
        assert rules is not None and plan.budget is not None
        body = plan.body
        limit = self.max_model_len(plan, backend)
        if limit is not None and plan.cap:
            body = capped(body, limit, profile)
        budget = plan.budget
        answer_max = plan.answer_max
        if isinstance(result, Opened):
            keys = [k for k in _MAX_KEYS if body.get(k) is not None]
            answer_max = body[keys[-1]] if keys else None
        elif answer_max is not None and limit is not None and plan.cap:
            answer_max = min(answer_max, limit)
        budget = fit_budget(budget, answer_max, rules.control.answer_room)
        opts = plan.ticket.body.get("stream_options")
        return Force(
            budget=budget,
            control=rules.control,
            rules=rules,
            assistant_prefix=profile.assistant_prefix,
            body=body,
            answer_max=answer_max,
            client_continuous=isinstance(opts, dict) and opts.get("continuous_usage_stats") is True,
            on_forced=self.forced.labels(profile.name).inc,
        )

    async def _post(
        self, plan: Plan, backend: Backend, path: str, body: dict[str, Any], request_id: str
    ) -> UpstreamResponse:
        """Budget forcing's second request, to the backend that has the first's prefix
        cached; it holds a lease of that backend."""
        assert self.upstream is not None and self.pool is not None
        limit = self.max_model_len(plan, backend)
        if limit is not None and plan.cap:
            body = capped(body, limit, plan.profile)
        return await self.upstream.post(
            backend,
            path,
            orjson.dumps(body),
            self.pool.lease(backend),
            connect_timeout=plan.profile.timeouts.connect,
            request_id=f"{request_id}-cont",
        )

    def relearn(self, plan: Plan, name: str, exc: UpstreamStatusError) -> bool:
        """The backend ``name`` refused a max_tokens the gateway may cap: learn its limit
        from the message; True when the request should be tried again (once per backend)."""
        backend = next((b for b in plan.profile.backends if b.name == name), None)
        if backend is None or exc.status != 400 or not plan.cap or backend.url in plan.relearned:
            return False
        m = _REFUSED_LEN.search(exc.message)
        if m is None or self.info is None:
            return False
        plan.relearned.add(backend.url)
        self.info.learn_max_model_len(backend, plan.profile.upstream_model, int(m.group(1)))
        plan.payloads.pop(backend.url, None)
        return True


def capped(body: dict[str, Any], limit: int, profile: Profile) -> dict[str, Any]:
    """``body`` with max_tokens (both spellings) at most ``limit``, and a
    ``thinking_token_budget`` kept ``answer_room`` below it."""
    edits: dict[str, Any] = {}
    top = None
    for key in _MAX_KEYS:
        value = body.get(key)
        if type(value) is int:
            top = min(value, limit)
            if value > limit:
                edits[key] = limit
    budget = body.get("thinking_token_budget")
    if type(budget) is int and budget > 0 and profile.reasoning is not None:
        fitted = fit_budget(budget, top, profile.reasoning.control.answer_room)
        if fitted != budget:
            edits["thinking_token_budget"] = fitted
    return {**body, **edits} if edits else body


def fit_budget(budget: int, max_tokens: int | None, room: int) -> int:
    """A budget that leaves the answer room within ``max_tokens`` (capped for a backend
    with a shorter context): ``room`` tokens, or half of them when there are fewer."""
    if max_tokens is None or budget < max_tokens:
        return budget
    return max_tokens - room if max_tokens > 2 * room else max_tokens // 2


def _drop_prefix(body: dict[str, Any], prefix: str) -> None:
    """Remove the gateway's own assistant prefix (it would reopen the thinking)."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and messages[-1].get("content") == prefix:
        body["messages"] = messages[:-1]
        body.pop("continue_final_message", None)
        body.pop("add_generation_prompt", None)


def fix_thinking_off(obj: dict[str, Any]) -> None:
    """vLLM's quirk with thinking off: a stream puts the answer in ``content``, a non-stream
    answer puts it all in ``reasoning`` (content null). The same result both ways."""
    for ch in obj.get("choices") or ():
        msg = ch.get("message") if isinstance(ch, dict) else None
        if not isinstance(msg, dict) or msg.get("content"):
            continue
        for key in ("reasoning", "reasoning_content"):
            text = msg.get(key)
            if isinstance(text, str) and text:
                msg["content"] = text
                msg.pop("reasoning", None)
                msg.pop("reasoning_content", None)
                break
