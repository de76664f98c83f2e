"""Sampling is lossless: sequences generated with speculation follow the target's own
distribution, exactly enumerated on a tiny vocabulary. A verifier that always accepts (the
negative control) must fail the same test.

The drafters are the "sampling" recipes of tests/recipes.py, each with its sampling cases. Most
run one row at a time (SpeculativeDecoder: the loop's one-row fast path); ngram and the plain
draft model at T=1 run through the batched loop instead (test_batched_rows_are_lossless: rows of
different prompt lengths, one group at top-k, rows joining mid-flight), which checks the same
case at the same sample size for that prompt, so the batched path costs no extra time."""

import functools
import itertools
import math

import pytest
import torch

from draftsmith import BatchDecoder, SamplingParams, SpeculativeDecoder
from draftsmith.sampling import probs
from tests.conftest import tiny_model
from tests.recipes import RECIPES, VERIFIER_RECIPES, AlwaysAccept, SampledTree, build, lossy_verifiers, sampling_cases, verifier_of

__all__ = ["AlwaysAccept", "SampledTree", "chi_square_fails", "exact_distribution"]

V, NEW, SAMPLES = 5, 3, 2000
# always-accept misses by far (chi-square about 80 x n against a bound near 20): a few hundred samples show it
CONTROL_SAMPLES = 500
PROMPT = [1, 2, 3, 1, 2]


def exact_distribution(target, params, prompt=PROMPT, new=NEW) -> dict[tuple, float]:
    """P(x1..x_new | prompt) under the target's processed distribution, by enumeration."""
    seqs = list(itertools.product(range(V), repeat=new))
    ids = torch.tensor([list(prompt) + list(s) for s in seqs], device=target.device)  # [V^new, P+new]
    with torch.no_grad():
        logits = target.model(ids).logits[:, len(prompt) - 1 : -1]  # [V^new, new, V]
    p = probs(logits, params)  # [V^new, new, V]
    chosen = p.gather(-1, ids[:, len(prompt) :].unsqueeze(-1)).squeeze(-1)  # [V^new, new]
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


@pytest.fixture(scope="module")
def pair():
    # one layer each: the law under test is the verifier's and the loop's, not depth's, and a
    # sample costs a dozen tiny forwards (one layer less is a third of the file's time)
    target = tiny_model("llama", vocab=V, seed=0, std=0.5, layers=1)
    drafter_model = tiny_model("llama", vocab=V, seed=5, std=0.5, layers=1)  # q differs from p
    return target, drafter_model


CASES = {
    "t1": SamplingParams(temperature=1.0, max_new_tokens=NEW, ignore_eos=True),
    "t0.7-topk3": SamplingParams(temperature=0.7, top_k=3, max_new_tokens=NEW, ignore_eos=True),
    "topp0.8": SamplingParams(temperature=1.0, top_p=0.8, max_new_tokens=NEW, ignore_eos=True),
}

BATCHED = {("ngram-k3", "t1"), ("draft_model-k3", "t1")}  # run by test_batched_rows_are_lossless


# The default run takes each recipe's first case (and every case of draft_model-k3, the reference
# drafter: top-k and top-p); a recipe's further cases are `extended` (make test-full).
# Variants of a drafter whose own first recipe is in the default run are extended too (the draft
# model's confidence stop and draft vocabulary, the EAGLE head's tree and draft vocabulary).
REFERENCE = "draft_model-k3"
VARIANTS = {"draft_model-k3-confidence", "draft_model-vocab-1-3", "eagle-tree", "eagle-vocab"}


def _extended(recipe: str, case: str) -> bool:
    return recipe in VARIANTS or (case != RECIPES[recipe].sampling[0] and recipe != REFERENCE)


SINGLE = [pytest.param(r, c, marks=[pytest.mark.extended] if _extended(r, c) else [])
          for r, c in sampling_cases() if (r, c) not in BATCHED]  # a third here, a third in each of _more and _rest
# drafters made of the target's own layers need a target with layers to skip or exit from
DEEP = {"early_exit", "layer_skip"}


@pytest.mark.parametrize("recipe, case", SINGLE[0::3])
def test_sampling_is_lossless(pair, recipe, case, tmp_path):
    check_sampling(pair, recipe, case, tmp_path)


@functools.cache
def deep_pair():
    """Two-layer twins of `pair` for the DEEP drafters (a shallow exit or a skipped layer needs two)."""
    return (tiny_model("llama", vocab=V, seed=0, std=0.5, layers=2),
            tiny_model("llama", vocab=V, seed=5, std=0.5, layers=2))


