"""Answer extraction and normalisation (``moe_agents.answers``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_agents.answers import answer_key, extract_final_answer, normalise_number, normalise_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class TestExtractFinalAnswer:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Step 1: 3 * 4 = 12\nFinal answer: 12", "12"),
            ("so the total is 72.\n\nFINAL ANSWER: 72", "72"),
            ("Adding up...\n**Final Answer:** 1250", "1250"),
            ("**Final answer: $1,250.00**", "1250"),
            ("Final answer:\n\n**42**", "42"),
            ("The final answer is 7.", "7"),
            ("Final answer: x = 3", "3"),
            ("Final answer: Paris.", "Paris"),
            ("Final answer: $\\boxed{\\frac{1}{2}}$", "1/2"),
            ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
            ("#### 1,000", "1000"),
            ("We get $\\boxed{-4}$ as the root.", "-4"),
            ("so $x = \\boxed{\\frac{3}{4}}$", "3/4"),
            ("Therefore the answer is 18 dollars.", "18"),
            ("the answer is 3.5, since half of 7 is 3.5", "3.5"),
            ("So the answer is Blue; the other options fail.", "Blue"),
            ("She makes 9 * 2 = $18 every day.\nA: 18", "18"),
            ("Answer: 12.0", "12"),
            ("Final answer: 25%", "25"),
        ],
        ids=[
            "final-line",
            "final-upper-case",
            "final-markdown-bold-label",
            "final-bold-money",
            "final-on-next-line",
            "final-answer-is",
            "final-equation",
            "final-word",
            "final-boxed-frac",
            "gsm8k-hashes",
            "hashes-thousands",
            "boxed-negative",
            "boxed-nested-braces",
            "answer-is-with-unit",
            "answer-is-decimal",
            "answer-is-word",
            "few-shot-a-line",
            "answer-line-float",
            "percent",
        ],
    )
    def test_markers(self, text: str, expected: str) -> None:
        """Every supported marker yields the normalised answer after it."""
        assert extract_final_answer(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "She makes 9 * 2 = $18 every day at the market.",
            "I think it is probably around twelve, but I am not sure.",
            "",
        ],
        ids=["reasoning-without-marker", "hedged-prose", "empty"],
    )
    def test_no_marker_gives_none(self, text: str) -> None:
        """A reply without an explicit final-answer marker has no final answer."""
        assert extract_final_answer(text) is None

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("#### 5\nLet me double-check.\nFinal answer: 6", "6"),
            ("The answer is 4.\nWait, no.\n\\boxed{5}", "5"),
            ("Final answer: 3\nActually I made an error.\nFinal answer: 4", "4"),
        ],
        ids=["final-beats-hashes", "boxed-beats-answer-is", "last-occurrence-wins"],
    )
    def test_priority(self, text: str, expected: str) -> None:
        """Markers are tried in priority order, and the last occurrence of a marker wins."""
        assert extract_final_answer(text) == expected

    @pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").exists(), reason="shared GSM8K data not present")
    def test_gsm8k_train_reference_solutions(self) -> None:
        """Every GSM8K training solution's ``#### N`` line is extracted as N, normalised."""
        lines = (DATA / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()
        wrong = []
        for line in lines:
            answer = json.loads(line)["answer"]
            raw = answer.rsplit("####", 1)[1].strip()
            expected = normalise_number(raw) or raw
            if extract_final_answer(answer) != expected:
                wrong.append((raw, extract_final_answer(answer)))
        assert len(lines) == 7473
        assert wrong == []


class TestNormaliseNumber:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("12.0", "12"),
            ("12.50", "12.5"),
            ("$1,234", "1234"),
            ("1,000,000.", "1000000"),
            ("-3", "-3"),
            ("$-3", "-3"),
            ("−7", "-7"),
            (".5", "0.5"),
            ("0.0", "0"),
            ("18 dollars", "18"),
            ("x = 4", "4"),
            ("45%", "45"),
        ],
        ids=[
            "trailing-zero",
            "trailing-zero-decimal",
            "dollar-thousands",
            "millions-trailing-dot",
            "negative",
            "negative-after-currency",
            "unicode-minus",
            "leading-dot",
            "zero",
            "unit-word",
            "assignment",
            "percent",
        ],
    )
    def test_numbers(self, text: str, expected: str) -> None:
        """Numbers in any common written form reduce to one canonical string."""
        assert normalise_number(text) == expected

    @pytest.mark.parametrize(
        "text",
        ["Paris", "1,2", "3 apples and 4 pears", "1/2", "v2 of the plan"],
        ids=["word", "not-thousands-commas", "two-numbers", "fraction", "number-inside-word"],
    )
    def test_not_numbers(self, text: str) -> None:
        """Text that is not a single number is left to the caller (``None``)."""
        assert normalise_number(text) is None


class TestNormaliseText:
    def test_casefold_whitespace_punctuation(self) -> None:
        """Case, runs of whitespace and trailing punctuation do not matter."""
        assert normalise_text("  The  Eiffel\tTower!\n") == "the eiffel tower"

    def test_inner_punctuation_kept(self) -> None:
        """Only trailing punctuation is stripped."""
        assert normalise_text("U.S.A. is big.") == "u.s.a. is big"


class TestAnswerKey:
    def test_same_number_different_routes(self) -> None:
        """Replies that reach the same number by different routes share a key."""
        a = "3 boxes at $400 each: 3 * 400 = 1200.\nFinal answer: $1,200.00"
        b = "#### 1200"
        c = "So the answer is 1200 dollars."
        assert answer_key(a) == answer_key(b) == answer_key(c) == "1200"

    def test_falls_back_to_whole_text(self) -> None:
        """Without a marker the key is the whole reply, normalised."""
        assert answer_key("Paris is the capital of France.  ") == "paris is the capital of france"

    def test_word_answers_casefolded(self) -> None:
        """Word answers agree regardless of case and trailing punctuation."""
        assert answer_key("Final answer: Blue.") == answer_key("the answer is blue") == "blue"
