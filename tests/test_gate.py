"""Gates over exemplar embeddings (MLP, centroid, k-NN): fit, calibration, save/load, fingerprints."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from moe_agents.errors import ConfigError
from moe_agents.routing.gates import (
    CentroidGate,
    EnsembleGate,
    FitReport,
    Gate,
    GateConfig,
    GatingNetwork,
    KNNGate,
    calibrate_temperature,
    fit_gate,
    gate_fingerprint,
    load_gate,
)

EXPERTS = ("alpha", "beta", "gamma", "delta", "epsilon")
KINDS = ["mlp", "centroid", "knn", "ensemble"]
FAST = {"hidden": 32, "max_epochs": 80, "patience": 10}  # a small MLP keeps the tests quick


def centres(n: int = 5, dim: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors in ``dim`` dimensions."""
    c = np.random.default_rng(seed).standard_normal((n, dim))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def sample(
    c: np.ndarray, counts: Sequence[int], *, noise: float = 0.1, seed: int = 1
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Gaussian clusters around ``c`` projected on the unit sphere: embeddings, labels, label indices."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(counts)), counts)
    x = c[rows] + noise * rng.standard_normal((len(rows), c.shape[1]))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, [EXPERTS[i] for i in rows], rows


def config(kind: str, **overrides: Any) -> GateConfig:
    return GateConfig(**({"kind": kind} | (FAST if kind in ("mlp", "ensemble") else {}) | overrides))


def nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


@pytest.fixture(scope="module")
def clusters() -> dict[str, Any]:
    """Five separable clusters in 32-D: 50 training and 20 test points each."""
    c = centres()
    x, labels, _ = sample(c, [50] * 5, seed=1)
    x_test, _, y_test = sample(c, [20] * 5, seed=2)
    return {"x": x, "labels": labels, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="module")
def fitted(clusters: dict[str, Any]) -> dict[str, Gate]:
    """One gate of each kind fitted on ``clusters``."""
    return {kind: fit_gate(clusters["x"], clusters["labels"], EXPERTS, config(kind))[0] for kind in KINDS}


class TestGateConfig:
    def test_defaults(self) -> None:
        """The defaults are an MLP with the documented settings."""
        cfg = GateConfig()
        assert (cfg.kind, cfg.hidden, cfg.dropout, cfg.lr, cfg.max_epochs, cfg.patience) == (
            "mlp",
            256,
            0.1,
            3e-3,
            400,
            30,
        )
        assert (cfg.val_fraction, cfg.batch_size, cfg.seed, cfg.temperature, cfg.k) == (0.2, 64, 0, 0.05, 5)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("kind", "svm"),
            ("hidden", 1),
            ("hidden", 2.5),
            ("dropout", 1.0),
            ("lr", 0.0),
            ("weight_decay", -1e-3),
            ("max_epochs", 0),
            ("patience", 0),
            ("val_fraction", 1.0),
            ("batch_size", 0),
            ("seed", -1),
            ("temperature", 0.0),
            ("k", 0),
        ],
        ids=[
            "kind",
            "hidden-small",
            "hidden-float",
            "dropout",
            "lr",
            "weight_decay",
            "max_epochs",
            "patience",
            "val_fraction",
            "batch_size",
            "seed",
            "temperature",
            "k",
        ],
    )
    def test_invalid_values_are_config_errors(self, field: str, value: object) -> None:
        """An out-of-range setting is rejected when configured, naming the setting."""
        with pytest.raises(ConfigError, match=rf"gate\.{field}"):
            GateConfig(**{field: value})  # type: ignore[arg-type]


