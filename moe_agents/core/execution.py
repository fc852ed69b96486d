"""Execution: one request's expert calls, from the router's selection to the merged answer.

The selected experts are asked concurrently (or one at a time, best first, when the aggregator
chains them), each within its deadline and capacity; a failure is recorded, never cancels the
others. When every selected expert fails, the others are tried by permission until one answers;
then the aggregator merges the answers, asking more experts through ``Aggregation.ask`` if it
needs to.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..aggregators import Aggregation, Aggregator
from ..backends.base import ChunkCallback
from ..errors import BackendTimeout, ExpertsFailed, RunError
from ..experts.base import Expert
from ..logging import get_logger
from ..types import Answer, Query, Selection, Usage
from .roster import Member

__all__ = ["Emitter", "Executor", "Prepare", "RunState"]

log = get_logger(__name__)

_FALLBACK_MARKER = "\n\n[{failed} failed mid-answer; continuing with {next}]\n\n"
_NO_DEADLINE = contextlib.nullcontext()  # reusable; a cancel scope per call costs more than it is worth


@dataclass(slots=True)
class RunState:
    """What one request's expert calls produced so far.

    Attributes:
        lineup: the experts and limiters the request started with (it finishes on them even if
            the roster changes meanwhile).
        answers: answers by expert, in the order they came.
        errors: failures by expert.
        timings: seconds per stage and per expert call (``expert.<name>``).
        usage: the calls' usage, summed.
        context: per expert, what context it was given and why (``Result.metadata["context"]``).
        fallbacks: the experts asked because every selected one failed, in order.
        shared: per-request values that ``Prepare`` hooks share between experts.
    """

    lineup: Mapping[str, Member]
    answers: dict[str, Answer] = field(default_factory=dict)
    errors: dict[str, RunError] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    context: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    shared: dict[Any, Any] = field(default_factory=dict)


Prepare = Callable[[Expert, Query, RunState], Awaitable[Query]]
"""Adapts the query for one expert before it is asked (conversation memory adds context)."""


class Emitter:
    """Forwards chunks to the stream's sink and remembers whether any were sent."""

    def __init__(self, sink: ChunkCallback) -> None:
        self.sink = sink
        self.emitted = False

    async def __call__(self, text: str) -> None:
        self.emitted = True
        await self.sink(text)


class Executor:
    """Asks the experts of one request and merges their answers (see the module docstring).

    Args:
        prepare: adapts the query per expert before each call.
        on_call: told the outcome of every expert call (``(expert, ok)``; health checks).
    """

    def __init__(
        self, *, prepare: Prepare | None = None, on_call: Callable[[str, bool], None] | None = None
    ) -> None:
        self.prepare = prepare
        self.on_call = on_call

    async def answer(
        self,
        query: Query,
        selection: Selection,
        run: RunState,
        aggregator: Aggregator,
        on_chunk: ChunkCallback | None,
    ) -> Answer:
        """The merged answer to ``query`` from the experts of ``selection``; ``run`` records every
        call.

        Raises:
            ExpertsFailed: every expert tried failed; it holds each error.
        """
        emitter = Emitter(on_chunk) if on_chunk is not None else None
        fan_out = aggregator.fan_out
        stream_single = emitter if len(selection.experts) == 1 else None

        async def attempt(name: str, sink: ChunkCallback | None) -> None:
            with contextlib.suppress(RunError):  # recorded in run.errors
                await self.ask(run, name, query, sink)

        t = time.perf_counter()
        if fan_out and len(selection.experts) > 1:
            async with anyio.create_task_group() as tg:
                for name in selection.experts:
                    tg.start_soon(attempt, name, stream_single)
        elif fan_out:  # one expert: no task group to fan out to
            await attempt(selection.experts[0], stream_single)
        else:  # the aggregator calls the others itself: one answer to start from, best first
            for name in selection.experts:
                await attempt(name, stream_single)
                if run.answers:
                    break
        if not run.answers and selection.mode != "forced":  # a forced expert is asked alone
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
                return await self.ask(run, name, q, sink)

            job = Aggregation(query, selection, ordered, ask, emitter, frozenset(run.errors))
            answer = await aggregator.aggregate(job)
        run.timings["aggregate"] = time.perf_counter() - t
        if emitter is not None and not emitter.emitted:
            await emitter(answer.text)
        return answer

    async def ask(self, run: RunState, name: str, query: Query, on_chunk: ChunkCallback | None) -> Answer:
        """Calls one expert with its deadline and capacity; records the answer or the error.

        Raises:
            RunError: the expert failed (also recorded in ``run.errors``).
        """
        member = run.lineup.get(name)
        if member is None:
            raise RunError(f"no expert named {name!r}; experts: {list(run.lineup)}", expert=name)
        expert = member.expert
        start = time.perf_counter()
        error: RunError | None = None
        if self.prepare is not None:
            query = await self.prepare(expert, query, run)
        timeout_s = expert.timeout_s
        try:
            with anyio.fail_after(timeout_s) if timeout_s is not None else _NO_DEADLINE:
                async with member.limiter:
                    with expert.stats.running():
                        answer = await expert.process(query, on_chunk=on_chunk)
        except TimeoutError as exc:
            error = BackendTimeout(
                f"expert {name!r} timed out after {timeout_s} s", expert=name, timeout_s=timeout_s
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
        if self.on_call is not None:
            self.on_call(name, error is None)
        run.timings[f"expert.{name}"] = latency
        if error is not None:
            run.errors[name] = error
            log.warning("expert.failed", expert=name, error=str(error), error_type=type(error).__name__)
            raise error
        run.answers[name] = answer
        run.usage = run.usage + answer.usage
        log.info("expert.answered", expert=name, model=answer.model, ms=round(latency * 1000, 2))
        return answer

    async def _fall_back(
        self, run: RunState, query: Query, selection: Selection, emitter: Emitter | None
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
            run.fallbacks.append(name)
            try:
                await self.ask(run, name, query, emitter)
                return
            except RunError:
                continue
