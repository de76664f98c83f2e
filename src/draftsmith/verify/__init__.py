"""Verifiers: given a draft and the target's logits over it, decide what one step keeps.

A new rule is one file with a class (decorated `@register_verifier`) and one line below importing it."""

from .base import AUTO, VERIFIERS, Verifier, VerifierBase, bind_verifier, build_verifier, default_verifier, register_verifier

# one line per rule: importing it registers it (@register_verifier)
from .greedy import GreedyVerifier
from .rejection import RejectionVerifier
from .spectr import SpecTrVerifier
from .recursive import RecursiveVerifier
from .typical import TypicalVerifier
from .relaxed import RelaxedVerifier
from .bild import BildVerifier
from .judge import JudgeVerifier
from .arbitrage import ArbitrageVerifier

__all__ = ["AUTO", "VERIFIERS", "ArbitrageVerifier", "bind_verifier", "BildVerifier", "GreedyVerifier", "JudgeVerifier", "RecursiveVerifier", "RejectionVerifier", "SpecTrVerifier", "RelaxedVerifier",
           "TypicalVerifier", "Verifier", "VerifierBase", "build_verifier", "default_verifier", "register_verifier"]
