"""Regression tests for the problems the engine redesign fixed. Each test's docstring names the
bug it guards (the issue's item)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from draftsmith import BatchDecoder, CausalLM, Draft, DrafterBase, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.drafters import NgramDrafter
from draftsmith.errors import DraftsmithError
from draftsmith.policy import AdaptiveLength
from tests.conftest import random_heads, tiny_model, tiny_tokenizer

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [7] * 12, list(range(10, 40))]
BAD = 63  # a prompt starting with this token gets the bad behaviour under test


def plain(target, prompt, params):
    return SpeculativeDecoder(target, "none").generate(prompt, params).token_ids


def greedy(n: int = 20) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True)


# ----- item 3: heads loaded per request ----------------------------------------------------------
def test_heads_are_loaded_once_for_every_row(monkeypatch, tmp_path):
    """Item 3: the heads drafters loaded their weights from disk for every request joining the
    server's batch. With BatchDecoder, four rows load the heads once, and each row is still the
    target's own output."""
    from draftsmith.drafters.heads import MedusaDrafter

    target = tiny_model("llama")
    heads = random_heads(target, "medusa", tmp_path / "medusa")
    namespace = MedusaDrafter.bind.__globals__  # where bind looks load_heads up
    real, calls = namespace["load_heads"], []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(f"{MedusaDrafter.bind.__module__}.load_heads", counting)
    dec = BatchDecoder(target, "medusa", heads=heads, k_max=3, smartspec=False)
    prompts = PROMPTS + [[9, 8, 7, 9, 8]]
    rows = [dec.add(p, greedy(12)) for p in prompts]
    while dec.rows:
        dec.step()
    assert len(calls) == 1, f"load_heads called {len(calls)} times for {len(rows)} rows"
    for p, r in zip(prompts, rows):
        assert r.error is None and r.new_ids == plain(target, p, greedy(12))


# ----- item 4: a huge k hung ------------------------------------------------------------------
@pytest.mark.parametrize("adaptive", [True, False])
def test_a_huge_draft_length_costs_nothing(adaptive):
    """Item 4: `draft_model:k=1000000000` hung (the adaptive search looped over every k). The
    draft is capped by the budget and the context, and the search stops at its peak."""
    target = tiny_model("llama")
    start = time.perf_counter()
    dec = SpeculativeDecoder(target, "draft_model", model=tiny_model("llama", seed=1), k=10**9, adaptive=adaptive,
                             confidence=0)
    out = dec.generate(PROMPTS[0], greedy(16))
    assert time.perf_counter() - start < 30, "16 tokens with k=10**9 took over 30 s"
    assert out.token_ids == plain(target, PROMPTS[0], greedy(16))


def test_adaptive_length_search_stops_at_its_peak():
    """Item 4: AdaptiveLength.choose looped over every k up to the cap."""
    policy = AdaptiveLength(cost_ratio=0.05)
    start = time.perf_counter()
    k = policy.choose(10**9)
    assert time.perf_counter() - start < 1.0
    assert 1 <= k < 1000
    policy.hits = policy.trials = 50.0  # alpha at its 0.999 ceiling: the peak is still finite
    start = time.perf_counter()
    assert policy.choose(10**9) < 10**6 and time.perf_counter() - start < 5.0


# ----- item 6: a bad row took the batch down -----------------------------------------------------
def _bad_draft(mode: str, vocab: int) -> Draft:
    if mode == "out-of-range":
        return Draft(torch.tensor([[1, vocab + 3]]))
    if mode == "negative":
        return Draft(torch.tensor([[2, -1]]))
    if mode == "parent-after-node":
        return Draft(torch.tensor([[1, 2, 3]]), parents=torch.tensor([-1, 2, 0]))
    if mode == "parents-wrong-length":
        return Draft(torch.tensor([[1, 2, 3]]), parents=torch.tensor([-1, 0]))
    if mode == "float-ids":
        return Draft(torch.tensor([[1.0, 2.0]]))
    raise AssertionError(mode)


BAD_DRAFTS = {
    "out-of-range": "out of range",
    "negative": "out of range",
    "parent-after-node": "parent",
    "parents-wrong-length": "3 tokens but 2 parents",
    "float-ids": "must be integers",
}


