"""PARD (parallel drafting): the training layout, the drafter's one-forward drafts, its errors."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith import CausalLM, build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from draftsmith.train.pard import choose_mask_token, layout_mask, pard_batch, pard_layout
from draftsmith.types import SamplingParams
from tests.conftest import tiny_model

MASK = 95


def _inference_logits(lm: CausalLM, prefix: list[int], k: int) -> torch.Tensor:
    """What the drafter computes at inference: the prefix, then k - 1 masks, one forward."""
    with torch.no_grad():
        ids = torch.tensor([prefix + [MASK] * (k - 1)], device=lm.device)
        return lm.model(ids).logits[0, -k:].float()  # [k, V]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_training_layout_gives_each_mask_exactly_what_it_sees_at_inference(arch):
    """Guards the COD layout (custom attention mask and position ids): a mask that saw a later real
    token, another anchor's mask, or the wrong position would train the drafter on a view it never
    has when drafting, and its drafts would be worse than its training loss says."""
    lm = tiny_model(arch, vocab=96, seed=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 90, (23,), generator=g).tolist()
    k, start = 4, 6
    lay = pard_layout(ids, start, k, MASK, keep=0.7, generator=g)
    batch = pard_batch([lay, pard_layout(ids[:15], 3, k, MASK)], pad_id=0)  # a second, shorter row: padding
    with torch.no_grad():
        out = lm.model(input_ids=batch.ids.to(lm.device), attention_mask=batch.attention.to(lm.device),
                       position_ids=batch.positions.to(lm.device)).logits[0].float()  # [L, V]
    checked = 0
    for e in range(len(lay["ids"])):
        j, a = int(lay["block"][e]), int(lay["anchor"][e])
        if int(lay["labels"][e]) < 0:
            continue
        want = _inference_logits(lm, ids[: a + 1], j + 1)[j]  # position j of a draft after x_0..x_a
        torch.testing.assert_close(out[e], want, atol=2e-4, rtol=2e-4)
        assert int(lay["labels"][e]) == ids[a + j + 1]
        checked += 1
    assert checked == int((lay["labels"] >= 0).sum()) and int((lay["block"] == k - 1).sum()) > 0


def test_deeper_blocks_keep_a_subset_of_the_anchors_and_labels_cover_only_the_answer():
    """A mask at depth j needs its anchor's masks at depths 1..j-1 (else its view has a hole), and
    prompt tokens are never labels."""
    g = torch.Generator().manual_seed(1)
    ids = list(range(40))
    lay = pard_layout(ids, 10, 5, MASK, keep=0.6, generator=g)
    anchors = [set(lay["anchor"][lay["block"] == j].tolist()) for j in range(5)]
    for j in range(2, 5):
        assert anchors[j] <= anchors[j - 1]
    assert min(anchors[1]) >= 9 and all(a + j + 1 < 40 for j in range(1, 5) for a in anchors[j])
    labelled = lay["labels"] >= 0
    assert int(lay["labels"][labelled].min()) >= 10  # ids are their own positions: answer tokens only
    with pytest.raises(DraftsmithError):
        pard_layout(ids, 10, 0, MASK)
    with pytest.raises(DraftsmithError):
        pard_layout(ids, 10, 3, MASK, keep=0.0)


def test_padding_sees_only_itself_and_nothing_sees_padding():
    block = torch.tensor([[0, 0, 1, -1]])
    anchor = torch.tensor([[0, 1, 0, -1]])
    m = layout_mask(block, anchor)[0]
    assert m[3].tolist() == [False, False, False, True] and not m[:3, 3].any()
    assert m[2].tolist() == [True, False, True, False]  # the mask of anchor 0 sees x_0 and itself only


def test_the_mask_token_chosen_is_unused_by_the_data_and_not_special():
    assert choose_mask_token(10, seen={9, 8}, special={7}) == 6
    with pytest.raises(DraftsmithError):
        choose_mask_token(3, seen={0, 1}, special={2})


def _pard_lm(arch="llama", seed=1, k=3):
    lm = tiny_model(arch, vocab=96, seed=seed)
    lm.model.config.pard_token, lm.model.config.pard_k = MASK, k
    return lm


def test_one_forward_drafts_every_position_and_leaves_only_committed_tokens_cached():
    """Guards the cache: masks left in the drafter's cache would be read as context next step."""
    target, lm = tiny_model("llama", vocab=96, seed=0), _pard_lm()
    d = build_drafter("pard", model=CausalLM(lm.model))
    d.bind(target)
    assert d.k == 3  # the pard_k it was trained for
    row = d.fork()
    prompt = [5, 7, 11, 13]
    row.prefill(prompt)
    ids = prompt + [17]
    draft = row.propose(DraftContext(ids=ids, max_tokens=8, params=SamplingParams(temperature=0.0)))
    want = _inference_logits(lm, ids, 3)[:, :96].argmax(-1).tolist()
    assert draft.token_ids[0].tolist() == want
    assert row.draft.length == len(ids)
    draft = row.propose(DraftContext(ids=ids + [want[0], 3], max_tokens=2, params=SamplingParams(temperature=0.0)))
    assert draft.token_ids[0].tolist() == _inference_logits(lm, ids + [want[0], 3], 2).argmax(-1).tolist()
    sampled = row.propose(DraftContext(ids=ids, max_tokens=3, params=SamplingParams(temperature=1.0),
                                       generator=torch.Generator().manual_seed(0)))
    assert sampled.q.shape == (1, 3, 96)
    torch.testing.assert_close(sampled.q.sum(-1), torch.ones(1, 3))


