"""The multi-draft rules' math on tiny hand-made distributions: SpecTr's K-SEQ (verify/spectr.py)
and recursive rejection without replacement (verify/recursive.py). Exact: the output law is
enumerated over every candidate tuple and compared with p; then the verifiers themselves, by
frequency, and their refusals of siblings drawn the wrong way."""

import itertools
import math

import pytest
import torch

from draftsmith import Draft, DraftsmithError, SamplingParams
from draftsmith.verify import RecursiveVerifier, RejectionVerifier, SpecTrVerifier
from draftsmith.verify.recursive import recursive_step, without_replacement_qs
from draftsmith.verify.spectr import kseq

T1 = SamplingParams(temperature=1.0)
P_HAND = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
Q_HAND = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)


def kseq_law(p, q, k):
    """(P(out = y) [V], P(some candidate accepted)) of K-SEQ, over every i.i.d. k-tuple of candidates."""
    accept, residual, _ = kseq(p, q, k)
    V = p.shape[0]
    out, acc = torch.zeros(V, dtype=torch.float64), 0.0
    for xs in itertools.product(range(V), repeat=k):
        w = math.prod(float(q[x]) for x in xs)
        if w == 0:
            continue
        none = 1.0
        for x in xs:  # candidates tried in order: the first accepted is the output
            a = float(accept[x])
            out[x] += w * none * a
            acc += w * none * a
            none *= 1 - a
        out += w * none * residual
    return out, acc


def recursive_law(p, q, k, replacement=False):
    """(P(out = y), P(accepted)) of recursive rejection over k siblings drawn from q without
    replacement (q_j = q without the earlier siblings); replacement=True: i.i.d. siblings, each
    verified with q itself (SpecInfer's rule, what `rejection` does on them)."""
    V = p.shape[0]
    out, acc = torch.zeros(V, dtype=torch.float64), 0.0
    tuples = itertools.product(range(V), repeat=k) if replacement else itertools.permutations(range(V), k)
    for xs in tuples:
        qs = q.expand(k, -1) if replacement else without_replacement_qs(q, list(xs))
        w = math.prod(float(qs[j, x]) for j, x in enumerate(xs))
        if w == 0:
            continue
        dist, none = p, 1.0
        for j, x in enumerate(xs):
            a, rest = recursive_step(dist, qs[j], x)
            out[x] += w * none * a
            acc += w * none * a
            none *= 1 - a
            dist = rest
        out += w * none * dist
    return out, acc


def random_pq(V, seed, zeros=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(V, generator=g, dtype=torch.float64) ** 3
    q = torch.rand(V, generator=g, dtype=torch.float64) ** 3
    p[:zeros] = 0.0  # tokens the target never emits (top-k) but the drafter proposes
    return p / p.sum(), q / q.sum()


def test_kseq_hand_case():
    """p = (1/2, 1/2, 0), q = (1/4, 1/4, 1/2), k = 2: beta = 1/2 for every rho <= 2 and c = 3/2 <=
    min p / q = 2, so rho = 1 is valid; both useful tokens are accepted outright (p / q = 2),
    acceptance 1 - (1/2)^2 = 3/4 (one draft: 1/2), and the residual is (1/2, 1/2, 0)."""
    accept, residual, rho = kseq(P_HAND, Q_HAND, 2)
    assert float(rho) == 1.0
    assert accept.tolist()[:2] == [1.0, 1.0] and float(accept[2]) == 0.0
    assert torch.allclose(residual, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), atol=1e-3)
    out, acc = kseq_law(P_HAND, Q_HAND, 2)
    assert torch.allclose(out, P_HAND, atol=1e-12)
    assert acc == pytest.approx(0.75, abs=1e-3)
    assert kseq_law(P_HAND, Q_HAND, 1)[1] == pytest.approx(0.5)