class TestFitGate:
    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_separable_clusters_are_classified_perfectly(
        self, kind: str, fitted: dict[str, Gate], clusters: dict[str, Any]
    ) -> None:
        """Every held-out point of five separable clusters goes to its cluster's expert."""
        p = fitted[kind].predict_proba(clusters["x_test"])
        assert np.mean(p.argmax(axis=1) == clusters["y_test"]) == 1.0

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_probabilities_are_distributions(
        self, kind: str, fitted: dict[str, Gate], clusters: dict[str, Any]
    ) -> None:
        """Rows are float64 probabilities in [0, 1] summing to 1, one column per expert."""
        rng = np.random.default_rng(3)
        noise = rng.standard_normal((30, 32)).astype(np.float32)
        queries = np.concatenate([clusters["x_test"], noise / np.linalg.norm(noise, axis=1, keepdims=True)])
        p = fitted[kind].predict_proba(queries)
        assert p.shape == (len(queries), len(EXPERTS))
        assert p.dtype == np.float64
        assert p.min() >= 0.0
        assert p.max() <= 1.0
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_gate_satisfies_protocol_and_reports(
        self, kind: str, fitted: dict[str, Gate], clusters: dict[str, Any]
    ) -> None:
        """Each kind is a ``Gate`` with its experts, config and a report counting the exemplars."""
        gate = fitted[kind]
        assert isinstance(gate, Gate)
        assert gate.experts == EXPERTS
        assert gate.config.kind == kind
        assert (gate.encoder, gate.fingerprint) == (None, None)
        assert isinstance(gate.report, FitReport)
        assert gate.report.counts == dict.fromkeys(EXPERTS, 50)
        assert gate.report.train_size + gate.report.val_size == 250

    @pytest.mark.parametrize("kind", ["centroid", "knn"], ids=["centroid", "knn"])
    def test_similarity_gates_use_configured_temperature(self, kind: str, clusters: dict[str, Any]) -> None:
        """Centroid and k-NN gates train nothing: no split, no epochs, the configured temperature."""
        _, report = fit_gate(clusters["x"], clusters["labels"], EXPERTS, config(kind, temperature=0.2))
        assert (report.train_size, report.val_size, report.val_accuracy, report.epochs) == (250, 0, None, 0)
        assert report.temperature == 0.2

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_columns_follow_the_given_expert_order(self, kind: str, clusters: dict[str, Any]) -> None:
        """Column j of ``predict_proba`` is the probability of ``experts[j]``, whatever their order."""
        order = ("gamma", "epsilon", "alpha", "delta", "beta")
        gate, _ = fit_gate(clusters["x"], clusters["labels"], order, config(kind))
        predicted = [gate.experts[j] for j in gate.predict_proba(clusters["x_test"]).argmax(axis=1)]
        assert gate.experts == order
        assert predicted == [EXPERTS[i] for i in clusters["y_test"]]

    def test_centroid_gate_is_a_softmax_over_centroid_cosines(self, clusters: dict[str, Any]) -> None:
        """The centroid gate's probabilities are softmax(cos(query, normalised mean) / temperature)."""
        gate, _ = fit_gate(clusters["x"], clusters["labels"], EXPERTS, config("centroid", temperature=0.3))
        x, labels = clusters["x"], np.array(clusters["labels"])
        means = np.stack([x[labels == name].mean(axis=0) for name in EXPERTS])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        z = clusters["x_test"] @ means.T / 0.3
        expected = np.exp(z - z.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(gate.predict_proba(clusters["x_test"]), expected, rtol=1e-5, atol=1e-7)

    def test_knn_gate_votes_with_nearest_neighbours_only(self) -> None:
        """With k=1 a query takes its nearest exemplar's expert; other experts keep a tiny floor."""
        x = np.eye(3, dtype=np.float32)
        gate, _ = fit_gate(x, ["alpha", "beta", "gamma"], ["alpha", "beta", "gamma"], config("knn", k=1))
        p = gate.predict_proba(np.array([[0.9, 0.1, 0.0]], dtype=np.float32))
        assert p.argmax() == 0
        assert 0.0 < p[0, 1] < 1e-5
        assert 0.0 < p[0, 2] < 1e-5

    def test_ensemble_is_the_mean_of_its_members(
        self, fitted: dict[str, Gate], clusters: dict[str, Any]
    ) -> None:
        """The ensemble's probabilities are the mean of an MLP, a k-NN and a centroid gate fitted
        with the same settings on the same exemplars."""
        gate = fitted["ensemble"]
        assert isinstance(gate, EnsembleGate)
        assert [m.kind for m in gate.members] == ["mlp", "knn", "centroid"]
        members = [fitted[kind].predict_proba(clusters["x_test"]) for kind in ("mlp", "knn", "centroid")]
        np.testing.assert_allclose(gate.predict_proba(clusters["x_test"]), np.mean(members, axis=0))

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_scaling_the_temperature_tempers_the_probabilities(
        self, kind: str, clusters: dict[str, Any]
    ) -> None:
        """Multiplying a gate's temperature by s gives ``temper(p, s)`` for every kind: what
        cross-validation scores is what the router applies."""
        from moe_agents.routing.crossval import temper

        gate, _ = fit_gate(clusters["x"], clusters["labels"], EXPERTS, config(kind))
        queries = clusters["x_test"] * 0.5 + clusters["x"][:100] * 0.5  # between clusters: soft rows
        before = gate.predict_proba(queries)
        gate.temperature *= 2.0  # type: ignore[attr-defined]
        np.testing.assert_allclose(gate.predict_proba(queries), temper(before, 2.0), rtol=1e-6, atol=1e-9)

    def test_empty_query_batch_gives_empty_rows(self, fitted: dict[str, Gate]) -> None:
        """Zero queries give a (0, E) array for every kind."""
        shapes = {
            kind: gate.predict_proba(np.zeros((0, 32), np.float32)).shape for kind, gate in fitted.items()
        }
        assert shapes == dict.fromkeys(KINDS, (0, 5))

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_wrong_embedding_size_is_a_config_error(self, kind: str, fitted: dict[str, Gate]) -> None:
        """Queries from an encoder of another dimension are rejected with both sizes named."""
        with pytest.raises(ConfigError, match=r"32-d embeddings, got 16-d"):
            fitted[kind].predict_proba(np.zeros((2, 16), np.float32))

    @pytest.mark.parametrize(
        ("labels", "experts", "match"),
        [
            (["a", "b", "zeta"], ["a", "b"], r"labels \['zeta'\] are not experts"),
            (["a", "b", "a"], ["a", "b", "c"], r"experts \['c'\] have no exemplars"),
            (["a", "a", "a"], ["a"], r"at least two experts"),
            (["a", "b"], ["a", "b"], r"shape \(2, D\)"),
            (["a", "b", "a"], ["a", "b", "a"], r"repeat: \['a'\]"),
        ],
        ids=["unknown-label", "expert-without-exemplars", "one-expert", "shape-mismatch", "duplicate-expert"],
    )
    def test_bad_inputs_are_config_errors(self, labels: list[str], experts: list[str], match: str) -> None:
        """Inputs a gate cannot be fitted on are rejected with a message that says what is wrong."""
        x = np.eye(3, 8, dtype=np.float32)
        with pytest.raises(ConfigError, match=match):
            fit_gate(x, labels, experts, GateConfig())


class TestGatingNetwork:
    def test_split_is_stratified(self, fitted: dict[str, Gate]) -> None:
        """A fifth of each expert's exemplars is held out: 40 train and 10 validation each."""
        assert fitted["mlp"].report is not None
        assert (fitted["mlp"].report.train_size, fitted["mlp"].report.val_size) == (200, 50)
        assert fitted["mlp"].report.val_accuracy == 1.0

    def test_expert_with_one_exemplar_is_trained_on(self) -> None:
        """An expert with a single exemplar keeps it for training and its exemplar is routed to it."""
        x, labels, _ = sample(centres(3), [10, 10, 1])
        gate, report = fit_gate(x, labels, EXPERTS[:3], config("mlp"))
        assert (report.train_size, report.val_size) == (17, 4)
        assert gate.predict_proba(x[-1:]).argmax() == 2

    def test_without_validation_split_temperature_is_one(self, clusters: dict[str, Any]) -> None:
        """With ``val_fraction=0`` every exemplar is trained on and the temperature stays 1."""
        gate, report = fit_gate(clusters["x"], clusters["labels"], EXPERTS, config("mlp", val_fraction=0.0))
        assert (report.train_size, report.val_size, report.val_accuracy) == (250, 0, None)
        assert report.temperature == 1.0
        assert np.mean(gate.predict_proba(clusters["x_test"]).argmax(axis=1) == clusters["y_test"]) == 1.0

    def test_same_seed_gives_identical_probabilities(self, clusters: dict[str, Any]) -> None:
        """Two fits with the same seed and inputs give bit-identical probabilities."""
        runs = [fit_gate(clusters["x"], clusters["labels"], EXPERTS, config("mlp", seed=7)) for _ in range(2)]
        (a, ra), (b, rb) = runs
        assert np.array_equal(a.predict_proba(clusters["x_test"]), b.predict_proba(clusters["x_test"]))
        assert (ra.epochs, ra.temperature) == (rb.epochs, rb.temperature)

    def test_different_seed_gives_different_weights(self, clusters: dict[str, Any]) -> None:
        """Fits with different seeds start from, and end at, different weights."""
        gates = [
            fit_gate(clusters["x"], clusters["labels"], EXPERTS, config("mlp", seed=s))[0] for s in (1, 2)
        ]
        weights = [g.net.get_parameter("fc1.weight") for g in gates if isinstance(g, GatingNetwork)]
        assert len(weights) == 2
        assert not bool((weights[0] == weights[1]).all())

    def test_fit_leaves_global_torch_rng_alone(self, clusters: dict[str, Any]) -> None:
        """Fitting neither reseeds nor advances torch's global random generator."""
        import torch

        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        fit_gate(clusters["x"], clusters["labels"], EXPERTS, config("mlp", max_epochs=5))
        assert torch.equal(torch.rand(3), expected)

    def test_minority_cluster_is_predicted_despite_imbalance(self) -> None:
        """With 10 times fewer exemplars, held-out points of the minority cluster still go to it."""
        c = centres(2, seed=5)
        x, labels, _ = sample(c, [200, 20], noise=0.35, seed=6)  # overlapping: unweighted training gets ~0.8
        x_test, _, y_test = sample(c, [0, 100], noise=0.35, seed=7)
        gate, _ = fit_gate(x, labels, EXPERTS[:2], config("mlp"))
        assert np.mean(gate.predict_proba(x_test).argmax(axis=1) == y_test) >= 0.9

    def test_progress_is_called_once_per_epoch(self, clusters: dict[str, Any]) -> None:
        """``progress(epoch, max_epochs)`` is called after every epoch run, in order."""
        calls: list[tuple[int, int]] = []
        _, report = fit_gate(
            clusters["x"],
            clusters["labels"],
            EXPERTS,
            config("mlp"),
            progress=lambda e, n: calls.append((e, n)),
        )
        assert report.epochs >= 1
        assert calls == [(e, 80) for e in range(1, report.epochs + 1)]

    @pytest.mark.parametrize(
        ("overrides", "epochs"),
        [({"max_epochs": 3, "patience": 50}, 3), ({"max_epochs": 400, "patience": 2}, None)],
        ids=["max_epochs", "patience"],
    )
    def test_training_stops_at_max_epochs_or_patience(
        self, clusters: dict[str, Any], overrides: dict[str, int], epochs: int | None
    ) -> None:
        """Training runs at most ``max_epochs`` and stops early once validation loss stops improving."""
        _, report = fit_gate(clusters["x"], clusters["labels"], EXPERTS, config("mlp", **overrides))
        if epochs is not None:
            assert report.epochs == epochs
        else:
            assert report.epochs < 400

    def test_calibrated_temperature_scales_the_logits(self) -> None:
        """On overlapping clusters calibration moves T off 1; probabilities are softmax(logits / T)."""
        c = centres(3, seed=8)
        x, labels, _ = sample(c, [60, 60, 60], noise=0.35, seed=9)
        gate, report = fit_gate(
            x, labels, EXPERTS[:3], config("mlp", dropout=0.0, weight_decay=0.0, val_fraction=0.4, seed=3)
        )
        assert isinstance(gate, GatingNetwork)
        assert report.temperature != 1.0
        assert gate.temperature == report.temperature
        z = gate.logits(x) / report.temperature
        expected = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(gate.predict_proba(x), expected / expected.sum(axis=1, keepdims=True))
        np.testing.assert_allclose(gate.predict_proba(x).sum(axis=1), 1.0, atol=1e-9)

    def test_real_encoder_routes_obvious_queries(self, minilm: Any) -> None:
        """An MLP fitted on MiniLM embeddings of 8 exemplars per topic routes held-out obvious queries."""
        exemplars = {
            "cooking": [
                "How long should I boil an egg for a runny yolk?",
                "What can I use instead of butter when baking cookies?",
                "How do I make a creamy tomato pasta sauce?",
                "Best way to season a cast iron skillet",
                "How much salt goes into bread dough?",
                "Recipe for a quick vegetable stir fry",
                "Why did my cake sink in the middle of the oven?",
                "How do I caramelise onions properly?",
            ],
            "astronomy": [
                "How far away is the Andromeda galaxy?",
                "Why does Saturn have rings?",
                "What is a black hole's event horizon?",
                "When is the next total solar eclipse?",
                "How do astronomers find exoplanets?",
                "What causes the phases of the Moon?",
                "How hot is the surface of the Sun?",
                "Which telescope is best for seeing nebulae?",
            ],
            "programming": [
                "How do I reverse a list in Python?",
                "What is the difference between a process and a thread?",
                "Fix a null pointer exception in Java",
                "How do I write a unit test with pytest?",
                "Explain recursion with a code example",
                "How to merge two branches in git",
                "What does async await do in JavaScript?",
                "Sort a dictionary by value in Python",
            ],
        }
        texts = [t for ts in exemplars.values() for t in ts]
        labels = [name for name, ts in exemplars.items() for _ in ts]
        gate, report = fit_gate(minilm.encode(texts), labels, list(exemplars), GateConfig())
        queries = {
            "What temperature should I roast a chicken at?": "cooking",
            "How do I whisk egg whites into stiff peaks?": "cooking",
            "How many moons does Jupiter have?": "astronomy",
            "What is a supernova?": "astronomy",
            "How do I read a CSV file in Python?": "programming",
            "What is a segmentation fault in C?": "programming",
        }
        p = gate.predict_proba(minilm.encode(list(queries)))
        assert report.val_size == 6
        assert [gate.experts[j] for j in p.argmax(axis=1)] == list(queries.values())


class TestCalibrateTemperature:
    def test_overconfident_logits_are_softened(self) -> None:
        """Confident logits that are wrong a third of the time get T > 1 and a lower NLL than T = 1."""
        rng = np.random.default_rng(0)
        y = rng.integers(0, 4, 300)
        predicted = np.where(rng.random(300) < 0.67, y, (y + 1) % 4)
        logits = 8.0 * np.eye(4)[predicted] + rng.normal(0, 0.5, (300, 4))
        t = calibrate_temperature(logits, y)
        p1, pt = (np.exp(logits / s) / np.exp(logits / s).sum(axis=1, keepdims=True) for s in (1.0, t))
        assert t > 2.0
        assert nll(pt, y) < nll(p1, y) - 0.5

    def test_underconfident_logits_are_sharpened(self) -> None:
        """Timid logits that are always right get T < 1 and a lower NLL than T = 1."""
        rng = np.random.default_rng(1)
        y = rng.integers(0, 3, 200)
        logits = 0.5 * np.eye(3)[y] + rng.normal(0, 0.05, (200, 3))
        t = calibrate_temperature(logits, y)
        p1, pt = (np.exp(logits / s) / np.exp(logits / s).sum(axis=1, keepdims=True) for s in (1.0, t))
        assert t < 0.5
        assert nll(pt, y) < nll(p1, y)

    @pytest.mark.parametrize(
        ("logits", "targets"),
        [(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)), (np.array([[1.0, -1.0]]), np.array([0]))],
        ids=["empty", "one-confident-row"],
    )
    def test_little_evidence_keeps_temperature_near_one(
        self, logits: np.ndarray, targets: np.ndarray
    ) -> None:
        """Without validation rows T is exactly 1; one right row moves it only a little."""
        t = calibrate_temperature(logits, targets)
        assert 0.5 <= t <= 1.0
        if len(targets) == 0:
            assert t == 1.0


