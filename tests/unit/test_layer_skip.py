"""layer_skip (SWIFT): the skip-set search, the confidence early stop, the q drafts carry and the
partial cache's catch-up (tiny fp32 Llama; the greedy/batch/sampling matrices run its recipes)."""

from __future__ import annotations

import pytest
import torch

from draftsmith import SamplingParams, build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.drafters.layer_skip import SkipSearch, score_predictions
from draftsmith.errors import DraftsmithError
from draftsmith.sampling import probs
from tests.conftest import tiny_model

CONTEXT = [5, 17, 3, 42, 5, 17, 3, 8, 60, 12, 9, 33, 71, 2, 5, 17, 40, 41, 42, 3, 8, 8, 19, 4]
REDUNDANT = (1, 4, 6)  # the layers made identity in `with_identity_layers`


def with_identity_layers(layers: int = 10, identity=REDUNDANT):
    """A tiny Llama whose `identity` layers add nothing to the residual stream (their output
    projections are zero): skipping exactly those changes nothing."""
    target = tiny_model("llama", layers=layers, vocab=96)
    with torch.no_grad():
        for i in identity:
            layer = target.model.model.layers[i]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return target


def row(target, prompt, **options):
    d = build_drafter("layer_skip", **options)
    d.bind(target)
    r = d.fork()
    r.prefill(prompt)
    return r


def teacher_forced(target, skipped, ids):
    """The skipped model's logits at every position of ids, in one forward ([len, V])."""
    part = target.partial([i for i in range(target.num_layers) if i not in skipped])
    return part.step(torch.tensor([ids]), torch.arange(len(ids))[None], None).logits[0]


def test_search_is_deterministic_given_the_context():
    """Guards: the search drawing from global or time-seeded randomness (two rows with the same
    prompt drafting with different layers)."""
    target = tiny_model("llama", layers=8)
    runs = [SkipSearch(target, 3, list(range(1, 7)), steps=10).run(CONTEXT, 16, SamplingParams()) for _ in range(2)]
    assert runs[0].skip == runs[1].skip and runs[0].tried == runs[1].tried
    assert len(runs[0].tried) == 10 and len({s for s, _ in runs[0].tried}) == 10  # 10 distinct candidates
    a, b = (row(target, CONTEXT, search_steps=10) for _ in range(2))
    ctx = DraftContext(CONTEXT, max_tokens=4, params=SamplingParams())
    assert a.propose(ctx).token_ids.tolist() == b.propose(ctx).token_ids.tolist()
    assert a.skipped == b.skipped == a.search.skip


def test_search_finds_the_redundant_layers():
    """Guards: a search whose scoring or Bayesian step does not steer toward better sets. Among
    the 220 sets of 3 of the 12 intermediate layers of 14, 24 candidates must find the 3 identity
    layers (not among the structured seeds), which match the target exactly; the control, the same
    budget spent on random sets, misses them (so the Bayesian step, not luck, finds them)."""
    target = with_identity_layers(layers=14, identity=(2, 6, 9))
    search = SkipSearch(target, 3, list(range(1, 13)), steps=24)
    assert (2, 6, 9) not in search.structured()
    result = search.run(CONTEXT, 24, SamplingParams())
    assert result.skip == (2, 6, 9)
    assert result.score > 1.0  # every argmax agrees (1.0) + the tie-break
    assert all(v < result.score for s, v in result.tried if s != (2, 6, 9))
    control = SkipSearch(target, 3, list(range(1, 13)), steps=24)
    control.propose_bo = lambda tried, g: control.random(g)
    assert control.run(CONTEXT, 24, SamplingParams()).skip != (2, 6, 9)
    small = with_identity_layers()  # 10 layers, identity 1, 4, 6: the sampling score
    sampled = SkipSearch(small, 3, list(range(1, 9)), steps=16).run(CONTEXT, 24, SamplingParams(temperature=1.0))
    assert sampled.skip == REDUNDANT and sampled.score == pytest.approx(1.0, abs=1e-5)  # sum min(p, q) = 1


def test_score_predictions():
    """Guards: the score rewarding disagreement, or the sampling score not being sum_v min(p, q)."""
    p = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert score_predictions(p, p, SamplingParams()) > score_predictions(p, p.flip(-1), SamplingParams())
    q = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0]])
    t1 = SamplingParams(temperature=1.0)
    want = torch.minimum(p.softmax(-1), q.softmax(-1)).sum(-1).mean()
    assert score_predictions(p, q, t1) == pytest.approx(float(want))


