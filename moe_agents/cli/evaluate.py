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
        Path | None, typer.Option("--plot", help="Write the confusion matrices here (PNG).")
    ] = None,
    per_label: Annotated[int, typer.Option(help="Cap per label of the test set.")] = 400,
    fit_per_label: Annotated[int, typer.Option(help="Cap per label of fit-split exemplars.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the test-set sample.")] = 0,
    verbose: VerboseOpt = False,
) -> None:
    """Route the labelled test-split set with five routers and report accuracy, macro-F1 and speed."""
    from ..evaluation.metrics import plot_confusions, render_confusion, render_table
    from ..evaluation.routing import evaluate_routing

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
                progress=lambda line: status.update(line),
            )

    report = run(go)
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
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{r} ({v})": s for v, rs in scores.items() for r, s in rs.items()}
        plot_confusions(flat, plot)
        console.print(f"wrote {plot}")


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
