"""A/B tests between two variants of an expert (a control and a treatment).

``ABTracker.assign`` picks the variant that serves a request: with a key (a session id) the choice
is a hash of the test's seed, its name and the key, so a session always gets the same variant;
without one it is a draw from the test's seeded random generator. ``record`` folds in an outcome
score in [0, 1] (from feedback or a scorer), and ``report`` compares the means: the difference
treatment - control with a normal-approximation (Welch) confidence interval.

Memory per test is constant: scores are kept as running means and variances.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field
from statistics import NormalDist
from typing import Annotated

from ..bounds import Interval, MinLen, check_bounds
from ..errors import ConfigError, InvalidInput, check_unit
from ..logging import get_logger

__all__ = ["ABReport", "ABTest", "ABTracker", "VariantReport"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ABTest:
    """An A/B test between two variants, named like the experts that implement them.

    Attributes:
        name: the test's name.
        control: the variant in use today.
        treatment: the variant under test.
        fraction: share of the traffic sent to the treatment, in (0, 1).
        seed: seeds both the key hash and the random draws (same seed, same assignments).
    """

    name: Annotated[str, MinLen(1)]
    control: Annotated[str, MinLen(1)]
    treatment: Annotated[str, MinLen(1)]
    _: KW_ONLY
    fraction: Annotated[float, Interval(gt=0.0, lt=1.0)] = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds("A/B test", self, {"treatment": self.treatment != self.control})

    @property
    def variants(self) -> tuple[str, str]:
        """``(control, treatment)``."""
        return self.control, self.treatment


@dataclass(frozen=True, slots=True)
class VariantReport:
    """What one variant did during a test.

    Attributes:
        name: the variant.
        assigned: requests assigned to it.
        scored: outcome scores recorded for it.
        mean: the mean score (``None`` before the first).
        stdev: the sample standard deviation of the scores (``None`` with fewer than two).
    """

    name: str
    assigned: int
    scored: int
    mean: float | None
    stdev: float | None


@dataclass(frozen=True, slots=True)
class ABReport:
    """The comparison of a test's two variants.

    Attributes:
        test: the test's name.
        control: the control's numbers.
        treatment: the treatment's numbers.
        difference: treatment mean - control mean (``None`` until both have a score).
        ci: the confidence interval of the difference (``None`` until both have two scores).
        confidence: the interval's confidence level.
        significant: whether the interval excludes 0.
    """

    test: str
    control: VariantReport
    treatment: VariantReport
    difference: float | None
    ci: tuple[float, float] | None
    confidence: float
    significant: bool


@dataclass(slots=True)
class _Tally:
    assigned: int = 0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean (Welford)

    def add(self, score: float) -> None:
        self.n += 1
        delta = score - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (score - self.mean)

    @property
    def variance(self) -> float | None:
        return self.m2 / (self.n - 1) if self.n > 1 else None

    def report(self, name: str) -> VariantReport:
        var = self.variance
        return VariantReport(
            name=name,
            assigned=self.assigned,
            scored=self.n,
            mean=self.mean if self.n else None,
            stdev=None if var is None else math.sqrt(var),
        )


@dataclass(slots=True)
class _Running:
    test: ABTest
    rng: random.Random
    tallies: dict[str, _Tally] = field(default_factory=dict)


class ABTracker:
    """Assigns requests to the variants of A/B tests and compares their outcomes.

    Args:
        tests: the tests to run (unique names).
    """

    def __init__(self, tests: Iterable[ABTest] = ()) -> None:
        self._tests: dict[str, _Running] = {}
        for test in tests:
            self.add(test)

    @property
    def tests(self) -> dict[str, ABTest]:
        """The tests by name."""
        return {name: run.test for name, run in self._tests.items()}

    def add(self, test: ABTest) -> None:
        """Starts a test. Raises ``ConfigError`` when a test of that name runs already."""
        if test.name in self._tests:
            raise ConfigError(f"an A/B test named {test.name!r} exists already")
        tallies = {v: _Tally() for v in test.variants}
        self._tests[test.name] = _Running(test, random.Random(test.seed), tallies)

    def remove(self, test: str) -> ABReport:
        """Stops a test; returns its final report."""
        report = self.report(test)
        del self._tests[test]
        return report

    def test_for(self, expert: str) -> ABTest | None:
        """The test in which ``expert`` is a variant (the first one added), if any."""
        for run in self._tests.values():
            if expert in run.test.variants:
                return run.test
        return None

    def assign(self, test: str, key: str | None = None) -> str:
        """Chooses the variant that serves one request, and counts the assignment.

        Args:
            test: the test's name.
            key: makes the choice sticky: the same key always gets the same variant (a session id).
                ``None``: a draw from the test's seeded generator.

        Returns:
            The variant's name (the control or the treatment).
        """
        run = self._running(test)
        t = run.test
        if key is None:
            u = run.rng.random()
        else:
            digest = hashlib.blake2b(f"{t.seed}\x00{t.name}\x00{key}".encode(), digest_size=8).digest()
            u = int.from_bytes(digest, "big") / 2.0**64
        variant = t.treatment if u < t.fraction else t.control
        run.tallies[variant].assigned += 1
        return variant

    def record(self, test: str, variant: str, score: float) -> None:
        """Records the outcome score in [0, 1] of one request served by ``variant``.

        Raises:
            ConfigError: no such test.
            InvalidInput: ``variant`` is not one of the test's, or the score is outside [0, 1].
        """
        run = self._running(test)
        tally = run.tallies.get(variant)
        if tally is None:
            raise InvalidInput(f"{variant!r} is not a variant of A/B test {test!r}: {list(run.tallies)}")
        tally.add(check_unit(score, "A/B score"))

    def report(self, test: str, *, confidence: float = 0.95) -> ABReport:
        """Compares the variants' mean scores.

        Args:
            test: the test's name.
            confidence: the confidence level of the interval, in (0, 1).
        """
        if not 0.0 < confidence < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
        run = self._running(test)
        t = run.test
        c, tr = run.tallies[t.control], run.tallies[t.treatment]
        diff = tr.mean - c.mean if c.n and tr.n else None
        ci = None
        vc, vt = c.variance, tr.variance
        if diff is not None and vc is not None and vt is not None:
            z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
            half = z * math.sqrt(vc / c.n + vt / tr.n)
            ci = (diff - half, diff + half)
        report = ABReport(
            test=test,
            control=c.report(t.control),
            treatment=tr.report(t.treatment),
            difference=diff,
            ci=ci,
            confidence=confidence,
            significant=ci is not None and (ci[0] > 0.0 or ci[1] < 0.0),
        )
        log.debug("ab.report", test=test, difference=diff, ci=ci, significant=report.significant)
        return report

    def _running(self, test: str) -> _Running:
        try:
            return self._tests[test]
        except KeyError:
            raise ConfigError(f"no A/B test named {test!r}; tests: {sorted(self._tests)}") from None

    def __repr__(self) -> str:
        return f"ABTracker(tests={sorted(self._tests)})"
