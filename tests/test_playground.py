"""The playground's server side: routes, headers, the off switch, the profile values it
reports, and that its files ship in the package. (The page itself: tests/e2e/test_playground.py.)"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import gateway
from gateway.app import create_app
from gateway.playground import CSP, WEB_DIR, effective_sampling
from gateway.profiles import parse_profiles
from gateway.settings import Settings
from tests.helpers import GatewayServer, run_gateway

ROOT = Path(__file__).resolve().parents[1]

PROFILES = """
models:
  r1:
    backends: [{url: "http://127.0.0.1:9"}]
    defaults: {temperature: 0.6, top_p: 0.95, max_tokens: 2048, sim: {token_delay: 1}}
    max_tokens_limit: 8192
    reasoning: {starts_in_reasoning: true}
    variants:
      cold: {overrides: {temperature: 0.1, top_k: 5}}
  plain:
    backends: [{url: "http://127.0.0.1:9"}]
"""


def client(settings: Settings) -> httpx.AsyncClient:
    """The app in process: enough for routes that need no lifespan (the static ones)."""
    app = create_app(settings, parse_profiles(PROFILES, "<test>"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture(scope="module")
def keyed() -> Iterator[GatewayServer]:
    with run_gateway(PROFILES, api_keys=("pg-key",)) as gw:
        yield gw


async def test_page_has_a_strict_policy_and_links_from_the_index() -> None:
    async with client(Settings()) as c:
        page = await c.get("/playground")
        index = await c.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert csp == CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    # no inline script or style: every <script> has a src, no style= attribute, no http(s) URL
    html = page.text
    assert html.count("<script") == html.count("<script src=")
    assert "style=" not in html and "<style" not in html
    assert "http://" not in html and "https://" not in html
    assert index.status_code == 200 and 'href="playground"' in index.text
    assert index.headers["content-security-policy"] == CSP


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/playground/app.js", "text/javascript; charset=utf-8"),
        ("/playground/app.css", "text/css; charset=utf-8"),
        ("/playground/vendor/katex/fonts/KaTeX_Main-Regular.woff2", "font/woff2"),
        ("/playground/vendor/katex/LICENSE", "text/plain; charset=utf-8"),
    ],
)
async def test_assets_are_served_with_their_type_and_revalidated(path: str, media: str) -> None:
    async with client(Settings()) as c:
        r = await c.get(path)
        assert r.status_code == 200
        assert r.headers["content-type"] == media
        assert r.headers["x-content-type-options"] == "nosniff"
        again = await c.get(path, headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/playground/nope.js",
        "/playground/../gateway/app.py",
        "/playground/%2e%2e/playground.py",
        "/playground/..%2fplayground.py",
        "/playground/vendor",
        "/playground/vendor/",
        "/playground//app.js",
        "/playground/APP.JS",
        "/playground/app.js/",
    ],
)
async def test_only_known_asset_names_are_served(path: str) -> None:
    async with client(Settings()) as c:
        r = await c.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_trailing_slash_leads_to_the_page() -> None:
    async with client(Settings()) as c:
        r = await c.get("/playground/")
    assert r.status_code == 308
    assert r.headers["location"] == "../playground"


@pytest.mark.parametrize("path", ["/", "/playground", "/playground/app.js", "/playground/models"])
async def test_the_setting_turns_every_route_off(path: str) -> None:
    async with client(Settings(playground=False)) as c:
        r = await c.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_the_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PLAYGROUND", "0")
    assert Settings.from_env().playground is False
    monkeypatch.setenv("GATEWAY_PLAYGROUND", "1")
    assert Settings.from_env().playground is True
    monkeypatch.delenv("GATEWAY_PLAYGROUND")
    assert Settings.from_env().playground is True


def test_effective_sampling_follows_the_request_path() -> None:
    """defaults, then max_tokens_limit (it fills max_tokens before defaults do), then
    overrides; fields that are not sampling fields (``sim``) stay out."""
    ps = parse_profiles(PROFILES, "<test>")
    assert effective_sampling(ps.models["r1"]) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 8192,
    }
    assert effective_sampling(ps.models["r1:cold"]) == {
        "temperature": 0.1,
        "top_p": 0.95,
        "max_tokens": 8192,
        "top_k": 5,
    }
    assert effective_sampling(ps.models["plain"]) == {}


def test_models_route_needs_the_key_and_describes_each_profile(keyed: GatewayServer) -> None:
    r = httpx.get(keyed.url + "/playground/models")
    assert r.status_code == 401
    assert "API key" in r.json()["error"]["message"]
    r = httpx.get(keyed.url + "/playground/models", headers={"Authorization": "Bearer pg-key"})
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    data = {m["id"]: m for m in r.json()["data"]}
    listed = httpx.get(keyed.base_url + "/models", headers={"Authorization": "Bearer pg-key"})
    assert set(data) == {m["id"] for m in listed.json()["data"]} == {"r1", "r1:cold", "plain"}
    assert data["r1:cold"]["fixed"] == {"temperature": 0.1, "top_k": 5}
    assert data["r1:cold"]["variant"] == "cold"
    assert data["r1"]["effective"]["max_tokens"] == 8192
    assert data["r1"]["max_tokens_limit"] == 8192
    assert data["r1"]["reasoning"] is True and data["plain"]["reasoning"] is False
    assert "sim" not in data["r1"]["defaults"]


def test_every_page_file_is_package_data() -> None:
    """A non-editable install (the Docker image) gets what the page loads: every file under
    gateway/web matches a [tool.setuptools.package-data] pattern."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["gateway"]
    package = Path(gateway.__file__).parent
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    present = {p for p in WEB_DIR.rglob("*") if p.is_file()}
    assert present, "no playground files found"
    assert present - shipped == set()
    for name in ("index.html", "app.js", "render.js", "app.css"):
        assert (WEB_DIR / name).is_file()
    # every vendored library ships with its licence
    for lib in (WEB_DIR / "vendor").iterdir():
        if lib.is_dir():
            assert any(p.name.startswith("LICENSE") for p in lib.iterdir()), lib
