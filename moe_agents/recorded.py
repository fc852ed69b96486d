"""Recorded answers of real LLMs to public test questions: who was right, what they said, what it cost.

The one source of the recordings, their prices and the question keys they are filed under, for the
``replay`` backend and the evaluation alike. Two sets, read from the evaluation data folder
(``moe_agents.eval_data``):

- ``load_mmlu``: the 14,042 MMLU test questions (57 subjects) with the recorded correctness of
  Mixtral-8x7B-Instruct and GPT-4-1106 (RouteLLM). No reply texts were published.
- ``load_gsm8k_recorded``: the 1,319 GSM8K test problems with full solutions and correctness of
  GPT-4-1106 and Mixtral-8x7B (RouteLLM) and of four GPT-3 variants (OpenAI's grade-school-math),
  joined on the question text.

These are test splits: measure on them; anything fitted to them (a cost/quality router, say) must be
cross-validated with ``RecordedSet.folds``, subject-disjoint for MMLU, and reported as such.
"""

from __future__ import annotations

import csv
import random
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .answers import normalise_number
from .errors import ConfigError
from .eval_data import data_file, eval_data_dir, text_field
from .jsonl import read_jsonl

__all__ = [
    "GSM8K_MODELS",
    "MMLU_MODELS",
    "PRICES",
    "RecordedSet",
    "load_gsm8k_recorded",
    "load_mmlu",
    "question_key",
]

MMLU_MODELS: tuple[str, ...] = ("mixtral-8x7b", "gpt-4-1106")
"""The models of ``load_mmlu``, in column order."""
GSM8K_MODELS: tuple[str, ...] = (
    "gpt-4-1106",
    "mixtral-8x7b",
    "gpt3-175b-verification",
    "gpt3-175b-finetuning",
    "gpt3-6b-verification",
    "gpt3-6b-finetuning",
)
"""The models of ``load_gsm8k_recorded``, in column order."""

_ROUTELLM_COLUMNS = {
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gpt-4-1106": "gpt-4-1106-preview",
}
_GPT3_COLUMNS = {
    "gpt3-175b-verification": "175b_verification",
    "gpt3-175b-finetuning": "175b_finetuning",
    "gpt3-6b-verification": "6b_verification",
    "gpt3-6b-finetuning": "6b_finetuning",
}
_MMLU_DIR = "routellm/mmlu"
_GSM8K_TEST = "gsm8k/test.jsonl"
_GSM8K_GPT3 = "gsm8k/example_model_solutions.jsonl"
_GSM8K_ROUTELLM = "routellm/gsm8k_responses.csv"
_BOOLS = {"True": True, "False": False}

_PLAIN = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
    }
)


def question_key(text: str) -> str:
    """The text recorded answers are filed under: NFKC, plain quotes and dashes, whitespace collapsed.

    Case is kept. ``"Janet\u2019s  ducks\\n"`` and ``"Janet's ducks"`` have the same key.
    """
    return " ".join(unicodedata.normalize("NFKC", text).translate(_PLAIN).split())


# -- prices ----------------------------------------------------------------------------------------
# A typical call: 500 prompt tokens and 250 completion tokens. List prices in USD per 1M tokens, at
# the time the answers were recorded:
#   gpt-4-1106-preview: $10 in / $30 out (OpenAI pricing page, Nov 2023).
#   Mixtral-8x7B-Instruct: $0.60 in / $0.60 out (Together AI serverless, early 2024; Anyscale
#     Endpoints charged $0.50).
#   GPT-3 175B: davinci, $0.02 per 1K tokens both ways = $20/1M (OpenAI pricing, 2021).
#   GPT-3 6B: curie-class, $0.002 per 1K tokens = $2/1M (OpenAI pricing, 2021).
# These GPT-3 models were fine-tuned, and OpenAI billed fine-tuned use higher (davinci $0.12/1K,
# curie $0.012/1K in 2022), so their prices here are lower bounds.
# The "verification" answers are not one call: Cobbe et al. (2021, "Training Verifiers to Solve Math
# Word Problems") sample 100 solutions per problem and return the one a verifier of the same size
# scores highest. One recorded answer thus costs 100 generations plus 100 verifier passes, each
# reading the problem and a solution (750 prompt tokens, no completion).
_PROMPT_TOKENS, _COMPLETION_TOKENS = 500, 250
_VERIFIER_SAMPLES = 100
_PER_MILLION = {  # (prompt, completion) USD per 1M tokens
    "gpt-4-1106": (10.0, 30.0),
    "mixtral-8x7b": (0.6, 0.6),
    "gpt3-175b": (20.0, 20.0),
    "gpt3-6b": (2.0, 2.0),
}


