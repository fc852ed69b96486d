"""Labelled routing queries built from the public evaluation data (``moe_agents.eval_data``).

The labels follow the data README ("Domain labels for routing"): ``coding`` (HumanEval prompts),
``reasoning`` (GSM8K; MMLU mathematics and statistics), ``knowledge`` (the other MMLU subjects, question
stem only), ``epistemic`` (MMLU philosophy, moral disputes, world religions, logical fallacies; CLINC
``small_talk``) and ``omni`` (LLaVA questions, each with an image attachment). Seven MMLU subjects are
left out as ambiguous.

The test set reads test splits only; the fit set reads fit splits only (``gsm8k/train.jsonl`` and
CLINC ``train``), so that a router tuned on one can be measured honestly on the other.
"""

from __future__ import annotations

import csv
import json
import random
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..eval_data import data_file, eval_data_dir, text_field
from ..jsonl import read_jsonl
from ..types import Attachment, Query

__all__ = [
    "MMLU_EPISTEMIC_SUBJECTS",
    "MMLU_LEFT_OUT_SUBJECTS",
    "MMLU_REASONING_SUBJECTS",
    "ROUTING_LABELS",
    "OOS_FIT_SPLITS",
    "LabelledQuery",
    "clinc_out_of_scope",
    "placeholder_image",
    "routing_fit_set",
    "routing_test_set",
]

ROUTING_LABELS: tuple[str, ...] = ("coding", "reasoning", "knowledge", "epistemic", "omni")
"""The five expert domains of the default pipeline, in report order."""

MMLU_REASONING_SUBJECTS: frozenset[str] = frozenset(
    {
        "abstract_algebra",
        "college_mathematics",
        "elementary_mathematics",
        "high_school_mathematics",
        "high_school_statistics",
    }
)
MMLU_EPISTEMIC_SUBJECTS: frozenset[str] = frozenset(
    {"philosophy", "moral_disputes", "world_religions", "logical_fallacies"}
)
MMLU_LEFT_OUT_SUBJECTS: frozenset[str] = frozenset(
    {
        "formal_logic",
        "moral_scenarios",
        "college_computer_science",
        "high_school_computer_science",
        "machine_learning",
        "computer_security",
        "jurisprudence",
    }
)

_HUMANEVAL = "humaneval/HumanEval.jsonl.gz"
_GSM8K_TEST = "gsm8k/test.jsonl"
_GSM8K_TRAIN = "gsm8k/train.jsonl"
_MMLU_DIR = "routellm/mmlu"
_CLINC = "clinc/data_full.json"
_CLINC_DOMAINS = "clinc/domains.json"
_LLAVA = "llava/qa90_questions.jsonl"
_CLINC_FIT_SPLITS = ("train", "val", "oos_train", "oos_val")

OOS_FIT_SPLITS: tuple[str, ...] = ("oos_train", "oos_val")
"""CLINC's out-of-scope fit splits (100 queries each): what an out-of-scope threshold may be chosen on."""


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    """A query with the expert domain it should be routed to.

    Attributes:
        text: the query text.
        label: the expert domain (one of ``ROUTING_LABELS``).
        source: where it came from: ``humaneval``, ``gsm8k/test``, ``mmlu/<subject>``,
            ``clinc/test/small_talk``, ``llava``, ``gsm8k/train``, ``clinc/train/small_talk``.
        attachments: files sent with the query (LLaVA questions carry a placeholder image).
    """

    text: str
    label: str
    source: str
    attachments: tuple[Attachment, ...] = ()

    def query(self) -> Query:
        """The ``Query`` to send to a router or pipeline (without the label)."""
        return Query(self.text, attachments=self.attachments)


