"""The OpenAI-compatible server, driven by the official ``openai`` client and by raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import anyio
import httpx
import openai
import pytest
from openai import AsyncOpenAI
from server_util import Coder, Seer, Talker, echo, eventually, pipeline_of, served, simple

from moe_agents import BudgetConfig, ExpertPolicy, Pipeline, Router, RouterConfig, TrustStore
from moe_agents.backends.base import ChunkCallback, Completion
from moe_agents.errors import BackendError, ConfigError, InvalidInput
from moe_agents.metrics import PipelineMetrics
from moe_agents.server import ServerConfig, serve
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message, Usage

CODE_Q = "please fix the bug in this python function"
TALK_Q = "hello, what do you think about life?"


_clients: list[AsyncOpenAI] = []


def client(base: str, **kwargs: object) -> AsyncOpenAI:
    """An official client for the server at ``base`` (closed after the test)."""
    c = AsyncOpenAI(base_url=f"{base}/v1", api_key=kwargs.pop("api_key", "none"), **kwargs)  # type: ignore[arg-type]
    _clients.append(c)
    return c


@contextlib.asynccontextmanager
async def serving(
    pipeline: Pipeline, config: ServerConfig | None = None, **kwargs: bool
) -> AsyncIterator[str]:
    """``served``, closing the test's official clients before the server stops."""
    async with served(pipeline, config, **kwargs) as base:
        try:
            yield base
        finally:
            for c in _clients:
                await c.close()
            _clients.clear()


def user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


class Scripted:
    """A backend that streams ``pieces`` with a pause between them, then fails or hangs if told;
    it records whether it was cancelled."""

    def __init__(
        self, pieces: Sequence[str], *, pause_s: float = 0.0, fail: bool = False, hang: bool = False
    ) -> None:
        self.name = "scripted"
        self.pieces, self.pause_s, self.fail, self.hang = list(pieces), pause_s, fail, hang
        self.started = anyio.Event()
        self.cancelled = False
        self.modalities: frozenset[str] = frozenset()

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: object = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        self.started.set()
        try:
            for piece in self.pieces:
                if on_chunk is not None:
                    await on_chunk(piece)
                await anyio.sleep(self.pause_s)
            if self.hang:
                await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        if self.fail:
            raise BackendError("scripted failure", backend=self.name)
        return Completion("".join(self.pieces), "scripted-1", Usage(3, len(self.pieces)))


async def sse(response: httpx.Response) -> tuple[list[dict[str, object]], list[str], bool]:
    """The data frames, the comment lines and whether ``[DONE]`` came."""
    frames, comments, done = [], [], False
    async for line in response.aiter_lines():
        if line.startswith(":"):
            comments.append(line)
        elif line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            frames.append(json.loads(line[6:]))
    return frames, comments, done


async def settle(baseline: int) -> int:
    """Waits until the event loop is back to ``baseline`` tasks (or 5 s); returns the count."""
    with contextlib.suppress(TimeoutError):
        await eventually(lambda: len(asyncio.all_tasks()) <= baseline)
    return len(asyncio.all_tasks())