def check_sampling(pair, recipe, case, tmp_path):
    target, drafter_model = deep_pair() if RECIPES[recipe].registry in DEEP else pair
    params = CASES[case]
    dec = SpeculativeDecoder(target, build(recipe, target, "llama", tmp_path, draft=drafter_model),
                             verifier=verifier_of(recipe))
    failed, stat, bound = chi_square_fails(sample_counts(dec, params), exact_distribution(target, params), SAMPLES)
    assert not failed, f"chi-square {stat:.1f} > {bound:.1f}"


@pytest.mark.parametrize("verifier", lossy_verifiers())
def test_negative_control_always_accept_fails(pair, verifier):
    target, drafter_model = pair
    params = CASES["t1"]
    decoder = SpeculativeDecoder(target, "draft_model", model=drafter_model, k=3, adaptive=False, confidence=0,
                                 verifier=VERIFIER_RECIPES[verifier].make())
    n = CONTROL_SAMPLES
    failed, stat, bound = chi_square_fails(sample_counts(decoder, params, n), exact_distribution(target, params), n)
    assert failed, f"the lossy control passed: chi-square {stat:.1f} <= {bound:.1f}"


# ----- the batched loop ------------------------------------------------------------------------
# (prompt, case, rows): prompts of different lengths (one token: no prefill forward), one group at
# top-k; PROMPT's group has the single-row test's sample size (it stands in for that case)
GROUPS = [
    (PROMPT, "t1", SAMPLES),
    ([3], "t1", 400),
    ([0, 4, 0, 4, 0, 4, 0, 4, 0], "t1", 400),  # repeats: the n-gram table drafts from the start
    ([4, 3, 2, 1, 4, 3, 2], "t0.7-topk3", 400),
]


def batched_counts(target, drafter, groups, verifier=None, width: int = 48, seed: int = 0):
    """Every group's rows through one BatchDecoder, rows joining as others finish (about
    `width` at a time, the groups interleaved so each step mixes prompt lengths and parameters).
    Returns each group's counts of emitted sequences and the decoder's drafted/accepted totals."""
    dec = BatchDecoder(target, drafter, verifier=verifier, k_max=3, smartspec=False)
    jobs = [(g, i) for i in range(max(n for *_, n in groups)) for g, (*_, n) in enumerate(groups) if i < n]
    counts: list[dict[tuple, int]] = [{} for _ in groups]
    live, drafted, accepted, j = [], 0, 0, 0
    while j < len(jobs) or dec.rows:
        while j < len(jobs) and len(dec.rows) < width:
            g, i = jobs[j]
            prompt, case, _ = groups[g]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + j)
            live.append((g, dec.add(prompt, CASES[case], gen)))
            j += 1
        dec.step()
        for g, row in [x for x in live if x[1].done]:
            assert row.error is None, row.error
            seq = tuple(row.new_ids)
            assert len(seq) == NEW
            counts[g][seq] = counts[g].get(seq, 0) + 1
            drafted, accepted = drafted + row.stats.drafted, accepted + row.stats.accepted
        live = [x for x in live if not x[1].done]
    return counts, drafted, accepted


def group_failures(target, groups, counts):
    out = []
    for (prompt, case, n), c in zip(groups, counts):
        failed, stat, bound = chi_square_fails(c, exact_distribution(target, CASES[case], prompt), n)
        out.append((failed, f"prompt {prompt} {case} (n={n}): chi-square {stat:.1f} vs bound {bound:.1f}"))
    return out


@pytest.mark.parametrize("recipe", ["ngram-k3", "draft_model-k3"])
def test_batched_rows_are_lossless(pair, recipe, tmp_path):
    """Rows of different prompt lengths sampled together, one group at top-k: each group's
    emitted tokens follow the target's exact distribution for its own prompt. ngram drafts are
    deterministic (q one-hot); the draft model's are sampled from q."""
    target, drafter_model = pair
    counts, drafted, accepted = batched_counts(target, build(recipe, target, "llama", tmp_path, draft=drafter_model),
                                               GROUPS)
    assert drafted > 0 and accepted > 0, "the batch never drafted: the test would not test speculation"
    fails = group_failures(target, GROUPS, counts)
    assert not any(f for f, _ in fails), "; ".join(m for f, m in fails if f)


@pytest.mark.parametrize("verifier", lossy_verifiers())
def test_batched_negative_control_fails(pair, verifier, tmp_path):
    """The same test through the batched loop with a lossy rule (every draft token kept) must fail."""
    target, drafter_model = pair
    groups = [(PROMPT, "t1", 200), ([0, 4, 0, 4, 0, 4, 0, 4, 0], "t1", 100)]
    counts, _, _ = batched_counts(target, build("draft_model-k3", target, "llama", tmp_path, draft=drafter_model),
                                  groups, verifier=VERIFIER_RECIPES[verifier].make())
    fails = group_failures(target, groups, counts)
    assert any(f for f, _ in fails), f"the lossy control passed: {'; '.join(m for _, m in fails)}"
