"""Verifiers: given a draft and the target's logits over it, decide what one step keeps.

A new rule is one file with a class and one registration line below."""

from .base import AUTO, VERIFIERS, Verifier, VerifierBase, build_verifier, default_verifier, register_verifier
from .greedy import GreedyVerifier
from .rejection import RejectionVerifier

register_verifier(GreedyVerifier)
register_verifier(RejectionVerifier)

__all__ = ["AUTO", "VERIFIERS", "GreedyVerifier", "RejectionVerifier", "Verifier", "VerifierBase", "build_verifier",
           "default_verifier", "register_verifier"]
