"""The five built-in expert kinds: prompts, self-assessment, retrieval, attachments, backend choice."""

from __future__ import annotations

import base64
import struct
import wave
import zlib
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

import moe_agents.experts as experts_pkg
from moe_agents.errors import BackendError, ConfigError, RunError
from moe_agents.experts import (
    BUILTIN_EXPERTS,
    CodingExpert,
    EpistemicExpert,
    KnowledgeExpert,
    LLMExpert,
    OmniExpert,
    ReasoningExpert,
)
from moe_agents.experts.knowledge import split_passages
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Attachment, Message, Query

KINDS = ("coding", "reasoning", "knowledge", "epistemic", "omni")


def _echo(messages: Sequence[Message]) -> str:
    return "ok"


def _make(kind: str, *backends: FunctionBackend) -> LLMExpert:
    if kind == "knowledge":
        return KnowledgeExpert(backends=backends, encoder=HashingEncoder())
    return BUILTIN_EXPERTS[kind](backends=backends)


def _png_1x1() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1×1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _write_wav(path: Path) -> bytes:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    return path.read_bytes()


class CountingEncoder(HashingEncoder):
    """A hashing encoder that records the size of every batch it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return super().encode(texts)


class TestBuiltinExperts:
    def test_registry_maps_kind_to_class(self) -> None:
        """BUILTIN_EXPERTS maps each of the five kinds to the class with that kind."""
        assert tuple(BUILTIN_EXPERTS) == KINDS
        assert all(cls.kind == kind and issubclass(cls, LLMExpert) for kind, cls in BUILTIN_EXPERTS.items())

    def test_all_is_complete(self) -> None:
        """Every public name of moe_agents.experts is listed in __all__, and every listed name exists."""
        public = {n for n in vars(experts_pkg) if not n.startswith("_")} - {
            "Mapping",
            "MappingProxyType",
            "base",
            "coding",
            "epistemic",
            "knowledge",
            "omni",
            "policy",
            "reasoning",
        }
        assert public == set(experts_pkg.__all__)

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    def test_exemplars_written_per_kind(self, kind: str) -> None:
        """Each kind ships about twenty distinct exemplars, used when none are given."""
        cls = BUILTIN_EXPERTS[kind]
        assert len(cls.default_exemplars) >= 20
        assert len(set(cls.default_exemplars)) == len(cls.default_exemplars)
        assert _make(kind).exemplars == cls.default_exemplars

    def test_exemplars_distinct_across_kinds(self) -> None:
        """No exemplar is claimed by two kinds."""
        all_exemplars = [e for cls in BUILTIN_EXPERTS.values() for e in cls.default_exemplars]
        assert len(all_exemplars) == len(set(all_exemplars))

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    async def test_system_prompt_reaches_backend(self, kind: str) -> None:
        """The kind's own system prompt is the first message the backend receives."""
        backend = FunctionBackend(_echo)
        await _make(kind, backend).process(Query("hello there"))
        first = backend.calls[0].messages[0]
        assert first == {"role": "system", "content": BUILTIN_EXPERTS[kind].default_system_prompt}
        assert len({cls.default_system_prompt for cls in BUILTIN_EXPERTS.values()}) == len(KINDS)

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    async def test_custom_system_prompt_replaces_default(self, kind: str) -> None:
        """A system_prompt given to the constructor is the one sent."""
        backend = FunctionBackend(_echo)
        expert = BUILTIN_EXPERTS[kind](backends=[backend], system_prompt="Be brief.")
        await expert.process(Query("hello"))
        assert backend.calls[0].messages[0]["content"] == "Be brief."

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    async def test_context_included_before_request(self, kind: str) -> None:
        """The query's context reaches the model, before the request itself."""
        backend = FunctionBackend(_echo)
        await _make(kind, backend).process(Query("What changed?", context="Earlier: the build was green."))
        user = backend.calls[0].prompt
        assert "Earlier: the build was green." in user
        assert user.index("Earlier: the build was green.") < user.index("What changed?")

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    async def test_answer_names_expert_and_model(self, kind: str) -> None:
        """The answer carries the expert's name, the backend's reply and model, and a confidence in [0, 1]."""
        backend = FunctionBackend(lambda m: "  the reply  ", name="model-x")
        answer = await _make(kind, backend).process(Query("hello"))
        assert (answer.expert, answer.text, answer.model) == (kind, "the reply", "model-x")
        assert 0.0 <= answer.confidence <= 1.0


