"""``route`` (which experts would answer), ``experts`` (list or rank them) and ``fit`` (the gate)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import MoEError
from ..pipeline import Pipeline
from ..routing.crossval import CVChoice
from ..routing.encoder import SentenceEncoder
from ..routing.exemplars import read_exemplars_jsonl
from ..routing.gates import FitReport
from ..routing.onnx_encoder import OnnxEncoder
from ..routing.trust import POOLED
from ..routing.tuning import save_fitted
from ..types import Query
from .common import ConfigOpt, JsonOpt, VerboseOpt, console, err_console, fail, load, run, setup
from .selection import attachments, scores_table, selection_line

PER_PROCESS = "success, load and latency statistics are per-process, and this process has made no calls"


def route(
    text: Annotated[str, typer.Argument(help="The request to route (no expert is called).")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="Attach an image (repeatable).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show which experts would answer a request, and why."""
    setup(verbose)
    query = Query(text, attachments=attachments(image, None))
    pipeline = load(config)
    selection = run(lambda: pipeline.route(query))
    if as_json:
        console.print_json(json.dumps(selection.to_dict()))
        return
    console.print(selection_line(selection))
    console.print(scores_table(selection))


def experts(
    config: ConfigOpt = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Rank the experts by the scores in the trust store.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the experts of a pipeline, or rank them with --stats."""
    setup(verbose)
    pipeline = load(config)
    if stats:
        _print_ranking(pipeline)
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


def _print_ranking(pipeline: Pipeline) -> None:
    """Ranks by the trust store, the only evidence a fresh process has: its own stats are empty."""
    store = pipeline.router.trust
    if store is None:
        console.print(
            f"nothing to rank by: {PER_PROCESS}, and this pipeline keeps no trust store "
            "(add a `trust:` section to rank the experts by their recorded scores)",
            soft_wrap=True,
            highlight=False,
        )
        return
    names = list(pipeline.experts)
    trust, evidence = store.lookup(names, POOLED)
    rows = sorted(zip(names, trust.tolist(), evidence.tolist(), strict=True), key=lambda r: (-r[1], r[0]))
    table = Table(
        "rank",
        "expert",
        "trust",
        "evidence",
        caption="ranked by trust: recorded scores, pooled over contexts",
    )
    for i, (name, t, n) in enumerate(rows, 1):
        table.add_row(str(i), name, f"{t:.3f}", str(n))
    console.print(table)
    total = sum(n for _, _, n in rows)
    if total:
        source = (
            f"trust store {store.path}: {total} scores; an expert without any has the prior {store.prior:.2f}"
        )
    else:
        source = (
            f"no scores recorded in {store.path} yet: every expert has the prior trust "
            f"{store.prior:.2f} (ties by name)"
        )
    console.print(source, soft_wrap=True, highlight=False)
    console.print(f"{PER_PROCESS}: the ranking is by trust alone", soft_wrap=True, highlight=False)


def fit(
    config: ConfigOpt = None,
    data: Annotated[
        Path | None, typer.Option("--data", help='Extra exemplars: JSONL of {"text", "expert"}.')
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also save the gate here: a folder (gate + tuned encoder) or a .safetensors file.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Fit the routing gate (and, with `router.tune`, the encoder) on the experts' exemplars (and
    --data), and report how it did, with the cross-validation that chose the settings."""
    setup(verbose)
    pipeline = load(config)
    router = pipeline.router
    members = list(pipeline.experts.values())
    try:
        if data is not None:
            extra = dict(router.extra_exemplars)
            for text, expert in read_exemplars_jsonl(data):
                extra[expert] = (*extra.get(expert, ()), text)
            router.extra_exemplars = extra
        counts = {name: len(texts) for name, texts in router.exemplars(members).items()}
    except MoEError as exc:
        raise fail(exc) from None

    async def go() -> FitReport:
        with Progress(
            TextColumn("fitting (tuning, cross-validation, gate)"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task("fit", total=None)

            def progress(epoch: int, total: int) -> None:
                bar.update(task, completed=epoch, total=total)

            return await router.fit(members, progress=progress)

    report = run(go)
    kind = router.gate.config.kind if router.gate is not None else router.config.gate.kind
    table = Table("expert", "exemplars", title=f"{kind} gate on {router.active_encoder.name}")
    for name, n in counts.items():
        table.add_row(name, str(n))
    console.print(table)
    val = "—" if report.val_accuracy is None else f"{report.val_accuracy:.3f}"
    console.print(
        f"validation accuracy {val} on {report.val_size} held-out exemplars "
        f"(trained on {report.train_size}); epochs {report.epochs}; temperature {report.temperature:.3f}; "
        f"{report.seconds:.1f} s"
    )
    if report.cv is not None:
        _print_cv(report.cv, router.gate_weight)
    if out is not None:
        gate = router.gate
        assert gate is not None
        active = router.active_encoder
        tuned = (
            Path(active.path)
            if active is not router.encoder and isinstance(active, SentenceEncoder | OnnxEncoder)
            else None
        )
        path = save_fitted(gate, out, encoder=active.name, tuned=tuned)
        console.print(f"saved {path} (use it with `router: {{gate_path: {out}}}`)", soft_wrap=True)


def _print_cv(cv: Mapping[str, Any], gate_weight: float) -> None:
    """The cross-validation's choice, and the best score of each encoder and gate kind."""
    choice = CVChoice(**cv)
    table = Table(
        "candidate", "best CV accuracy", title=f"{cv['folds']}-fold cross-validation on {cv['n']} exemplars"
    )
    for part in (0, 1):  # encoders, then gate kinds
        for name, acc in choice.best_per(part).items():
            table.add_row(name, f"{acc:.3f}")
    console.print(table)
    console.print(
        f"chosen: {cv['encoder']} encoder, {cv['gate']} gate, gate weight {gate_weight:.2f}, "
        f"temperature ×{cv['temperature_scale']:g} (CV accuracy {cv['accuracy']:.3f})",
        soft_wrap=True,
        highlight=False,
    )
