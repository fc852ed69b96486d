"""A/B reports replayed from a trust store's feedback log."""

from __future__ import annotations

from typing import Any

import pytest

from moe_agents.errors import ConfigError, InvalidInput
from moe_agents.management.ab import ABTest
from moe_agents.management.ab_report import ab_reports_from_log
from moe_agents.routing.trust import TrustStore

V2 = ABTest("v2", "coding", "coding2")


def row(expert: str, score: float, source: str = "feedback") -> dict[str, Any]:
    return {"expert": expert, "context": "gate:coding", "score": score, "source": source}


class TestABReportsFromLog:
    def test_feedback_of_both_variants_gives_the_difference(self) -> None:
        """Feedback scores of control and treatment give their means and a significant difference."""
        rows = [row("coding", 0.4), row("coding2", 0.9)] * 30 + [row("coding", 0.5), row("coding2", 1.0)]
        (report,) = ab_reports_from_log([V2], rows)
        assert report.test == "v2"
        assert (report.control.name, report.control.scored) == ("coding", 31)
        assert (report.treatment.name, report.treatment.scored) == ("coding2", 31)
        assert report.difference == pytest.approx(0.5)
        assert report.ci is not None and report.ci[0] > 0.0 and report.significant

    def test_other_sources_and_experts_are_skipped(self) -> None:
        """Scorer rows and experts outside the test do not count; without both variants, no difference."""
        rows = [row("coding", 0.2), row("coding2", 0.9, source="scorer"), row("reasoning", 1.0)]
        (report,) = ab_reports_from_log([V2], rows)
        assert (report.control.scored, report.control.mean) == (1, pytest.approx(0.2))
        assert (report.treatment.scored, report.treatment.mean) == (0, None)
        assert report.difference is None and report.ci is None and not report.significant

    def test_a_variant_of_two_tests_counts_in_both(self) -> None:
        """One expert in two tests has its feedback counted in each, reports in the order of the tests."""
        other = ABTest("v3", "coding", "coding3")
        reports = ab_reports_from_log([V2, other], [row("coding", 1.0), row("coding3", 0.0)])
        assert [r.test for r in reports] == ["v2", "v3"]
        assert [r.control.scored for r in reports] == [1, 1]
        assert reports[1].difference == pytest.approx(-1.0)

    def test_reads_a_trust_store_log(self) -> None:
        """The rows of `TrustStore.log()` are read as they are."""
        with TrustStore(":memory:") as store:
            for score in (0.2, 0.4):
                store.record("coding", "gate:coding", score)
                store.record("coding2", "gate:coding", score + 0.5)
            (report,) = ab_reports_from_log([V2], store.log(), confidence=0.9)
        assert report.difference == pytest.approx(0.5)
        assert report.confidence == 0.9 and report.ci is not None

    @pytest.mark.parametrize(
        ("tests", "rows", "error"),
        [
            ([V2, V2], [], ConfigError),
            ([V2], [row("coding", 1.5)], InvalidInput),
        ],
        ids=["duplicate-test", "score-out-of-range"],
    )
    def test_bad_input_is_an_error(
        self, tests: list[ABTest], rows: list[dict[str, Any]], error: type
    ) -> None:
        """Two tests with one name, or a score outside [0, 1], raise the library's errors."""
        with pytest.raises(error):
            ab_reports_from_log(tests, rows)

    def test_confidence_outside_the_unit_interval(self) -> None:
        """A confidence level outside (0, 1) is a ConfigError."""
        with pytest.raises(ConfigError, match="confidence"):
            ab_reports_from_log([V2], [], confidence=1.0)
