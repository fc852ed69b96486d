"""``moe-agents eval recorded`` on small slices of the real recorded answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_agents.cli import app
from moe_agents.evaluation.recorded_eval import (
    RecordedEvalConfig,
    _apgr,
    _share_for,
    aggregation,
    cost_quality,
    online_trust,
    plot_recorded,
)
from moe_agents.evaluation.report import render_recorded
from moe_agents.recorded import load_gsm8k_recorded, load_mmlu
from moe_agents.testing import HashingEncoder

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CFG = RecordedEvalConfig(data_dir=DATA, clusters=4, cost_weights=(0.0, 10.0, 100.0, 1e4), epsilons=(0.0, 0.1))


@pytest.fixture(scope="module")
def mmlu():
    data = load_mmlu(DATA, limit_per_subject=8)
    return data, HashingEncoder().encode(list(data.questions))


@pytest.fixture(scope="module")
def gsm8k():
    data = load_gsm8k_recorded(DATA, limit=120)
    return data, HashingEncoder().encode(list(data.questions))


def test_apgr_and_share_arithmetic() -> None:
    # random mixing is the straight line: APGR 0.5; a perfect router recovers the gap at once
    assert _apgr([], 0.8, 0.6) == pytest.approx(0.5)
    assert _apgr([{"strong_share": 0.0, "accuracy": 0.8}], 0.8, 0.6) == pytest.approx(1.0)
    curve = [{"strong_share": 0.5, "accuracy": 0.75}]
    assert _share_for(curve, 0.7, 0.8, 0.6) == pytest.approx(1 / 3)
    assert _share_for(curve, 0.55, 0.8, 0.6) == 0.0
    assert _share_for(curve, 0.9, 0.8, 0.6) is None


def test_cost_quality_on_subject_disjoint_folds(mmlu) -> None:
    data, vectors = mmlu
    r = cost_quality(data, vectors, CFG)
    assert r["folds"] == "subject-disjoint"
    acc = data.accuracy()
    assert r["strong_accuracy"] == pytest.approx(acc["gpt-4-1106"])
    assert r["weak_accuracy"] == pytest.approx(acc["mixtral-8x7b"])
    shares = [p["strong_share"] for p in r["trust_router"]]
    assert shares == sorted(shares, reverse=True)  # a higher cost weight never buys more GPT-4
    assert r["trust_router"][-1]["strong_share"] == 0.0  # priced out entirely
    # without trust the router cannot tell the models apart: it picks one model for every query
    assert {p["strong_share"] for p in r["router_without_trust"]} <= {0.0, 1.0}
    assert r["apgr"]["router_without_trust"] == pytest.approx(0.5)
    assert r["oracle"]["accuracy"] >= r["strong_accuracy"]
    needed = r["strong_share_needed"]["95%"]
    assert needed["oracle"] <= needed["random_mixing"]
    # the success router's ridge penalty is chosen per fold on that fold's training data only
    assert len(r["success_router_l2_per_fold"]) == CFG.folds
    assert set(r["success_router_l2_per_fold"]) <= set(CFG.l2_grid)
    assert 0.0 <= r["apgr"]["success_router"] <= 1.5


def test_online_trust_learns_and_reports_the_null_model(gsm8k) -> None:
    data, vectors = gsm8k
    r = online_trust(data, vectors, CFG)
    policies = r["policies"]
    best = next(k for k in policies if k.startswith("best single"))
    assert policies[best]["regret_vs_best_single"] == 0.0
    assert policies["oracle"]["accuracy"] == pytest.approx(float(data.correct.any(axis=1).mean()))
    assert policies["random"]["distinct_experts"] == 6 and policies["random"]["usage_entropy"] > 0.9
    explore = policies["trust (eps=0.1)"]
    assert explore["modes"].get("exploration", 0) > 0
    assert explore["modes"].get("trust_driven", 0) > 0
    assert policies["trust (eps=0)"]["modes"] == {"router_explore": len(data)}  # never learns: no exploration
    assert len(explore["cumulative_accuracy"]) == len(r["checkpoints"])


def test_aggregation_grades_every_method_the_same_way(gsm8k) -> None:
    data, _ = gsm8k
    r = aggregation(data, CFG)
    assert set(r["methods"]) == {"majority", "trust_voting", "weighted"}
    assert all(0.0 <= v <= 1.0 for v in r["methods"].values())
    assert r["best_single"]["model"] == "gpt-4-1106"
    assert r["oracle_same_grader"] >= max(r["methods"].values())
    assert len(r["sharpness_chosen_per_fold"]) == CFG.folds


def test_report_renders_and_plots(mmlu, gsm8k, tmp_path: Path) -> None:
    from moe_agents.evaluation.residency_trace import residency_trace

    (md, mv), (gd, gv) = mmlu, gsm8k
    report = {
        "cost_quality": {"mmlu": cost_quality(md, mv, CFG), "gsm8k": cost_quality(gd, gv, CFG)},
        "online": {"gsm8k": online_trust(gd, gv, CFG)},
        "aggregation": aggregation(gd, CFG),
        "residency": residency_trace(n_queries=200),
    }
    json.dumps(report)  # JSON-ready
    tables = render_recorded(report)
    assert len(tables) == 4
    paths = plot_recorded(report, tmp_path)
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_cli_eval_recorded_quick_run(tmp_path: Path, minilm) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "recorded",
            "--data",
            str(DATA),
            "--out",
            str(out),
            "--limit",
            "5",
            "--clusters",
            "4",
            "--residency-queries",
            "200",
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "cost/quality" in result.output and "aggregation" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["datasets"]["mmlu"]["questions"] == 57 * 5
    assert (out / "cost_quality.png").exists() and (out / "online_trust.png").exists()


def test_cli_eval_recorded_missing_data_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", "recorded", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "shared/data" in result.output or "nope" in result.output
    assert "Traceback" not in result.output
