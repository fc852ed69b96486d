"""Routing: sentence encoders and the router that turns a query into a ``Selection``."""

from .encoder import Encoder as Encoder
from .encoder import SentenceEncoder as SentenceEncoder
from .encoder import bundled_encoder as bundled_encoder
from .router import Router as Router
from .router import RouterConfig as RouterConfig

__all__ = ["Encoder", "Router", "RouterConfig", "SentenceEncoder", "bundled_encoder"]
