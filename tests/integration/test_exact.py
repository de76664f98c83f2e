"""Exact mode (draftsmith/exact.py): greedy output id for id identical to plain decoding in bf16,
whatever the drafter and whatever else is in the batch.

The bug it guards: in bf16 a (1 + k)-token verification forward and a one-token forward round
differently, so greedy speculative output drifted from plain decoding at near ties (25-42% of
Spec-Bench prompts equal for `ngram` on the default model) and the server's answer to a prompt
depended on the other requests in the batch. The tiny models here are bf16 with a small init
std, so near ties are common; on the CPU the control shows outputs do differ without exact mode.
"""

from __future__ import annotations

import pytest
import torch

from draftsmith import BatchDecoder, Draft, DrafterBase, SamplingParams, SpeculativeDecoder
from draftsmith.errors import DraftsmithError
from draftsmith.target import CausalLM
from tests.conftest import DEVICE, WrongDrafter, tiny_model

NEW = 40
PARAMS = SamplingParams(max_new_tokens=NEW, ignore_eos=True)


def bf16_tiny(arch: str, seed: int = 0) -> CausalLM:
    t = tiny_model(arch, vocab=96, std=0.02, layers=2, seed=seed)
    t.model.to(torch.bfloat16)
    return CausalLM(t.model, None, t.name)


def prompts(n: int = 12, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (int(m),), generator=g).tolist() for m in torch.randint(3, 40, (n,), generator=g)]


class TwinTree(DrafterBase):
    """A tree around the target's own greedy chain (from a plain forward of its own): at each
    depth a wrong sibling first, then the right token, whose subtree continues; so accepted paths
    skip slots, and every path but the first is not a run of slots (the scratch-copy branch of
    exact attention)."""

    name = "twin-tree"
    trees = True
    k = 4

    def bind(self, target):
        self.target = target

    def fork(self):
        other = super().fork()
        other.twin = CausalLM(self.target.model)
        return other

    def propose(self, ctx):
        depth = min(self.k, ctx.max_tokens)
        if depth <= 0:
            return Draft.empty()
        self.twin.reset()
        ids, chain = list(ctx.ids), []
        logits = self.twin.forward(ids).logits[0, -1]
        for _ in range(depth):
            tok = int(logits.argmax())
            chain.append(tok)
            logits = self.twin.forward([tok]).logits[0, -1]
        tokens, parents, parent = [], [], -1
        for tok in chain:  # wrong sibling, then the right one (the next depth hangs under it)
            tokens += [(tok + 1) % 96, tok]
            parents += [parent, parent]
            parent = len(tokens) - 1
        return Draft(torch.tensor([tokens]), parents=torch.tensor(parents))


def run(target, drafter, exact: bool, batch: bool = False) -> list[list[int]]:
    ps = prompts()
    if batch:
        dec = BatchDecoder(target, drafter, exact=exact, smartspec=False)
        return [r.token_ids for r in dec.generate(ps, PARAMS)]
    dec = SpeculativeDecoder(target, drafter, exact=exact)
    return [dec.generate(p, PARAMS).token_ids for p in ps]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def target(request) -> CausalLM:
    return bf16_tiny(request.param)


@pytest.fixture(scope="module")
def plain(target) -> list[list[int]]:
    """The reference: plain decoding in exact mode, one row at a time."""
    return run(target, "none", exact=True)


@pytest.fixture(scope="module")
def plain_fast(target) -> list[list[int]]:
    return run(target, "none", exact=False)


def test_exact_plain_decoding_is_plain_decoding_and_does_not_depend_on_the_batch(target, plain, plain_fast):
    """Exact mode changes nothing for one-token steps of one row (its plain decoding is plain
    decoding), and gives each prompt the same ids alone and among 11 others (without exact mode,
    batched bf16 rows round differently from one row)."""
    assert plain == plain_fast
    assert run(target, "none", exact=True, batch=True) == plain


@pytest.mark.parametrize("batch", [False, True], ids=["one-row", "batched"])
@pytest.mark.parametrize("kind", ["chain", "tree"])
def test_exact_speculation_equals_plain_decoding_in_bf16(target, plain, kind, batch):
    """Every step a wide forward (a chain never accepted, or a tree around the right path): in
    exact mode each output equals plain decoding, id for id, one row and 12 rows together."""
    drafter = WrongDrafter(target, k=6) if kind == "chain" else TwinTree()
    assert run(target, drafter, exact=True, batch=batch) == plain


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the control was measured on the CPU's bf16 kernels")
def test_control_without_exact_mode_bf16_outputs_differ(target, plain_fast):
    """The control that gives the tests above their teeth: without exact mode, the same wide
    forwards change some outputs against plain decoding (11/12 and 10/12 equal here when
    written)."""
    assert run(target, WrongDrafter(target, k=6), exact=False) != plain_fast


