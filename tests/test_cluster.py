"""moe-agents on Ray: backends as Serve deployments, replicas chosen by permission, faults survived,
one trust store for the cluster. One private local cluster for the module."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest

ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("ray.cloudpickle")

from cluster_util import Scripted, reader_pipeline, replay_yaml  # noqa: E402

from moe_agents.cluster.proxy import RayBackend  # noqa: E402
from moe_agents.cluster.replica import BackendMaker  # noqa: E402
from moe_agents.cluster.router import rank_replicas  # noqa: E402
from moe_agents.cluster.runtime import connect  # noqa: E402
from moe_agents.cluster.settings import Placement, RayConfig  # noqa: E402
from moe_agents.cluster.trust import SharedTrust  # noqa: E402
from moe_agents.errors import BackendError  # noqa: E402
from moe_agents.routing.permission import Candidates, SelectConfig, select  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # its lambdas run in replicas

RAY = RayConfig(num_cpus=2, object_store_mb=200)
SMALL = Placement(replicas=2, num_cpus=0.25, max_ongoing_requests=16)
REPLAY = BackendMaker("replay", {"dataset": "mmlu", "model": "mixtral-8x7b", "missing": "empty"})


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    connect(RAY)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def replicas(app: str) -> list[str]:
    """The names of ``app``'s replica actors."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]


async def test_a_real_backend_answers_from_two_replicas_with_placement() -> None:
    """The replay backend (recorded answers of a real model) on two replicas: answers come
    through the pipeline and name at least two replicas in ``metadata["placement"]``."""
    backend = RayBackend("t-replay", REPLAY, SMALL, RAY)
    pipeline = reader_pipeline(backend)
    answers = []
    async with pipeline, anyio.create_task_group() as tg:

        async def ask(i: int) -> None:
            answers.append((await pipeline.run(f"what is the answer to question {i}")).answer)

        for i in range(24):
            tg.start_soon(ask, i)
    placements = [a.metadata["placement"] for a in answers]
    assert len(answers) == 24
    assert {p["deployment"] for p in placements} == {"t-replay"}
    assert len({p["replica"] for p in placements}) >= 2
    assert all(p["node"] for p in placements)


async def test_streaming_crosses_the_hop_and_cancellation_reaches_the_replica(tmp_path: Path) -> None:
    marker = tmp_path / "cancelled"
    make = lambda: Scripted(["one ", "two "], hang_s=60, marker=str(marker))  # noqa: E731
    backend = RayBackend("t-cancel", make, Placement(replicas=1, num_cpus=0.25), RAY)
    await backend.load()
    chunks: list[str] = []
    two = anyio.Event()

    async def on_chunk(text: str) -> None:
        chunks.append(text)
        if len(chunks) == 2:
            two.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: backend.complete([{"role": "user", "content": "hi"}], on_chunk=on_chunk))
        with anyio.fail_after(30):
            await two.wait()
        tg.cancel_scope.cancel()
    for _ in range(200):
        if marker.exists():
            break
        await anyio.sleep(0.05)
    await backend.unload()
    assert chunks == ["one ", "two "]
    assert marker.read_text() == "cancelled"


async def test_an_error_on_the_replica_comes_back_as_itself() -> None:
    backend = RayBackend(
        "t-fail", lambda: Scripted(["x"], fail=True), Placement(replicas=1, num_cpus=0.25), RAY
    )
    await backend.load()
    with pytest.raises(BackendError, match="scripted failure on the replica") as err:
        await backend.complete([{"role": "user", "content": "hi"}])
    await backend.unload()
    assert not err.value.retryable


async def test_a_replica_killed_mid_load_loses_nothing() -> None:
    """One of two replicas is killed while requests run: every request is answered (the guard
    retries on the live replica) and Serve starts a replacement."""
    make = lambda: Scripted(["ok"], hang_s=0.05)  # noqa: E731
    backend = RayBackend("t-kill", make, SMALL, RAY)
    pipeline = reader_pipeline(backend)
    answered: list[str] = []
    failed: list[BaseException] = []
    async with pipeline:
        before = replicas("t-kill")
        assert len(before) == 2

        async def ask(i: int) -> None:
            try:
                answered.append(
                    (await pipeline.run(f"answer this question {i}")).answer.metadata["placement"]["replica"]
                )
            except Exception as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(80):
                tg.start_soon(ask, i)
            await anyio.sleep(0.3)
            ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        for _ in range(600):
            after = replicas("t-kill")
            if len(after) == 2 and before[0] not in after:
                break
            await anyio.sleep(0.1)
    assert failed == []
    assert len(answered) == 80
    assert len(after) == 2 and before[0] not in after