class BadRowDrafter(NgramDrafter):
    """Prompt lookup, except for rows whose prompt starts with BAD: those get `mode`'s draft."""

    name = "bad-row"

    def __init__(self, mode: str, vocab: int):
        super().__init__(k=4)
        self.mode, self.vocab = mode, vocab

    def propose(self, ctx):
        if ctx.ids[0] == BAD:
            return self.mode(ctx) if callable(self.mode) else _bad_draft(self.mode, self.vocab)
        return super().propose(ctx)


def _one_bad_row(target, drafter, bad_params: SamplingParams):
    """Two healthy greedy rows and one bad row in one batch; the healthy rows must equal their
    output alone. Returns the bad row."""
    dec = BatchDecoder(target, drafter, k_max=4, smartspec=False)
    a = dec.add(PROMPTS[0], greedy(24))
    bad = dec.add([BAD, 1, 2, 3], bad_params, torch.Generator().manual_seed(0))
    b = dec.add(PROMPTS[1], greedy(24))
    while dec.rows:
        dec.step()
    for p, r in ((PROMPTS[0], a), (PROMPTS[1], b)):
        assert r.error is None, r.error
        assert r.new_ids == plain(target, p, greedy(24))
    assert bad.done and bad.stats.finish_reason == "error"
    return bad


@pytest.mark.parametrize("mode", list(BAD_DRAFTS))
def test_a_malformed_draft_fails_its_row_alone(mode):
    """Item 6: a bad row took the batch down (an out-of-range or negative id reached the
    embedding, a malformed tree reached the mask, a float tensor reached the verifier)."""
    target = tiny_model("llama")
    bad = _one_bad_row(target, BadRowDrafter(mode, target.vocab_size), greedy(24))
    assert bad.error is not None and BAD_DRAFTS[mode] in bad.error, bad.error
    assert "bad-row" in bad.error  # the message names the drafter


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_draft_model_with_a_wider_head_drafts_target_ids(tokenizer, temperature):
    """Item 6: a draft model whose logits are wider than the target's (same tokenizer, padded
    embeddings) drafted ids the target does not have. It drafts only target ids and, at
    temperature 0, matches plain decoding."""
    V = 320
    assert len(tokenizer) <= V
    target = CausalLM(tiny_model("llama", vocab=V).model, tokenizer, name="tiny-tok")
    draft = CausalLM(tiny_model("llama", vocab=V + 16, seed=1).model, tokenizer, name="tiny-tok-wide")
    params = SamplingParams(temperature=temperature, max_new_tokens=24, ignore_eos=True)
    from draftsmith.drafters import DraftModelDrafter

    seen: list[int] = []

    class Spy(DraftModelDrafter):  # every fork writes its drafted ids down
        def propose(self, ctx):
            d = super().propose(ctx)
            seen.extend(d.token_ids[0].tolist())
            return d

    drafter = Spy(model=draft, k=4, adaptive=False, confidence=0)
    dec = SpeculativeDecoder(target, drafter)
    prompt = PROMPTS[0]
    out = dec.generate(prompt, params, torch.Generator().manual_seed(0))
    assert len(out.token_ids) == 24 and out.stats.drafted > 0
    assert seen and all(0 <= t < V for t in seen)
    if temperature == 0:
        assert out.token_ids == plain(target, prompt, params)
        dec = BatchDecoder(target, Spy(model=draft, k=4, adaptive=False, confidence=0), k_max=4, smartspec=False)
        outs = dec.generate(PROMPTS[:2], params)
        assert [o.token_ids for o in outs] == [plain(target, p, params) for p in PROMPTS[:2]]
        assert all(0 <= t < V for t in seen)