@pytest.mark.parametrize("confidence", [0.0, 0.3, 0.999])
def test_confidence_early_stop(confidence):
    """Guards: SWIFT's early stop not applied, or applied at the wrong token: every drafted token
    but the last has top probability >= confidence, and a chain shorter than k ends on one below."""
    target = tiny_model("llama", layers=4)
    r = row(target, CONTEXT, layers=[1, 2], k=6, confidence=confidence, adaptive=False)
    ctx = DraftContext(CONTEXT, max_tokens=6, params=SamplingParams())
    draft = r.propose(ctx).token_ids[0].tolist()
    top = teacher_forced(target, (1, 2), CONTEXT + draft)[len(CONTEXT) - 1:].softmax(-1).max(-1).values
    assert all(float(t) >= confidence for t in top[:len(draft) - 1])
    if len(draft) < 6:
        assert float(top[len(draft) - 1]) < confidence
    if confidence == 0.0:
        assert len(draft) == 6
    if confidence == 0.999:
        assert len(draft) == 1
    assert draft == teacher_forced(target, (1, 2), CONTEXT + draft)[len(CONTEXT) - 1:-1].argmax(-1).tolist()[:len(draft)]


def test_sampled_drafts_carry_their_law_and_the_cache_catches_up():
    """Guards: q other than the law each token was drawn from (lossless rejection needs it), and
    the partial cache not rolled back to what was committed (a stale draft tail in the cache)."""
    target = tiny_model("llama", layers=4)
    params = SamplingParams(temperature=0.8, top_k=20)
    r = row(target, CONTEXT, layers=[2], k=4, confidence=0, adaptive=False)
    g = torch.Generator().manual_seed(0)
    d = r.propose(DraftContext(CONTEXT, max_tokens=4, params=params, generator=g))
    toks = d.token_ids[0].tolist()
    want = probs(teacher_forced(target, (2,), CONTEXT + toks)[len(CONTEXT) - 1:-1], params)  # [4, V]
    assert d.q.shape == (1, 4, target.vocab_size) and torch.allclose(d.q[0], want, atol=1e-5)
    committed = CONTEXT + toks[:1] + [(toks[1] + 1) % target.vocab_size]  # one accepted, then a correction
    greedy = DraftContext(committed, max_tokens=4, params=SamplingParams())
    fresh = row(target, committed, layers=[2], k=4, confidence=0, adaptive=False)
    assert r.propose(greedy).token_ids.tolist() == fresh.propose(greedy).token_ids.tolist()
    assert r.part.length(r.cache) == len(committed) + 3  # the committed tokens + the new tail


def test_short_context_waits_then_searches_once():
    """Guards: a search over a context too short to score on, or a search repeated every step."""
    target = tiny_model("llama", layers=6)
    r = row(target, [3, 4, 5], min_context=8, search_steps=4)
    r.propose(DraftContext([3, 4, 5], max_tokens=3, params=SamplingParams()))
    assert r.search is None and r.provisional and len(r.skipped) == 3
    r.propose(DraftContext(CONTEXT, max_tokens=3, params=SamplingParams()))
    first = r.search
    assert first is not None and not r.provisional and r.skipped == first.skip
    r.propose(DraftContext(CONTEXT + [1, 2], max_tokens=3, params=SamplingParams()))
    assert r.search is first


def test_options_and_refusals():
    """Guards: explicit skip sets ignored or invalid ones accepted; bad options accepted."""
    target = tiny_model("llama", layers=4)
    r = row(target, CONTEXT, layers=[2, 1])
    r.propose(DraftContext(CONTEXT, max_tokens=3, params=SamplingParams()))
    assert r.skipped == (1, 2) and r.search is None
    for bad in ([4], [0, 1, 2, 3]):
        with pytest.raises(DraftsmithError):
            build_drafter("layer_skip", layers=bad).bind(target)
    for opt in ({"skip": 0}, {"skip": 1.0}, {"k": 0}, {"confidence": 1.0}, {"search_steps": 0}, {"window": 1}):
        with pytest.raises(DraftsmithError):
            build_drafter("layer_skip", **opt)
    d = build_drafter("layer_skip:skip=0.5")
    d.bind(target)
    assert d.n_skip == 2 and d.eligible == [1, 2] and 0 < d.cost_ratio < 1


def test_reuse_ends_the_optimisation_phase_after_n_rows():
    """Guards: reuse=N searching on every row anyway (the cost it exists to save), or later rows
    not drafting with the set the first rows found; reuse=0 searching every row."""
    target = tiny_model("llama", layers=8)
    d = build_drafter("layer_skip", reuse=1, search_steps=6)
    d.bind(target)
    first, second = d.fork(), d.fork()
    for r, ids in ((first, CONTEXT), (second, CONTEXT[::-1])):
        r.prefill(ids)
        r.propose(DraftContext(ids, max_tokens=3, params=SamplingParams()))
    assert first.search is not None and second.search is None and second.skipped == first.search.skip
    alone = row(target, CONTEXT[::-1], search_steps=6)
    alone.propose(DraftContext(CONTEXT[::-1], max_tokens=3, params=SamplingParams()))
    assert alone.search is not None
