"""The ``moe-agents`` command line: chat, ask, route, experts, fit, eval, trust and memory."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import structlog
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .backends import TransformersBackend
from .config import default_config_path, load_pipeline
from .errors import ConfigError, MoEError, RunError
from .logging import LIBRARY_LOGGER, redact_secrets
from .memory import MemoryConfig, MemoryStore, Turn
from .pipeline import Pipeline
from .routing.exemplars import read_exemplars_jsonl
from .routing.gates import FitReport
from .routing.trust import TrustStore
from .types import Attachment, Query, Result, Selection

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="moe-agents",
    help="Mixtures of experts over LLM agents. Every command works offline on the default configuration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Pipeline YAML (default: the offline default).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log pipeline events to stderr.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="The evaluation data folder (default: $MOE_AGENTS_EVAL_DATA).", show_default=False
    ),
]


def _setup(verbose: bool) -> None:
    """The application, not the library, configures logging."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    _setup_logging(verbose)
    if not verbose:  # progress bars of model loading are noise next to the spinner
        os.environ.setdefault("TQDM_DISABLE", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (tests and rich swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """Library events go to stderr, secrets masked: INFO and up with ``--verbose``, else warnings only.

    The library logs through the standard ``logging`` module (see ``moe_agents.logging``): the CLI
    renders its events with structlog's console renderer and attaches one stderr handler.
    """
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            redact_secrets,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        cache_logger_on_first_use=False,
    )
    library = logging.getLogger(LIBRARY_LOGGER)
    for handler in [h for h in library.handlers if isinstance(h, _StderrHandler)]:
        library.removeHandler(handler)
    handler = _StderrHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    library.addHandler(handler)
    # lower the logger's own level if needed, never raise one the embedding application lowered
    library.setLevel(min(level, library.getEffectiveLevel()))


def _fail(exc: MoEError) -> typer.Exit:
    """Prints a moe-agents error as one line; the caller raises the returned exit (code 1)."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(1)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Runs ``fn``, turning moe-agents errors into a one-line message and exit code 1."""
    try:
        return anyio.run(fn)
    except MoEError as exc:
        raise _fail(exc) from None


def _load(config: Path | None) -> Pipeline:
    try:
        return load_pipeline(config or default_config_path())
    except MoEError as exc:
        raise _fail(exc) from None


async def _open(stack: AsyncExitStack, pipeline: Pipeline, *, quiet: bool = False) -> Pipeline:
    """Enters the pipeline (loads models) behind a spinner."""
    if quiet:
        return await stack.enter_async_context(pipeline)
    with err_console.status(_loading_text(pipeline), spinner="dots"):
        return await stack.enter_async_context(pipeline)


def _loading_text(pipeline: Pipeline) -> str:
    """The spinner's text: a GGUF model's first load (a one-time conversion) is announced as such."""
    first = sorted(
        {
            Path(b.gguf_file).stem
            for b in pipeline.backends
            if isinstance(b, TransformersBackend) and b.gguf_file and b.needs_preparation()
        }
    )
    if not first:
        return "Loading models…"
    return f"Preparing {', '.join(first)} for first use (one-time conversion, a minute or more)…"


def _selection_line(selection: Selection) -> str:
    parts = ", ".join(f"{e} {w:.2f}" for e, w in zip(selection.experts, selection.weights, strict=True))
    return f"→ {parts}  [dim]({selection.mode})[/]"


def _attachments(image: list[Path] | None, audio: list[Path] | None) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    for kind, paths in (("image", image or []), ("audio", audio or [])):
        for p in paths:
            if not p.is_file():
                err_console.print(f"[bold red]error:[/] attachment {p} does not exist or is not a file")
                raise typer.Exit(2)
            found.append(Attachment(kind, path=p))  # type: ignore[arg-type]
    return tuple(found)


@app.command()
def ask(
    text: Annotated[str, typer.Argument(help="The request.")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="Attach an image (repeatable).")] = None,
    audio: Annotated[list[Path] | None, typer.Option("--audio", help="Attach audio (repeatable).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Answer one request and exit."""
    _setup(verbose)
    query = Query(text, attachments=_attachments(image, audio))
    pipeline = _load(config)

    async def go() -> Result:
        async with AsyncExitStack() as stack:
            p = await _open(stack, pipeline, quiet=as_json)
            return await p.run(query)

    result = _run(go)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    err_console.print(_selection_line(result.selection))
    for name, error in result.errors.items():
        err_console.print(f"[yellow]{name} failed:[/] {error}", highlight=False)
    console.print(result.text, markup=False, highlight=False)


@app.command()
def route(
    text: Annotated[str, typer.Argument(help="The request to route (no expert is called).")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="Attach an image (repeatable).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show which experts would answer a request, and why."""
    _setup(verbose)
    query = Query(text, attachments=_attachments(image, None))
    pipeline = _load(config)
    selection = _run(lambda: pipeline.route(query))
    if as_json:
        console.print_json(json.dumps(selection.to_dict()))
        return
    console.print(_selection_line(selection))
    console.print(_scores_table(selection))


def _scores_table(selection: Selection) -> Table:
    table = Table("expert", "gate", "self", "load", "expertise", "permission", "chosen", "note", box=None)

    def f(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    ranked = sorted(selection.scores.items(), key=lambda kv: kv[1].permission, reverse=True)
    for name, s in ranked:
        chosen = f"{selection.weight(name):.2f}" if name in selection.experts else ""
        table.add_row(
            name,
            f(s.gate),
            f(s.self_assessment),
            f(s.load),
            f(s.expertise),
            f(s.permission),
            chosen,
            s.note or "",
        )
    return table


@app.command()
def experts(
    config: ConfigOpt = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Rank the experts (success, headroom, latency, trust).")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the experts of a pipeline, or rank them with --stats."""
    _setup(verbose)
    pipeline = _load(config)
    if stats:
        table = Table(
            "rank", "expert", "score", "success rate", "headroom", "latency score", "trust", "calls"
        )
        for i, r in enumerate(pipeline.rank(), 1):
            trust = "—" if r.trust is None else f"{r.trust:.3f}"
            table.add_row(
                str(i),
                r.name,
                f"{r.score:.3f}",
                f"{r.success_rate:.3f}",
                f"{r.headroom:.2f}",
                f"{r.latency_score:.3f}",
                trust,
                str(r.calls),
            )
        console.print(table)
        console.print(
            "[dim]success, load and latency are this process's; trust is the trust store's, pooled "
            "over contexts[/]"
        )
        return
    table = Table("name", "kind", "backends", "modalities", "max_load", "timeout_s", "exemplars")
    for e in pipeline.experts.values():
        table.add_row(
            e.name,
            type(e).__name__,
            ", ".join(b.name for b in e.backends) or "—",
            ", ".join(sorted(e.modalities)) or "text",
            str(e.max_load),
            str(e.timeout_s),
            str(len(e.exemplars)),
        )
    console.print(table)


@app.command()
def fit(
    config: ConfigOpt = None,
    data: Annotated[
        Path | None, typer.Option("--data", help='Extra exemplars: JSONL of {"text", "expert"}.')
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also save the gate here (.safetensors).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Fit the routing gate on the experts' exemplars (and --data) and report how it did."""
    _setup(verbose)
    pipeline = _load(config)
    router = pipeline.router
    experts = list(pipeline.experts.values())
    try:
        if data is not None:
            extra = dict(router.extra_exemplars)
            for text, expert in read_exemplars_jsonl(data):
                extra[expert] = (*extra.get(expert, ()), text)
            router.extra_exemplars = extra
        counts = {name: len(texts) for name, texts in router.exemplars(experts).items()}
    except MoEError as exc:
        raise _fail(exc) from None

    async def go() -> FitReport:
        with Progress(
            TextColumn("fitting the gate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task("fit", total=None)

            def progress(epoch: int, total: int) -> None:
                bar.update(task, completed=epoch, total=total)

            return await router.fit(experts, progress=progress)

    report = _run(go)
    table = Table("expert", "exemplars", title=f"{router.config.gate.kind} gate on {router.encoder.name}")
    for name, n in counts.items():
        table.add_row(name, str(n))
    console.print(table)
    val = "—" if report.val_accuracy is None else f"{report.val_accuracy:.3f}"
    console.print(
        f"validation accuracy {val} on {report.val_size} held-out exemplars "
        f"(trained on {report.train_size}); epochs {report.epochs}; temperature {report.temperature:.3f}; "
        f"{report.seconds:.1f} s"
    )
    if out is not None:
        gate = router.gate
        assert gate is not None
        gate.save(out, encoder=router.encoder.name)
        console.print(f"saved {out} (use it with `router: {{gate_path: {out}}}`)")


eval_app = typer.Typer(help="Benchmarks on the shared evaluation data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("routing")
def eval_routing(
    data: DataOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the confusion matrices here (PNG).")
    ] = None,
    per_label: Annotated[int, typer.Option(help="Cap per label of the test set.")] = 400,
    fit_per_label: Annotated[int, typer.Option(help="Cap per label of fit-split exemplars.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the test-set sample.")] = 0,
    verbose: VerboseOpt = False,
) -> None:
    """Route the labelled test-split set with five routers and report accuracy, macro-F1 and speed."""
    from .evaluation.metrics import plot_confusions, render_confusion, render_table
    from .evaluation.routing import evaluate_routing

    _setup(verbose)
    pipeline = _load(config)

    async def go() -> dict[str, Any]:
        with err_console.status("routing benchmark", spinner="dots") as status:
            return await evaluate_routing(
                list(pipeline.experts.values()),
                pipeline.router,
                data_dir=data,
                per_label=per_label,
                fit_per_label=fit_per_label,
                seed=seed,
                progress=lambda line: status.update(line),
            )

    report = _run(go)
    scores = report.pop("scores")
    console.width = max(console.width, 120)  # the tables need the room; a pipe would get 80 columns
    console.print(f"test set: {report['set']['n']} queries {report['set']['per_label']} (seed {seed})")
    for variant, results in scores.items():
        table = render_table(results)
        table.title = f"gates fitted on: {variant}"
        console.print(table)
        console.print(
            render_confusion(
                results["router"], title=f"full router ({variant}): rows true, columns routed to"
            )
        )
    speed = report["speed"]
    single = speed["single_query"]
    console.print(
        f"single-query routing: p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms "
        f"({speed['single_queries']} queries; the raw encoder alone on the same queries: p50 "
        f"{speed['encoder_single_query']['p50_ms']:.1f} ms); "
        f"{speed['concurrent_queries']} concurrent queries: "
        f"{speed['router_qps']:.0f} q/s vs raw batched encoder {speed['encoder_batched_qps']:.0f} q/s "
        f"(ratio {speed['router_vs_encoder']:.2f})"
    )
    best = scores["exemplars"]["router"].accuracy
    for target, ok in (
        (f"full router accuracy >= 97 %: {best:.1%}", best >= 0.97),
        (f"single-query p50 <= 15 ms: {single['p50_ms']:.1f} ms", single["p50_ms"] <= 15),
        (
            f"throughput >= 0.85x encoder: {speed['router_vs_encoder']:.2f}x",
            speed["router_vs_encoder"] >= 0.85,
        ),
    ):
        console.print(f"  [{'green' if ok else 'red'}]{'met' if ok else 'NOT met'}[/] {target}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{r} ({v})": s for v, rs in scores.items() for r, s in rs.items()}
        plot_confusions(flat, plot)
        console.print(f"wrote {plot}")


@eval_app.command("momentum")
def eval_momentum(
    config: ConfigOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Route scripted multi-turn conversations with and without routing momentum: bounce rate of
    follow-ups and accuracy on real topic switches."""
    from .evaluation.conversations import evaluate_momentum

    _setup(verbose)
    pipeline = _load(config)

    async def go() -> dict[str, Any]:
        with err_console.status("momentum benchmark", spinner="dots"):
            return await evaluate_momentum(pipeline.router, list(pipeline.experts.values()))

    report = _run(go)
    table = Table(title=f"routing momentum on {report['conversations']} scripted conversations")
    for col in ("setting", "bounce rate (follow-ups)", "follow-up acc.", "topic-switch acc.", "accuracy"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for name, r in report["settings"].items():
        table.add_row(
            name,
            f"{r['bounce_rate']:.1%}",
            f"{r['follow_accuracy']:.1%}",
            f"{r['switch_accuracy']:.1%}",
            f"{r['accuracy']:.1%}",
        )
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")


@eval_app.command("recorded")
def eval_recorded(
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json and the PNG plots.")] = Path(
        "results/recorded"
    ),
    limit: Annotated[
        int | None, typer.Option(help="Questions per MMLU subject and of GSM8K (quick runs); all by default.")
    ] = None,
    clusters: Annotated[int, typer.Option(help="k-means trust contexts.")] = 32,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (MMLU: subject-disjoint).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of folds, stream order and exploration.")] = 0,
    residency_queries: Annotated[int, typer.Option(help="Length of the residency trace.")] = 5000,
    verbose: VerboseOpt = False,
) -> None:
    """Trust-based selection on recorded answers of real LLMs (MMLU, GSM8K): cost/quality routing,
    online trust, aggregation and residency, each beside its baselines."""
    from .evaluation.recorded_eval import RecordedEvalConfig, evaluate_recorded, plot_recorded
    from .evaluation.report import render_recorded
    from .routing.encoder import bundled_encoder

    _setup(verbose)
    cfg = RecordedEvalConfig(
        data_dir=data,
        folds=folds,
        clusters=clusters,
        seed=seed,
        limit=limit,
        residency_queries=residency_queries,
    )
    try:
        with err_console.status("recorded-answers benchmark", spinner="dots") as status:
            report = evaluate_recorded(cfg, bundled_encoder(), progress=lambda line: status.update(line))
    except MoEError as exc:
        raise _fail(exc) from None
    console.width = max(console.width, 120)
    for renderable in render_recorded(report):
        console.print(renderable)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    paths = plot_recorded(report, out)
    console.print(f"wrote {out / 'report.json'} and {', '.join(str(p) for p in paths)}")


@eval_app.command("token-router")
def eval_token_router(
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for token_router.json/.png.")] = Path(
        "benchmarks/out"
    ),
    max_minutes: Annotated[float, typer.Option(help="Training wall-time cap (checkpoint cached).")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the trained model.")] = 0,
    tokens: Annotated[int, typer.Option(help="Held-out tokens replayed per setting.")] = 2000,
    trust_max: Annotated[float, typer.Option(help="Bound of the loss-calibrated trust bias (0: off).")] = 0.0,
    deployment: Annotated[
        bool, typer.Option(help="Also time the selection on a Qwen3-Omni-30B-A3B-sized MoE layer (2.4 GB).")
    ] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Token router on a tiny Qwen3-MoE trained on GSM8K: expert-cache hit rate vs perplexity."""
    from .token_router.bench import run_token_router_benchmark
    from .token_router.bench_report import render_token_router

    _setup(verbose)
    try:
        report, path, png = run_token_router_benchmark(
            data,
            out,
            max_minutes=max_minutes,
            seed=seed,
            tokens=tokens,
            trust_max=trust_max,
            deployment=deployment,
        )
    except MoEError as exc:
        raise _fail(exc) from None
    console.width = max(console.width, 160)
    for renderable in render_token_router(report):
        console.print(renderable)
    console.print(f"wrote {path} and {png}")


ab_app = typer.Typer(help="A/B tests between variants of an expert (YAML ab_tests:).", no_args_is_help=True)
app.add_typer(ab_app, name="ab")


@ab_app.command("report")
def ab_report(
    config: ConfigOpt = None,
    confidence: Annotated[float, typer.Option(help="Confidence level of the interval.")] = 0.95,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compare each A/B test's variants on the feedback recorded in the trust store."""
    from .management import ABTracker

    _setup(verbose)
    pipeline = _load(config)
    manager, store = pipeline.manager, pipeline.router.trust
    tests = manager.config.ab_tests if manager is not None else ()
    if not tests:
        raise _fail(ConfigError("this pipeline has no ab_tests"))
    if store is None:
        raise _fail(ConfigError("A/B outcomes are read from the trust store: add a `trust:` section"))
    tracker = ABTracker(tests)
    for row in store.log():
        if row["source"] != "feedback":
            continue
        for test in tests:
            if row["expert"] in (test.control, test.treatment):
                tracker.record(test.name, row["expert"], float(row["score"]))
    reports = [tracker.report(t.name, confidence=confidence) for t in tests]
    if as_json:
        console.print_json(json.dumps([dataclasses.asdict(r) for r in reports], default=str))
        return
    for test, r in zip(tests, reports, strict=True):
        table = Table("variant", "expert", "scored", "mean score", title=f"A/B test {test.name!r}")
        for label, v in (("control", r.control), ("treatment", r.treatment)):
            mean = "—" if v.mean is None else f"{v.mean:.3f}"
            table.add_row(label, v.name, str(v.scored), mean)
        console.print(table)
        if r.difference is None or r.ci is None:
            console.print("not enough scored feedback for a difference yet")
            continue
        low, high = r.ci
        console.print(
            f"difference (treatment − control) {r.difference:+.3f}, {confidence:.0%} interval "
            f"[{low:+.3f}, {high:+.3f}]: {'significant' if r.significant else 'not significant'}"
        )


trust_app = typer.Typer(
    help="The persistent trust store: how well each expert did in each context.", no_args_is_help=True
)
app.add_typer(trust_app, name="trust")

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="The trust store (default: trust.sqlite3 in the user data folder).", show_default=False
    ),
]
ExpertOpt = Annotated[str | None, typer.Option("--expert", help="Only this expert.", show_default=False)]
ContextOpt = Annotated[str | None, typer.Option("--context", help="Only this context.", show_default=False)]


class ExportFormat(StrEnum):
    """File formats of ``trust export``."""

    JSONL = "jsonl"
    CSV = "csv"


def _when(ts: float) -> str:
    """A unix time as local date and time."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _trust_store(path: Path) -> TrustStore:
    """Opens the store at ``path``; a missing file reads as an empty store and is not created."""
    try:
        return TrustStore(path if path.exists() else ":memory:")
    except MoEError as exc:
        raise _fail(exc) from None


def _filters(expert: str | None, context: str | None) -> str:
    parts = [f"expert {expert}" if expert else "", f"context {context}" if context else ""]
    return " and ".join(p for p in parts if p) or "every expert and context"


@trust_app.command("show")
def trust_show(
    db: DbOpt = None,
    expert: ExpertOpt = None,
    context: ContextOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show trust per expert and context, with the evidence behind it."""
    _setup_logging(verbose)
    path = db or TrustStore.default_path()
    with _trust_store(path) as store:
        try:
            stats = store.stats(expert, context)
        except MoEError as exc:
            raise _fail(exc) from None
    if as_json:
        console.print_json(json.dumps([dataclasses.asdict(s) for s in stats]))
        return
    if not stats:
        err_console.print(f"no trust recorded for {_filters(expert, context)} in {path}")
        return
    table = Table("expert", "context", "trust", "evidence", "updated", box=None)
    for s in stats:
        table.add_row(s.expert, s.context, f"{s.trust:.3f}", str(s.evidence), _when(s.updated_at))
    console.print(table)


@trust_app.command("reset")
def trust_reset(
    db: DbOpt = None,
    expert: ExpertOpt = None,
    context: ContextOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Forget the trust (and its feedback log) of matching experts and contexts."""
    _setup_logging(verbose)
    path = db or TrustStore.default_path()
    what = _filters(expert, context)
    with _trust_store(path) as store:
        try:
            matching = len(store.stats(expert, context))
            if matching and not yes:
                typer.confirm(f"Forget {matching} trust entries for {what} in {path}?", abort=True)
            removed = store.reset(expert, context) if matching else 0
        except MoEError as exc:
            raise _fail(exc) from None
    console.print(f"removed {removed} trust entries for {what}")


@trust_app.command("export")
def trust_export(
    db: DbOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: stdout).", show_default=False)
    ] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.JSONL,
    feedback_log: Annotated[
        bool, typer.Option("--log", help="Export the feedback log (one row per score), not the stats.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export the trust stats (or the feedback log) as JSON Lines or CSV."""
    _setup_logging(verbose)
    with _trust_store(db or TrustStore.default_path()) as store:
        try:
            n = store.export(
                out if out is not None else sys.stdout,
                fmt="csv" if fmt is ExportFormat.CSV else "jsonl",
                what="log" if feedback_log else "stats",
            )
        except MoEError as exc:
            raise _fail(exc) from None
    if out is not None:
        err_console.print(f"wrote {n} rows to {out}")


memory_app = typer.Typer(
    help="Conversation memory: the turns and memories of each session.", no_args_is_help=True
)
app.add_typer(memory_app, name="memory")

MemoryDbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="The memory store (default: memory.sqlite3 in the user data folder).", show_default=False
    ),
]


def _memory_store(path: Path) -> MemoryStore:
    """Opens the store at ``path``; a missing file reads as an empty store and is not created."""
    try:
        return MemoryStore(MemoryConfig(path=path if path.exists() else ":memory:"))
    except MoEError as exc:
        raise _fail(exc) from None


def _turn_dict(turn: Turn) -> dict[str, Any]:
    return {**dataclasses.asdict(turn), "experts": list(turn.experts)}


@memory_app.command("show")
def memory_show(
    session: Annotated[
        str | None, typer.Argument(help="Show this session's transcript (default: list the sessions).")
    ] = None,
    db: MemoryDbOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the sessions with their turn counts and last activity, or show one session's transcript."""
    _setup_logging(verbose)
    path = db or MemoryStore.default_path()
    with _memory_store(path) as store:
        try:
            sessions = store.sessions() if session is None else []
            turns = store.transcript(session) if session is not None else []
        except MoEError as exc:
            raise _fail(exc) from None
    if session is None:
        if as_json:
            rows = [{"session": s, "turns": n, "last_ts": ts} for s, n, ts in sessions]
            console.print_json(json.dumps(rows))
        elif not sessions:
            err_console.print(f"no sessions recorded in {path}")
        else:
            table = Table("session", "turns", "last activity", box=None)
            for s, n, ts in sessions:
                table.add_row(s, str(n), _when(ts))
            console.print(table)
        return
    if as_json:
        console.print_json(json.dumps([_turn_dict(t) for t in turns]))
    elif not turns:
        err_console.print(f"no turns recorded for session {session} in {path}", highlight=False)
    else:
        for t in turns:
            who = f"assistant ({', '.join(t.experts)})" if t.role == "assistant" and t.experts else t.role
            console.print(f"{_when(t.ts)}  {who}: {t.text}", markup=False, highlight=False, soft_wrap=True)


@memory_app.command("forget")
def memory_forget(
    session: Annotated[str, typer.Argument(help="The session to forget.")],
    db: MemoryDbOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Delete a session's turns and memories for good (the bytes are removed from the file)."""
    _setup_logging(verbose)
    path = db or MemoryStore.default_path()
    if not path.exists():
        err_console.print(f"no turns recorded for session {session} in {path}", highlight=False)
        return
    with _memory_store(path) as store:
        try:
            turns = len(store.transcript(session))
            if turns and not yes:
                typer.confirm(f"Forget session {session} ({turns} turns) in {path}?", abort=True)
            removed = store.forget(session) if turns else 0
        except MoEError as exc:
            raise _fail(exc) from None
    console.print(f"removed {removed} rows ({turns} turns) of session {session}", highlight=False)


CHAT_HELP = """Commands: /route TEXT (show the routing), /feedback good|bad (rate the last answer),
/new (start a new conversation), /experts, /help, /quit. Anything else is a request."""


@app.command()
def chat(config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    """Chat with the mixture (streams answers; offline on the default configuration)."""
    _setup(verbose)
    pipeline = _load(config)

    async def go() -> None:
        async with AsyncExitStack() as stack:
            p = await _open(stack, pipeline)
            console.print(f"[bold]moe-agents[/] — experts: {', '.join(p.experts)}. {CHAT_HELP}")
            last: Result | None = None
            session = uuid.uuid4().hex[:12]  # ties the turns together: memory and routing momentum
            while True:
                try:
                    line = (await anyio.to_thread.run_sync(console.input, "[bold cyan]you>[/] ")).strip()
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    return
                if not line:
                    continue
                if line in ("/quit", "/exit", "/q"):
                    return
                if line == "/help":
                    console.print(CHAT_HELP)
                elif line == "/new":
                    p.router.momentum.forget(session)
                    session, last = uuid.uuid4().hex[:12], None
                    console.print(f"[dim]new conversation ({session})[/]")
                elif line == "/experts":
                    console.print(", ".join(p.experts))
                elif line.startswith("/route"):
                    text = line.removeprefix("/route").strip()
                    if not text:
                        console.print("usage: /route TEXT")
                        continue
                    selection = await p.route(Query(text, session_id=session))
                    console.print(_selection_line(selection))
                    console.print(_scores_table(selection))
                elif line.startswith("/feedback"):
                    verdict = line.removeprefix("/feedback").strip()
                    if last is None or verdict not in ("good", "bad"):
                        console.print("usage: /feedback good|bad (after an answer)")
                        continue
                    await p.feedback(last.id, 1.0 if verdict == "good" else 0.0)
                    console.print(f"[dim]recorded {verdict} for {', '.join(last.answers)}[/]")
                elif line.startswith("/"):
                    console.print(f"unknown command {line.split()[0]}. {CHAT_HELP}")
                else:
                    last = await _chat_turn(p, Query(line, session_id=session)) or last

    _run(go)


async def _chat_turn(pipeline: Pipeline, text: Query) -> Result | None:
    """Routes, streams the answer, and reports failed experts; errors end the turn, not the chat."""
    try:
        stream = pipeline.stream(text)
        async for chunk in stream:
            if stream.selection is not None:
                console.print(_selection_line(stream.selection), style="dim")
                stream.selection = None  # shown once, before the answer
            console.print(chunk, end="", markup=False, highlight=False, soft_wrap=True)
        console.print()
        result = stream.result
    except RunError as exc:
        console.print(f"\n[bold red]error:[/] {exc}", highlight=False)
        return None
    if result is not None:
        for name, error in result.errors.items():
            console.print(f"[yellow]{name} failed:[/] {error}", highlight=False)
    return result


def main() -> None:
    """Entry point of the ``moe-agents`` console script."""
    app()
