"""Real expert offload: expert weights live in memory-mapped safetensors files, C slots stay resident.

``offload_experts(model, folder, capacity_per_layer)`` writes every MoE layer's fused expert tensors
(``gate_up_proj (E, 2I, H)``, ``down_proj (E, H, I)``, biases: every parameter of the experts module
whose first dimension is E) to ``folder/layer{i:03d}.safetensors``, one key per expert, then puts in
place of each experts module a view of it (a subclass of the model's own experts class, sharing its
config, hooks and submodules) whose parameters are fixed ``(C, ...)`` slot buffers. The original
parameters are emptied, so the model's memory really drops; ``restore()`` reads them back from the
files into the same ``nn.Parameter`` objects, bit for bit.

On each call the view makes the experts the router picked resident (a miss copies the expert from
the file into a free or least-recently-used slot), maps expert ids to slot ids, and calls the model's
own experts forward with ``num_experts = C``. That forward still dispatches through the transformers
experts interface (``config._experts_implementation``: eager, ``batched_mm``, ``grouped_mm``), so the
offload composes with whichever kernel the model uses instead of replacing it. When one call needs
more distinct experts than there are slots (a long prefill), the experts are served in waves of at
most C, entries outside the wave get the sentinel id C with weight 0 (the interface's
expert-parallel convention, hence ``_is_expert_parallel = True`` on the view), and the waves' outputs
are summed.

Exactness. Each expert sees the same tokens and weights as in the resident model; what changes is
the layout the kernel is handed (slot ids instead of expert ids, and waves whose partial sums are
added). With the ``eager`` experts implementation (a loop over experts, ``index_add_`` per token)
the outputs are bit-identical to the resident model's, at every capacity. With the fused kernels
(``grouped_mm``, transformers' default for most MoE models, and ``batched_mm``) the grouped matrix
products run over another grouping of the same rows, and on the CPU they may block their sums
differently, so outputs agree to float32 rounding, not bit for bit; the tests hold logits to
``rtol=atol=1e-4`` and greedy tokens to equality. Use
``model.set_experts_implementation("eager")`` where bit-identity matters more than speed.
``restore()`` is always bit-exact.

Counting: a lookup is one (token, selected expert) pair; the first lookup of a non-resident expert in
a call is the miss that loads it, every other lookup is a hit, so ``hits + misses`` is the number of
pairs and ``bytes_copied == misses × expert_bytes``. Residency is per call, not per token, so in a
prefill the counts differ from the counting ``ExpertCache`` (which serves tokens one by one); in
decode (one token per call) they are the same LRU.

The handle has the residency side of the ``ExpertCache`` interface (``num_layers``, ``num_experts``,
``resident_mask``, ``access``), so ``patch(model, policy, cache=handle)`` biases routing towards the
experts that are really resident. Inference only: the slot buffers take no gradient.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError

__all__ = ["OffloadHandle", "OffloadStats", "OffloadedExperts", "offload_experts", "parameter_bytes"]


@dataclass(frozen=True, slots=True)
class OffloadStats:
    """Counters of one offloaded MoE layer since it was offloaded.

    Attributes:
        hits: (token, expert) lookups served by a resident slot.
        misses: lookups that had to copy the expert into a slot (one per load).
        bytes_copied: bytes copied from the files into the slots.
        copy_seconds: wall time spent copying (``perf_counter``; CUDA is synchronised first).
    """

    hits: int = 0
    misses: int = 0
    bytes_copied: int = 0
    copy_seconds: float = 0.0

    @property
    def lookups(self) -> int:
        """``hits + misses``."""
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Hits per lookup (0.0 before any lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    def __add__(self, other: OffloadStats) -> OffloadStats:
        return OffloadStats(
            hits=self.hits + other.hits,
            misses=self.misses + other.misses,
            bytes_copied=self.bytes_copied + other.bytes_copied,
            copy_seconds=self.copy_seconds + other.copy_seconds,
        )


class _Slots:
    """One layer's residency: C slots, an LRU order, the open file and the counters."""

    def __init__(self, path: Path, names: list[str], num_experts: int, capacity: int) -> None:
        self.path = path
        self.names = names
        self.num_experts = num_experts
        self.capacity = capacity
        self.file: Any = safe_open(str(path), framework="pt")  # memory-mapped; one read per expert tensor
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # expert → slot, least recently used first
        self.free = list(range(capacity))
        self.resident = torch.zeros(num_experts, dtype=torch.bool)  # (E,), kept in step with slot_of
        self.stats = OffloadStats()

    def load(self, expert: int, pinned: set[int], buffers: list[torch.Tensor]) -> tuple[int, int]:
        """Copies ``expert`` into a free slot or the LRU slot not in ``pinned``; returns (slot, bytes)."""
        if self.free:
            slot = self.free.pop(0)
        else:
            victim = next(e for e in self.slot_of if e not in pinned)
            slot = self.slot_of.pop(victim)
            self.resident[victim] = False
        copied = 0
        for name, buffer in zip(self.names, buffers, strict=True):
            source = self.file.get_tensor(f"{name}.{expert}")
            buffer[slot].copy_(source)
            copied += source.numel() * source.element_size()
        self.slot_of[expert] = slot
        self.resident[expert] = True
        return slot, copied


