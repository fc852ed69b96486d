"""The CLI, driven through typer's runner on a pipeline of offline litellm mock backends."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_agents.cli import app
from moe_agents.routing.trust import TrustStore

CONFIG = """\
router: {top_k: 1}
backends:
  mock:
    kind: litellm
    model: openai/gpt-4o-mini
    api_key: sk-test
    params: {mock_response: "Mocked answer from the model."}
  broken:
    kind: litellm
    model: openai/gpt-4o-mini
    api_key: sk-test
    num_retries: 0
    params: {mock_response: "litellm.InternalServerError"}
experts:
  - {name: coding, kind: coding, backends: [mock]}
  - {name: reasoning, kind: reasoning, backends: [mock]}
  - {name: knowledge, kind: knowledge, backends: [mock], documents: [{text: "Atlantis has two moons."}]}
  - {name: epistemic, kind: epistemic, backends: [broken]}
  - {name: omni, kind: omni, backends: []}
"""

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cli.yaml"
    path.write_text(textwrap.dedent(CONFIG), encoding="utf-8")
    return path


class TestAsk:
    def test_ask_prints_the_answer(self, config: Path) -> None:
        """`ask` prints the merged answer on stdout."""
        out = runner.invoke(app, ["ask", "Fix this Python traceback please", "--config", str(config)])
        assert out.exit_code == 0, out.output
        assert "Mocked answer from the model." in out.stdout

    def test_ask_json_has_selection_and_answer(self, config: Path) -> None:
        """`ask --json` prints the result as JSON with the selection's scores."""
        out = runner.invoke(
            app, ["ask", "Write a Python function to sort a list", "--json", "-c", str(config)]
        )
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["answer"]["text"] == "Mocked answer from the model."
        assert data["selection"]["experts"] == ["coding"]
        assert set(data["selection"]["scores"]) == {"coding", "reasoning", "knowledge", "epistemic", "omni"}

    def test_failing_expert_falls_back_and_is_reported(self, config: Path) -> None:
        """An expert whose backend fails is reported while a fallback expert answers."""
        out = runner.invoke(app, ["ask", "Do you think free will exists?", "--json", "-c", str(config)])
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["selection"]["experts"] == ["epistemic"]
        assert "epistemic" in data["errors"]
        assert data["answer"]["text"] == "Mocked answer from the model."

    def test_image_without_multimodal_backend_is_a_clear_error(self, config: Path, tmp_path: Path) -> None:
        """An image goes to omni; with no multimodal backend the CLI exits 1 with one error line."""
        image = tmp_path / "cat.png"
        image.write_bytes(b"\x89PNG\r\n\x1a\n")
        out = runner.invoke(
            app, ["ask", "What is in this picture?", "--image", str(image), "-c", str(config)]
        )
        assert out.exit_code == 1
        assert "omni" in out.stderr and "Traceback" not in out.output

    def test_missing_attachment(self, config: Path) -> None:
        """A missing attachment path exits 2 naming the path."""
        out = runner.invoke(app, ["ask", "what?", "--image", "/nonexistent/x.png", "-c", str(config)])
        assert out.exit_code == 2
        assert "/nonexistent/x.png" in out.stderr

    def test_bad_config_is_one_line(self, tmp_path: Path) -> None:
        """A broken config exits 1 with file:line and no traceback."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("experts:\n  - name: a\n    kind: wizard\n", encoding="utf-8")
        out = runner.invoke(app, ["ask", "hi", "-c", str(bad)])
        assert out.exit_code == 1
        assert f"{bad}:3" in out.stderr and "wizard" in out.stderr
        assert "Traceback" not in out.output


class TestRoute:
    def test_route_json(self, config: Path) -> None:
        """`route --json` shows the selection without calling any model."""
        out = runner.invoke(app, ["route", "What is 17 * 23?", "--json", "-c", str(config)])
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["experts"] == ["reasoning"]
        assert abs(sum(data["weights"]) - 1) < 1e-9

    def test_route_table(self, config: Path) -> None:
        """`route` prints a table of every expert's scores."""
        out = runner.invoke(app, ["route", "Who painted the Mona Lisa?", "-c", str(config)])
        assert out.exit_code == 0, out.output
        for name in ("coding", "reasoning", "knowledge", "epistemic", "omni"):
            assert name in out.stdout