def test_a_draft_model_not_trained_for_pard_is_refused_with_what_to_do():
    target, lm = tiny_model("llama", vocab=96, seed=0), tiny_model("llama", vocab=96, seed=1)
    d = build_drafter("pard", model=CausalLM(lm.model))
    with pytest.raises(IncompatibleDrafterError, match="train pard"):
        d.bind(target)
    with pytest.raises(IncompatibleDrafterError, match="outside"):
        build_drafter("pard", model=CausalLM(lm.model), mask_token=500).bind(target)
    for bad in ({"k": 0}, {"k": True}, {"mask_token": -1}):
        with pytest.raises(DraftsmithError):
            build_drafter("pard", model=CausalLM(lm.model), **bad)


def test_train_pard_writes_a_drafter_vllm_can_read_the_mask_from(tmp_path):
    """`train pard` end to end on a tiny model: the folder's config.json carries pard_token and
    pard_k (vLLM's parallel drafting reads pard_token), and the loss falls on its training data."""
    from draftsmith.train.pard import train_pard
    from draftsmith.train.trainer import TrainConfig

    target = tiny_model("llama", vocab=96, seed=0)
    start = tmp_path / "start"
    tiny_model("llama", vocab=96, seed=1).model.save_pretrained(start)
    g = torch.Generator().manual_seed(0)
    rows = [{"prompt_ids": torch.randint(0, 40, (5,), generator=g).tolist(),
             "response_ids": [(i * 3 + j) % 40 for j in range(20)]} for i in range(24)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(stage="pard", out=str(tmp_path / "pard"), steps=60, batch_size=4, lr=1e-2, train_vocab=0,
                      bf16=False, log_every=5, save_every=100)
    out = train_pard(target, str(start), str(data), cfg, k=3, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["pard_k"] == 3 and 40 <= config["pard_token"] < 96
    record = json.loads((out / "training.json").read_text())
    agree = record["config"]["extra"]["pard_held_out"]["agreement_by_position"]
    assert len(agree) == 3 and min(agree) > 0.5  # an arithmetic answer the drafter can learn at every depth
    d = build_drafter("pard", model=str(out))
    d.bind(target)
    assert d.mask_token == config["pard_token"] and d.k == 3


def test_export_writes_a_draft_model_vllm_loads_and_the_config_to_run_it_with(tmp_path):
    """vLLM loads every *.safetensors of a draft model folder and fails on the draft vocabulary's
    `token_ids`; its parallel drafting needs `pard_token` in config.json. The export leaves the
    vocabulary behind, keeps the mask, and says how to run it."""
    from draftsmith.drafters.heads.export import export_heads
    from draftsmith.drafters.heads.vocab import save_vocab

    src = tmp_path / "pard"
    lm = _pard_lm(k=5)
    lm.model.save_pretrained(src)
    save_vocab(src, list(range(50)))
    out = export_heads(src, "vllm", tmp_path / "out")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert json.loads((out / "config.json").read_text())["pard_token"] == MASK
    spec = json.loads((out / "speculative_config.json").read_text())
    assert spec == {"method": "draft_model", "model": str(out.resolve()), "num_speculative_tokens": 5,
                    "parallel_drafting": True}
    plain = tmp_path / "plain"
    tiny_model("llama", vocab=96, seed=1).model.save_pretrained(plain)
    spec = json.loads((export_heads(plain, "vllm", tmp_path / "out2") / "speculative_config.json").read_text())
    assert "parallel_drafting" not in spec
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.safetensors").write_bytes(b"")
    with pytest.raises(DraftsmithError, match="other weights"):
        export_heads(src, "vllm", tmp_path / "busy")