class OffloadedExperts(nn.Module):
    """Placed before the model's experts class; ``_offloaded_class`` builds the subclass.

    Its parameters (same names as the original's) hold ``C`` slots; ``num_experts`` is ``C`` so the
    model's own forward and the experts interface see a module with C experts.
    """

    offload_slots: _Slots
    num_experts: int

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """The experts contract: ``(T, H)`` hidden, ``(T, k)`` expert ids and weights → ``(T, H)``."""
        slots = self.offload_slots
        capacity = slots.capacity
        flat = top_k_index.reshape(-1)  # (T·k,)
        order = list(dict.fromkeys(flat.tolist()))  # distinct experts, in order of first lookup
        if len(order) > capacity:  # waves: the resident experts (at most C) go in the first one
            order = [e for e in order if e in slots.slot_of] + [e for e in order if e not in slots.slot_of]
        buffers = [getattr(self, name) for name in slots.names]
        lookups = flat.numel()
        out: torch.Tensor | None = None
        misses = copied = 0
        seconds = 0.0
        for start in range(0, len(order), capacity):
            wave = order[start : start + capacity]
            pinned = set(wave)
            with torch.no_grad():
                begin = time.perf_counter()
                loaded = 0
                for expert in wave:
                    if expert in slots.slot_of:
                        slots.slot_of.move_to_end(expert)
                        continue
                    _, nbytes = slots.load(expert, pinned, buffers)
                    loaded += 1
                    copied += nbytes
                if loaded:
                    if buffers[0].is_cuda:
                        torch.cuda.synchronize(buffers[0].device)
                    seconds += time.perf_counter() - begin
                    misses += loaded
                table = torch.full((slots.num_experts,), capacity, dtype=top_k_index.dtype)
                table[wave] = torch.tensor([slots.slot_of[e] for e in wave], dtype=top_k_index.dtype)
                slot_index = table.to(top_k_index.device)[top_k_index]  # (T, k), C = not in this wave
            weights = top_k_weights
            if len(order) > capacity:
                weights = top_k_weights.masked_fill(slot_index == capacity, 0.0)
            part = super().forward(hidden_states, slot_index, weights)
            out = part if out is None else out + part
        s = slots.stats
        slots.stats = OffloadStats(
            hits=s.hits + lookups - misses,
            misses=s.misses + misses,
            bytes_copied=s.bytes_copied + copied,
            copy_seconds=s.copy_seconds + seconds,
        )
        if out is None:  # no tokens
            return torch.zeros_like(hidden_states)
        return out


