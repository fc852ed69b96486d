"""The shipped offline default, end to end: real encoder, real SmolLM2, no network."""

from __future__ import annotations

import pytest

from moe_agents import Attachment, ExpertsFailed, Pipeline, Query, TransformersBackend

pytestmark = pytest.mark.slow


class TestDefaultPipeline:
    async def test_answers_a_coding_question_offline(self, default_pipeline: Pipeline) -> None:
        """A coding request is routed to the coding expert and answered by the local model."""
        result = await default_pipeline.run("Write a Python function that reverses a string.")
        assert result.selection.experts == ("coding",)
        assert result.answer.expert == "coding"
        assert len(result.text) > 20
        assert result.answer.model is not None and "SmolLM2" in result.answer.model
        assert result.cost.completion_tokens > 0
        assert result.errors == {}

    async def test_knowledge_expert_retrieves_from_the_shipped_document(
        self, default_pipeline: Pipeline
    ) -> None:
        """The knowledge expert's answer lists the passages it retrieved from its document."""
        result = await default_pipeline.run("Who introduced mixtures of experts, and in which year?")
        assert result.answer.expert == "knowledge"
        sources = result.answer.metadata["sources"]
        assert sources and sources[0]["source"] == "moe-agents.md"
        assert "Jacobs" in " ".join(s["text"] for s in sources)

    async def test_image_query_reports_the_missing_multimodal_model(self, default_pipeline: Pipeline) -> None:
        """An image goes to omni, which has no model offline: a clear error, not a wrong answer."""
        query = Query("What is in this picture?", attachments=(Attachment("image", data=b"\x89PNG"),))
        assert (await default_pipeline.route(query)).experts == ("omni",)
        with pytest.raises(ExpertsFailed) as info:
            await default_pipeline.run(query)
        assert "multimodal" in str(info.value.errors["omni"])

    def test_one_model_is_shared(self, default_pipeline: Pipeline) -> None:
        """Every text expert uses the same loaded SmolLM2 backend."""
        (backend,) = default_pipeline.backends
        assert isinstance(backend, TransformersBackend) and backend.loaded
        text_experts = [e for e in default_pipeline.experts.values() if e.name != "omni"]
        guarded = text_experts[0].backends[0]  # one retry/circuit guard in front of the one model
        assert guarded.inner is backend  # type: ignore[attr-defined]
        assert all(list(e.backends) == [guarded] for e in text_experts)
