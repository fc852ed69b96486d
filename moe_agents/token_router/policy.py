"""The token router's policy: how far routing may lean towards resident, trusted, under-used experts."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import check_settings

__all__ = ["TokenPolicy"]


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """Settings of the cache-, trust- and load-aware token router; the default is neutral.

    A neutral policy (every field 0) leaves the model's routing untouched, bit for bit.

    Attributes:
        lam: cache bonus λ: resident experts get ``λ · Δ_layer`` added to their logit
            (Δ_layer = running mean of the per-token logit range); 0 is neutral.
        protect_top_j: the model's own top-J picks are kept whatever the bonuses say
            (arXiv 2412.00099); only the other ``k − J`` slots may move.
        trust_max: bound of the trust logit bias (``trust_max · tanh(trust)``); 0 turns trust off.
        balance_gamma: DeepSeek-V3 load-balancing bias step γ (≈ 1e-3): after each batch, an
            over-loaded expert's selection bias falls by γ and an under-loaded one's rises; 0 is off.
        delta_momentum: update rate of the running mean Δ_layer per batch (an exponential moving
            average); 0 keeps the exact mean over every token seen.
    """

    lam: float = 0.0
    protect_top_j: int = 0
    trust_max: float = 0.0
    balance_gamma: float = 0.0
    delta_momentum: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "lam": self.lam >= 0.0,
            "protect_top_j": self.protect_top_j >= 0,
            "trust_max": self.trust_max >= 0.0,
            "balance_gamma": self.balance_gamma >= 0.0,
            "delta_momentum": 0.0 <= self.delta_momentum <= 1.0,
        }
        check_settings("token policy", self, checks)

    @property
    def neutral(self) -> bool:
        """Whether this policy can change no routing decision (no bonus, no trust, no balancing)."""
        return self.lam == 0.0 and self.trust_max == 0.0 and self.balance_gamma == 0.0
