"""A backend spread over three simulated nodes (``ray.cluster_utils.Cluster``): a node removed
under load loses no request, and Serve replaces its replica on the nodes that remain."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import pytest

ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("ray.cloudpickle")

from cluster_util import Scripted, reader_pipeline  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from moe_agents.cluster.proxy import RayBackend  # noqa: E402
from moe_agents.cluster.settings import Placement, RayConfig  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    nodes.shutdown()


async def test_a_removed_node_loses_no_request(cluster: Cluster) -> None:
    worker = next(n for n in cluster.worker_nodes)
    placement = Placement(replicas=3, num_cpus=0.3, max_ongoing_requests=16)
    backend = RayBackend(
        "t-nodes", lambda: Scripted(["ok"], hang_s=0.05), placement, RayConfig(address=cluster.address)
    )
    pipeline = reader_pipeline(backend)
    failed: list[BaseException] = []
    nodes_seen: set[str] = set()
    async with pipeline:

        async def ask(i: int) -> None:
            try:
                result = await pipeline.run(f"answer this question {i}")
                nodes_seen.add(result.answer.metadata["placement"]["node"])
            except Exception as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(ask, i)
                await anyio.sleep(0.02)
                if i == 20:
                    removed = worker.node_id
                    await anyio.to_thread.run_sync(lambda: cluster.remove_node(worker, allow_graceful=False))
        before_removal = set(nodes_seen)
        for _ in range(1800):  # the cluster notices the node is gone (health checks; slow on a busy box)
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            if removed not in alive:
                break
            await anyio.sleep(0.1)
        nodes_seen.clear()
        for _ in range(1800):  # Serve replaces the lost replica on the nodes that remain
            status = await anyio.to_thread.run_sync(lambda: ray.serve.status())
            app = status.applications.get("t-nodes")
            if app is not None and app.status == "RUNNING":
                break
            await anyio.sleep(0.1)
        for i in range(30):
            result = await pipeline.run(f"answer this question again {i}")
            nodes_seen.add(result.answer.metadata["placement"]["node"])
    assert failed == []
    assert len(before_removal) >= 2
    assert removed not in alive
    assert removed not in nodes_seen and nodes_seen <= alive
