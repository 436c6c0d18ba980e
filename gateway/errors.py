"""The gateway's exception tree; every error maps to one OpenAI-style response.

    GatewayError                      status, type, code, param
    +-- RequestError                  400: the client's request is invalid
    |   +-- ModelNotFound             404: no profile for the requested model
    |   +-- NotFound                  404: no such path
    |   +-- ResponseNotFound          404: no stored response by that id (or not the key's)
    |   +-- MethodNotAllowed          405: the path exists, not for this method
    |   +-- RequestTimeout            408: the body did not arrive within limits.body_timeout
    |   +-- RequestTooLarge           413: body over limits.max_body_bytes
    +-- AuthError                     401: missing or wrong client API key
    +-- AdminAuthError                401: missing or wrong admin token
    +-- MetricsAuthError              401: missing or wrong /metrics token
    +-- TooManyRequests               429: concurrency cap or rate limit (.retry_after)
    +-- ServiceUnavailable            503: the gateway is shutting down
    |   +-- GatewayOverloaded         503: its upstream pool or file descriptors ran out
    +-- UpstreamError                 anything the backend did
        +-- UpstreamUnavailable       502: connect refused/reset before a response
        +-- UpstreamDisconnected      502: the connection broke while reading the body
        +-- UpstreamStatusError       the backend answered 4xx/5xx: its OpenAI error fields
        +-- UpstreamTimeout           504 (before a response) / stream end; .phase names it
        +-- UpstreamProtocolError     502: the backend sent something we cannot read
        +-- UpstreamAborted           502: vLLM aborted the request (partial answer)

    ProfileError                      profile file invalid (load/reload); never an HTTP answer
    ClientDisconnected                the client left; nobody to answer

aiohttp's exceptions become these in ``upstream.py`` only (one table); one function,
:func:`protocol.render_error`, turns any exception into the HTTP answer.
"""

from __future__ import annotations

from typing import Literal

TimeoutPhase = Literal["connect", "first_token", "idle", "total"]


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose."""

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


class NotFound(RequestError):
    status = 404
    code = "not_found"


class ResponseNotFound(RequestError):
    """As vLLM words it, for any id the gateway cannot place: unknown, not minted by a
    gateway with this key, its backend or model gone, or a model the key may not use."""

    status = 404
    code = "response_not_found"

    def __init__(self, response_id: str) -> None:
        shown = response_id if len(response_id) <= 256 else response_id[:256] + "..."
        super().__init__(f"Response with id '{shown}' not found.", param="response_id")


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class RequestTimeout(RequestError):
    status = 408
    code = "body_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body did not arrive within {seconds:g}s.")


class RequestTooLarge(RequestError):
    status = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body larger than {limit} bytes.")


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminAuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_admin_token"


class MetricsAuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_metrics_token"


class TooManyRequests(GatewayError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, code: str, retry_after: int, limit: str = "rate") -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = max(1, retry_after)
        #: which limit refused it (a metric label): max_in_flight, key_max_in_flight, ...
        self.limit = limit


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "server_shutting_down"
    limit = "shutdown"


class GatewayOverloaded(ServiceUnavailable):
    """A resource of the gateway itself ran out (its upstream connection pool, file
    descriptors): a clear 503 at once, never a silent queue, and never the backend's fault."""

    code = "gateway_overloaded"
    retry_after = 1

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamDisconnected(UpstreamError):
    code = "upstream_disconnect"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamAborted(UpstreamError):
    code = "upstream_abort"


class UpstreamStatusError(UpstreamError):
    """The backend answered with an error status. Only the OpenAI error fields it sent are
    kept (never its raw body, which could echo what it was sent)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.type = type_ or ("invalid_request_error" if status < 500 else "upstream_error")
        self.upstream_code = code

    @property
    def client_error(self) -> bool:
        """The backend judged the request itself (another backend would agree)."""
        return self.status < 500


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"

    def __init__(self, phase: TimeoutPhase, seconds: float) -> None:
        super().__init__(f"upstream {phase.replace('_', ' ')} timeout after {seconds:g}s")
        self.phase: TimeoutPhase = phase
        self.seconds = seconds
        self.code = f"{phase}_timeout"


class ProfileError(Exception):
    """The profile file is invalid; ``errors`` lists one ``key.path: problem`` per entry."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.message = "; ".join(errors)
        super().__init__(self.message)


class ClientDisconnected(Exception):
    """The client went away before its answer started; there is nobody to answer."""