OBVIOUS = [
    (
        "Fix this Python traceback:\nTraceback (most recent call last):\n"
        '  File "main.py", line 3, in <module>\n'
        "    print(items[5])\nIndexError: list index out of range",
        "coding",
    ),
    ("Write a JavaScript function that debounces another function.", "coding"),
    ("Why does my SQL query return duplicate rows after a JOIN?", "coding"),
    ("```rust\nfn main() { let v = vec![1]; }\n```\nWhy won't this compile?", "coding"),
    ("If a train travels 60 km/h for 2.5 hours, how far?", "reasoning"),
    ("Solve 2x + 3 = 11.", "reasoning"),
    ("What is 15% of 240?", "reasoning"),
    (
        "Tom has twice as many apples as Ann, and together they have eighteen. How many does Ann have?",
        "reasoning",
    ),
    ("Who was the first emperor of Rome?", "knowledge"),
    ("What is the capital of Canada?", "knowledge"),
    ("When did World War II end?", "knowledge"),
    ("Can you tell me who painted the Mona Lisa?", "knowledge"),
    ("Do you think free will exists?", "epistemic"),
    ("Is it ethical to eat meat?", "epistemic"),
    ("Hi, how are you?", "epistemic"),
    ("Thanks a lot!", "epistemic"),
    ("Should I quit my job to travel the world?", "epistemic"),
]


class TestSelfAssessment:
    @pytest.mark.parametrize(
        ("text", "kind"),
        OBVIOUS,
        ids=[
            "coding-traceback",
            "coding-js-function",
            "coding-sql",
            "coding-fenced-rust",
            "reasoning-train",
            "reasoning-equation",
            "reasoning-percent",
            "reasoning-number-words",
            "knowledge-rome",
            "knowledge-capital",
            "knowledge-when",
            "knowledge-embedded-question",
            "epistemic-free-will",
            "epistemic-ethics",
            "epistemic-greeting",
            "epistemic-thanks",
            "epistemic-should-i",
        ],
    )
    async def test_own_kind_clearly_highest(self, text: str, kind: str) -> None:
        """On an obvious request, the expert of its kind scores highest, by a clear margin."""
        query = Query(text)
        scores = {k: await _make(k).can_handle(query) for k in KINDS}
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        assert ranked[0] == kind, scores
        assert scores[kind] - scores[ranked[1]] >= 0.2, scores

    async def test_image_query_goes_to_omni(self) -> None:
        """A query with an image scores 1.0 for omni and 0 for every text-only kind."""
        query = Query("What is in this?", attachments=(Attachment("image", data=_png_1x1()),))
        scores = {k: await _make(k).can_handle(query) for k in KINDS}
        assert scores == {"coding": 0.0, "reasoning": 0.0, "knowledge": 0.0, "epistemic": 0.0, "omni": 1.0}

    @pytest.mark.parametrize(
        "text",
        ["Summarise the plot of Hamlet.", "Describe the photo I took yesterday."],
        ids=["plain", "photo"],
    )
    async def test_omni_takes_only_media_queries(self, text: str) -> None:
        """Without an image or audio the omni expert does not accept the query and scores 0."""
        assert not OmniExpert().accepts(Query(text))
        assert await OmniExpert().can_handle(Query(text)) == 0.0

    async def test_omni_can_accept_text_when_configured(self) -> None:
        """With media_only off, omni scores a text query low, higher when it mentions a photo."""
        omni = OmniExpert()
        omni.media_only = False
        assert await omni.can_handle(Query("Summarise the plot of Hamlet.")) == pytest.approx(0.05)
        assert await omni.can_handle(Query("Describe the photo I took yesterday.")) == pytest.approx(0.2)

    @pytest.mark.parametrize("kind", KINDS, ids=KINDS)
    async def test_scores_in_unit_interval(self, kind: str) -> None:
        """Self-assessment stays in [0, 1] even when many signals match."""
        text = (
            OBVIOUS[0][0] + " Solve 2x + 3 = 11. Who was the first emperor? Do you think it is ethical? Hi!"
        )
        assert 0.0 <= await _make(kind).can_handle(Query(text)) <= 1.0


