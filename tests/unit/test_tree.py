"""Tree drafts: the masked forward over a tree equals a plain forward of each root-to-node path,
and the tree verifiers walk the tree as the tables say."""

import pytest
import torch

from draftsmith.cache import RowsCache, new_cache

from draftsmith import Draft, SamplingParams
from draftsmith.tree import Tree
from draftsmith.verify import GreedyVerifier, RejectionVerifier
from tests.conftest import argmax_logits, tiny_model

TREES = {
    "chain": [-1, 0, 1, 2],
    "fan": [-1, -1, -1],
    "mixed": [-1, -1, 0, 0, 1, 2, 5, 3],
}


def prefilled(target, prompt):
    """The loop's cache (cache.RowsCache) holding prompt[:-1] as its one row."""
    rows, cache = RowsCache(target.config, target.device, target.dtype), new_cache()
    slots = torch.arange(len(prompt) - 1, device=target.device)
    target.step(torch.tensor([prompt[:-1]], device=target.device), slots[None], cache, cache_position=slots)
    rows.add_row(cache, len(prompt) - 1)
    return rows


def step(target, rows, root, nodes, tree, length):
    """One verification forward of root + nodes ([N]) through the loop's step inputs: logits [q, V]."""
    ids, pos, cache_position, mask = rows.step_inputs([root], [nodes], [tree], [length])
    return target.step(ids, pos, rows.cache, cache_position=cache_position, mask=mask).logits[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("shape", sorted(TREES))
def test_tree_forward_equals_each_path_alone(arch, shape):
    target = tiny_model(arch)
    tree = Tree.from_parents(TREES[shape])
    prompt = [5, 17, 3, 42, 9]
    nodes = torch.randint(0, 96, (1, tree.size), generator=torch.Generator().manual_seed(1))
    tree_logits = step(target, prefilled(target, prompt), prompt[-1], nodes[0], tree, len(prompt))
    for node in range(tree.size):
        path = [int(nodes[0, i]) for i in tree.path_to(node)]
        with torch.no_grad():
            alone = target.model(torch.tensor([prompt + path], device=target.device)).logits[0, -1]
        assert torch.allclose(tree_logits[node + 1], alone, atol=1e-4), f"node {node} of {shape}"
    assert tree.position_ids(4).tolist() == [[4] + [4 + d for d in tree.depth]]


def test_keep_compacts_cache_to_the_accepted_path():
    target = tiny_model("llama")
    tree = Tree.from_parents(TREES["mixed"])
    prompt = [5, 17, 3, 42, 9]
    nodes = torch.tensor([[11, 12, 13, 14, 15, 16, 17, 18]])
    rows = prefilled(target, prompt)
    step(target, rows, prompt[-1], nodes[0], tree, len(prompt))
    path = tree.path_to(6)  # nodes 0 -> 2 -> 5 -> 6
    rows.commit([[0] + [1 + i for i in path]], 1 + tree.size)
    assert rows.width == rows.cache.get_seq_length() == len(prompt) + len(path)
    after = step(target, rows, 90, torch.zeros(0, dtype=torch.long), None, len(prompt) + len(path) + 1)[0]
    with torch.no_grad():
        alone = target.model(torch.tensor([prompt + [int(nodes[0, i]) for i in path] + [90]],
                                           device=target.device)).logits[0, -1]
    assert torch.allclose(after, alone, atol=1e-4)


def test_bad_tree_is_a_clear_error():
    from draftsmith import DraftsmithError

    with pytest.raises(DraftsmithError, match="topological"):
        Tree.from_parents([-1, 2, 0])


def logits_for(argmaxes, V=8):
    return argmax_logits(argmaxes, V)


@pytest.mark.parametrize(
    "tokens, parents, argmax, path, out",
    [
        # root children 1, 2; node 0 (token 1) has children 3 (node 2), 4 (node 3)
        ([1, 2, 3, 4], [-1, -1, 0, 0], [1, 4, 0, 0, 0], [0, 3], [1, 4, 0]),
        ([1, 2, 3, 4], [-1, -1, 0, 0], [2, 0, 6, 0, 0], [1], [2, 6]),  # second sibling, then its bonus
        ([1, 2, 3, 4], [-1, -1, 0, 0], [7, 0, 0, 0, 0], [], [7]),  # no child matches
    ],
)
def test_greedy_tree_table(tokens, parents, argmax, path, out):
    draft = Draft(torch.tensor([tokens]), parents=torch.tensor(parents))
    r = GreedyVerifier().verify_row(draft, logits_for(argmax), SamplingParams())
    assert r.path == path and r.tokens[0].tolist() == out and r.num_accepted == len(path)


def test_rejection_tree_deterministic_siblings():
    """p is one-hot on the second sibling: the first is always rejected, the second accepted."""
    draft = Draft(torch.tensor([[1, 2]]), parents=torch.tensor([-1, -1]))
    logits = torch.full((1, 3, 8), -30.0)
    logits[0, 0, 2] = 30.0
    logits[0, 2, 5] = 30.0
    r = RejectionVerifier().verify_row(draft, logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert r.path == [1] and r.tokens[0].tolist() == [2, 5]


def test_recycling_matrix_takes_the_steps_top_k():
    """After a step, adj[t] holds the target's top-k successors of each token t it just saw."""
    from draftsmith.drafters import build_drafter
    from draftsmith.drafters.base import DraftContext
    from draftsmith.types import VerifyResult

    target = tiny_model("llama")
    d = build_drafter("recycling", topk=2, branching="2-1")
    d.bind(target)
    assert d.propose(DraftContext([4, 5], 8, SamplingParams())).size == 0  # nothing known yet
    logits = torch.zeros(1, 1, 96)
    logits[0, 0, 30], logits[0, 0, 31] = 3.0, 2.0
    d.observe(VerifyResult(torch.tensor([[30]]), 0, 0, target_logits=logits))
    assert d.adj[5].tolist() == [30, 31]
    draft = d.propose(DraftContext([4, 5], 8, SamplingParams()))
    assert draft.token_ids[0].tolist() == [30, 31] and draft.parents.tolist() == [-1, -1]
    assert d.adj.numel() * d.adj.element_size() < 2 * 2**20
