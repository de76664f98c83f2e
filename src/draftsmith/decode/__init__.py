"""The decoding loop over rows (loop.py), row state and commit rules (rows.py), the boundary
checks (checks.py) and the two faces (api.py)."""

from .api import BatchDecoder, SpeculativeDecoder, StreamChunk
from .checks import DraftError, check_draft
from .loop import Loop
from .rows import Row, TextTracker

__all__ = ["BatchDecoder", "DraftError", "Loop", "Row", "SpeculativeDecoder", "StreamChunk", "TextTracker", "check_draft"]
