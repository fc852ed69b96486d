"""Model backends: the ``Backend`` seam and the built-in litellm and transformers backends.

Importing this package imports neither litellm, torch nor transformers; each backend imports its
library on first use.
"""

from .base import Backend as Backend
from .base import ChunkCallback as ChunkCallback
from .base import Completion as Completion
from .base import GenerationSettings as GenerationSettings
from .litellm import LiteLLMBackend as LiteLLMBackend
from .replay import ReplayBackend as ReplayBackend
from .transformers import TransformersBackend as TransformersBackend

__all__ = [
    "Backend",
    "ChunkCallback",
    "Completion",
    "GenerationSettings",
    "LiteLLMBackend",
    "ReplayBackend",
    "TransformersBackend",
]
