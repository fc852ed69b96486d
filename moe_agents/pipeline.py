"""The pipeline: route → fan out to the chosen experts → aggregate → feedback.

``Pipeline`` is the façade over small parts, each with one job (``moe_agents.core``): the roster
keeps the experts, their limiters and who may be routed to; admission bounds concurrent requests
and their deadline; execution asks the chosen experts and merges their answers; observers
(memory, trust and scorers, statistics, budgets, A/B tests) learn from each result and feedback.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .aggregators import Aggregator, WeightedAggregator
from .backends.base import Backend, ChunkCallback
from .budget import BudgetConfig, SessionBudgets
from .core.admission import Admission
from .core.conversation import Conversation
from .core.execution import Executor, RunState
from .core.observers import BudgetRecorder, Observer, StatsRecorder, TrustRecorder
from .core.roster import Roster
from .core.routing import choose
from .core.stream import AnswerStream
from .core.validation import check_references
from .errors import InvalidInput, MoEError, UnknownResult, check_unit
from .experts.base import Expert
from .experts.policy import ExpertPolicy
from .inputs import InputLimits, check_query
from .logging import get_logger
from .management.events import EventBus
from .management.manager import ManagementConfig, Manager
from .management.ranking import ExpertRank, RankingWeights, rank_experts
from .memory import MemoryStore
from .reliability import GuardedBackend
from .routing.permission import Preset
from .routing.router import Router
from .routing.trust import POOLED
from .types import Query, Result, Selection

__all__ = ["AnswerStream", "Pipeline"]

log = get_logger(__name__)


class Pipeline:
    """A mixture of experts: a router picks experts, they answer concurrently, an aggregator merges.

    Args:
        experts: the experts, with unique names.
        router: chooses experts per query (default: ``Router()`` with the bundled encoder, top-1).
        aggregator: merges answers (default: ``WeightedAggregator()``).
        keep_results: how many recent results are kept for ``feedback``.
        budget: per-session cost budgets; a session that has spent its budget is answered only by
            experts whose ``price`` is at most ``budget.cheap_price``.
        limits: bounds on query length and attachments (bad input is an ``InvalidInput``).
        request_timeout_s: deadline of a whole request (``DeadlineExceeded``); ``None``: none.
        max_concurrency: most requests answered at once; ``None``: no limit.
        max_queue: requests that may wait for a slot when ``max_concurrency`` are running; one
            more fails at once with ``Overloaded`` (memory stays bounded).
        memory: conversation memory: for a query with a ``session_id``, each expert gets the recent
            turns and the most relevant memories (within its ``context_tokens``) before the
            request; every exchange and its feedback are remembered.
        management: A/B tests, health checks, auto-scaling and removal of underperformers
            (``moe_agents.management.manager``), run while the pipeline is open.
        observers: more parts that learn from every result, failure and feedback
            (``moe_agents.core.observers.Observer``; e.g. ``moe_agents.metrics.PipelineMetrics``),
            told after the built-in ones, in order.
        references_checked: the caller has run ``core.validation.check_references`` on these
            experts already, so it is not run again (the YAML builder checks before it opens any
            store, so that it can name the file and line).

    With a trust store on the router (``Router(trust=TrustStore(...))``), ``feedback`` and the
    experts' automatic ``scorer`` update each answering expert's trust in the query's context.

    Use it as an async context manager so that models load once up front and are released after;
    ``run`` also works without it (models then load on first use).

    Raises:
        ConfigError: no experts, duplicate names, a name the router, the aggregator or an A/B test
            uses is not an expert, ``top_k`` exceeds the experts, or a bound is out of range.
    """

    def __init__(
        self,
        experts: Sequence[Expert],
        *,
        router: Router | None = None,
        aggregator: Aggregator | None = None,
        keep_results: int = 1024,
        budget: BudgetConfig | None = None,
        limits: InputLimits | None = None,
        request_timeout_s: float | None = None,
        max_concurrency: int | None = None,
        max_queue: int = 0,
        memory: MemoryStore | None = None,
        management: ManagementConfig | None = None,
        observers: Sequence[Observer] = (),
        references_checked: bool = False,
    ) -> None:
        self.router = router or Router()
        self.aggregator = aggregator or WeightedAggregator()
        ab_tests = management.ab_tests if management is not None else ()
        config = self.router.config
        if not references_checked:
            check_references(
                [e.name for e in experts],
                top_k=config.top_k,
                fallback_expert=config.fallback_expert,
                referenced=self.aggregator.referenced_experts,
                ab_tests=ab_tests,
            )
        self.admission = Admission(
            request_timeout_s=request_timeout_s, max_concurrency=max_concurrency, max_queue=max_queue
        )
        pinned = {
            name: f"aggregation.{option}" for option, name in self.aggregator.referenced_experts.items()
        }
        if config.fallback_expert is not None:
            pinned[config.fallback_expert] = "router.fallback_expert"
        for test in ab_tests:
            pinned.update(dict.fromkeys(test.variants, f"A/B test {test.name!r}"))
        self.events = EventBus()
        """Registry changes and other management events (``async with pipeline.events.subscribe()``)."""
        self.roster = Roster(experts, self.events, pinned=pinned)
        """The experts, their capacity and who routing may choose (``moe_agents.core.roster``)."""
        self.manager = Manager(management, self.roster, self.events) if management is not None else None
        self.budgets = SessionBudgets(budget or BudgetConfig())
        self.limits = limits or InputLimits()
        self.memory = memory
        conversation = Conversation(memory, self.router) if memory is not None else None
        self._executor = Executor(
            prepare=conversation.prepare if conversation is not None else None,
            on_call=self.manager.note_call if self.manager is not None else None,
        )
        built_in: list[Observer] = [
            StatsRecorder(lambda: self.roster.experts),
            TrustRecorder(lambda: self.router.trust, lambda: self.roster.experts),
            BudgetRecorder(self.budgets),
        ]
        if conversation is not None:
            built_in.insert(0, conversation)
        if self.manager is not None:
            built_in.append(self.manager)
        self._observers = [*built_in, *observers]
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._keep_results = keep_results
        self._task_group: TaskGroup | None = None

    @property
    def request_timeout_s(self) -> float | None:
        """The deadline of a whole request (``None``: none)."""
        return self.admission.request_timeout_s

    @property
    def max_queue(self) -> int:
        """Requests that may wait for a slot."""
        return self.admission.max_queue

    @property
    def experts(self) -> Mapping[str, Expert]:
        """The experts by name."""
        return self.roster.experts

    @property
    def disabled(self) -> frozenset[str]:
        """Experts taken out of routing."""
        return self.roster.disabled

    def active_experts(self) -> list[Expert]:
        """The experts routing may choose now: registered, not disabled, not an A/B treatment, not
        unhealthy."""
        return self.roster.active()

    def register(self, expert: Expert) -> None:
        """Adds an expert while the pipeline runs: new requests may be routed to it; the gate is
        refitted (or loaded from its cache) on the next route, since the exemplars changed.

        Raises:
            ConfigError: an expert with that name exists already.
        """
        self.roster.register(expert)

    def remove(self, name: str) -> Expert:
        """Removes an expert: requests already running finish with it, new ones never see it.

        Raises:
            ConfigError: no such expert, it is the last one, or the router, the aggregator or an
                A/B test names it.
        """
        return self.roster.remove(name)

    def replace(self, name: str, expert: Expert) -> Expert:
        """Swaps in a new expert under ``name`` (e.g. another model or prompt); requests already
        running finish on the old one. Returns the old one.

        Raises:
            ConfigError: no such expert, or ``expert.name`` is not ``name``.
        """
        return self.roster.replace(name, expert)

    def disable(self, name: str, reason: str = "") -> None:
        """Takes an expert out of routing without removing it (``enable`` brings it back).

        Raises:
            ConfigError: no such expert, or it is the last one routing may choose.
        """
        self.roster.disable(name, reason)

    def enable(self, name: str) -> None:
        """Puts a disabled expert back into routing."""
        self.roster.enable(name)

    def set_policy(self, name: str, policy: ExpertPolicy) -> None:
        """Gives an expert a new ``ExpertPolicy`` (capacity, deadline, price, scorer, memory
        context) from its next call on; a new ``max_load`` resizes its limiter at once.

        Raises:
            ConfigError: no such expert.
        """
        self.roster.set_policy(name, policy)

    def observe(self, observer: Observer) -> None:
        """Adds an observer: it is told of every result, failure and feedback from now on."""
        self._observers.append(observer)

    def result(self, result_id: str) -> Result:
        """One of the last ``keep_results`` results.

        Raises:
            UnknownResult: the id is not one of them.
        """
        result = self._results.get(result_id)
        if result is None:
            raise UnknownResult(result_id)
        return result

    def rank(self) -> list[ExpertRank]:
        """The experts ranked as in the seed plan (``0.5·success + 0.3·load headroom +
        0.2·latency``, plus ``0.5·trust`` when a trust store is kept: pooled over contexts, the
        prior for experts without feedback; weights from ``management.ranking``)."""
        weights = self.manager.config.ranking if self.manager is not None else RankingWeights()
        experts = self.roster.experts
        trust = None
        if self.router.trust is not None:
            names = list(experts)
            values, _ = self.router.trust.lookup(names, POOLED)  # the prior where there is no feedback
            trust = {n: float(t) for n, t in zip(names, values, strict=True)}
        return rank_experts(list(experts.values()), weights, trust=trust)

    @property
    def backends(self) -> list[Backend]:
        """Every distinct backend of every expert (a backend shared by experts appears once), as
        configured: without the retry/circuit guard experts put in front of them."""
        seen: dict[int, Backend] = {}
        for expert in self.roster.experts.values():
            for backend in expert.backends:
                inner = backend.inner if isinstance(backend, GuardedBackend) else backend
                seen.setdefault(id(inner), inner)
        return list(seen.values())

    async def __aenter__(self) -> Self:
        backends, experts = self.backends, list(self.roster.experts.values())
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(backend.load)
            for expert in experts:
                tg.start_soon(expert.load)
            tg.start_soon(self.router.prepare, experts)
        log.info(
            "pipeline.loaded", backends=[b.name for b in backends], s=round(time.perf_counter() - start, 3)
        )
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if self.manager is not None:
            self._task_group.start_soon(self.manager.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()  # unfinished streams end with the pipeline
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None
        with anyio.CancelScope(shield=True):
            for expert in self.roster.experts.values():
                await expert.unload()
            for backend in self.backends:
                await backend.unload()

    async def route(
        self, query: Query | str, *, preset: Preset | str = Preset.WAKE, expert: str | None = None
    ) -> Selection:
        """Chooses experts for ``query`` without calling any of them (see ``run`` for ``preset``
        and ``expert``)."""
        return await choose(self.router, self.roster, self.budgets, self._query(query), preset, expert)

    async def run(
        self, query: Query | str, *, preset: Preset | str = Preset.WAKE, expert: str | None = None
    ) -> Result:
        """Answers ``query``.

        Args:
            query: the query (a ``str`` is ``Query(text)``).
            preset: the metabolic state: ``wake`` (top-k as configured), ``focus`` (the single
                most trusted expert), ``rest``/``crisis`` (the single cheapest capable expert).
            expert: ask this expert alone (selection mode ``forced``): the router still scores
                every candidate, but no other expert is tried if it fails (``ExpertsFailed``).

        Raises:
            InvalidInput: the query is empty, too long, has control characters or invalid
                Unicode, or an attachment is missing, unreadable or too large.
            NoCapableExpert: no expert accepts the query's attachments (or the forced ``expert``
                is unknown, out of routing, or cannot take them).
            BudgetExhausted: the session spent its budget and no expert is cheap enough.
            BackendUnavailable: every capable expert is cooling down past the deadline.
            ExpertsFailed: every expert tried failed; it holds each error.
            Overloaded: ``max_concurrency`` requests are running and ``max_queue`` are waiting.
            DeadlineExceeded: the request ran past ``request_timeout_s``.
        """
        start = time.perf_counter()
        try:
            q = self._query(query)
            async with self.admission.admit():
                return await self._run(q, None, uuid.uuid4().hex, preset=preset, expert=expert)
        except Exception as exc:
            await self._failed(exc, time.perf_counter() - start)
            raise

    def stream(
        self, query: Query | str, *, preset: Preset | str = Preset.WAKE, expert: str | None = None
    ) -> AnswerStream:
        """Answers ``query`` as an async iterator of text chunks, sent as they are generated.

        A single chosen expert, and the synthesis step of ``ensemble``, stream token by token;
        strategies that must see every answer first send the merged text once. ``stream.id`` is
        the result's id from the start; after the last chunk, ``stream.result`` holds the
        ``Result``. Closing the stream early cancels the expert calls still running. Needs
        ``async with pipeline:``. See ``run`` for ``preset`` and ``expert``.
        """
        if self._task_group is None:
            raise MoEError("pipeline.stream() needs an open pipeline: use `async with pipeline:`")
        try:
            q = self._query(query)
        except InvalidInput as exc:
            self._task_group.start_soon(self._failed, exc, 0.0)
            raise
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=64)
        stream = AnswerStream(receive, uuid.uuid4().hex)
        self._task_group.start_soon(self._produce, q, send, stream, Preset(preset), expert)
        return stream

    async def feedback(self, result_id: str, score: float) -> None:
        """Records a quality score in [0, 1] for a result's experts (and in the trust store, in
        the result's context, when the router keeps trust).

        Raises:
            UnknownResult: the id is not one of the last ``keep_results`` results.
            InvalidInput: the score is not a number in [0, 1] (``errors.check_unit``).
        """
        score = check_unit(score, "feedback score")
        result = self.result(result_id)
        for observer in self._observers:
            await observer.on_feedback(result, score)
        log.info("pipeline.feedback", result_id=result_id, score=score, experts=list(result.answers))

    def _query(self, query: Query | str) -> Query:
        if isinstance(query, str):
            query = Query(query)
        elif not isinstance(query, Query):
            raise InvalidInput(f"expected a Query or a str, got {type(query).__name__}")
        check_query(query, self.limits)
        return query

    async def _produce(
        self,
        query: Query,
        send: MemoryObjectSendStream[str],
        stream: AnswerStream,
        preset: Preset,
        expert: str | None,
    ) -> None:
        start = time.perf_counter()
        async with send:
            with stream.scope:  # closing the stream cancels the expert calls still running
                try:
                    async with self.admission.admit():
                        stream.result = await self._run(
                            query, send.send, stream.id, stream, preset=preset, expert=expert
                        )
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    log.info("pipeline.stream_abandoned", result_id=stream.id)
                except Exception as exc:  # handed to the consumer, never lost in the task group
                    stream.error = exc
                    await self._failed(exc, time.perf_counter() - start)
            if stream.scope.cancel_called:
                log.info("pipeline.stream_cancelled", result_id=stream.id)

    async def _failed(self, error: Exception, seconds: float) -> None:
        for observer in self._observers:
            await observer.on_failure(error, seconds)

    async def _run(
        self,
        query: Query,
        on_chunk: ChunkCallback | None,
        result_id: str,
        stream: AnswerStream | None = None,
        *,
        preset: Preset | str = Preset.WAKE,
        expert: str | None = None,
    ) -> Result:
        start = time.perf_counter()
        run = RunState(self.roster.lineup())  # a snapshot: the roster copies on write
        selection = await choose(self.router, self.roster, self.budgets, query, preset, expert)
        assigned: dict[str, str] = {}
        if self.manager is not None:
            selection, assigned = self.manager.assign(selection, query.session_id)
        if stream is not None:
            stream.selection = selection
        run.timings["route"] = time.perf_counter() - start
        answer = await self._executor.answer(query, selection, run, self.aggregator, on_chunk)
        run.timings["total"] = time.perf_counter() - start

        metadata: dict[str, Any] = {"context": run.context} if run.context else {}
        if assigned:
            metadata["ab"] = assigned
        if run.fallbacks:
            metadata["fallbacks"] = list(run.fallbacks)
        result = Result(
            result_id, answer, selection, run.answers, run.errors, run.timings, run.usage, metadata
        )
        self._results[result.id] = result
        while len(self._results) > self._keep_results:
            self._results.popitem(last=False)
        for observer in self._observers:
            await observer.on_result(query, result)
        log.info(
            "pipeline.finished",
            result_id=result.id,
            experts=list(run.answers),
            failed=list(run.errors),
            ms=round(run.timings["total"] * 1000, 2),
            cost_usd=run.usage.cost_usd,
        )
        return result

    def __repr__(self) -> str:
        return f"Pipeline(experts={list(self.roster.experts)}, aggregator={self.aggregator!r})"
