"""Speculation under a memory budget (policy/memory.py, SpecMemo): the plan's arithmetic, drafts
cut to what fits while the output stays the target's, rows refused or kept waiting with a clear
message, and the server's queue holding a request until memory frees."""

from __future__ import annotations

import pytest
import torch

from draftsmith import BatchDecoder, Draft, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.errors import DraftsmithError
from draftsmith.policy.memory import MemoryBudgetError, MemoryBusy, kv_bytes_per_token, parse_size, plan
from tests.conftest import plain_ids, random_heads, tiny_model

PROMPT = [5, 17, 3, 42, 5, 17, 3] * 3


def _plan(target, drafter="ngram"):
    d = build_drafter(drafter) if isinstance(drafter, str) else drafter
    d.bind(target)
    return plan(target, d, 1 << 40)


def _budget(target, drafter, tokens: int, nodes: int, rows: int = 1) -> int:
    """The bytes that let `rows` rows of `tokens` context each verify `nodes` draft nodes."""
    d = build_drafter(drafter) if isinstance(drafter, str) else drafter
    d.bind(target)
    p = plan(target, d, 1 << 40)
    return p.weights + rows * tokens * p.per_token + rows * (nodes + 1) * p.per_node


def test_sizes_parse_and_bad_sizes_are_clear_errors():
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("800MiB") == 800 << 20
    assert parse_size("512m") == 512_000_000 and parse_size("400") == 400 << 20 and parse_size(4096) == 4096 and parse_size("2 GiB") == 2 << 30
    for bad in ("", "lots", "-1GB", "0", "3 parsecs", 0, -5):
        with pytest.raises(DraftsmithError, match="memory budget"):
            parse_size(bad)


