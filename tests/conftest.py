"""Shared fixtures. Every test runs offline: sockets to anything but loopback are refused."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest
import structlog

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# fitted gates and converted GGUF models (~0.5 GB) are cached per test session, never in the user's
# cache folder; the trust store's default file never in the user's data folder; both removed at exit
for _variable, _prefix in (
    ("MOE_AGENTS_CACHE_DIR", "moe-agents-tests-"),
    ("MOE_AGENTS_DATA_DIR", "moe-agents-data-"),
):
    os.environ[_variable] = tempfile.mkdtemp(prefix=_prefix)
    atexit.register(shutil.rmtree, os.environ[_variable], ignore_errors=True)
os.environ.setdefault("MOE_AGENTS_EVAL_DATA", os.path.abspath(os.path.join(__file__, "../../../shared/data")))

# the library logs through stdlib logging and is silent by default; tests read every event
# (structlog's capture_logs) without printing any (the library's NullHandler)
logging.getLogger("moe_agents").setLevel(logging.DEBUG)

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> object:
    host = address[0] if isinstance(address, tuple) else address
    if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
        return _real_connect(self, address)  # type: ignore[arg-type]
    raise RuntimeError(f"network access blocked in tests: {address!r}")


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real network backends cannot reach the network from a test."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog (as an application should); tests start from the defaults."""
    yield
    structlog.reset_defaults()
    library = logging.getLogger("moe_agents")
    for handler in [h for h in library.handlers if not isinstance(h, logging.NullHandler)]:
        library.removeHandler(handler)
    library.setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def minilm():
    """The real bundled sentence encoder, loaded once per test session."""
    from moe_agents.routing.encoder import bundled_encoder

    enc = bundled_encoder()
    enc.encode(["warm up"])
    return enc


@pytest.fixture(scope="session")
def default_pipeline():
    """The shipped offline default pipeline with its SmolLM2 model loaded, once per test session."""
    import anyio

    from moe_agents import default_config_path, load_pipeline

    pipeline = load_pipeline(default_config_path())
    for backend in pipeline.backends:
        anyio.run(backend.load)
    yield pipeline
    for backend in pipeline.backends:
        anyio.run(backend.unload)