def test_kseq_one_candidate_is_speculative_sampling():
    p, q = random_pq(6, 0)
    accept, residual, rho = kseq(p, q, 1)
    assert float(rho) == 1.0
    assert torch.allclose(accept, torch.clamp(p / q, max=1.0))
    rest = (p - q).clamp_min(0)
    assert torch.allclose(residual, rest / rest.sum())


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed, zeros", [(1, 0), (2, 1), (3, 2)])
def test_kseq_output_law_is_p(k, seed, zeros):
    """Over every i.i.d. k-tuple: the output is distributed as p exactly, and K-SEQ accepts at least
    as often as one draft (sum min(p, q)) and at most as often as the optimal coupling allows
    (sum min(p, 1 - (1 - q)^k))."""
    p, q = random_pq(4, seed, zeros)
    out, acc = kseq_law(p, q, k)
    assert torch.allclose(out, p, atol=1e-12), (out, p)
    single = float(torch.minimum(p, q).sum())
    best = float(torch.minimum(p, 1 - (1 - q) ** k).sum())
    assert single - 1e-12 <= acc <= best + 1e-12
    _, _, rho = kseq(p, q, k)
    beta = float(torch.minimum(q, p / rho).sum())
    assert acc == pytest.approx(1 - (1 - beta) ** k, abs=1e-12)  # every accepted candidate is an output


def test_kseq_root_case():
    """p = (0.6, 0.4), q = (0.5, 0.5), k = 2: at rho = 1 (plain min(1, p / q) per candidate) the
    accepted mass of token 1 alone, 0.4 (1 - 0.1^2) / 0.9 = 0.44, exceeds p = 0.4: no residual can
    repair it. K-SEQ's rho is the root of rho beta = 1 - (1 - beta)^2 with beta = 0.5 + 0.4 / rho
    (rho <= 1.2): rho = 1.1532, acceptance 0.9766 (one draft: 0.9)."""
    p = torch.tensor([0.6, 0.4], dtype=torch.float64)
    q = torch.tensor([0.5, 0.5], dtype=torch.float64)
    m = torch.minimum(q, p)  # rho = 1
    beta = float(m.sum())
    assert float(m[1]) * (1 - (1 - beta) ** 2) / beta == pytest.approx(0.44)
    _, _, rho = kseq(p, q, 2)
    beta = 0.5 + 0.4 / float(rho)
    assert float(rho) == pytest.approx(1.1532, abs=1e-3)
    assert float(rho) * beta == pytest.approx(1 - (1 - beta) ** 2, abs=1e-4)
    out, acc = kseq_law(p, q, 2)
    assert torch.allclose(out, p, atol=1e-12)
    assert 0.9 < acc == pytest.approx(1 - (1 - beta) ** 2, abs=1e-9)


def test_kseq_without_its_residual_is_not_exact():
    """The negative control, exactly: the bonus drawn from p instead of the residual after every
    candidate is rejected leaves the output law off p."""
    p, q = random_pq(4, 1)
    accept, _, rho = kseq(p, q, 2)
    beta = float(torch.minimum(q, p / rho).sum())
    m = accept * q
    bent = m * (1 - (1 - beta) ** 2) / beta + (1 - beta) ** 2 * p
    assert float((bent - p).abs().sum()) / 2 > 1e-3


def test_recursive_hand_case():
    """Same p and q, two siblings: without replacement every draw is accepted (if x_1 is the
    useless token, p_2 = (1/2, 1/2, 0) = q_2 exactly), so acceptance is 1; i.i.d. siblings verified
    by recursive rejection (SpecInfer) accept 3/4; one draft 1/2."""
    out, acc = recursive_law(P_HAND, Q_HAND, 2)
    assert torch.allclose(out, P_HAND, atol=1e-12)
    assert acc == pytest.approx(1.0)
    out, acc = recursive_law(P_HAND, Q_HAND, 2, replacement=True)
    assert torch.allclose(out, P_HAND, atol=1e-12)
    assert acc == pytest.approx(0.75)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed, zeros", [(4, 0), (5, 1), (6, 2)])
def test_recursive_output_law_is_p(k, seed, zeros):
    p, q = random_pq(5, seed, zeros)
    out, acc = recursive_law(p, q, k)
    assert torch.allclose(out, p, atol=1e-12), (out, p)
    assert acc >= float(torch.minimum(p, q).sum()) - 1e-12  # never worse than one draft


