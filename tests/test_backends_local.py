"""TransformersBackend with a peft LoRA adapter (tiny Qwen2) and with a processor (tiny LLaVA for
images, tiny Qwen2-Audio for audio)."""

from __future__ import annotations

import base64
import io
import struct
import sys
import textwrap
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tiny_models import bundled_tokenizer, decoder_sizes

from moe_agents.backends import GenerationSettings, TransformersBackend
from moe_agents.backends.specs import TransformersSpec
from moe_agents.errors import BackendError, ConfigError
from moe_agents.experts import EpistemicExpert, OmniExpert
from moe_agents.types import Attachment, Query

pytestmark = [
    # peft's PeftModel.from_pretrained calls a transformers method deprecated in 5.x
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

HELLO = [{"role": "user", "content": "hello"}]
TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}"
    "{{ p['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
AUDIO_TEMPLATE = TEMPLATE.replace(
    "p['type'] == 'image' %}<image>", "p['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
)
GREEDY = GenerationSettings(max_tokens=8)


@dataclass(frozen=True)
class Adapted:
    """A saved tiny Qwen2, a LoRA adapter for it, and the base model's size in bytes."""

    model: Path
    adapter: Path
    nbytes: int
    adapter_nbytes: int


@pytest.fixture(scope="session")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Adapted:
    """A 2-layer Qwen2 with seeded weights and a rank-2 LoRA on q/v with seeded, non-zero weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = bundled_tokenizer()
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(**decoder_sizes(tokenizer))
    root = tmp_path_factory.mktemp("tiny-qwen2")
    base = Qwen2ForCausalLM(config)
    base.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    nbytes = sum(t.numel() * t.element_size() for t in [*base.parameters(), *base.buffers()])
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(1)
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    with torch.no_grad():  # LoRA's B starts at zero, which would leave the outputs unchanged
        for p in lora:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(root / "adapter")
    adapter_nbytes = sum(p.numel() * p.element_size() for p in lora)
    return Adapted(root / "model", root / "adapter", nbytes, adapter_nbytes)


@pytest.fixture(scope="session")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny LLaVA (1-layer CLIP tower, 2-layer Llama) with a CLIP image processor and the
    bundled WordPiece tokenizer plus an ``<image>`` token."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = bundled_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = TEMPLATE
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        ),
        text_config=LlamaConfig(**decoder_sizes(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    path = tmp_path_factory.mktemp("tiny-llava") / "model"
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qwen2_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen2-Audio (1-layer Whisper-style encoder, 2-layer Qwen2) with a 1-second,
    16-bin Whisper feature extractor and the bundled WordPiece tokenizer plus the audio tokens."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    tokenizer = bundled_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]}
    )
    tokenizer.chat_template = AUDIO_TEMPLATE
    # the bundled tokenizer pads and truncates to 128 tokens; processors pass that length on to the
    # feature extractor, which would then cut the audio to 128 samples
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.init_kwargs.pop("max_length", None)
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=16, sampling_rate=16_000, chunk_length=1),
        tokenizer=tokenizer,
        chat_template=AUDIO_TEMPLATE,
    )
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            num_mel_bins=16,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            d_model=16,
            max_source_positions=50,  # 100 mel frames (1 s) after the stride-2 convolution
        ),
        text_config=Qwen2Config(**decoder_sizes(tokenizer)),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    path = tmp_path_factory.mktemp("tiny-qwen2-audio") / "model"
    Qwen2AudioForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def audio_backend(qwen2_audio: Path) -> TransformersBackend:
    """One backend on the tiny Qwen2-Audio, shared by the module's tests (loaded on first use)."""
    return TransformersBackend(qwen2_audio)