def routing_test_set(
    data_dir: str | Path | None = None, *, per_label: int = 400, seed: int = 0
) -> list[LabelledQuery]:
    """The labelled routing test set, from test splits only, balanced and seeded.

    Pools per label: ``coding`` = all 164 HumanEval prompts; ``reasoning`` = GSM8K test questions and
    the five MMLU mathematics/statistics subjects; ``knowledge`` = every other MMLU subject except the
    epistemic and the seven left-out ones; ``epistemic`` = MMLU philosophy, moral_disputes,
    world_religions, logical_fallacies and CLINC test queries of the ``small_talk`` domain; ``omni`` =
    all 90 LLaVA qa90 questions, each with a small generated PNG (the COCO images are not included;
    each image name gets its own colour, so the same question about two images stays two queries).
    MMLU items keep the question stem only (answer options and ``Answer:`` removed).

    Cleaning: texts are compared after collapsing whitespace and case-folding (LLaVA questions
    together with their image). Duplicates within a label are kept once; a text found under two
    labels is dropped from both; a text that also occurs in a fit split (GSM8K train, any CLINC
    train/val split) is dropped, so that a router fitted on fit data never sees a test text.

    Sampling: each label takes ``min(per_label, pool size)`` items, so with the default 400 all of
    HumanEval (164) and LLaVA (90) are in. The quota is split across the label's sources (a source is
    a data set, or one MMLU subject) in proportion to their pool sizes, rounding by largest remainder,
    so the sample keeps the pool's mix (e.g. GSM8K is about 55 % of ``reasoning``, CLINC about 31 % of
    ``epistemic``, every knowledge subject has at least 3 items). Within a source, items are drawn
    without replacement with a generator seeded from ``seed`` and the label; the result is grouped by
    label (``ROUTING_LABELS`` order), then by source, in the files' order.

    Args:
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        per_label: most items per label.
        seed: seeds the sample; the same seed gives the same list.

    Raises:
        ConfigError: no folder is given, or a data file is missing or malformed (``path`` and
            ``line`` say where).
        ValueError: ``per_label`` is below 1.
    """
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    data_dir = eval_data_dir(data_dir)
    clinc = _clinc(data_dir)
    pools: list[LabelledQuery] = [
        *_humaneval(data_dir),
        *_gsm8k(data_dir, _GSM8K_TEST, "gsm8k/test"),
        *_mmlu(data_dir),
        *_clinc_small_talk(clinc, "test"),
        *_llava(data_dir),
    ]
    fit_texts = {_norm(q.text) for q in _gsm8k(data_dir, _GSM8K_TRAIN, "gsm8k/train")}
    fit_texts |= {_norm(text) for split in _CLINC_FIT_SPLITS for text, _ in clinc[0].get(split, [])}
    kept = _dedupe(pools, exclude=fit_texts)
    return _sample(kept, per_label=per_label, seed=seed)


def routing_fit_set(
    data_dir: str | Path | None = None, *, per_label: int = 200, seed: int = 0
) -> list[LabelledQuery]:
    """Optional labelled fit data for routers, from fit splits only.

    Only two labels have a fit split: ``reasoning`` from ``gsm8k/train.jsonl`` and ``epistemic`` from
    the CLINC ``train`` queries of the ``small_talk`` domain. ``coding`` (HumanEval), ``knowledge``
    (MMLU) and ``omni`` (LLaVA) exist only as test data, so they have no fit items; their exemplars
    must be written by hand. Report results that use this set separately from exemplar-only ones.

    Texts are deduplicated as in ``routing_test_set`` and sampled the same way (up to ``per_label``
    per label, seeded).

    Args:
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        per_label: most items per label.
        seed: seeds the sample.

    Raises:
        ConfigError: no folder is given, or a data file is missing or malformed.
        ValueError: ``per_label`` is below 1.
    """
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    data_dir = eval_data_dir(data_dir)
    pools = [
        *_gsm8k(data_dir, _GSM8K_TRAIN, "gsm8k/train"),
        *_clinc_small_talk(_clinc(data_dir), "train"),
    ]
    return _sample(_dedupe(pools, exclude=set()), per_label=per_label, seed=seed)


