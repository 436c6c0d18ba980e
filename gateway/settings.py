"""Process settings: where to listen and which profile file to serve, from CLI or env."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: path of model_profiles.yaml (``GATEWAY_CONFIG``)
    config: str = "model_profiles.yaml"
    log_level: str = "info"
    #: upstream connection pool size for the whole process
    max_upstream_connections: int = 1000
    #: bearer token for /admin/* (``GATEWAY_ADMIN_TOKEN``); unset = admin routes are off
    admin_token: str | None = None
    #: client API keys (``GATEWAY_API_KEYS``, comma-separated); kept only as digests later
    api_keys: tuple[str, ...] = ()
    #: reload the profile file when it changes (``GATEWAY_WATCH=0`` turns it off)
    watch: bool = True

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env_names = {
            "host": "GATEWAY_HOST",
            "port": "GATEWAY_PORT",
            "config": "GATEWAY_CONFIG",
            "log_level": "GATEWAY_LOG_LEVEL",
            "admin_token": "GATEWAY_ADMIN_TOKEN",
            "api_keys": "GATEWAY_API_KEYS",
            "watch": "GATEWAY_WATCH",
        }
        values: dict[str, object] = {}
        for key, name in env_names.items():
            raw = os.environ.get(name)
            if raw is None or raw == "":
                continue
            if key == "port":
                values[key] = int(raw)
            elif key == "watch":
                values[key] = raw.lower() not in ("0", "false", "no", "off")
            elif key == "api_keys":
                values[key] = tuple(k.strip() for k in raw.split(",") if k.strip())
            else:
                values[key] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