def png(color: str) -> bytes:
    """A 40×30 PNG of one colour."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, "PNG")
    return buffer.getvalue()


def wav(seconds: float = 0.1, rate: int = 8000, *, hz: int = 440, amplitude: int = 8000) -> bytes:
    """A mono 16-bit WAV of a square wave (silence with ``amplitude=0``)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        n = int(seconds * rate)
        f.writeframes(
            b"".join(
                struct.pack("<h", amplitude if (i * 2 * hz // rate) % 2 else -amplitude) for i in range(n)
            )
        )
    return buffer.getvalue()


def with_image(data: bytes, text: str = "what is this") -> list[dict[str, Any]]:
    """One user message: text, then the image as a base64 data URL (the shape OmniExpert builds)."""
    url = f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}"
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def with_audio(data: bytes, text: str = "hi") -> list[dict[str, Any]]:
    """One user message: text, then the audio as an ``input_audio`` part."""
    audio = {"data": base64.b64encode(data).decode("ascii"), "format": "wav"}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "input_audio", "input_audio": audio}],
        }
    ]


async def logits(backend: TransformersBackend) -> Any:
    """The loaded model's next-token logits for a fixed prompt."""
    import torch

    await backend.load()
    assert backend._state is not None
    with torch.inference_mode():
        return backend._state.model(torch.tensor([[101, 7592, 2088, 102]])).logits


