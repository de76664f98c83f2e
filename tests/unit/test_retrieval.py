"""Pieces of the retrieval drafters: the candidate trie, Hierarchy Drafting's databases and
their order, Lookahead's Jacobi window and n-gram pool."""

import torch

from draftsmith.drafters import build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.drafters.hierarchy import NgramTable, count_table
from draftsmith.drafters.trie import merge_paths
from draftsmith.types import SamplingParams, VerifyResult


def ctx(ids, max_tokens=8):
    return DraftContext(list(ids), max_tokens, SamplingParams())


def test_merge_paths_shares_prefixes_and_respects_budgets():
    d = merge_paths([(1, 2, 3), (1, 2, 4), (5,)], max_nodes=10, max_depth=3)
    assert d.token_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert d.parents.tolist() == [-1, 0, 1, 1, -1]
    assert merge_paths([(1, 2, 3)], 10, 3).parents is None  # one candidate: a chain
    assert merge_paths([(1, 2, 3), (4, 5)], max_nodes=4, max_depth=2).token_ids.tolist() == [[1, 2, 4, 5]]
    assert merge_paths([], 4, 2).size == 0


def test_ngram_table_prefers_longest_match_and_newest_continuation():
    t = NgramTable(max_ngram=2, k=2, keep=2)
    t.add([1, 2, 3, 1, 2, 4, 9, 2, 5])
    assert t.lookup([7, 1, 2]) == [(4, 9), (3, 1)]  # after (1, 2): newest first
    assert t.lookup([8, 2]) == [(5,), (4, 9)]  # no (8, 2): falls back to (2,)
    static = count_table([[1, 2, 3, 1, 2, 3, 1, 2, 4]], max_ngram=2, k=1, keep=2)
    assert static.lookup([1, 2]) == [(3,)]  # (1, 2) -> 3 twice, -> 4 once (singletons dropped)


def test_hierarchy_queries_context_then_session():
    d = build_drafter("hierarchy", k=2, max_ngram=1, max_candidates=2, corpus="none")
    d.prefill([10, 11])
    d.propose(ctx([10, 11, 12, 13]))  # generated 12, 13: joins the session database when the row ends
    d.finish()
    d = d.fork()  # the next row shares the session database
    d.prefill([40, 12])
    draft = d.propose(ctx([40, 12]))
    assert draft.token_ids.tolist() == [[13]]  # only the session knows what followed 12
    draft = d.propose(ctx([40, 12, 7, 8, 12]))
    assert draft.token_ids.tolist()[0][:2] == [7, 8]  # the context database comes first
    assert 13 in draft.token_ids.tolist()[0]  # and the session's candidate joins the tree


def test_lookahead_jacobi_window_and_pool():
    d = build_drafter("lookahead", window=3, ngram=2, guesses=2)
    d.prefill([1, 2, 3])
    first = d.propose(ctx([1, 2, 3]))
    assert first.size == 3 and first.parents is None  # the window alone: a chain of guesses
    V = 50
    logits = torch.zeros(1, 4, V)
    for row, tok in enumerate([20, 21, 22, 23]):  # the target's argmax after the root and each guess
        logits[0, row, tok] = 1.0
    d.observe(VerifyResult(tokens=torch.tensor([[20]]), num_accepted=0, num_drafted=3, target_logits=logits))
    guess = first.token_ids[0].tolist()
    # ngram=2: each window token and the prediction after it are a 2-gram in the pool
    for tok, after in zip(guess, [21, 22, 23]):
        assert (after,) in d.pool[tok]
    second = d.propose(ctx([1, 2, 3, 20]))
    # the next window is the Jacobi update: predictions for positions 4, 5, 6
    assert second.token_ids[0, :3].tolist() == [21, 22, 23]