def test_replicas_are_ranked_by_the_permission_function() -> None:
    """A replica holding the model beats an idle one that would have to load it, until its queue
    costs more than the swap; the ranking is ``select``'s."""
    names = ["a", "b", "c"]
    order = rank_replicas(names, [2, 0, 0], [True, False, False], service_s=0.1, swap_s=2.0, hysteresis=0.2)
    assert order[0] == 0  # queue of 2 × 0.1 s < a 2 s swap
    busy = rank_replicas(names, [40, 0, 0], [True, False, False], service_s=0.1, swap_s=2.0, hysteresis=0.2)
    assert busy[0] in (1, 2)  # 4 s of queue > 2 s of swap
    direct = select(
        Candidates(
            names=names,
            expertise=np.ones(3),
            price=np.array([40, 0, 0]) * 0.1,
            swap_s=np.array([0.0, 2.0, 2.0]),
            resident=np.array([True, False, False]),
        ),
        SelectConfig(epsilon=0.0, cost_weight=1.0, hysteresis=0.2),
        k=3,
    )
    assert [names[i] for i in busy] == list(direct.experts)


def test_shared_trust_is_one_store_and_a_killed_writer_loses_at_most_one_batch(tmp_path: Path) -> None:
    path = str(tmp_path / "trust.db")
    one = SharedTrust(path, RAY, name="t-trust", batch=50, flush_s=60)
    two = SharedTrust(path, RAY, name="t-trust", batch=50, flush_s=60)
    one.record("coding", "ctx", 1.0)
    values, evidence = two.lookup(["coding"], "ctx")  # another client: the same store
    assert evidence[0] == 0  # still buffered in `one`
    one.flush()
    values, evidence = two.lookup(["coding"], "ctx")
    assert evidence[0] == 1 and values[0] > 0.5

    acked = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal acked
        while not stop.is_set():
            one.record_many([("coding", "ctx", 0.5)] * 50)  # a full batch: written at once
            acked += 50

    thread = threading.Thread(target=writer)
    thread.start()
    import time

    time.sleep(1.0)
    ray.kill(one.actor, no_restart=False)  # the writer dies mid-batch; the actor restarts
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=60)
    total = int(ray.get(two.actor.count.remote()))
    assert acked >= 50
    assert acked + 1 <= total <= acked + 1 + 50  # the first row, every acknowledged batch, at most one more


async def test_a_yaml_pipeline_with_placement_answers_on_the_cluster(tmp_path: Path) -> None:
    """``ray:`` and a backend's ``placement:`` in YAML: the backend runs as a deployment with two
    replicas and answers name them."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(replay_yaml("{replicas: 2, num_cpus: 0.25, max_ongoing_requests: 16}"))
    from moe_agents import load_pipeline

    pipeline = load_pipeline(config)
    seen = set()
    async with pipeline, anyio.create_task_group() as tg:

        async def ask(i: int) -> None:
            result = await pipeline.run(f"What is {i} plus {i}? Think step by step.")
            seen.add(result.answer.metadata["placement"]["replica"])

        for i in range(16):
            tg.start_soon(ask, i)
    assert len(seen) >= 2


async def test_a_pool_serves_models_by_id_and_outlives_one_backend_unloading() -> None:
    """Two backends multiplexed over one pool deployment: each call reaches its own model, and one
    backend unloading leaves the pool to the other."""
    pool = {"a": lambda: Scripted(["from a"]), "b": lambda: Scripted(["from b"])}
    placement = Placement(replicas=1, num_cpus=0.25)
    a = RayBackend("t-pool", None, placement, RAY, model_id="a", pool=pool, slots=1)
    b = RayBackend("t-pool", None, placement, RAY, model_id="b", pool=pool, slots=1)
    await a.load()
    await b.load()
    message = [{"role": "user", "content": "hi"}]
    assert (await a.complete(message)).text == "from a"
    assert (await b.complete(message)).text == "from b"
    await a.unload()
    assert (await b.complete(message)).text == "from b"
    await b.unload()