def test_the_plan_counts_every_weight_once_and_the_kv_of_every_layer():
    """Draft heads share the target's LM head and embeddings: counted once. A draft model's own
    weights and KV cache are counted beside the target's (bug guarded: a plan that ignored the
    drafter would let a draft model blow the budget)."""
    target = tiny_model("llama")
    own = sum(t.numel() * t.element_size() for t in list(target.model.parameters()) + list(target.model.buffers()))
    c = target.config
    assert kv_bytes_per_token(c, torch.float32) == 2 * c.num_hidden_layers * c.num_key_value_heads * (
        c.hidden_size // c.num_attention_heads) * 4
    none = build_drafter("none")
    none.bind(target)
    assert plan(target, none, 1 << 40).weights == own
    draft = tiny_model("llama", vocab=target.vocab_size, seed=1)
    dm = build_drafter("draft_model", model=draft, k=3)
    dm.bind(target)
    p = plan(target, dm, 1 << 40)
    assert p.weights == 2 * own and p.per_token == 2 * kv_bytes_per_token(c, torch.float32)


def test_eagle_heads_share_the_targets_lm_head(tmp_path):
    target = tiny_model("llama")
    heads = build_drafter("eagle", heads=random_heads(target, "eagle", tmp_path / "e"))
    heads.bind(target)
    none = build_drafter("none")
    none.bind(target)
    module = sum(t.numel() * t.element_size() for t in [*heads.module.parameters(), *heads.module.buffers()])
    assert plan(target, heads, 1 << 40).weights == plan(target, none, 1 << 40).weights + module


@pytest.mark.parametrize("nodes", [0, 1, 3])
def test_a_tight_budget_cuts_the_draft_and_keeps_the_output(nodes):
    """The budget leaves room for exactly `nodes` draft nodes: no step verifies more, and greedy
    output is plain decoding's (0 nodes: no drafting at all, still the same answer). The prompt is
    prefilled 2 tokens a forward, so its prefill fits beside the row's context."""
    target = tiny_model("llama")
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    budget = _budget(target, "ngram", len(PROMPT) + 40, nodes)
    dec = BatchDecoder(target, "ngram", k=6, k_max=6, smartspec=False, prefill_chunk=2, memory_budget=budget)
    seen = []
    original = dec.drafter.__class__.propose

    def spy(self, ctx):
        seen.append(ctx.max_tokens)
        return original(self, ctx)

    dec.drafter.__class__.propose = spy
    try:
        out = dec.generate([PROMPT], params)[0]
    finally:
        dec.drafter.__class__.propose = original
    assert out.token_ids == plain_ids("llama", PROMPT, 40, ignore_eos=True)
    assert max(seen, default=0) <= nodes
    if nodes == 0:
        assert out.stats.drafted == 0
    else:
        assert out.stats.drafted > 0 and max(seen) == nodes


def test_a_budget_below_the_weights_or_the_context_is_refused_with_numbers():
    target = tiny_model("llama")
    with pytest.raises(MemoryBudgetError, match="below the weights .* give at least"):
        SpeculativeDecoder(target, "ngram", memory_budget=1000)
    p = _plan(target)
    budget = p.weights + 50 * p.per_token + len(PROMPT) * p.per_prefill  # 50 tokens of context, the prompt at once
    dec = SpeculativeDecoder(target, "ngram", memory_budget=budget)
    with pytest.raises(MemoryBudgetError, match=r"context of \d+ tokens .* room for \d+ tokens"):
        dec.generate(PROMPT, SamplingParams(max_new_tokens=200, ignore_eos=True))
    out = dec.generate(PROMPT, SamplingParams(max_new_tokens=20, ignore_eos=True))  # the decoder still works
    assert out.token_ids == plain_ids("llama", PROMPT, 20, ignore_eos=True)


def test_rows_reserve_their_context_and_free_it_when_done():
    """Two rows fit, a third does not beside them (MemoryBusy: it can wait), and once the first two
    finish it runs; every output is its request's alone."""
    target = tiny_model("llama")
    tokens = len(PROMPT) + 16
    dec = BatchDecoder(target, "ngram", k_max=4, smartspec=False, prefill_chunk=2,
                       memory_budget=_budget(target, "ngram", tokens, 0, rows=2))
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    rows = [dec.add(PROMPT, params), dec.add(PROMPT[3:] + [9, 9], params)]
    with pytest.raises(MemoryBusy, match="fit once some of them finish"):
        dec.add(PROMPT[:10], params)
    while dec.rows:
        dec.step()
    assert dec.loop.memory.reserved == 0
    third = dec.add(PROMPT[:10], params)
    while dec.rows:
        dec.step()
    assert [r.result().token_ids for r in (rows[0], rows[1], third)] == [
        plain_ids("llama", p, 16, ignore_eos=True) for p in (PROMPT, PROMPT[3:] + [9, 9], PROMPT[:10])]


def test_a_row_that_fails_in_prefill_gives_its_memory_back():
    target = tiny_model("llama")
    dec = BatchDecoder(target, "ngram", smartspec=False, memory_budget=_budget(target, "ngram", 100, 2))
    with pytest.raises(DraftsmithError):
        dec.add([target.vocab_size + 5], SamplingParams(max_new_tokens=8))  # an id outside the vocabulary
    assert dec.loop.memory.reserved == 0
    with pytest.raises(DraftsmithError):  # a request refused before its row is built holds nothing either
        dec.add(PROMPT, SamplingParams(max_new_tokens=8), verifier="no-such-rule")
    assert dec.loop.memory.reserved == 0


def test_first_keeps_a_valid_draft_of_at_most_n_nodes():
    chain = Draft(torch.tensor([[4, 5, 6]]), q=torch.rand(1, 3, 8))
    assert chain.first(2).token_ids.tolist() == [[4, 5]] and chain.first(2).q.shape == (1, 2, 8)
    tree = Draft(torch.tensor([[1, 2, 3, 4]]), parents=torch.tensor([-1, -1, 0, 1]))  # deterministic
    cut = tree.first(3)
    assert cut.token_ids.tolist() == [[1, 2, 3]] and cut.parents.tolist() == [-1, -1, 0]
    sampled = Draft(torch.tensor([[1, 2, 3, 4]]), q=torch.rand(1, 4, 8), parents=torch.tensor([-1, -1, 0, 1]))
    path = sampled.first(3)  # sampled siblings are not dropped one by one: the first-child path instead
    assert path.parents is None and path.token_ids.tolist() == [[1, 3]]
    torch.testing.assert_close(path.q, sampled.q[:, [0, 2]])
