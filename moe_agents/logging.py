"""The library's logging: structlog events on the standard ``logging`` module, secrets masked.

**A silent library.** Every module logs through :func:`get_logger`: a structlog logger (dotted
event names with key/value fields) whose output goes to the standard library logger of the same
name (``moe_agents.routing.router``, ...). The ``moe_agents`` logger has a ``NullHandler``, so an
application that configures nothing sees nothing, and events below the stdlib logger's level are
dropped before any processor runs (no cost when no one listens). An application opts in the usual
way::

    logging.basicConfig(level=logging.INFO)                 # events appear as rendered lines
    logging.getLogger("moe_agents").setLevel(logging.DEBUG)  # or only this library's

The event dict is rendered by structlog's configured processors (the application's, if it
configured structlog; structlog's defaults otherwise). The library never calls
``structlog.configure()``; the ``moe-agents`` CLI (an application) does, and puts
``redact_secrets`` in its chain, before the renderer::

    structlog.configure(processors=[..., redact_secrets, structlog.dev.ConsoleRenderer()])

**Keeping secrets out of logs**: ``redact_secrets`` is a structlog processor that masks API keys,
tokens and passwords.

Three rules, each replacing what it finds with ``***``:

* **secret keys**: the value of any key, at any depth of dicts and lists, whose last word is
  ``key``, ``apikey``, ``token``, ``secret``, ``password`` or ``authorization`` (case-insensitive;
  words split at ``_``, ``-``, ``.``, spaces and camelCase), so ``api_key``, ``X-Api-Key`` and
  ``accessToken`` are masked while ``max_tokens`` and ``key_path`` are not. ``None`` stays ``None``.
* **secret values**: pydantic ``SecretStr`` / ``SecretBytes`` anywhere.
* **secret text**: inside every string (the event, values, list items, the repr of other objects,
  a logged exception's traceback), known key formats (OpenAI ``sk-…`` and ``sk-proj-…``,
  Anthropic ``sk-ant-…``, ``Bearer <token>``, AWS access key ids, Hugging Face ``hf_…`` tokens)
  and the values of environment variables named like secrets (``*_API_KEY``, ``*_TOKEN``,
  ``*_SECRET``, ``*_SECRET_KEY``, ``*_SECRET_ACCESS_KEY``, ``*_PASSWORD``; read at each call,
  values of 8 characters or more).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from typing import Any

import structlog
from pydantic import SecretBytes, SecretStr

__all__ = ["LIBRARY_LOGGER", "get_logger", "redact_secrets", "redact_text"]

LIBRARY_LOGGER = "moe_agents"
"""The standard library logger above every logger of this package."""

logging.getLogger(LIBRARY_LOGGER).addHandler(logging.NullHandler())

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _StdlibBoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger that asks the stdlib logger's level first: a disabled event costs
    one ``isEnabledFor`` call, no processor runs."""

    def _proxy_to_logger(self, method_name: str, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(_LEVELS.get(method_name, logging.INFO)):
            return None
        return super()._proxy_to_logger(method_name, event, *args, **kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """An error with the current exception: the processors render it (masked), so the stdlib
        record carries none (``Logger.exception`` would append it again, unmasked)."""
        kw.setdefault("exc_info", True)
        return self._proxy_to_logger("error", event, *args, **kw)


def get_logger(name: str) -> Any:
    """The structlog logger for module ``name``, writing to the stdlib logger of the same name.

    Args:
        name: the module's ``__name__``.

    Returns:
        A structlog bound logger (``log.info("route.selected", experts=...)``).
    """
    return structlog.wrap_logger(logging.getLogger(name), wrapper_class=_StdlibBoundLogger)

MASK = "***"

SECRET_KEY_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "authorization"})
"""A key whose last word is one of these holds a secret."""

SECRET_ENV_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_SECRET_KEY", "_SECRET_ACCESS_KEY", "_PASSWORD")
"""An environment variable named ``X<suffix>`` (or the suffix alone) holds a secret."""

MIN_ENV_SECRET_LEN = 8
"""Shorter environment values (``1``, ``true``) are too common in ordinary text to mask."""

MAX_DEPTH = 16
"""Deeper (or self-referencing) containers are masked through their repr."""

_PATTERNS = (
    # sk-…, sk-proj-…, sk-ant-api03-…: one rule, since all are sk- and a long tail
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"),
    re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}"),
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/-]{8,}=*")
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def _is_secret_key(key: str) -> bool:
    words = _WORDS.findall(key)
    return bool(words) and words[-1].lower() in SECRET_KEY_WORDS


@lru_cache(maxsize=8)
def _env_pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    if not values:
        return None
    # longest first, so a value that contains another is masked whole
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))


def _env_secrets() -> frozenset[str]:
    return frozenset(
        value
        for name, value in os.environ.items()
        if len(value) >= MIN_ENV_SECRET_LEN
        and any(name.upper().endswith(s) or name.upper() == s[1:] for s in SECRET_ENV_SUFFIXES)
    )


def redact_text(text: str) -> str:
    """``text`` with known key formats and secret environment values replaced by ``***``.

    Args:
        text: any text (a message, an error, a traceback).

    Returns:
        The text, unchanged where nothing looks secret.
    """
    return _redact_text(text, _env_pattern(_env_secrets()))


def _redact_text(text: str, env: re.Pattern[str] | None) -> str:
    if env is not None:
        text = env.sub(MASK, text)
    for pattern in _PATTERNS:
        text = pattern.sub(MASK, text)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _redact(value: Any, env: re.Pattern[str] | None, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, str):
        return _redact_text(value, env)
    if depth < MAX_DEPTH:
        if isinstance(value, Mapping):
            return {k: _redact_item(k, v, env, depth + 1) for k, v in value.items()}
        if isinstance(value, list) or type(value) in (tuple, set, frozenset):
            items = [_redact(v, env, depth + 1) for v in value]
            return items if isinstance(value, list) else type(value)(items)
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ is the renderer's problem, not a reason to drop the event
        return value
    masked = _redact_text(text, env)
    return value if masked == text else masked


def _redact_item(key: object, value: Any, env: re.Pattern[str] | None, depth: int) -> Any:
    if value is not None and isinstance(key, str) and _is_secret_key(key):
        return MASK
    return _redact(value, env, depth)


def _exc_info(value: object) -> tuple[type[BaseException], BaseException, Any] | None:
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value  # type: ignore[return-value]
    if value and (current := sys.exc_info())[1] is not None:
        return current  # type: ignore[return-value]
    return None


def redact_secrets(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """A structlog processor that masks secrets in the event dict (see the module docstring).

    A logged exception (``exc_info``) is rendered here, with secrets masked, into the
    ``exception`` field: renderers would otherwise print its traceback (and frame locals) as is.

    Args:
        logger: the wrapped logger (unused).
        method_name: the log method's name (unused).
        event_dict: the event and its fields.

    Returns:
        A new event dict with every secret replaced by ``***``.
    """
    env = _env_pattern(_env_secrets())
    out = {key: _redact_item(key, value, env, 0) for key, value in event_dict.items() if key != "exc_info"}
    if "exc_info" in event_dict and (exc := _exc_info(event_dict["exc_info"])) is not None:
        out["exception"] = _redact_text("".join(traceback.format_exception(*exc)).rstrip("\n"), env)
    return out