class TestCodingExpert:
    async def test_code_blocks_in_metadata(self) -> None:
        """The fenced code blocks of the reply are listed with their languages."""
        reply = "Use this:\n```python\ndef f():\n    return 1\n```\nand run\n```\npytest\n```"
        answer = await CodingExpert(backends=[FunctionBackend(lambda m: reply)]).process(Query("write f"))
        assert answer.metadata["code_blocks"] == [
            {"language": "python", "code": "def f():\n    return 1"},
            {"language": "", "code": "pytest"},
        ]


class TestReasoningExpert:
    def test_prompt_asks_for_steps_and_final_line(self) -> None:
        """The system prompt asks for step-by-step work and a closing 'Final answer:' line."""
        prompt = ReasoningExpert.default_system_prompt
        assert "step by step" in prompt
        assert "Final answer: <answer>" in prompt

    @pytest.mark.parametrize(
        ("reply", "expected"),
        [
            ("60 × 2.5 = 150 km.\nFinal answer: 150", "150"),
            ("Total: $1,200.00\n\n**Final Answer:** $1,200.00", "1200"),
            ("It is about 150 km, I think.", None),
        ],
        ids=["plain", "markdown-money", "no-marker"],
    )
    async def test_final_answer_metadata(self, reply: str, expected: str | None) -> None:
        """The normalised final answer of the reply is in metadata['final_answer'] (None without one)."""
        backend = FunctionBackend(lambda m: reply)
        answer = await ReasoningExpert(backends=[backend]).process(Query("60 km/h for 2.5 h: how far?"))
        assert answer.metadata["final_answer"] == expected
        assert answer.text == reply.strip()


DOCS = {
    "rome.md": "# Rome\n\nAugustus was the first emperor of Rome, ruling from 27 BC until AD 14.",
    "paris.md": "# Paris\n\nThe Seine is the river that flows through Paris.",
    "python.md": "# Python\n\nThe global interpreter lock lets one thread run Python bytecode at a time.",
}


def _write_docs(tmp_path: Path) -> list[Path]:
    paths = []
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        paths.append(tmp_path / name)
    return paths