_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _offloaded_class(experts_class: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``experts_class`` that serves experts from slots (one per class)."""
    if experts_class not in _CLASSES:
        name = f"Offloaded{experts_class.__name__}"
        _CLASSES[experts_class] = type(name, (OffloadedExperts, experts_class), {"__module__": __name__})
    return _CLASSES[experts_class]


@dataclass(frozen=True, slots=True)
class _Layer:
    name: str
    original: nn.Module
    view: nn.Module
    slots: _Slots
    params: dict[str, nn.Parameter]
    expert_bytes: int


class OffloadHandle:
    """The offloaded MoE layers of one model; ``restore()`` (or leaving a ``with`` block) undoes it.

    Attributes:
        names: module path of each offloaded experts module, in MoE-layer order (the same order as
            ``patch`` numbers routers).
        folder: where the safetensors files are.
        capacity: resident expert slots per layer (C).
        num_experts: experts per layer (E).
        expert_bytes: bytes of one expert's weights, per layer.
    """

    def __init__(self, model: nn.Module, folder: Path, layers: list[_Layer], num_experts: int) -> None:
        self._model = model
        self._layers = layers
        self.folder = folder
        self.names = [layer.name for layer in layers]
        self.capacity = layers[0].slots.capacity
        self.num_experts = num_experts
        self.expert_bytes = [layer.expert_bytes for layer in layers]
        self.active = True

    @property
    def num_layers(self) -> int:
        """MoE layers offloaded."""
        return len(self._layers)

    def resident_mask(self, layer: int) -> torch.Tensor:
        """``(E,)`` bool: the experts whose weights are in a slot of ``layer`` now (a live view)."""
        return self._layers[layer].slots.resident

    def access(self, layer: int, experts_needed: torch.Tensor) -> None:
        """The ``ExpertCache`` hook ``patch`` calls with the final choice; nothing to do here, since
        loading and counting happen when the experts run (``stats``)."""

    def stats(self, layer: int | None = None) -> OffloadStats:
        """Counters of one layer, or summed over all layers."""
        if layer is not None:
            return self._layers[layer].slots.stats
        total = OffloadStats()
        for entry in self._layers:
            total = total + entry.slots.stats
        return total

    def restore(self) -> None:
        """Reads the expert weights back from the files and puts the original modules back (idempotent)."""
        if not self.active:
            return
        for entry in self._layers:
            slots = entry.slots
            for name, param in entry.params.items():
                experts = [slots.file.get_tensor(f"{name}.{e}") for e in range(slots.num_experts)]
                param.data = torch.stack(experts).to(device=param.device)
            entry.original.training = entry.view.training
            parent_name, _, attr = entry.name.rpartition(".")
            setattr(self._model.get_submodule(parent_name), attr, entry.original)
            slots.file = None
        self.active = False

    def __enter__(self) -> OffloadHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s parameters (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for param in module.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * param.element_size()
    return total


def _experts_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every fused experts module (``@use_experts_implementation`` classes)."""
    found = []
    for name, module in model.named_modules():
        num = getattr(module, "num_experts", None)
        if not isinstance(num, int) or not hasattr(module, "_is_expert_parallel"):
            continue
        if any(p.dim() >= 2 and p.shape[0] == num for p in module.parameters(recurse=False)):
            found.append((name, module))
    return found


def _top_k(model: nn.Module, name: str) -> int:
    """The top-k of the router next to the experts module ``name`` (or of the config)."""
    parent_name, _, _ = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    for child in parent.children():
        k = getattr(child, "top_k", None)
        if isinstance(k, int):
            return k
    k = getattr(getattr(model, "config", None), "num_experts_per_tok", None)
    if isinstance(k, int):
        return k
    raise ConfigError(f"cannot tell the top-k of the MoE layer {parent_name or name}")


def offload_experts(model: nn.Module, folder: str | Path, capacity_per_layer: int) -> OffloadHandle:
    """Moves every MoE layer's expert weights to safetensors files, keeping ``capacity_per_layer`` resident.

    Args:
        model: a transformers 5.x MoE model whose experts are fused 3-D tensors in a
            ``@use_experts_implementation`` module (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, ...).
        folder: directory for the files (created if missing; existing layer files are overwritten).
        capacity_per_layer: resident expert slots per layer (C), at least the router's top-k and at
            most the number of experts.

    Returns:
        The handle: counters, residency for ``patch(..., cache=handle)``, and ``restore()``.

    Raises:
        ConfigError: no fused MoE experts in the model, the model is already offloaded, or the
            capacity does not fit the model.
    """
    found = _experts_modules(model)
    if any(isinstance(m, OffloadedExperts) for _, m in found):
        raise ConfigError("the model's experts are already offloaded; restore them first")
    if not found:
        raise ConfigError(f"no fused MoE experts module in {type(model).__name__}; nothing to offload")
    experts = {m.num_experts for _, m in found if isinstance(m.num_experts, int)}
    if len(experts) != 1:
        raise ConfigError(f"MoE layers have different expert counts {sorted(experts)}; not supported")
    (num_experts,) = experts
    top_k = max(_top_k(model, name) for name, _ in found)
    if not top_k <= capacity_per_layer <= num_experts:
        raise ConfigError(
            f"capacity_per_layer={capacity_per_layer} must be between the top-k ({top_k}) "
            f"and the number of experts ({num_experts})",
            key="capacity_per_layer",
        )
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    layers: list[_Layer] = []
    for index, (name, original) in enumerate(found):
        params = {
            n: p
            for n, p in original.named_parameters(recurse=False)
            if p.dim() >= 2 and p.shape[0] == num_experts
        }
        path = root / f"layer{index:03d}.safetensors"
        with torch.no_grad():
            save_file(
                {
                    f"{n}.{e}": p[e].detach().cpu().clone()
                    for n, p in params.items()
                    for e in range(num_experts)
                },
                str(path),
            )
        expert_bytes = sum(p[0].numel() * p.element_size() for p in params.values())
        slots = _Slots(path, list(params), num_experts, capacity_per_layer)
        cls = _offloaded_class(type(original))
        view = cls.__new__(cls)
        view.__dict__.update(original.__dict__)  # shares config, hooks and submodules (act_fn)
        view.__dict__["_parameters"] = dict(original._parameters)
        for n, p in params.items():
            slot_shape = (capacity_per_layer, *p.shape[1:])
            view._parameters[n] = nn.Parameter(p.new_zeros(slot_shape), requires_grad=False)
            p.data = p.data.new_empty(0)  # frees the full tensor; restore() refills the same Parameter
        view.__dict__["num_experts"] = capacity_per_layer
        view.__dict__["_is_expert_parallel"] = True  # ids ≥ C are sentinels: experts outside the wave
        view.__dict__["offload_slots"] = slots
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, view)
        layers.append(_Layer(name, original, view, slots, params, expert_bytes))
    return OffloadHandle(model, root, layers, num_experts)