def test_exact_is_refused_where_it_cannot_hold():
    """A target whose attention does not run through draftsmith's is refused with a message, and
    a non-boolean `exact` is a user error, not a silent default."""
    t = bf16_tiny("llama")
    t.model.set_attn_implementation("eager")
    with pytest.raises(DraftsmithError, match="exact mode needs"):
        SpeculativeDecoder(t, "none", exact=True)
    with pytest.raises(DraftsmithError, match="exact must be True or False"):
        SpeculativeDecoder(bf16_tiny("llama"), "none", exact="yes")


def test_exact_with_a_sliding_window_bf16():
    """A target mixing sliding-window and full layers (tiny Gemma 3, window 8, prompts longer than
    it): plain decoding gives sliding layers every key and a mask, so exact mode does the same per
    query; chains and trees, one row and batched, equal plain decoding."""
    from tests.integration.test_sliding_window import tiny_gemma3

    g = tiny_gemma3(std=0.02)
    g.model.to(torch.bfloat16)
    t = CausalLM(g.model, None, g.name)
    ps = [p for p in prompts(6, seed=1)]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    plain = [SpeculativeDecoder(t, "none").generate(p, params).token_ids for p in ps]
    for drafter in (WrongDrafter(t, k=5), TwinTree()):
        assert [SpeculativeDecoder(t, drafter, exact=True).generate(p, params).token_ids for p in ps] == plain
    batch = BatchDecoder(t, WrongDrafter(t, k=5), exact=True, smartspec=False)
    assert [r.token_ids for r in batch.generate(ps, params)] == plain


def test_exact_seeded_sampling_does_not_depend_on_the_batch(target):
    """Seeded sampling in exact mode: a row's samples are the same alone and among 5 others, even
    with SmartSpec choosing the batch's draft length from the batch size and measured timings (a
    sampled row keeps its own draft length: the batch's would change which random numbers it
    draws). The bug: the same seed sampled differently depending on the other requests."""
    ps = prompts(6, seed=2)
    params = SamplingParams(temperature=1.0, max_new_tokens=24, ignore_eos=True)
    cost = lambda rows, width: 1.0 + 0.3 * rows * width  # noqa: E731 - wide batched steps are dear

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(len(ps))]

    def decoder():
        return BatchDecoder(target, WrongDrafter(target, k=6), exact=True, cost=cost)

    alone = [decoder().generate([p], params, [g])[0].token_ids for p, g in zip(ps, gens())]
    together = [r.token_ids for r in decoder().generate(ps, params, gens())]
    assert together == alone


def test_bench_compares_exact_methods_with_exact_plain_decoding(target, monkeypatch):
    """`bench` with a method in exact mode (`ngram:exact=true`) adds `none` in exact mode as that
    method's reference and reports "= none" against it (the bug it guards: exact methods compared
    with plain decoding outside exact mode, whose bf16 rounding differs, reading as mismatches)."""
    from draftsmith.bench.runner import MethodSpec, run_bench
    from draftsmith.data.questions import Question

    monkeypatch.setattr(target, "encode", lambda x, **_: [ord(c) % 96 for c in x][:24] if isinstance(x, str) else list(x))
    qs = [Question(str(i), "writing", (p,)) for i, p in enumerate(["the cat sat on the mat " * 3, "abcabcabc abc"])]
    specs = [MethodSpec.parse("none"), MethodSpec.parse("ngram:exact=true")]
    records = run_bench(target, qs, specs, SamplingParams(max_new_tokens=16, ignore_eos=True), warmup=0)
    methods = [r["method"] for r in records]
    assert methods[:3] == ["none", "none:exact=true", "ngram:exact=true"]
    exact = [r for r in records if r["method"] == "ngram:exact=true"]
    assert exact and all(r["reference"] == "none:exact=true" and r["matches_baseline"] for r in exact)
    assert all(r["reference"] == "none" for r in records if r["method"] == "none")
