"""The eagle3 drafter (EAGLE-3 heads): the loop hands it the inputs of its target layers from the
verification forward, its output equals plain decoding (chain, tree, a draft vocabulary, one
row and batched, inside a union), and the errors a user meets. Training is tested in
test_eagle3_train.py, the export to vLLM in tests/unit/test_export_conformance.py."""

from __future__ import annotations

import pytest
import torch

from draftsmith import BatchDecoder, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.drafters.heads import HeadsConfig, build_heads, save_heads
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from tests.conftest import random_heads, tiny_model

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [7] * 12, list(range(10, 40)), [9]]


def eagle3_heads(target, folder, draft_vocab: list[int] | None = None, seed: int = 2, scale: float = 0.5) -> str:
    """Random EAGLE-3 heads for `target`, over `draft_vocab` (target ids) when given."""
    torch.manual_seed(seed)
    cfg = HeadsConfig.for_target("eagle3", target.config, num_heads=3,
                                 draft_vocab_size=len(draft_vocab) if draft_vocab else 0)
    module = build_heads(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
        if draft_vocab:
            module.set_vocab(torch.tensor(draft_vocab))
    save_heads(module, folder)
    return str(folder)


def test_the_loop_hands_eagle3_the_inputs_of_its_layers(tmp_path):
    """Guards the features plumbing: an EAGLE-3 head must read the inputs of its aux layers
    (hidden_states[i], concatenated in order) from the same forward, in prefill and in every
    observe; handing it the last hidden state, or the layers in another order, drafts from
    the wrong features without any error if widths happen to match."""
    target = tiny_model("llama", layers=4)
    heads = random_heads(target, "eagle3", tmp_path / "e3")
    from draftsmith.drafters.heads.eagle3 import Eagle3Drafter

    seen: list[torch.Tensor] = []

    class Spy(Eagle3Drafter):  # records what the loop hands the drafter (forks share `seen`)
        def prefill(self, ids, features=None):
            seen.append(features[0])
            super().prefill(ids, features)

        def observe(self, result):
            seen.append(result.hidden[0])
            super().observe(result)

    drafter = Spy(heads=heads)
    drafter.bind(target)
    assert drafter.feature_layers == (0, 2, 3)
    dec = SpeculativeDecoder(target, drafter)
    prompt = PROMPTS[0]
    out = dec.generate(prompt, SamplingParams(max_new_tokens=12, ignore_eos=True))
    ids = prompt + out.token_ids
    with torch.no_grad():
        hs = target.model(input_ids=torch.tensor([ids], device=target.device), output_hidden_states=True).hidden_states
    want = torch.cat([hs[0], hs[2], hs[3]], dim=-1)[0]  # [T, 3H]
    got = torch.cat(seen, dim=0)  # every committed token but the newest, in order
    assert got.shape == (len(ids) - 1, 3 * target.config.hidden_size)
    torch.testing.assert_close(got, want[: len(ids) - 1], atol=1e-4, rtol=1e-4)


VARIANTS = {"chain": {}, "tree": {"tree_nodes": 8, "topk": 3, "beam": 2}}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vocab", ["full", "subset"])
def test_eagle3_greedy_equals_autoregressive(arch, variant, vocab, tmp_path):
    """Greedy output is the target's own, one row and batched, whatever the head drafts: with
    the whole vocabulary and with a third of it (draft ids mapped through d2t)."""
    target = tiny_model(arch, layers=4)
    sub = list(range(1, target.vocab_size, 3)) if vocab == "subset" else None
    heads = eagle3_heads(target, tmp_path / "e3", sub)
    options = VARIANTS[variant]
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    refs = [SpeculativeDecoder(target, "none").generate(p, params).token_ids for p in PROMPTS]
    outs = [SpeculativeDecoder(target, "eagle3", heads=heads, **options).generate(p, params) for p in PROMPTS]
    assert [o.token_ids for o in outs] == refs
    assert sum(o.stats.drafted for o in outs) > 0
    if sub is not None:  # every drafted token is in the draft vocabulary
        d = build_drafter("eagle3", heads=heads)
        d.bind(target)
        assert sorted(d.lm_head.token_ids.tolist()) == sub
    dec = BatchDecoder(target, build_drafter("eagle3", heads=heads, **options), k_max=3, smartspec=False)
    assert [r.token_ids for r in dec.generate(PROMPTS, params)] == refs


def test_eagle3_inside_a_union_equals_autoregressive(tmp_path):
    """A union hands its members the features they read (union.feature_layers from its eagle3
    member): the merged tree still decodes to the target's own output."""
    target = tiny_model("llama", layers=4)
    heads = random_heads(target, "eagle3", tmp_path / "e3")
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    union = build_drafter("union", drafters=["ngram:k=3", f"eagle3:heads={heads},tree_nodes=6,topk=2"], max_nodes=10)
    for p in PROMPTS:
        ref = SpeculativeDecoder(target, "none").generate(p, params).token_ids
        assert SpeculativeDecoder(target, union).generate(p, params).token_ids == ref


def test_eagle3_errors_are_clear(tmp_path):
    """Heads for a deeper target, EAGLE-1 heads given to eagle3, and a union of members that
    read different features are refused with a message, not a shape error mid-decoding."""
    deep = tiny_model("llama", layers=8)
    shallow = tiny_model("llama", layers=4)
    heads = random_heads(deep, "eagle3", tmp_path / "deep")  # aux layers (2, 4, 5)
    with pytest.raises(IncompatibleDrafterError, match="layers"):
        SpeculativeDecoder(shallow, "eagle3", heads=heads)
    e1 = random_heads(shallow, "eagle", tmp_path / "e1")
    with pytest.raises(IncompatibleDrafterError, match="eagle heads, not eagle3"):
        SpeculativeDecoder(shallow, "eagle3", heads=e1)
    e3 = random_heads(shallow, "eagle3", tmp_path / "e3")
    with pytest.raises(IncompatibleDrafterError, match="different target features"):
        SpeculativeDecoder(shallow, "union", drafters=[f"eagle:heads={e1}", f"eagle3:heads={e3}"])
    with pytest.raises(DraftsmithError, match="vocab"):
        build_drafter("eagle3", heads=e3, vocab=100)


def test_eagle3_inside_rasd_equals_autoregressive(tmp_path):
    """rasd forwards its model member's feature_layers (without it the loop handed an eagle3
    member the last hidden state and the row failed with a width error)."""
    target = tiny_model("qwen2", layers=4)
    heads = random_heads(target, "eagle3", tmp_path / "e3")
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    for p in PROMPTS:
        ref = SpeculativeDecoder(target, "none").generate(p, params).token_ids
        rasd = build_drafter("rasd", model=[f"eagle3:heads={heads},tree_nodes=6,topk=2"], retrieval="ngram:k=3",
                             max_nodes=10)
        assert SpeculativeDecoder(target, rasd).generate(p, params).token_ids == ref


class BareLayers:
    """A user's drafter (no DrafterBase) that reads two target layers' inputs: proposes nothing,
    records the width of what it is handed."""

    name = "bare-layers"
    needs_hidden_states = True
    trees = False

    def __init__(self, layers):
        self.feature_layers, self.widths = layers, []

    def prefill(self, prompt_ids, features=None):
        self.widths.append(features.shape[-1])

    def propose(self, ctx):
        from draftsmith import Draft

        return Draft.empty()

    def observe(self, result):
        self.widths.append(result.hidden.shape[-1])


def test_a_user_drafter_gets_the_layers_it_asks_for_or_a_clear_error():
    """A bare object's feature_layers are honoured (the loop reads them through the adapter), and
    an index the target does not have is refused when the decoder is built, not an IndexError in
    the middle of a batched step (which would fail every row)."""
    target = tiny_model("llama", layers=4)
    user = BareLayers([1, 4])  # 4 = the last entry, after the final norm
    SpeculativeDecoder(target, user).generate([5, 6, 7], SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert set(user.widths) == {2 * target.config.hidden_size}
    with pytest.raises(IncompatibleDrafterError, match="feature_layers"):
        SpeculativeDecoder(target, BareLayers([0, 9]))
