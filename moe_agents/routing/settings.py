"""The router's settings (the YAML ``router:`` section) and where fitted gates are cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

from ..bounds import Ge, Unit, check_bounds
from ..errors import ConfigError
from ..resources import cache_folder
from .context import ContextConfig
from .crossval import CVConfig
from .gates import GateConfig
from .momentum import MomentumConfig
from .onnx_encoder import EncoderRuntime
from .permission import SelectConfig
from .tuning import TuningConfig

__all__ = ["DEFAULT_GATE_WEIGHT", "RouterConfig", "gate_cache_dir"]

DEFAULT_GATE_WEIGHT = 0.6
"""The gate's share when ``gate_weight`` is not set and nothing was cross-validated."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings (the YAML ``router:`` section).

    Attributes:
        top_k: most experts chosen per query.
        min_confidence: experts scoring below this are not chosen. If none reaches it, the
            ``fallback_expert`` is chosen (mode ``fallback``), or else the best one (mode
            ``low_confidence``), so that a query is never left unanswered.
        gate_weight: share of the gate in ``expertise`` (the rest is self-assessment); ``None``:
            chosen by cross-validation on the exemplars (``cv.gate_weights``).
        fallback_expert: the expert for queries nobody is confident about.
        overload_penalty: factor applied to an expert already at ``max_load``.
        assess_top: only the best ``assess_top`` experts by gate are asked ``can_handle`` (the
            others keep ``gate_weight × gate``), so routing cost stays flat with many experts.
        gate: how the gate is built and trained.
        tune: fine-tune the encoder on the exemplars before fitting the gate: ``on``, ``off``
            (the encoder as given), or ``auto`` (whichever cross-validation on the exemplars prefers).
        tuning: how the encoder is tuned (epochs, learning rate, seed, ...).
        cv: the cross-validation that settles ``tune: auto``, an unset ``gate_weight`` and the
            gate's temperature.
        cache_size: query embeddings kept in the LRU cache.
        batch_window_s: how long a query waits for others to share its encoder forward (0: one
            pass of the event loop; queries arriving while a forward runs share the next one).
        max_batch: most queries per encoder forward.
        gate_cache_dir: where fitted gates are cached (``None``: ``$MOE_AGENTS_CACHE_DIR`` or the
            user cache folder); ``""`` disables the cache.
        selection: trust-first ranking, exploration, low-trust fallback, hysteresis, cost weight.
        context: how queries are bucketed for trust.
        momentum: within a session, the previous turns' experts keep a bounded, fading bonus.
        seed: seeds exploration (``None``: fresh randomness).
        encoder_runtime: how the local encoder runs when none is given: ``onnx`` (int8 ONNX
            Runtime, exported once and cached; see ``OnnxEncoder``), ``onnx-fp32`` (the float
            export: torch's embeddings and fitted gates, about 2.5x faster on short queries) or
            ``torch`` (transformers).
    """

    top_k: Annotated[int, Ge(1)] = 1
    min_confidence: Annotated[float, Unit] = 0.0
    gate_weight: Annotated[float, Unit] | None = DEFAULT_GATE_WEIGHT
    fallback_expert: str | None = None
    overload_penalty: Annotated[float, Unit] = 0.5
    assess_top: Annotated[int, Ge(1)] = 16
    gate: GateConfig = field(default_factory=GateConfig)
    tune: Literal["auto", "on", "off"] = "off"
    tuning: TuningConfig = field(default_factory=TuningConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    cache_size: Annotated[int, Ge(0)] = 1024
    batch_window_s: Annotated[float, Ge(0.0)] = 0.0
    max_batch: Annotated[int, Ge(1)] = 64
    gate_cache_dir: str | None = None
    selection: SelectConfig = field(default_factory=SelectConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    seed: int | None = None
    encoder_runtime: EncoderRuntime = "torch"

    def __post_init__(self) -> None:
        check_bounds(
            "router",
            self,
            {
                "assess_top": self.assess_top >= self.top_k,
                "encoder_runtime": self.encoder_runtime in get_args(EncoderRuntime),
            },
        )
        if self.tune not in ("auto", "on", "off"):
            raise ConfigError(f"router.tune must be one of auto, on, off; got {self.tune!r}")

    @property
    def cross_validates(self) -> bool:
        """Whether fitting runs cross-validation (``tune: auto`` or no fixed ``gate_weight``)."""
        return self.tune == "auto" or self.gate_weight is None


def gate_cache_dir(config: RouterConfig | None = None) -> Path | None:
    """Where fitted gates are cached (``None`` when caching is disabled)."""
    configured = config.gate_cache_dir if config is not None else None
    if configured == "":
        return None
    if configured is not None:
        return Path(configured).expanduser()
    return cache_folder("gates")
