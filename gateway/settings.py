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

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env_names = {
            "host": "GATEWAY_HOST",
            "port": "GATEWAY_PORT",
            "config": "GATEWAY_CONFIG",
            "log_level": "GATEWAY_LOG_LEVEL",
        }
        values: dict[str, object] = {}
        for key, name in env_names.items():
            if name in os.environ:
                values[key] = int(os.environ[name]) if key == "port" else os.environ[name]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