def _call_price(model: str) -> float:
    prompt, completion = _PER_MILLION[model]
    return (_PROMPT_TOKENS * prompt + _COMPLETION_TOKENS * completion) / 1e6


def _verified_price(model: str) -> float:
    prompt, _ = _PER_MILLION[model]
    verifier = (_PROMPT_TOKENS + _COMPLETION_TOKENS) * prompt / 1e6
    return _VERIFIER_SAMPLES * (_call_price(model) + verifier)


PRICES: Mapping[str, float] = {
    "gpt-4-1106": _call_price("gpt-4-1106"),  # $0.0125
    "mixtral-8x7b": _call_price("mixtral-8x7b"),  # $0.00045
    "gpt3-175b-finetuning": _call_price("gpt3-175b"),  # $0.015
    "gpt3-175b-verification": _verified_price("gpt3-175b"),  # $3.00
    "gpt3-6b-finetuning": _call_price("gpt3-6b"),  # $0.0015
    "gpt3-6b-verification": _verified_price("gpt3-6b"),  # $0.30
}
"""USD per recorded answer of each model (see the comment above for the sources and the arithmetic)."""


@dataclass(frozen=True, slots=True, eq=False)
class RecordedSet:
    """Questions with the recorded correctness (and, where published, the replies) of several models.

    Attributes:
        name: ``"mmlu"`` or ``"gsm8k"``.
        questions: the N question texts (MMLU: the prompt with its options and ``Answer:``, as in
            the CSV).
        models: the M model ids.
        correct: ``(N, M)`` bool, read-only: whether each model answered each question correctly.
        responses: N × M full reply texts (GSM8K); ``None`` for MMLU, which published none.
        groups: N group labels: the MMLU subject; ``""`` for GSM8K.
        reference: the gold final answers (GSM8K: the ``#### N`` number, normalised by
            ``normalise_number``, so ``2,125`` is ``2125``); ``None`` for MMLU.
    """

    name: str
    questions: tuple[str, ...]
    models: tuple[str, ...]
    correct: np.ndarray
    responses: tuple[tuple[str, ...], ...] | None
    groups: tuple[str, ...]
    reference: tuple[str, ...] | None

    def __post_init__(self) -> None:
        correct = np.array(self.correct, dtype=bool)
        n, m = len(self.questions), len(self.models)
        if correct.shape != (n, m):
            raise ValueError(f"correct has shape {correct.shape}, expected ({n}, {m})")
        if len(self.groups) != n:
            raise ValueError(f"{len(self.groups)} groups for {n} questions")
        if self.reference is not None and len(self.reference) != n:
            raise ValueError(f"{len(self.reference)} references for {n} questions")
        if self.responses is not None and (
            len(self.responses) != n or any(len(row) != m for row in self.responses)
        ):
            raise ValueError(f"responses must be {n} rows of {m} texts")
        correct.setflags(write=False)
        object.__setattr__(self, "correct", correct)

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, index: Sequence[int] | np.ndarray) -> RecordedSet:
        """The items at ``index`` (positions, or a boolean mask of length N), in that order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask must have length {len(self)}, got shape {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.intp)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"index must hold integers or booleans, got {idx.dtype}")
        rows = idx.tolist()
        return RecordedSet(
            self.name,
            tuple(self.questions[i] for i in rows),
            self.models,
            self.correct[idx],
            None if self.responses is None else tuple(self.responses[i] for i in rows),
            tuple(self.groups[i] for i in rows),
            None if self.reference is None else tuple(self.reference[i] for i in rows),
        )

    def accuracy(self) -> dict[str, float]:
        """Each model's share of correct answers (NaN on an empty set)."""
        if not len(self):
            return {model: float("nan") for model in self.models}
        return {model: float(acc) for model, acc in zip(self.models, self.correct.mean(axis=0), strict=True)}

    def folds(self, k: int = 5, *, seed: int = 0) -> list[np.ndarray]:
        """``k`` disjoint test folds covering every item, for cross-validation.

        With group labels (MMLU subjects), folds are group-disjoint: whole groups are dealt out,
        largest first, each to the fold with the fewest items so far (ties between groups of one size
        and between equally full folds are broken by ``seed``). Without (GSM8K), items are shuffled
        with ``seed`` and split into near-equal folds.

        Args:
            k: how many folds (at least 2, at most the number of groups or items).
            seed: the same seed gives the same folds.

        Returns:
            One sorted index array per fold; train on the complement of each.

        Raises:
            ValueError: ``k`` is below 2 or above the number of groups (items).
        """
        rng = random.Random(seed)
        labels = sorted(set(self.groups) - {""})
        if not labels:
            if not 2 <= k <= len(self):
                raise ValueError(f"k must be between 2 and {len(self)} items, got {k}")
            order = np.array(rng.sample(range(len(self)), len(self)), dtype=np.intp)
            return [np.sort(part) for part in np.array_split(order, k)]
        if not 2 <= k <= len(labels):
            raise ValueError(f"k must be between 2 and {len(labels)} groups, got {k}")
        groups = np.asarray(self.groups)
        members = {label: np.flatnonzero(groups == label) for label in labels}
        rng.shuffle(labels)
        labels.sort(key=lambda label: -len(members[label]))  # stable: the shuffle breaks size ties
        sizes = [0] * k
        chosen: list[list[np.ndarray]] = [[] for _ in range(k)]
        for label in labels:
            emptiest = min(sizes)
            fold = rng.choice([f for f in range(k) if sizes[f] == emptiest])
            chosen[fold].append(members[label])
            sizes[fold] += len(members[label])
        return [np.sort(np.concatenate(parts)) for parts in chosen]


