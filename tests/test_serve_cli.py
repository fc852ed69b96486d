"""``moe-agents serve`` on the offline default pipeline, in its own process, answering the official
``openai`` client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).with_name("moe-agents")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"the server exited: {process.communicate()[0][-3000:]}"
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready in 300 s"
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_the_offline_default_answers_the_official_client(server: str) -> None:
    """Plain and streamed (with usage) answers, /v1/models, /metrics, the page, x-moe-* headers."""
    with OpenAI(base_url=f"{server}/v1", api_key="none") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="moe-agents",
            messages=[{"role": "user", "content": "Write a Python function that adds two numbers."}],
        )
        completion = raw.parse()
        stream = client.chat.completions.create(
            model="moe-agents",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        models = [m.id for m in client.models.list()]
    assert completion.choices[0].message.content.strip()
    assert raw.headers["x-moe-experts"].split(",")[0] == "coding"
    assert raw.headers["x-moe-result-id"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert "moe-agents" in models and "moe-agents/coding" in models
    metrics = httpx.get(f"{server}/metrics").text
    assert 'moe_agents_requests_total{status="ok"} 2.0' in metrics
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "moe-agents" in page.text


def test_an_open_server_refuses_a_public_address() -> None:
    """Without API keys, binding to anything but loopback needs --allow-open."""
    out = subprocess.run(
        [str(CLI), "serve", "--host", "0.0.0.0", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert out.returncode == 1
    assert "--allow-open" in out.stderr
