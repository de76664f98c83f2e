"""Run methods over questions: interleaved per question, warmed up, tokens counted as ids.

A method is `NAME[:opt=val,...]`: any registered drafter (`none`, `ngram:k=5`,
`draft_model:model=qwen2.5-coder-0.5b-instruct`), or a tool people use today on the same
target and prompts: `hf` (Hugging Face's plain `generate`), `hf_assisted:model=...`
(`generate(assistant_model=...)`) and `hf_prompt_lookup:k=...` (`generate(prompt_lookup_num_tokens=...)`).

A drafter method may name its own acceptance rule with the option `verifier`:
`ngram:k=5,verifier=greedy`, or with the rule's options in brackets,
`ngram:k=5,verifier=[NAME:opt=val,opt=val]`. `verifier` is taken out of the drafter's options
and given to the decoder; so is `exact` (`ngram:exact=true`: that method in exact mode, beside
the same method without it in one run). A method that names none gets `run_bench(verifier=...)` (the CLI's
`--verifier`), except the `none` baseline, which stays plain decoding of the target (the default
rule) so that speedups and "= none" compare against the target's own output. Every record says
which rule ran (`verifier`) and whether it was lossless (`lossless`, from the run's stats);
reports tag lossy methods.

Turn 2 of a multi-turn question continues from the `none` answer to turn 1 for every method,
so every method sees the same prompt and outputs can be compared id for id.
"""

from __future__ import annotations

import difflib
import time
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from ..attention import stock_attention
from ..cache import new_cache
from ..decode import SpeculativeDecoder
from ..drafters import REGISTRY, build_drafter, parse_spec
from ..errors import DraftsmithError
from ..target import CausalLM, load_causal_lm
from ..types import SamplingParams
from ..verify import build_verifier
from ..data.questions import Question

HF_METHODS = ("hf", "hf_assisted", "hf_prompt_lookup")


@dataclass(frozen=True)
class MethodSpec:
    label: str  # as written on the command line: the row name in reports
    name: str
    options: dict = field(default_factory=dict, hash=False)  # the drafter's (or the HF method's) options
    verifier: str | None = None  # the method's own acceptance rule (spec), None: the run's default
    exact: bool | None = None  # the method's own exact mode (exact=true), None: the run's (--exact)

    @staticmethod
    def parse(text: str) -> MethodSpec:
        name, options = parse_spec(text)
        if name not in REGISTRY and name not in HF_METHODS:
            known = sorted([*REGISTRY, *HF_METHODS])
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise DraftsmithError(f"unknown method {name!r}; known: {', '.join(known)}.{hint}")
        verifier = options.pop("verifier", None)
        if verifier is not None:
            if name in HF_METHODS:
                raise DraftsmithError(f"{text!r}: {name} runs Hugging Face's own acceptance rule; it takes no verifier=")
            if isinstance(verifier, list):  # verifier=[NAME:opt=val,opt=val]
                verifier = ",".join(verifier)
            if not isinstance(verifier, str) or not verifier.strip():
                raise DraftsmithError(f"{text!r}: verifier= names a rule, e.g. verifier=greedy")
            build_verifier(verifier)  # an unknown rule or option fails now, before any model loads
        exact = options.pop("exact", None)
        if exact is not None:
            if name in HF_METHODS:
                raise DraftsmithError(f"{text!r}: {name} is Hugging Face's own loop; it takes no exact=")
            if not isinstance(exact, bool):
                raise DraftsmithError(f"{text!r}: exact= is true or false, got {exact!r}")
        return MethodSpec(text, name, options, verifier, exact)


