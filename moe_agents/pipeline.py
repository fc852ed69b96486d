"""The pipeline: route → fan out to the chosen experts → aggregate → feedback."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.abc import TaskGroup

from .aggregators import Aggregation, Aggregator, EnsembleAggregator, WeightedAggregator
from .backends.base import Backend, ChunkCallback
from .budget import BudgetConfig, SessionBudgets
from .continuity import continuation_of
from .errors import (
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    DeadlineExceeded,
    ExpertsFailed,
    InvalidInput,
    MoEError,
    Overloaded,
    RunError,
    UnknownResult,
)
from .experts.base import Expert
from .inputs import InputLimits, check_query
from .logging import get_logger
from .management.events import EventBus
from .management.manager import ManagementConfig, Manager
from .management.ranking import ExpertRank, RankingWeights, rank_experts
from .memory import MemoryStore, ProvidedContext
from .reliability import GuardedBackend
from .routing.permission import Preset
from .routing.router import Router
from .routing.trust import POOLED
from .types import Answer, ExpertScore, Query, Result, Selection, Usage

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["AnswerStream", "Pipeline"]

log = get_logger(__name__)

_FALLBACK_MARKER = "\n\n[{failed} failed mid-answer; continuing with {next}]\n\n"


@dataclass(slots=True)
class _Run:
    """Mutable bookkeeping of one run: the experts it started with (a request finishes on them
    even if the registry changes meanwhile) and what every expert call produced."""

    experts: Mapping[str, Expert]
    limiters: Mapping[str, anyio.CapacityLimiter]
    answers: dict[str, Answer] = field(default_factory=dict)
    context: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (text, budget, turns given): experts that get the same context share one recall
    provided: dict[tuple[str, int, int], ProvidedContext] = field(default_factory=dict)
    errors: dict[str, RunError] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


class _Emitter:
    """Forwards chunks to the stream's sink and remembers whether any were sent."""

    def __init__(self, sink: ChunkCallback) -> None:
        self.sink = sink
        self.emitted = False

    async def __call__(self, text: str) -> None:
        self.emitted = True
        await self.sink(text)


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

    With a trust store on the router (``Router(trust=TrustStore(...))``), ``feedback`` and the
    experts' automatic ``scorer`` update each answering expert's trust in the query's context.

    Use it as an async context manager so that models load once up front and are released after;
    ``run`` also works without it (models then load on first use).
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
    ) -> None:
        if not experts:
            raise ConfigError("a pipeline needs at least one expert")
        names = [e.name for e in experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate expert names: {dupes}")
        self._experts: dict[str, Expert] = {e.name: e for e in experts}
        self.router = router or Router()
        self.aggregator = aggregator or WeightedAggregator()
        synth = getattr(self.aggregator, "synthesis_expert", None)
        if (
            isinstance(self.aggregator, EnsembleAggregator)
            and synth is not None
            and synth not in self._experts
        ):
            raise ConfigError(
                f"synthesis_expert {synth!r} is not an expert of this pipeline; experts: {names}"
            )
        fallback = self.router.config.fallback_expert
        if fallback is not None and fallback not in self._experts:
            raise ConfigError(f"fallback_expert {fallback!r} is not an expert of this pipeline: {names}")
        if self.router.config.top_k > len(experts):
            raise ConfigError(
                f"router.top_k is {self.router.config.top_k} but there are only {len(experts)} experts"
            )
        self._limiters = {e.name: anyio.CapacityLimiter(e.max_load) for e in experts}
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._disabled: dict[str, str] = {}  # name -> why
        self.events = EventBus()
        """Registry changes and other management events (``async with pipeline.events.subscribe()``)."""
        self.manager = Manager(management, self, self.events) if management is not None else None
        for test in management.ab_tests if management is not None else ():
            missing = [v for v in (test.control, test.treatment) if v not in self._experts]
            if missing:
                raise ConfigError(f"A/B test {test.name!r} names unknown experts {missing}; experts: {names}")
        self._keep_results = keep_results
        self.budgets = SessionBudgets(budget or BudgetConfig())
        self.limits = limits or InputLimits()
        if request_timeout_s is not None and request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {max_queue}")
        self.request_timeout_s = request_timeout_s
        self.max_queue = max_queue
        self._slots = anyio.CapacityLimiter(max_concurrency) if max_concurrency is not None else None
        self.memory = memory
        self._waiting = 0
        self._task_group: TaskGroup | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, *, backends: Mapping[str, Backend] | None = None) -> Pipeline:
        """Builds a pipeline from a YAML file (see ``moe_agents.config``).

        Args:
            path: the YAML file.
            backends: backend objects by name; they replace or supply the file's named backends.
        """
        from .config import load_pipeline

        return load_pipeline(path, backends=backends)

    @property
    def experts(self) -> Mapping[str, Expert]:
        """The experts by name."""
        return self._experts

    def rank(self) -> list[ExpertRank]:
        """The experts ranked as in the seed plan (``0.5·success + 0.3·load headroom +
        0.2·latency``, plus ``0.5·trust`` when a trust store is kept: pooled over contexts, the
        prior for experts without feedback; weights from ``management.ranking``)."""
        weights = self.manager.config.ranking if self.manager is not None else RankingWeights()
        trust = None
        if self.router.trust is not None:
            names = list(self._experts)
            values, _ = self.router.trust.lookup(names, POOLED)  # the prior where there is no feedback
            trust = {n: float(t) for n, t in zip(names, values, strict=True)}
        return rank_experts(list(self._experts.values()), weights, trust=trust)

    def active_experts(self) -> list[Expert]:
        """The experts routing may choose now: registered, not disabled, not an A/B treatment, not
        unhealthy."""
        out = self._excluded()
        return [e for name, e in self._experts.items() if name not in out]

    def _excluded(self) -> dict[str, str]:
        """Experts kept out of routing now, with why."""
        out = {name: f"disabled: {why}" for name, why in self._disabled.items()}
        if self.manager is not None:
            out.update(self.manager.excluded())
        return out

    def register(self, expert: Expert) -> None:
        """Adds an expert while the pipeline runs: new requests may be routed to it; the gate is
        refitted (or loaded from its cache) on the next route, since the exemplars changed.

        Raises:
            ConfigError: an expert with that name exists already.
        """
        if expert.name in self._experts:
            raise ConfigError(f"an expert named {expert.name!r} exists already; use replace()")
        self._experts = {**self._experts, expert.name: expert}
        self._limiters = {**self._limiters, expert.name: anyio.CapacityLimiter(expert.max_load)}
        self._changed("expert.registered", expert.name)

    def remove(self, name: str) -> Expert:
        """Removes an expert: requests already running finish with it, new ones never see it.

        Raises:
            ConfigError: no such expert, it is the last one, or the router or aggregator names it.
        """
        self._require(name)
        if len(self._experts) == 1:
            raise ConfigError(f"cannot remove {name!r}: a pipeline needs at least one expert")
        if name in (self.router.config.fallback_expert, getattr(self.aggregator, "synthesis_expert", None)):
            raise ConfigError(f"cannot remove {name!r}: the router or the aggregator names it")
        expert = self._experts[name]
        self._experts = {k: v for k, v in self._experts.items() if k != name}
        self._limiters = {k: v for k, v in self._limiters.items() if k != name}
        self._disabled.pop(name, None)
        self._changed("expert.removed", name)
        return expert

    def replace(self, name: str, expert: Expert) -> Expert:
        """Swaps in a new expert under ``name`` (e.g. another model or prompt); requests already
        running finish on the old one. Returns the old one.

        Raises:
            ConfigError: no such expert, or ``expert.name`` is not ``name``.
        """
        self._require(name)
        if expert.name != name:
            raise ConfigError(f"replace({name!r}, ...) got an expert named {expert.name!r}")
        old = self._experts[name]
        self._experts = {**self._experts, name: expert}
        self._limiters = {**self._limiters, name: anyio.CapacityLimiter(expert.max_load)}
        self._changed("expert.replaced", name)
        return old

    def disable(self, name: str, reason: str = "") -> None:
        """Takes an expert out of routing without removing it (``enable`` brings it back)."""
        self._require(name)
        if name not in self._disabled:
            if len(self.active_experts()) == 1:
                raise ConfigError(f"cannot disable {name!r}: it is the last expert routing may choose")
            self._disabled[name] = reason or "disabled"
            self._changed("expert.disabled", name, reason=reason)

    def enable(self, name: str) -> None:
        """Puts a disabled expert back into routing."""
        self._require(name)
        if name in self._disabled:
            del self._disabled[name]
            self._changed("expert.enabled", name)

    @property
    def disabled(self) -> frozenset[str]:
        """Experts taken out of routing."""
        return frozenset(self._disabled)

    def _require(self, name: str) -> None:
        if name not in self._experts:
            raise ConfigError(f"no expert named {name!r}; experts: {list(self._experts)}")

    def _changed(self, kind: str, name: str, **data: str) -> None:
        self.events.publish(kind, expert=name, experts=list(self._experts), **data)

    @property
    def backends(self) -> list[Backend]:
        """Every distinct backend of every expert (a backend shared by experts appears once), as
        configured: without the retry/circuit guard experts put in front of them."""
        seen: dict[int, Backend] = {}
        for expert in self._experts.values():
            for backend in expert.backends:
                inner = backend.inner if isinstance(backend, GuardedBackend) else backend
                seen.setdefault(id(inner), inner)
        return list(seen.values())

    async def __aenter__(self) -> Self:
        backends = self.backends
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(backend.load)
            for expert in self._experts.values():
                tg.start_soon(expert.load)
            tg.start_soon(self.router.prepare, list(self._experts.values()))
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
            for expert in self._experts.values():
                await expert.unload()
            for backend in self.backends:
                await backend.unload()

    async def route(self, query: Query | str, *, preset: Preset | str = Preset.WAKE) -> Selection:
        """Chooses experts for ``query`` without calling any of them (see ``run`` for ``preset``)."""
        return await self._route(self._query(query), preset)

    async def run(self, query: Query | str, *, preset: Preset | str = Preset.WAKE) -> Result:
        """Answers ``query``.

        Args:
            query: the query (a ``str`` is ``Query(text)``).
            preset: the metabolic state: ``wake`` (top-k as configured), ``focus`` (the single
                most trusted expert), ``rest``/``crisis`` (the single cheapest capable expert).

        Raises:
            InvalidInput: the query is empty, too long, has control characters or invalid
                Unicode, or an attachment is missing, unreadable or too large.
            NoCapableExpert: no expert accepts the query's attachments.
            BackendUnavailable: every capable expert is cooling down past the deadline.
            ExpertsFailed: every expert tried failed; it holds each error.
            Overloaded: ``max_concurrency`` requests are running and ``max_queue`` are waiting.
            DeadlineExceeded: the request ran past ``request_timeout_s``.
        """
        q = self._query(query)
        with self._deadline():  # the deadline counts the wait for a slot too
            async with self._admitted():
                return await self._run(q, None, preset=preset)

    def stream(self, query: Query | str, *, preset: Preset | str = Preset.WAKE) -> AnswerStream:
        """Answers ``query`` as an async iterator of text chunks, sent as they are generated.

        A single chosen expert, and the synthesis step of ``ensemble``, stream token by token;
        strategies that must see every answer first send the merged text once. After the last
        chunk, ``stream.result`` holds the ``Result``. Needs ``async with pipeline:``.
        """
        if self._task_group is None:
            raise MoEError("pipeline.stream() needs an open pipeline: use `async with pipeline:`")
        q = self._query(query)
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=64)
        stream = AnswerStream(receive)
        self._task_group.start_soon(self._produce, q, send, stream, Preset(preset))
        return stream

    async def feedback(self, result_id: str, score: float) -> None:
        """Records a quality score in [0, 1] for a result's experts (and in the trust store, in
        the result's context, when the router keeps trust).

        Raises:
            UnknownResult: the id is not one of the last ``keep_results`` results.
            InvalidInput: the score is outside [0, 1].
        """
        if not isinstance(score, int | float) or not 0.0 <= float(score) <= 1.0 or math.isnan(score):
            raise InvalidInput(f"feedback score must be a number in [0, 1], got {score!r}")
        result = self._results.get(result_id)
        if result is None:
            raise UnknownResult(result_id)
        for name in result.answers:
            if (expert := self._experts.get(name)) is not None:  # it may have been removed since
                expert.stats.record_feedback(float(score))
        await self._record_trust(list(result.answers), result.selection.context, float(score), result.id)
        if self.memory is not None:
            memory = self.memory
            await anyio.to_thread.run_sync(lambda: memory.record_feedback(result_id, float(score)))
        if self.manager is not None and "ab" in result.metadata:
            self.manager.record(result.metadata["ab"], float(score))
        log.info("pipeline.feedback", result_id=result_id, score=float(score), experts=list(result.answers))

    async def _record_trust(
        self,
        experts: Sequence[str],
        context: str | None,
        score: float,
        result_id: str,
        source: str = "feedback",
    ) -> None:
        store = self.router.trust
        if store is None or context is None or not experts:
            return

        def write() -> None:
            for name in experts:
                store.record(name, context, score, source=source, result_id=result_id)

        await anyio.to_thread.run_sync(write)

    async def _route(self, query: Query, preset: Preset | str) -> Selection:
        session = query.session_id
        allowed = None
        if self.budgets.config.enabled and self.budgets.exhausted(session):
            cheap = self.budgets.config.cheap_price
            allowed = lambda e: e.price <= cheap  # noqa: E731
            log.info(
                "pipeline.budget_exhausted", session=session, spent=self.budgets.spent(session).to_dict()
            )
        while True:
            excluded = self._excluded()  # once per attempt: the same view for routing and the notes
            active = [e for name, e in self._experts.items() if name not in excluded]
            try:
                selection = await self.router.route(query, active, preset=preset, allowed=allowed)
                if not excluded:
                    return selection
                notes = {n: ExpertScore(note=why) for n, why in excluded.items()}
                return replace(selection, scores={**selection.scores, **notes})
            except BackendUnavailable as exc:  # every capable expert is cooling down: wait for one
                wait = exc.recovers_at - time.monotonic()
                log.info("pipeline.waiting_for_recovery", s=round(wait, 3))
                await anyio.sleep(max(wait, 0.0) + 0.001)  # past the deadline, the deadline fires

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """Holds one of ``max_concurrency`` slots for the request; ``Overloaded`` when every slot
        is taken and ``max_queue`` requests are waiting already."""
        if self._slots is None:
            yield
            return
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            if self._waiting >= self.max_queue:
                log.warning("pipeline.overloaded", running=self._slots.borrowed_tokens, waiting=self._waiting)
                raise Overloaded(
                    f"overloaded: {self._slots.borrowed_tokens} requests running and {self._waiting} "
                    f"waiting (max_concurrency {int(self._slots.total_tokens)}, max_queue {self.max_queue})"
                ) from None
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[None]:
        """``DeadlineExceeded`` when the block runs past ``request_timeout_s``."""
        if self.request_timeout_s is None:
            yield
            return
        try:
            with anyio.fail_after(self.request_timeout_s):
                yield
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request ran past its deadline of {self.request_timeout_s} s",
                timeout_s=self.request_timeout_s,
            ) from None

    def _query(self, query: Query | str) -> Query:
        if isinstance(query, str):
            query = Query(query)
        elif not isinstance(query, Query):
            raise InvalidInput(f"expected a Query or a str, got {type(query).__name__}")
        check_query(query, self.limits)
        return query

    async def _produce(
        self, query: Query, send: MemoryObjectSendStream[str], stream: AnswerStream, preset: Preset
    ) -> None:
        async with send:
            try:
                with self._deadline():
                    async with self._admitted():
                        stream.result = await self._run(query, send.send, stream, preset=preset)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.info("pipeline.stream_abandoned")
            except Exception as exc:  # handed to the consumer, never lost in the task group
                stream.error = exc

    async def _run(
        self,
        query: Query,
        on_chunk: ChunkCallback | None,
        stream: AnswerStream | None = None,
        *,
        preset: Preset | str = Preset.WAKE,
    ) -> Result:
        start = time.perf_counter()
        experts, limiters = self._experts, self._limiters  # snapshots: the registry copies on write
        selection = await self._route(query, preset)
        assigned: dict[str, str] = {}
        if self.manager is not None:
            selection, assigned = self.manager.assign(selection, query.session_id)
        if stream is not None:
            stream.selection = selection
        run = _Run(experts, limiters)
        run.timings["route"] = time.perf_counter() - start
        emitter = _Emitter(on_chunk) if on_chunk is not None else None
        fan_out = self.aggregator.fan_out
        stream_single = emitter if len(selection.experts) == 1 else None

        async def attempt(name: str, sink: ChunkCallback | None) -> None:
            with contextlib.suppress(RunError):  # recorded in run.errors
                await self._ask(run, name, query, sink)

        t = time.perf_counter()
        if fan_out:
            async with anyio.create_task_group() as tg:
                for name in selection.experts:
                    tg.start_soon(attempt, name, stream_single)
        else:  # the aggregator calls the others itself: one answer to start from, best first
            for name in selection.experts:
                await attempt(name, stream_single)
                if run.answers:
                    break
        if not run.answers:
            await self._fall_back(run, query, selection, emitter if stream_single else None)
        run.timings["experts"] = time.perf_counter() - t
        if not run.answers:
            raise ExpertsFailed(
                f"every expert tried failed: {sorted(run.errors)}", [run.errors[n] for n in run.errors]
            )

        t = time.perf_counter()
        if len(run.answers) == 1 and (fan_out or len(selection.experts) == 1):
            answer = next(iter(run.answers.values()))
        else:
            ordered = {n: run.answers[n] for n in selection.experts if n in run.answers}
            ordered.update(run.answers)  # fallback answers after the selected ones

            async def ask(name: str, q: Query, sink: ChunkCallback | None) -> Answer:
                return await self._ask(run, name, q, sink)

            job = Aggregation(query, selection, ordered, ask, emitter, frozenset(run.errors))
            answer = await self.aggregator.aggregate(job)
        run.timings["aggregate"] = time.perf_counter() - t
        if emitter is not None and not emitter.emitted:
            await emitter(answer.text)
        run.timings["total"] = time.perf_counter() - start

        metadata: dict[str, Any] = {"context": run.context} if run.context else {}
        if assigned:
            metadata["ab"] = assigned
        result = Result(
            uuid.uuid4().hex, answer, selection, run.answers, run.errors, run.timings, run.usage, metadata
        )
        self._remember(result)
        await self._memorise(query, result)
        self.budgets.charge(query.session_id, run.usage)
        await self._score(query, result)
        log.info(
            "pipeline.finished",
            result_id=result.id,
            experts=list(run.answers),
            failed=list(run.errors),
            ms=round(run.timings["total"] * 1000, 2),
            cost_usd=run.usage.cost_usd,
        )
        return result

    async def _fall_back(
        self, run: _Run, query: Query, selection: Selection, emitter: _Emitter | None
    ) -> None:
        """Tries the experts that were not selected, best score first, until one answers."""
        rest = sorted(
            (
                (name, score.permission)
                for name, score in selection.scores.items()
                if name not in run.errors and name not in selection.experts and score.expertise is not None
            ),
            key=lambda p: p[1],
            reverse=True,
        )
        for name, _ in rest:
            if emitter is not None and emitter.emitted:
                await emitter(_FALLBACK_MARKER.format(failed=", ".join(run.errors), next=name))
            log.info("pipeline.fallback", expert=name, failed=list(run.errors))
            try:
                await self._ask(run, name, query, emitter)
                return
            except RunError:
                continue

    async def _ask(self, run: _Run, name: str, query: Query, on_chunk: ChunkCallback | None) -> Answer:
        """Calls one expert with its deadline and capacity; records the answer or the error."""
        expert = run.experts.get(name)
        if expert is None:
            raise RunError(f"no expert named {name!r}; experts: {list(run.experts)}", expert=name)
        start = time.perf_counter()
        error: RunError | None = None
        query = await self._with_memory(run, expert, query)
        try:
            with anyio.fail_after(expert.timeout_s):
                async with run.limiters[name]:
                    with expert.stats.running():
                        answer = await expert.process(query, on_chunk=on_chunk)
        except TimeoutError as exc:
            error = BackendTimeout(
                f"expert {name!r} timed out after {expert.timeout_s} s",
                expert=name,
                timeout_s=expert.timeout_s,
            )
            error.__cause__ = exc
        except RunError as exc:
            error = exc
            if error.expert is None:
                error.expert = name
        except Exception as exc:
            error = RunError(f"expert {name!r} failed: {type(exc).__name__}: {exc}", expert=name)
            error.__cause__ = exc
        latency = time.perf_counter() - start
        expert.stats.record(ok=error is None, latency_s=latency)
        if self.manager is not None:
            self.manager.note_call(name, error is None)
        run.timings[f"expert.{name}"] = latency
        if error is not None:
            run.errors[name] = error
            log.warning("expert.failed", expert=name, error=str(error), error_type=type(error).__name__)
            raise error
        run.answers[name] = answer
        run.usage = run.usage + answer.usage
        log.info("expert.answered", expert=name, model=answer.model, ms=round(latency * 1000, 2))
        return answer

    async def _with_memory(self, run: _Run, expert: Expert, query: Query) -> Query:
        """``query`` with the session's recent turns that continue into it (``moe_agents.continuity``)
        and relevant memories as context, within the expert's ``context_tokens``; what was given,
        and why, is kept for ``Result.metadata["context"]``."""
        memory, session = self.memory, query.session_id
        if memory is None or session is None or expert.context_tokens <= 0:
            return query
        cfg, embed = memory.config, self.router.embed
        turns = await anyio.to_thread.run_sync(memory.recent, session)
        vector = await embed(query.text)  # a cache hit: routing embedded it
        decision = await continuation_of(
            turns, expert.name, vector, embed, threshold=cfg.similarity_threshold, same_expert=cfg.same_expert
        )
        given = turns[len(turns) - decision.turns :]
        key = (query.text, expert.context_tokens, decision.turns)
        provided = run.provided.get(key)
        if provided is None:
            same = memory.encoder is not None and memory.encoder.name == self.router.encoder.name
            provided = run.provided[key] = await anyio.to_thread.run_sync(
                lambda: memory.context_for(
                    session, query.text, expert.context_tokens, turns=given, vector=vector if same else None
                )
            )
        run.context[expert.name] = {
            "tokens": provided.tokens,
            "turns": len(provided.turns),
            "memories": [m.id for m in provided.memories],
            "reason": decision.reason,
            "similarity": None if decision.similarity is None else round(decision.similarity, 3),
        }
        if not provided.text:
            return query
        extra = f"{provided.text}\n\n{query.context}" if query.context else provided.text
        return query.with_context(extra)

    async def _memorise(self, query: Query, result: Result) -> None:
        """Remembers the exchange of a query that belongs to a session."""
        memory, session = self.memory, query.session_id
        if memory is None or session is None:
            return
        votes = result.answer.metadata.get("votes")
        conflict = 1.0 if isinstance(votes, Mapping) and len(votes) > 1 else 0.0
        confidence = result.selection.weights[0] if result.selection.weights else 0.5
        await anyio.to_thread.run_sync(
            lambda: memory.add_exchange(
                session,
                query.text,
                result.answer.text,
                experts=list(result.answers),
                result_id=result.id,
                confidence=confidence,
                conflict=conflict,
            )
        )

    async def _score(self, query: Query, result: Result) -> None:
        """Runs each answering expert's automatic ``scorer`` and records its score as trust."""
        for name, answer in result.answers.items():
            expert = self._experts.get(name)
            scorer = expert.scorer if expert is not None else None
            if scorer is None:
                continue
            try:
                score = await anyio.to_thread.run_sync(scorer, query, answer)
            except Exception as exc:  # a broken scorer must not break answering
                log.warning("scorer.failed", expert=name, error=f"{type(exc).__name__}: {exc}")
                continue
            if score is None:
                continue
            if not isinstance(score, int | float) or not 0.0 <= float(score) <= 1.0:
                log.warning("scorer.invalid", expert=name, score=repr(score))
                continue
            log.info("scorer.scored", expert=name, score=float(score), result_id=result.id)
            await self._record_trust(
                [name], result.selection.context, float(score), result.id, source="scorer"
            )

    def _remember(self, result: Result) -> None:
        self._results[result.id] = result
        while len(self._results) > self._keep_results:
            self._results.popitem(last=False)

    def __repr__(self) -> str:
        return f"Pipeline(experts={list(self._experts)}, aggregator={self.aggregator!r})"


class AnswerStream:
    """Text chunks of one answer as they are generated.

    ``selection`` is set once the router has chosen (before the first chunk), ``result`` after the
    last chunk.

    Iterate it to the end, or close it (``await stream.aclose()`` or ``async with``) to stop early.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[str]) -> None:
        self._receive = receive
        self.selection: Selection | None = None
        self.result: Result | None = None
        self.error: Exception | None = None

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            if self.error is not None:
                error, self.error = self.error, None
                raise error from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stops the stream; the rest of the answer is not generated."""
        self._receive.close()

    async def __aenter__(self) -> AnswerStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def text(self) -> str:
        """Reads the stream to the end and returns the whole text."""
        return "".join([chunk async for chunk in self])
