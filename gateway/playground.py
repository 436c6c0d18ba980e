"""The playground: a chain-of-thought chat page served by the gateway itself (issue #16).

:func:`add_playground` registers, unless ``Settings.playground`` is off:

- ``GET /``: a small index page linking to the playground and the API;
- ``GET /playground``: the page (``web/index.html``);
- ``GET /playground/models``: each public model the caller's key may use, with the sampling
  values its profile applies (the page shows them instead of guessing);
- ``GET /playground/<asset>``: the page's scripts, styles, fonts and licences, all from
  ``gateway/web/`` (hand-written code plus vendored npm builds; see ``web/vendor/README.md``).

The page talks to the real ``/v1/models`` and ``/v1/chat/completions`` like any client; it
makes no request anywhere else, and the Content-Security-Policy below holds it to that: no
inline script or style, no ``eval``, nothing from another origin.

Assets are read once, on first use, into memory (about 0.7 MB): a name is served only if it
is a file that was found under ``web/`` then, so no request path reaches the file system.
"""

from __future__ import annotations

import hashlib
import html
import mimetypes
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .errors import GatewayError, NotFound
from .profiles import Profile, SamplingSpec
from .protocol import render_error
from .settings import Settings

WEB_DIR = Path(__file__).with_name("web")

#: the page's policy: its own scripts, styles and fonts; fetch only to this origin
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "font-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}
_PAGE_HEADERS = {**_COMMON_HEADERS, "content-security-policy": CSP, "x-frame-options": "DENY"}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".woff2": "font/woff2",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE files
}
#: the sampling fields the page can show (the profile's named sampling fields)
SAMPLING_FIELDS = tuple(SamplingSpec.model_fields)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


class Assets:
    """The files under ``web/``, loaded on first use; names are ``/``-separated relative paths."""

    def __init__(self, root: Path = WEB_DIR) -> None:
        self.root = root
        self._files: dict[str, Asset] | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> Asset | None:
        if self._files is None:
            with self._lock:
                if self._files is None:
                    self._files = self._load()
        return self._files.get(name)

    def _load(self) -> dict[str, Asset]:
        files = {}
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            media = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
            if media is None:
                continue  # nothing we would know how to label: not served
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[rel.as_posix()] = Asset(body, media, etag)
        if "index.html" not in files:
            raise RuntimeError(f"playground assets are missing from {self.root}")
        return files


def effective_sampling(profile: Profile) -> dict[str, Any]:
    """What a request that sends no sampling fields gets from the profile: ``defaults``,
    ``max_tokens`` capped by ``max_tokens_limit`` (which also fills it when the client sends
    none), then ``overrides``."""
    out = {k: v for k, v in profile.defaults.items() if k in SAMPLING_FIELDS}
    limit = profile.max_tokens_limit
    if limit is not None:
        out["max_tokens"] = limit  # the limit is applied before defaults (build_upstream_body)
    out.update({k: v for k, v in profile.overrides.items() if k in SAMPLING_FIELDS})
    return out


def describe_model(profile: Profile) -> dict[str, Any]:
    """One model as the page needs it."""
    return {
        "id": profile.name,
        "variant": profile.variant,
        "effective": effective_sampling(profile),
        "defaults": {k: v for k, v in profile.defaults.items() if k in SAMPLING_FIELDS},
        #: fields the profile sets whatever the client sends
        "fixed": {k: v for k, v in profile.overrides.items() if k in SAMPLING_FIELDS},
        "max_tokens_limit": profile.max_tokens_limit,
        "max_tokens_policy": profile.max_tokens_policy,
        "reasoning": profile.reasoning is not None and profile.reasoning.mode == "split",
        "timeouts": {
            "first_token": profile.timeouts.first_token,
            "idle": profile.timeouts.idle,
            "total": profile.timeouts.total,
        },
    }


def error_response(exc: Exception) -> Response:
    """The gateway's error answer, rendered here rather than raised: a raised exception
    reaches Starlette's outermost handler, which answers it but also logs it as a crash."""
    status, body, headers = render_error(exc)
    extra = {k.decode(): v.decode() for k, v in headers}
    return Response(body, status, extra, media_type="application/json")


def not_found(request: Request) -> Response:
    return error_response(NotFound(f"Unknown path: GET {request.url.path}"))


def _index_html(playground: str) -> bytes:
    link = html.escape(playground, quote=True)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="playground/app.css">
<title>gateway</title></head>
<body class="index"><main>
<h1>gateway</h1>
<p>An OpenAI-compatible gateway for reasoning models.</p>
<ul>
<li><a href="{link}">Playground</a>: chat with a model and watch it think</li>
<li><a href="v1/models">/v1/models</a>: the models served (OpenAI API at <code>/v1</code>)</li>
<li><a href="health">/health</a> · <a href="ready">/ready</a> · <a href="metrics">/metrics</a></li>
</ul>
</main></body></html>
""".encode()


#: the public model names a request's caller may use (``/v1/models``'s own rule: its key,
#: its limits); raises the gateway's error for a caller it refuses
VisibleModels = Callable[[Request], Awaitable[list[str]]]


def add_playground(
    app: Starlette,
    settings: Settings,
    visible_models: VisibleModels,
    assets: Assets | None = None,
) -> None:
    """Register the playground's routes on ``app`` (nothing when the setting is off).

    ``/playground/models`` lists what ``visible_models`` allows (so it answers exactly the
    keys ``/v1/models`` answers, with the same models) and reads their profiles from the
    snapshot the gateway serves, ``app.state.gateway.profiles``."""
    if not settings.playground:
        return
    files = assets or Assets()

    def asset_response(request: Request, name: str, headers: dict[str, str]) -> Response:
        asset = files.get(name)
        if asset is None:
            return not_found(request)
        out = {**headers, "etag": asset.etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=out)
        return Response(asset.body, headers=out, media_type=asset.media_type)

    async def index(request: Request) -> Response:
        return Response(_index_html("playground"), headers=_PAGE_HEADERS, media_type="text/html")

    async def page(request: Request) -> Response:
        return asset_response(request, "index.html", _PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name: str = request.path_params["name"]
        if name == "":  # /playground/ -> the page
            return RedirectResponse("../playground", status_code=308)
        return asset_response(request, name, _COMMON_HEADERS)

    async def models(request: Request) -> Response:
        try:
            names = await visible_models(request)
        except GatewayError as exc:  # no key, a wrong one, too many failures: its answer
            return error_response(exc)
        snapshot = request.app.state.gateway.profiles
        data = [describe_model(p) for name in names if (p := snapshot.get(name)) is not None]
        body = {"object": "list", "profile_version": snapshot.version, "data": data}
        headers = {**_COMMON_HEADERS, "cache-control": "no-store"}
        return Response(orjson.dumps(body), headers=headers, media_type="application/json")

    app.add_route("/", index, methods=["GET"])
    app.add_route("/playground", page, methods=["GET"])
    app.add_route("/playground/models", models, methods=["GET"])
    app.add_route("/playground/{name:path}", asset, methods=["GET"])
