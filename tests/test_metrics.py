"""Routing metrics: accuracy, macro-F1, confusion matrices, latency summaries, plot and table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from moe_agents.evaluation import latency_summary, plot_confusions, render_table, score_routing

LABELS = ("a", "b", "c")
TRUE = ["a", "a", "b", "b", "c"]
PRED = ["a", "b", "b", "b", "a"]


class TestScoreRouting:
    def test_hand_computed_example(self) -> None:
        """Accuracy, per-label accuracy, counts and confusion match a hand computation."""
        scores = score_routing(TRUE, PRED, LABELS)
        assert scores.n == 5
        assert scores.accuracy == pytest.approx(3 / 5)
        assert dict(scores.per_label_accuracy) == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})
        assert dict(scores.per_label_count) == {"a": 2, "b": 2, "c": 1}
        np.testing.assert_array_equal(scores.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
        assert scores.columns == LABELS

    def test_macro_f1_matches_manual_computation(self) -> None:
        """Macro-F1 is the mean of 2TP/(2TP+FP+FN): a = 2/4, b = 4/5, c = 0/1."""
        manual = []
        for label in LABELS:
            tp = sum(t == p == label for t, p in zip(TRUE, PRED, strict=True))
            fp = sum(p == label != t for t, p in zip(TRUE, PRED, strict=True))
            fn = sum(t == label != p for t, p in zip(TRUE, PRED, strict=True))
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn)
            manual.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        assert manual == pytest.approx([0.5, 0.8, 0.0])
        assert score_routing(TRUE, PRED, LABELS).macro_f1 == pytest.approx(sum(manual) / 3)

    def test_predictions_outside_labels_get_an_other_column(self) -> None:
        """An unknown prediction is counted in a last 'other' column and is a miss for its true label."""
        scores = score_routing(["a", "b", "b"], ["a", "zzz", "b"], ("a", "b"))
        assert scores.columns == ("a", "b", "other")
        np.testing.assert_array_equal(scores.confusion, [[1, 0, 0], [0, 1, 1]])
        assert scores.accuracy == pytest.approx(2 / 3)
        # a: F1 = 1; b: TP 1, FN 1, FP 0 → 2/3
        assert scores.macro_f1 == pytest.approx((1 + 2 / 3) / 2)

    def test_label_never_seen_is_left_out_of_macro_f1(self) -> None:
        """A label with no true and no predicted items has nan accuracy and does not drag macro-F1 to 0."""
        scores = score_routing(["a", "b"], ["a", "b"], ("a", "b", "c"))
        assert scores.macro_f1 == pytest.approx(1.0)
        assert math.isnan(scores.per_label_accuracy["c"])
        assert scores.per_label_count["c"] == 0
        assert scores.confusion.shape == (3, 3)

    @pytest.mark.parametrize(
        ("true", "pred", "labels", "message"),
        [
            (["a"], ["a", "b"], ("a", "b"), "1 true labels but 2"),
            ([], [], ("a",), "empty"),
            (["x"], ["a"], ("a",), "not in labels"),
            (["a"], ["a"], ("a", "a"), "distinct"),
        ],
        ids=["length", "empty", "unknown-true", "duplicate-labels"],
    )
    def test_rejects_bad_input(
        self, true: list[str], pred: list[str], labels: tuple[str, ...], message: str
    ) -> None:
        """Mismatched, empty or unlabelled input is a ValueError."""
        with pytest.raises(ValueError, match=message):
            score_routing(true, pred, labels)


class TestLatencySummary:
    def test_percentiles_and_mean_in_ms(self) -> None:
        """Seconds in, milliseconds out: p50, p99 (linear interpolation) and mean."""
        summary = latency_summary([0.001, 0.002, 0.003])
        assert summary == pytest.approx({"p50_ms": 2.0, "p99_ms": 2.98, "mean_ms": 2.0})

    def test_empty_is_an_error(self) -> None:
        """An empty list cannot be summarised."""
        with pytest.raises(ValueError, match="no latencies"):
            latency_summary([])


class TestRendering:
    def test_plot_writes_one_png(self, tmp_path: Path) -> None:
        """plot_confusions writes a PNG (creating folders) holding one panel per router."""
        results = {
            "router": score_routing(TRUE, PRED, LABELS),
            "oracle": score_routing(TRUE, TRUE, LABELS),
            "odd": score_routing(["a", "b"], ["a", "zzz"], ("a", "b")),
            "empty-row": score_routing(["a"], ["a"], LABELS),
        }
        path = plot_confusions(results, tmp_path / "out" / "confusion.png")
        assert path == tmp_path / "out" / "confusion.png"
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
        assert width > height  # three panels in the first row, one in the second

    def test_table_lists_routers_and_scores(self) -> None:
        """The table has a row per router with n, accuracy, per-label accuracy and macro-F1."""
        table = render_table(
            {"router": score_routing(TRUE, PRED, LABELS), "oracle": score_routing(TRUE, TRUE, LABELS)}
        )
        console = Console(record=True, width=200)
        console.print(table)
        text = console.export_text()
        router_row = next(line for line in text.splitlines() if "router" in line and "%" in line)
        for cell in ("5", "60.0%", "50.0%", "100.0%", "0.0%", "0.433"):
            assert cell in router_row
        oracle_row = next(line for line in text.splitlines() if "oracle" in line)
        assert "1.000" in oracle_row
        assert [c.header for c in table.columns] == ["router", "n", "accuracy", "a", "b", "c", "macro-F1"]
