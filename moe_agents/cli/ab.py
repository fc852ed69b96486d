"""``ab report``: the A/B tests of a pipeline, compared on the feedback in its trust store."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ConfigError, MoEError
from ..management.ab_report import ab_reports_from_log
from .common import ConfigOpt, JsonOpt, VerboseOpt, console, fail, load, setup

app = typer.Typer(help="A/B tests between variants of an expert (YAML ab_tests:).", no_args_is_help=True)


@app.command("report")
def report(
    config: ConfigOpt = None,
    confidence: Annotated[float, typer.Option(help="Confidence level of the interval.")] = 0.95,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compare each A/B test's variants on the feedback recorded in the trust store."""
    setup(verbose)
    pipeline = load(config)
    manager, store = pipeline.manager, pipeline.router.trust
    tests = manager.config.ab_tests if manager is not None else ()
    if not tests:
        raise fail(ConfigError("this pipeline has no ab_tests"))
    if store is None:
        raise fail(ConfigError("A/B outcomes are read from the trust store: add a `trust:` section"))
    try:
        reports = ab_reports_from_log(tests, store.log(), confidence=confidence)
    except MoEError as exc:
        raise fail(exc) from None
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
