"""Recorded answers of real LLMs (MMLU, GSM8K) and the replay backend that serves them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from moe_agents import ConfigError
from moe_agents.answers import extract_final_answer
from moe_agents.backends.base import Backend
from moe_agents.backends.replay import MMLU_CORRECT, MMLU_INCORRECT, ReplayBackend
from moe_agents.errors import BackendError
from moe_agents.experts.reasoning import ReasoningExpert
from moe_agents.recorded import (
    GSM8K_MODELS,
    MMLU_MODELS,
    PRICES,
    RecordedSet,
    load_gsm8k_recorded,
    load_mmlu,
    question_key,
)
from moe_agents.types import Query

DATA = Path(__file__).parents[1].parent / "shared" / "data"
JANET = "Janet’s ducks lay 16 eggs per day."  # the start of GSM8K test problem 0


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA / "README.md").exists():
        pytest.skip(f"shared evaluation data not found at {DATA}")
    return DATA


@pytest.fixture(scope="module")
def mmlu(data_dir: Path) -> RecordedSet:
    return load_mmlu(data_dir)


@pytest.fixture(scope="module")
def gsm8k(data_dir: Path) -> RecordedSet:
    return load_gsm8k_recorded(data_dir)


def small_gsm8k_copy(data_dir: Path, target: Path, n: int, *, edit_prompt=lambda s: s) -> Path:
    """The first ``n`` problems of each GSM8K file under ``target``, RouteLLM prompts passed through
    ``edit_prompt``."""
    for name in ("gsm8k/test.jsonl", "gsm8k/example_model_solutions.jsonl"):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        with (data_dir / name).open(encoding="utf-8") as fh:
            (target / name).write_text("".join(next(fh) for _ in range(n)), encoding="utf-8")
    (target / "routellm").mkdir()
    with (data_dir / "routellm/gsm8k_responses.csv").open(newline="", encoding="utf-8") as src:
        rows = list(csv.reader(src))[: n + 1]
    with (target / "routellm/gsm8k_responses.csv").open("w", newline="", encoding="utf-8") as dst:
        csv.writer(dst).writerows([rows[0], *([edit_prompt(r[0]), *r[1:]] for r in rows[1:])])
    return target


class TestLoadMmlu:
    def test_counts_and_models(self, mmlu: RecordedSet) -> None:
        """All 14,042 questions of 57 subjects load, with the two models in column order."""
        assert (mmlu.name, len(mmlu), len(set(mmlu.groups))) == ("mmlu", 14_042, 57)
        assert mmlu.models == MMLU_MODELS == ("mixtral-8x7b", "gpt-4-1106")
        assert mmlu.correct.shape == (14_042, 2) and mmlu.correct.dtype == bool
        assert mmlu.responses is None and mmlu.reference is None

    def test_accuracies_match_the_readme(self, mmlu: RecordedSet) -> None:
        """Mixtral is right on 0.681 and GPT-4 on 0.806 of the questions."""
        assert {m: round(a, 3) for m, a in mmlu.accuracy().items()} == {
            "mixtral-8x7b": 0.681,
            "gpt-4-1106": 0.806,
        }

    def test_questions_keep_their_options(self, mmlu: RecordedSet) -> None:
        """A question is the CSV prompt as recorded: stem, options A-D, then 'Answer:'."""
        first = mmlu.questions[0]
        assert mmlu.groups[0] == "abstract_algebra"
        assert "\nA. " in first and "\nD. " in first and first.endswith("Answer:")

    def test_limit_per_subject_keeps_the_first_rows(self, data_dir: Path, mmlu: RecordedSet) -> None:
        """limit_per_subject=3 keeps the first 3 questions of each of the 57 subjects."""
        small = load_mmlu(data_dir, limit_per_subject=3)
        assert len(small) == 171
        assert all(small.groups.count(g) == 3 for g in set(small.groups))
        assert small.questions[:3] == mmlu.questions[:3]
        assert np.array_equal(small.correct[:3], mmlu.correct[:3])

    def test_correct_is_read_only(self, mmlu: RecordedSet) -> None:
        """The correctness matrix of a frozen set cannot be written."""
        with pytest.raises(ValueError, match="read-only"):
            mmlu.correct[0, 0] = False


class TestLoadGsm8k:
    def test_all_problems_join_with_six_models(self, gsm8k: RecordedSet) -> None:
        """Every one of the 1,319 test problems joins, with six models' replies and correctness."""
        assert (gsm8k.name, len(gsm8k), gsm8k.models) == ("gsm8k", 1_319, GSM8K_MODELS)
        assert gsm8k.correct.shape == (1_319, 6)
        assert gsm8k.responses is not None and all(len(row) == 6 and all(row) for row in gsm8k.responses)
        assert set(gsm8k.groups) == {""}

    def test_accuracies_match_the_readme(self, gsm8k: RecordedSet) -> None:
        """GPT-4 0.857, Mixtral 0.638; the GPT-3 variants as recorded by OpenAI."""
        assert {m: round(a, 3) for m, a in gsm8k.accuracy().items()} == {
            "gpt-4-1106": 0.857,
            "mixtral-8x7b": 0.638,
            "gpt3-175b-verification": 0.563,
            "gpt3-175b-finetuning": 0.347,
            "gpt3-6b-verification": 0.390,
            "gpt3-6b-finetuning": 0.217,
        }

    def test_first_problem_is_aligned(self, gsm8k: RecordedSet) -> None:
        """Problem 0's question, gold answer and Mixtral's reply belong together."""
        assert gsm8k.questions[0].startswith(JANET)
        assert gsm8k.reference is not None and gsm8k.reference[0] == "18"
        assert gsm8k.responses is not None
        assert gsm8k.responses[0][GSM8K_MODELS.index("mixtral-8x7b")].rstrip().endswith("#### 18")

    def test_references_are_normalised_numbers(self, gsm8k: RecordedSet) -> None:
        """Gold answers written '2,125' become '2125'; every one is a plain number."""
        assert gsm8k.reference is not None
        assert all(r.lstrip("-").replace(".", "", 1).isdigit() for r in gsm8k.reference)

    @pytest.mark.parametrize("model", [m for m in GSM8K_MODELS if m.startswith("gpt3")], ids=str)
    def test_extracted_answers_agree_with_recorded_correctness(self, gsm8k: RecordedSet, model: str) -> None:
        """For the GPT-3 solutions ('A: N'), extract_final_answer == gold iff recorded as correct."""
        j = gsm8k.models.index(model)
        assert gsm8k.responses is not None and gsm8k.reference is not None
        ours = [
            extract_final_answer(row[j]) == ref
            for row, ref in zip(gsm8k.responses, gsm8k.reference, strict=True)
        ]
        assert np.mean(np.array(ours) == gsm8k.correct[:, j]) >= 0.995

    def test_limit(self, data_dir: Path, gsm8k: RecordedSet) -> None:
        """limit=10 keeps the first ten test problems."""
        small = load_gsm8k_recorded(data_dir, limit=10)
        assert small.questions == gsm8k.questions[:10]
        assert np.array_equal(small.correct, gsm8k.correct[:10])

    def test_join_ignores_typography_and_whitespace(self, data_dir: Path, tmp_path: Path) -> None:
        """Prompts with plain quotes, extra spaces and a trailing newline still join."""

        def retype(prompt: str) -> str:
            return "  " + prompt.replace("’", "'").replace(" ", "  ") + "\n"

        copy = small_gsm8k_copy(data_dir, tmp_path, 20, edit_prompt=retype)
        joined = load_gsm8k_recorded(copy)
        assert len(joined) == 20 and joined.questions[0].startswith(JANET)

    def test_unjoined_problem_is_a_config_error(self, data_dir: Path, tmp_path: Path) -> None:
        """A test problem without RouteLLM responses fails the load, saying how many are missing."""
        copy = small_gsm8k_copy(data_dir, tmp_path, 5, edit_prompt=lambda p: "Changed: " + p)
        with pytest.raises(ConfigError, match="5 test problems have no recorded solutions"):
            load_gsm8k_recorded(copy)