def clinc_out_of_scope(
    data_dir: str | Path | None = None, *, splits: Sequence[str] = ("oos_test",)
) -> list[str]:
    """CLINC's out-of-scope queries (none of the 150 intents; none of this pipeline's domains either),
    deduplicated in file order.

    Args:
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        splits: ``oos_test`` (measurement only) or fit splits ``oos_train``/``oos_val``
            (``OOS_FIT_SPLITS``), never both kinds at once.

    Raises:
        ConfigError: no folder is given, the data is missing or malformed, or a split is absent.
        ValueError: no split, a split that is not an out-of-scope one, or test and fit splits mixed.
    """
    known = {"oos_test", *OOS_FIT_SPLITS}
    if not splits or not set(splits) <= known:
        raise ValueError(f"splits must be among {sorted(known)}, got {list(splits)}")
    if "oos_test" in splits and len(set(splits)) > 1:
        raise ValueError("oos_test is for measurement only: do not mix it with fit splits")
    data_dir = eval_data_dir(data_dir)
    clinc, _ = _clinc(data_dir)
    out: dict[str, str] = {}
    for split in splits:
        if split not in clinc:
            raise ConfigError(f"CLINC data has no {split!r} split", path=data_dir / _CLINC)
        for text, _intent in clinc[split]:
            if text:
                out.setdefault(_norm(text), text)
    return list(out.values())


def _humaneval(data_dir: Path) -> list[LabelledQuery]:
    path = data_file(data_dir, _HUMANEVAL)
    return [
        LabelledQuery(text_field(row, "prompt", path, n), "coding", "humaneval")
        for n, row in read_jsonl(path)
    ]


def _gsm8k(data_dir: Path, relative: str, source: str) -> list[LabelledQuery]:
    path = data_file(data_dir, relative)
    return [
        LabelledQuery(text_field(row, "question", path, n), "reasoning", source)
        for n, row in read_jsonl(path)
    ]


def _mmlu(data_dir: Path) -> list[LabelledQuery]:
    folder = data_file(data_dir, _MMLU_DIR)
    files = {p.stem.removeprefix("mmlu_"): p for p in sorted(folder.glob("mmlu_*.csv"))}
    for subject in sorted(MMLU_REASONING_SUBJECTS | MMLU_EPISTEMIC_SUBJECTS):
        if subject not in files:
            data_file(data_dir, f"{_MMLU_DIR}/mmlu_{subject}.csv")
    out: list[LabelledQuery] = []
    for subject, path in files.items():
        if subject in MMLU_LEFT_OUT_SUBJECTS:
            continue
        label = (
            "reasoning"
            if subject in MMLU_REASONING_SUBJECTS
            else "epistemic"
            if subject in MMLU_EPISTEMIC_SUBJECTS
            else "knowledge"
        )
        out.extend(LabelledQuery(stem, label, f"mmlu/{subject}") for stem in _mmlu_stems(path))
    return out


def _mmlu_stems(path: Path) -> Iterator[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0] != "prompt":
            raise ConfigError(
                "expected an MMLU responses CSV with a 'prompt' column first", path=path, line=1
            )
        for row in reader:
            # csv rows span several physical lines; report the record's last line.
            yield _mmlu_stem(row[0] if row else "", path, reader.line_num)


def _mmlu_stem(prompt: str, path: Path, line: int) -> str:
    """The question of an MMLU prompt ``<stem>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:``."""
    body = prompt.rstrip()
    if not body.endswith("Answer:"):
        raise ConfigError("MMLU prompt does not end with 'Answer:'", path=path, line=line)
    end = len(body)
    # Search backwards: a stem may itself contain a line starting "A. " (a quoted author, say).
    for letter in "DCBA":
        end = body.rfind(f"\n{letter}. ", 0, end)
        if end < 0:
            raise ConfigError(f"MMLU prompt has no option {letter}", path=path, line=line)
    stem = body[:end].strip()
    if not stem:
        raise ConfigError("MMLU prompt has an empty question", path=path, line=line)
    return stem


