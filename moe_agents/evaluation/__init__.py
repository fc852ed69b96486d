"""Evaluation: labelled routing queries from the shared public data, and routing metrics."""

from .data import MMLU_EPISTEMIC_SUBJECTS as MMLU_EPISTEMIC_SUBJECTS
from .data import MMLU_LEFT_OUT_SUBJECTS as MMLU_LEFT_OUT_SUBJECTS
from .data import MMLU_REASONING_SUBJECTS as MMLU_REASONING_SUBJECTS
from .data import ROUTING_LABELS as ROUTING_LABELS
from .data import LabelledQuery as LabelledQuery
from .data import routing_fit_set as routing_fit_set
from .data import routing_test_set as routing_test_set
from .metrics import OTHER as OTHER
from .metrics import RoutingScores as RoutingScores
from .metrics import latency_summary as latency_summary
from .metrics import plot_confusions as plot_confusions
from .metrics import render_confusion as render_confusion
from .metrics import render_table as render_table
from .metrics import score_routing as score_routing
from .routing import ROUTERS as ROUTERS
from .routing import evaluate_routing as evaluate_routing

__all__ = [
    "MMLU_EPISTEMIC_SUBJECTS",
    "MMLU_LEFT_OUT_SUBJECTS",
    "MMLU_REASONING_SUBJECTS",
    "OTHER",
    "ROUTERS",
    "ROUTING_LABELS",
    "LabelledQuery",
    "RoutingScores",
    "latency_summary",
    "plot_confusions",
    "render_confusion",
    "render_table",
    "routing_fit_set",
    "routing_test_set",
    "evaluate_routing",
    "score_routing",
]
