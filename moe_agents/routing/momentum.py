"""Routing momentum: within a conversation, the previous turns' experts keep a bounded bonus.

A follow-up such as "and in Rust?" says little on its own; the gate then spreads its probability,
and without memory of the conversation the choice bounces between experts. Momentum runs each
session's gate probabilities through an asymmetric low-pass filter::

    y ← y + rise · (g − y)   where g > y   (a new topic takes over quickly)
    y ← y + fall · (g − y)   where g ≤ y   (an old topic fades slowly)

and the router uses ``g + min(cap, max(0, y − g))``: the filtered score can lift an expert by at
most ``cap`` and never lowers one, so a query that clearly belongs elsewhere still goes there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import check_settings

__all__ = ["Momentum", "MomentumConfig"]


@dataclass(frozen=True, slots=True)
class MomentumConfig:
    """The YAML ``router.momentum`` settings.

    Attributes:
        enabled: apply momentum to queries that carry a ``session_id``.
        rise: filter rate where the gate score goes up (1: at once).
        fall: filter rate where it goes down (small: slow fading).
        cap: most a score can be lifted.
        max_sessions: sessions remembered (least recently used forgotten first).
    """

    enabled: bool = True
    rise: float = 0.9
    fall: float = 0.35
    cap: float = 0.35
    max_sessions: int = 10_000

    def __post_init__(self) -> None:
        checks = {
            "rise": 0.0 < self.rise <= 1.0,
            "fall": 0.0 < self.fall <= 1.0,
            "cap": 0.0 <= self.cap <= 1.0,
            "max_sessions": self.max_sessions >= 1,
        }
        check_settings("momentum", self, checks)


class Momentum:
    """Per-session filtered gate scores (over the gate's experts, in its column order)."""

    def __init__(self, config: MomentumConfig | None = None) -> None:
        self.config = config or MomentumConfig()
        self._state: OrderedDict[str, tuple[tuple[str, ...], np.ndarray]] = OrderedDict()

    def apply(self, session: str | None, experts: Sequence[str], probs: np.ndarray) -> np.ndarray:
        """The gate probabilities with this session's momentum added (and the filter advanced);
        unchanged without a session or when disabled."""
        cfg = self.config
        if session is None or not cfg.enabled:
            return probs
        key = tuple(experts)
        prev = self._state.get(session)
        if prev is None or prev[0] != key:  # a new session, or the expert set changed
            y = probs.astype(np.float64).copy()
        else:
            y = prev[1]
            rate = np.where(probs > y, cfg.rise, cfg.fall)
            y = y + rate * (probs - y)
        self._state[session] = (key, y)
        self._state.move_to_end(session)
        while len(self._state) > cfg.max_sessions:
            self._state.popitem(last=False)
        return probs + np.minimum(cfg.cap, np.maximum(0.0, y - probs))

    def forget(self, session: str) -> None:
        """Drops a session's momentum (e.g. when the user starts a new conversation)."""
        self._state.pop(session, None)
