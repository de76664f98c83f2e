"""The early_exit drafter (Kangaroo adapters, DEL's exit choice, the SpecEE-style stop) and `train
early-exit`, on tiny fp32 models. Greedy equality, batching and the sampling law come from the
recipe matrices (tests/recipes.py "early_exit")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.drafters.early_exit import (AdapterConfig, EarlyExitDrafter, ExitAdapters, Shadow, choose_exit, expected_tokens,
                                            load_adapters, predict_accept, q_features, read_config, save_adapters)
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from tests.conftest import tiny_model
from tests.recipes import random_adapter

PROMPT = [3, 14, 15, 9, 2, 6, 5, 3, 5, 8, 9, 7]


class Spy:
    """Records every propose's committed ids and draft around a real drafter row."""

    def __init__(self, drafter):
        self.seen: list[tuple[list[int], list[int]]] = []
        inner = drafter.propose

        def propose(ctx):
            draft = inner(ctx)
            self.seen.append((list(ctx.ids), draft.token_ids[0].tolist()))
            return draft

        drafter.propose = propose


def reference_chain(target, module, exit_layer: int, ids: list[int], n: int) -> list[int]:
    """The greedy chain the adapter drafts after `ids`, computed from scratch (no cache)."""
    part = target.partial(range(exit_layer))
    lm_head = target.model.get_output_embeddings()
    seq, out = list(ids), []
    with torch.inference_mode():
        for _ in range(n):
            pos = torch.arange(len(seq))[None]
            h = part.step(torch.tensor([seq]), pos, None, head=False).hidden
            tok = int(lm_head(module[exit_layer](h, pos))[0, -1].argmax())
            out.append(tok)
            seq.append(tok)
    return out


@pytest.mark.parametrize("mode", [1, 3, "dynamic", "dynamic-quiet"])
def test_drafts_equal_the_adapter_run_from_scratch(mode, tmp_path):
    """Guards: the row's caches (shallow layers and adapter) going out of step with the committed
    tokens: a rollback that keeps a rejected draft token, a reused draft entry after a rejection,
    a position off by one, the dynamic mode's deeper segments left behind. Verification would hide
    all of these (the output stays right, only acceptance drops), so each greedy draft is compared
    with the adapter run over the whole sequence without a cache."""
    target = tiny_model("llama", layers=4)
    folder = random_adapter(target, tmp_path / "ee", exits=(1, 2, 3), scale=0.1)
    exit_layer = mode if isinstance(mode, int) else "dynamic"
    drafter = build_drafter("early_exit", adapter=folder, exit_layer=exit_layer, k=4, confidence=0)
    rows = []

    def fork():
        row = EarlyExitDrafter.fork(drafter)
        row.spy = Spy(row)
        if mode == "dynamic":  # cheap drafts (the tiny model's LM head is no cost): DEL drafts several tokens deep
            row.costs, row.catch_up = {e: 0.01 for e in row.costs}, 0.01
        if mode == "dynamic-quiet":  # dear drafts: plain steps, a probe every 16 (long catch-ups)
            row.costs, row.catch_up = {e: 5.0 for e in row.costs}, 5.0
        rows.append(row)
        return row

    drafter.fork = fork  # the loop forks one row per generation: spy on it
    result = SpeculativeDecoder(target, drafter).generate(PROMPT, SamplingParams(max_new_tokens=40))
    (row,) = rows
    module = load_adapters(folder)
    steps = row.spy.seen
    drafting = [d for d in result.stats.drafted_per_step if d]
    if mode == "dynamic-quiet":  # the first step probes, then plain steps with a probe every 16: long catch-ups
        assert 2 <= len(drafting) <= 3 < len(result.stats.drafted_per_step) and max(drafting) == 1
    else:  # some drafts accepted, some rejected: reuse and rollback ran
        assert len(steps) >= 5 and 0 < result.stats.accepted < result.stats.drafted
    if mode == "dynamic":
        assert {e for e, _ in row.chosen} != {1} and max(k for _, k in row.chosen) > 1, row.chosen
    chosen = iter(row.chosen) if not isinstance(mode, int) else None
    for ids, draft in steps:
        if not draft:  # a plain step (DEL quiet, or the budget's end): no exit chosen
            continue
        exit_layer = next(chosen)[0] if chosen is not None else mode
        assert draft == reference_chain(target, module, exit_layer, ids, len(draft)), (exit_layer, len(ids))