def test_without_replacement_qs():
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    rows = without_replacement_qs(q, [1, 0, 3])
    assert torch.allclose(rows[0], q)
    assert torch.allclose(rows[1], torch.tensor([0.4, 0.0, 0.2, 0.1]) / 0.7)
    assert torch.allclose(rows[2], torch.tensor([0.0, 0.0, 0.2, 0.1]) / 0.3)


# ----- the verifiers themselves ------------------------------------------------------------------
def root_draft(xs, qs):
    """Siblings xs hanging off the root, node j drawn from qs[j]."""
    return Draft(torch.tensor([xs]), q=torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in qs])[None],
                 parents=torch.tensor([-1] * len(xs)))


def frequencies(verifier, make_draft, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = P_HAND.float().log().expand(3, -1)[None]  # [1, 1 + 2, V]: p at the root (leaves unused)
    out, acc = torch.zeros(3), 0
    for _ in range(n):
        xs, qs = make_draft(g)
        r = verifier.verify_row(root_draft(xs, qs), logits, T1, g)
        out[int(r.tokens[0, 0])] += 1
        acc += r.num_accepted
    return out / n, acc / n


def iid(g):
    xs = torch.multinomial(Q_HAND.float(), 2, replacement=True, generator=g).tolist()
    return xs, [Q_HAND, Q_HAND]


def distinct(g):
    xs = torch.multinomial(Q_HAND.float(), 2, replacement=False, generator=g).tolist()
    return xs, list(without_replacement_qs(Q_HAND, xs))


@pytest.mark.parametrize("verifier, make, acceptance", [
    (SpecTrVerifier(), iid, 0.75),
    (RecursiveVerifier(), distinct, 1.0),
    (RejectionVerifier(), iid, 0.75),  # SpecInfer's rule on i.i.d. siblings
    (RejectionVerifier(), distinct, 1.0),  # each node's own q: exact on both
])
def test_verifiers_accept_as_the_math_says(verifier, make, acceptance):
    freq, acc = frequencies(verifier, make)
    sd = math.sqrt(0.25 / 4000)
    assert acc == pytest.approx(acceptance, abs=5 * sd + 1e-9)
    assert torch.allclose(freq, P_HAND.float(), atol=5 * sd)


def test_spectr_refuses_siblings_drawn_without_replacement():
    xs = [0, 1]
    with pytest.raises(DraftsmithError, match="without replacement"):
        SpecTrVerifier().verify_row(root_draft(xs, list(without_replacement_qs(Q_HAND, xs))),
                                    P_HAND.float().log().expand(3, -1)[None], T1, torch.Generator())


def test_spectr_refuses_deterministic_siblings():
    draft = Draft(torch.tensor([[0, 1]]), parents=torch.tensor([-1, -1]))
    with pytest.raises(DraftsmithError, match="deterministic"):
        SpecTrVerifier().verify_row(draft, P_HAND.float().log().expand(3, -1)[None], T1, torch.Generator())


@pytest.mark.parametrize("xs, match", [([0, 1], "drawn with replacement"), ([1, 1], "repeat a token")])
def test_recursive_refuses_siblings_drawn_with_replacement(xs, match):
    with pytest.raises(DraftsmithError, match=match):
        RecursiveVerifier().verify_row(root_draft(xs, [Q_HAND, Q_HAND]), P_HAND.float().log().expand(3, -1)[None],
                                       T1, torch.Generator())


@pytest.mark.parametrize("verifier", [SpecTrVerifier(), RecursiveVerifier()])
def test_temperature_zero_is_greedy_whatever_the_siblings(verifier):
    """p one-hot: the target's argmax, followed down the tree (here the second sibling, then its child)."""
    logits = torch.full((1, 4, 3), -5.0)
    logits[0, 0, 2] = logits[0, 2, 1] = logits[0, 3, 0] = 5.0
    draft = Draft(torch.tensor([[1, 2, 1]]), parents=torch.tensor([-1, -1, 1]))  # deterministic siblings
    r = verifier.verify_row(draft, logits, SamplingParams(temperature=0.0), None)
    assert r.path == [1, 2] and r.tokens[0].tolist() == [2, 1, 0]
