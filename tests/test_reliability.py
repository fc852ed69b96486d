"""Failure handling: retries, circuit breakers, cooling experts, overload, deadlines, mid-stream
fallback, cancellation, and bad input — every failure typed, nothing lost."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_agents import (
    Attachment,
    ConfigError,
    InvalidInput,
    LLMExpert,
    MoEError,
    Pipeline,
    Query,
    Router,
    RouterConfig,
    load_pipeline,
)
from moe_agents.backends.base import ChunkCallback, Completion, GenerationSettings
from moe_agents.errors import BackendError, BackendUnavailable, DeadlineExceeded, Overloaded, RunError
from moe_agents.experts.base import Signal
from moe_agents.inputs import InputLimits
from moe_agents.reliability import BreakerPolicy, CircuitBreaker, GuardedBackend, RetryPolicy
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message

FAST = RetryPolicy(attempts=3, initial_s=0.0, max_s=0.0, jitter_s=0.0)


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug)\b", 0.6),)


class Helper(LLMExpert):
    kind = "helper"
    default_exemplars = ("help me with anything", "general question", "answer this")


def echo(tag: str):
    def reply(messages: Sequence[Message]) -> str:
        return f"{tag}: {messages[-1]['content']}"

    return reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flaky(failures: int, *, retryable: bool):
    calls = {"n": 0}

    def reply(messages: Sequence[Message]) -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise BackendError("HTTP 429 rate limited", retryable=retryable)
        return "fine"

    return reply, calls


CODE_QUERY = "please fix the bug in this python function"


def pipeline(coder_backend, helper_backend=None, **kwargs) -> Pipeline:
    experts = [
        Coder(backends=[coder_backend]),
        Helper(backends=[helper_backend or FunctionBackend(echo("helper"), name="h")]),
    ]
    return Pipeline(experts, router=Router(RouterConfig(), encoder=HashingEncoder()), **kwargs)


class TestRetries:
    async def test_retryable_errors_are_retried_until_success(self) -> None:
        reply, calls = flaky(2, retryable=True)
        guarded = GuardedBackend(FunctionBackend(reply), retry=FAST)
        completion = await guarded.complete([{"role": "user", "content": "x"}])
        assert completion.text == "fine" and calls["n"] == 3

    async def test_retries_stop_after_the_attempts(self) -> None:
        reply, calls = flaky(5, retryable=True)
        guarded = GuardedBackend(FunctionBackend(reply), retry=FAST)
        with pytest.raises(BackendError, match="429"):
            await guarded.complete([{"role": "user", "content": "x"}])
        assert calls["n"] == 3

    async def test_other_errors_are_not_retried(self) -> None:
        reply, calls = flaky(1, retryable=False)
        with pytest.raises(BackendError):
            await GuardedBackend(FunctionBackend(reply), retry=FAST).complete(
                [{"role": "user", "content": "x"}]
            )
        assert calls["n"] == 1

    async def test_a_stream_that_sent_text_is_not_retried(self) -> None:
        tries = 0

        class HalfStream:
            name, modalities = "half", frozenset()

            async def complete(self, messages, /, *, settings=None, on_chunk=None) -> Completion:
                nonlocal tries
                tries += 1
                assert on_chunk is not None
                await on_chunk("partial ")
                raise BackendError("connection reset", retryable=True)

            async def load(self) -> None: ...
            async def unload(self) -> None: ...

        chunks: list[str] = []

        async def sink(text: str) -> None:
            chunks.append(text)

        with pytest.raises(BackendError, match="reset"):
            await GuardedBackend(HalfStream(), retry=FAST).complete([], on_chunk=sink)
        assert tries == 1 and chunks == ["partial "]  # no repeated text


class TestCircuitBreaker:
    def test_opens_after_failures_and_lets_one_trial_through_after_cooldown(self) -> None:
        clock = Clock()
        breaker = CircuitBreaker(BreakerPolicy(failures=3, cooldown_s=10), clock=clock)
        for _ in range(3):
            assert breaker.acquire()
            breaker.failure()
        assert breaker.state == "open" and not breaker.available()
        clock.now += 10
        assert breaker.state == "half_open" and breaker.acquire()
        assert not breaker.acquire()  # one trial at a time
        breaker.failure()  # the trial failed: open again
        assert breaker.state == "open"
        clock.now += 10
        assert breaker.acquire()
        breaker.success()
        assert breaker.state == "closed" and breaker.failures == 0

    async def test_open_circuit_fails_fast_with_a_typed_error(self) -> None:
        clock = Clock()
        reply, calls = flaky(99, retryable=False)
        guarded = GuardedBackend(
            FunctionBackend(reply, name="bad"),
            retry=FAST,
            breaker=BreakerPolicy(failures=2, cooldown_s=5),
            clock=clock,
        )
        for _ in range(2):
            with pytest.raises(BackendError):
                await guarded.complete([{"role": "user", "content": "x"}])
        with pytest.raises(BackendUnavailable, match="cooling down") as info:
            await guarded.complete([{"role": "user", "content": "x"}])
        assert calls["n"] == 2 and info.value.recovers_at == pytest.approx(1005.0)

    def test_experts_given_one_guard_share_it(self) -> None:
        """Experts given the same guard share it (and its breaker); a bare backend gets a guard of its own."""
        backend = FunctionBackend(echo("x"))
        shared = GuardedBackend(backend)
        assert Coder(backends=[shared]).backends[0] is Helper(backends=[shared]).backends[0] is shared
        own = Coder(backends=[backend]).backends[0]
        assert isinstance(own, GuardedBackend) and own.inner is backend and own is not shared

    def test_the_guard_is_a_backend_and_nothing_more(self) -> None:
        """A guard exposes the Backend protocol and its availability, not the guarded backend's attributes."""
        backend = FunctionBackend(echo("x"), name="b")
        guarded = GuardedBackend(backend)
        assert (guarded.name, guarded.modalities, guarded.available, guarded.residency) == (
            "b",
            backend.modalities,
            True,
            None,
        )
        assert hasattr(backend, "loaded") and not hasattr(guarded, "loaded")

    async def test_cooling_expert_is_skipped_with_a_reason(self) -> None:
        bad = GuardedBackend(
            FunctionBackend(flaky(99, retryable=False)[0], name="c"),
            retry=FAST,
            breaker=BreakerPolicy(failures=1),
        )
        p = pipeline(bad)
        first = await p.run(CODE_QUERY)  # coding fails, the helper answers by fallback
        assert first.answer.expert == "helper" and "coding" in first.errors
        selection = await p.route(CODE_QUERY)
        assert selection.experts == ("helper",)
        assert "cooling down" in (selection.scores["coding"].note or "")

    async def test_when_every_expert_cools_down_the_request_waits_for_recovery(self) -> None:
        state = {"fail": True}

        def reply(messages: Sequence[Message]) -> str:
            if state["fail"]:
                raise BackendError("down")
            return "back"

        backend = GuardedBackend(
            FunctionBackend(reply), retry=FAST, breaker=BreakerPolicy(failures=1, cooldown_s=0.3)
        )
        p = Pipeline([Coder(backends=[backend])], router=Router(encoder=HashingEncoder()))
        with pytest.raises(RunError):
            await p.run(CODE_QUERY)
        state["fail"] = False
        start = anyio.current_time()
        result = await p.run(CODE_QUERY)  # waits out the cooldown instead of failing
        assert result.text == "back"
        assert anyio.current_time() - start >= 0.25

    async def test_waiting_for_recovery_respects_the_deadline(self) -> None:
        backend = GuardedBackend(
            FunctionBackend(flaky(99, retryable=False)[0]),
            retry=FAST,
            breaker=BreakerPolicy(failures=1, cooldown_s=60),
        )
        p = Pipeline(
            [Coder(backends=[backend])], router=Router(encoder=HashingEncoder()), request_timeout_s=0.2
        )
        with pytest.raises(RunError):
            await p.run(CODE_QUERY)
        start = anyio.current_time()
        with pytest.raises(BackendUnavailable):  # recovery is past the deadline: fail now
            await p.run(CODE_QUERY)
        assert anyio.current_time() - start < 0.1


