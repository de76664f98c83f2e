"""draftsmith: lossless speculative decoding for Hugging Face causal LMs.

    import draftsmith
    target = draftsmith.load_target("smollm2-135m-instruct", dtype="bfloat16")
    decoder = draftsmith.SpeculativeDecoder(target, draftsmith.build_drafter("ngram", k=5))
    out = decoder.generate("Summarise speculative decoding.", draftsmith.SamplingParams(max_new_tokens=64))
    print(out.text, out.stats.tau)
"""

from .decode import BatchDecoder, SpeculativeDecoder, StreamChunk
from .drafters import Drafter, DrafterBase, build_drafter, register
from .errors import DraftsmithError
from .target import CausalLM, load_target
from .types import Draft, GenerationResult, RunStats, SamplingParams, VerifyResult
from .verify import Verifier, VerifierBase, build_verifier, register_verifier

__version__ = "0.1.0"

__all__ = [
    "BatchDecoder",
    "CausalLM",
    "Draft",
    "Drafter",
    "DrafterBase",
    "DraftsmithError",
    "GenerationResult",
    "RunStats",
    "SamplingParams",
    "SpeculativeDecoder",
    "StreamChunk",
    "Verifier",
    "VerifierBase",
    "VerifyResult",
    "build_drafter",
    "build_verifier",
    "load_target",
    "register",
    "register_verifier",
]
