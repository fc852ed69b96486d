"""An int8 ONNX Runtime sentence encoder: the same embeddings as ``SentenceEncoder`` (mean pooling,
L2-normalised), in a few milliseconds per query on one core.

A transformers encoder folder (BERT-like: ``AutoModel`` with ``input_ids`` and ``attention_mask``)
is exported once with ``torch.onnx.export`` (the torch.export-based exporter; dynamic batch and
sequence axes; pooling and normalisation inside the graph) and, when an int8 encoder first loads,
its MatMul weights are quantised to int8 per channel (``onnxruntime.quantization.quantize_dynamic``);
both files are cached under ``$MOE_AGENTS_CACHE_DIR/onnx`` (or the user cache folder) in a folder
named by a fingerprint of the model folder's files (names, sizes, modification times), the export
settings and the library versions, so the export (tens of seconds) runs again exactly when one of
those changes. The tokenizer
transformers builds for the folder is saved beside them, so encoding needs only ``onnxruntime``,
``tokenizers`` and numpy: neither torch nor transformers is imported once the export is cached.

The int8 embeddings are close to the float ones (cosine ≈ 0.99) but not equal, so the encoder's
``name`` carries ``+onnx-int8``: fitted gates, cached by the encoder's name, are fitted again for it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ..errors import ConfigError
from ..lazy import LOCAL_HINT
from ..logging import get_logger
from ..resources import BUNDLED_ENCODER, cache_folder, resolve_path
from .encoder import Encoder, SentenceEncoder, bundled_encoder, load_transformers_encoder

__all__ = ["EncoderRuntime", "OnnxEncoder", "bundled_onnx_encoder", "local_encoder", "onnx_fingerprint"]

log = get_logger(__name__)

EncoderRuntime = Literal["onnx", "onnx-fp32", "torch"]
"""How a local encoder runs: ``onnx`` (int8 ONNX Runtime, exported once), ``onnx-fp32`` (the float
export: the torch embeddings to 1e-6, so it shares their fitted gates, and one query's embedding
never depends on the others in its batch) or ``torch`` (transformers)."""

_FORMAT = 1
"""Bumped when the exported graph or the cached files change meaning."""
_OPSET = 18
_QUANTIZATION: dict[str, Any] = {
    "per_channel": True,
    "weight_type": "QUInt8",
    "op_types": ["MatMul"],
    "keep_float": "down-projections",  # see _quantize
}
_VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "tokenizers")
_OUTPUT = "sentence_embedding"  # "embedding" collides with a name inside the exported BERT graph

_OPEN: weakref.WeakSet[OnnxEncoder] = weakref.WeakSet()
"""Encoders holding a session, closed at interpreter exit (see ``_close_sessions``)."""


class OnnxEncoder:
    """A transformers encoder folder run with ONNX Runtime (int8 by default), with mean pooling.

    Construction is cheap: the export (when not cached) and the session load on the first
    ``encode``, or on ``load()``.

    Args:
        path: a model folder (``pkg:<package>/<subpath>`` for one inside a Python package).
        batch_size: texts per forward pass (texts are sorted by length first, so a batch pads little).
        max_length: tokens per text (longer texts are truncated).
        threads: ONNX Runtime intra-op threads. 1 (the default) keeps encoding on the worker
            thread that runs it, so it does not compete with the event loop for the cores.
        quantize: int8 weights (``False``: the float export, whose embeddings equal the torch
            encoder's, so it keeps that encoder's ``name``).
        cache_dir: where exports are cached (default: ``cache_folder("onnx")``).

    Raises:
        ConfigError: ``onnxruntime`` or ``tokenizers`` is not installed.
    """

    def __init__(
        self,
        path: str | Path = BUNDLED_ENCODER,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        threads: int = 1,
        quantize: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        missing = [m for m in ("onnxruntime", "tokenizers") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"the onnx encoder runtime needs {missing}: {LOCAL_HINT}, or set "
                "`router.encoder_runtime: torch`"
            )
        if batch_size < 1 or max_length < 1 or threads < 1:
            raise ConfigError(
                f"OnnxEncoder: batch_size, max_length and threads must be >= 1 "
                f"(got {batch_size}, {max_length}, {threads})"
            )
        self.path = str(path)
        base = Path(self.path).name if not self.path.startswith("pkg:") else self.path
        self.name = f"{base}+onnx-int8" if quantize else base
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self.quantize = quantize
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_folder("onnx")
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._dimension = 0
        self.model_file: Path | None = None
        """The ``.onnx`` file in use (set on load)."""

    def __repr__(self) -> str:
        return f"OnnxEncoder(path={self.path!r}, quantize={self.quantize}, threads={self.threads})"

    def load(self) -> None:
        """Exports the model (unless cached) and opens the ONNX Runtime session."""
        with self._lock:
            if self._session is not None:
                return
            folder = resolve_path(self.path)
            cached = export_onnx(folder, self.cache_dir)
            self.model_file = _quantized(cached) if self.quantize else cached / "model.onnx"
            meta = json.loads((cached / "encoder.json").read_text())
            self._tokenizer = _tokenizer(cached / "tokenizer.json", meta["pad_id"], self.max_length)
            self._session = _session(self.model_file, self.threads)
            self._dimension = int(meta["dimension"])
            _OPEN.add(self)

    def close(self) -> None:
        """Releases the ONNX Runtime session (the next ``encode`` opens it again)."""
        with self._lock:
            self._session = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings of ``texts``, ``(n, d)`` float32 (``(0, d)`` for none)."""
        self.load()
        n = len(texts)
        if n == 0:
            return np.zeros((0, self._dimension), dtype=np.float32)
        if n == 1:  # the routing hot path: no sorting, no batch machinery
            return self._forward([self._tokenizer.encode(texts[0])])
        order = sorted(range(n), key=lambda i: len(texts[i]))  # similar lengths pad little
        out = np.empty((n, self._dimension), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._forward(self._tokenizer.encode_batch([texts[i] for i in chunk]))
        return out

    def _forward(self, encodings: Sequence[Any]) -> np.ndarray:
        ids = np.array([e.ids for e in encodings], dtype=np.int64)  # (B, T)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)  # (B, T)
        (vectors,) = self._session.run([_OUTPUT], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)  # (B, D)

    @property
    def dimension(self) -> int:
        self.load()
        return self._dimension


@atexit.register
def _close_sessions() -> None:
    """Sessions still open at exit (the shared bundled encoder, gates' encoders) are released while
    the interpreter is whole: left to module teardown, ONNX Runtime's sessions can outlive its
    environment and crash the exiting process (a segmentation fault after a clean run)."""
    for encoder in list(_OPEN):
        encoder.close()


def bundled_onnx_encoder(*, quantize: bool = True) -> OnnxEncoder:
    """The shared ONNX all-MiniLM-L6-v2, int8 or float (exported, or read from the cache, on the
    first ``encode``)."""
    return _bundled_onnx(quantize)


@functools.cache
def _bundled_onnx(quantize: bool) -> OnnxEncoder:
    return OnnxEncoder(BUNDLED_ENCODER, quantize=quantize)


def local_encoder(path: str | Path = BUNDLED_ENCODER, *, runtime: EncoderRuntime = "torch") -> Encoder:
    """The encoder for a local model folder on ``runtime``; the bundled model's encoders are shared.

    Raises:
        ConfigError: an unknown runtime, or an ONNX one without onnxruntime installed.
    """
    runtimes = get_args(EncoderRuntime)
    if runtime not in runtimes:
        raise ConfigError(f"unknown encoder runtime {runtime!r} (known: {', '.join(runtimes)})")
    bundled = str(path) == BUNDLED_ENCODER
    if runtime == "torch":
        return bundled_encoder() if bundled else SentenceEncoder(path)
    quantize = runtime == "onnx"
    return bundled_onnx_encoder(quantize=quantize) if bundled else OnnxEncoder(path, quantize=quantize)


def onnx_fingerprint(folder: Path) -> str:
    """A hex digest of what the cached export depends on: the folder's files (relative names,
    sizes, modification times), the export and quantisation settings and the library versions."""
    h = hashlib.sha256()
    settings = {"format": _FORMAT, "opset": _OPSET, "quantization": _QUANTIZATION, "output": _OUTPUT}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in _VERSIONED:
        try:
            h.update(f"{name}={importlib.metadata.version(name)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name}=-\n".encode())
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"cannot export encoder: {folder} holds no files")
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def export_onnx(folder: Path, cache_dir: Path) -> Path:
    """The cache folder holding ``model.onnx``, ``tokenizer.json`` and ``encoder.json`` for the
    model ``folder``, exported now unless already cached (``model.int8.onnx`` joins it when an int8
    encoder first loads).

    The export is written to a temporary folder and renamed into place, so a crash leaves no
    half-written cache and two processes exporting at once both end with one complete folder.

    Raises:
        ConfigError: the folder cannot be loaded or exported.
    """
    target = cache_dir / onnx_fingerprint(folder)[:24]
    if (target / "encoder.json").exists():
        log.debug("encoder.onnx_cached", path=str(target))
        return target
    start = time.perf_counter()
    log.info("encoder.onnx_exporting", source=str(folder), path=str(target))  # tens of seconds, once
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
    try:
        meta = _export(folder, work)
        (work / "encoder.json").write_text(json.dumps({**meta, "source": str(folder)}, indent=2))
        try:
            os.replace(work, target)
        except OSError:  # another process finished first
            if not (target / "encoder.json").exists():
                raise
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot export encoder {folder} to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "encoder.onnx_exported", source=str(folder), path=str(target), s=round(time.perf_counter() - start, 1)
    )
    return target


