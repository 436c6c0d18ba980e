"""The field policy: which top-level request fields, and which media, a client may send.

vLLM accepts many fields beyond OpenAI's; most are sampling knobs, but some let a caller
reach into the server: replace the chat template, pick the scheduling priority, steer
disaggregated serving, feed raw tensors, or make vLLM fetch URLs. A profile's
``request_policy`` decides, per model (pure functions here, applied at admission by
:func:`transform.check_request`):

* ``deny`` (default :data:`DEFAULT_DENIED_FIELDS`, each with its reason below) and optionally
  ``allow`` (only these fields, plus the request's own: :data:`ALWAYS_ALLOWED`);
* ``on_denied``: ``reject`` answers 400 naming the field (the default: a client that asked
  for something learns it did not happen), ``drop`` removes it silently;
* ``remote_media``: content parts may carry ``http(s)`` URLs, which vLLM would fetch
  (server-side request forgery, slow or huge downloads); default off: only ``data:`` URLs.
  Other schemes (``file:``...) are always refused;
* ``embeddings``: ``prompt_embeds`` and ``*_embeds`` content parts (tensors vLLM
  deserialises; CVE-2025-62164 was memory corruption that way); default off.

A field sent as ``null`` counts as not sent. The profile's own ``defaults`` and
``overrides`` are not subject to the policy; ``overrides: {field: null}`` removes a field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import RequestError

#: refused by default, and why (vLLM 0.32's chat and completion request models)
DENIED_FIELD_REASONS: dict[str, str] = {
    "chat_template": "a client-supplied Jinja template replaces the model's own (and the "
    "profile's prompt rules)",
    "mm_processor_kwargs": "HF processor arguments (image resolution, frame counts) that can "
    "multiply the prompt's size and memory",
    "media_io_kwargs": "media loader arguments (e.g. how many video frames to decode)",
    "logits_processors": "older vLLM loads logits-processor classes by name",
    "kv_transfer_params": "disaggregated serving internals (where KV blocks come from)",
    "ec_transfer_params": "encoder-cache disaggregation internals",
    "vllm_xargs": "arguments for server-side extensions",
    "request_id": "vLLM's own request id: a chosen one can collide with another request "
    "(the gateway sends X-Request-Id)",
    "priority": "the scheduling priority: a client could jump the queue (or fail every "
    "request on a server without priority scheduling)",
    "return_prompt_text": "returns the rendered prompt, template text included",
    # the Responses API's (vLLM 0.32's ResponsesRequest)
    "enable_response_messages": "returns the rendered prompt and the raw output tokens, "
    "template text included",
    "previous_input_messages": "raw (harmony) messages that bypass the input items and the "
    "profile's prompt rules",
}
DEFAULT_DENIED_FIELDS = frozenset(DENIED_FIELD_REASONS)
#: the request's own fields: never denied, and a profile's defaults/overrides cannot set them
#: (the gateway reads them from the client and must agree with what goes upstream)
ALWAYS_ALLOWED = frozenset(
    {"model", "messages", "prompt", "stream", "stream_options", "input", "instructions"}
)
GATEWAY_OWNED_FIELDS = ALWAYS_ALLOWED | {"n", "previous_response_id"}
#: content-part types (and keys of untyped parts) that carry a URL vLLM fetches
_URL_PARTS = {
    "image_url": "image_url",
    "input_image": "image_url",
    "input_file": "file_url",
    "audio_url": "audio_url",
    "video_url": "video_url",
}
_EMBED_PARTS = frozenset(
    {"image_embeds", "audio_embeds", "video_embeds", "prompt_embeds", "image_pil"}
)


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """A resolved ``request_policy`` (module doc)."""

    deny: tuple[str, ...] = tuple(sorted(DEFAULT_DENIED_FIELDS))
    #: ``None``: every field not denied is accepted
    allow: tuple[str, ...] | None = None
    on_denied: Literal["reject", "drop"] = "reject"
    remote_media: bool = False
    embeddings: bool = False

    def denies(self, name: str) -> bool:
        if name in ALWAYS_ALLOWED:
            return False
        if name == "prompt_embeds" and not self.embeddings:
            return True
        if self.allow is not None and name not in self.allow:
            return True
        return name in self.deny


DEFAULT_POLICY = FieldPolicy()


def apply_field_policy(body: dict[str, Any], policy: FieldPolicy, model: str) -> None:
    """Refuse (:class:`RequestError`, 400, naming the field) or drop denied fields of
    ``body`` in place, then check the media in its messages."""
    denied = [k for k, v in body.items() if v is not None and policy.denies(k)]
    if denied and policy.on_denied == "reject":
        name = denied[0]
        raise RequestError(f"{name}: this field is not accepted for model `{model}`", param=name)
    for name in denied:
        del body[name]
    for name in [k for k, v in body.items() if v is None and policy.denies(k)]:
        del body[name]  # null: as if not sent, and nothing of it goes upstream
    for key in ("messages", "input"):  # chat messages, Responses input items
        messages = body.get(key)
        if isinstance(messages, list):
            check_media(messages, policy, key)


def check_media(messages: Iterable[Any], policy: FieldPolicy, field: str = "messages") -> None:
    """Content parts: media URLs must be ``data:`` (or ``http(s)`` with ``remote_media``);
    embedding parts need ``embeddings``."""
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            where = f"{field}.{i}.content.{j}"
            kind = part.get("type")
            if not policy.embeddings and (
                kind in _EMBED_PARTS or (kind is None and _EMBED_PARTS & part.keys())
            ):
                raise RequestError(
                    f"{where}: embedding inputs are not accepted for this model",
                    param=f"{where}.type",
                )
            key = _URL_PARTS.get(kind) if isinstance(kind, str) else None
            if key is None and kind is None and "image_url" in part:
                key = "image_url"
            if key is None or key not in part:
                continue
            url = part[key]
            if isinstance(url, dict):
                url, key = url.get("url"), f"{key}.url"
            _check_url(url, f"{where}.{key}", policy)


def _check_url(url: Any, where: str, policy: FieldPolicy) -> None:
    if not isinstance(url, str):
        raise RequestError(f"{where}: must be a URL string", param=where)
    try:
        scheme = urlsplit(url).scheme.lower()  # as vLLM parses it (leading blanks dropped)
    except ValueError:
        scheme = ""
    if scheme == "data":
        return
    if scheme in ("http", "https"):
        if policy.remote_media:
            return
        raise RequestError(
            f"{where}: remote media URLs are not accepted for this model; send the media "
            "inline as a data: URL",
            param=where,
        )
    raise RequestError(
        f"{where}: only data: URLs{' and http(s) URLs' if policy.remote_media else ''} are "
        "accepted",
        param=where,
    )
