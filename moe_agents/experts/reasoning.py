"""The reasoning expert: mathematics, logic and multi-step word problems, solved step by step."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from ..answers import extract_final_answer
from .base import LLMExpert, Signal

__all__ = ["ReasoningExpert"]

_SYSTEM_PROMPT = """\
You are the reasoning expert in a team of AI specialists: you solve mathematics problems, logic \
puzzles and multi-step word problems.

Work step by step:
1. Say briefly what is given and what is asked, with units.
2. Solve in short numbered steps, one idea per step, writing every calculation out \
(for example 3 × 4 = 12). Do not skip arithmetic, and keep track of units.
3. Check the result before you commit to it: substitute it back, estimate its size, or solve a \
second way. If the check fails, find the mistake and correct it.
4. End your reply with exactly one line of the form

Final answer: <answer>

On that line put only the answer: for a numeric answer, the number alone, without units or \
thousands separators (Final answer: 1250); otherwise a short phrase or expression \
(Final answer: x = 3 or x = -1). If the problem cannot be solved as stated, say what is missing \
and write Final answer: insufficient information."""

_EXEMPLARS = (
    "If a train travels at 80 km/h for 2 hours and 15 minutes, how far does it go?",
    "Sarah has three times as many marbles as Tom. Together they have 48. How many does Sarah have?",
    "A shirt costs $40 and is on sale for 25% off, then a 10% tax is added. What do I pay?",
    "Solve for x: 3x + 7 = 2x - 5",
    "What is the probability of rolling two sixes in a row with a fair die?",
    "Prove that the square root of 2 is irrational.",
    "A rectangle has a perimeter of 36 cm and its length is twice its width. What is its area?",
    "If all bloops are razzies and all razzies are lazzies, are all bloops definitely lazzies?",
    "I invest $5,000 at 4% interest compounded yearly. How much will I have after 10 years?",
    "Find the derivative of f(x) = x^3 sin(x).",
    "A farmer has chickens and cows, 30 heads and 74 legs in total. How many cows are there?",
    "Three friends split a bill of $87.60 and leave a 15% tip. How much does each one pay?",
    "What is the sum of all the integers from 1 to 200 that are divisible by 3?",
    "Alice is older than Bob, Carol is younger than Bob, and Dan is older than Alice. Who is youngest?",
    "A tank fills in 6 hours with one pipe and 4 hours with another. How long with both open?",
    "Is 221 a prime number? Show your reasoning.",
    "If it takes 5 machines 5 minutes to make 5 widgets, how long do 100 machines take for 100 widgets?",
    "How many ways can 8 people sit around a round table?",
    "The average of five numbers is 12. Four of them are 10, 14, 9 and 15. What is the fifth?",
    "A recipe needs 2/3 cup of sugar for 12 cookies. How much sugar do I need for 30 cookies?",
    "Knights always tell the truth and knaves always lie. A says 'B is a knave'. "
    "B says 'We are both knights'. What are A and B?",
    "Maya buys 4 notebooks at $2.35 each and a backpack for $18. She pays with a $50 bill. How much change "
    "should she get back?",
    "Our bus leaves at 9:40 am and the ride takes 2 hours 35 minutes. What time do we get in?",
    "Omar's sister is 9. Seven years from now Omar will be double her age. How old is Omar?",
    "Priya cycles 18 km in 45 minutes. Riding at the same pace, how far does she get in 2 hours?",
    "My electricity bill dropped from $120 to $93 this month. By what percent did it go down?",
    "Leo reads 12 pages each weekday and 30 pages on Saturdays and Sundays. If he starts on a Monday, on "
    "which day does he finish a 300-page book?",
    "A bakery sold 3/8 of its muffins before noon and 40% of what remained in the afternoon. 45 muffins "
    "were left at closing. How many did it bake?",
    "One printer does 45 pages a minute and an older one does 30. Running both, how long does a 1,800-page "
    "job take?",
    "Petrol is $1.80 a litre and my car does 6 litres per 100 km. What will a 750 km road trip cost in fuel?",
    "we've got 3 pizzas cut into 8 slices each and 10 kids. if every kid eats 2 slices, how many slices are "
    "left for the adults?",
    "Factor x^2 - 5x - 14 and give both roots.",
    "If log base 2 of (x + 3) equals 5, what is x?",
    "The number of edges in a complete graph on 7 vertices is ____.",
    "Let f(x) = 2x + 1 and g(x) = x^2 - 4. Compute f(g(3)) and g(f(3)); are they equal?",
    "Two cards are drawn from a standard 52-card deck without replacement. What is the chance that both are "
    "hearts?",
    "A medical test is 95% sensitive and 90% specific, and 2% of people have the disease. If I test "
    "positive, how likely is it that I actually have it?",
    "For the data 4, 8, 8, 10, 15, find the mean, the median and the sample standard deviation.",
    "When the sample size is quadrupled, the margin of error of a confidence interval for a mean changes by "
    "what factor?",
    "Is the set of invertible 2x2 real matrices under multiplication an abelian group? Explain.",
    "How many generators does the cyclic group Z_20 have?",
    "True or false, with a short justification: every subgroup of a cyclic group is itself cyclic.",
    "Evaluate the definite integral of x e^(2x) dx from 0 to 1.",
    "What is the limit of (1 - cos x) / x^2 as x approaches 0?",
    "Use calculus to find the largest area a rectangle can enclose if its perimeter is 40 m.",
    "Three boxes are labelled apples, oranges and mixed, and every label is wrong. You may take one fruit "
    "from one box. How do you fix all the labels?",
    "What comes next in the sequence 2, 6, 12, 20, 30, ...? Explain the pattern.",
    "A 13-foot ladder leans against a wall with its foot 5 feet from the wall. How high up does it reach?",
    "Which of the following is both a perfect square and a perfect cube: 16, 64, 81, 125?",
)

_WORD_NUMBER = (
    r"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|"
    r"hundred|thousand|dozen|half|third|quarter|twice|double|triple)(?:e?s|d)?"
)


class ReasoningExpert(LLMExpert):
    """Solves maths, logic and multi-step word problems step by step.

    The prompt asks the model to end with a line ``Final answer: <answer>``; the answer's
    ``metadata["final_answer"]`` holds it, normalised by ``moe_agents.answers.extract_final_answer``
    (``None`` when the reply states no final answer), so that voting can compare replies.
    """

    kind: ClassVar[str] = "reasoning"
    default_system_prompt: ClassVar[str] = _SYSTEM_PROMPT
    default_exemplars: ClassVar[tuple[str, ...]] = _EXEMPLARS
    signals: ClassVar[tuple[Signal, ...]] = (
        # two or more numbers: the shape of a word problem
        Signal(r"\d+\D+\d", 0.3),
        Signal(r"(?:\d+\D+){2,}\d", 0.15),  # three or more
        Signal(
            r"\d\s*[+*/×÷^=<>]\s*\(?[\d.a-z]|\d\s+-\s+\(?\d|\b\d+[a-z]\b(?=\s*[-+=^])|[a-z]\s*[\^²³]\s*\d|√",
            0.3,
        ),
        # numbers written as words ("six times as many", "half of the remaining"), with another number
        Signal(
            rf"\b{_WORD_NUMBER}\b.+\b(?:{_WORD_NUMBER}|\d+)\b|\d\b.+\b{_WORD_NUMBER}\b",
            0.2,
            re.IGNORECASE | re.DOTALL,
        ),
        Signal(
            r"\b(?:solve|calculate|compute|evaluate|simplify|prove|proof|equations?|formula|derivative|"
            r"integral|differentiate|integrate|limit|probability|odds|percent(?:age)?|ratio|proportion|"
            r"fraction|average|arithmetic mean|median|sum of|product of|divisible|remainder|factorials?|"
            r"primes?|"
            r"algebra|geometry|trigonometry|calculus|polynomial|quadratic|logarithms?|exponent|triangle|"
            r"circle|radius|area|perimeter|volume|speed|km/h|mph|per hour|per day|per week|interest|"
            r"discount|profit|twice|half|\w+ times as (?:many|much|long|old|fast)|combinations?|"
            r"permutations?|"
            r"expected value|(?:more|less|fewer|older|younger|taller|shorter|faster|slower|heavier|"
            r"lighter) than)\b",
            0.3,
        ),
        Signal(
            r"\b(?:puzzle|riddle|logic(?:al)?|syllogism|deduce|infer|paradox|knaves?|truth[- ]tellers?|"
            r"liars?|"
            r"always (?:lies?|tells? the truth)|contradiction|if and only if|necessarily|valid argument|"
            r"step by step|are all \w+|who is (?:the )?(?:older|younger|taller|shorter|youngest|oldest))\b",
            0.25,
        ),
        Signal(
            r"\d\s*%\s*of\b|\bwhat(?:'s|"
            r" is) [-\d.,\s%+*/x×÷^()]*\d[-\d.,\s%+*/x×÷^()]*(?:of [\d.,]+)?\s*\??$",
            0.3,
        ),
        Signal(r"\bhow (?:many|much|far|long|fast)\b|\bwhat (?:is the )?(?:total|percent|fraction)\b", 0.1),
        Signal(
            r"\$\s?\d|\d\s?%|\d+(?:\.\d+)? ?(?:km|kg|cm|mm|m|g|l|ml|hours?|minutes?|seconds?|days?|years?)\b",
            0.1,
        ),
    )

    def answer_metadata(self, text: str) -> Mapping[str, Any]:
        """The normalised stated answer, in ``metadata["final_answer"]`` (``None`` if absent)."""
        return {"final_answer": extract_final_answer(text)}