class TestDataErrors:
    @pytest.mark.parametrize("load", [load_mmlu, load_gsm8k_recorded], ids=["mmlu", "gsm8k"])
    def test_missing_data_dir(self, load, tmp_path: Path) -> None:
        """A folder without the data names the missing path and where the data lives."""
        with pytest.raises(ConfigError, match=r"--data.*\.\./shared/data") as info:
            load(tmp_path / "nowhere")
        assert info.value.path is not None and "nowhere" in info.value.path

    def test_bad_correctness_value_names_the_line(self, data_dir: Path, tmp_path: Path) -> None:
        """A correctness cell that is not True/False is a ConfigError with file and line."""
        folder = tmp_path / "routellm/mmlu"
        folder.mkdir(parents=True)
        target = folder / "mmlu_anatomy.csv"
        shutil.copy(data_dir / "routellm/mmlu/mmlu_anatomy.csv", target)
        with target.open("a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(["Q?\nA. a\nB. b\nC. c\nD. d\nAnswer:", "maybe", "True"])
        with pytest.raises(ConfigError, match="must be True or False") as info:
            load_mmlu(tmp_path)
        assert info.value.path == str(target) and info.value.line is not None

    def test_missing_column(self, tmp_path: Path) -> None:
        """An MMLU CSV without the GPT-4 column is a ConfigError naming it."""
        folder = tmp_path / "routellm/mmlu"
        folder.mkdir(parents=True)
        (folder / "mmlu_x.csv").write_text("prompt,mistralai/Mixtral-8x7B-Instruct-v0.1\nq,True\n")
        with pytest.raises(ConfigError, match="gpt-4-1106-preview"):
            load_mmlu(tmp_path)


class TestRecordedSet:
    def test_subset_keeps_rows_together(self, gsm8k: RecordedSet) -> None:
        """subset([5, 2]) takes questions, correctness, replies and references of items 5 and 2."""
        sub = gsm8k.subset([5, 2])
        assert sub.questions == (gsm8k.questions[5], gsm8k.questions[2])
        assert np.array_equal(sub.correct, gsm8k.correct[[5, 2]])
        assert sub.responses is not None and gsm8k.responses is not None
        assert sub.responses == (gsm8k.responses[5], gsm8k.responses[2])
        assert sub.reference == (gsm8k.reference[5], gsm8k.reference[2])  # type: ignore[index]

    def test_subset_by_mask_and_accuracy(self, mmlu: RecordedSet) -> None:
        """A boolean mask selects one subject; its accuracy is the mean over that subject."""
        mask = np.array([g == "anatomy" for g in mmlu.groups])
        sub = mmlu.subset(mask)
        assert len(sub) == mask.sum() == 135 and set(sub.groups) == {"anatomy"}
        assert sub.accuracy()["gpt-4-1106"] == pytest.approx(mmlu.correct[mask, 1].mean())

    def test_empty_subset(self, mmlu: RecordedSet) -> None:
        """An empty subset has no items and NaN accuracies."""
        empty = mmlu.subset([])
        assert len(empty) == 0 and empty.correct.shape == (0, 2)
        assert all(np.isnan(a) for a in empty.accuracy().values())

    @pytest.mark.parametrize("name", ["mmlu", "gsm8k"])
    def test_folds_partition_the_items(self, name: str, request: pytest.FixtureRequest) -> None:
        """Five folds are disjoint and together hold every item exactly once."""
        data: RecordedSet = request.getfixturevalue(name)
        folds = data.folds(5)
        assert len(folds) == 5
        assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(data)))

    def test_mmlu_folds_are_subject_disjoint_and_balanced(self, mmlu: RecordedSet) -> None:
        """No subject is in two folds, and fold sizes are within 5 % of each other."""
        folds = mmlu.folds(5, seed=0)
        subjects = [{mmlu.groups[i] for i in fold} for fold in folds]
        assert sum(len(s) for s in subjects) == 57
        sizes = [len(f) for f in folds]
        assert max(sizes) / min(sizes) < 1.05

    def test_folds_depend_only_on_the_seed(self, mmlu: RecordedSet) -> None:
        """The same seed gives the same folds; another seed gives others."""
        same = [np.array_equal(a, b) for a, b in zip(mmlu.folds(seed=3), mmlu.folds(seed=3), strict=True)]
        other = [np.array_equal(a, b) for a, b in zip(mmlu.folds(seed=3), mmlu.folds(seed=4), strict=True)]
        assert all(same) and not all(other)

    def test_gsm8k_folds_are_near_equal(self, gsm8k: RecordedSet) -> None:
        """Random folds of 1,319 items have 263 or 264 items."""
        assert sorted(len(f) for f in gsm8k.folds(5)) == [263, 264, 264, 264, 264]

    @pytest.mark.parametrize("k", [1, 58], ids=["one", "more-than-subjects"])
    def test_bad_fold_count(self, mmlu: RecordedSet, k: int) -> None:
        """k must be at least 2 and at most the number of subjects."""
        with pytest.raises(ValueError, match="k must be between 2 and 57"):
            mmlu.folds(k)


