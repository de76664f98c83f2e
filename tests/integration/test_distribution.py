"""Sampling is lossless: sequences generated with speculation follow the target's own
distribution, exactly enumerated on a tiny vocabulary. A verifier that always accepts (the
negative control) must fail the same test."""

import itertools
import math
import tempfile
from typing import ClassVar

import pytest
import torch

from draftsmith import Draft, SamplingParams, SpeculativeDecoder, VerifierBase, VerifyResult, build_drafter
from draftsmith.sampling import probs
from tests.conftest import random_heads, tiny_model

V, NEW, SAMPLES = 5, 3, 2000
PROMPT = [1, 2, 3, 1, 2]


def exact_distribution(target, params) -> dict[tuple, float]:
    """P(x1..x3 | prompt) under the target's processed distribution, by enumeration."""
    seqs = list(itertools.product(range(V), repeat=NEW))
    ids = torch.tensor([PROMPT + list(s) for s in seqs])  # [V^3, P+3]
    with torch.no_grad():
        logits = target.model(ids).logits[:, len(PROMPT) - 1 : -1]  # [V^3, 3, V]
    p = probs(logits, params)  # [V^3, 3, V]
    chosen = p.gather(-1, ids[:, len(PROMPT) :].unsqueeze(-1)).squeeze(-1)  # [V^3, 3]
    return dict(zip(seqs, chosen.prod(-1).tolist()))


def chi_square_fails(counts: dict[tuple, int], exact: dict[tuple, float], n: int) -> tuple[bool, float, float]:
    """Pearson chi-square with cells of expected count < 5 pooled; the bound is the chi-square
    quantile at about 3e-5 (normal approximation: df + 4 sqrt(2 df))."""
    stat, df, pool_obs, pool_exp = 0.0, -1, 0, 0.0
    for seq, p in exact.items():
        exp, obs = n * p, counts.get(seq, 0)
        if exp < 5:
            pool_obs, pool_exp = pool_obs + obs, pool_exp + exp
        else:
            stat, df = stat + (obs - exp) ** 2 / exp, df + 1
    if pool_exp > 0:
        stat, df = stat + (pool_obs - pool_exp) ** 2 / pool_exp, df + 1
    bound = df + 4 * math.sqrt(2 * df)
    return stat > bound, stat, bound


def sample_counts(decoder, params, n=SAMPLES, seed=0) -> dict[tuple, int]:
    g = torch.Generator().manual_seed(seed)
    counts: dict[tuple, int] = {}
    for _ in range(n):
        seq = tuple(decoder.generate(PROMPT, params, g).token_ids)
        assert len(seq) == NEW
        counts[seq] = counts.get(seq, 0) + 1
    return counts


class SampledTree:
    """Two root children drawn independently from q, each with one child drawn from q."""

    name = "sampled-tree"
    needs_hidden_states = False

    def __init__(self, draft_lm):
        self.lm = draft_lm

    def bind(self, target):
        pass

    def prefill(self, prompt_ids):
        pass

    def _q(self, ids, params):
        with torch.no_grad():
            return probs(self.lm.model(torch.tensor([ids])).logits[0, -1], params)  # [V]

    def propose(self, ctx):
        if ctx.max_tokens < 2:
            return Draft.empty()
        q_root = self._q(ctx.ids, ctx.params)
        firsts = torch.multinomial(q_root, 2, replacement=True, generator=ctx.generator).tolist()
        tokens, parents, qs = [], [], []
        for x in firsts:
            q_child = self._q(ctx.ids + [x], ctx.params)
            y = int(torch.multinomial(q_child, 1, generator=ctx.generator))
            tokens += [x, y]
            parents += [-1, len(tokens) - 2]
            qs += [q_root, q_child]
        order = [0, 2, 1, 3]  # topological order: both root children first
        remap = {old: new for new, old in enumerate(order)}
        return Draft(torch.tensor([[tokens[i] for i in order]]),
                     q=torch.stack([qs[i] for i in order]).unsqueeze(0),
                     parents=torch.tensor([-1 if parents[i] < 0 else remap[parents[i]] for i in order]))

    def observe(self, result):
        pass


class AlwaysAccept(VerifierBase):
    """Negative control: keeps every draft token (lossy), then samples the bonus from p."""

    name: ClassVar[str] = "always_accept"
    lossless: ClassVar[bool] = False

    def verify_row(self, draft: Draft, target_logits, params, generator=None) -> VerifyResult:
        p = probs(target_logits[:, draft.size], params)  # [1, V]
        bonus = torch.multinomial(p, 1, generator=generator)  # [1, 1]
        return VerifyResult(torch.cat([draft.token_ids, bonus], -1), draft.size, draft.size)


def _with_vocab(heads: str, ids: list[int]) -> str:
    from draftsmith.drafters.heads.vocab import save_vocab

    save_vocab(heads, ids)
    return heads


