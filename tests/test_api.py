"""The public API: names, values and errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import moe_agents
from moe_agents import Answer, Attachment, ExpertScore, Query, Selection, Usage
from moe_agents.errors import (
    BackendError,
    BackendTimeout,
    ConfigError,
    ExpertsFailed,
    MoEError,
    NoCapableExpert,
    RunError,
    UnknownResult,
)


class TestExports:
    def test_all_is_complete(self) -> None:
        """Every public name defined in the package namespace is listed in __all__, and vice versa."""
        public = {n for n in vars(moe_agents) if not n.startswith("_")}
        modules = {n for n in public if type(getattr(moe_agents, n)).__name__ == "module"}
        assert set(moe_agents.__all__) == public - modules

    def test_import_is_light(self) -> None:
        """Importing moe_agents imports neither torch, transformers nor litellm."""
        heavy = "('torch', 'transformers', 'litellm')"
        code = f"import sys, moe_agents; print(sorted(m for m in {heavy} if m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"


class TestValues:
    def test_query_is_frozen_and_reports_modalities(self) -> None:
        """Queries are immutable and know their attachment kinds."""
        q = Query("hi", attachments=[Attachment("image", data=b"x")])  # type: ignore[arg-type]
        assert q.modalities == frozenset({"image"})
        assert isinstance(q.attachments, tuple)
        with pytest.raises(AttributeError):
            q.text = "other"  # type: ignore[misc]

    def test_attachment_needs_path_or_data(self) -> None:
        """An attachment has exactly one source and a known kind."""
        with pytest.raises(ValueError, match="exactly one"):
            Attachment("image")
        with pytest.raises(ValueError, match="kind"):
            Attachment("video", data=b"x")  # type: ignore[arg-type]

    def test_selection_validates_weights(self) -> None:
        """Weights must match the experts, be non-negative and sum to 1."""
        with pytest.raises(ValueError, match="sum to 1"):
            Selection(("a", "b"), (0.5, 0.6), "router")
        with pytest.raises(ValueError, match=">= 0"):
            Selection(("a", "b"), (1.5, -0.5), "router")
        with pytest.raises(ValueError, match="2 experts but 1 weights"):
            Selection(("a", "b"), (1.0,), "router")
        with pytest.raises(ValueError, match="duplicate"):
            Selection(("a", "a"), (0.5, 0.5), "router")

    def test_selection_from_scores_normalises_best_first(self) -> None:
        """from_scores sorts by score and normalises into weights."""
        s = Selection.from_scores(
            [("b", 1.0), ("a", 3.0)], mode="router", scores={"a": ExpertScore(permission=3.0)}
        )
        assert s.experts == ("a", "b")
        assert s.weights == pytest.approx((0.75, 0.25))
        assert s.weight("b") == pytest.approx(0.25) and s.weight("zzz") == 0.0

    def test_usage_adds_up(self) -> None:
        """Usage values add field by field."""
        assert Usage(1, 2, 0.5) + Usage(3, 4, 0.25) == Usage(4, 6, 0.75)

    def test_answer_metadata_is_read_only(self) -> None:
        """Answer metadata cannot be mutated after the fact."""
        a = Answer("x", "text", metadata={"k": 1})
        with pytest.raises(TypeError):
            a.metadata["k"] = 2  # type: ignore[index]


class TestErrors:
    @pytest.mark.parametrize(
        ("cls", "parents"),
        [
            (ConfigError, (MoEError,)),
            (RunError, (MoEError,)),
            (BackendError, (RunError,)),
            (BackendTimeout, (BackendError,)),
            (NoCapableExpert, (RunError,)),
            (ExpertsFailed, (RunError, ExceptionGroup)),
            (UnknownResult, (MoEError, KeyError)),
        ],
        ids=lambda v: v.__name__ if isinstance(v, type) else "",
    )
    def test_error_tree(self, cls: type, parents: tuple[type, ...]) -> None:
        """The error classes form the documented tree."""
        assert all(issubclass(cls, p) for p in parents)

    def test_config_error_message_names_the_place(self) -> None:
        """A ConfigError's message starts with file:line (key)."""
        e = ConfigError("bad value", path="p.yaml", line=7, key="experts.0.kind")
        assert str(e) == "p.yaml:7 (experts.0.kind): bad value"

    def test_experts_failed_maps_errors_by_expert(self) -> None:
        """ExpertsFailed exposes each expert's error by name and can be caught with except*."""
        err = ExpertsFailed(
            "all failed", [BackendError("a down", expert="a"), BackendTimeout("slow", expert="b")]
        )
        assert set(err.errors) == {"a", "b"}
        caught = []
        try:
            raise err
        except* BackendTimeout as group:
            caught.append(group.exceptions)
        except* BackendError:
            pass
        assert len(caught) == 1


class TestSelectionProperties:
    @given(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
            min_size=1,
            max_size=12,
        )
    )
    def test_from_scores_always_gives_a_valid_selection(self, scores: dict[str, float]) -> None:
        """Any non-negative scores give weights >= 0 that sum to 1, ordered like the scores."""
        s = Selection.from_scores(list(scores.items()), mode="router", scores={})
        assert set(s.experts) == set(scores)
        assert sum(s.weights) == pytest.approx(1.0, abs=1e-9)
        assert all(w >= 0 for w in s.weights)
        ranked = [scores[e] for e in s.experts]
        assert ranked == sorted(ranked, reverse=True)


class TestJson:
    def test_result_to_dict_is_json_ready(self) -> None:
        """A Result with metadata, scores and errors serialises with json.dumps."""
        import json

        from moe_agents import Result
        from moe_agents.errors import BackendTimeout

        answer = Answer("coding", "hi", model="m", usage=Usage(1, 2, 0.5), metadata={"sources": ({"s": 1},)})
        selection = Selection(
            ("coding",), (1.0,), "router", {"coding": ExpertScore(gate=0.7, permission=0.7)}
        )
        result = Result(
            "r1",
            answer,
            selection,
            {"coding": answer},
            {"omni": BackendTimeout("slow")},
            {"total": 0.1},
            Usage(1, 2, 0.5),
        )
        data = json.loads(json.dumps(result.to_dict()))
        assert data["answer"]["metadata"] == {"sources": [{"s": 1}]}
        assert data["selection"]["scores"]["coding"]["gate"] == 0.7
        assert data["errors"] == {"omni": "BackendTimeout: slow"}
        assert data["cost"] == {"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.5}