# ----- item 7: nothing checked a drafter's q ----------------------------------------------------
def _q_draft(mode: str, vocab: int, ctx) -> Draft:
    q = torch.full((1, 2, vocab), 1.0 / vocab)
    ids = torch.tensor([[3, 4]])
    if mode == "sums-to-0.25":
        q = q * 0.25
    elif mode == "negative":
        q[0, 0, 5], q[0, 0, 6] = -0.01, q[0, 0, 6] + 0.01
    elif mode == "nan":
        q[0, 1, 7] = float("nan")
    elif mode == "drawn-has-q-0":
        q[0, 1] = 0.0
        q[0, 1, 0] = 1.0  # q puts all its mass on token 0, yet token 4 was "drawn"
    elif mode == "off-by-1e-3":
        q = q * (1 + 1e-3)
    else:
        raise AssertionError(mode)
    return Draft(ids, q=q)


BAD_Q = {
    "sums-to-0.25": "must sum to 1",
    "negative": "negative probabilities",
    "nan": "NaN",
    "drawn-has-q-0": "q = 0",
}
T1 = SamplingParams(temperature=1.0, max_new_tokens=16, ignore_eos=True)


class QDrafter(DrafterBase):
    """Two tokens with the q of `mode` (every row)."""

    name = "q-drafter"
    k = 2

    def __init__(self, mode: str, vocab: int):
        self.mode, self.vocab = mode, vocab

    def propose(self, ctx):
        return _q_draft(self.mode, self.vocab, ctx) if ctx.max_tokens >= 2 else Draft.empty()


@pytest.mark.parametrize("mode", list(BAD_Q))
def test_a_bad_q_fails_the_generation_with_a_clear_message(mode):
    """Item 7: nothing checked a drafter's q (a q summing to 0.25 made rejection sampling accept
    too often and silently bent the output distribution; NaN or negative q reached the sampler)."""
    target = tiny_model("llama")
    dec = SpeculativeDecoder(target, QDrafter(mode, target.vocab_size))
    with pytest.raises(DraftsmithError, match=BAD_Q[mode]) as info:
        dec.generate(PROMPTS[0], T1, torch.Generator().manual_seed(0))
    assert "q-drafter" in str(info.value)


@pytest.mark.parametrize("mode", list(BAD_Q))
def test_a_bad_q_fails_its_row_alone(mode):
    """Item 7, batched: the row whose drafter's q is bad fails with the message, the others go on."""
    target = tiny_model("llama")
    drafter = BadRowDrafter(lambda ctx: _q_draft(mode, target.vocab_size, ctx), target.vocab_size)
    bad = _one_bad_row(target, drafter, T1)
    assert bad.error is not None and BAD_Q[mode] in bad.error, bad.error


def test_a_q_within_tolerance_is_renormalised():
    """Item 7: a q summing to 1 +- 1e-3 (float rounding) is renormalised, not refused."""
    target = tiny_model("llama")
    out = SpeculativeDecoder(target, QDrafter("off-by-1e-3", target.vocab_size)).generate(
        PROMPTS[0], T1, torch.Generator().manual_seed(0))
    assert len(out.token_ids) == 16 and out.stats.drafted > 0 and out.stats.finish_reason == "length"
    dec = BatchDecoder(target, QDrafter("off-by-1e-3", target.vocab_size), k_max=2, smartspec=False)
    rows = [dec.add(p, T1, torch.Generator().manual_seed(i)) for i, p in enumerate(PROMPTS[:2])]
    while dec.rows:
        dec.step()
    assert all(r.error is None and len(r.new_ids) == 16 for r in rows)


# ----- item 8: two generations on one target ---------------------------------------------------
def _text_target(tokenizer):
    return CausalLM(tiny_model("llama", vocab=320).model, tokenizer, name="tiny-tok")


@pytest.mark.parametrize("drafter", ["draft_model", "ngram"])
def test_interleaved_streams_each_continue_their_own_sequence(tokenizer, drafter):
    """Item 8: two generations on one target corrupted each other (a shared KV cache and drafter
    state). Two stream() generators on one decoder, advanced alternately, each equal their
    generate() alone."""
    target = _text_target(tokenizer)
    options = {"model": tiny_model("llama", vocab=320, seed=1), "k": 3, "adaptive": False, "confidence": 0} \
        if drafter == "draft_model" else {"k": 3}
    dec = SpeculativeDecoder(target, drafter, **options)
    prompts = [PROMPTS[0], PROMPTS[2]]
    alone = [dec.generate(p, greedy(24)).token_ids for p in prompts]
    streams = [dec.stream(p, greedy(24)) for p in prompts]
    got: list[list[int]] = [[], []]
    results = [None, None]
    steps = 0
    while any(r is None for r in results):
        for i, s in enumerate(streams):
            if results[i] is None:
                chunk = next(s)
                got[i] += chunk.token_ids
                results[i] = chunk.result
                steps += 1
    assert steps > 6  # the streams really interleaved, step by step
    assert got == alone and [r.token_ids for r in results] == alone
    assert alone == [plain(target, p, greedy(24)) for p in prompts]


