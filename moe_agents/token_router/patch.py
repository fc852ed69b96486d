"""``patch(model, policy)``: put the token router into every MoE layer of a transformers model.

Supported routers are found in the installed transformers: a class counts when it exists and its
``forward`` returns the three-value contract ``(router_logits, weights, indices)``. The patched router
is a new instance of a subclass of the model's router class that shares the original's parameters
and hooks (a view of it, not a copy), so ``state_dict``, device moves, ``output_router_logits`` and
the aux loss see the same tensors; ``unpatch`` puts the original objects back.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from types import TracebackType

import torch
from torch import nn

from ..errors import ConfigError
from .cache import ResidencySource
from .policy import TokenPolicy
from .router import LayerState, TokenRouterMixin, routed_class

__all__ = ["PatchHandle", "patch", "supported_routers"]

# (transformers model module, router class): the Qwen3-Omni entry is the thinker's text router.
_CANDIDATES = (
    ("qwen3_moe", "Qwen3MoeTopKRouter"),
    ("qwen2_moe", "Qwen2MoeTopKRouter"),
    ("olmoe", "OlmoeTopKRouter"),
    ("mixtral", "MixtralTopKRouter"),
    ("qwen3_omni_moe", "Qwen3OmniMoeThinkerTextTopKRouter"),
)
_THREE_VALUES = re.compile(r"return\s+\w+\s*,\s*\w+\s*,\s*\w+\s*$")


@functools.cache
def supported_routers() -> tuple[type[nn.Module], ...]:
    """Router classes of the installed transformers that keep the ``(logits, weights, indices)`` contract."""
    found = []
    for module_name, class_name in _CANDIDATES:
        try:
            module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
            router = getattr(module, class_name)
            source = inspect.getsource(router.forward).rstrip()
        except (ImportError, AttributeError, OSError, TypeError):
            continue
        if _THREE_VALUES.search(source) and all(hasattr(router, a) for a in ("__init__", "forward")):
            found.append(router)
    return tuple(found)


class PatchHandle:
    """The patched routers of one model; ``unpatch()`` (or leaving a ``with`` block) restores them.

    Attributes:
        names: module path of each patched router, in MoE-layer order.
        states: each layer's ``LayerState`` (Δ_layer, trust, balance bias).
        policy: the policy in force.
        cache: the expert cache shared by the layers, or ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        originals: list[nn.Module],
        patched: list[nn.Module],
        policy: TokenPolicy,
        cache: ResidencySource | None,
    ) -> None:
        self._model = model
        self.names = names
        self._originals = originals
        self._patched = patched
        self.policy = policy
        self.cache = cache
        self.states = [p.token_state for p in patched if isinstance(p, TokenRouterMixin)]
        self.active = True

    @property
    def num_layers(self) -> int:
        """MoE layers patched."""
        return len(self.names)

    def set_trust(self, layer: int, trust: torch.Tensor) -> None:
        """Sets a layer's ``(E,)`` trust; the logit bias is ``policy.trust_max · tanh(trust)``."""
        self.states[layer].set_trust(trust)

    def unpatch(self) -> None:
        """Puts the original router modules back (idempotent)."""
        if not self.active:
            return
        for name, original, patched in zip(self.names, self._originals, self._patched, strict=True):
            parent_name, _, attr = name.rpartition(".")
            original.training = patched.training  # the only state not shared with the view
            setattr(self._model.get_submodule(parent_name), attr, original)
        self.active = False

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unpatch()


def patch(
    model: nn.Module, policy: TokenPolicy | None = None, cache: ResidencySource | None = None
) -> PatchHandle:
    """Replaces the router of every MoE layer of ``model`` by the token router.

    Args:
        model: a transformers Qwen3-MoE, Qwen2-MoE, OLMoE or Mixtral model, or a Qwen3-Omni-MoE
            thinker (alone or inside the full model; the talker is left alone).
        policy: the token policy (default: neutral).
        cache: an expert cache with one layer per MoE layer; it supplies residency and is updated
            with the final choice of every batch.

    Raises:
        ConfigError: no supported router in the model, the model is already patched, or the
            policy or cache do not fit the model.
    """
    policy = policy or TokenPolicy()
    supported = supported_routers()
    found = [(n, m) for n, m in model.named_modules() if type(m) in supported]
    if any(isinstance(m, TokenRouterMixin) for _, m in model.named_modules()):
        raise ConfigError("the model is already patched; unpatch it first")
    if not found:
        known = ", ".join(cls.__name__ for cls in supported) or "none in this transformers"
        raise ConfigError(f"no supported MoE router in {type(model).__name__}; supported: {known}")
    top_k = {int(getattr(m, "top_k", 0)) for _, m in found}
    experts = {int(getattr(m, "num_experts", 0)) for _, m in found}
    if policy.protect_top_j > min(top_k):
        raise ConfigError(f"protect_top_j={policy.protect_top_j} exceeds the model's top-k {min(top_k)}")
    if cache is not None and (cache.num_layers != len(found) or {cache.num_experts} != experts):
        raise ConfigError(
            f"cache has {cache.num_layers} layers × {cache.num_experts} experts; "
            f"the model has {len(found)} MoE layers × {sorted(experts)} experts"
        )
    names: list[str] = []
    originals: list[nn.Module] = []
    patched: list[nn.Module] = []
    for layer, (name, original) in enumerate(found):
        routed = routed_class(type(original))  # type: ignore[arg-type]  # classes are hashable
        view = routed.__new__(routed)
        view.__dict__.update(original.__dict__)  # same parameter and hook dicts as the original
        view.__dict__["token_state"] = LayerState(layer=layer, policy=policy, cache=cache)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, view)
        names.append(name)
        originals.append(original)
        patched.append(view)
    return PatchHandle(model, names, originals, patched, policy, cache)
