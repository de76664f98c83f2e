"""`draftsmith train heads --kind eagle3`: EAGLE-3 heads train on the inputs of the target's aux
layers with the training-time test (`eagle_passes` from g = fc(aux)), the training's draft steps
are the drafter's, a trained head is accepted more often than an untrained one (and decoding
stays the target's), the feature file knows which layers it holds, and the acceptance losses
(`tv`, `accept`) are what they claim."""

from __future__ import annotations

import pytest
import torch

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.errors import DraftsmithError
from draftsmith.drafters.heads import HeadsConfig, build_heads, load_heads, save_heads
from draftsmith.train.features import cached_features, extract_features
from draftsmith.train.heads import HeadsTrainConfig, _token_loss, eagle_passes, train_heads
from tests.conftest import tiny_model


def _scalars(folder, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def _perturbed_eagle3(target, seed: int = 3, scale: float = 0.2, vocab: list[int] | None = None):
    torch.manual_seed(seed)
    cfg = HeadsConfig.for_target("eagle3", target.config, num_heads=4, draft_vocab_size=len(vocab) if vocab else 0)
    head = build_heads(cfg).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * scale)
        if vocab:
            head.set_vocab(torch.tensor(vocab))
    return head


def _own_answers(target, n: int, prompt_len: int, answer_len: int, seed: int) -> list[tuple[list[int], int]]:
    """Sequences the target answers itself (greedy): what a head can learn to predict."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    params = SamplingParams(max_new_tokens=answer_len, ignore_eos=True)
    dec = SpeculativeDecoder(target, "none")
    for _ in range(n):
        prompt = torch.randint(3, target.vocab_size, (prompt_len,), generator=gen).tolist()
        out.append((prompt + dec.generate(prompt, params).token_ids, prompt_len))
    return out


def test_eagle3_training_loss_falls_and_the_head_keeps_its_vocabulary(tmp_path):
    """The eagle3 loss (KL over the draft vocabulary at draft steps 1..3, no feature regression)
    falls over epochs of a feature file that holds the aux layers' inputs; the saved head drafts
    over the `train_vocab` most frequent answer tokens, end-of-sequence ids included (a head whose
    d2t was never set would draft over token ids 0..N-1)."""
    target = tiny_model("llama", vocab=64, seed=4, layers=4)
    gen = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(64, (40,), generator=gen).tolist(), 4) for _ in range(12)]
    cfg = HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "e3"), steps=24, batch_tokens=128, lr=3e-3, holdout=4,
                           log_every=4, features=str(tmp_path / "feats.pt"), train_vocab=40)
    train_heads(target, seqs, cfg, progress=False)
    losses = _scalars(tmp_path / "e3" / "runs", "train/loss")
    assert losses[-1] < 0.7 * losses[0]
    head = load_heads(tmp_path / "e3")
    training = head.cfg.training
    assert (head.cfg.kind, head.cfg.draft_vocab_size, training["unroll"], training["noise"]) == ("eagle3", 40, 3, 0.0)
    assert len(training["held_out"]["top1_agreement"]) == 3 and training["tokens_per_second"] > 0
    ids = head.token_ids().tolist()
    assert ids == sorted(ids) and set(target.eos_token_ids) <= set(ids)
    from collections import Counter

    counts = Counter(t for s, start in seqs[4:] for t in s[start:])  # the training answers (not the held-out ones)
    counts.update(t for s, start in seqs[:4] for t in s[start:])
    assert set(ids) - set(target.eos_token_ids) <= set(counts)

    # --init: more steps on other data start from the trained head (its loss, not a fresh head's)
    # and keep its draft vocabulary, though the new answers' most frequent tokens differ
    other = [(torch.randint(20, 64, (40,), generator=gen).tolist(), 4) for _ in range(12)]
    more = HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "more"), steps=4, batch_tokens=128, lr=1e-4, holdout=4,
                            log_every=4, train_vocab=40, init=str(tmp_path / "e3"))
    train_heads(target, seqs[:4] + other, more, progress=False)
    assert load_heads(tmp_path / "more").token_ids().tolist() == ids
    fresh = HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "fresh"), steps=4, batch_tokens=128, lr=1e-4, holdout=4,
                             log_every=4, train_vocab=40)
    train_heads(target, seqs[:4] + other, fresh, progress=False)
    assert _scalars(tmp_path / "more" / "runs", "train/loss")[0] < 0.8 * _scalars(tmp_path / "fresh" / "runs", "train/loss")[0]
    with pytest.raises(DraftsmithError, match="no eagle3 heads ship"):  # --init shipped where none ship
        train_heads(target, seqs, HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "x"), steps=1, holdout=4,
                                                   train_vocab=40, init="shipped"), progress=False)
    with pytest.raises(DraftsmithError, match="draft_vocab_size"):  # heads of another shape
        train_heads(target, seqs, HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "x"), steps=1, holdout=4,
                                                   train_vocab=32, init=str(tmp_path / "e3")), progress=False)
    (tmp_path / "fresh" / "checkpoint").rename(tmp_path / "e3" / "checkpoint2")  # a checkpoint over another vocabulary
    (tmp_path / "e3" / "checkpoint").rename(tmp_path / "e3" / "old")
    (tmp_path / "e3" / "checkpoint2").rename(tmp_path / "e3" / "checkpoint")
    with pytest.raises(DraftsmithError, match="another draft vocabulary"):
        train_heads(target, seqs, HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "e3"), steps=30, batch_tokens=128,
                                                   holdout=4, train_vocab=40), progress=False)


def test_feature_file_of_other_layers_is_made_again(tmp_path, monkeypatch):
    """A feature file of last hidden states only (eagle, distill) is not read as an eagle3 file
    (which also needs the aux layers' inputs), nor a file of other aux layers; an eagle3 file is
    read back with its aux features, the target's hidden_states[i] concatenated in order."""
    from draftsmith.train import features as features_mod

    target = tiny_model("llama", vocab=64, seed=2, layers=4)
    gen = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(64, (n,), generator=gen).tolist(), 3) for n in (20, 9, 31)]
    path = str(tmp_path / "feats.pt")
    plain = cached_features(target, seqs, 32, path, progress=False)
    assert all(it.aux is None for it in plain)
    e3 = cached_features(target, seqs, 32, path, progress=False, aux_layers=(0, 2, 3))
    with torch.no_grad():
        hs = target.model(input_ids=torch.tensor([seqs[0][0]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(e3[0].aux.float(), torch.cat([hs[0], hs[2], hs[3]], -1)[0].float(), atol=1e-4, rtol=1e-4)
    calls = []
    monkeypatch.setattr(features_mod, "extract_features", lambda *a, **k: calls.append(k.get("aux_layers")) or [])
    again = cached_features(target, seqs, 32, path, progress=False, aux_layers=(0, 2, 3))  # same layers: read back
    assert not calls and all(torch.equal(a.aux, b.aux) for a, b in zip(e3, again))
    for other in [(0, 1, 3), None]:  # other layers, or none: made again (here by the stub, which makes none)
        with pytest.raises(Exception, match="at least 3 answer tokens"):
            cached_features(target, seqs, 32, path, progress=False, aux_layers=other)
    assert calls == [(0, 1, 3), None]


def test_feature_file_resumes_after_its_last_slice(tmp_path, monkeypatch):
    """An interrupted feature run keeps its finished slices of 256 sequences: a rerun makes only
    the missing ones (a 35-minute file must not start over)."""
    from draftsmith.train import features as features_mod

    target = tiny_model("llama", vocab=64, seed=2, layers=4)
    gen = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(64, (8,), generator=gen).tolist(), 3) for _ in range(300)]
    real = features_mod.extract_features
    sizes = []

    def dies_on_second_slice(target, sequences, *a, **k):
        sizes.append(len(sequences))
        if len(sizes) == 2:
            raise KeyboardInterrupt
        return real(target, sequences, *a, **k)

    monkeypatch.setattr(features_mod, "extract_features", dies_on_second_slice)
    path = tmp_path / "feats.pt"
    with pytest.raises(KeyboardInterrupt):
        cached_features(target, seqs, 32, str(path), progress=False, aux_layers=(0, 2, 3))
    assert not path.exists() and sizes == [256, 44]
    sizes.clear()
    items = cached_features(target, seqs, 32, str(path), progress=False, aux_layers=(0, 2, 3))
    assert sizes == [44] and len(items) == 300 and path.is_file() and not (tmp_path / "feats.pt.parts").exists()
    ref = real(target, seqs[250:260], 32, aux_layers=(0, 2, 3))
    for a, b in zip(items[250:260], ref):
        torch.testing.assert_close(a.aux, b.aux)


def test_eagle3_unrolled_training_matches_drafting_step_by_step():
    """Training-time test on an EAGLE-3 head: draft step u of `eagle_passes` (step 1 from
    g = combine(aux), later steps from the previous step's output u) at every index at once equals
    what the head computes at its u-th draft token with the committed pairs in its cache."""
    target = tiny_model("llama", layers=4)
    head = _perturbed_eagle3(target).double()  # float64: the two orders of summation agree to ~1e-12
    n, H = 9, head.cfg.hidden_size
    gen = torch.Generator().manual_seed(0)
    aux = torch.randn(1, n, 3 * H, dtype=torch.float64, generator=gen)
    embeds = torch.randn(1, n, H, dtype=torch.float64, generator=gen)  # e_{i+1}
    with torch.no_grad():
        g = head.combine(aux)
        outs = eagle_passes(head, g, embeds, 3)
        for i in range(n):
            cache = head.new_cache()
            if i:
                head(g[:, :i], embeds[:, :i], torch.arange(i)[None], cache)
            u = head(g[:, i:i + 1], embeds[:, i:i + 1], torch.tensor([[i]]), cache)
            torch.testing.assert_close(u, outs[0][:, i:i + 1], rtol=1e-9, atol=1e-9)
            for step in (2, 3):
                k = i + step - 1
                if k >= n:
                    break
                u = head(u, embeds[:, k:k + 1], torch.tensor([[k]]), cache)
                torch.testing.assert_close(u, outs[step - 1][:, k:k + 1], rtol=1e-9, atol=1e-9)


def test_eagle3_drafter_drafts_what_training_predicts(tmp_path):
    """The eagle3 drafter's greedy chain (k=3) from a prompt is the argmax, over the draft
    vocabulary mapped to target ids, of the training's steps 1..3 on the sequence prompt +
    drafts, with the target's aux features: training and drafting read the same features, the
    same pairs and the same draft ids (a shift by one position or an unmapped draft id fails)."""
    target = tiny_model("llama", layers=4)
    vocab = list(range(2, target.vocab_size, 2))
    head = _perturbed_eagle3(target, seed=5, scale=0.3, vocab=vocab)
    save_heads(head, tmp_path / "e3")
    drafter = build_drafter("eagle3", heads=str(tmp_path / "e3"), k=3)
    drafter.bind(target)
    gen = torch.Generator().manual_seed(1)
    for trial in range(3):
        prompt = torch.randint(target.vocab_size, (7 + trial,), generator=gen).tolist()
        item = extract_features(target, [(prompt + [0, 0, 0], len(prompt))], 64, aux_layers=drafter.feature_layers)[0]
        aux = item.aux[None]  # [1, L, 3H]
        drafter.prefill(prompt, aux[:, : len(prompt) - 1])
        draft = drafter.propose(DraftContext(ids=prompt, max_tokens=3, params=SamplingParams(temperature=0.0)))
        tokens = draft.token_ids[0].tolist()
        seq = torch.tensor(prompt + tokens)
        with torch.no_grad():
            embeds = target.model.get_input_embeddings()(seq[1:])[None]
            outs = eagle_passes(head, head.combine(aux[:, : len(seq) - 1]), embeds, 3)
        i = len(prompt) - 1  # the bonus token's index: step u's output at i - 1 + u - 1 predicts draft u
        want = [int(head.token_ids()[head.logits(outs[u][0, i - 1 + u]).argmax()]) for u in range(3)]
        assert tokens == want


def test_trained_eagle3_is_accepted_more_and_decodes_as_the_target(tmp_path):
    """A head trained on the target's own answers is accepted more often than the same head
    untrained when drafting those answers again (guards that what training teaches is what the
    drafter reads: features, pairs, draft ids), and greedy decoding with either is the target's
    own output (fp32)."""
    target = tiny_model("llama", layers=4, seed=6)
    seqs = _own_answers(target, 10, 5, 16, seed=0)
    common = dict(batch_tokens=48, holdout=2, train_vocab=0, log_every=100)
    train_heads(target, seqs, HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "u"), steps=1, lr=1e-12, **common),
                progress=False)
    train_heads(target, seqs, HeadsTrainConfig(kind="eagle3", out=str(tmp_path / "t"), steps=40, lr=1e-2,
                                               features=str(tmp_path / "feats.pt"), **common), progress=False)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    accepted = {}
    for name in ("u", "t"):
        dec = SpeculativeDecoder(target, build_drafter("eagle3", heads=str(tmp_path / name), k=3))
        total = 0
        for ids, start in seqs[2:]:  # the training sequences' prompts
            out = dec.generate(ids[:start], params)
            assert out.token_ids == ids[start:]  # the target's own greedy answer
            total += out.stats.accepted
        accepted[name] = total
    assert accepted["t"] > accepted["u"] + 16, accepted


