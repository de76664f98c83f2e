"""The visual autoregressive pair (draftsmith/visual.py): the image-token layout, the latent
codebook that LANTERN's relaxed rule groups by, a trained pair decoding exactly under greedy
speculation (tokenizer-less folders, id prompts), and the relaxed rule's quality test on images
(lossy: the classifier accuracy of its images stays near plain sampling's, while a rule that groups
every intensity together must fail the same test)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")

from draftsmith import SamplingParams, SpeculativeDecoder, load_target  # noqa: E402
from draftsmith.errors import DraftsmithError  # noqa: E402
from draftsmith.verify import RelaxedVerifier  # noqa: E402
from draftsmith.verify.relaxed import Neighbours  # noqa: E402
from draftsmith import visual  # noqa: E402


def test_sequences_and_images_round_trip():
    train, test = visual.load_digits()
    assert len(train.labels) + len(test.labels) == 1797 and len(test.labels) == 297
    seqs = train.sequences()
    assert seqs.shape == (len(train.labels), 66) and (seqs[:, 0] == visual.BOS).all()
    assert ((seqs[:, 1] >= visual.CLASS0) & (seqs[:, 1] < visual.BOS)).all() and (seqs[:, 2:] < visual.LEVELS).all()
    assert torch.equal(visual.image_of(seqs[0, 2:].tolist()), train.images[0])
    with pytest.raises(DraftsmithError, match="64 pixel tokens"):
        visual.image_of([1, 2])
    with pytest.raises(DraftsmithError, match="0..9"):
        visual.prompt(12)


def test_the_codebook_groups_an_intensity_with_its_nearest_intensities():
    """LANTERN groups by latent proximity: intensity i's two neighbours must be i-1 and i+1 (ends:
    the next two), never a class token (bug guarded: grouping by the tiny target's LM-head rows,
    which bind() used to put in place of the codebook given)."""
    nb = Neighbours(visual.codebook(), 2)
    for i in range(1, visual.LEVELS - 1):
        assert sorted(nb(torch.tensor([i]))[0].tolist()) == [i - 1, i + 1]
    assert sorted(nb(torch.tensor([0]))[0].tolist()) == [1, 2]
    rule = RelaxedVerifier(k=2, embeddings=visual.codebook())
    target = load_target(str(_pair()[0]), dtype="fp32", progress=False)
    rule.bind(target)
    assert sorted(rule.neighbours(visual.VOCAB)(torch.tensor([5]))[0].tolist()) == [4, 6]


def _pair():
    """The pair shipped in the package (trained by benchmarks/visual_ar.py)."""
    return visual.shipped_pair()


def test_training_the_pair_lowers_the_loss(tmp_path):
    """visual.train_model on a slice of the digits, a tiny shape, 3 epochs: the loss falls and the
    folder loads as a target that generates 64 image tokens from an id prompt."""
    train, _ = visual.load_digits()
    part = visual.Digits(train.images[:256], train.labels[:256])
    losses = []
    folder = visual.train_model(part, tmp_path / "t", hidden=32, layers=1, heads=2, epochs=3, log=losses.append)
    values = [float(line.rsplit(" ", 1)[1]) for line in losses]
    assert len(values) == 3 and values[-1] < values[0]
    target = load_target(str(folder), dtype="fp32", progress=False)
    out = SpeculativeDecoder(target, "none").generate(visual.prompt(4), SamplingParams(max_new_tokens=64, ignore_eos=True))
    assert len(out.token_ids) == 64 and visual.image_of(out.token_ids).shape == (64,)


def test_greedy_speculation_on_the_image_model_is_plain_decoding():
    target_dir, drafter_dir = _pair()
    target = load_target(str(target_dir), dtype="fp32", progress=False)
    params = SamplingParams(max_new_tokens=64, ignore_eos=True)
    for label in (0, 3, 7):
        ref = SpeculativeDecoder(target, "none").generate(visual.prompt(label), params)
        got = SpeculativeDecoder(target, "draft_model", model=str(drafter_dir), k=4, adaptive=False).generate(
            visual.prompt(label), params)
        assert got.token_ids == ref.token_ids and got.stats.accepted > 0


def _images(target, drafter_dir, verifier, n_per_class: int = 5):
    params = SamplingParams(temperature=1.0, max_new_tokens=64, ignore_eos=True)
    labels = [c for c in range(10) for _ in range(n_per_class)]
    dec = SpeculativeDecoder(target, "draft_model" if drafter_dir else "none", verifier=verifier,
                             **({"model": str(drafter_dir), "k": 4, "adaptive": False} if drafter_dir else {}))
    images, steps, new = [], 0, 0
    for i, label in enumerate(labels):
        r = dec.generate(visual.prompt(label), params, torch.Generator().manual_seed(100 + i))
        images.append(visual.image_of(r.token_ids))
        steps, new = steps + r.stats.steps, new + r.stats.new_tokens
    return torch.stack(images), torch.tensor(labels), new / steps, r.stats.lossless


def test_relaxed_acceptance_keeps_the_images_recognisable_and_a_rule_that_groups_everything_does_not():
    """The quality test of a lossy rule on images: relaxed (k=4, delta=0.4) accepts more drafts
    than lossless sampling and its images are classified as their class nearly as often as plain
    sampling's (within 0.2). The negative control, every intensity one group (k=16, delta=1),
    must fall below that bar."""
    target_dir, drafter_dir = _pair()
    target = load_target(str(target_dir), dtype="fp32", progress=False)
    train, _ = visual.load_digits()
    clf = visual.DigitClassifier(train)
    plain, labels, _, _ = _images(target, None, None)
    base = clf.accuracy(plain, labels)
    _, _, tau_lossless, lossless = _images(target, drafter_dir, None)
    relaxed, _, tau_relaxed, flag = _images(target, drafter_dir, RelaxedVerifier(k=4, delta=0.4,
                                                                                 embeddings=visual.codebook()))
    everything, _, _, _ = _images(target, drafter_dir, RelaxedVerifier(k=16, delta=1.0, embeddings=visual.codebook()))
    assert lossless and not flag
    assert base > 0.5, f"plain sampling's images are not recognisable ({base}): the pair did not train"
    assert tau_relaxed > tau_lossless
    assert clf.accuracy(relaxed, labels) >= base - 0.2, (clf.accuracy(relaxed, labels), base)
    assert clf.accuracy(everything, labels) < base - 0.2, (clf.accuracy(everything, labels), base)