class Method:
    """Something that turns prompt ids into new ids, with stats where it has them. `verifier`: the
    rule used when the spec names none (None: greedy at temperature 0, rejection sampling otherwise)."""

    def __init__(self, spec: MethodSpec, target: CausalLM, verifier=None, exact: bool = False):
        self.spec, self.target = spec, target
        self.exact = spec.name not in HF_METHODS and (exact if spec.exact is None else spec.exact)
        self.verifier = spec.verifier if spec.verifier is not None else verifier
        if spec.name == "hf_assisted":
            model = spec.options.get("model")
            if not model:
                raise DraftsmithError("hf_assisted needs model=NAME_OR_PATH")
            self.assistant = load_causal_lm(model, dtype=target.dtype, device=target.device)
            self.decoder, self.verifier = None, None
        elif spec.name in ("hf", "hf_prompt_lookup"):
            if spec.name == "hf" and spec.options:
                raise DraftsmithError(f"hf (plain generate) takes no options, got {sorted(spec.options)}")
            self.decoder, self.verifier = None, None
        else:
            self.decoder = SpeculativeDecoder(target, build_drafter(spec.name, **spec.options), verifier=self.verifier,
                                              exact=exact if spec.exact is None else spec.exact)

    @property
    def verifier_name(self) -> str:
        """The rule as written ("auto": greedy at temperature 0, rejection sampling otherwise;
        "hf": Hugging Face's own)."""
        if self.decoder is None:
            return "hf"
        v = self.verifier
        return "auto" if v is None else v if isinstance(v, str) else (getattr(v, "name", None) or type(v).__name__)

    @property
    def lossless(self) -> bool:
        return self.decoder.lossless if self.decoder is not None else True

    def run(self, prompt_ids: list[int], params: SamplingParams, seed: int = 0) -> dict:
        t0 = time.perf_counter()
        if self.decoder is not None:
            out = self.decoder.generate(prompt_ids, params, generator=torch.Generator().manual_seed(seed))
            wall = time.perf_counter() - t0
            s = out.stats
            return {"output_ids": out.token_ids, "new_tokens": s.new_tokens, "wall_time": wall, "steps": s.steps,
                    "drafted": s.drafted, "accepted": s.accepted, "accepted_per_step": s.accepted_per_step,
                    "drafted_per_step": s.drafted_per_step, "drafter_time": s.drafter_time,
                    "target_time": s.target_time, "prefill_time": s.prefill_time,
                    "finish_reason": s.finish_reason, "lossless": s.lossless}
        ids = self._hf_generate(prompt_ids, params)
        wall = time.perf_counter() - t0
        return {"output_ids": ids, "new_tokens": len(ids), "wall_time": wall, "steps": None, "drafted": None,
                "accepted": None, "accepted_per_step": None, "drafted_per_step": None, "drafter_time": None, "target_time": None,
                "prefill_time": None, "finish_reason": None,
                "lossless": True}

    @torch.inference_mode()
    def _hf_generate(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        if not params.greedy:
            raise DraftsmithError(f"{self.spec.name} is run greedy only in this harness")
        kwargs = {"do_sample": False, "max_new_tokens": params.max_new_tokens,
                  "eos_token_id": sorted(self.target.eos_token_ids) or None,
                  "pad_token_id": next(iter(self.target.eos_token_ids), 0)}
        if self.spec.name == "hf_assisted":
            kwargs["assistant_model"] = self.assistant.model
            if "k" in self.spec.options:
                kwargs["num_assistant_tokens"] = self.spec.options["k"]
        elif self.spec.name == "hf_prompt_lookup":
            kwargs["prompt_lookup_num_tokens"] = self.spec.options.get("k", 10)
            if "max_ngram" in self.spec.options:
                kwargs["max_matching_ngram_size"] = self.spec.options["max_ngram"]
        input_ids = torch.tensor([prompt_ids], device=self.target.device)
        with ExitStack() as stack:  # Hugging Face as people run it: its own sdpa attention
            for model in (self.target.model, kwargs.get("assistant_model")):
                if model is not None:
                    stack.enter_context(stock_attention(model))
            out = self.target.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        return out[0, len(prompt_ids):].tolist()


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def top2_margin(target: CausalLM, prompt_ids: list[int], output_ids: list[int], at: int) -> float | None:
    """The target's top-1 minus top-2 logit for the token at output position `at` (given the
    prompt and the first `at` output tokens): near 0, a difference there is rounding at a tie."""
    ids = prompt_ids + output_ids[:at]
    if at < 0 or at > len(output_ids) or not ids:
        return None
    slots = torch.arange(len(ids), device=target.device)
    logits = target.step(torch.tensor([ids], device=target.device), slots[None], new_cache(), cache_position=slots,
                         last_only=True).logits[0, -1].float()  # [V]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def run_bench(target: CausalLM, questions: list[Question], specs: list[MethodSpec], params: SamplingParams,
              repeats: int = 1, warmup: int = 1, progress=None, verifier=None, exact: bool = False) -> list[dict]:
    """One record per (method, question, turn, repeat). `verifier` (a rule's name, spec or
    instance): the acceptance rule of every method whose spec names none, except the `none`
    baseline (plain decoding of the target, the default rule). `exact`: every method, `none`
    included, in exact mode (exact.py). Where an output differs from `none`'s, the record has the
    target's top-2 logit margin at the first differing position (`divergence_margin`). A method in
    exact mode is compared with `none` in exact mode (its reference: exact.py), added to the run
    after `none` when no method is that already."""
    if not specs or specs[0].name != "none":
        specs = [MethodSpec("none", "none"), *[s for s in specs if s.name != "none"]]
    build_verifier(verifier)  # a bad rule fails before any method is built
    methods = [Method(s, target, None if i == 0 else verifier, exact=exact) for i, s in enumerate(specs)]
    if any(m.exact for m in methods) and not any(m.exact and m.spec.name == "none" for m in methods):
        ref = MethodSpec("none:exact=true", "none", {}, None, True)
        methods.insert(1, Method(ref, target, exact=exact))
    turns_total = sum(len(q.turns) for q in questions) * repeats * len(methods)

    warm = SamplingParams(max_new_tokens=min(16, params.max_new_tokens), temperature=params.temperature)
    warm_prompt = target.encode(questions[0].turns[0])
    for _ in range(warmup):
        for m in methods:
            m.run(warm_prompt, warm)

    records = []
    for rep in range(repeats):
        for q in questions:
            history: list[dict] = []
            for turn, text in enumerate(q.turns):
                history.append({"role": "user", "content": text})
                prompt_ids = target.encode(history) if target.has_chat_template else target.encode(
                    "\n\n".join(h["content"] for h in history))
                baseline = None  # the first method's output: the next turn's history
                refs: dict[bool, tuple[str, list[int]]] = {}  # exact or not -> that `none`'s (label, output)
                seed = zlib.crc32(f"{q.question_id}/{turn}/{rep}".encode())  # same seed for every method
                for m in methods:  # interleaved: drift hits every method alike
                    r = m.run(prompt_ids, params, seed)
                    if baseline is None:
                        baseline = r["output_ids"]
                    if m.spec.name == "none":
                        refs.setdefault(m.exact, (m.spec.label, r["output_ids"]))
                    ref_label, ref = refs.get(m.exact, refs[methods[0].exact])
                    div = first_divergence(r["output_ids"], ref)
                    margin = top2_margin(target, prompt_ids, ref, div) if div is not None else None
                    records.append({"method": m.spec.label, "verifier": m.verifier_name, "question_id": q.question_id, "category": q.category,
                                    "turn": turn, "repeat": rep, "prompt_tokens": len(prompt_ids), **r,
                                    "matches_baseline": div is None, "reference": ref_label, "first_divergence": div,
                                    "divergence_margin": margin})
                    if progress:
                        progress(1, turns_total)
                history.append({"role": "assistant", "content": target.decode(baseline)})
    return records