def test_acceptance_losses_are_their_formulas():
    """`tv` = 1 - Σ min(p, q) and `accept` = -log Σ min(p, q) on a small example (p and q
    softmaxes of the logits), and both have finite gradients where p and q have disjoint
    supports (an unguarded -log 0 is inf, and its gradient NaN)."""
    p_logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    q_logits = torch.tensor([[0.5, 0.5, 0.0, -1.0]], requires_grad=True)
    p, q = p_logits.softmax(-1), q_logits.detach().softmax(-1)
    overlap = torch.minimum(p, q).sum()
    none = torch.tensor([-1])
    torch.testing.assert_close(_token_loss(q_logits, p_logits, none, "tv")[0], 1 - overlap)
    torch.testing.assert_close(_token_loss(q_logits, p_logits, none, "tv")[0], 0.5 * (p - q).abs().sum())
    torch.testing.assert_close(_token_loss(q_logits, p_logits, none, "accept")[0], -overlap.log(), rtol=1e-5, atol=1e-5)
    inf = float("-inf")
    for p_l, q_l in [([0.0, 0.0, inf, inf], [inf, inf, 0.0, 1.0]), ([30.0, 30.0, -30.0, -30.0], [-30.0, -30.0, 30.0, 29.0])]:
        for kind in ("tv", "accept"):
            x = torch.tensor([q_l], requires_grad=True)
            loss = _token_loss(x, torch.tensor([p_l]), none, kind).sum()
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), (kind, p_l, loss, x.grad)
            assert loss > (0.99 if kind == "tv" else 10)  # no overlap: TV 1, -log of (almost) 0 large


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
def test_a_padded_batch_of_sequences_has_the_loss_of_each_alone(kind):
    """EAGLE heads train on several sequences in one right-padded batch (`HeadsLoss.batch`):
    the loss, its gradient, the token count and the agreement counts must be the sums of each
    sequence alone, feature noise included (a padding position that leaked into attention, or
    noise drawn in another order, would change them)."""
    from draftsmith.train.heads import HeadsLoss, micro_batches

    target = tiny_model("llama", vocab=64, seed=4, layers=4)
    gen = torch.Generator().manual_seed(5)
    seqs = [(torch.randint(64, (n,), generator=gen).tolist(), s) for n, s in [(30, 5), (12, 3), (25, 10), (18, 2)]]
    cfg_kw = {"draft_vocab_size": 0} if kind == "eagle3" else {}
    hcfg = HeadsConfig.for_target(kind, target.config, num_heads=4, **cfg_kw)
    aux = tuple(hcfg.aux_layers) if kind == "eagle3" else None
    items = extract_features(target, seqs, max_len=64, top=True, aux_layers=aux)
    torch.manual_seed(0)
    head = build_heads(hcfg).float()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    lm = target.model.get_output_embeddings()
    lm_head = torch.nn.Linear(lm.weight.shape[1], lm.weight.shape[0], bias=False)
    lm_head.weight = torch.nn.Parameter(lm.weight.detach().float(), requires_grad=False)
    embed = torch.nn.Embedding.from_pretrained(target.model.get_input_embeddings().weight.detach().float())
    cfg = HeadsTrainConfig(kind=kind, out="unused", noise=0.1, unroll=3, num_heads=4)
    cfg.check()
    fn = HeadsLoss(head, lm_head, embed, cfg)

    def run(groups):
        head.zero_grad()
        g = torch.Generator().manual_seed(0)
        total, n, stats = 0.0, 0, torch.zeros(4, 2)
        for group in groups:
            loss, c, s, _ = fn.batch(group, g)
            total, n, stats = total + loss, n + c, stats + s
        total.backward()
        return total.detach(), n, stats, [p.grad.clone() for p in head.parameters() if p.grad is not None]

    alone, batched = run([[it] for it in items]), run([items])
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-5)
    assert batched[1] == alone[1] and torch.equal(batched[2], alone[2])
    for a, b in zip(alone[3], batched[3]):  # sums of thousands of fp32 terms: within 5e-4 of the largest
        torch.testing.assert_close(b, a, rtol=1e-3, atol=5e-4 * float(a.abs().max()))
    groups = micro_batches(items, 50)  # lengths 30, 12, 25, 18: [12, 18], [25], [30]
    assert [[len(it.ids) for it in g] for g in groups] == [[12, 18], [25], [30]]
