"""The `suffix` drafter (SuffixDecoding): its suffix structure's counts, what a match proposes and
with which probabilities, the adaptive tree size, cross-request reuse, bounded memory under a
long stream of requests, and what forks share."""

import random
import tracemalloc

import pytest
import torch

from draftsmith import BatchDecoder, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.drafters.suffix import SuffixCache, SuffixTrie
from draftsmith.errors import DraftsmithError
from draftsmith.tree import Tree
from draftsmith.types import VerifyResult
from tests.conftest import tiny_model

GREEDY = SamplingParams()


def ctx(ids, max_tokens=16):
    return DraftContext(list(ids), max_tokens, GREEDY)


def paths(draft):
    """Each node's tokens from the root's child down to it."""
    toks = draft.token_ids[0].tolist()
    parents = draft.parents.tolist() if draft.parents is not None else list(range(-1, len(toks) - 1))
    out = []
    for i, p in enumerate(parents):
        out.append((out[p] if p >= 0 else ()) + (toks[i],))
    return out


# ----- the structure ---------------------------------------------------------------------------
def test_counts_survive_interleaved_appends_splits_and_removals():
    """Guards the incremental suffix trie: after any mix of growing sequences (several open at
    once, periodic text that splits a sequence's own tails), closing and removing, every count,
    tail and size equals a recount from the sequences held."""
    rng = random.Random(0)
    for depth in (2, 3, 6):
        trie = SuffixTrie(depth)
        live, opened = [], []
        for step in range(400):
            r = rng.random()
            if r < 0.15 or not opened:
                sid = trie.start([rng.randrange(3) for _ in range(rng.randrange(0, 5))])
                opened.append(sid)
                live.append(sid)
            elif r < 0.8:
                sid = rng.choice(opened)
                if rng.random() < 0.3:  # periodic runs: a suffix meets its own earlier occurrence
                    seq = trie.seqs[sid]
                    trie.extend(sid, seq[-2:] * 2 if len(seq) >= 2 else [0, 0])
                else:
                    trie.append(sid, rng.randrange(3))
            elif r < 0.9:
                sid = opened.pop(rng.randrange(len(opened)))
                trie.close(sid)
            else:
                closed = [s for s in live if s not in opened]
                if closed:
                    sid = rng.choice(closed)
                    trie.remove(sid)
                    live.remove(sid)
            if step % 20 == 0:
                trie.check()
        trie.check()
        for sid in list(live):
            trie.close(sid)
            trie.remove(sid)
        trie.check()
        assert (trie.nodes, trie.tails, trie.tokens, trie.root.count, trie.root.children) == (0, 0, 0, 0, {})


# ----- what a match proposes -------------------------------------------------------------------
def count(seqs, w, depth):
    """Occurrences of w (a substring of at most `depth` tokens) in the sequences."""
    n = len(w)
    if n > depth:
        return 0
    return sum(1 for s in seqs for i in range(len(s) - n + 1) if tuple(s[i:i + n]) == w)


def candidates(seqs, pattern, depth, cap, own_end=None):
    """Every continuation pi of `pattern` with its path probability, by brute force: the product
    of count(pattern + pi[:i+1]) / count(pattern + pi[:i]), where the occurrence ending at the end
    of `own_end` (the context itself, in the row's own structure) is not counted below."""
    out = {}

    def den(w):
        return count(seqs, w, depth) - (own_end is not None and tuple(own_end[len(own_end) - len(w):]) == w)

    def grow(pi, prob):
        w = tuple(pattern) + pi
        if len(pi) >= cap or len(w) >= depth or den(w) <= 0:
            return
        nxt = {s[i + len(w)] for s in seqs for i in range(len(s) - len(w)) if tuple(s[i:i + len(w)]) == w}
        for x in sorted(nxt):
            q = prob * count(seqs, w + (x,), depth) / den(w)
            out[pi + (x,)] = q
            grow(pi + (x,), q)

    grow((), 1.0)
    return out