class TestCapacity:
    async def test_overload_fails_fast_once_the_queue_is_full(self) -> None:
        release = anyio.Event()

        async def held(messages: Sequence[Message]) -> str:
            await release.wait()
            return "done"

        p = pipeline(FunctionBackend(held, name="c"), max_concurrency=1, max_queue=1)
        results: list[object] = []

        async def one() -> None:
            try:
                results.append(await p.run(CODE_QUERY))
            except Overloaded as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
            await anyio.sleep(0.05)
            try:
                with pytest.raises(Overloaded, match="max_concurrency 1, max_queue 1"):
                    await p.run(CODE_QUERY)
            finally:
                release.set()
        assert len(results) == 2 and not any(isinstance(r, Overloaded) for r in results)

    async def test_deadline_exceeded_is_typed(self) -> None:
        async def slow(messages: Sequence[Message]) -> str:
            await anyio.sleep(5)
            return "late"

        p = pipeline(FunctionBackend(slow, name="c"), request_timeout_s=0.1)
        with pytest.raises(DeadlineExceeded):
            await p.run(CODE_QUERY)

    async def test_cancelled_request_cancels_its_expert_calls_and_leaves_no_task(self) -> None:
        cancelled = anyio.Event()

        async def hang(messages: Sequence[Message]) -> str:
            try:
                await anyio.sleep(60)
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise
            return "never"

        p = pipeline(FunctionBackend(hang, name="c"))
        before = len(asyncio.all_tasks())
        with anyio.move_on_after(0.1):
            await p.run(CODE_QUERY)
        assert cancelled.is_set()
        await anyio.lowlevel.checkpoint()
        assert len(asyncio.all_tasks()) == before
        assert p.experts["coding"].current_load == 0