def test_two_threads_on_one_decoder_each_get_their_own_output():
    """Item 8: two threads calling generate on one decoder at once corrupted each other."""
    target = tiny_model("llama")
    dec = SpeculativeDecoder(target, "draft_model", model=tiny_model("llama", seed=1), k=3, adaptive=False,
                             confidence=0)
    prompts = [PROMPTS[0], PROMPTS[2]]
    alone = [dec.generate(p, greedy(32)).token_ids for p in prompts]
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            barrier.wait()
            got[i] = dec.generate(prompts[i], greedy(32)).token_ids
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [got[0], got[1]] == alone


# ----- the drafter lifecycle --------------------------------------------------------------------
class OnlyPropose:
    """A user's drafter with nothing but propose (no DrafterBase): prompt lookup."""

    def __init__(self):
        self.lookup = NgramDrafter(k=3)

    def propose(self, ctx):
        return self.lookup.propose(ctx)


def test_an_object_with_only_propose_is_a_drafter_one_row_at_a_time():
    """Lifecycle: a user object with only `propose` works in SpeculativeDecoder (twice in a row);
    in a BatchDecoder it cannot be forked, so a second concurrent row is a clear error, and a row
    may join again once the first left."""
    target = tiny_model("llama")
    dec = SpeculativeDecoder(target, OnlyPropose())
    for p in PROMPTS[:2]:
        assert dec.generate(p, greedy(20)).token_ids == plain(target, p, greedy(20))
    batch = BatchDecoder(target, OnlyPropose(), k_max=3, smartspec=False)
    first = batch.add(PROMPTS[0], greedy(20))
    with pytest.raises(DraftsmithError, match="fork"):
        batch.add(PROMPTS[1], greedy(20))
    while batch.rows:
        batch.step()
    assert first.error is None and first.new_ids == plain(target, PROMPTS[0], greedy(20))
    again = batch.add(PROMPTS[1], greedy(20))
    while batch.rows:
        batch.step()
    assert again.error is None and again.new_ids == plain(target, PROMPTS[1], greedy(20))


class TrackedNgram(NgramDrafter):
    """Prompt lookup whose forks are counted: made by fork, released by finish."""

    name = "tracked-ngram"

    def __init__(self):
        super().__init__(k=3)
        self.live: list[int] = []  # shared by every fork

    def fork(self):
        other = super().fork()
        self.live.append(id(other))
        return other

    def finish(self):
        self.live.remove(id(self))


def test_an_abandoned_stream_frees_its_drafter_fork(tokenizer):
    """Lifecycle: a stream closed after 2 chunks left its row (and its drafter fork) behind."""
    target = _text_target(tokenizer)
    tracked = TrackedNgram()
    dec = SpeculativeDecoder(target, tracked)
    stream = dec.stream(PROMPTS[1], greedy(40))
    chunks = [next(stream), next(stream)]
    assert all(c.result is None for c in chunks) and len(tracked.live) == 1
    stream.close()
    assert tracked.live == []  # cancelled: the fork was finished
    assert dec.generate(PROMPTS[0], greedy(20)).token_ids == plain(target, PROMPTS[0], greedy(20))
    assert tracked.live == []
    bare = SpeculativeDecoder(target, OnlyPropose())  # one row at a time: an abandoned row must not hold it
    s = bare.stream(PROMPTS[1], greedy(40))
    next(s), next(s)
    s.close()
    assert bare.generate(PROMPTS[0], greedy(20)).token_ids == plain(target, PROMPTS[0], greedy(20))
