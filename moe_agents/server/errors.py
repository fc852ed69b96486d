"""Errors in OpenAI's envelope, with the HTTP status the official clients map correctly.

=========================  ======  ==========================  ===========================================
error                      status  ``type`` / ``code``          retry
=========================  ======  ==========================  ===========================================
``InvalidInput``, bad body  400    invalid_request_error        no
``NoCapableExpert``         400    invalid_request_error /      no
                                   ``no_capable_expert``
missing or wrong API key    401    authentication_error /       no
                                   ``invalid_api_key``
unknown model / result id   404    not_found_error              no
body too large              413    invalid_request_error        no
``Overloaded``              429    rate_limit_error /           ``x-should-retry: true``, ``Retry-After``
                                   ``overloaded``
``BudgetExhausted``         429    insufficient_quota /         ``x-should-retry: false`` (waiting
                                   ``budget_exhausted``         does not refill a budget)
``ExpertsFailed``, other    502    api_error / ``experts_       ``x-should-retry: false`` (experts were
``RunError``                       failed``                     already retried and fallen back)
``DeadlineExceeded``        504    timeout / ``deadline_        ``x-should-retry: false``
                                   exceeded``
not ready / shutting down   503    service_unavailable          ``x-should-retry: true``, ``Retry-After``
``BackendUnavailable``      503    service_unavailable /        ``x-should-retry: false``, ``Retry-After``:
                                   ``cooling_down``             seconds until a breaker lets a call through
anything else               500    server_error                 no; the message names the type only
=========================  ======  ==========================  ===========================================

A response never carries a traceback: unexpected errors are logged server-side and answered with
their type only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import (
    BackendUnavailable,
    BudgetExhausted,
    DeadlineExceeded,
    ExpertsFailed,
    InvalidInput,
    MoEError,
    NoCapableExpert,
    Overloaded,
    RunError,
    UnknownResult,
)
from ..logging import get_logger

__all__ = ["APIError", "from_exception"]

log = get_logger(__name__)

RETRY_AFTER_S = 1


@dataclass(slots=True)
class APIError(Exception):
    """An error response: status, OpenAI's envelope fields and extra headers."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def bad_request(cls, message: str, *, param: str | None = None, code: str | None = None) -> APIError:
        return cls(400, message, "invalid_request_error", code, param)

    @classmethod
    def not_found(cls, message: str, *, code: str, param: str | None = None) -> APIError:
        return cls(404, message, "not_found_error", code, param)

    @classmethod
    def unavailable(cls, message: str) -> APIError:
        return cls(503, message, "service_unavailable", "not_ready", headers=_retry(True))


def _retry(should: bool) -> dict[str, str]:
    headers = {"x-should-retry": "true" if should else "false"}
    if should:
        headers["retry-after"] = str(RETRY_AFTER_S)
    return headers


def from_exception(exc: BaseException) -> APIError:
    """The response for an exception raised while answering (see the module docstring)."""
    if isinstance(exc, APIError):
        return exc
    message = str(exc)
    if isinstance(exc, UnknownResult):
        return APIError.not_found(message, code="unknown_result", param="id")
    if isinstance(exc, InvalidInput):
        return APIError.bad_request(message)
    if isinstance(exc, NoCapableExpert):
        return APIError.bad_request(message, code="no_capable_expert")
    if isinstance(exc, Overloaded):
        return APIError(429, message, "rate_limit_error", "overloaded", headers=_retry(True))
    if isinstance(exc, BudgetExhausted):
        return APIError(429, message, "insufficient_quota", "budget_exhausted", headers=_retry(False))
    if isinstance(exc, BackendUnavailable):
        wait = max(1, math.ceil(exc.recovers_at - time.monotonic()))
        headers = {"x-should-retry": "false", "retry-after": str(wait)}
        return APIError(503, message, "service_unavailable", "cooling_down", headers=headers)
    if isinstance(exc, DeadlineExceeded):
        return APIError(504, message, "timeout", "deadline_exceeded", headers=_retry(False))
    if isinstance(exc, ExpertsFailed):
        each = "; ".join(f"{name}: {error}" for name, error in exc.errors.items())
        return APIError(502, f"{exc.message}: {each}", "api_error", "experts_failed", headers=_retry(False))
    if isinstance(exc, RunError | MoEError):
        return APIError(502, message, "api_error", type(exc).__name__, headers=_retry(False))
    log.error("server.unexpected_error", error_type=type(exc).__name__, error=message, exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__})", "server_error", "internal_error")