def _export(folder: Path, out: Path) -> dict[str, Any]:
    """Exports ``folder``'s encoder with pooling and normalisation to ``out/model.onnx``; saves the
    tokenizer transformers builds for it; returns the facts encoding needs."""
    import torch

    model, tokenizer = load_transformers_encoder(folder, attn_implementation="eager")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{folder}: the onnx encoder runtime needs a fast tokenizer (tokenizer.json)")
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(out / "tokenizer.json"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    pooled = _pooled(model).eval()
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            pooled,
            example,
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=[_OUTPUT],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return {"dimension": int(model.config.hidden_size), "pad_id": int(pad_id)}


def _quantized(cached: Path) -> Path:
    """``model.int8.onnx`` in the cache folder ``cached``, quantised from ``model.onnx`` now unless
    it is there; written under a temporary name and renamed, so readers never see half a file.

    Raises:
        ConfigError: the quantisation failed.
    """
    target = cached / "model.int8.onnx"
    if target.exists():
        return target
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=cached))
    try:
        _quantize(cached / "model.onnx", work / target.name)
        os.replace(work / target.name, target)
    except Exception as exc:
        raise ConfigError(f"cannot quantise {cached / 'model.onnx'}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights, per output channel (after ONNX Runtime's
    pre-processing: shape inference and graph optimisation).

    Down-projections (a weight with more rows than columns: the feed-forward output, 1536 → 384
    in MiniLM) stay float: their input, after GELU, carries the outlier activations that one
    per-tensor uint8 scale cannot hold, and quantising them cost the most accuracy on very short
    texts ("ok": cosine 0.964 to the float embedding with them, 0.979 without).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".prepared.onnx")
    with _quiet_export():
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        shapes = {w.name: tuple(w.dims) for w in graph.initializer}
        down = [
            n.name
            for n in graph.node
            if n.op_type == "MatMul" and len(shape := shapes.get(n.input[1], ())) == 2 and shape[0] > shape[1]
        ]
        quantize_dynamic(
            prepared,
            target,
            per_channel=bool(_QUANTIZATION["per_channel"]),
            weight_type=getattr(QuantType, str(_QUANTIZATION["weight_type"])),
            op_types_to_quantize=list(_QUANTIZATION["op_types"]),
            nodes_to_exclude=down,
        )
    prepared.unlink()


def _pooled_class() -> type:
    import torch

    class Pooled(torch.nn.Module):
        """The encoder's token states, mean-pooled over the mask and L2-normalised."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            hidden = out.last_hidden_state  # (B, T, D)
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return Pooled


def _pooled(model: Any) -> Any:
    return _pooled_class()(model)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter's and quantiser's warnings and log lines are theirs to fix, not the caller's
    to read: they are dropped while the export runs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _tokenizer(path: Path, pad_id: int, max_length: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
    return tok


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the library prints nothing unasked
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
