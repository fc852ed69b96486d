"""``eval``: the benchmarks on the evaluation data (routing, momentum, recorded answers, token router).

The evaluation code is imported inside each command: loading the CLI loads none of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import MoEError
from .common import ConfigOpt, VerboseOpt, console, err_console, fail, load, run, setup

app = typer.Typer(help="Benchmarks on the shared evaluation data.", no_args_is_help=True)

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="The evaluation data folder (default: $MOE_AGENTS_EVAL_DATA).", show_default=False
    ),
]


@app.command("routing")
def routing(
    data: DataOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write the confusion matrices here (PNG), the reliability diagram beside it as "
            "<stem>-reliability.png and the out-of-scope trade-off as <stem>-oos.png.",
        ),
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the README's table and lines here (Markdown).")
    ] = None,
    per_label: Annotated[int, typer.Option(help="Cap per label of the test set.")] = 400,
    fit_per_label: Annotated[int, typer.Option(help="Cap per label of fit-split exemplars.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the test-set sample, bootstrap and folds.")] = 0,
    peer: Annotated[bool, typer.Option(help="Route with semantic-router too (moe-agents[eval]).")] = True,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples per interval.")] = 2000,
    oos: Annotated[
        bool, typer.Option("--oos/--no-oos", help="Measure the out-of-scope fallback (CLINC oos).")
    ] = True,
    fallback_expert: Annotated[
        str | None,
        typer.Option(help="Fallback expert (default: the router's, else knowledge, else the first)."),
    ] = None,
    oos_max_lost: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Most in-scope fit queries the threshold may lose.")
    ] = 0.03,
    oos_limit: Annotated[
        int | None, typer.Option(min=1, help="Route a sample of this many oos_test queries (quick runs).")
    ] = None,
    cv: Annotated[
        bool,
        typer.Option(
            "--cv/--no-cv",
            help="Also run the full router with gate kind, weight and temperature cross-validated on "
            "the exemplars (router-cv; about a minute of CPU per variant).",
        ),
    ] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Route the labelled test-split set with six routers and semantic-router; report accuracy
    with 95 % intervals (overall and text-only), the paired test against the peer, calibration, the
    out-of-scope fallback and speed."""
    from ..evaluation.figures import plot_oos_curve, plot_reliability
    from ..evaluation.metrics import plot_confusions, render_confusion
    from ..evaluation.routing import evaluate_routing
    from ..evaluation.routing_report import render_routing, routing_lines, routing_markdown

    setup(verbose)
    pipeline = load(config)

    async def go() -> dict[str, Any]:
        with err_console.status("routing benchmark", spinner="dots") as status:
            return await evaluate_routing(
                list(pipeline.experts.values()),
                pipeline.router,
                data_dir=data,
                per_label=per_label,
                fit_per_label=fit_per_label,
                seed=seed,
                peer=peer,
                resamples=resamples,
                out_of_scope=oos,
                fallback_expert=fallback_expert,
                oos_max_lost=oos_max_lost,
                oos_limit=oos_limit,
                cross_validated=cv,
                progress=lambda line: status.update(line),
            )

    report = run(go)
    scores = report.pop("scores")
    if json_out is not None:  # first, so that a long run's numbers are kept whatever follows
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    console.width = max(console.width, 160)  # the tables need the room; a pipe would get 80 columns
    console.print(f"test set: {report['set']['n']} queries {report['set']['per_label']} (seed {seed})")
    console.print(render_routing(report))
    for variant, results in scores.items():
        console.print(
            render_confusion(
                results["router"], title=f"full router ({variant}): rows true, columns routed to"
            )
        )
    for line in routing_lines(report):
        console.print(line, soft_wrap=True)
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
    if json_out is not None:
        console.print(f"wrote {json_out}")
    if markdown is not None:
        command = " ".join(
            ["moe-agents eval routing"]
            + ([f"-c {config}"] if config is not None else [])
            + ([f"--json {json_out}"] if json_out is not None else [])
            + ([f"--plot {plot}"] if plot is not None else [])
            + [f"--markdown {markdown}"]
        )
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(routing_markdown(report, command=command), encoding="utf-8")
        console.print(f"wrote {markdown}")
    if plot is not None:
        flat = {f"{r} ({v})": s for v, rs in scores.items() for r, s in rs.items()}
        written = [plot_confusions(flat, plot)]
        written.append(
            plot_reliability(report["calibration"], plot.with_name(f"{plot.stem}-reliability.png"))
        )
        if report["out_of_scope"] is not None:
            written.append(plot_oos_curve(report["out_of_scope"], plot.with_name(f"{plot.stem}-oos.png")))
        console.print(f"wrote {', '.join(str(p) for p in written)}")


@app.command("momentum")
def momentum(
    config: ConfigOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Route scripted multi-turn conversations with and without routing momentum: bounce rate of
    follow-ups and accuracy on real topic switches."""
    from ..evaluation.conversations import evaluate_momentum

    setup(verbose)
    pipeline = load(config)

    async def go() -> dict[str, Any]:
        with err_console.status("momentum benchmark", spinner="dots"):
            return await evaluate_momentum(pipeline.router, list(pipeline.experts.values()))

    report = run(go)
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


@app.command("recorded")
def recorded(
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
    from ..evaluation.recorded_eval import RecordedEvalConfig, evaluate_recorded, plot_recorded
    from ..evaluation.report import render_recorded
    from ..routing.encoder import bundled_encoder

    setup(verbose)
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
        raise fail(exc) from None
    console.width = max(console.width, 120)
    for renderable in render_recorded(report):
        console.print(renderable)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    paths = plot_recorded(report, out)
    console.print(f"wrote {out / 'report.json'} and {', '.join(str(p) for p in paths)}")


@app.command("token-router")
def token_router(
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
    from ..token_router.bench import run_token_router_benchmark
    from ..token_router.bench_report import render_token_router

    setup(verbose)
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
        raise fail(exc) from None
    console.width = max(console.width, 160)
    for renderable in render_token_router(report):
        console.print(renderable)
    console.print(f"wrote {path} and {png}")