class TestOpenAIClient:
    async def test_completion_with_headers_and_details(self) -> None:
        """A plain completion: the answer, the answering model, usage, the x-moe-* headers and,
        on request, the full result."""
        async with serving(simple()) as base:
            raw = await client(base).chat.completions.with_raw_response.create(
                model="moe-agents", messages=user(CODE_Q), extra_body={"moe": {"details": True}}
            )
        completion = raw.parse()
        assert completion.choices[0].message.content == f"coding: {CODE_Q}"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.model == "c"  # FunctionBackend's model name: the model that answered
        assert completion.usage is not None and completion.usage.total_tokens > 0
        assert raw.headers["x-moe-experts"] == "coding"
        assert raw.headers["x-moe-mode"]
        assert float(raw.headers["x-moe-weights"]) == pytest.approx(1.0)
        details = completion.model_extra["moe"]  # type: ignore[index]
        assert details["id"] == raw.headers["x-moe-result-id"] == completion.id.removeprefix("chatcmpl-")
        assert set(details["selection"]["scores"]) == {"coding", "talk"}

    async def test_streaming_with_usage(self) -> None:
        """Chunks in OpenAI's shape: the role first, the text in pieces, then usage with empty
        choices."""
        async with serving(simple()) as base:
            stream = await client(base).chat.completions.create(
                model="moe-agents", messages=user(TALK_Q), stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"talk: {TALK_Q}"
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(text.split())
        assert len({c.id for c in chunks}) == 1

    async def test_models_presets_and_forced_experts(self) -> None:
        """/v1/models lists the pipeline, its presets and each expert; ``moe-agents/<expert>``
        asks that expert even where the router would not."""
        async with serving(simple()) as base:
            c = client(base)
            ids = [m.id async for m in c.models.list()]
            forced = await c.chat.completions.with_raw_response.create(
                model="moe-agents/talk", messages=user(CODE_Q)
            )
            focus = await c.chat.completions.create(model="moe-agents:focus", messages=user(CODE_Q))
            one = await c.models.retrieve("moe-agents/coding")
        assert ids[0] == "moe-agents"
        assert {"moe-agents:focus", "moe-agents:rest", "moe-agents/coding", "moe-agents/talk"} <= set(ids)
        assert forced.parse().choices[0].message.content == f"talk: {CODE_Q}"
        assert forced.headers["x-moe-mode"] == "forced"
        assert focus.choices[0].message.content.startswith("coding:")
        assert one.id == "moe-agents/coding"

    async def test_unknown_model_is_404_naming_the_known_ones(self) -> None:
        async with serving(simple()) as base:
            with pytest.raises(openai.NotFoundError) as err:
                await client(base).chat.completions.create(model="gpt-4o", messages=user("hi"))
        assert err.value.status_code == 404
        assert "moe-agents/coding" in err.value.message
        assert err.value.code == "model_not_found"

    @pytest.mark.parametrize(
        ("messages", "fragment"),
        [
            ([], "messages"),
            (user("bad \x07 bell"), "control character"),
            ([{"role": "assistant", "content": "hi"}], "last message must be a user message"),
            ([{"role": "wizard", "content": "hi"}], "role"),
        ],
    )
    async def test_invalid_input_is_400(self, messages: list[dict[str, object]], fragment: str) -> None:
        async with serving(simple()) as base:
            with pytest.raises(openai.BadRequestError) as err:
                await client(base).chat.completions.create(model="moe-agents", messages=messages)  # type: ignore[arg-type]
        assert fragment in err.value.message
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]

    async def test_api_keys(self) -> None:
        """With keys configured, a missing or wrong key is a 401; health needs no key."""
        config = ServerConfig(api_keys=("k-123",))
        async with serving(simple(), config) as base:
            with pytest.raises(openai.AuthenticationError) as err:
                await client(base, api_key="wrong").chat.completions.create(
                    model="moe-agents", messages=user("hi")
                )
            ok = await client(base, api_key="k-123").chat.completions.create(
                model="moe-agents", messages=user(TALK_Q)
            )
            async with httpx.AsyncClient(base_url=base) as h:
                missing = await h.post(
                    "/v1/chat/completions", json={"model": "moe-agents", "messages": user("hi")}
                )
                assert (await h.get("/health/live")).status_code == 200
                assert (await h.get("/health/ready")).status_code == 200
                assert (await h.get("/metrics")).status_code == 401
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
        assert ok.choices[0].message.content.startswith("talk:")

    async def test_overloaded_is_429_and_the_client_retries(self) -> None:
        """``Overloaded`` → 429 with Retry-After and ``x-should-retry: true``: the official client
        retries (and here succeeds once the slot is free)."""
        slow = FunctionBackend(echo("coding"), name="slow", latency_s=0.6)
        pipeline = pipeline_of(
            Coder(backends=[slow]), Talker(backends=[slow]), max_concurrency=1, max_queue=0
        )
        async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
            first = asyncio.ensure_future(
                h.post("/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)})
            )
            await eventually(lambda: pipeline.admission.in_flight > 0)
            raw = await h.post("/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)})
            assert raw.status_code == 429
            assert raw.headers["x-should-retry"] == "true" and raw.headers["retry-after"] == "1"
            assert raw.json()["error"]["code"] == "overloaded"
            await first
            while pipeline.admission.in_flight == 0:  # keep it busy for the client's first try
                first = asyncio.ensure_future(
                    h.post("/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)})
                )
                await anyio.sleep(0.02)
            answer = await client(base, max_retries=2).chat.completions.create(
                model="moe-agents", messages=user(CODE_Q)
            )
            await first
        assert answer.choices[0].message.content.startswith("coding:")

    async def test_budget_exhausted_is_429_with_its_own_code_and_no_retry(self) -> None:
        """A session that spent its budget, with no expert cheap enough: 429 ``budget_exhausted``,
        ``x-should-retry: false``, so the client does not retry; other sessions still work."""
        priced = ExpertPolicy(price=1.0)
        costly = FunctionBackend(lambda m: Completion("done", "m", Usage(5, 5, cost_usd=0.02)), name="c")
        pipeline = pipeline_of(
            Coder(backends=[costly], policy=priced),
            Talker(backends=[costly], policy=priced),
            budget=BudgetConfig(usd=0.01),
        )
        metrics = PipelineMetrics(pipeline)
        async with serving(pipeline) as base:
            c = client(base, max_retries=3)
            await c.chat.completions.create(model="moe-agents", messages=user(CODE_Q), user="alice")
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model="moe-agents", messages=user(CODE_Q), user="alice")
            other = await c.chat.completions.create(
                model="moe-agents", messages=user(CODE_Q), extra_body={"session_id": "bob"}
            )
        assert err.value.code == "budget_exhausted"
        assert err.value.response.headers["x-should-retry"] == "false"
        assert metrics.requests.labels("BudgetExhausted")._value.get() == 1  # no retries
        assert other.choices[0].message.content == "done"

    async def test_no_capable_expert_is_400(self) -> None:
        image = {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"png").decode()},
        }
        async with serving(simple()) as base:
            with pytest.raises(openai.BadRequestError) as err:
                await client(base).chat.completions.create(
                    model="moe-agents",
                    messages=[{"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}],
                )
        assert err.value.code == "no_capable_expert"

    async def test_experts_failed_is_502_without_retries(self) -> None:
        def broken(messages: Sequence[Message]) -> str:
            raise RuntimeError("model crashed")

        pipeline = pipeline_of(
            Coder(backends=[FunctionBackend(broken, name="b1")]),
            Talker(backends=[FunctionBackend(broken, name="b2")]),
        )
        metrics = PipelineMetrics(pipeline)
        async with serving(pipeline) as base:
            with pytest.raises(openai.InternalServerError) as err:
                await client(base, max_retries=2).chat.completions.create(
                    model="moe-agents", messages=user(CODE_Q)
                )
        assert err.value.status_code == 502 and err.value.code == "experts_failed"
        assert "Traceback" not in err.value.message and "model crashed" in err.value.message
        assert metrics.requests.labels("ExpertsFailed")._value.get() == 1
        assert metrics.expert_calls.labels("coding", "error")._value.get() == 1

    async def test_deadline_exceeded_is_504(self) -> None:
        slow = FunctionBackend(echo("x"), name="slow", latency_s=2.0)
        pipeline = pipeline_of(Coder(backends=[slow]), Talker(backends=[slow]), request_timeout_s=0.2)
        async with serving(pipeline) as base:
            with pytest.raises(openai.InternalServerError) as err:
                await client(base, max_retries=0).chat.completions.create(
                    model="moe-agents", messages=user(CODE_Q)
                )
        assert err.value.status_code == 504 and err.value.code == "deadline_exceeded"


class TestStreamingEdges:
    async def test_failure_before_content_is_a_real_status(self) -> None:
        failing = Scripted([], fail=True)
        pipeline = pipeline_of(Coder(backends=[failing]), Talker(backends=[failing]))
        async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
            body = {"model": "moe-agents", "messages": user(CODE_Q), "stream": True}
            async with h.stream("POST", "/v1/chat/completions", json=body) as response:
                await response.aread()
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "experts_failed"

    async def test_failure_after_content_is_an_in_band_error_frame(self) -> None:
        failing = Scripted(["partial ", "answer "], fail=True)
        pipeline = pipeline_of(Coder(backends=[failing]), Talker(backends=[failing]))
        async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
            body = {"model": "moe-agents", "messages": user(CODE_Q), "stream": True}
            async with h.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                frames, _, done = await sse(response)
        text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f.get("choices"))
        assert text.startswith("partial answer")
        assert "error" in frames[-1] and frames[-1]["error"]["code"] == "experts_failed"
        assert not done

    async def test_official_client_raises_on_an_in_band_error(self) -> None:
        failing = Scripted(["partial "], fail=True)
        pipeline = pipeline_of(Coder(backends=[failing]), Talker(backends=[failing]))
        async with serving(pipeline) as base:
            stream = await client(base).chat.completions.create(
                model="moe-agents", messages=user(CODE_Q), stream=True
            )
            with pytest.raises(openai.APIError, match="every expert tried failed"):
                async for _ in stream:
                    pass

    async def test_the_fallback_marker_passes_through(self) -> None:
        """The selected expert fails mid-answer; the next answers; the stream says so and ends."""
        failing = Scripted(["half "], fail=True)
        pipeline = pipeline_of(
            Coder(backends=[failing]), Talker(backends=[FunctionBackend(echo("talk"), name="t")])
        )
        async with serving(pipeline) as base:
            stream = await client(base).chat.completions.create(
                model="moe-agents", messages=user(CODE_Q), stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith("half ")
        assert "[coding failed mid-answer; continuing with talk]" in text
        assert text.endswith(f"talk: {CODE_Q}")

    async def test_keep_alive_comments_while_every_answer_is_awaited(self) -> None:
        """Two experts that answer late, merged by an aggregator that needs both: the response
        starts after ``keepalive_s`` and ``:`` comments keep it alive until the text comes."""
        late = FunctionBackend(echo("late"), name="late", latency_s=0.5)
        pipeline = pipeline_of(Coder(backends=[late]), Talker(backends=[late]), top_k=2)
        async with (
            served(pipeline, ServerConfig(keepalive_s=0.1)) as base,
            httpx.AsyncClient(base_url=base) as h,
        ):
            body = {"model": "moe-agents", "messages": user(CODE_Q), "stream": True}
            async with h.stream("POST", "/v1/chat/completions", json=body) as response:
                frames, comments, done = await sse(response)
        assert response.status_code == 200 and done
        assert len(comments) >= 2 and all(c == ": keep-alive" for c in comments)
        text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f.get("choices"))
        assert f"late: {CODE_Q}" in text

    @pytest.mark.parametrize("stream", [True, False])
    async def test_client_disconnect_cancels_the_expert_call(self, stream: bool) -> None:
        """The client goes away mid-answer: the backend sees the cancellation, the expert's load
        returns to 0, nothing is left in flight and no task is left behind."""
        hanging = Scripted(["first "], pause_s=0.0, hang=True)
        coder = Coder(backends=[hanging])
        pipeline = pipeline_of(coder, Talker(backends=[FunctionBackend(echo("talk"), name="t")]))
        async with serving(pipeline) as base:
            baseline = len(asyncio.all_tasks())

            async def ask() -> None:
                async with httpx.AsyncClient(base_url=base) as h:
                    body = {"model": "moe-agents", "messages": user(CODE_Q), "stream": stream}
                    async with h.stream("POST", "/v1/chat/completions", json=body) as response:
                        async for _ in response.aiter_lines():
                            pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                with anyio.fail_after(5):
                    await hanging.started.wait()
                    assert coder.current_load == 1
                await anyio.sleep(0.1)
                tg.cancel_scope.cancel()  # the client closes its connection
            await eventually(lambda: hanging.cancelled)
            left = await settle(baseline)
        assert coder.current_load == 0
        assert pipeline.admission.in_flight == 0
        assert left <= baseline


class TestEndpoints:
    async def test_route_calls_no_model(self) -> None:
        backend = FunctionBackend(echo("coding"), name="c")
        pipeline = pipeline_of(Coder(backends=[backend]), Talker(backends=[backend]))
        async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
            response = await h.post("/v1/route", json={"model": "moe-agents", "messages": user(CODE_Q)})
        body = response.json()
        assert response.status_code == 200
        assert body["experts"] == ["coding"] and body["object"] == "moe.selection"
        assert set(body["scores"]) == {"coding", "talk"}
        assert backend.calls == []

    async def test_feedback_moves_trust_and_rejects_bad_input(self) -> None:
        with TrustStore(":memory:") as store:
            pipeline = simple(router=_trusting_router(store))
            async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
                answer = await h.post(
                    "/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)}
                )
                result_id = answer.headers["x-moe-result-id"]
                before = pipeline.result(result_id).selection.scores["coding"].trust
                good = await h.post("/v1/feedback", json={"id": result_id, "score": 1.0})
                unknown = await h.post("/v1/feedback", json={"id": "nope", "score": 1.0})
                bad = [
                    await h.post("/v1/feedback", json={"id": result_id, "score": s})
                    for s in ("0.5", 1.5, True)
                ]
        assert good.status_code == 200
        assert good.json()["experts"] == ["coding"]
        assert good.json()["trust"]["coding"] > (before or 0.5)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_result"
        assert [r.status_code for r in bad] == [400, 400, 400]
        assert all(r.json()["error"]["param"] == "score" for r in bad)

    async def test_readiness_follows_loading_and_shutdown(self) -> None:
        """/health/ready is 503 while models load and chat requests get 503 with Retry-After;
        200 once loaded; /health/live is 200 throughout."""
        release = anyio.Event()

        class SlowLoad(FunctionBackend):
            async def load(self) -> None:
                await release.wait()
                await super().load()

        pipeline = pipeline_of(
            Coder(backends=[SlowLoad(echo("coding"), name="c")]),
            Talker(backends=[FunctionBackend(echo("t"))]),
        )
        async with serving(pipeline, wait_ready=False) as base, httpx.AsyncClient(base_url=base) as h:
            assert (await h.get("/health/live")).status_code == 200
            loading = await h.get("/health/ready")
            refused = await h.post(
                "/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)}
            )
            release.set()
            for _ in range(500):
                if (await h.get("/health/ready")).status_code == 200:
                    break
                await anyio.sleep(0.02)
            answered = await h.post(
                "/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)}
            )
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert refused.status_code == 503 and refused.headers["x-should-retry"] == "true"
        assert answered.status_code == 200

    async def test_metrics(self) -> None:
        async with serving(simple()) as base, httpx.AsyncClient(base_url=base) as h:
            await h.post("/v1/chat/completions", json={"model": "moe-agents", "messages": user(CODE_Q)})
            await h.post("/v1/chat/completions", json={"model": "moe-agents", "messages": []})
            text = (await h.get("/metrics")).text
        assert 'moe_agents_requests_total{status="ok"} 1.0' in text
        assert 'moe_agents_selected_total{expert="coding",mode=' in text
        assert 'moe_agents_expert_calls_total{expert="coding",outcome="ok"} 1.0' in text
        assert 'moe_agents_tokens_total{expert="coding",kind="prompt"}' in text
        assert "moe_agents_request_seconds_bucket" in text and "moe_agents_route_seconds_count 1.0" in text
        assert "moe_agents_in_flight 0.0" in text
        assert 'moe_agents_breaker_open{backend="c"} 0.0' in text

    async def test_data_url_attachments_reach_the_expert_and_remote_urls_are_refused(self) -> None:
        seen: list[object] = []

        def look(messages: Sequence[Message]) -> str:
            seen.append(messages[-1]["content"])
            return "a picture"

        pipeline = pipeline_of(
            Seer(backends=[FunctionBackend(look, name="v", modalities=["image"])]),
            Talker(backends=[FunctionBackend(echo("t"), name="t")]),
        )
        png = base64.b64encode(b"\x89PNG fake").decode()

        def ask(url: str) -> list[dict[str, object]]:
            parts = [
                {"type": "text", "text": "what is in this picture"},
                {"type": "image_url", "image_url": {"url": url}},
            ]
            return [{"role": "user", "content": parts}]

        async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
            inline = await h.post(
                "/v1/chat/completions",
                json={"model": "moe-agents", "messages": ask(f"data:image/png;base64,{png}")},
            )
            remote = await h.post(
                "/v1/chat/completions",
                json={"model": "moe-agents", "messages": ask("https://example.com/cat.png")},
            )
            garbled = await h.post(
                "/v1/chat/completions",
                json={"model": "moe-agents", "messages": ask("data:image/png;base64,%%%")},
            )
        assert inline.status_code == 200 and inline.json()["choices"][0]["message"]["content"] == "a picture"
        assert inline.headers["x-moe-experts"] == "seer" and seen
        assert remote.status_code == 400 and "allow_remote_media" in remote.json()["error"]["message"]
        assert garbled.status_code == 400 and "base64" in garbled.json()["error"]["message"]

    async def test_context_and_session_from_messages(self) -> None:
        """Earlier turns and the system message become the query's context."""
        backend = FunctionBackend(echo("coding"), name="c")
        pipeline = pipeline_of(Coder(backends=[backend]), Talker(backends=[FunctionBackend(echo("t"))]))
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "my function is slow"},
            {"role": "assistant", "content": "show it"},
            {"role": "user", "content": CODE_Q},
        ]
        async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
            r = await h.post("/v1/chat/completions", json={"model": "moe-agents", "messages": messages})
        assert r.status_code == 200
        prompt = json.dumps([m["content"] for m in backend.calls[-1].messages])
        assert "system: be brief" in prompt and "assistant: show it" in prompt

    async def test_unknown_paths_and_bad_json_use_the_envelope(self) -> None:
        async with serving(simple()) as base, httpx.AsyncClient(base_url=base) as h:
            missing = await h.get("/v1/nothing")
            bad = await h.post(
                "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
            )
            page = await h.get("/")
        assert missing.status_code == 404 and "error" in missing.json()
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
        assert page.status_code == 200 and "<html" in page.text.lower()