class TestKnowledgeExpert:
    async def test_sources_cited_in_prompt_and_metadata(self, tmp_path: Path) -> None:
        """The best passage is quoted as source [1] and listed first in metadata['sources']."""
        backend = FunctionBackend(lambda m: "The Seine [1].")
        expert = KnowledgeExpert(
            backends=[backend],
            documents=_write_docs(tmp_path),
            encoder=HashingEncoder(),
            top_passages=2,
            min_score=0.0,  # bag-of-words similarities are low; keep both passages
        )
        answer = await expert.process(Query("Which river flows through Paris?"))
        sources = answer.metadata["sources"]
        assert len(sources) == 2
        assert sources[0]["source"] == "paris.md"
        assert sources[0]["text"] == "# Paris\n\nThe Seine is the river that flows through Paris."
        assert sources[0]["score"] > sources[1]["score"]
        prompt = backend.calls[0].prompt
        assert "[1] (paris.md)\n> # Paris\n>\n> The Seine is the river that flows through Paris." in prompt
        assert "[2] (" in prompt
        assert "[3] (" not in prompt
        assert prompt.index("cite them as [1], [2], ...") < prompt.index("Which river flows through Paris?")

    async def test_inline_documents_named_by_position(self) -> None:
        """A str document is inline text, named inline:<its index in documents>."""
        expert = KnowledgeExpert(
            backends=[FunctionBackend(_echo)],
            documents=["Cats purr when content.", "Owls hunt at night and sleep by day."],
            encoder=HashingEncoder(),
            top_passages=1,
        )
        answer = await expert.process(Query("When do owls hunt?"))
        assert [(s["source"], s["text"]) for s in answer.metadata["sources"]] == [
            ("inline:1", "Owls hunt at night and sleep by day.")
        ]

    async def test_no_documents_answers_from_model(self) -> None:
        """Without documents the request goes to the model unchanged and sources is empty."""
        encoder = CountingEncoder()
        backend = FunctionBackend(_echo)
        answer = await KnowledgeExpert(backends=[backend], encoder=encoder).process(
            Query("Who was Augustus?")
        )
        assert answer.metadata["sources"] == []
        assert backend.calls[0].prompt == "Who was Augustus?"
        assert encoder.batches == []

    async def test_loads_lazily_once(self, tmp_path: Path) -> None:
        """process loads the documents on first use; later calls only embed the request."""
        encoder = CountingEncoder()
        expert = KnowledgeExpert(
            backends=[FunctionBackend(_echo)], documents=_write_docs(tmp_path), encoder=encoder
        )
        assert not expert.loaded
        await expert.process(Query("first emperor?"))
        await expert.process(Query("river?"))
        await expert.load()
        assert expert.loaded
        assert encoder.batches == [3, 1, 1]
        assert [p.source for p in expert.passages] == ["rome.md", "paris.md", "python.md"]

    async def test_unload_forgets_passages(self, tmp_path: Path) -> None:
        """unload drops the passages; the next call reads the documents again."""
        path = tmp_path / "notes.md"
        path.write_text("Old fact.", encoding="utf-8")
        expert = KnowledgeExpert(
            backends=[FunctionBackend(_echo)], documents=[path], encoder=HashingEncoder()
        )
        await expert.load()
        path.write_text("New fact.", encoding="utf-8")
        await expert.unload()
        assert expert.passages == ()
        answer = await expert.process(Query("fact?"))
        assert answer.metadata["sources"][0]["text"] == "New fact."

    async def test_missing_document_names_file(self, tmp_path: Path) -> None:
        """A document file that does not exist is a ConfigError naming the file."""
        missing = tmp_path / "nowhere.md"
        expert = KnowledgeExpert(
            backends=[FunctionBackend(_echo)], documents=[missing], encoder=HashingEncoder()
        )
        with pytest.raises(ConfigError, match=r"nowhere\.md") as info:
            await expert.load()
        assert info.value.path == str(missing)

    async def test_non_utf8_document_names_file(self, tmp_path: Path) -> None:
        """A document that is not UTF-8 text is a ConfigError naming the file."""
        binary = tmp_path / "image.md"
        binary.write_bytes(b"\xff\xfe\x00\x81")
        expert = KnowledgeExpert(documents=[binary], encoder=HashingEncoder())
        with pytest.raises(ConfigError, match=r"image\.md"):
            await expert.process(Query("anything"))

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"top_passages": 0}, "top_passages"),
            ({"passage_chars": 10}, "passage_chars"),
            ({"documents": "just one string"}, "documents"),
        ],
        ids=["top-passages", "passage-chars", "documents-not-a-list"],
    )
    def test_bad_options_rejected(self, options: dict[str, object], message: str) -> None:
        """Out-of-range options are a ConfigError naming the option."""
        with pytest.raises(ConfigError, match=message):
            KnowledgeExpert(**options)  # type: ignore[arg-type]

    def test_default_encoder_is_bundled(self) -> None:
        """With no encoder given, the shared bundled sentence encoder is used."""
        from moe_agents.routing.encoder import bundled_encoder

        assert KnowledgeExpert().encoder is bundled_encoder()

    async def test_real_encoder_picks_relevant_passage(self, minilm: object) -> None:
        """With all-MiniLM-L6-v2, a paraphrased question retrieves the passage that answers it."""
        documents = [
            "Augustus became the first Roman emperor in 27 BC after defeating Mark Antony.",
            "Photosynthesis converts light energy into chemical energy stored in glucose.",
            "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
            "Python's global interpreter lock allows one thread to execute bytecode at a time.",
            "The Great Barrier Reef lies off the coast of Queensland, Australia.",
        ]
        expert = KnowledgeExpert(
            backends=[FunctionBackend(_echo)],
            documents=documents,
            encoder=minilm,
            top_passages=3,  # type: ignore[arg-type]
        )
        sources = (await expert.process(Query("Who ruled the Roman Empire first?"))).metadata["sources"]
        assert [s["source"] for s in sources] == ["inline:0"]  # the unrelated passages score < min_score
        assert sources[0]["score"] >= expert.min_score

    async def test_unrelated_question_quotes_no_passage(self, minilm: object) -> None:
        """A question no document is about gets no sources, so the model is not misled by them."""
        backend = FunctionBackend(_echo)
        expert = KnowledgeExpert(
            backends=[backend], documents=["Augustus was the first Roman emperor."], encoder=minilm
        )  # type: ignore[arg-type]
        answer = await expert.process(Query("What is the boiling point of water at sea level?"))
        assert answer.metadata["sources"] == []
        assert "Sources:" not in backend.calls[0].prompt


