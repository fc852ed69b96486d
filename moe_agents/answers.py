"""Answer normalisation: finding the final answer in a model's reply and reducing it to a key.

The reasoning expert records ``extract_final_answer`` in its answers' metadata, and the voting
aggregator counts votes by ``answer_key``, so two replies that reach ``$1,200.00`` and ``1200`` by
different routes agree.

Markers are tried in priority order, and within one marker the last occurrence wins (models restate
intermediate results before the conclusion):

1. a line ``Final answer: X`` (any case, markdown emphasis allowed: ``**Final Answer:** X``),
2. a GSM8K-style line ``#### X``,
3. LaTeX ``\\boxed{X}``,
4. ``the answer is X``,
5. a line ``Answer: X`` or ``A: X`` (the few-shot format of many maths prompts).
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["answer_key", "extract_final_answer", "extract_number", "normalise_number", "normalise_text"]

_FINAL_LINE = re.compile(
    r"^[ \t>*_#-]*final[ \t]+answer[ \t*_]*(?:[:：]|is\b)[ \t*_]*(?P<rest>.*)$", re.IGNORECASE | re.MULTILINE
)
_HASHES = re.compile(r"^[ \t]*####[ \t]*(?P<rest>.*)$", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"\bthe[ \t]+(?:final[ \t]+|correct[ \t]+)?answer[ \t]+is[ \t:]*(?P<rest>[^\n]*)", re.IGNORECASE
)
_ANSWER_LINE = re.compile(
    r"^[ \t*_]*(?:answer|a)[ \t*_]*[:：][ \t*_]*(?P<rest>.*)$", re.IGNORECASE | re.MULTILINE
)

_NUMERIC = re.compile(
    r"^(?:[a-z][ \t]*=[ \t]*)?(?P<sign>[-+−]?)[ \t]*[$€£¥]?[ \t]*(?P<sign2>[-+−]?)"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"[ \t]*(?P<unit>%|[$€£¥]|[a-z][a-z .'/-]*)?$",
    re.IGNORECASE,
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_TRAILING = ".,;:!?。"
_ANY_NUMBER = re.compile(r"[-−]?[$€£¥]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_final_answer(text: str) -> str | None:
    """The final answer a reply states explicitly, normalised; ``None`` when it states none.

    Numbers are normalised (``$1,200.00`` → ``1200``, ``12.0`` → ``12``, ``18 dollars`` → ``18``);
    other answers keep their words, with markdown, LaTeX wrappers and trailing punctuation removed.

    Args:
        text: a model's whole reply.

    Returns:
        The answer after the highest-priority marker found (its last occurrence), or ``None``.
    """
    for find in (_after_final_line, _after_hashes, _in_boxed, _after_answer_is, _after_answer_line):
        raw = find(text)
        if raw is not None:
            answer = _clean(raw)
            if answer:
                return answer
    return None


def normalise_number(text: str) -> str | None:
    """``text`` as a canonical number if it is one (with optional currency, unit or ``%``), else ``None``.

    ``"$1,234.50"`` → ``"1234.5"``, ``"12.0"`` → ``"12"``, ``"-3 apples"`` → ``"-3"``, ``"x = 4"`` → ``"4"``.
    """
    match = _NUMERIC.match(text.strip().rstrip(_TRAILING).strip())
    if match is None:
        return None
    value = Decimal(match["num"].replace(",", ""))
    if sum(c in "-−" for c in match["sign"] + match["sign2"]) == 1:
        value = -value
    out = format(value.normalize(), "f")
    return "0" if out in ("-0", "+0") else out


def extract_number(text: str) -> str | None:
    """The numeric answer of a reply: its stated final answer when that is a number, else the last
    number in the text (the usual GSM8K reading of replies without a marker), normalised.

    ``"... so she makes 9 * $2 = $18 every day."`` → ``"18"``.
    """
    final = extract_final_answer(text)
    if final is not None and (number := normalise_number(final)) is not None:
        return number
    numbers = _ANY_NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def normalise_text(text: str) -> str:
    """Casefolded, whitespace collapsed to single spaces, trailing punctuation removed."""
    return " ".join(text.casefold().split()).rstrip(_TRAILING + " ")


def answer_key(text: str) -> str:
    """What a vote counts: the normalised final answer when the reply states one, else the whole
    reply normalised."""
    final = extract_final_answer(text)
    return normalise_text(final if final is not None else text)


def _after_final_line(text: str) -> str | None:
    matches = list(_FINAL_LINE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    rest = last["rest"]
    if not _strip_markup(rest):  # "**Final answer:**" alone, the answer on the next line
        following = [line for line in text[last.end() :].splitlines() if _strip_markup(line)]
        rest = following[0] if following else ""
    return _boxed_content(rest) or rest


def _after_hashes(text: str) -> str | None:
    matches = list(_HASHES.finditer(text))
    return matches[-1]["rest"] if matches else None


def _in_boxed(text: str) -> str | None:
    return _boxed_content(text)


def _after_answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = matches[-1]["rest"]
    # the answer ends at the first sentence break; a decimal point is not one
    return re.split(r"(?<!\d)\.(?!\d)|\.(?=\s|$)|;|,\s+(?:so|which|because|since)\b", rest, maxsplit=1)[0]


def _after_answer_line(text: str) -> str | None:
    matches = list(_ANSWER_LINE.finditer(text))
    return matches[-1]["rest"] if matches else None


def _boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _strip_markup(text: str) -> str:
    return re.sub(r"[*_`]+", "", text).strip()


def _clean(raw: str) -> str:
    text = _strip_markup(raw)
    text = _FRAC.sub(r"\1/\2", text)
    text = _TEXT_CMD.sub(r"\1", text)
    text = re.sub(r"\\[()\[\]]|\$\$", " ", text)  # \( \) \[ \] $$ math delimiters
    text = text.replace("\\!", "").replace("\\,", "").replace("\\%", "%").replace("\\$", "$")
    text = text.strip()
    if len(text) > 2 and text.startswith("$") and text.endswith("$") and text.count("$") == 2:
        text = text[1:-1]  # $...$ inline math, not a currency sign
    text = " ".join(text.split()).strip().rstrip(_TRAILING).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    number = normalise_number(text)
    return number if number is not None else text
