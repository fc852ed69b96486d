"""Is the distance to the nearest exemplars a better out-of-scope signal than the router's
confidence? Both scored the same way, in one run, on CLINC's out-of-scope test queries against the
in-scope routing test set.

Signals: the offline default router's top-1 confidence (the chosen expert's ``permission``, which
``min_confidence`` is compared with; gate fitted on the exemplars) and the mean cosine similarity of
a query to its 1, 3 and 5 nearest exemplars (any expert). For each signal two operating points:

* **fit-chosen**: the highest threshold losing at most 3 % of the in-scope *fit* queries
  (``choose_threshold``; CLINC ``oos_train``+``oos_val`` as the out-of-scope side), then measured
  on test — how the product would use it;
* **test ceiling**: the best threshold on the *test* set itself at ≤ 3 % in-scope lost — an upper
  bound no deployment reaches.

Run: ``python benchmarks/oos_similarity.py``; writes ``benchmarks/results/oos_similarity.json``.
(The router row's fit-chosen point uses fit-split queries only, not the cross-validated exemplars
that ``moe-agents eval routing`` adds, so it can differ a little from that report's.)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import anyio
import numpy as np
from rich.console import Console
from rich.table import Table

from moe_agents import default_config_path, load_pipeline
from moe_agents.evaluation.data import OOS_FIT_SPLITS, clinc_out_of_scope, routing_fit_set, routing_test_set
from moe_agents.evaluation.oos import confidence, route_all
from moe_agents.evaluation.stats import choose_threshold, tradeoff
from moe_agents.routing import Router
from moe_agents.types import Query

OUT = Path(__file__).parent / "results"
MAX_LOST = 0.03


def operating_points(oos_fit, in_fit, oos_test, in_test) -> dict[str, float]:  # type: ignore[no-untyped-def]
    chosen = choose_threshold(oos_fit, in_fit, max_lost=MAX_LOST)
    caught, lost = tradeoff(oos_test, in_test, np.array([chosen]))
    grid = np.unique(np.concatenate([in_test, oos_test]))
    all_caught, all_lost = tradeoff(oos_test, in_test, grid)
    ceiling = float(all_caught[all_lost <= MAX_LOST].max(initial=0.0))
    return {
        "fit_chosen_caught": float(caught[0]),
        "fit_chosen_lost": float(lost[0]),
        "test_ceiling_caught": ceiling,
    }


async def router_confidences(texts: dict[str, list[Query]]) -> dict[str, np.ndarray]:
    pipeline = load_pipeline(default_config_path())
    experts = list(pipeline.experts.values())
    router = Router(
        replace(pipeline.router.config, top_k=1, gate_cache_dir=""),
        encoder=pipeline.router.encoder,
        rules=pipeline.router.rules,
    )
    await router.prepare(experts)
    return {
        k: np.array([confidence(s) for s in await route_all(router, qs, experts)]) for k, qs in texts.items()
    }


def main(out: Path) -> None:
    pipeline = load_pipeline(default_config_path())
    encoder = pipeline.router.encoder
    exemplars = [t for e in pipeline.experts.values() for t in e.exemplars]
    in_test = routing_test_set()
    in_fit = routing_fit_set()
    sets = {
        "in_test": [q.query() for q in in_test],
        "in_fit": [q.query() for q in in_fit],
        "oos_test": [Query(t) for t in clinc_out_of_scope(splits=("oos_test",))],
        "oos_fit": [Query(t) for t in clinc_out_of_scope(splits=OOS_FIT_SPLITS)],
    }
    rows = {
        "router confidence (permission)": operating_points(
            **{k: v for k, v in anyio.run(router_confidences, sets).items()}
        )
    }
    bank = encoder.encode(exemplars)
    sims = {k: np.sort(encoder.encode([q.text for q in qs]) @ bank.T, axis=1) for k, qs in sets.items()}
    for k in (1, 3, 5):
        rows[f"mean similarity to the {k} nearest exemplars"] = operating_points(
            **{name: s[:, -k:].mean(axis=1) for name, s in sims.items()}
        )
    table = Table(
        title=f"out-of-scope → fallback at ≤ {MAX_LOST:.0%} in-scope lost ({len(sets['oos_test'])} oos, "
        f"{len(sets['in_test'])} in-scope test queries)"
    )
    for column in (
        "signal",
        "fit-chosen: oos caught",
        "fit-chosen: in-scope lost",
        "test ceiling: oos caught",
    ):
        table.add_column(column, justify="right" if column != "signal" else "left")
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['fit_chosen_caught']:.1%}",
            f"{r['fit_chosen_lost']:.1%}",
            f"{r['test_ceiling_caught']:.1%}",
        )
    Console().print(table)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "oos_similarity.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(OUT)
