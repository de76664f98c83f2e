"""Verifiers: given a draft and the target's logits over it, decide what one step keeps."""

from .greedy import GreedyVerifier
from .rejection import RejectionVerifier

__all__ = ["GreedyVerifier", "RejectionVerifier"]
