"""A user-defined expert, registered so that YAML pipelines can name its kind.

Run: python examples/custom_expert.py
"""

from __future__ import annotations

import logging
import tempfile
import textwrap
from pathlib import Path

import anyio
import structlog

from moe_agents import LLMExpert, load_pipeline, register_expert
from moe_agents.experts import Signal


class TranslationExpert(LLMExpert):
    """Translates text; its exemplars teach the router's gate what translation requests look like."""

    kind = "translation"
    default_system_prompt = (
        "You are a professional translator. Translate faithfully, keep the tone, and reply with the "
        "translation only."
    )
    default_exemplars = (
        "Translate 'good morning' into Spanish",
        "How do you say 'thank you very much' in Japanese?",
        "Please translate this paragraph to German",
        "What's the French for 'where is the train station'?",
    )
    signals = (Signal(r"\btranslat\w*|\bin (french|german|spanish|japanese|italian)\b", 0.7),)


register_expert("translation", TranslationExpert)

CONFIG = """\
backends:
  mock:
    kind: litellm
    model: openai/gpt-4o-mini
    api_key: ${OPENAI_API_KEY:-sk-offline}
    params: {mock_response: "Buenos días"}   # delete this line to call the real model
experts:
  - {name: translator, kind: translation, backends: [mock]}
  - {name: coding, kind: coding, backends: [mock]}
"""


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(textwrap.dedent(CONFIG))
        async with load_pipeline(path) as pipeline:
            result = await pipeline.run("Translate 'good morning' into Spanish")
            print(result.selection.experts, "->", result.text)


if __name__ == "__main__":
    # the application decides what to log; the library only emits events
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
