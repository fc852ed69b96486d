"""The deployment target's architecture, Qwen3-Omni-MoE, at tiny seeded size: a thinker with a MoE
text model (2 layers, 8 experts, top-2), a 1-layer audio encoder and a 1-layer vision encoder, no
talker. It goes through ``TransformersBackend`` (modalities, loading) and through the token router
and expert offload on a forward pass with audio.

``Qwen3OmniMoeProcessor`` needs torchvision (its video processor), which this environment lacks, so
the audio inputs here are what that processor builds, assembled from its parts: the Whisper feature
extractor's features and the chat template's ``<|audio_pad|>`` repeated once per audio-encoder
output frame.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from test_backends_local import wav
from tiny_models import bundled_tokenizer, decoder_sizes

from moe_agents.backends import TransformersBackend
from moe_agents.backends.transformers.loading import _text_model
from moe_agents.backends.transformers.media import _wav
from moe_agents.errors import ConfigError
from moe_agents.token_router import ExpertCache, TokenPolicy, offload_experts, patch
from moe_agents.token_router.router import TokenRouterMixin

E, K, LAYERS = 8, 2, 2
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# Qwen3-Omni's chat template, reduced to the parts the processor and the model look for
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMED_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}


@dataclass(frozen=True)
class Omni:
    """A saved tiny Qwen3-Omni-MoE folder and the model, tokenizer and feature extractor loaded from it."""

    path: Path
    model: Any
    tokenizer: Any
    feature_extractor: Any


@pytest.fixture(scope="module")
def omni(tmp_path_factory: pytest.TempPathFactory) -> Omni:
    """A tiny Qwen3-Omni-MoE (no talker) saved with the bundled tokenizer plus Qwen3-Omni's special
    tokens, a 1-second 16-bin Whisper feature extractor and a Qwen2-VL image processor (one
    ``preprocessor_config.json`` for both, as the released checkpoint has), then loaded back with
    ``AutoModelForMultimodalLM``, the class the backend uses."""
    from transformers import (
        AutoModelForMultimodalLM,
        Qwen2VLImageProcessorPil,
        Qwen3OmniMoeConfig,
        Qwen3OmniMoeForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    tokenizer = bundled_tokenizer()
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [*NAMED_TOKENS.values(), "<|im_start|>", "<|im_end|>"]}
    )
    tokenizer.chat_template = TEMPLATE
    # as in test_backends_local: the bundled tokenizer's 128-token padding would cut the audio
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.init_kwargs.pop("max_length", None)
    ids = tokenizer.convert_tokens_to_ids
    features = WhisperFeatureExtractor(feature_size=16, sampling_rate=16_000, chunk_length=1)
    images = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    torch.manual_seed(0)
    text = decoder_sizes(
        tokenizer, moe_intermediate_size=16, num_experts=E, num_experts_per_tok=K, head_dim=8
    )
    config = Qwen3OmniMoeConfig(
        enable_audio_output=False,
        thinker_config={
            "initializer_range": 0.5,  # large random weights, so the audio visibly moves the logits
            "text_config": text,
            "audio_config": {
                "num_mel_bins": 16,
                "d_model": 16,
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 32,
                "output_dim": 32,
                "downsample_hidden_size": 8,
                "max_source_positions": 100,
            },
            "vision_config": {
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_heads": 2,
                "out_hidden_size": 32,
                "patch_size": 14,
                "deepstack_visual_indexes": [0],
                "num_position_embeddings": 64,
            },
            "audio_token_id": ids("<|audio_pad|>"),
            "image_token_id": ids("<|image_pad|>"),
            "video_token_id": ids("<|video_pad|>"),
            "audio_start_token_id": ids("<|audio_start|>"),
            "vision_start_token_id": ids("<|vision_start|>"),
        },
        im_start_token_id=ids("<|im_start|>"),
        im_end_token_id=ids("<|im_end|>"),
    )
    path = tmp_path_factory.mktemp("tiny-qwen3-omni") / "model"
    Qwen3OmniMoeForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    preprocessor = {**features.to_dict(), **images.to_dict(), "processor_class": "Qwen3OmniMoeProcessor"}
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")
    model = AutoModelForMultimodalLM.from_pretrained(path).eval()
    return Omni(path, model, tokenizer, features)


def audio_inputs(omni: Omni, data: bytes, text: str = "what is this sound") -> dict[str, torch.Tensor]:
    """What ``Qwen3OmniMoeProcessor.apply_chat_template`` gives for one user turn of text and a WAV."""
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    audio = _wav(data, 16_000)  # the backend's decoding
    features = omni.feature_extractor(
        audio,
        sampling_rate=16_000,
        return_attention_mask=True,
        padding=True,
        truncation=False,
        return_tensors="pt",
    )
    frames = int(_get_feat_extract_output_lengths(features["attention_mask"].sum(-1))[0])
    chat = [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "audio"}]}]
    prompt = omni.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    encoded = omni.tokenizer(
        prompt.replace("<|audio_pad|>", "<|audio_pad|>" * frames),
        add_special_tokens=False,
        return_tensors="pt",
    )
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "input_features": features["input_features"],
        "feature_attention_mask": features["attention_mask"],
    }


def thinker_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model.thinker(**inputs).logits


class TestBackend:
    def test_modalities_from_the_thinker_config(self, omni: Omni) -> None:
        """Audio and vision configs nested in ``thinker_config`` make the backend accept both."""
        assert TransformersBackend(omni.path).modalities == frozenset({"audio", "image"})

    @pytest.mark.skipif(HAS_TORCHVISION, reason="the missing-torchvision error needs torchvision absent")
    async def test_processor_without_torchvision_is_config_error(self, omni: Omni) -> None:
        """Without torchvision, Qwen3-Omni's processor (its video part) cannot load: a ConfigError
        naming the folder and torchvision, raised before any weights load."""
        backend = TransformersBackend(omni.path)
        with pytest.raises(
            ConfigError, match=r"needs a package that is not installed.*[Tt]orchvision"
        ) as info:
            await backend.load()
        assert info.value.path == str(omni.path)
        assert backend.loaded is False

    def test_loads_as_the_full_model_without_talker(self, omni: Omni) -> None:
        """``AutoModelForMultimodalLM`` maps the folder to the thinker/talker model, here without talker."""
        assert type(omni.model).__name__ == "Qwen3OmniMoeForConditionalGeneration"
        assert not hasattr(omni.model, "talker")

    def test_backend_generates_with_the_thinker(self, omni: Omni) -> None:
        """The backend keeps the thinker, whose greedy generate stops at ``max_new_tokens`` (the
        wrapper's generate would run its own 1024-token default instead)."""
        inputs = audio_inputs(omni, wav(0.5))
        model = _text_model(omni.model)
        assert model is omni.model.thinker
        assert _text_model(model) is model
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert ids.shape[1] == inputs["input_ids"].shape[1] + 4


class TestAudioForward:
    def test_audio_reaches_the_thinker(self, omni: Omni) -> None:
        """A tone and silence of the same length give the same prompt length and different logits."""
        tone, silence = audio_inputs(omni, wav(0.5)), audio_inputs(omni, wav(0.5, amplitude=0))
        assert tone["input_ids"].shape == silence["input_ids"].shape
        audio_tokens = int((tone["input_ids"] == omni.model.config.thinker_config.audio_token_id).sum())
        assert audio_tokens == 7  # 50 mel frames → 7 encoder outputs
        diff = (thinker_logits(omni.model, tone) - thinker_logits(omni.model, silence)).abs().max()
        assert float(diff) > 1e-4

    def test_patched_router_sees_every_layer_and_neutral_is_identical(self, omni: Omni) -> None:
        """Patching the full model finds the thinker's routers; with a neutral policy the cache counts
        every (token, expert) pick of every MoE layer and the logits do not change by a bit."""
        inputs = audio_inputs(omni, wav(0.5))
        tokens = inputs["input_ids"].shape[1]
        reference = thinker_logits(omni.model, inputs)
        cache = ExpertCache(LAYERS, E, 4)
        with patch(omni.model, TokenPolicy(), cache) as handle:
            assert handle.names == [
                f"thinker.model.language_model.layers.{i}.mlp.gate" for i in range(LAYERS)
            ]
            patched = thinker_logits(omni.model, inputs)
        assert torch.equal(patched, reference)
        assert cache.stats().load.sum(-1).tolist() == [tokens * K] * LAYERS
        assert cache.hits + cache.misses == LAYERS * tokens * K

    def test_cache_bonus_moves_routing_and_unpatch_restores(self, omni: Omni) -> None:
        """A strong resident bonus (top-1 protected) changes the logits; unpatching restores the
        original routers and logits exactly."""
        inputs, warm = audio_inputs(omni, wav(0.5)), audio_inputs(omni, wav(0.5, amplitude=0))
        reference = thinker_logits(omni.model, inputs)
        routers = [m for _, m in omni.model.named_modules() if type(m).__name__.endswith("TopKRouter")]
        with patch(omni.model.thinker, TokenPolicy(lam=5.0, protect_top_j=1), ExpertCache(LAYERS, E, 3)):
            thinker_logits(omni.model, warm)  # fills the cache
            biased = thinker_logits(omni.model, inputs)
        assert float((biased - reference).abs().max()) > 1e-3
        after = [m for _, m in omni.model.named_modules() if type(m).__name__.endswith("TopKRouter")]
        assert all(a is b for a, b in zip(routers, after, strict=True))
        assert not any(isinstance(m, TokenRouterMixin) for m in omni.model.modules())
        assert torch.equal(thinker_logits(omni.model, inputs), reference)

    def test_offloaded_experts_give_the_same_logits(self, omni: Omni, tmp_path: Path) -> None:
        """With the experts offloaded to files (4 of 8 slots per layer) the audio forward pass gives
        the resident model's logits to float32 rounding (the fused experts kernel; offload.py,
        "Exactness"), loading experts on demand; restore puts them back bit for bit."""
        inputs = audio_inputs(omni, wav(0.5))
        reference = thinker_logits(omni.model, inputs)
        with offload_experts(omni.model.thinker, tmp_path, 4) as handle:
            offloaded = thinker_logits(omni.model, inputs)
            stats = handle.stats()
        torch.testing.assert_close(offloaded, reference, rtol=1e-4, atol=1e-4)
        assert handle.num_layers == LAYERS
        assert stats.misses >= LAYERS and stats.lookups == LAYERS * inputs["input_ids"].shape[1] * K
        assert torch.equal(thinker_logits(omni.model, inputs), reference)
