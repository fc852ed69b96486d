"""Secret redaction in logs: the ``redact_secrets`` structlog processor and the CLI's logging."""

from __future__ import annotations

import os
from typing import Any

import pytest
import structlog
from pydantic import SecretBytes, SecretStr

from moe_agents.cli import _setup_logging
from moe_agents.logging import get_logger, redact_secrets, redact_text

OPENAI = "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL"
PROJECT = "sk-proj-AbCdEf0123456789_ghIJkl-mnOPqrST0123456789uvWXyz"
ANTHROPIC = "sk-ant-api03-AbCdEf0123456789ghIJklmnOPqrST0123456789-uvWXyzAA"
AWS = "AKIAIOSFODNN7EXAMPLE"
HF = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


def redact(**fields: Any) -> dict[str, Any]:
    return redact_secrets(None, "info", {"event": "test.event", **fields})


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own keys in the environment do not change what these tests see."""
    for name in list(os.environ):
        if name.upper().endswith(("_API_KEY", "_TOKEN", "_SECRET", "_SECRET_KEY", "_PASSWORD")):
            monkeypatch.delenv(name)


class TestSecretKeys:
    @pytest.mark.parametrize(
        "key",
        ["api_key", "apikey", "API_KEY", "key", "token", "secret", "password", "Authorization",
         "openai_api_key", "X-Api-Key", "accessToken", "client_secret", "db.password", "apiKey"],
    )  # fmt: skip
    def test_values_of_secret_keys_are_masked(self, key: str) -> None:
        """Any value under a key whose last word is key, token, secret, password or authorization is ***."""
        assert redact(**{key: "plain words, no pattern"})[key] == "***"

    @pytest.mark.parametrize(
        "key", ["max_tokens", "prompt_tokens", "key_path", "tokenizer", "monkey", "keys", "secretary"]
    )
    def test_other_keys_are_kept(self, key: str) -> None:
        """Keys that only contain a secret word (max_tokens, key_path) keep their values."""
        assert redact(**{key: "plain words"})[key] == "plain words"

    def test_numbers_and_none_under_secret_keys(self) -> None:
        """A number under a secret key is masked too; None stays None (it says no key was set)."""
        out = redact(api_key=None, token=12345)
        assert out["api_key"] is None
        assert out["token"] == "***"

    def test_nested_dicts_and_lists(self) -> None:
        """Secret keys and secret text are masked at any depth of dicts, lists and tuples."""
        out = redact(
            request={
                "headers": {"Authorization": "opaque", "Accept": "json"},
                "body": [{"token": "t0"}, ("kept", f"x {OPENAI}"), {"n": 3}],
            }
        )
        assert out["request"] == {
            "headers": {"Authorization": "***", "Accept": "json"},
            "body": [{"token": "***"}, ("kept", "x ***"), {"n": 3}],
        }

    def test_the_event_dict_passed_in_is_not_changed(self) -> None:
        """The processor returns a new dict; the caller's nested values are left alone."""
        headers = {"Authorization": "opaque"}
        event = {"event": "e", "headers": headers}
        out = redact_secrets(None, "info", event)
        assert out["headers"] == {"Authorization": "***"}
        assert headers == {"Authorization": "opaque"} and event["headers"] is headers


class TestSecretValues:
    def test_secret_str_anywhere_is_masked(self) -> None:
        """pydantic SecretStr and SecretBytes become *** at the top level and nested."""
        out = redact(value=SecretStr(OPENAI), nested={"items": [SecretBytes(b"raw bytes")]})
        assert out["value"] == "***"
        assert out["nested"] == {"items": ["***"]}


class TestPatterns:
    @pytest.mark.parametrize(
        ("secret", "masked"),
        [
            (OPENAI, "***"),
            (PROJECT, "***"),
            (ANTHROPIC, "***"),
            (AWS, "***"),
            (HF, "***"),
            (f"Bearer {JWT}", "Bearer ***"),
            (f"authorization: bearer {JWT}", "authorization: bearer ***"),
        ],
        ids=["openai", "openai-project", "anthropic", "aws", "huggingface", "bearer", "bearer-lowercase"],
    )
    def test_known_key_formats_are_masked_in_text(self, secret: str, masked: str) -> None:
        """A key inside a string value, or the event itself, is replaced by ***; the text around it stays."""
        out = redact(error=f"call failed ({secret}) for gpt-4o", note=[f"k={secret}"])
        assert out["error"] == f"call failed ({masked}) for gpt-4o"
        assert out["note"] == [f"k={masked}"]
        assert redact_secrets(None, "info", {"event": f"using {secret}"})["event"] == f"using {masked}"

    @pytest.mark.parametrize(
        "text",
        [
            "expert.failed: coding timed out after 30.0 s",
            "install scikit-learn (sk-learn) and ask-me-anything-about-python-packaging",
            "hf_hub_download('sentence-transformers/all-MiniLM-L6-v2')",
            "AKIA1234 is too short, AKIAIOSFODNN7EXAMPLE99 too long",
            "the Bearer scheme; max_tokens=512, temperature 0.7",
            "https://api.openai.com/v1/chat/completions · naïve 数学 ✓",
        ],
        ids=["message", "sk-words", "hf-function", "akia-lengths", "bearer-word", "url-unicode"],
    )
    def test_ordinary_text_is_untouched(self, text: str) -> None:
        """Text without secrets comes out exactly as it went in."""
        assert redact(error=text)["error"] == text
        assert redact_text(text) == text

    def test_other_values_are_kept_as_they_are(self) -> None:
        """Numbers, booleans and objects whose repr holds no secret are passed through unchanged."""
        obj = object()
        out = redact(n=3, x=0.5, flag=True, obj=obj, path=None)
        assert out == {"event": "test.event", "n": 3, "x": 0.5, "flag": True, "obj": obj, "path": None}
        assert out["obj"] is obj

    def test_objects_whose_repr_holds_a_secret_become_their_masked_repr(self) -> None:
        """An exception (or any object) logged as a value is masked through its repr."""
        out = redact(error=RuntimeError(f"401: invalid key {OPENAI}"))
        assert out["error"] == "RuntimeError('401: invalid key ***')"


