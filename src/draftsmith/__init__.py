"""draftsmith: lossless speculative decoding for Hugging Face causal LMs.

    import draftsmith
    target = draftsmith.load_target("smollm2-135m-instruct", dtype="bfloat16")
    decoder = draftsmith.SpeculativeDecoder(target, draftsmith.build_drafter("ngram", k=5))
    out = decoder.generate("Summarise speculative decoding.", draftsmith.SamplingParams(max_new_tokens=64))
    print(out.text, out.stats.tau)
"""

from .decoding import SpeculativeDecoder, StreamChunk
from .drafters import Drafter, build_drafter, register
from .errors import DraftsmithError
from .target import CausalLM, load_target
from .types import Draft, GenerationResult, RunStats, SamplingParams, VerifyResult

__version__ = "0.1.0"

__all__ = [
    "CausalLM",
    "Draft",
    "Drafter",
    "DraftsmithError",
    "GenerationResult",
    "RunStats",
    "SamplingParams",
    "SpeculativeDecoder",
    "StreamChunk",
    "VerifyResult",
    "build_drafter",
    "load_target",
    "register",
]