class TestSplitPassages:
    def test_packs_short_paragraphs(self) -> None:
        """Consecutive short paragraphs share a passage up to the limit."""
        assert split_passages("One.\n\nTwo.\n\n\nThree is longer.", 16) == [
            "One.\n\nTwo.",
            "Three is longer.",
        ]

    def test_long_paragraph_split_at_sentences(self) -> None:
        """A paragraph over the limit is split between sentences, and no passage exceeds the limit."""
        text = " ".join(f"Sentence number {i} is here." for i in range(20))
        passages = split_passages(text, 100)
        assert all(len(p) <= 100 for p in passages)
        assert " ".join(passages).split() == text.split()
        assert all(p.endswith("here.") for p in passages)

    def test_overlong_sentence_split_at_words(self) -> None:
        """A single sentence longer than the limit is split between words."""
        passages = split_passages("word " * 60, 50)
        assert all(len(p) <= 50 for p in passages)
        assert sum(p.count("word") for p in passages) == 60


class TestEpistemicExpert:
    def test_prompt_states_uncertainty_and_one_question(self) -> None:
        """The prompt asks for explicit uncertainty and allows at most one clarifying question."""
        prompt = EpistemicExpert.default_system_prompt
        assert "I'm fairly confident" in prompt
        assert "I'm not sure" in prompt
        assert "one short clarifying question" in prompt

    @pytest.mark.parametrize(
        ("adapter", "expected"),
        [(Path("/adapters/introspective-qwen"), "/adapters/introspective-qwen"), (None, None)],
        ids=["path", "none"],
    )
    async def test_adapter_recorded(self, adapter: Path | None, expected: str | None) -> None:
        """The adapter is stored and recorded in every answer's metadata; a backend that cannot
        apply it (not a local transformers model) answers anyway and the metadata says so."""
        expert = EpistemicExpert(backends=[FunctionBackend(_echo)], adapter=adapter)
        answer = await expert.process(Query("Is honesty always right?"))
        assert expert.adapter == adapter
        assert answer.metadata["adapter"] == expected
        assert answer.metadata["adapter_applied"] is False
        assert answer.text == "ok"

    def test_adapter_not_applied_is_logged(self) -> None:
        """Each backend that cannot apply the adapter gets one ``expert.adapter_not_applied`` warning."""
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            EpistemicExpert(
                backends=[FunctionBackend(_echo, name="api")], adapter="/adapters/introspective-qwen"
            )
            EpistemicExpert(backends=[FunctionBackend(_echo, name="api")])
        assert [(e["event"], e["log_level"], e["backend"]) for e in logs] == [
            ("expert.adapter_not_applied", "warning", "api")
        ]

    def test_empty_adapter_rejected(self) -> None:
        """An empty adapter name is a ConfigError."""
        with pytest.raises(ConfigError, match="adapter"):
            EpistemicExpert(adapter="  ")


