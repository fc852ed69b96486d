"""A local causal language model run with Hugging Face transformers (safetensors or GGUF).

torch, transformers and peft are imported on first use. Loading, tokenising and generating block,
so they run in worker threads; ``max_concurrency`` bounds how many generations share the model at
once. One instance is meant to be shared by every expert that uses the model.

A LoRA adapter (a peft folder) can be applied on top of the base weights (``with_adapter`` makes an
adapted copy of a backend). A model folder with a processor (``processor_config.json`` or
``preprocessor_config.json``) is loaded with ``AutoModelForMultimodalLM``: image and audio message
parts go through the processor. Images are tested with LLaVA, audio with Qwen2-Audio (a Whisper
feature extractor); any model whose processor takes ``{"type": "audio", "audio": <array>}`` chat
parts should work. Of a thinker/talker model (Qwen3-Omni-MoE) only the thinker is kept, so replies
are text; its processor needs torchvision (for its video processor), else loading is a ``ConfigError``.

A GGUF file is converted to a dense model once: the result is cached (``gguf_cache``) and later loads,
in any process, read the cache. ``needs_preparation()`` says whether the next load converts.

The modules, one concept each: ``backend`` (``TransformersBackend``: settings, adapters, load and
unload, a call's checks), ``loading`` (folder, GGUF through ``gguf_cache``, adapter, processor),
``generation`` (the worker thread, stopping criteria, streaming), ``prompt`` (messages to chat
turns to token ids) and ``media`` (images and WAV audio for a processor).
"""

from .backend import TransformersBackend as TransformersBackend

__all__ = ["TransformersBackend"]
