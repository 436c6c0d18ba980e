"""Process settings: where to listen, which profile file to serve, and the HTTP server's own
limits, from CLI or environment (``GATEWAY_<FIELD>``, e.g. ``GATEWAY_HEADER_TIMEOUT=10``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: path of model_profiles.yaml (``GATEWAY_CONFIG``)
    config: str = "model_profiles.yaml"
    log_level: str = "info"
    #: upstream connection pool size for the whole process; 0 = unbounded (the in-flight cap
    #: ``limits.max_in_flight`` bounds it instead, so a request never queues silently)
    max_upstream_connections: int = 0
    #: bearer token for /admin/* (``GATEWAY_ADMIN_TOKEN``); unset = admin routes are off
    admin_token: str | None = None
    #: bearer token for /metrics (``GATEWAY_METRICS_TOKEN``); unset = /metrics is open
    metrics_token: str | None = None
    #: client API keys (``GATEWAY_API_KEYS``, comma-separated); kept only as digests later
    api_keys: tuple[str, ...] = ()
    #: reload the profile file when it changes (``GATEWAY_WATCH=0`` turns it off)
    watch: bool = True
    #: request line + headers larger than this: 431 and the connection is closed
    max_header_bytes: int = 32 * 1024
    #: more header lines than this: 431
    max_headers: int = 100
    #: seconds a connection may take to send its request line and headers: then 408, closed
    header_timeout: float = 10.0
    #: seconds an idle keep-alive connection is kept open
    keepalive_timeout: float = 5.0
    #: seconds requests in flight get to finish after SIGTERM; then streams are ended with a
    #: final event and [DONE], and requests that have not started answering get 503
    shutdown_grace: float = 5.0
    #: addresses of proxies whose X-Forwarded-For / -Proto are trusted (comma-separated,
    #: e.g. "10.0.0.0/8"); empty: none, the peer address is the client's address
    forwarded_allow_ips: str = ""
    #: browser origins allowed to call the API (comma-separated, or "*"); empty: CORS off
    cors_origins: tuple[str, ...] = ()
    #: also accept the key as an Azure-style ``api-key`` header (not both headers at once)
    api_key_header: bool = False
    #: serve the chat page at /playground and the index at / (``GATEWAY_PLAYGROUND=0`` turns
    #: both off: 404, like any unknown path)
    playground: bool = True
    #: key of the tag that stored response ids carry to name their backend (#15); replicas
    #: that share it resolve each other's ids. Unset: a public key (the tag then names no
    #: address, but can confirm a guessed one)
    response_id_key: str | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f"GATEWAY_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _parse(f.name, f.type, raw)
            except ValueError:
                raise SystemExit(
                    f"gateway: GATEWAY_{f.name.upper()}={raw!r} is not a valid {f.type}"
                ) from None
        for name in ("admin_token", "metrics_token", "response_id_key"):
            value = values.get(name)
            if isinstance(value, str) and not value.strip():
                raise SystemExit(f"gateway: GATEWAY_{name.upper()} is set but blank")
        if os.environ.get("GATEWAY_API_KEYS") is not None and not values.get("api_keys"):
            # a blank or ",," list would silently serve everyone
            raise SystemExit("gateway: GATEWAY_API_KEYS is set but holds no key")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, type_: object, raw: str) -> object:
    kind = str(type_)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        return raw.lower() not in ("0", "false", "no", "off")
    if kind.startswith("tuple"):
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    return raw
