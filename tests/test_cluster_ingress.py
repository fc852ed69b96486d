"""``moe-agents serve --ray``: the HTTP server as a Ray Serve ingress with two replicas, on a
private local cluster, answering over Serve's HTTP proxy."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray")

from cluster_util import replay_yaml  # noqa: E402

from moe_agents.cluster.ingress import serve_on_ray  # noqa: E402
from moe_agents.cluster.settings import RayConfig  # noqa: E402
from moe_agents.server.settings import ServerConfig  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = replay_yaml("{replicas: 2, num_cpus: 0.25}")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if ray.is_initialized():
        ray.shutdown()
    path = Path(tmp_path_factory.mktemp("ingress")) / "pipeline.yaml"
    path.write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    serve_on_ray(path, RayConfig(num_cpus=2), ServerConfig(), port=port, replicas=2, blocking=False)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def test_the_server_answers_from_ingress_replicas_over_backend_replicas(base: str) -> None:
    replicas: set[str] = set()
    answered = 0
    for i in range(20):
        body = {"model": "moe-agents", "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]}
        body["moe"] = {"details": True}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        if response.status_code == 503:  # an ingress replica still loading: retryable
            assert response.headers["x-should-retry"] == "true"
            continue
        assert response.status_code == 200, response.text
        answered += 1
        answer = next(iter(response.json()["moe"]["answers"].values()))
        replicas.add(answer["metadata"]["placement"]["replica"])
    assert answered >= 10
    assert len(replicas) >= 2
