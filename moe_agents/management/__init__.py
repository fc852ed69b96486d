"""Managing the experts of a running pipeline: an event bus, expert ranking, A/B tests, scaling
decisions and health checks. Each module is one concept, pure or nearly so; the pipeline wires
them in (see each module's docstring).
"""

from .ab import ABReport as ABReport
from .ab import ABTest as ABTest
from .ab import ABTracker as ABTracker
from .ab import VariantReport as VariantReport
from .events import Event as Event
from .events import EventBus as EventBus
from .events import Subscription as Subscription
from .health import HealthMonitor as HealthMonitor
from .health import HealthPolicy as HealthPolicy
from .health import Probe as Probe
from .ranking import ExpertRank as ExpertRank
from .ranking import RankingWeights as RankingWeights
from .ranking import rank_experts as rank_experts
from .scaling import AutoScaler as AutoScaler
from .scaling import Decision as Decision
from .scaling import Observation as Observation
from .scaling import ScalingPolicy as ScalingPolicy

__all__ = [
    "ABReport",
    "ABTest",
    "ABTracker",
    "AutoScaler",
    "Decision",
    "Event",
    "EventBus",
    "ExpertRank",
    "HealthMonitor",
    "HealthPolicy",
    "Observation",
    "Probe",
    "RankingWeights",
    "ScalingPolicy",
    "Subscription",
    "VariantReport",
    "rank_experts",
]
