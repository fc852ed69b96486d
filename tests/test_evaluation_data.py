"""The labelled routing sets built from the shared public data, and the exemplar JSONL reader."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import moe_agents.evaluation as evaluation
from moe_agents import ConfigError
from moe_agents.evaluation import (
    MMLU_EPISTEMIC_SUBJECTS,
    MMLU_LEFT_OUT_SUBJECTS,
    MMLU_REASONING_SUBJECTS,
    ROUTING_LABELS,
    LabelledQuery,
    routing_fit_set,
    routing_test_set,
)
from moe_agents.routing import read_exemplars_jsonl

DATA = Path(__file__).parents[1].parent / "shared" / "data"
TEST_SOURCES = {"humaneval", "gsm8k/test", "clinc/test/small_talk", "llava"}


def norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA / "README.md").exists():
        pytest.skip(f"shared evaluation data not found at {DATA}")
    return DATA


@pytest.fixture(scope="module")
def test_set(data_dir: Path) -> list[LabelledQuery]:
    return routing_test_set(data_dir)


@pytest.fixture(scope="module")
def fit_set(data_dir: Path) -> list[LabelledQuery]:
    return routing_fit_set(data_dir)


@pytest.fixture(scope="module")
def fit_texts(data_dir: Path) -> set[str]:
    """Every text of every fit split (GSM8K train, CLINC train/val incl. out-of-scope)."""
    with (data_dir / "gsm8k/train.jsonl").open() as fh:
        texts = {norm(json.loads(line)["question"]) for line in fh}
    clinc = json.loads((data_dir / "clinc/data_full.json").read_text())
    for split in ("train", "val", "oos_train", "oos_val"):
        texts |= {norm(text) for text, _ in clinc[split]}
    return texts


def by_label(items: list[LabelledQuery]) -> Counter[str]:
    return Counter(q.label for q in items)


class TestExports:
    def test_all_is_complete(self) -> None:
        """Every public name of moe_agents.evaluation is listed in __all__, and vice versa."""
        public = {n for n in vars(evaluation) if not n.startswith("_")}
        modules = {n for n in public if type(getattr(evaluation, n)).__name__ == "module"}
        assert set(evaluation.__all__) == public - modules


class TestRoutingTestSet:
    def test_has_every_label_capped_at_per_label(self, test_set: list[LabelledQuery]) -> None:
        """All five labels are present; the large pools fill their cap of 400 exactly."""
        counts = by_label(test_set)
        assert set(counts) == set(ROUTING_LABELS)
        assert counts["reasoning"] == counts["knowledge"] == counts["epistemic"] == 400

    def test_small_cap_is_respected_for_every_label(self, data_dir: Path) -> None:
        """With per_label=30 every label has exactly 30 items."""
        assert by_label(routing_test_set(data_dir, per_label=30)) == dict.fromkeys(ROUTING_LABELS, 30)

    def test_contains_all_of_humaneval(self, test_set: list[LabelledQuery], data_dir: Path) -> None:
        """All 164 HumanEval prompts (signature + docstring) are the coding items."""
        with gzip.open(data_dir / "humaneval/HumanEval.jsonl.gz", "rt") as fh:
            prompts = {json.loads(line)["prompt"].strip() for line in fh}
        coding = [q for q in test_set if q.label == "coding"]
        assert len(prompts) == 164
        assert {q.text for q in coding} == prompts
        assert {q.source for q in coding} == {"humaneval"}

    def test_contains_all_of_llava_with_images(self, test_set: list[LabelledQuery]) -> None:
        """All 90 LLaVA questions are omni items, each with one decodable PNG image attachment."""
        omni = [q for q in test_set if q.label == "omni"]
        assert len(omni) == 90
        assert len({(q.text, q.attachments) for q in omni}) == 90
        for item in omni:
            (image,) = item.attachments
            assert (image.kind, image.mime) == ("image", "image/png")
            assert Image.open(io.BytesIO(image.read())).size == (8, 8)
            assert item.query().modalities == frozenset({"image"})
        assert not any(q.attachments for q in test_set if q.label != "omni")

    def test_reads_only_test_splits_and_listed_mmlu_subjects(self, test_set: list[LabelledQuery]) -> None:
        """Sources are test splits; MMLU subjects sit under their README label; left-out ones never appear."""
        for item in test_set:
            if not item.source.startswith("mmlu/"):
                assert item.source in TEST_SOURCES
                continue
            subject = item.source.removeprefix("mmlu/")
            assert subject not in MMLU_LEFT_OUT_SUBJECTS
            expected = (
                "reasoning"
                if subject in MMLU_REASONING_SUBJECTS
                else "epistemic"
                if subject in MMLU_EPISTEMIC_SUBJECTS
                else "knowledge"
            )
            assert item.label == expected, item.source

    def test_mmlu_items_are_stems_without_options(
        self, test_set: list[LabelledQuery], data_dir: Path
    ) -> None:
        """Each MMLU text is a (stripped) prompt up to where its A–D options and 'Answer:' begin."""
        mmlu = [q for q in test_set if q.source.startswith("mmlu/")]
        assert len(mmlu) > 500
        options = re.compile(r"\s*\nA\. .*\nB\. .*\nC\. .*\nD\. .*\nAnswer:", re.S)
        prompts: dict[str, list[str]] = {}
        for item in mmlu:
            assert not re.search(r"\n[A-D]\. .*\n[A-D]\. ", item.text), item.text
            assert not item.text.endswith("Answer:")
            if item.source not in prompts:
                path = data_dir / "routellm/mmlu" / f"mmlu_{item.source.removeprefix('mmlu/')}.csv"
                with path.open(newline="", encoding="utf-8") as fh:
                    prompts[item.source] = [row["prompt"].strip() for row in csv.DictReader(fh)]
            assert any(
                p.startswith(item.text) and options.fullmatch(p[len(item.text) :])
                for p in prompts[item.source]
            ), item.text

    def test_shares_no_text_with_fit_splits(self, test_set: list[LabelledQuery], fit_texts: set[str]) -> None:
        """No test item's text occurs in GSM8K train or any CLINC train/val split."""
        assert not {norm(q.text) for q in test_set} & fit_texts

    def test_texts_are_unique(self, test_set: list[LabelledQuery]) -> None:
        """No text appears twice (LLaVA questions count with their image)."""
        keys = [(norm(q.text), q.attachments) for q in test_set]
        assert len(keys) == len(set(keys))

    def test_epistemic_small_talk_comes_from_clinc_test(
        self, test_set: list[LabelledQuery], data_dir: Path
    ) -> None:
        """CLINC items are test queries whose intent is in the small_talk domain."""
        clinc = json.loads((data_dir / "clinc/data_full.json").read_text())
        small_talk = set(json.loads((data_dir / "clinc/domains.json").read_text())["small_talk"])
        allowed = {text for text, intent in clinc["test"] if intent in small_talk}
        items = [q for q in test_set if q.source == "clinc/test/small_talk"]
        assert items
        assert all(q.label == "epistemic" and q.text in allowed for q in items)

    def test_sources_are_sampled_in_proportion(self, test_set: list[LabelledQuery]) -> None:
        """GSM8K keeps its pool share of reasoning (1319/2371 → 222/400); all knowledge subjects appear."""
        sources = Counter(q.source for q in test_set)
        assert sources["gsm8k/test"] == 222
        assert sources["clinc/test/small_talk"] == 125
        knowledge_subjects = {q.source for q in test_set if q.label == "knowledge"}
        assert len(knowledge_subjects) == 57 - 5 - 4 - 7

    def test_same_seed_same_set(self, test_set: list[LabelledQuery], data_dir: Path) -> None:
        """The sample is a pure function of the seed."""
        assert routing_test_set(data_dir, seed=0) == test_set

    def test_other_seed_other_sample(self, test_set: list[LabelledQuery], data_dir: Path) -> None:
        """Another seed draws other reasoning, knowledge and epistemic items, with the same counts."""
        other = routing_test_set(data_dir, seed=1)
        assert by_label(other) == by_label(test_set)
        for label in ("reasoning", "knowledge", "epistemic"):
            assert {q.text for q in other if q.label == label} != {
                q.text for q in test_set if q.label == label
            }

    def test_missing_data_names_file_and_option(self, tmp_path: Path) -> None:
        """Absent data raises a ConfigError naming the missing file and the --data option."""
        with pytest.raises(ConfigError, match="--data") as info:
            routing_test_set(tmp_path)
        assert info.value.path is not None and info.value.path.startswith(str(tmp_path))
        assert not Path(info.value.path).exists()

    def test_rejects_non_positive_cap(self, data_dir: Path) -> None:
        """per_label below 1 is a ValueError."""
        with pytest.raises(ValueError, match="per_label"):
            routing_test_set(data_dir, per_label=0)

    def test_query_carries_text_and_attachments_only(self, test_set: list[LabelledQuery]) -> None:
        """LabelledQuery.query() gives the text and attachments, and nothing that reveals the label."""
        item = next(q for q in test_set if q.label == "omni")
        query = item.query()
        assert (query.text, query.attachments, dict(query.metadata)) == (item.text, item.attachments, {})