def test_adapters_save_and_load(tmp_path):
    """Guards: weights of one exit loaded into another, the config (exits, default, predictor,
    held-out agreement) lost, a bf16 file that does not load back to the same function."""
    target = tiny_model("qwen2", layers=4)
    folder = random_adapter(target, tmp_path / "a", exits=(1, 3))
    cfg = read_config(folder)
    assert cfg.exits == [1, 3] and cfg.default_exit == 1 and set(cfg.predictor) == {"1", "3"}
    module = load_adapters(folder)
    x, pos = torch.randn(1, 5, 64), torch.arange(5)[None]
    with torch.no_grad():
        assert not torch.allclose(module[1](x, pos), module[3](x, pos))
        module.cfg.default_exit = 3
        save_adapters(module, tmp_path / "b")  # bf16 storage (the shipped form)
        again = load_adapters(tmp_path / "b")
        assert again.cfg.default_exit == 3 and again.cfg.exits == [1, 3]
        for e in (1, 3):
            assert torch.allclose(again[e](x, pos), module[e](x, pos), atol=0.05, rtol=0.05)
    raw = json.loads((Path(folder) / "config.json").read_text())
    assert "draftsmith_early_exit" in raw
    with pytest.raises(DraftsmithError, match="no early-exit adapter"):
        load_adapters(tmp_path / "missing")


def test_adapter_cache_equals_one_pass():
    """Guards: the adapter's own attention cache (positions, causal mask over past + new) giving
    other outputs step by step than over the whole sequence at once."""
    torch.manual_seed(0)
    cfg = AdapterConfig(hidden_size=32, vocab_size=10, target_layers=3, exits=[1], num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, intermediate_size=16)
    adapter = ExitAdapters(cfg)[1]
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(1, 9, 32)
        whole = adapter(x, torch.arange(9)[None])
        cache = adapter.new_cache()
        parts = [adapter(x[:, a:b], torch.arange(a, b)[None], cache) for a, b in ((0, 4), (4, 5), (5, 8), (8, 9))]
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)