class TestPrices:
    def test_every_recorded_model_has_a_price(self) -> None:
        """All six models are priced, and GPT-4 costs far more per call than Mixtral."""
        assert set(PRICES) == set(GSM8K_MODELS)
        assert PRICES["gpt-4-1106"] == pytest.approx(0.0125)
        assert PRICES["mixtral-8x7b"] == pytest.approx(0.00045)
        assert PRICES["gpt-4-1106"] > 20 * PRICES["mixtral-8x7b"]

    def test_verification_costs_a_hundred_samples(self) -> None:
        """A verified answer costs 100 generations and 100 verifier passes of the same model."""
        assert PRICES["gpt3-175b-verification"] == pytest.approx(3.0)
        assert PRICES["gpt3-6b-verification"] == pytest.approx(0.30)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def mixtral(gsm8k: RecordedSet) -> ReplayBackend:
    return ReplayBackend.from_recorded(gsm8k, "mixtral-8x7b")


class TestReplayBackend:
    def reply(self, gsm8k: RecordedSet, i: int, model: str = "mixtral-8x7b") -> str:
        assert gsm8k.responses is not None
        return gsm8k.responses[i][gsm8k.models.index(model)]

    def test_is_a_backend(self, mixtral: ReplayBackend) -> None:
        """It satisfies the Backend protocol and has one recording per problem."""
        assert isinstance(mixtral, Backend)
        assert (mixtral.name, mixtral.modalities, len(mixtral)) == (
            "replay:gsm8k:mixtral-8x7b",
            frozenset(),
            1319,
        )

    async def test_returns_the_recorded_reply_and_its_price(
        self, mixtral: ReplayBackend, gsm8k: RecordedSet
    ) -> None:
        """The completion is the recorded text, from the recorded model, billed at its price."""
        completion = await mixtral.complete(user(gsm8k.questions[7]))
        assert completion.text == self.reply(gsm8k, 7)
        assert completion.model == "mixtral-8x7b"
        assert completion.usage.cost_usd == PRICES["mixtral-8x7b"]
        assert completion.usage.completion_tokens == len(completion.text.split())

    async def test_streams_chunks_that_join_to_the_reply(
        self, mixtral: ReplayBackend, gsm8k: RecordedSet
    ) -> None:
        """Streamed chunks of at most four words join to exactly the returned text."""
        chunks: list[str] = []

        async def sink(chunk: str) -> None:
            chunks.append(chunk)

        completion = await mixtral.complete(user(gsm8k.questions[0]), on_chunk=sink)
        assert len(chunks) > 5 and "".join(chunks) == completion.text
        assert all(len(c.split()) <= 4 for c in chunks)

    async def test_unknown_question_is_a_backend_error(self, mixtral: ReplayBackend) -> None:
        """A question without a recording raises BackendError naming the backend and the question."""
        with pytest.raises(
            BackendError, match=r"replay:gsm8k:mixtral-8x7b: no recorded answer for 'What is"
        ) as info:
            await mixtral.complete(user("What is the airspeed of an unladen swallow?"))
        assert info.value.backend == "replay:gsm8k:mixtral-8x7b"

    async def test_missing_empty_answers_nothing_for_free(self) -> None:
        """With missing='empty' an unknown question gets an empty reply that costs nothing."""
        backend = ReplayBackend("r", {"q": "a"}, price_usd=1.0, missing="empty")
        completion = await backend.complete(user("other"))
        assert (completion.text, completion.usage.cost_usd, completion.finish_reason) == ("", 0.0, "missing")

    @pytest.mark.parametrize(
        "content",
        [
            "  Janet's ducks   lay 16 eggs\nper day. ",
            [
                {"type": "text", "text": "Janet’s ducks lay 16 eggs per day."},
                {"type": "image_url", "image_url": {}},
            ],
            "Earlier we talked about birds.\n\nJanet’s ducks lay 16 eggs per day.",
        ],
        ids=["retyped", "text-parts", "after-context"],
    )
    async def test_finds_the_question_in_the_message(self, content: object) -> None:
        """Lookups ignore typography and whitespace, read list content, and skip context before a
        blank line."""
        backend = ReplayBackend("r", {JANET: "18"})
        completion = await backend.complete([{"role": "user", "content": content}])
        assert completion.text == "18"

    async def test_last_user_message_is_the_question(self) -> None:
        """The question is the last user message, not an earlier one or the assistant's."""
        backend = ReplayBackend("r", {"first": "1", "second": "2"})
        messages = [
            {"role": "user", "content": "first"},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "first"},
        ]
        assert (await backend.complete(messages)).text == "2"

    async def test_mmlu_replays_correctness_markers(self, mmlu: RecordedSet) -> None:
        """MMLU keeps no reply texts, so the replay answers 'correct' or 'incorrect'."""
        backend = ReplayBackend.from_recorded(mmlu, "gpt-4-1106")
        i_right = int(np.flatnonzero(mmlu.correct[:, 1])[0])
        i_wrong = int(np.flatnonzero(~mmlu.correct[:, 1])[0])
        assert (await backend.complete(user(mmlu.questions[i_right]))).text == MMLU_CORRECT
        assert (await backend.complete(user(mmlu.questions[i_wrong]))).text == MMLU_INCORRECT
        assert len(backend) == len({question_key(q) for q in mmlu.questions})

    def test_unknown_model(self, mmlu: RecordedSet) -> None:
        """Replaying a model the set has no recordings of is a ValueError listing the models."""
        with pytest.raises(ValueError, match="mixtral-8x7b"):
            ReplayBackend.from_recorded(mmlu, "gpt3-6b-finetuning")

    def test_conflicting_answers(self) -> None:
        """Two spellings of one question with different answers are refused."""
        with pytest.raises(ValueError, match="two different answers"):
            ReplayBackend("r", {"a  b": "1", "a b": "2"})

    async def test_through_a_reasoning_expert(self, gsm8k: RecordedSet) -> None:
        """A real ReasoningExpert, with system prompt and context, gets GPT-4's and Mixtral's replies."""
        i = 0
        for model in ("gpt-4-1106", "mixtral-8x7b"):
            expert = ReasoningExpert(backends=[ReplayBackend.from_recorded(gsm8k, model)])
            query = Query(gsm8k.questions[i], context="Earlier turn: we talked about ducks.")
            answer = await expert.process(query)
            assert answer.text == self.reply(gsm8k, i, model).strip()
            assert (answer.model, answer.usage.cost_usd) == (model, PRICES[model])
        assert answer.metadata["final_answer"] == "18"  # Mixtral ends with '#### 18'


def test_gsm8k_test_jsonl_is_the_question_source(data_dir: Path, gsm8k: RecordedSet) -> None:
    """Questions come verbatim from gsm8k/test.jsonl, in its order."""
    with (data_dir / "gsm8k/test.jsonl").open(encoding="utf-8") as fh:
        first = json.loads(next(fh))["question"]
    assert gsm8k.questions[0] == first