class TestRoutingFitSet:
    def test_only_fit_splits(self, fit_set: list[LabelledQuery], fit_texts: set[str]) -> None:
        """Fit items come from GSM8K train (reasoning) and CLINC train small_talk (epistemic) only."""
        assert {(q.label, q.source) for q in fit_set} == {
            ("reasoning", "gsm8k/train"),
            ("epistemic", "clinc/train/small_talk"),
        }
        assert all(norm(q.text) in fit_texts for q in fit_set)

    def test_capped_and_disjoint_from_test_set(
        self, fit_set: list[LabelledQuery], test_set: list[LabelledQuery]
    ) -> None:
        """Each fit label holds per_label (200) items, none of them a test text."""
        assert by_label(fit_set) == {"reasoning": 200, "epistemic": 200}
        assert not {norm(q.text) for q in fit_set} & {norm(q.text) for q in test_set}


class TestReadExemplars:
    def test_reads_pairs_in_order_skipping_blank_lines(self, tmp_path: Path) -> None:
        """Each line gives one (text, expert) pair."""
        path = tmp_path / "ex.jsonl"
        rows = [{"text": "reverse a list", "expert": "coding"}, {"text": "hi there", "expert": "epistemic"}]
        path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
        assert read_exemplars_jsonl(path) == [("reverse a list", "coding"), ("hi there", "epistemic")]

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            ("{not json", "not valid JSON"),
            ('["text", "expert"]', "JSON object"),
            ('{"text": "x"}', "'expert'"),
            ('{"text": "", "expert": "coding"}', "'text'"),
            ('{"text": "x", "expert": 3}', "'expert'"),
        ],
        ids=["bad-json", "not-object", "missing-expert", "empty-text", "non-string-expert"],
    )
    def test_errors_name_file_and_line(self, tmp_path: Path, bad: str, message: str) -> None:
        """A bad line raises a ConfigError carrying the file and its 1-based line number."""
        path = tmp_path / "ex.jsonl"
        path.write_text('{"text": "a", "expert": "coding"}\n\n' + bad + "\n")
        with pytest.raises(ConfigError, match=message) as info:
            read_exemplars_jsonl(path)
        assert (info.value.path, info.value.line) == (str(path), 3)
        assert f"{path}:3" in str(info.value)

    def test_missing_file_is_config_error(self, tmp_path: Path) -> None:
        """A missing file raises a ConfigError naming it."""
        with pytest.raises(ConfigError) as info:
            read_exemplars_jsonl(tmp_path / "nope.jsonl")
        assert info.value.path == str(tmp_path / "nope.jsonl")