def _clinc(data_dir: Path) -> tuple[Mapping[str, list[tuple[str, str]]], frozenset[str]]:
    """CLINC's splits as ``(text, intent)`` pairs, and the intents of the ``small_talk`` domain."""
    data_path, domains_path = data_file(data_dir, _CLINC), data_file(data_dir, _CLINC_DOMAINS)
    data, domains = _load_json(data_path), _load_json(domains_path)
    small_talk = domains.get("small_talk")
    if not isinstance(small_talk, list):
        raise ConfigError("no 'small_talk' domain in CLINC domains", path=domains_path)
    splits: dict[str, list[tuple[str, str]]] = {}
    for split, rows in data.items():
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 for r in rows):
            raise ConfigError(f"CLINC split {split!r} is not a list of [text, intent] pairs", path=data_path)
        splits[split] = [(str(text).strip(), str(intent)) for text, intent in rows]
    for split in ("train", "test"):
        if split not in splits:
            raise ConfigError(f"CLINC data has no {split!r} split", path=data_path)
    return splits, frozenset(map(str, small_talk))


def _clinc_small_talk(
    clinc: tuple[Mapping[str, list[tuple[str, str]]], frozenset[str]], split: str
) -> list[LabelledQuery]:
    splits, small_talk = clinc
    source = f"clinc/{split}/small_talk"
    return [
        LabelledQuery(text, "epistemic", source)
        for text, intent in splits[split]
        if intent in small_talk and text
    ]


def _llava(data_dir: Path) -> list[LabelledQuery]:
    path = data_file(data_dir, _LLAVA)
    out = []
    for n, row in read_jsonl(path):
        image = placeholder_image(text_field(row, "image", path, n))
        out.append(LabelledQuery(text_field(row, "text", path, n), "omni", "llava", (image,)))
    return out


def _load_json(path: Path) -> Mapping[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            value = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    if not isinstance(value, dict):
        raise ConfigError("expected a JSON object", path=path)
    return value


def placeholder_image(name: str) -> Attachment:
    """A tiny PNG image attachment in one colour derived from ``name`` (the COCO images of LLaVA's
    questions are not included; this stands in for one)."""
    return Attachment("image", data=_placeholder_png(name), mime="image/png")


@cache
def _placeholder_png(name: str, size: int = 8) -> bytes:
    """A valid ``size``×``size`` RGB PNG in one colour derived from ``name``."""
    rgb = zlib.crc32(name.encode()).to_bytes(4, "big")[1:]
    raw = b"".join(b"\x00" + rgb * size for _ in range(size))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# -- cleaning and sampling -------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _key(item: LabelledQuery) -> tuple[str, tuple[bytes, ...]]:
    return _norm(item.text), tuple(a.read() for a in item.attachments)


def _dedupe(items: Sequence[LabelledQuery], *, exclude: set[str]) -> list[LabelledQuery]:
    labels: dict[tuple[str, tuple[bytes, ...]], set[str]] = {}
    for item in items:
        labels.setdefault(_key(item), set()).add(item.label)
    seen: set[tuple[str, tuple[bytes, ...]]] = set()
    kept = []
    for item in items:
        key = _key(item)
        if key in seen or len(labels[key]) > 1 or key[0] in exclude:
            continue
        seen.add(key)
        kept.append(item)
    return kept


def _sample(items: Sequence[LabelledQuery], *, per_label: int, seed: int) -> list[LabelledQuery]:
    out: list[LabelledQuery] = []
    for label in ROUTING_LABELS:
        by_source: dict[str, list[LabelledQuery]] = {}
        for item in items:
            if item.label == label:
                by_source.setdefault(item.source, []).append(item)
        if not by_source:
            continue
        rng = random.Random(f"{seed}/{label}")
        quotas = _proportional({s: len(pool) for s, pool in by_source.items()}, per_label)
        for source in sorted(by_source):
            pool = by_source[source]
            chosen = sorted(rng.sample(range(len(pool)), quotas[source]))
            out.extend(pool[i] for i in chosen)
    return out


def _proportional(sizes: Mapping[str, int], cap: int) -> dict[str, int]:
    """Splits ``min(cap, total)`` across sources in proportion to their sizes (largest remainder)."""
    total = sum(sizes.values())
    quota = min(cap, total)
    exact = {s: quota * n / total for s, n in sizes.items()}
    counts = {s: int(x) for s, x in exact.items()}
    by_remainder = sorted(sizes, key=lambda s: (counts[s] - exact[s], s))
    for source in by_remainder[: quota - sum(counts.values())]:
        counts[source] += 1
    return counts
