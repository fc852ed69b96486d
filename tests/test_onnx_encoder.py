"""The int8 ONNX Runtime encoder: exported once and cached, close to the torch encoder, and chosen by
``router.encoder_runtime``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from moe_agents import ConfigError, load_pipeline
from moe_agents.resources import BUNDLED_ENCODER, resolve_path
from moe_agents.routing import (
    OnnxEncoder,
    Router,
    RouterConfig,
    SentenceEncoder,
    bundled_encoder,
    bundled_onnx_encoder,
    local_encoder,
)
from moe_agents.routing.onnx_encoder import onnx_fingerprint

TEXTS = [
    "hi there, how are you doing today?",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "If 3 apples cost $1.20, how much do 10 apples cost?",
    "Which philosopher wrote the Critique of Pure Reason, and what did he argue about space and time?",
    "ok",
    "def fib(n):\n    '''Return the n-th Fibonacci number.'''\n" * 6,
]

# Exporting the real encoder takes 30-120 s on 2 busy cores: done once per session, and
# benchmarks/encoder_speed.py covers it.
slow = pytest.mark.slow


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the bundled encoder's export (made once per session)."""
    cache = tmp_path_factory.mktemp("onnx")
    OnnxEncoder(cache_dir=cache).load()
    return cache


@pytest.fixture(scope="session")
def int8(onnx_cache: Path) -> OnnxEncoder:
    enc = OnnxEncoder(cache_dir=onnx_cache)
    enc.load()
    return enc


def yaml(tmp_path: Path, router: str) -> Path:
    """A pipeline file whose ``router:`` section holds the lines of ``router``."""
    lines = "".join(f"  {line}\n" for line in router.splitlines())
    path = tmp_path / "p.yaml"
    path.write_text(
        "router:\n" + lines + "backends:\n"
        "  main: {kind: litellm, model: openai/gpt-4o-mini, api_key: sk-test}\n"
        "experts:\n"
        "  - {name: coding, kind: coding, backends: [main]}\n"
        "  - {name: reasoning, kind: reasoning, backends: [main]}\n",
        encoding="utf-8",
    )
    return path


@slow
class TestOnnxEncoder:
    def test_int8_embeddings_are_close_to_torch(self, int8: OnnxEncoder, minilm: SentenceEncoder) -> None:
        """int8 embeddings have mean cosine >= 0.99 to the torch encoder's, and no text below 0.97
        (the shortest texts, "ok", lose the most to the one activation scale per tensor)."""
        cos = (int8.encode(TEXTS) * minilm.encode(TEXTS)).sum(axis=1)
        assert cos.mean() >= 0.99, cos
        assert cos.min() >= 0.97, cos

    def test_float_export_equals_torch_and_keeps_its_name(
        self, onnx_cache: Path, minilm: SentenceEncoder
    ) -> None:
        """The float export reproduces the torch embeddings, padded batch included, so it shares
        the torch encoder's name (and its cached gates)."""
        fp32 = OnnxEncoder(cache_dir=onnx_cache, quantize=False)
        np.testing.assert_allclose(fp32.encode(TEXTS), minilm.encode(TEXTS), atol=1e-4)
        assert fp32.name == minilm.name

    def test_shapes_dtype_order_and_normalisation(self, int8: OnnxEncoder) -> None:
        """(n, 384) float32, unit length, in the input order (texts are sorted by length inside)."""
        out = int8.encode(TEXTS)
        assert out.shape == (len(TEXTS), 384)
        assert out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        singles = np.concatenate([int8.encode([t]) for t in TEXTS])
        # in the input order: two different texts have cosine far below this; not equal, since
        # int8 activations share one scale per batch
        assert (singles * out).sum(axis=1).min() > 0.95

    def test_empty_input_gives_zero_rows(self, int8: OnnxEncoder) -> None:
        """No texts: a (0, d) float32 array."""
        out = int8.encode([])
        assert out.shape == (0, 384)
        assert out.dtype == np.float32

    def test_second_encoder_reuses_the_cached_export(self, onnx_cache: Path, int8: OnnxEncoder) -> None:
        """A new encoder over the same folder loads the cached files: nothing is exported again."""
        assert int8.model_file is not None
        before = int8.model_file.stat().st_mtime_ns
        with capture_logs() as logs:
            again = OnnxEncoder(cache_dir=onnx_cache)
            again.load()
        events = [e["event"] for e in logs]
        assert "encoder.onnx_cached" in events
        assert "encoder.onnx_exported" not in events
        assert again.model_file == int8.model_file
        assert int8.model_file.stat().st_mtime_ns == before
        assert [p.name for p in onnx_cache.iterdir()] == [int8.model_file.parent.name]

    def test_open_sessions_are_closed_at_exit_and_reopen_on_use(self, onnx_cache: Path) -> None:
        """The exit hook releases every open session while the interpreter is whole (left to
        module teardown, ONNX Runtime can crash the exiting process); a closed encoder reopens."""
        from moe_agents.routing.onnx_encoder import _OPEN, _close_sessions

        encoder = OnnxEncoder(cache_dir=onnx_cache)
        before = encoder.encode(["close me"])
        assert encoder in _OPEN and encoder._session is not None
        _close_sessions()
        assert encoder._session is None
        np.testing.assert_array_equal(encoder.encode(["close me"]), before)

    def test_int8_weights_are_made_only_for_an_int8_encoder(self, int8: OnnxEncoder, tmp_path: Path) -> None:
        """The float encoder needs the export alone; the first int8 encoder quantises it into the
        same cache folder, leaving no temporary files, and gives the cached encoder's embeddings."""
        assert int8.model_file is not None
        folder = tmp_path / int8.model_file.parent.name
        shutil.copytree(int8.model_file.parent, folder, ignore=shutil.ignore_patterns("model.int8.onnx"))
        OnnxEncoder(cache_dir=tmp_path, quantize=False).load()
        assert not (folder / "model.int8.onnx").exists()
        again = OnnxEncoder(cache_dir=tmp_path)
        np.testing.assert_allclose(again.encode(TEXTS), int8.encode(TEXTS), atol=1e-6)
        files = sorted(p.name for p in int8.model_file.parent.iterdir())
        assert sorted(p.name for p in folder.iterdir()) == files

    def test_int8_name_has_its_own_gate_cache_key(self, int8: OnnxEncoder) -> None:
        """int8 embeddings differ from torch's, so the name (the gate cache key) differs."""
        assert int8.name == f"{bundled_encoder().name}+onnx-int8"


