"""A/B test reports replayed from a trust store's feedback log.

Every row of the log whose ``source`` is ``"feedback"`` and whose expert is a variant of a test is
an outcome score of that variant; rows of other sources (automatic scorers) and of other experts are
skipped. An expert that is a variant of several tests counts in each of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .ab import ABReport, ABTest, ABTracker

__all__ = ["ab_reports_from_log"]


def ab_reports_from_log(
    tests: Sequence[ABTest], rows: Iterable[Mapping[str, Any]], *, confidence: float = 0.95
) -> tuple[ABReport, ...]:
    """Compares the variants of each test on the feedback recorded in a log.

    Args:
        tests: the A/B tests (unique names).
        rows: feedback log rows with ``expert``, ``score`` and ``source``, as ``TrustStore.log()``
            returns them.
        confidence: the confidence level of each difference's interval, in (0, 1).

    Returns:
        One report per test, in the order of ``tests``.

    Raises:
        ConfigError: two tests share a name, or ``confidence`` is outside (0, 1).
        InvalidInput: a feedback score is outside [0, 1].
    """
    tracker = ABTracker(tests)
    for row in rows:
        if row["source"] != "feedback":
            continue
        for test in tests:
            if row["expert"] in test.variants:
                tracker.record(test.name, row["expert"], float(row["score"]))
    return tuple(tracker.report(test.name, confidence=confidence) for test in tests)