def brute_best(sources, ids, depth, cap, budget, min_prob):
    """max over structures and match lengths of the sum of the `budget` largest path
    probabilities >= min_prob (greedy best-first takes exactly those: probabilities only fall
    along a path)."""
    best = (0.0, None)
    for label, seqs, own in sources:
        for p in range(1, min(depth - 1, len(ids)) + 1):
            cand = candidates(seqs, ids[len(ids) - p:], depth, cap, own)
            probs = sorted((q for q in cand.values() if q >= min_prob and q > 0), reverse=True)[:budget(p)]
            if sum(probs) > best[0] + 1e-9:
                best = (sum(probs), (label, p, cand))
    return best


def test_matching_proposes_the_most_frequent_continuations_with_their_frequencies():
    """Guards matching and tree growth against a brute-force count over the texts: the proposed
    tree is well formed (topological, distinct siblings, within the depth cap), each node's path
    probability is the empirical one (the context's own occurrence not counted), the tree holds
    the most probable continuations above min_token_prob, and its score (expected accepted
    tokens) is the best over every match length and both structures."""
    rng = random.Random(1)
    trees = 0
    for trial in range(120):
        depth = rng.choice([4, 6, 8])
        d = build_drafter("suffix", max_depth=depth, max_cached_requests=4, global_prompt=0,
                          max_spec_offset=rng.choice([0, 2]), min_token_prob=rng.choice([0.0, 0.1, 0.3]),
                          max_nodes=rng.choice([3, 24]))
        d.bind(None)
        history = []
        for _ in range(rng.randrange(0, 6)):
            seq = [rng.randrange(4) for _ in range(rng.randrange(1, 15))]
            d.cache.add(seq)
            history.append(seq)
        history = history[-4:]
        ids = [rng.randrange(4) for _ in range(rng.randrange(1, 25))]
        row = d.fork()
        row.prefill(ids[:rng.randrange(1, len(ids) + 1)])  # the rest arrives through propose's sync
        cap = rng.randrange(1, 6)
        draft = row.propose(ctx(ids, cap))
        assert draft.q is None
        want, info = brute_best([("request", [ids], ids), ("global", history, None)], ids, depth, cap, row.budget,
                                row.min_token_prob)
        if info is None:
            assert draft.size == 0, trial
            continue
        assert draft.size > 0
        label, p, cand, probs = *info[:2], info[2], row.last_match[2]
        got = paths(draft)
        tree = Tree.from_parents(draft.parents.tolist() if draft.parents is not None else range(-1, draft.size - 1))
        assert max(tree.depth) <= cap
        assert all(len(set(draft.token_ids[0, kids].tolist())) == len(kids) for kids in tree.children.values()), \
            "siblings repeat a token"
        assert abs(sum(probs) - want) < 1e-9, (trial, row.last_match[:2], (label, p))
        source, p_got = row.last_match[:2]
        seqs, own = ([ids], ids) if source == "request" else (history, None)
        exact = candidates(seqs, ids[len(ids) - p_got:], depth, cap, own)
        for path, q in zip(got, probs):
            assert path in exact and abs(exact[path] - q) < 1e-9, (trial, path, q, exact.get(path))
        left = [q for path, q in exact.items() if path not in got and q >= row.min_token_prob and q > 0]
        assert not left or max(left) <= min(probs) + 1e-12 or len(got) == row.budget(p_got)
        trees += draft.parents is not None
    assert trees > 5, "the random cases never made a tree"


def test_min_token_prob_drops_rare_continuations_and_frequency_orders_siblings():
    """Guards frequency ranking and pruning: after [1 2 3] three times and [1 2 4] once, the
    context ...1 2 drafts 3 (3/4) before 4 (1/4), and min_token_prob 0.3 drops 4."""
    for min_prob, want in ((0.1, [(3,), (4,)]), (0.3, [(3,)])):
        d = build_drafter("suffix", min_token_prob=min_prob, max_spec_offset=2, global_prompt=0)
        d.bind(None)
        for tail in (3, 3, 4, 3):
            d.cache.add([1, 2, tail])
        row = d.fork()
        row.prefill([9, 1, 2])
        draft = row.propose(ctx([9, 1, 2]))
        assert paths(draft) == want
        assert row.last_match[0] == "global" and row.last_match[1] == 2
        assert row.last_match[2] == pytest.approx([0.75, 0.25][:len(want)])


