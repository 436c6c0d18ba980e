"""The gateway's exception tree; every error maps to one OpenAI-style response.

    GatewayError                      status, type, code, param
    +-- RequestError                  400: the client's request is invalid
    |   +-- ModelNotFound             404: no profile for the requested model
    |   +-- RequestTooLarge           413: body over limits.max_body_bytes
    +-- AuthError                     401: missing or wrong client API key
    +-- AdminAuthError                401: missing or wrong admin token
    +-- TooManyRequests               429: concurrency cap or rate limit (.retry_after)
    +-- ProfileError                  profile file invalid (load/reload), never sent to clients
    +-- UpstreamError                 anything the backend did
        +-- UpstreamUnavailable       502: connect refused/reset before a response
        +-- UpstreamDisconnected      the connection broke while reading the body
        +-- UpstreamStatusError       the backend answered 4xx/5xx: passed on with its body
        +-- UpstreamTimeout           504 (before a response) / stream end; .phase names it
        +-- UpstreamProtocolError     502: the backend sent something we cannot read

Client errors (aiohttp) become these in ``upstream.py`` only; ``app.py`` maps them to
HTTP responses in one place.
"""

from __future__ import annotations

from typing import Literal

TimeoutPhase = Literal["connect", "first_token", "idle", "total"]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class RequestTooLarge(RequestError):
    status = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body larger than {limit} bytes.")


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class TooManyRequests(GatewayError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = max(1, retry_after)


class AdminAuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_admin_token"


class ProfileError(GatewayError):
    """The profile file is invalid; ``errors`` lists one ``key.path: problem`` per entry."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamDisconnected(UpstreamError):
    code = "upstream_disconnected"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamStatusError(UpstreamError):
    """The backend answered with an error status; ``body`` is what it sent."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"

    def __init__(self, phase: TimeoutPhase, seconds: float) -> None:
        super().__init__(f"upstream {phase.replace('_', ' ')} timeout after {seconds:g}s")
        self.phase: TimeoutPhase = phase
        self.seconds = seconds
        self.code = f"{phase}_timeout"