class TestOmniExpert:
    async def test_image_and_audio_become_content_parts(self, tmp_path: Path) -> None:
        """An image becomes a base64 data URL part and WAV audio an input_audio part, after the text."""
        png = tmp_path / "dot.png"
        png.write_bytes(_png_1x1())
        wav_bytes = _write_wav(tmp_path / "beep.wav")
        backend = FunctionBackend(_echo, modalities=["image", "audio"])
        query = Query(
            "What do you see and hear?",
            attachments=(Attachment("image", path=png), Attachment("audio", path=tmp_path / "beep.wav")),
        )
        await OmniExpert(backends=[backend]).process(query)
        content = backend.calls[0].messages[1]["content"]
        assert content[0] == {"type": "text", "text": "What do you see and hear?"}
        assert content[1] == {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(_png_1x1()).decode()},
        }
        assert content[2] == {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(wav_bytes).decode(), "format": "wav"},
        }
        assert len(content) == 3

    @pytest.mark.parametrize(
        ("attachment", "url_prefix"),
        [
            (Attachment("image", data=_png_1x1()), "data:image/png;base64,"),
            (Attachment("image", data=b"\xff\xd8\xff\xe0rest", mime="image/jpeg"), "data:image/jpeg;base64,"),
            (Attachment("image", data=_png_1x1(), mime="image/webp"), "data:image/webp;base64,"),
        ],
        ids=["sniffed-png", "given-jpeg", "given-mime-wins"],
    )
    async def test_inline_image_mime(self, attachment: Attachment, url_prefix: str) -> None:
        """Inline image data uses the given MIME type, else one recognised from its first bytes."""
        messages = await OmniExpert().build_messages(Query("What is it?", attachments=(attachment,)))
        assert messages[1]["content"][1]["image_url"]["url"].startswith(url_prefix)

    async def test_text_file_quoted(self, tmp_path: Path) -> None:
        """A text file attachment is quoted in the text; with no image or audio the content is a string."""
        notes = tmp_path / "notes.txt"
        notes.write_text("line one\nline two\n", encoding="utf-8")
        messages = await OmniExpert().build_messages(
            Query("Summarise.", attachments=(Attachment("file", path=notes),))
        )
        assert messages[1]["content"] == "Summarise.\n\nAttached file notes.txt:\n> line one\n> line two"

    async def test_no_multimodal_backend_raises(self) -> None:
        """An image query with only text backends is a BackendError naming the expert and the fix."""
        backend = FunctionBackend(_echo, name="text-only")
        query = Query("What is this?", attachments=(Attachment("image", data=_png_1x1()),))
        with pytest.raises(BackendError, match=r"modalities: \[image\]") as info:
            await OmniExpert(backends=[backend]).process(query)
        assert info.value.expert == "omni"
        assert "'omni'" in str(info.value)
        assert "text-only" in str(info.value)
        assert backend.calls == []

    async def test_no_backend_at_all_raises(self) -> None:
        """An audio query to an omni expert without backends says how to configure one."""
        query = Query("Transcribe.", attachments=(Attachment("audio", data=b"RIFF\0\0\0\0WAVE"),))
        with pytest.raises(BackendError, match=r"multimodal backend.*modalities: \[audio\]"):
            await OmniExpert(name="eyes").process(query)

    async def test_unsupported_audio_format(self) -> None:
        """Audio that is neither WAV nor MP3 is a RunError naming its type."""
        query = Query("Transcribe.", attachments=(Attachment("audio", data=b"OggS", mime="audio/ogg"),))
        with pytest.raises(RunError, match="audio/ogg"):
            await OmniExpert().build_messages(query)

    async def test_missing_attachment_file(self, tmp_path: Path) -> None:
        """An attachment path that does not exist is a RunError naming the file."""
        query = Query("What is this?", attachments=(Attachment("image", path=tmp_path / "gone.png"),))
        with pytest.raises(RunError, match=r"gone\.png"):
            await OmniExpert().build_messages(query)


class TestBackendChoice:
    async def test_least_loaded_backend_chosen(self) -> None:
        """While one backend holds a call in flight, the next call goes to the idle one."""
        started, release = anyio.Event(), anyio.Event()

        async def held(messages: Sequence[Message]) -> str:
            started.set()
            await release.wait()
            return "held"

        busy = FunctionBackend(held, name="busy")
        idle = FunctionBackend(_echo, name="idle")
        expert = CodingExpert(backends=[busy, idle])
        models: list[str | None] = []

        async def first() -> None:
            models.append((await expert.process(Query("one"))).model)

        with anyio.fail_after(5):  # a wrong choice would wait on the held backend forever
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await started.wait()
                models.append((await expert.process(Query("two"))).model)
                release.set()
        models.append((await expert.process(Query("three"))).model)
        assert models == ["idle", "busy", "busy"]
        assert (len(busy.calls), len(idle.calls)) == (2, 1)