def test_draft_size_grows_with_match_length():
    """Guards SuffixDecoding's adaptive size: with max_spec_factor 1 a match of p tokens earns a
    tree of p nodes (a long text seen once: the match's length is all that changes)."""
    text = list(range(100, 160))
    d = build_drafter("suffix", max_depth=40, max_nodes=40, min_token_prob=0.0, max_spec_offset=0)
    d.bind(None)
    d.cache.add(text)
    sizes = []
    for p in (1, 2, 4, 8, 16):
        row = d.fork()
        ids = [7, 8] + text[20 - p:20]  # the last p tokens match, the one before them does not
        row.prefill(ids)
        draft = row.propose(ctx(ids, 32))
        assert row.last_match[:2] == ("global", p)
        assert draft.token_ids[0].tolist() == text[20:20 + p]
        sizes.append(draft.size)
    assert sizes == [1, 2, 4, 8, 16]
    half = build_drafter("suffix", max_depth=40, max_nodes=40, min_token_prob=0.0, max_spec_factor=0.5,
                         max_spec_offset=1)
    assert [half.budget(p) for p in (1, 2, 4, 8, 16, 200)] == [1, 2, 3, 5, 9, 40]


def test_depth_is_capped_by_max_tokens_and_structure_depth():
    """Guards the depth rule: never deeper than ctx.max_tokens, and match + draft <= max_depth."""
    d = build_drafter("suffix", max_depth=8, min_token_prob=0.0, max_spec_offset=10)
    d.bind(None)
    row = d.fork()
    ids = list(range(30)) * 2
    row.prefill(ids)
    assert row.propose(ctx(ids, 0)).size == 0
    for cap in (1, 3, 20):
        draft = row.propose(ctx(ids, cap))
        assert 0 < draft.size <= min(cap, 7)
        assert row.last_match[1] + draft.size <= 8


# ----- across requests -------------------------------------------------------------------------
def test_a_repeated_question_drafts_its_earlier_answer():
    """Guards cross-request reuse: the second time a decoder sees a prompt, the global structure
    holds the first answer and drafts it (nearly every draft token accepted, several tokens per
    step), with output ids unchanged."""
    target = tiny_model("llama")
    dec = SpeculativeDecoder(target, "suffix")
    prompt = list(range(10, 40))
    first = dec.generate(prompt, SamplingParams(max_new_tokens=48))
    second = dec.generate(prompt, SamplingParams(max_new_tokens=48))
    assert second.token_ids == first.token_ids
    assert second.stats.acceptance_rate > 0.9
    assert second.stats.tau >= 8 > first.stats.tau * 2
    alone = SpeculativeDecoder(target, "suffix:max_cached_requests=0").generate(prompt, SamplingParams(max_new_tokens=48))
    assert alone.stats.tau == first.stats.tau  # nothing cached: no reuse


def test_rows_of_a_batch_draft_from_each_others_finished_requests():
    """Guards the shared global structure in the server: a row added after another finished
    drafts that row's answer."""
    target = tiny_model("qwen2")
    dec = BatchDecoder(target, "suffix", k_max=8, smartspec=False)
    prompt = [5, 17, 3, 42, 5, 9, 11, 60, 2]
    a = dec.generate([prompt], SamplingParams(max_new_tokens=40))[0]
    b = dec.generate([prompt, [1, 2]], SamplingParams(max_new_tokens=40))[0]
    assert b.token_ids == a.token_ids
    assert b.stats.tau >= 4 > a.stats.tau