class TestMidStream:
    async def test_broken_stream_continues_from_a_fallback_with_a_marker(self) -> None:
        class Breaks:
            name, modalities = "breaks", frozenset()

            async def complete(
                self,
                messages: Sequence[Message],
                /,
                *,
                settings: GenerationSettings | None = None,
                on_chunk: ChunkCallback | None = None,
            ) -> Completion:
                assert on_chunk is not None
                await on_chunk("Half an ")
                await on_chunk("answer")
                raise BackendError("connection reset")

            async def load(self) -> None: ...
            async def unload(self) -> None: ...

        async with pipeline(GuardedBackend(Breaks(), retry=FAST)) as p:
            stream = p.stream(CODE_QUERY)
            text = await stream.text()
        assert text.startswith("Half an answer")
        assert "[coding failed mid-answer; continuing with helper]" in text
        assert text.rstrip().endswith(CODE_QUERY)
        assert stream.result is not None and stream.result.answer.expert == "helper"

    async def test_broken_stream_without_fallback_ends_with_a_typed_error(self) -> None:
        def broken(messages: Sequence[Message]) -> str:
            raise BackendError("boom")

        p = Pipeline([Coder(backends=[FunctionBackend(broken)])], router=Router(encoder=HashingEncoder()))
        async with p:
            stream = p.stream(CODE_QUERY)
            with pytest.raises(MoEError):
                await stream.text()