def load_mmlu(data_dir: str | Path | None = None, *, limit_per_subject: int | None = None) -> RecordedSet:
    """MMLU test questions with the recorded correctness of Mixtral-8x7B and GPT-4-1106.

    Reads ``routellm/mmlu/mmlu_<subject>.csv`` (columns ``prompt``,
    ``mistralai/Mixtral-8x7B-Instruct-v0.1``, ``gpt-4-1106-preview``), subjects in file-name order.
    In full: 14,042 questions in 57 subjects; Mixtral 0.681, GPT-4 0.806 correct.

    Args:
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        limit_per_subject: keep only the first this many questions of each subject.

    Raises:
        ConfigError: no folder is given, the folder or a column is missing, or a correctness value
            is not True/False.
        ValueError: ``limit_per_subject`` is below 1.
    """
    if limit_per_subject is not None and limit_per_subject < 1:
        raise ValueError(f"limit_per_subject must be >= 1, got {limit_per_subject}")
    folder = data_file(eval_data_dir(data_dir), _MMLU_DIR)
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise ConfigError("no mmlu_<subject>.csv files in the evaluation data", path=folder)
    questions: list[str] = []
    groups: list[str] = []
    correct: list[list[bool]] = []
    for path in files:
        subject = path.stem.removeprefix("mmlu_")
        rows = _read_csv(path, ["prompt", *(_ROUTELLM_COLUMNS[m] for m in MMLU_MODELS)])
        for line, row in rows[:limit_per_subject]:
            questions.append(text_field(row, "prompt", path, line))
            groups.append(subject)
            correct.append([_bool(row, _ROUTELLM_COLUMNS[m], path, line) for m in MMLU_MODELS])
    return RecordedSet(
        "mmlu", tuple(questions), MMLU_MODELS, np.array(correct, dtype=bool), None, tuple(groups), None
    )