def damage_tensors(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not safetensors")


def remove_tensors(path: Path) -> None:
    path.unlink()


def remove_sidecar(path: Path) -> None:
    path.with_suffix(".json").unlink()


def damage_sidecar(path: Path) -> None:
    path.with_suffix(".json").write_text("{not json")


def edit_sidecar(**changes: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        sidecar = path.with_suffix(".json")
        sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | changes))

    return edit


class TestSaveLoad:
    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_round_trip_gives_identical_probabilities(
        self, kind: str, fitted: dict[str, Gate], clusters: dict[str, Any], tmp_path: Path
    ) -> None:
        """A loaded gate gives bit-identical probabilities and keeps experts, config, report and ids."""
        gate = fitted[kind]
        path = tmp_path / "cache" / f"{kind}.safetensors"
        gate.save(path, encoder="hashing-32", fingerprint="f" * 64)
        loaded = load_gate(path, experts=list(reversed(EXPERTS)), encoder="hashing-32")
        assert type(loaded) is type(gate)
        assert np.array_equal(
            loaded.predict_proba(clusters["x_test"]), gate.predict_proba(clusters["x_test"])
        )
        assert (loaded.experts, loaded.config, loaded.report) == (gate.experts, gate.config, gate.report)
        assert (loaded.encoder, loaded.fingerprint) == ("hashing-32", "f" * 64)
        assert (gate.encoder, gate.fingerprint) == ("hashing-32", "f" * 64)

    @pytest.mark.parametrize(
        ("kind", "tensors"),
        [
            ("mlp", ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "head.bias", "head.weight"]),
            ("centroid", ["centroids"]),
            ("knn", ["exemplars", "labels"]),
            (
                "ensemble",
                ["centroid.centroids", "knn.exemplars", "knn.labels"]
                + [f"mlp.{n}" for n in ("fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "head.bias")]
                + ["mlp.head.weight", "mlp.temperature"],
            ),
        ],
        ids=KINDS,
    )
    def test_files_hold_tensors_and_metadata(
        self, kind: str, tensors: list[str], fitted: dict[str, Gate], tmp_path: Path
    ) -> None:
        """The tensor file holds the gate's tensors and the JSON sidecar describes the gate."""
        from safetensors.numpy import load_file

        path = tmp_path / "gate.safetensors"
        fitted[kind].save(path, encoder="hashing-32")
        meta = json.loads(path.with_suffix(".json").read_text())
        assert sorted(load_file(str(path))) == tensors
        assert {
            k: meta[k] for k in ("format", "version", "kind", "experts", "encoder", "dim", "fingerprint")
        } == {
            "format": "moe-agents-gate",
            "version": 1,
            "kind": kind,
            "experts": list(EXPERTS),
            "encoder": "hashing-32",
            "dim": 32,
            "fingerprint": None,
        }
        assert meta["config"]["kind"] == kind
        assert meta["report"]["counts"] == dict.fromkeys(EXPERTS, 50)
        assert meta["temperature"] == fitted[kind].report.temperature  # type: ignore[union-attr]

    def test_other_experts_are_a_config_error_naming_missing_and_extra(
        self, fitted: dict[str, Gate], tmp_path: Path
    ) -> None:
        """Loading for another set of experts says which names are missing and which are extra."""
        path = tmp_path / "gate.safetensors"
        fitted["centroid"].save(path, encoder="e")
        with pytest.raises(ConfigError, match=r"missing \['omega', 'zeta'\], extra \['epsilon'\]") as info:
            load_gate(path, experts=["alpha", "beta", "gamma", "delta", "zeta", "omega"])
        assert info.value.path == str(path)

    def test_other_encoder_is_a_config_error(self, fitted: dict[str, Gate], tmp_path: Path) -> None:
        """Loading for another encoder names both encoders."""
        path = tmp_path / "gate.safetensors"
        fitted["knn"].save(path, encoder="all-MiniLM-L6-v2")
        with pytest.raises(ConfigError, match=r"'all-MiniLM-L6-v2' embeddings, not 'hashing-256'"):
            load_gate(path, encoder="hashing-256")

    @pytest.mark.parametrize(
        ("damage", "names", "match"),
        [
            (damage_tensors, "gate.safetensors", "corrupt gate tensor file"),
            (remove_tensors, "gate.safetensors", "tensor file is missing"),
            (remove_sidecar, "gate.json", "no gate metadata"),
            (damage_sidecar, "gate.json", "cannot read gate metadata"),
            (edit_sidecar(format="other"), "gate.json", "not a moe-agents gate"),
            (edit_sidecar(version=2), "gate.json", "version 2 is not supported"),
            (edit_sidecar(kind="svm"), "gate.json", "malformed gate metadata"),
            (edit_sidecar(dim=16), "gate.safetensors", "metadata says 16-d"),
            (edit_sidecar(experts=["alpha", "beta"]), "gate.safetensors", "do not match its metadata"),
        ],
        ids=[
            "corrupt-tensors",
            "missing-tensors",
            "missing-sidecar",
            "corrupt-sidecar",
            "wrong-format",
            "wrong-version",
            "unknown-kind",
            "wrong-dim",
            "wrong-expert-count",
        ],
    )
    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_damaged_files_are_config_errors_naming_the_file(
        self,
        kind: str,
        damage: Callable[[Path], None],
        names: str,
        match: str,
        fitted: dict[str, Gate],
        tmp_path: Path,
    ) -> None:
        """A missing, corrupt or foreign gate file is a ConfigError that names the file."""
        path = tmp_path / "gate.safetensors"
        fitted[kind].save(path, encoder="e")
        damage(path)
        with pytest.raises(ConfigError, match=match) as info:
            load_gate(path)
        assert info.value.path == str(tmp_path / names)
        assert names in str(info.value)

    def test_json_tensor_path_is_refused(self, fitted: dict[str, Gate], tmp_path: Path) -> None:
        """A tensor path ending in .json (its own sidecar) is refused and nothing is written."""
        with pytest.raises(ConfigError, match=r"cannot end in \.json"):
            fitted["centroid"].save(tmp_path / "gate.json", encoder="e")
        assert list(tmp_path.iterdir()) == []


class TestGateFingerprint:
    EXEMPLARS: ClassVar[dict[str, list[str]]] = {"math": ["2 + 2", "integrals"], "code": ["python", "rust"]}

    def test_is_stable_hex_and_ignores_expert_listing_order(self) -> None:
        """The same inputs give the same sha256 hex digest, whatever order the experts are listed in."""
        a = gate_fingerprint("minilm", self.EXEMPLARS, GateConfig())
        b = gate_fingerprint(
            "minilm", {"code": ["python", "rust"], "math": ["2 + 2", "integrals"]}, GateConfig()
        )
        assert a == b
        assert len(a) == 64
        assert int(a, 16) >= 0

    @pytest.mark.parametrize(
        ("encoder", "exemplars", "cfg"),
        [
            ("minilm", {"math": ["2 + 2", "calculus"], "code": ["python", "rust"]}, GateConfig()),
            ("minilm", {"math": ["2 + 2", "integrals", "sums"], "code": ["python", "rust"]}, GateConfig()),
            ("minilm", {"math": ["integrals", "2 + 2"], "code": ["python", "rust"]}, GateConfig()),
            ("minilm", {"maths": ["2 + 2", "integrals"], "code": ["python", "rust"]}, GateConfig()),
            ("minilm", {"math": ["2 + 2", "integrals"], "code": ["python", "rust"]}, GateConfig(seed=1)),
            ("minilm", {"math": ["2 + 2", "integrals"], "code": ["python", "rust"]}, GateConfig(kind="knn")),
            ("hashing-256", {"math": ["2 + 2", "integrals"], "code": ["python", "rust"]}, GateConfig()),
        ],
        ids=[
            "exemplar-edited",
            "exemplar-added",
            "exemplars-reordered",
            "expert-renamed",
            "seed",
            "kind",
            "encoder",
        ],
    )
    def test_changes_with_any_input(
        self, encoder: str, exemplars: dict[str, list[str]], cfg: GateConfig
    ) -> None:
        """Changing the encoder, an exemplar, an expert or a config field changes the fingerprint."""
        assert gate_fingerprint(encoder, exemplars, cfg) != gate_fingerprint(
            "minilm", self.EXEMPLARS, GateConfig()
        )


class TestImport:
    def test_importing_gate_does_not_import_torch(self) -> None:
        """Importing moe_agents.routing.gates leaves torch unimported (it loads on first fit or load)."""
        code = "import sys, moe_agents.routing.gates; print('torch' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"

    def test_gates_are_the_exported_kinds(self) -> None:
        """Each config kind maps to its gate class."""
        assert {GatingNetwork.kind, CentroidGate.kind, KNNGate.kind, EnsembleGate.kind} == set(KINDS)
