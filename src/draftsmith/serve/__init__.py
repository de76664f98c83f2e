"""An OpenAI-compatible HTTP server over the speculative decoder."""

from .app import create_app
from .engine import Engine

__all__ = ["create_app", "Engine"]
