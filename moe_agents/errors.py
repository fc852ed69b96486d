"""Errors raised by moe-agents.

One root, two families::

    MoEError
    ├── ConfigError            you configured it wrong (file, line, key path)
    ├── InvalidInput           a query or feedback value that cannot be used (also a ValueError)
    ├── UnknownResult          feedback for a result id the pipeline does not know (also a KeyError)
    └── RunError               it failed while running
        ├── BackendError           a model call failed (backend, expert, retryable)
        │   ├── BackendTimeout     the call ran past its deadline
        │   └── BackendUnavailable its circuit breaker is open (recovers_at)
        ├── Overloaded             every request slot is busy and the queue is full: try later
        ├── BudgetExhausted        the session spent its budget and no expert is cheap enough
        ├── DeadlineExceeded       the request ran past its deadline (timeout_s)
        ├── NoCapableExpert        no expert can take this query (e.g. its modality)
        └── ExpertsFailed          every selected expert failed (also an ExceptionGroup of their errors)

``check_settings`` and ``check_unit`` are the one way settings and scores are validated.

Third-party errors are translated once, at the backend seam, with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BudgetExhausted",
    "ConfigError",
    "DeadlineExceeded",
    "ExpertsFailed",
    "InvalidInput",
    "MoEError",
    "NoCapableExpert",
    "Overloaded",
    "RunError",
    "UnknownResult",
    "check_settings",
    "check_unit",
]


class MoEError(Exception):
    """Root of every error moe-agents raises on purpose."""


class ConfigError(MoEError):
    """A pipeline, expert or backend was configured wrong.

    Attributes:
        path: the configuration file, when there is one.
        line: 1-based line in that file, when known.
        key: dotted key path inside the configuration (``experts.2.kind``), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.key = key
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
        if key:
            where = f"{where} ({key})" if where else key
        super().__init__(f"{where}: {message}" if where else message)


class InvalidInput(MoEError, ValueError):
    """A query or a feedback value that cannot be used (empty text, score outside [0, 1], ...)."""


class UnknownResult(MoEError, KeyError):
    """Feedback named a result id this pipeline never produced or has forgotten."""

    def __init__(self, result_id: str) -> None:
        self.result_id = result_id
        super().__init__(f"unknown result id {result_id!r}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class RunError(MoEError):
    """Something failed while answering a query.

    Attributes:
        expert: name of the expert involved, when one is.
    """

    def __init__(self, message: str, *, expert: str | None = None) -> None:
        self.expert = expert
        super().__init__(message)


class BackendError(RunError):
    """A model backend failed; ``__cause__`` holds the third-party error.

    Attributes:
        backend: a short description of the backend (``litellm:gpt-4o-mini``).
        retryable: whether trying again may succeed (rate limits, timeouts, 5xx).
    """

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        expert: str | None = None,
        retryable: bool = False,
    ) -> None:
        self.backend = backend
        self.retryable = retryable
        super().__init__(message, expert=expert)


class BackendTimeout(BackendError):
    """A backend or expert call ran past its deadline."""

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        expert: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        super().__init__(message, backend=backend, expert=expert, retryable=True)


class BackendUnavailable(BackendError):
    """A backend (or every backend of every capable expert) is cooling down: its circuit breaker
    opened after repeated failures.

    Attributes:
        recovers_at: ``time.monotonic()`` time at which a trial call is let through again.
    """

    def __init__(
        self, message: str, *, backend: str | None = None, expert: str | None = None, recovers_at: float
    ) -> None:
        self.recovers_at = recovers_at
        super().__init__(message, backend=backend, expert=expert, retryable=False)


class Overloaded(RunError):
    """The pipeline is running its most concurrent requests and its queue is full: try later."""


class BudgetExhausted(RunError):
    """The query's session has spent its budget (``trust.budget``) and no expert is cheap enough
    (``price`` at most ``cheap_price``) to answer it.

    Attributes:
        session: the session's id (``None``: the shared session of queries without one).
    """

    def __init__(self, message: str, *, session: str | None) -> None:
        self.session = session
        super().__init__(message)


class DeadlineExceeded(RunError):
    """The request ran past its deadline (``Pipeline(request_timeout_s=...)``).

    Attributes:
        timeout_s: the deadline in seconds.
    """

    def __init__(self, message: str, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(message)


class NoCapableExpert(RunError):
    """No configured expert can take the query (for instance, none accepts its attachments)."""


class ExpertsFailed(RunError, ExceptionGroup):  # type: ignore[misc]
    """Every expert tried for a query failed; the group holds each expert's error."""

    def __new__(cls, message: str, errors: Sequence[RunError]) -> ExpertsFailed:
        self = ExceptionGroup.__new__(cls, message, list(errors))
        return self

    def __init__(self, message: str, errors: Sequence[RunError]) -> None:
        ExceptionGroup.__init__(self, message, list(errors))
        self.expert = None

    @property
    def errors(self) -> dict[str, RunError]:
        """The errors by expert name (unnamed errors under their position)."""
        return {
            (e.expert if isinstance(e, RunError) and e.expert else str(i)): e  # type: ignore[misc]
            for i, e in enumerate(self.exceptions)
        }

    def derive(self, excs: Sequence[BaseException]) -> ExpertsFailed:  # type: ignore[override]
        return ExpertsFailed(self.message, excs)  # type: ignore[arg-type]


def check_settings(what: str, settings: object, checks: Mapping[str, bool]) -> None:
    """Raises one ``ConfigError`` listing every field of ``settings`` whose check is ``False``.

    Args:
        what: the settings' name in the message (``"selection"`` → ``invalid selection settings``).
        settings: the object whose fields were checked.
        checks: field name → whether its value is valid.
    """
    bad = [f"{k}={getattr(settings, k)!r}" for k, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"invalid {what} settings: {', '.join(bad)}")


def check_unit(value: object, what: str) -> float:
    """``value`` as a float in [0, 1] (a score, a rate, a trust), or ``InvalidInput`` naming ``what``.

    The one rule for every score: a real number (``int``, ``float`` or a numpy scalar), not a
    ``bool`` and not a string, in [0, 1]; NaN is rejected.

    Args:
        value: the number to check.
        what: its name in the message (``"feedback score"``).

    Raises:
        InvalidInput: not a number, or outside [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidInput(f"{what} must be a number in [0, 1], got {value!r}")
    x = float(value)
    if not 0.0 <= x <= 1.0:  # also rejects NaN
        raise InvalidInput(f"{what} must be in [0, 1], got {value!r}")
    return x