class TestExperts:
    def test_lists_experts(self, config: Path) -> None:
        """`experts` lists each expert with its kind and backends."""
        out = runner.invoke(app, ["experts", "-c", str(config)], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        assert "KnowledgeExpert" in out.stdout and "litellm:openai/gpt-4o-mini" in out.stdout

    def test_stats_without_trust_store_says_there_is_nothing_to_rank_by(self, config: Path) -> None:
        """`experts --stats` without a trust store ranks nothing and says the process made no calls."""
        out = runner.invoke(app, ["experts", "--stats", "-c", str(config)])
        assert out.exit_code == 0, out.output
        assert "nothing to rank by" in out.stdout
        assert "this process has made no calls" in out.stdout and "no trust store" in out.stdout

    def test_stats_rank_by_the_trust_store(self, config: Path, tmp_path: Path) -> None:
        """`experts --stats` ranks by the trust store's scores and says so in the caption."""
        db = tmp_path / "trust.db"
        with TrustStore(db) as store:
            for _ in range(5):
                store.record("knowledge", "ctx", 1.0)
                store.record("coding", "ctx", 0.0)
        with_trust = tmp_path / "trust.yaml"
        with_trust.write_text(f"trust: {{path: {db}}}\n" + config.read_text(), encoding="utf-8")
        out = runner.invoke(app, ["experts", "--stats", "-c", str(with_trust)], env={"COLUMNS": "400"})
        assert out.exit_code == 0, out.output
        experts = {"coding", "reasoning", "knowledge", "epistemic", "omni"}
        ranked = [word for word in out.stdout.replace("│", " ").split() if word in experts]
        assert ranked == ["knowledge", "epistemic", "omni", "reasoning", "coding"]
        assert "ranked by trust" in out.stdout and f"trust store {db}: 10 scores" in out.stdout
        assert "this process has made no calls" in out.stdout
        assert "no scores recorded" not in out.stdout

    def test_stats_with_an_empty_trust_store_says_every_trust_is_the_prior(
        self, config: Path, tmp_path: Path
    ) -> None:
        """With a trust store but no scores in it, `experts --stats` shows the prior and says so."""
        with_trust = tmp_path / "trust.yaml"
        with_trust.write_text(f"trust: {{path: {tmp_path / 'trust.db'}}}\n" + config.read_text())
        out = runner.invoke(app, ["experts", "--stats", "-c", str(with_trust)], env={"COLUMNS": "400"})
        assert out.exit_code == 0, out.output
        assert "no scores recorded" in out.stdout and "every expert has the prior trust" in out.stdout
        assert out.stdout.count("0.500") == 5


class TestChat:
    def test_chat_session(self, config: Path) -> None:
        """A scripted chat: a request streams its answer, /route, /feedback and /quit work."""
        script = "\n".join(
            [
                "Write a Python function to add numbers",
                "/route Who wrote Hamlet?",
                "/feedback good",
                "/bogus",
                "/quit",
            ]
        )
        out = runner.invoke(app, ["chat", "-c", str(config)], input=script + "\n")
        assert out.exit_code == 0, out.output
        assert "Mocked answer from the model." in out.stdout
        assert "→ coding" in out.stdout
        assert "knowledge" in out.stdout
        assert "recorded good for coding" in out.stdout
        assert "unknown command /bogus" in out.stdout

    def test_chat_ends_on_eof(self, config: Path) -> None:
        """End of input ends the chat cleanly."""
        out = runner.invoke(app, ["chat", "-c", str(config)], input="")
        assert out.exit_code == 0, out.output


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class TestFit:
    def test_fit_reports_and_saves_the_gate(self, config: Path, tmp_path: Path) -> None:
        """`fit` trains the gate with extra JSONL exemplars, prints counts and saves the gate."""
        extra = tmp_path / "extra.jsonl"
        extra.write_text('{"text": "Refactor this Go struct into an interface", "expert": "coding"}\n')
        out = tmp_path / "gate.safetensors"
        result = runner.invoke(
            app, ["fit", "-c", str(config), "--data", str(extra), "--out", str(out)], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 0, result.output
        assert "validation accuracy" in result.stdout
        assert out.exists() and out.with_suffix(".json").exists()
        coding_row = next(line for line in result.stdout.splitlines() if "coding" in line)
        from moe_agents.experts import CodingExpert

        assert str(len(CodingExpert.default_exemplars) + 1) in coding_row

    def test_fit_rejects_exemplars_for_unknown_experts(self, config: Path, tmp_path: Path) -> None:
        """Exemplars naming an expert the pipeline lacks are a one-line error."""
        extra = tmp_path / "extra.jsonl"
        extra.write_text('{"text": "hello", "expert": "wizard"}\n')
        result = runner.invoke(app, ["fit", "-c", str(config), "--data", str(extra)])
        assert result.exit_code == 1
        assert "wizard" in result.stderr


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared evaluation data not found at {DATA}")
class TestEvalRouting:
    def test_small_routing_benchmark(self, config: Path, tmp_path: Path) -> None:
        """`eval routing` scores six routers (one cross-validated) and semantic-router on a small
        sample, with intervals, the paired test, calibration and the out-of-scope fallback; writes
        JSON, Markdown and 3 PNGs."""
        report, plot, md = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.md"
        result = runner.invoke(
            app,
            [
                "eval",
                "routing",
                "-c",
                str(config),
                "--data",
                str(DATA),
                "--per-label",
                "8",
                "--fit-per-label",
                "8",
                "--resamples",
                "200",
                "--oos-limit",
                "40",
                "--json",
                str(report),
                "--plot",
                str(plot),
                "--markdown",
                str(md),
            ],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        assert set(data["variants"]) == {"exemplars", "exemplars+fit"}
        for routers in data["variants"].values():
            contenders = {"keyword", "centroid", "knn", "mlp", "router", "router-cv", "semantic-router"}
            assert set(routers) == contenders
            for r in routers.values():
                low, high = r["ci95"]
                assert 0.0 <= low <= r["accuracy"] <= high <= 1.0
                assert r["text_only"]["n"] == 32  # the 8 omni queries carry an image
        assert data["set"]["per_label"] == {
            label: 8 for label in ("coding", "reasoning", "knowledge", "epistemic", "omni")
        }
        for variant in ("exemplars", "exemplars+fit"):
            paired = data["paired"][variant]["text_only"]
            router = data["variants"][variant]["router"]["text_only"]["accuracy"]
            peer = data["variants"][variant]["semantic-router"]["text_only"]["accuracy"]
            assert (paired["b_router_only"] - paired["c_peer_only"]) / 32 == pytest.approx(router - peer)
            assert 0.0 < paired["mcnemar_p"] <= 1.0
            assert set(data["calibration"][variant]) == {"mlp", "router", "router-cv"}
            assert sum(data["calibration"][variant]["router"]["count"]) == 40
            cv = data["gates"][variant]["router-cv"]["cv"]  # chosen on the exemplars, recorded
            assert cv["gate"] in ("mlp", "knn", "centroid", "ensemble") and 0.0 <= cv["gate_weight"] <= 1.0
            assert data["paired"][f"{variant}, router-cv"]["router"] == "router-cv"
        oos = data["out_of_scope"]
        assert oos["oos_n"] == 40 and oos["inscope_n"] == 40 and oos["fit"]["oos_n"] == 200
        assert 0.0 <= oos["threshold"] <= 1.0 and oos["fit"]["inscope_lost"] <= 0.03
        assert data["speed"]["single_query"]["p50_ms"] > 0
        for png in (plot, tmp_path / "r-reliability.png", tmp_path / "r-oos.png"):
            assert png.stat().st_size > 1000
        assert "| full router (MLP gate × self-assessment × load) | `exemplars` |" in md.read_text()
        assert "McNemar" in result.stdout and "out-of-scope" in result.stdout
        assert "single-query routing" in result.stdout