class TestAdapter:
    async def test_adapter_changes_outputs(self, adapted: Adapted) -> None:
        """With the adapter the logits and the greedy text differ from the base model's."""
        base = TransformersBackend(adapted.model)
        tuned = TransformersBackend(adapted.model, adapter=adapted.adapter)
        assert float((await logits(base) - await logits(tuned)).abs().max()) > 1e-2
        assert (await base.complete(HELLO, settings=GREEDY)).text != (
            await tuned.complete(HELLO, settings=GREEDY)
        ).text

    async def test_merged_equals_unmerged(self, adapted: Adapted) -> None:
        """Merging the adapter into the weights gives the same logits and greedy text."""
        tuned = TransformersBackend(adapted.model, adapter=adapted.adapter)
        merged = TransformersBackend(adapted.model, adapter=adapted.adapter, merge_adapter=True)
        import torch

        torch.testing.assert_close(await logits(merged), await logits(tuned), atol=1e-5, rtol=1e-5)
        assert (await merged.complete(HELLO, settings=GREEDY)).text == (
            await tuned.complete(HELLO, settings=GREEDY)
        ).text

    async def test_nbytes_includes_the_adapter(self, adapted: Adapted) -> None:
        """nbytes is the base model's plus the LoRA weights; merged, just the base model's."""
        tuned = TransformersBackend(adapted.model, adapter=adapted.adapter)
        merged = TransformersBackend(adapted.model, adapter=adapted.adapter, merge_adapter=True)
        await tuned.load()
        await merged.load()
        assert tuned.nbytes == adapted.nbytes + adapted.adapter_nbytes
        assert merged.nbytes == adapted.nbytes

    async def test_unload_frees_the_adapted_model(self, adapted: Adapted) -> None:
        """After unload the adapted model is garbage (no reference left) and loads again on demand."""
        import weakref

        tuned = TransformersBackend(adapted.model, adapter=adapted.adapter)
        await tuned.load()
        assert tuned._state is not None
        ref = weakref.ref(tuned._state.model)
        await tuned.unload()
        assert (tuned.loaded, ref()) == (False, None)
        assert (
            await tuned.complete(HELLO, settings=GenerationSettings(max_tokens=2))
        ).usage.completion_tokens == 2

    @pytest.mark.parametrize("folder", ["missing", "empty"], ids=["missing", "no-adapter-config"])
    async def test_bad_adapter_folder_is_config_error(
        self, adapted: Adapted, tmp_path: Path, folder: str
    ) -> None:
        """An adapter folder that does not exist or holds no adapter_config.json is a ConfigError."""
        (tmp_path / "empty").mkdir()
        backend = TransformersBackend(adapted.model, adapter=tmp_path / folder)
        with pytest.raises(ConfigError, match="adapter folder") as info:
            await backend.load()
        assert info.value.path == str(tmp_path / folder)
        assert backend.loaded is False

    async def test_missing_peft_is_config_error(
        self, adapted: Adapted, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without peft installed, loading an adapter is a ConfigError with the install hint."""
        monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
        backend = TransformersBackend(adapted.model, adapter=adapted.adapter)
        with pytest.raises(ConfigError, match=r"pip install 'moe-agents\[peft\]'"):
            await backend.load()

    @pytest.mark.parametrize(
        "kwargs", [{"adapter": " "}, {"merge_adapter": True}], ids=["blank-adapter", "merge-without-adapter"]
    )
    def test_rejects_bad_adapter_options(self, kwargs: dict[str, Any]) -> None:
        """A blank adapter path, or merge_adapter without an adapter, is a ConfigError."""
        with pytest.raises(ConfigError):
            TransformersBackend("/models/x", **kwargs)

    def test_yaml_spec_passes_the_adapter(self, adapted: Adapted) -> None:
        """``adapter`` and ``merge_adapter`` in the YAML spec reach the backend."""
        spec = TransformersSpec(model=str(adapted.model), adapter=str(adapted.adapter), merge_adapter=True)
        backend = TransformersBackend(**spec.model_dump(exclude={"kind"}))
        assert (backend.adapter, backend.merge_adapter) == (str(adapted.adapter), True)

    def test_with_adapter_is_a_shared_adapted_copy(self, adapted: Adapted) -> None:
        """``with_adapter`` copies every setting, adds the adapter and its name, loads nothing, and
        gives the same copy for the same adapter and merge flag."""
        base = TransformersBackend(
            adapted.model,
            dtype="float32",
            max_new_tokens=5,
            temperature=0.3,
            max_concurrency=2,
            modalities=[],
        )
        tuned = base.with_adapter(adapted.adapter)
        assert (tuned.model, tuned.adapter, tuned.merge_adapter, tuned.name) == (
            base.model,
            str(adapted.adapter),
            False,
            "transformers:model+adapter",
        )
        assert (tuned.dtype, tuned.max_new_tokens, tuned.temperature, tuned.modalities) == (
            "float32",
            5,
            0.3,
            frozenset(),
        )
        assert tuned._limiter.total_tokens == 2
        assert base.with_adapter(adapted.adapter) is tuned
        assert base.with_adapter(adapted.adapter, merge=True).merge_adapter is True
        assert (base.adapter, base.loaded, tuned.loaded) == (None, False, False)

    @pytest.mark.parametrize(
        ("adapter", "message"),
        [("other", "adapters do not stack"), (" ", "non-empty")],
        ids=["second-adapter", "blank"],
    )
    def test_with_adapter_refuses(self, adapted: Adapted, adapter: str, message: str) -> None:
        """Stacking a second adapter, or a blank adapter path, is a ConfigError."""
        backend = TransformersBackend(adapted.model, adapter=adapted.adapter if adapter == "other" else None)
        with pytest.raises(ConfigError, match=message):
            backend.with_adapter(adapter)

    def test_disk_bytes_include_the_adapter(self, adapted: Adapted) -> None:
        """disk_bytes counts the adapter's weight file as well as the model's."""
        base = TransformersBackend(adapted.model).disk_bytes()
        tuned = TransformersBackend(adapted.model, adapter=adapted.adapter).disk_bytes()
        assert tuned - base == (adapted.adapter / "adapter_model.safetensors").stat().st_size


class TestStanceAdapter:
    async def test_epistemic_expert_answers_through_the_adapter(self, adapted: Adapted) -> None:
        """An epistemic expert with an adapter answers as the adapted model does (not as the base
        model), and its answers say the adapter was applied."""
        query = Query("Is honesty always right?")
        plain = EpistemicExpert(backends=[TransformersBackend(adapted.model)], settings=GREEDY)
        stance = EpistemicExpert(
            backends=[TransformersBackend(adapted.model)], adapter=adapted.adapter, settings=GREEDY
        )
        direct = TransformersBackend(adapted.model, adapter=adapted.adapter)
        expected = await direct.complete(await stance.build_messages(query), settings=GREEDY)
        without, with_ = await plain.process(query), await stance.process(query)
        assert with_.text == expected.text.strip() != without.text
        assert with_.model == "transformers:model+adapter"
        assert (with_.metadata["adapter_applied"], without.metadata["adapter_applied"]) == (True, False)
        assert with_.metadata["adapter"] == str(adapted.adapter)

    @pytest.mark.parametrize(("own", "applied"), [("same", True), ("other", False)], ids=["same", "other"])
    def test_backend_with_its_own_adapter_is_kept(
        self, adapted: Adapted, tmp_path: Path, own: str, applied: bool
    ) -> None:
        """A backend with an adapter of its own is used as it is; unless that is the stance adapter,
        a warning says the stance adapter is not applied to it."""
        from structlog.testing import capture_logs

        from moe_agents.reliability import GuardedBackend

        backend = TransformersBackend(adapted.model, adapter=adapted.adapter if own == "same" else tmp_path)
        with capture_logs() as logs:
            expert = EpistemicExpert(backends=[backend], adapter=adapted.adapter)
        [guarded] = expert.backends
        assert isinstance(guarded, GuardedBackend) and guarded.inner is backend
        warned = [e["backend"] for e in logs if e["event"] == "expert.adapter_not_applied"]
        assert warned == ([] if applied else [backend.name])

    async def test_yaml_adapter_on_a_shared_resident_backend(self, adapted: Adapted, tmp_path: Path) -> None:
        """``adapter:`` on epistemic experts in YAML (relative to the file): the experts without it
        use the named backend, those with it share one adapted copy, also under a memory budget."""
        import os

        from moe_agents import load_pipeline

        model, adapter = (os.path.relpath(p, tmp_path) for p in (adapted.model, adapted.adapter))
        path = tmp_path / "p.yaml"
        text = f"""\
            resources: {{memory_budget_gb: 1}}
            backends:
              local: {{kind: transformers, model: {model}, max_new_tokens: 8}}
            experts:
              - {{name: plain, kind: epistemic, backends: [local]}}
              - {{name: stance, kind: epistemic, backends: [local], adapter: {adapter}}}
              - {{name: stance2, kind: epistemic, backends: [local], adapter: {adapter}}}
            """
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        pipeline = load_pipeline(path)
        stance = pipeline.experts["stance"]
        assert isinstance(stance, EpistemicExpert)
        assert Path(str(stance.adapter)).resolve() == adapted.adapter.resolve()
        residency = pipeline.backends[0].residency
        assert residency.names == ("transformers:model", "transformers:model+adapter")
        query = Query("Is honesty always right?")
        without, with_ = await pipeline.experts["plain"].process(query), await stance.process(query)
        again = await pipeline.experts["stance2"].process(query)
        assert with_.text == again.text != without.text
        assert (with_.metadata["adapter_applied"], without.metadata["adapter_applied"]) == (True, False)


class TestProcessor:
    def test_modalities_from_config(self, llava: Path, adapted: Adapted) -> None:
        """Without modalities given, a model with a vision config and a processor accepts images;
        a text-only model accepts nothing else; given modalities win."""
        assert TransformersBackend(llava).modalities == frozenset({"image"})
        assert TransformersBackend(adapted.model).modalities == frozenset()
        assert TransformersBackend(llava, modalities=[]).modalities == frozenset()

    async def test_image_changes_the_reply(self, llava: Path) -> None:
        """An image goes through the processor: the prompt grows by its patch tokens and different
        images give different greedy replies."""
        backend = TransformersBackend(llava)
        red = await backend.complete(with_image(png("red")), settings=GREEDY)
        blue = await backend.complete(with_image(png("blue")), settings=GREEDY)
        text_only = await backend.complete([{"role": "user", "content": "what is this"}], settings=GREEDY)
        assert red.text != blue.text
        assert red.usage.completion_tokens == 8
        assert red.usage.prompt_tokens == text_only.usage.prompt_tokens + 4  # (28 / 14)² patches

    async def test_image_token_in_text_is_plain_text(self, llava: Path) -> None:
        """``<image>`` typed in the message is encoded as text, so it cannot claim image features."""
        backend = TransformersBackend(llava)
        plain = await backend.complete(with_image(png("red"), "what"), settings=GREEDY)
        forged = await backend.complete(with_image(png("red"), "what <image>"), settings=GREEDY)
        assert forged.usage.prompt_tokens > plain.usage.prompt_tokens
        assert forged.usage.completion_tokens == 8

    async def test_streaming_with_an_image(self, llava: Path) -> None:
        """Streamed chunks of an image query join to the same text as without streaming."""
        backend = TransformersBackend(llava)
        chunks: list[str] = []

        async def on_chunk(text: str) -> None:
            chunks.append(text)

        plain = await backend.complete(with_image(png("red")), settings=GREEDY)
        streamed = await backend.complete(with_image(png("red")), settings=GREEDY, on_chunk=on_chunk)
        assert "".join(chunks) == streamed.text == plain.text

    async def test_image_to_text_only_model_is_clear_error(self, adapted: Adapted) -> None:
        """An image for a model without a processor is a BackendError saying so."""
        backend = TransformersBackend(adapted.model)
        with pytest.raises(BackendError, match=r"has no processor for images") as info:
            await backend.complete(with_image(png("red")))
        assert info.value.backend == backend.name

    async def test_audio_to_vision_model_is_clear_error(self, llava: Path) -> None:
        """Audio for a model whose modalities are only images is a BackendError naming audio."""
        backend = TransformersBackend(llava)
        with pytest.raises(BackendError, match=r"does not accept audio"):
            await backend.complete(with_audio(wav()))

    @pytest.mark.parametrize(
        ("part", "message"),
        [
            ({"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}, "inline images"),
            ({"type": "input_audio", "input_audio": {"data": "", "format": "mp3"}}, "only WAV"),
            ({"type": "video", "video": "x"}, "unsupported message part"),
            ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "malformed"),
            ({"type": "input_audio", "input_audio": {"data": "bm90IGEgd2F2"}}, "malformed input_audio"),
            (
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(0.0)).decode()}},
                "no samples",
            ),
        ],
        ids=["remote-url", "mp3", "video", "bad-base64", "not-wav", "empty-wav"],
    )
    async def test_unusable_parts_are_refused(self, llava: Path, part: dict[str, Any], message: str) -> None:
        """Remote images, non-WAV audio, unknown part types, bad base64 and WAV data that is not a
        file with samples are BackendErrors."""
        backend = TransformersBackend(llava)
        with pytest.raises(BackendError, match=message):
            await backend.complete([{"role": "user", "content": [part]}])
        assert backend.loaded is False  # refused before loading anything


class TestAudio:
    def test_modalities_from_config(self, qwen2_audio: Path) -> None:
        """A model with an audio config and a processor accepts audio (and no images)."""
        assert TransformersBackend(qwen2_audio).modalities == frozenset({"audio"})

    async def test_audio_reaches_the_model(self, audio_backend: TransformersBackend) -> None:
        """A WAV goes through the processor: the prompt grows by its audio tokens and a tone and
        silence of the same length give different greedy replies."""
        tone = await audio_backend.complete(with_audio(wav(0.5)), settings=GREEDY)
        silence = await audio_backend.complete(with_audio(wav(0.5, amplitude=0)), settings=GREEDY)
        text_only = await audio_backend.complete([{"role": "user", "content": "hi"}], settings=GREEDY)
        assert tone.text != silence.text
        assert tone.usage.completion_tokens == 8
        # 0.5 s = 50 mel frames -> 12 audio tokens after the encoder's two stride-2 steps, plus bos/eos
        assert tone.usage.prompt_tokens == silence.usage.prompt_tokens == text_only.usage.prompt_tokens + 14

    async def test_audio_token_in_text_is_plain_text(self, audio_backend: TransformersBackend) -> None:
        """``<|AUDIO|>`` typed in the message is encoded as text, so it cannot claim audio features."""
        plain = await audio_backend.complete(with_audio(wav(0.5), "what"), settings=GREEDY)
        forged = await audio_backend.complete(with_audio(wav(0.5), "what <|AUDIO|>"), settings=GREEDY)
        assert forged.usage.prompt_tokens > plain.usage.prompt_tokens
        assert forged.usage.completion_tokens == 8

    async def test_streaming_with_audio(self, audio_backend: TransformersBackend) -> None:
        """Streamed chunks of an audio query join to the same text as without streaming."""
        chunks: list[str] = []

        async def on_chunk(text: str) -> None:
            chunks.append(text)

        plain = await audio_backend.complete(with_audio(wav(0.5)), settings=GREEDY)
        streamed = await audio_backend.complete(with_audio(wav(0.5)), settings=GREEDY, on_chunk=on_chunk)
        assert len(chunks) > 1
        assert "".join(chunks) == streamed.text == plain.text

    async def test_omni_expert_sends_a_wav_attachment(self, audio_backend: TransformersBackend) -> None:
        """A query with a WAV attachment goes through the omni expert to the audio model, which
        answers as it does to the same messages sent directly (and differently for silence)."""
        expert = OmniExpert(backends=[audio_backend], settings=GREEDY)
        tone = Query(
            "what is this sound", attachments=(Attachment("audio", data=wav(0.5), mime="audio/wav"),)
        )
        silence = Query("what is this sound", attachments=(Attachment("audio", data=wav(0.5, amplitude=0)),))
        direct = await audio_backend.complete(await expert.build_messages(tone), settings=GREEDY)
        answer = await expert.process(tone)
        assert answer.text == direct.text.strip()
        assert answer.usage.prompt_tokens == direct.usage.prompt_tokens
        assert (await expert.process(silence)).text != answer.text

    async def test_image_to_audio_model_is_clear_error(self, audio_backend: TransformersBackend) -> None:
        """An image for a model whose modalities are only audio is a BackendError naming images."""
        with pytest.raises(BackendError, match=r"does not accept image \(modalities: \['audio'\]\)") as info:
            await audio_backend.complete(with_image(png("red")))
        assert info.value.backend == audio_backend.name


class TestWav:
    @pytest.mark.parametrize(
        ("rate", "target"), [(16000, 16000), (8000, 16000)], ids=["same-rate", "resampled"]
    )
    def test_decodes_and_resamples(self, rate: int, target: int) -> None:
        """16-bit WAV becomes a float32 array in [-1, 1] at the processor's rate."""
        import numpy as np

        from moe_agents.backends.transformers.media import _wav

        samples = _wav(wav(0.1, rate), target)
        assert samples.dtype == np.float32
        assert len(samples) == round(0.1 * target)
        assert 0.2 < float(np.abs(samples).max()) <= 1.0

    @pytest.mark.parametrize("width", [1, 2, 3, 4], ids=["8-bit", "16-bit", "24-bit", "32-bit"])
    def test_every_pcm_width_scales_to_unit_range(self, width: int) -> None:
        """Stereo PCM of any width is mixed to mono and scaled so full scale is ±1."""
        import numpy as np

        from moe_agents.backends.transformers.media import _wav

        half = 2 ** (8 * width - 1)
        values = [-half, -half // 2, 0, half // 2] if width > 1 else [0, 64, 128, 192]  # 8-bit is unsigned
        frames = b"".join(
            v.to_bytes(width, "little", signed=width > 1) * 2  # the same sample on both channels
            for v in values
        )
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as f:
            f.setnchannels(2)
            f.setsampwidth(width)
            f.setframerate(16000)
            f.writeframes(frames)
        np.testing.assert_allclose(_wav(buffer.getvalue(), 16000), [-1.0, -0.5, 0.0, 0.5])
