"""Run methods over evaluation cases, interleaved per case as in bench, and score every output.

The `none` baseline (plain decoding of the target, the default rule) always runs first on each
case: its output is what every method's text is compared with (`similarity`: difflib's ratio of
the two texts, 1.0 = identical) and its score is the lossless reference the lossy rules are
measured against (a lossless rule at temperature 0 reproduces it, up to bf16 rounding)."""

from __future__ import annotations

import difflib
import zlib

from ..bench.runner import Method, MethodSpec
from ..target import CausalLM
from ..types import SamplingParams
from ..verify import build_verifier
from .tasks import Case, score


def similarity(a: str, b: str) -> float:
    """difflib's ratio of two texts: 2 x matched characters / total characters (1.0 = equal)."""
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def run_eval(target: CausalLM, cases: list[Case], specs: list[MethodSpec], params: SamplingParams, *,
             verifier=None, warmup: int = 1, timeout_s: float = 10.0, memory_mb: int = 1024, progress=None,
             on_record=None) -> list[dict]:
    """One record per (method, case): the output, its score, speed and similarity to `none`.
    `on_record(record)` sees each record as it is made (the CLI streams them to records.jsonl)."""
    if not specs or specs[0].name != "none":
        specs = [MethodSpec("none", "none"), *[s for s in specs if s.name != "none"]]
    build_verifier(verifier)  # a bad rule fails before any method is built
    methods = [Method(s, target, None if i == 0 else verifier) for i, s in enumerate(specs)]
    if cases and warmup:
        warm = SamplingParams(max_new_tokens=min(16, params.max_new_tokens), temperature=params.temperature)
        ids = _prompt_ids(target, cases[0])
        for _ in range(warmup):
            for m in methods:
                m.run(ids, warm)
    records = []
    for case in cases:
        ids = _prompt_ids(target, case)
        seed = zlib.crc32(case.case_id.encode())
        baseline_ids = baseline_text = None
        for m in methods:
            r = m.run(ids, params, seed)
            text = target.decode(r["output_ids"])
            if baseline_ids is None:
                baseline_ids, baseline_text = r["output_ids"], text
            records.append({
                "task": case.task, "case_id": case.case_id, "method": m.spec.label, "verifier": m.verifier_name,
                "prompt_tokens": len(ids), "output": text, "new_tokens": r["new_tokens"], "wall_time": r["wall_time"],
                "steps": r["steps"], "drafted": r["drafted"], "accepted": r["accepted"], "lossless": r["lossless"],
                "finish_reason": r["finish_reason"], "matches_baseline": r["output_ids"] == baseline_ids,
                "similarity": round(similarity(text, baseline_text), 4),
                **score(case, text, timeout_s=timeout_s, memory_mb=memory_mb)})
            if on_record:
                on_record(records[-1])
            if progress:
                progress(1, len(cases) * len(methods))
    return records


def _prompt_ids(target: CausalLM, case: Case) -> list[int]:
    if target.has_chat_template:
        return target.encode([{"role": "user", "content": case.prompt}])
    return target.encode(case.prompt)