def run_request(row, rng, vocab=40):
    prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
    row.prefill(prompt)
    ids = list(prompt)
    for _ in range(rng.randrange(1, 6)):
        row.propose(ctx(ids, 6))
        new = [rng.randrange(vocab) for _ in range(rng.randrange(1, 8))]
        row.observe(VerifyResult(torch.tensor([new]), len(new) - 1, len(new) - 1))
        ids += new
    row.finish()
    return ids


def test_memory_stays_bounded_under_a_long_stream_of_requests():
    """Guards eviction: 500 random requests through max_cached_requests=8 keep 8 requests, the
    tokens of exactly those, at most max_depth nodes per token, live memory flat between request
    100 and 500; evicting everything empties the structure (the memory is really freed)."""
    rng = random.Random(3)
    d = build_drafter("suffix", max_depth=12, max_cached_requests=8)
    d.bind(None)
    cache = d.cache
    kept = []
    tracemalloc.start()
    try:
        for i in range(500):
            kept = (kept + [run_request(d.fork(), rng)])[-8:]
            if i == 99:
                early = tracemalloc.get_traced_memory()[0]
            assert cache.requests <= 8
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert cache.trie.tokens == sum(len(k) for k in kept)
    assert cache.trie.nodes + cache.trie.tails <= 12 * cache.trie.tokens
    assert late < early * 1.5 + 200_000, (early, late)
    cache.trie.check()
    while cache.fifo:
        cache.trie.remove(cache.fifo.popleft())
    assert (cache.trie.nodes, cache.trie.tails, cache.trie.tokens, cache.trie.root.children) == (0, 0, 0, {})


def test_token_budget_evicts_oldest_requests_first():
    """Guards max_cached_tokens: the oldest requests go until the total fits; a request longer
    than the budget keeps its last tokens."""
    cache = SuffixCache(max_depth=6, max_requests=100, max_tokens=25)
    for i in range(6):
        cache.add([i] * 10)
    assert cache.requests == 2 and cache.trie.tokens == 20
    assert [cache.trie.seqs[s][0] for s in cache.fifo] == [4, 5]
    cache.add(list(range(40)))
    assert cache.requests == 1 and cache.trie.seqs[cache.fifo[0]] == list(range(15, 40))
    cache.trie.check()


def test_forks_share_the_global_structure_but_not_row_state():
    """Guards fork(): rows share one global structure (what one row finished, another drafts
    from) while each row's prompt and output stay its own."""
    d = build_drafter("suffix", global_prompt=0, min_token_prob=0.0)
    d.bind(None)
    a, b = d.fork(), d.fork()
    assert a.cache is b.cache is d.cache and a.local is None
    a.prefill([1, 2, 3, 4, 5, 6])
    b.prefill([7, 8, 9])
    assert a.local is not b.local
    assert b.propose(ctx([7, 8, 9, 1, 2, 3])).size == 0  # a's prompt is a's alone
    e = a.fork()  # a fork of a running row starts clean too
    assert e.cache is d.cache and e.local is None and e.propose(ctx([1, 2, 3])).size == 0
    a.observe(VerifyResult(torch.tensor([[20, 21, 22, 23]]), 3, 3))
    a.finish()
    assert d.cache.requests == 1 and d.cache.trie.seqs[d.cache.fifo[0]] == [20, 21, 22, 23]  # its output only
    c = d.fork()
    c.prefill([5, 20, 21])
    assert c.propose(ctx([5, 20, 21])).token_ids[0].tolist() == [22, 23]
    assert c.last_match[0] == "global"


def test_bad_options_are_clear_errors():
    """Guards option validation: each bad value names the option in a DraftsmithError."""
    for opt, val in [("max_depth", 1), ("max_nodes", 0), ("max_spec_factor", -1), ("max_spec_offset", float("nan")),
                     ("min_token_prob", 1.5), ("max_cached_requests", -1), ("max_cached_tokens", 0),
                     ("global_prompt", -2), ("max_depth", 2.5), ("max_nodes", True)]:
        with pytest.raises(DraftsmithError, match=opt):
            build_drafter("suffix", **{opt: val})
    with pytest.raises(DraftsmithError, match="no option"):
        build_drafter("suffix:depth=3")