def _folder_with_vocab(lm, ids: list[int]) -> str:
    folder = tempfile.mkdtemp()
    lm.model.save_pretrained(folder)
    return _with_vocab(folder, ids)


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", vocab=V, seed=0, std=0.5)
    drafter_model = tiny_model("llama", vocab=V, seed=5, std=0.5)  # q differs from p
    return target, drafter_model


CASES = {
    "t1": SamplingParams(temperature=1.0, max_new_tokens=NEW, ignore_eos=True),
    "t0.7-topk3": SamplingParams(temperature=0.7, top_k=3, max_new_tokens=NEW, ignore_eos=True),
    "topp0.8": SamplingParams(temperature=1.0, top_p=0.8, max_new_tokens=NEW, ignore_eos=True),
}


DECODERS = {
    "draft_model": lambda target, draft: SpeculativeDecoder(
        target, "draft_model", model=draft, k=3, adaptive=False, confidence=0),
    # a draft length that depends on the drafter's own confidence keeps the target's law
    "draft_model-confidence": lambda target, draft: SpeculativeDecoder(
        target, "draft_model", model=draft, k=3, adaptive=False, confidence=0.5),
    # a draft model folder with a stored draft vocabulary drafts over it: q is zero outside it
    "draft_model-vocab": lambda target, draft: SpeculativeDecoder(
        target, "draft_model", model=_folder_with_vocab(draft, [1, 3]), k=3, adaptive=False, confidence=0),
    # ngram drafts carry no q (one-hot): acceptance with p(x), residual p without x
    "ngram": lambda target, draft: SpeculativeDecoder(target, build_drafter("ngram", k=3, max_ngram=2)),
    # a deterministic tree of distinct siblings: recursive rejection with one-hot q
    "recycling": lambda target, draft: SpeculativeDecoder(target, build_drafter("recycling", topk=3, branching="3-2-1")),
    # Jacobi window + n-gram pool (a tree whose pool grows across samples)
    "lookahead": lambda target, draft: SpeculativeDecoder(target, build_drafter("lookahead", window=3, ngram=2, guesses=3)),
    # context and session n-gram databases merged into a tree
    "hierarchy": lambda target, draft: SpeculativeDecoder(target, build_drafter("hierarchy", k=3, max_ngram=2,
                                                                                max_candidates=3, corpus="none")),
    # draft heads on the target's hidden states, drafts sampled from the heads' q
    **{kind: (lambda target, draft, kind=kind: SpeculativeDecoder(target, build_drafter(
        kind, heads=random_heads(target, kind, tempfile.mkdtemp(), seed=2, scale=0.5))))
       for kind in ("medusa", "hydra", "eagle", "amphista", "koala")},
    "eagle-tree": lambda target, draft: SpeculativeDecoder(target, build_drafter(
        "eagle", heads=random_heads(target, "eagle", tempfile.mkdtemp(), seed=2, scale=0.5), tree_nodes=6, topk=2)),
    # heads drafting over part of the vocabulary: q is zero outside it
    "eagle-vocab": lambda target, draft: SpeculativeDecoder(target, build_drafter(
        "eagle", heads=_with_vocab(random_heads(target, "eagle", tempfile.mkdtemp(), seed=2, scale=0.5), [1, 3]),
        vocab=2)),
    # a tree of siblings sampled independently from the drafter's q
    "sampled-tree": lambda target, draft: SpeculativeDecoder(target, SampledTree(draft)),
}


@pytest.mark.parametrize("decoder, case", [("draft_model", "t1"), ("draft_model", "t0.7-topk3"),
                                           ("draft_model", "topp0.8"), ("draft_model-confidence", "t1"),
                                           ("draft_model-vocab", "t0.7-topk3"), ("ngram", "t1"), ("recycling", "t1"), ("lookahead", "t1"),
                                           ("hierarchy", "t0.7-topk3"), ("medusa", "t1"), ("hydra", "t0.7-topk3"),
                                           ("eagle", "t1"), ("eagle-tree", "t1"), ("eagle-vocab", "t1"), ("amphista", "t1"),
                                           ("koala", "t0.7-topk3"), ("sampled-tree", "t1"),
                                           ("sampled-tree", "t0.7-topk3")])
def test_sampling_is_lossless(pair, decoder, case):
    target, drafter_model = pair
    params = CASES[case]
    dec = DECODERS[decoder](target, drafter_model)
    failed, stat, bound = chi_square_fails(sample_counts(dec, params), exact_distribution(target, params), SAMPLES)
    assert not failed, f"chi-square {stat:.1f} > {bound:.1f}"


def test_negative_control_always_accept_fails(pair):
    target, drafter_model = pair
    params = CASES["t1"]
    decoder = SpeculativeDecoder(target, "draft_model", model=drafter_model, k=3, adaptive=False, confidence=0, verifier=AlwaysAccept())
    failed, stat, bound = chi_square_fails(sample_counts(decoder, params), exact_distribution(target, params), SAMPLES)
    assert failed, f"the lossy control passed: chi-square {stat:.1f} <= {bound:.1f}"