class TestEnvironmentSecrets:
    def test_values_of_secret_variables_are_masked_wherever_they_appear(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The value of *_API_KEY, *_TOKEN and *_SECRET variables is masked, read at call time."""
        monkeypatch.setenv("ACME_API_KEY", "acme-Opaque-42")
        monkeypatch.setenv("GITHUB_TOKEN", "gh0paque.value")
        monkeypatch.setenv("payments_secret", "Pa$$(w0rd)+")
        out = redact(
            msg="key acme-Opaque-42, token gh0paque.value, pw Pa$$(w0rd)+", items=["gh0paque.value!"]
        )
        assert out["msg"] == "key ***, token ***, pw ***"
        assert out["items"] == ["***!"]

    def test_short_values_and_other_variables_are_not_masked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Values under 8 characters, and variables not named like secrets, are left in the text."""
        monkeypatch.setenv("DEBUG_TOKEN", "1234567")
        monkeypatch.setenv("ACME_MODEL", "acme-large-2025")
        text = "build 1234567 of acme-large-2025"
        assert redact(msg=text)["msg"] == text

    def test_a_value_containing_another_is_masked_whole(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """When one secret value contains another, the longer one is masked in one piece."""
        monkeypatch.setenv("A_TOKEN", "shortsecret")
        monkeypatch.setenv("B_TOKEN", "shortsecret-and-more")
        assert redact_text("x shortsecret-and-more y shortsecret") == "x *** y ***"


class TestExceptions:
    def test_logged_exceptions_are_rendered_masked(self) -> None:
        """exc_info becomes a masked traceback in ``exception``; the exception object is not passed on."""
        try:
            raise ValueError(f"bad key {OPENAI}")
        except ValueError:
            out = redact_secrets(None, "exception", {"event": "call.failed", "exc_info": True})
        assert "exc_info" not in out
        assert out["exception"].startswith("Traceback") and out["exception"].endswith(
            "ValueError: bad key ***"
        )
        assert OPENAI not in out["exception"]

    def test_exc_info_without_an_exception_is_dropped(self) -> None:
        """exc_info=True outside an except block adds nothing."""
        assert redact_secrets(None, "info", {"event": "e", "exc_info": True}) == {"event": "e"}


class TestCliLogging:
    def test_the_cli_never_prints_a_key_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With the CLI's logging, a key from OPENAI_API_KEY logged in any field never reaches stderr."""
        key = "sk-test-1234567890abcdef"
        monkeypatch.setenv("OPENAI_API_KEY", key)
        _setup_logging(True)
        log = get_logger("moe_agents.test")
        log.info(f"backend.request with {key}", api_key=key, headers={"Authorization": f"Bearer {key}"})
        log.warning("backend.failed", error=f"AuthenticationError: Incorrect API key provided: {key}")
        try:
            raise RuntimeError(f"401 for {key}")
        except RuntimeError:
            log.exception("backend.crashed", secret=SecretStr(key))
        err = capsys.readouterr().err
        assert key not in err
        assert key[3:] not in err and key[-8:] not in err
        assert "backend.request with ***" in err and "backend.failed" in err and "backend.crashed" in err
        assert "Incorrect API key provided: ***" in err and "RuntimeError: 401 for ***" in err

    def test_the_cli_processor_chain_masks_before_rendering(self) -> None:
        """_setup_logging puts redact_secrets in the chain, before the renderer."""
        _setup_logging(False)
        processors = structlog.get_config()["processors"]
        assert redact_secrets in processors
        assert processors.index(redact_secrets) < len(processors) - 1
        assert isinstance(processors[-1], structlog.dev.ConsoleRenderer)
