"""``ServerConfig``: the YAML ``server:`` section, and the settings of ``create_app``.

One pydantic model is both the schema of the YAML section and the runtime settings, so the two
cannot drift. It imports no web framework: the configuration loader validates it without the
``server`` extra installed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServerConfig"]


class ServerConfig(BaseModel):
    """How ``moe-agents serve`` answers (the YAML ``server:`` section).

    Attributes:
        api_keys: accepted keys (``Authorization: Bearer <key>``); empty: the server is open, and
            then it binds to loopback only unless started with ``--allow-open``. Write them as
            ``${ENV_VAR}`` in YAML so that no key sits in a file.
        allow_remote_media: fetch ``http(s)://`` image and audio URLs of a message; off: only
            ``data:`` URLs are accepted and a remote one is a 400.
        remote_media_timeout_s: deadline of one remote media fetch.
        keepalive_s: a stream whose first chunk has not come within this many seconds is started
            (HTTP 200 sent) and then gets a ``:`` keep-alive comment every ``keepalive_s`` seconds;
            a failure before that is a real HTTP error status, a failure after it an in-band error
            frame.
        max_body_mb: largest request body; a larger one is a 413.
        model_name: the name of the pipeline as a model (``moe-agents``); presets are
            ``<name>:<preset>``, one expert ``<name>/<expert>``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: tuple[str, ...] = ()
    allow_remote_media: bool = False
    remote_media_timeout_s: float = Field(default=10.0, gt=0.0)
    keepalive_s: float = Field(default=10.0, gt=0.0)
    max_body_mb: float = Field(default=64.0, gt=0.0)
    model_name: str = Field(default="moe-agents", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