def test_training_reduces_the_loss_and_resumes(tmp_path):
    """Guards: a loss that does not train the adapter (frozen or detached), the KL against the
    wrong position, a rerun that restarts instead of resuming from the checkpoint."""
    from draftsmith.train.early_exit import EarlyExitTrainConfig, ExitLoss, build_for_target, exit_features, train_early_exit

    target = tiny_model("llama", layers=4, vocab=96)
    g = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(0, 96, (30,), generator=g).tolist(), 8) for _ in range(10)]
    items = exit_features(target, seqs, (2,), max_len=64)
    module = build_for_target(target, (2,))
    head = target.model.get_output_embeddings().weight.detach().float()
    loss_fn = ExitLoss(module, head, None, hidden_weight=0.1, autocast=False)
    opt = torch.optim.AdamW(module.parameters(), lr=5e-3)

    def total():
        s, n = 0.0, 0
        for it in items:
            loss, m, _ = loss_fn(it)
            s, n = s + loss, n + m
        return s / n

    with torch.no_grad():
        before = float(total())
    for _ in range(15):
        opt.zero_grad()
        total().backward()
        opt.step()
    with torch.no_grad():
        after = float(total())
    assert after < 0.9 * before, (before, after)

    cfg = EarlyExitTrainConfig(out=str(tmp_path / "run"), exits=(1, 2), steps=3, batch_tokens=32, holdout=3,
                               train_vocab=16, save_every=3, bf16=False)
    train_early_exit(target, seqs, cfg, progress=False)
    first = read_config(tmp_path / "run")
    assert first.training["answer_tokens_seen"] > 0 and (tmp_path / "run" / "README.md").is_file()
    assert (tmp_path / "run" / "draft_vocab.safetensors").is_file() and set(first.held_out) == {"1", "2"}
    cfg.steps = 5  # a rerun with more steps continues from step 3
    train_early_exit(target, seqs, cfg, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 5
    assert read_config(tmp_path / "run").training["answer_tokens_seen"] > first.training["answer_tokens_seen"]


def test_del_choice_and_shadow():
    """Guards: DEL's choice ignoring cost (always the deepest exit) or acceptance (always the
    shallowest), a draft length that does not grow with acceptance, shadow estimates that do
    not follow what they observe."""
    costs = {2: 0.1, 6: 0.3}
    assert choose_exit({2: 0.5, 6: 0.5}, costs, 0.3, 8)[0] == 2  # same acceptance: the cheaper exit
    assert choose_exit({2: 0.1, 6: 0.9}, costs, 0.3, 8)[0] == 6  # much better acceptance pays for depth
    k_low = choose_exit({2: 0.4}, {2: 0.1}, 0.1, 8)[1]
    k_high = choose_exit({2: 0.9}, {2: 0.1}, 0.1, 8)[1]
    assert 1 <= k_low < k_high <= 8
    assert choose_exit({2: 0.99}, {2: 0.01}, 0.0, 3)[1] == 3  # the cap holds
    assert choose_exit({2: 0.1, 6: 0.12}, costs, 0.3, 8, allow_none=True) == (2, 0)  # no draft pays: plain decoding
    assert choose_exit({2: 0.8, 6: 0.12}, costs, 0.3, 8, allow_none=True)[1] > 0
    assert expected_tokens(0.0, 5) == 1.0 and abs(expected_tokens(0.5, 1) - 1.5) < 1e-9
    shadow = Shadow({2: 0.5, 6: 0.5})
    for _ in range(20):
        shadow.update(2, 0, 3)
        shadow.update(6, 3, 3)
    a = shadow.alphas()
    assert a[2] < 0.1 and a[6] > 0.9


def test_predictor_stop_and_features(tmp_path):
    """Guards: the SpecEE-style stop not stopping (a chain's predicted acceptance multiplies
    down), q features wrong on a draft vocabulary's -inf logits (NaN entropy)."""
    logits = torch.tensor([2.0, 1.0, float("-inf"), 0.0])
    f = q_features(logits)
    assert torch.isfinite(f).all() and 0 < float(f[0]) < 1 and float(f[2]) > 0
    assert float(predict_accept([0.0, 0.0, 0.0, 0.0], f)) == 0.5
    target = tiny_model("llama", layers=2)
    folder = random_adapter(target, tmp_path / "p")  # predictor [0.5, 2, -0.5, 1]: well below 0.99
    drafter = build_drafter("early_exit", adapter=folder, predictor=True, confidence=0.99, k=5)
    result = SpeculativeDecoder(target, drafter).generate(PROMPT, SamplingParams(max_new_tokens=12))
    assert result.stats.steps and max(result.stats.drafted_per_step) == 1


def test_bind_refusals(tmp_path):
    """Guards: a target without a shipped adapter drafting anyway, an exit the folder lacks, an
    adapter for another target shape accepted."""
    target = tiny_model("llama", layers=2)
    with pytest.raises(IncompatibleDrafterError, match="train early-exit"):
        build_drafter("early_exit").bind(target)
    folder = random_adapter(target, tmp_path / "x")
    with pytest.raises(DraftsmithError, match="exits"):
        build_drafter("early_exit", adapter=folder, exit_layer=5).bind(target)
    with pytest.raises(IncompatibleDrafterError, match="layers"):
        build_drafter("early_exit", adapter=folder).bind(tiny_model("llama", layers=4))
    with pytest.raises(DraftsmithError):
        build_drafter("early_exit", exit_layer="deepest")


def test_the_default_model_finds_its_shipped_adapter():
    """Guards: the catalog entry pointing at no folder, or at one for another shape (the default
    model, SmolLM2-135M: 30 layers, hidden 576), or a shipped file over the size budget."""
    from draftsmith.drafters.early_exit import shipped_adapter_dir

    class Named:
        name = "smollm2-135m-instruct"

    folder = shipped_adapter_dir(Named())
    cfg = read_config(folder)
    assert (cfg.target_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert cfg.default_exit in cfg.exits and set(cfg.predictor) == {str(e) for e in cfg.exits}
    assert (folder / "model.safetensors").stat().st_size < 10_000_000 and (folder / "README.md").is_file()