class TestFingerprint:
    def test_folder_contents_decide_the_fingerprint(self, tmp_path: Path) -> None:
        """The same files give the same fingerprint; another folder, or a changed file, another."""
        source = resolve_path(BUNDLED_ENCODER)
        a, b = tmp_path / "a", tmp_path / "b"
        for folder in (a, b):
            folder.mkdir()
            for name in ("config.json", "tokenizer.json", "vocab.txt"):
                shutil.copy2(source / name, folder / name)
        assert onnx_fingerprint(a) == onnx_fingerprint(a)
        assert onnx_fingerprint(a) != onnx_fingerprint(source)
        before = onnx_fingerprint(b)
        (b / "config.json").write_text((b / "config.json").read_text().replace("384", "385"))
        assert onnx_fingerprint(b) != before

    def test_empty_folder_is_a_config_error(self, tmp_path: Path) -> None:
        """A folder with no files cannot be exported."""
        with pytest.raises(ConfigError, match="holds no files"):
            onnx_fingerprint(tmp_path)


class TestRuntimeChoice:
    @pytest.mark.parametrize(
        ("runtime", "cls", "quantized"),
        [("onnx", OnnxEncoder, True), ("onnx-fp32", OnnxEncoder, False), ("torch", SentenceEncoder, None)],
        ids=["onnx", "onnx-fp32", "torch"],
    )
    def test_yaml_picks_the_encoder_class(
        self, tmp_path: Path, runtime: str, cls: type, quantized: bool | None
    ) -> None:
        """``router.encoder_runtime`` decides how the bundled encoder runs (nothing loads yet); the
        float export keeps the torch encoder's name, so their fitted gates are shared."""
        pipeline = load_pipeline(yaml(tmp_path, f"encoder_runtime: {runtime}"))
        assert pipeline.router.config.encoder_runtime == runtime
        enc = pipeline.router.encoder
        assert type(enc) is cls
        if quantized is not None:
            assert isinstance(enc, OnnxEncoder) and enc.quantize is quantized
            assert (enc.name == bundled_encoder().name) is not quantized

    def test_yaml_runtime_applies_to_a_model_folder(self, tmp_path: Path) -> None:
        """A model folder given as ``router.encoder`` runs on the chosen runtime too."""
        folder = resolve_path(BUNDLED_ENCODER)
        pipeline = load_pipeline(yaml(tmp_path, f"encoder: {folder}\nencoder_runtime: onnx"))
        enc = pipeline.router.encoder
        assert isinstance(enc, OnnxEncoder)
        assert enc.path == str(folder)
        assert enc.name == "model+onnx-int8"

    def test_unknown_runtime_is_a_located_error(self, tmp_path: Path) -> None:
        """An unknown value names the file, the line and ``router.encoder_runtime``."""
        path = yaml(tmp_path, "top_k: 1\nencoder_runtime: tensorflow")
        with pytest.raises(ConfigError) as info:
            load_pipeline(path)
        assert info.value.key == "router.encoder_runtime"
        assert info.value.line == 3
        assert "onnx" in str(info.value) and "torch" in str(info.value)

    def test_unknown_runtime_in_code_is_a_config_error(self) -> None:
        """RouterConfig checks the runtime when built in code."""
        with pytest.raises(ConfigError, match="encoder_runtime"):
            RouterConfig(encoder_runtime="tensorflow")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("runtime", "shared"),
        [
            ("onnx", bundled_onnx_encoder),
            ("onnx-fp32", lambda: bundled_onnx_encoder(quantize=False)),
            ("torch", bundled_encoder),
        ],
        ids=["onnx", "onnx-fp32", "torch"],
    )
    def test_router_without_encoder_uses_the_shared_bundled_one(self, runtime: str, shared: object) -> None:
        """A Router given no encoder uses the process-wide bundled encoder of its runtime."""
        router = Router(RouterConfig(encoder_runtime=runtime))  # type: ignore[arg-type]
        assert router.encoder is shared()  # type: ignore[operator]
        assert local_encoder(runtime=runtime) is shared()  # type: ignore[arg-type, operator]

    def test_missing_onnxruntime_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without onnxruntime the onnx runtime is refused with the fix; torch still works."""
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec: not installed
        with pytest.raises(ConfigError, match=r"onnxruntime.*encoder_runtime: torch"):
            OnnxEncoder()
        assert isinstance(local_encoder("some/folder", runtime="torch"), SentenceEncoder)
