"""The token-router benchmark end to end on a very small model: train, cache, replay, report, plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from moe_agents.errors import ConfigError
from moe_agents.token_router import TokenPolicy
from moe_agents.token_router.bench import evaluate_token_router, offload_speed
from moe_agents.token_router.bench_report import TokenRouterTargets, plot_token_router, render_token_router
from moe_agents.token_router.train import train_tiny_moe
from moe_agents.token_router.tune import QualityLimits

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TINY = dict(layers=2, experts=8, top_k=2, hidden=32, steps=20, batch_size=4, max_minutes=0.5)
TARGETS = TokenRouterTargets(
    hit_rate_gain_points=15.0, quality=QualityLimits(), selection_pct_of_moe_block=5.0
)

pytestmark = pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").is_file(), reason="shared data absent")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]:
    out = tmp_path_factory.mktemp("ckpt")
    with capture_logs() as first_logs:
        first = train_tiny_moe(DATA, out, progress=False, **TINY)  # type: ignore[arg-type]
    with capture_logs() as second_logs:
        second = train_tiny_moe(DATA, out, progress=False, **TINY)  # type: ignore[arg-type]
    assert first == second
    assert [e["event"] for e in first_logs] == ["token_bench.trained"]
    report = evaluate_token_router(
        first, DATA, cache_fractions=(0.5,), lambdas=(0.0, 0.4), balance_gammas=(0.0, 1e-3), tokens=150,
        tune_tokens=120, timing_calls=20, progress=False, offload_tokens=6, offload_repeats=2, trust_max=1.0,
        calibration_tokens=200, targets=TARGETS,
    )  # fmt: skip
    return first, out, second_logs, report


class TestTokenRouterBench:
    def test_checkpoint_cached(self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]) -> None:
        """The second call with the same settings reuses the checkpoint instead of training."""
        path, out, second_logs, _ = run
        assert (path / "train.json").is_file() and path.parent == out
        assert [e["event"] for e in second_logs] == ["token_bench.checkpoint_reused"]
        assert len(list(out.iterdir())) == 1

    def test_report_shape_and_ranges(
        self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """The report has both modes, hit rates in [0, 1], and Belady at least plain LRU."""
        report = run[3]
        assert report["capacities"] == [4] and report["two_k_capacity"] == 4
        for mode in ("decode", "prefill"):
            plain = report[mode]["plain"]["4"]
            assert set(plain) == {"lru", "lru+hysteresis", "belady"}
            rates = [plain["lru"]["hit_rate"], plain["belady"]["hit_rate"]] + [
                r["hit_rate"] for r in report[mode]["ours"]["4"].values()
            ]
            assert all(0.0 <= x <= 1.0 for x in rates)
            assert plain["belady"]["hit_rate"] >= plain["lru"]["hit_rate"]
            assert report[mode]["plain_ppl"] > 1.0
        assert report["overhead"]["moe_block_us"] > 0 and "selection_pct_of_moe_block" in report["overhead"]
        assert set(report["targets"]["per_lambda"]) == {"0.4"}
        assert report["targets"]["tuned"]["label"] == report["decode"]["tuned"]["label"]

    def test_lambda_zero_is_plain(self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]) -> None:
        """λ = 0 routes exactly like plain top-k: the same LRU hit rate and ΔPPL 0."""
        report = run[3]
        for mode in ("decode", "prefill"):
            ours, plain = report[mode]["ours"]["4"]["0.0"], report[mode]["plain"]["4"]["lru"]
            assert ours["hit_rate"] == plain["hit_rate"]
            assert ours["delta_ppl_pct"] == 0.0

    def test_bonus_raises_decode_hit_rate(
        self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """A strong cache bonus (λ = 0.4) hits the cache more often than plain top-k + LRU in decode."""
        report = run[3]
        assert (
            report["decode"]["ours"]["4"]["0.4"]["hit_rate"]
            > report["decode"]["plain"]["4"]["lru"]["hit_rate"]
        )

    def test_offload_speed_reported(
        self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """The real-offload decode run reports tokens/s for all three settings and the target verdict."""
        report = run[3]
        off = report["offload"]
        chosen = report["tuning"]["chosen"]
        assert off["capacity"] == 4 and off["tokens"] == 6 and off["repeats"] == 2
        assert (off["lambda"], off["balance_gamma"]) == (chosen["lambda"], chosen["balance_gamma"])
        for name in ("resident", "plain", "ours"):
            assert off[name]["tokens_per_s"] > 0 and len(off[name]["runs_tokens_per_s"]) == 2
        for name in ("plain", "ours"):
            assert 0.0 <= off[name]["hit_rate"] <= 1.0 and off[name]["bytes_copied"] >= 0
            assert off[name]["hits"] + off[name]["misses"] == 6 * report["model"]["layers"] * 2
        verdict = report["targets"]["offload_decode_tokens_per_s"]
        assert verdict["verdict"] in {"met", "NOT met"} and verdict["met"] == (verdict["verdict"] == "met")

    def test_trust_row(self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]) -> None:
        """With trust_max > 0 each mode has an "ours λ=x + trust" row calibrated on train text."""
        report = run[3]
        assert report["trust_calibration"]["split"] == "gsm8k train"
        assert report["trust_calibration"]["tokens"] <= 200
        for mode in ("decode", "prefill"):
            row = report[mode]["trust"]
            tuned = report[mode]["tuned"]
            assert row["label"] == f"{tuned['label']} + trust" and row["trust_max"] == 1.0
            assert 0.0 <= row["hit_rate"] <= 1.0 and row["ppl"] > 1.0

    def test_offload_speed_rejects_zero_tokens(
        self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """offload_speed needs at least one token."""
        with pytest.raises(ConfigError, match="tokens=0"):
            offload_speed(run[0], DATA, capacity=4, policy=TokenPolicy(lam=0.1), tokens=0)

    def test_tuning_on_train_text(self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]) -> None:
        """The operating point is chosen on train text among the λ > 0 × γ grid, and replayed on test."""
        report = run[3]
        tune = report["tuning"]
        assert tune["split"] == "gsm8k train" and tune["tokens"] <= 120
        assert set(tune["rows"]) == {"0.4/0.0", "0.4/0.001"}
        chosen = tune["chosen"]
        qualified = [r for r in tune["rows"].values() if r["quality_met"]] or [
            r for r in tune["rows"].values() if r["delta_ppl_pct"] <= 1.0
        ]
        if qualified:
            best = max(qualified, key=lambda r: r["hit_rate"])
            assert (chosen["lambda"], chosen["balance_gamma"]) == (best["lambda"], best["balance_gamma"])
        for mode in ("decode", "prefill"):
            tuned = report[mode]["tuned"]
            assert (tuned["lambda"], tuned["balance_gamma"]) == (chosen["lambda"], chosen["balance_gamma"])
            assert 0.0 <= tuned["hit_rate"] <= 1.0 and tuned["capacity"] == 4

    def test_render_has_every_section(
        self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """The console rendering has the model line, tuning, both modes, overhead, offload and targets."""
        from rich.console import Console

        console = Console(width=200, record=True)
        for renderable in render_token_router(run[3]):
            console.print(renderable)
        text = console.export_text()
        for part in ("tiny Qwen3-MoE", "tuning on gsm8k train", "decode (GSM8K test)", "prefill (GSM8K test)",
                     "router cost per layer-token", "real offload", "targets at C = 2k"):  # fmt: skip
            assert part in text

    def test_deployment_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The deployment-size runs (shrunk here) report the overhead and the three offload speeds."""
        from moe_agents.token_router import bench

        monkeypatch.setitem(bench.DEPLOYMENT_LAYER, "hidden", 64)
        monkeypatch.setitem(bench.DEPLOYMENT_LAYER, "experts", 8)
        monkeypatch.setitem(bench.DEPLOYMENT_LAYER, "top_k", 2)
        monkeypatch.setitem(bench.DEPLOYMENT_LAYER, "moe_intermediate", 16)
        runs = bench.deployment_runs(
            TokenPolicy(lam=0.4, protect_top_j=1),
            DATA,
            number=3,
            repeats=1,
            offload_tokens=5,
            offload_repeats=1,
        )
        assert runs["overhead"]["capacity"] == 4 and runs["overhead"]["moe_block_us"] > 0
        off = runs["offload"]
        assert off["tokens"] == 5 and off["weights"] == "random (timing only)"
        for name in ("plain", "ours"):
            assert off[name]["hits"] + off[name]["misses"] == 5 * 2

    def test_plot_written(
        self, run: tuple[Path, Path, list[dict[str, Any]], dict[str, Any]], tmp_path: Path
    ) -> None:
        """The Pareto plot is a PNG file."""
        path = plot_token_router(run[3], tmp_path / "plot.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_missing_data_raises(self, tmp_path: Path) -> None:
        """A data folder without GSM8K raises ConfigError naming the path."""
        with pytest.raises(ConfigError, match=r"train\.jsonl"):
            train_tiny_moe(tmp_path, tmp_path, progress=False)