def load_gsm8k_recorded(data_dir: str | Path | None = None, *, limit: int | None = None) -> RecordedSet:
    """The GSM8K test problems with the full solutions and correctness of six real models.

    Joins ``gsm8k/test.jsonl`` (question and gold answer), ``gsm8k/example_model_solutions.jsonl``
    (four GPT-3 variants: 175B and 6B, fine-tuned and with a verifier) and
    ``routellm/gsm8k_responses.csv`` (GPT-4-1106 and Mixtral-8x7B) on ``question_key`` of the
    question. Every test problem must join (all 1,319 do); the recorded ``is_correct`` is the truth.
    In full: GPT-4 0.857 and Mixtral 0.638 correct; GPT-3 175B 0.563 with verification, 0.347
    fine-tuned; 6B 0.390 and 0.217.

    Args:
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        limit: keep only the first this many test problems (in ``test.jsonl`` order).

    Raises:
        ConfigError: no folder is given, a file is missing or malformed, a question occurs twice in
            a file, or a test problem has no recording in one of the two other files.
        ValueError: ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    folder = eval_data_dir(data_dir)
    test_path = data_file(folder, _GSM8K_TEST)
    gpt3_path = data_file(folder, _GSM8K_GPT3)
    routellm_path = data_file(folder, _GSM8K_ROUTELLM)

    gpt3: dict[str, dict[str, tuple[str, bool]]] = {}
    for line, row in read_jsonl(gpt3_path):
        recorded = {}
        for model, column in _GPT3_COLUMNS.items():
            cell = row.get(column)
            if not isinstance(cell, dict) or not isinstance(cell.get("is_correct"), bool):
                raise ConfigError(
                    f"{column!r} needs 'solution' and a boolean 'is_correct'", path=gpt3_path, line=line
                )
            recorded[model] = (str(cell.get("solution", "")), cell["is_correct"])
        _put(gpt3, question_key(text_field(row, "question", gpt3_path, line)), recorded, gpt3_path, line)

    routellm: dict[str, dict[str, tuple[str, bool]]] = {}
    columns = [c for v in _ROUTELLM_COLUMNS.values() for c in (v, f"{v}_response")]
    for line, row in _read_csv(routellm_path, ["prompt", *columns]):
        recorded = {
            model: (row.get(f"{column}_response") or "", _bool(row, column, routellm_path, line))
            for model, column in _ROUTELLM_COLUMNS.items()
        }
        _put(
            routellm,
            question_key(text_field(row, "prompt", routellm_path, line)),
            recorded,
            routellm_path,
            line,
        )

    questions: list[str] = []
    references: list[str] = []
    responses: list[tuple[str, ...]] = []
    correct: list[list[bool]] = []
    seen: set[str] = set()
    unmatched: list[str] = []
    for line, row in read_jsonl(test_path):
        if limit is not None and len(questions) == limit:
            break
        question = text_field(row, "question", test_path, line)
        key = question_key(question)
        if key in seen:
            raise ConfigError(f"question occurs twice: {key[:60]!r}", path=test_path, line=line)
        seen.add(key)
        answer = text_field(row, "answer", test_path, line)
        if "####" not in answer:
            raise ConfigError("answer has no '#### <final answer>' line", path=test_path, line=line)
        if key not in gpt3 or key not in routellm:
            unmatched.append(key)
            continue
        recorded = {**routellm[key], **gpt3[key]}
        final = answer.rsplit("####", 1)[1].strip()
        questions.append(question)
        references.append(normalise_number(final) or final)
        responses.append(tuple(recorded[m][0] for m in GSM8K_MODELS))
        correct.append([recorded[m][1] for m in GSM8K_MODELS])
    if unmatched:
        raise ConfigError(
            f"{len(unmatched)} test problems have no recorded solutions in {_GSM8K_GPT3} or "
            f"{_GSM8K_ROUTELLM} (first: {unmatched[0][:60]!r})",
            path=test_path,
        )
    return RecordedSet(
        "gsm8k",
        tuple(questions),
        GSM8K_MODELS,
        np.array(correct, dtype=bool).reshape(len(questions), len(GSM8K_MODELS)),
        tuple(responses),
        ("",) * len(questions),
        tuple(references),
    )


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV with a header, each with the line its record ends on."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"CSV lacks the columns {missing}", path=path, line=1)
        # a record spans several physical lines (prompts hold newlines); report where it ends
        return [(reader.line_num, row) for row in reader]


def _bool(row: Mapping[str, str | None], column: str, path: Path, line: int) -> bool:
    value = (row.get(column) or "").strip()
    if value not in _BOOLS:
        raise ConfigError(f"{column!r} must be True or False, got {value!r}", path=path, line=line)
    return _BOOLS[value]


def _put(
    table: dict[str, dict[str, tuple[str, bool]]],
    key: str,
    value: dict[str, tuple[str, bool]],
    path: Path,
    line: int,
) -> None:
    if key in table:
        raise ConfigError(f"question occurs twice: {key[:60]!r}", path=path, line=line)
    table[key] = value