def _trusting_router(store: TrustStore) -> Router:
    return Router(RouterConfig(top_k=1), encoder=HashingEncoder(), trust=store)


def test_an_open_server_binds_to_loopback_only() -> None:
    with pytest.raises(ConfigError, match="--allow-open"):
        serve(simple(), host="0.0.0.0", port=1)


async def test_metrics_without_the_server() -> None:
    """A library user gets the same series from ``PipelineMetrics`` alone."""
    pipeline = simple()
    metrics = PipelineMetrics(pipeline)
    await pipeline.run(CODE_Q)
    with pytest.raises(InvalidInput):  # counted as its error type
        await pipeline.run("")
    text = metrics.render().decode()
    assert 'moe_agents_requests_total{status="ok"} 1.0' in text
    assert 'moe_agents_requests_total{status="InvalidInput"} 1.0' in text


async def test_sampling_settings_reach_the_backend() -> None:
    """``max_tokens``, ``temperature``, ``top_p`` and ``stop`` override the expert's settings."""
    backend = FunctionBackend(echo("coding"), name="c")
    pipeline = pipeline_of(Coder(backends=[backend]), Talker(backends=[FunctionBackend(echo("t"))]))
    async with serving(pipeline) as base:
        await client(base).chat.completions.create(
            model="moe-agents/coding",
            messages=user(CODE_Q),
            max_tokens=7,
            temperature=0.2,
            top_p=0.9,
            stop="END",
        )
        with pytest.raises(openai.BadRequestError, match="temperature"):
            await client(base).chat.completions.create(
                model="moe-agents", messages=user(CODE_Q), temperature=5
            )
    settings = backend.calls[-1].settings
    assert settings is not None
    assert (settings.max_tokens, settings.temperature, settings.top_p, settings.stop) == (
        7,
        0.2,
        0.9,
        ("END",),
    )


