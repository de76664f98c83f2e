"""Multi-draft verification through the loop. The lossless cases (spectr over i.i.d. siblings,
recursive over siblings drawn without replacement, at T=1 and T=0.7/top-k) are recipes of
tests/recipes.py, run by test_distribution.py; greedy equality by test_equivalence.py. Here: the
negative controls, which must fail the same chi-square test, and the refusals of siblings drawn
the wrong way."""

from typing import ClassVar

import pytest
import torch

from draftsmith import CausalLM, DraftsmithError, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.verify import RecursiveVerifier, SpecTrVerifier
from draftsmith.verify.recursive import without_replacement_qs
from tests.integration.test_distribution import CASES, PROMPT, chi_square_fails, exact_distribution, pair, sample_counts

__all__ = ["pair"]

CONTROL = 300


class RecursiveOnIid(RecursiveVerifier):
    """Recursive rejection that assumes siblings drawn without replacement and skips the check:
    q_j = q without the earlier siblings, whatever the draft says."""

    name: ClassVar[str] = "recursive-unchecked"
    lossless: ClassVar[bool] = False

    @staticmethod
    def sibling_qs(draft, kids, tokens, p):
        return without_replacement_qs(draft.q[0, kids[0]].float(), [tokens[c] for c in kids]) if kids else p[None, :0]


def multi(drafter_model, replacement, branches=3, k=2):
    return build_drafter("multi", model=CausalLM(drafter_model.model), branches=branches, replacement=replacement, k=k)


def test_negative_control_recursive_on_iid_siblings_fails(pair):
    """Recursive rejection applied to i.i.d. siblings (q_j = q without the earlier siblings, though
    they were drawn from q: a repeated sibling has q_j = 0 at its own token and is always accepted)
    bends the output law: the chi-square test the lossless rules pass sees it (about 2000 against
    a bound of 20 at 600 samples). SpecTr without its residual bends it too little to show here
    (K-SEQ rejects every candidate rarely); tests/unit/test_multidraft.py computes its law exactly."""
    target, drafter_model = pair
    params = CASES["t1"]
    rule = RecursiveOnIid
    dec = SpeculativeDecoder(target, multi(drafter_model, replacement=True), verifier=rule())
    failed, stat, bound = chi_square_fails(sample_counts(dec, params, CONTROL), exact_distribution(target, params),
                                           CONTROL)
    assert failed, f"the lossy control {rule.name} passed: chi-square {stat:.1f} <= {bound:.1f}"


@pytest.mark.parametrize("replacement, verifier, match", [
    (True, "recursive", "with replacement"),
    (False, "spectr", "without replacement"),
])
def test_siblings_drawn_the_wrong_way_are_refused(pair, replacement, verifier, match):
    target, drafter_model = pair
    dec = SpeculativeDecoder(target, multi(drafter_model, replacement), verifier=verifier)
    with pytest.raises(DraftsmithError, match=match):
        for seed in range(20):  # a step with at least two siblings comes at once
            dec.generate(PROMPT, CASES["t1"], torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("replacement", [True, False])
def test_rejection_is_exact_on_both_kinds_and_multi_drafts_accept_more(pair, replacement):
    """Each node carries the law it was drawn from, so the default rule (recursive rejection with
    each node's own q) verifies either kind; and three first tokens accept more per step than one."""
    target, drafter_model = pair
    params = SamplingParams(temperature=1.0, max_new_tokens=24, ignore_eos=True)
    taus = {}
    for branches in (1, 3):
        dec = SpeculativeDecoder(target, multi(drafter_model, replacement, branches=branches, k=2))
        g = torch.Generator().manual_seed(0)
        outs = [dec.generate(PROMPT, params, g) for _ in range(30)]
        taus[branches] = sum(o.stats.new_tokens for o in outs) / sum(o.stats.steps for o in outs)
    assert taus[3] > taus[1], taus
