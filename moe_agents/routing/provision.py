"""How the router gets its gate: checks a given one, loads a cached one, or fits one from the
experts' exemplars (tuning the encoder and cross-validating the settings when configured).

``GateProvision`` is the part of ``Router`` that owns the gate and the encoder queries are embedded
with; the router itself only routes. Fitted gates are cached under a fingerprint of the encoder, the
exemplars and the gate settings, tuned encoders as HF folders beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from ..errors import ConfigError
from ..logging import get_logger
from ..types import Query
from .context import KMeansContexts
from .crossval import choose, out_of_fold, stratified_folds
from .encoder import BatchingEncoder, Encoder, SentenceEncoder
from .gates import FitReport, Gate, fit_gate, gate_fingerprint, load_gate
from .gates.base import SavedGate
from .onnx_encoder import OnnxEncoder, local_encoder
from .settings import RouterConfig, gate_cache_dir
from .tuning import TUNED_MARKER, tuned_embeddings, tuned_encoder_folder

if TYPE_CHECKING:
    from ..experts.base import Expert
    from .trust import TrustStore

__all__ = ["GateProvision"]

log = get_logger(__name__)

_ExemplarKey = tuple[tuple[str, tuple[str, ...]], ...]


class GateProvision:
    """The gate and the query encoder of a ``Router`` (a mixin: ``Router.__init__`` sets the state)."""

    config: RouterConfig
    encoder: Encoder
    embedder: BatchingEncoder
    trust: TrustStore | None
    clusters: KMeansContexts | None
    extra_exemplars: dict[str, tuple[str, ...]]
    report: FitReport | None
    _fixed: bool
    _gate: Gate | None
    _gate_key: _ExemplarKey | None
    _gate_lock: anyio.Lock

    _tuned: Encoder | None = None  # the tuned encoder in use, if any (set by _use_encoder)

    def exemplars(self, experts: Sequence[Expert]) -> dict[str, tuple[str, ...]]:
        """Every expert's exemplars (its own, then the extra ones), for experts that have any."""
        out = {e.name: tuple(e.exemplars) + self.extra_exemplars.get(e.name, ()) for e in experts}
        unknown = sorted(set(self.extra_exemplars) - set(out))
        if unknown:
            raise ConfigError(f"exemplars given for unknown experts {unknown}; experts: {sorted(out)}")
        return {name: texts for name, texts in out.items() if texts}

    def _exemplar_key(self, experts: Sequence[Expert]) -> _ExemplarKey:
        """What the gate was fitted from: the experts' exemplars and the router's extra ones."""
        own = tuple((e.name, tuple(e.exemplars)) for e in experts)
        return own + tuple(sorted(self.extra_exemplars.items()))

    @property
    def active_encoder(self) -> Encoder:
        """The encoder queries are embedded with: the tuned one when the gate was fitted on it,
        else ``encoder``."""
        return self._tuned if self._tuned is not None else self.encoder

    def tuned_encoder_dir(self) -> Path | None:
        """Where tuned encoders are cached (``encoders/`` in the gate cache; ``None`` without one)."""
        folder = gate_cache_dir(self.config)
        return None if folder is None else folder / "encoders"

    def open_encoder(self, folder: Path) -> Encoder:
        """The encoder for a tuned HF model folder (the one place that decides how it is run)."""
        return local_encoder(folder, runtime=self.config.encoder_runtime)

    def _use_encoder(self, tuned: Encoder | None) -> None:
        """Embeds queries with ``tuned`` from now on (``None``: with ``encoder``)."""
        if tuned is self._tuned:
            return
        self._tuned = tuned
        self.embedder = self._new_embedder()

    def _new_embedder(self) -> BatchingEncoder:
        """The micro-batching, caching embedder over ``active_encoder``."""
        return BatchingEncoder(
            self.active_encoder,
            max_batch=self.config.max_batch,
            window_s=self.config.batch_window_s,
            cache_size=self.config.cache_size,
        )

    def _encoder_of(self, gate: Gate, *, near: Path | None = None) -> Encoder | None:
        """The tuned encoder ``gate`` was fitted on (``None``: it was fitted on ``encoder``), found
        in ``near`` (the gate's folder) or the tuned-encoder cache.

        Raises:
            ConfigError: the gate names another encoder, or its tuned folder is nowhere to be found.
        """
        name = gate.encoder
        if name is None or name == self.encoder.name:
            return None
        places = [p for p in (near, self.tuned_encoder_dir()) if p is not None]
        for place in places:
            folder = place / name
            if (folder / TUNED_MARKER).is_file():
                return self.open_encoder(folder)
        if "-tuned-" in name:
            raise ConfigError(
                f"the gate was fitted on the tuned encoder {name!r}, which is not in "
                f"{[str(p) for p in places]}; refit it with `moe-agents fit`"
            )
        raise ConfigError(f"the gate was fitted on {name!r} embeddings, not {self.encoder.name!r}")

    async def prepare(self, experts: Sequence[Expert]) -> None:
        """Makes the gate ready for ``experts``: checks a given gate, or loads or fits one."""
        key = self._exemplar_key(experts)
        if key == self._gate_key:
            return
        async with self._gate_lock:
            if key == self._gate_key:
                return
            exemplars = self.exemplars(experts)
            if self._fixed:
                assert self._gate is not None
                _check_experts(self._gate.experts, exemplars)
                near = getattr(self._gate, "path", None)
                self._use_encoder(
                    self._encoder_of(self._gate, near=None if near is None else Path(near).parent)
                )
            elif len(exemplars) >= 2:
                self._gate = await self._load_or_fit(experts, exemplars, progress=None, force=False)
            else:
                self._gate = None  # nothing to learn from: the gate is uniform
                self._use_encoder(None)
            if self.trust is not None and self.config.context.kind == "cluster" and self.clusters is None:
                texts = [t for ts in exemplars.values() for t in ts]
                if texts:
                    vectors = await self.embedder.embed_many(texts)
                    self.clusters = KMeansContexts.fit(vectors, self.config.context)
            self._gate_key = key

    async def fit(
        self, experts: Sequence[Expert], *, progress: Callable[[int, int], None] | None = None
    ) -> FitReport:
        """Fits the gate on the experts' exemplars now (ignoring the cache, tuning the encoder
        again when it is tuned) and caches it."""
        exemplars = self.exemplars(experts)
        async with self._gate_lock:
            self._gate = await self._load_or_fit(experts, exemplars, progress=progress, force=True)
            self._fixed = False
            self._gate_key = self._exemplar_key(experts)
        assert self.report is not None
        return self.report

    def _selection_key(self) -> dict[str, Any] | None:
        """What besides the encoder, exemplars and gate settings decides the fitted gate."""
        cfg = self.config
        if not cfg.cross_validates and cfg.tune == "off":
            return None  # today's gate: no tuning, no cross-validation
        return {
            "tune": cfg.tune,
            "tuning": None if cfg.tune == "off" else asdict(cfg.tuning),
            "cv": asdict(cfg.cv) if cfg.cross_validates else None,
            "gate_weight": cfg.gate_weight,
        }

    async def _load_or_fit(
        self,
        experts: Sequence[Expert],
        exemplars: Mapping[str, Sequence[str]],
        *,
        progress: Callable[[int, int], None] | None,
        force: bool,
    ) -> Gate:
        cfg = self.config
        fingerprint = gate_fingerprint(
            self.encoder.name, exemplars, cfg.gate, selection=self._selection_key()
        )
        folder = gate_cache_dir(cfg)
        path = folder / f"{cfg.gate.kind}-{fingerprint[:20]}.safetensors" if folder is not None else None
        if path is not None and path.exists() and not force:
            try:
                gate = await anyio.to_thread.run_sync(lambda: load_gate(path, experts=list(exemplars)))
                tuned = await anyio.to_thread.run_sync(lambda: self._encoder_of(gate))
            except ConfigError as exc:
                log.warning("gate.cache_unusable", path=str(path), error=str(exc))
            else:
                log.info("gate.loaded", path=str(path), kind=gate.config.kind, encoder=gate.encoder)
                self._use_encoder(tuned)
                self.report = gate.report
                return gate
        start = time.perf_counter()
        texts = [t for ts in exemplars.values() for t in ts]
        labels = [name for name, ts in exemplars.items() for _ in ts]
        assessments = None
        if cfg.cross_validates:
            assessments = await _assess(experts, list(exemplars), texts)
        gate, report, tuned = await anyio.to_thread.run_sync(
            lambda: self._fit_blocking(exemplars, texts, labels, assessments, progress, force)
        )
        self.report = report
        log.info(
            "gate.fitted",
            kind=gate.config.kind,  # cross-validation may have chosen another than configured
            experts=list(exemplars),
            exemplars=len(texts),
            val_accuracy=report.val_accuracy,
            encoder=gate.encoder,
            cv=None
            if report.cv is None
            else {k: report.cv[k] for k in ("encoder", "gate_weight", "accuracy")},
            s=round(time.perf_counter() - start, 3),
        )
        self._use_encoder(tuned)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                gate.save(path, encoder=self.active_encoder.name, fingerprint=fingerprint)
            except OSError as exc:
                log.warning("gate.cache_unwritable", path=str(path), error=str(exc))
        else:
            gate.encoder = self.active_encoder.name
        return gate

    def _fit_blocking(
        self,
        exemplars: Mapping[str, Sequence[str]],
        texts: list[str],
        labels: list[str],
        assessments: tuple[np.ndarray, np.ndarray] | None,
        progress: Callable[[int, int], None] | None,
        force: bool,
    ) -> tuple[Gate, FitReport, Encoder | None]:
        """Cross-validates (when configured), tunes the encoder (when chosen) and fits the gate.
        Blocks: runs in a worker thread."""
        cfg, base = self.config, self.encoder
        names = list(exemplars)
        y = np.array([names.index(label) for label in labels])
        # a local HF folder to start from
        source = base.path if isinstance(base, SentenceEncoder | OnnxEncoder) else None
        tunable = source is not None
        if cfg.tune == "on" and not tunable:
            raise ConfigError(f"router.tune: on needs a transformers encoder folder, not {base.name!r}")
        try_tuned = tunable and cfg.tune != "off"
        x_base = base.encode(texts) if cfg.tune != "on" else None
        cv = None
        use_tuned = try_tuned
        n_folds = min(cfg.cv.folds, int(np.bincount(y).min()))
        if assessments is not None and n_folds < 2:
            log.warning("gate.cv_skipped", reason="an expert has fewer than two exemplars")
        if assessments is not None and n_folds >= 2:
            sa, allowed = assessments
            folds = stratified_folds(y, n_folds, cfg.cv.seed)
            oof: dict[tuple[str, str], np.ndarray] = {}
            if x_base is not None:
                for g, p in out_of_fold(
                    x_base, y, names, cfg.gate, folds, kinds=cfg.cv.kinds, ensemble=cfg.cv.ensemble
                ).items():
                    oof[("base", g)] = p
            if try_tuned:
                assert source is not None

                def fold_embeddings(train: np.ndarray) -> np.ndarray:
                    return tuned_embeddings(source, texts, y, train, cfg.tuning, progress=progress)

                for g, p in out_of_fold(
                    fold_embeddings, y, names, cfg.gate, folds, kinds=cfg.cv.kinds, ensemble=cfg.cv.ensemble
                ).items():
                    oof[("tuned", g)] = p
            weights = None if cfg.gate_weight is None else (cfg.gate_weight,)
            kinds = (cfg.gate.kind, *cfg.cv.kinds, *(("ensemble",) if cfg.cv.ensemble else ()))
            cv = replace(
                choose(oof, sa, y, allowed, cfg.cv, gate_weights=weights, selectable=kinds), folds=n_folds
            )
            use_tuned = cv.encoder == "tuned"
        tuned: Encoder | None = None
        if use_tuned:
            assert source is not None
            folder = tuned_encoder_folder(
                source,
                base.name,
                exemplars,
                cfg.tuning,
                self.tuned_encoder_dir(),
                progress=progress,
                force=force,
            )
            tuned = self.open_encoder(folder)
            x = tuned.encode(texts)
        else:
            assert x_base is not None
            x = x_base
        gate_config = cfg.gate if cv is None else replace(cfg.gate, kind=cv.gate)  # type: ignore[arg-type]
        gate, report = fit_gate(x, labels, names, gate_config, progress=progress)
        if cv is not None and isinstance(gate, SavedGate):
            gate.temperature *= cv.temperature_scale
            report = replace(report, temperature=gate.temperature, cv=cv.to_dict())
            gate.report = report
        return gate, report, tuned


async def _assess(
    experts: Sequence[Expert], names: Sequence[str], texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Each expert's ``can_handle`` of each exemplar as a text-only query ``(N, E)``, in ``names``
    order, and whether it accepts it at all."""
    by_name = {e.name: e for e in experts}
    sa = np.zeros((len(texts), len(names)))
    allowed = np.zeros((len(texts), len(names)), dtype=bool)
    for i, text in enumerate(texts):
        query = Query(text)
        for j, name in enumerate(names):
            expert = by_name[name]
            allowed[i, j] = expert.accepts(query)
            if allowed[i, j]:
                sa[i, j] = min(max(float(await expert.can_handle(query)), 0.0), 1.0)
    return sa, allowed


def _check_experts(gate_experts: Sequence[str], exemplars: Mapping[str, Sequence[str]]) -> None:
    missing, extra = sorted(set(exemplars) - set(gate_experts)), sorted(set(gate_experts) - set(exemplars))
    if missing or extra:
        raise ConfigError(
            f"the gate was fitted for other experts: missing {missing}, extra {extra}; refit it "
            "with `moe-agents fit`"
        )