async def test_a_forced_expert_that_fails_is_not_replaced() -> None:
    """``moe-agents/<expert>`` asks that expert alone: its failure is a 502, not another's answer."""

    def broken(messages: Sequence[Message]) -> str:
        raise RuntimeError("down")

    talk = FunctionBackend(echo("talk"), name="t")
    pipeline = pipeline_of(Coder(backends=[FunctionBackend(broken, name="c")]), Talker(backends=[talk]))
    async with serving(pipeline) as base:
        with pytest.raises(openai.InternalServerError, match="coding"):
            await client(base, max_retries=0).chat.completions.create(
                model="moe-agents/coding", messages=user(CODE_Q)
            )
    assert talk.calls == []


async def test_cooling_down_experts_are_503_with_retry_after() -> None:
    """Every expert's breaker is open past the deadline: a 503 at once, saying when to retry."""
    from moe_agents.reliability import BreakerPolicy, GuardedBackend, RetryPolicy

    def broken(messages: Sequence[Message]) -> str:
        raise RuntimeError("down")

    guard = GuardedBackend(
        FunctionBackend(broken, name="b"),
        retry=RetryPolicy(attempts=1),
        breaker=BreakerPolicy(failures=1, cooldown_s=30),
    )
    pipeline = pipeline_of(Coder(backends=[guard]), Talker(backends=[guard]), request_timeout_s=5)
    async with serving(pipeline) as base, httpx.AsyncClient(base_url=base) as h:
        body = {"model": "moe-agents", "messages": user(CODE_Q)}
        first = await h.post("/v1/chat/completions", json=body)
        second = await h.post("/v1/chat/completions", json=body)
    assert first.status_code == 502
    assert second.status_code == 503 and second.json()["error"]["code"] == "cooling_down"
    assert 1 <= int(second.headers["retry-after"]) <= 30