class TestBadInput:
    shared = pipeline(FunctionBackend(echo("c")), limits=InputLimits(max_query_chars=200))

    @pytest.mark.parametrize(
        ("text", "match"),
        [
            ("", "empty"),
            ("   \n ", "empty"),
            ("hello\x00world", "U\\+0000 at position 5"),
            ("bell\x07", "U\\+0007"),
            ("bad \udcff bytes", "not valid Unicode at position 4"),
            ("x" * 101, "101 characters; the limit is 100"),
        ],
    )
    async def test_bad_text(self, text: str, match: str) -> None:
        p = pipeline(FunctionBackend(echo("c")), limits=InputLimits(max_query_chars=100))
        with pytest.raises(InvalidInput, match=match):
            await p.run(text)

    async def test_tabs_and_newlines_are_fine(self) -> None:
        result = await pipeline(FunctionBackend(echo("c"))).run("line one\n\tline two\r\n")
        assert result.text

    async def test_bad_attachments(self, tmp_path: Path) -> None:
        p = pipeline(
            FunctionBackend(echo("c")), limits=InputLimits(max_attachment_bytes=10, max_attachments=1)
        )
        with pytest.raises(InvalidInput, match="does not exist"):
            await p.run(Query("look", attachments=(Attachment("image", path=tmp_path / "nope.png"),)))
        with pytest.raises(InvalidInput, match="is not a file"):
            await p.run(Query("look", attachments=(Attachment("image", path=tmp_path),)))
        big = tmp_path / "big.png"
        big.write_bytes(b"x" * 11)
        with pytest.raises(InvalidInput, match="11 bytes; the limit is 10"):
            await p.run(Query("look", attachments=(Attachment("image", path=big),)))
        with pytest.raises(InvalidInput, match="11 bytes"):
            await p.run(Query("look", attachments=(Attachment("image", data=b"y" * 11),)))
        two = (Attachment("file", data=b"a"), Attachment("file", data=b"b"))
        with pytest.raises(InvalidInput, match="2 attachments; the limit is 1"):
            await p.run(Query("look", attachments=two))

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
    async def test_unreadable_attachment(self, tmp_path: Path) -> None:
        secret = tmp_path / "secret.png"
        secret.write_bytes(b"x")
        secret.chmod(0)
        with pytest.raises(InvalidInput, match="not readable"):
            await pipeline(FunctionBackend(echo("c"))).run(
                Query("look", attachments=(Attachment("image", path=secret),))
            )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(max_size=300))
    def test_any_text_is_answered_or_rejected_with_invalid_input(self, text: str) -> None:
        p = self.shared

        async def go() -> None:
            try:
                result = await p.run(text)
            except InvalidInput:
                return
            assert result.text

        anyio.run(go)


class TestYaml:
    YAML = """\
    limits: {max_query_chars: 50}
    runtime: {request_timeout_s: 9, max_concurrency: 4, max_queue: 16}
    backends:
      main:
        kind: litellm
        model: openai/gpt-4o-mini
        retry: {attempts: 5, initial_s: 0.1, max_s: 2}
        circuit: {failures: 2, cooldown_s: 7}
    experts:
      - {name: coding, kind: coding, backends: [main]}
      - {name: reasoning, kind: reasoning, backends: [main]}
    """

    def test_failure_handling_settings(self, tmp_path: Path) -> None:
        path = tmp_path / "p.yaml"
        path.write_text(textwrap.dedent(self.YAML))
        p = load_pipeline(path)
        guarded = p.experts["coding"].backends[0]
        assert isinstance(guarded, GuardedBackend)
        assert guarded is p.experts["reasoning"].backends[0]  # one breaker for the shared backend
        assert guarded.retry == RetryPolicy(attempts=5, initial_s=0.1, max_s=2.0)
        assert guarded.breaker.policy == BreakerPolicy(failures=2, cooldown_s=7.0)
        assert p.limits.max_query_chars == 50
        assert p.request_timeout_s == 9 and p.max_queue == 16

    @pytest.mark.parametrize(
        ("old", "new", "match"),
        [
            ("attempts: 5", "attempts: 0", "retry.attempts"),
            ("failures: 2", "failures: many", "circuit.failures"),
            ("max_queue: 16", "max_queue: -1", "runtime.max_queue"),
            ("max_query_chars: 50", "max_query_chars: 0", "limits.max_query_chars"),
        ],
    )
    def test_bad_values_are_located(self, tmp_path: Path, old: str, new: str, match: str) -> None:
        path = tmp_path / "p.yaml"
        path.write_text(textwrap.dedent(self.YAML).replace(old, new))
        with pytest.raises(ConfigError, match=match) as info:
            load_pipeline(path)
        assert info.value.line is not None

    @settings(max_examples=60, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(
                ["top_k", "min_confidence", "gate_weight", "assess_top", "fallback_expert", "bogus"]
            ),
            st.one_of(
                st.integers(-3, 5), st.floats(-1, 2), st.just(float("nan")), st.text(max_size=5), st.none()
            ),
            max_size=4,
        )
    )
    def test_any_router_section_is_built_or_a_config_error(self, router: dict) -> None:
        import tempfile

        import yaml

        doc = {
            "router": router,
            "experts": [{"name": "coding", "kind": "coding"}, {"name": "r", "kind": "reasoning"}],
        }
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "p.yaml"
            path.write_text(yaml.safe_dump(doc))
            try:
                load_pipeline(path)
            except ConfigError as exc:
                assert str(exc).startswith(str(path))
