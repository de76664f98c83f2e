"""Judge decoding: the labels' branches, the head's training, the rule in the loop, its errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from draftsmith import SamplingParams, SpeculativeDecoder
from draftsmith.errors import DraftsmithError
from draftsmith.train.judge import branch_rollouts, choose_threshold, pick_candidates, rejoins, train_judge
from draftsmith.types import Draft
from draftsmith.verify import build_verifier
from draftsmith.verify.judge import JudgeVerifier
from tests.conftest import WrongDrafter, tiny_model


def _plain(lm, prefix: list[int], n: int) -> list[int]:
    return SpeculativeDecoder(lm, "none").generate(prefix, SamplingParams(max_new_tokens=n, ignore_eos=True)).token_ids


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_branch_is_the_targets_own_greedy_continuation_and_state_after_its_candidate(arch):
    """Guards the branched rollout behind the judge's labels (one cache for the sequence, a
    custom mask and positions per branch): a branch that saw another branch's tokens, a real token
    past its anchor, or the wrong position would label candidates by continuations the target
    never makes. Each branch must equal plain decoding after prefix + candidate, and its state the
    last hidden state of a plain forward over prefix + candidate."""
    lm = tiny_model(arch, vocab=96, seed=5)
    g = torch.Generator().manual_seed(2)
    seq = torch.randint(0, 96, (30,), generator=g).tolist()
    start, window = 12, 5
    ts, tokens = [0, 3, 4, 9], [7, 50, 11, 90]
    states, p_x, branches = branch_rollouts(lm, seq, start, ts, tokens, window, eos=set())
    for t, x, state, p, br in zip(ts, tokens, states, p_x.tolist(), branches):
        prefix = seq[:start + t]
        assert br == [x] + _plain(lm, prefix + [x], window)
        with torch.no_grad():
            out = lm.model(torch.tensor([prefix + [x]]), output_hidden_states=True)
        torch.testing.assert_close(state, out.hidden_states[-1][0, -1].float(), atol=1e-4, rtol=1e-4)
        want_p = float(out.logits[0, -2].float().softmax(-1)[x])
        assert abs(p - want_p) < 1e-5


def test_a_branch_rejoins_the_answer_only_by_a_long_enough_equal_tail():
    """The label rule: a reworded word rejoins; a different number does not; an answer too short
    to tell gives no label (it is dropped, not counted as a refusal)."""
    answer = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    assert rejoins([99, 11, 12, 13, 14], answer, rejoin=4, shift=1)  # one token reworded
    assert rejoins([99, 98, 12, 13, 14, 15], answer, rejoin=4, shift=1)  # two tokens for one... then the same
    assert rejoins([12, 13, 14, 15], answer, rejoin=4, shift=3)  # a token skipped, then the same (shift 2)
    assert not rejoins([99, 11, 12, 77, 14, 15], answer, rejoin=4, shift=3)  # differs again later
    assert not rejoins([99, 11, 12, 13, 14], answer, rejoin=5, shift=3)  # the equal tail is too short
    assert rejoins([99, 11, 12, 13, 14, 15, 16], [10, 11, 12], rejoin=4, shift=1) is None


def test_candidates_are_mismatches_with_room_for_a_branch():
    import random

    guesses = [1, 2, 0, 4, 0, 6, 0, 8, 0, 0]
    answer = list(range(1, 11))
    assert pick_candidates(guesses, answer, 10, window=2, shift=1, rng=random.Random(0)) == [2, 4, 6]
    assert len(pick_candidates(guesses, answer, 2, window=2, shift=1, rng=random.Random(0))) == 2


def test_the_threshold_is_the_lowest_with_the_asked_precision():
    p = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    y = torch.tensor([True, True, False, True, False])
    assert choose_threshold(p, y, 1.0) == pytest.approx(0.8)
    assert choose_threshold(p, y, 0.75) == pytest.approx(0.6)
    assert choose_threshold(p, torch.zeros(5, dtype=torch.bool), 0.5) == 1.0


def _head(folder, hidden: int, weight: torch.Tensor | None = None, bias: float = 0.0, threshold: float = 0.5,
          log_p: float | None = None):
    """A judge head folder; `log_p` adds the log-probability input with that weight."""
    folder.mkdir(parents=True, exist_ok=True)
    w = torch.zeros(hidden) if weight is None else weight
    inputs = ["hidden"]
    if log_p is not None:
        w, inputs = torch.cat([w, torch.tensor([log_p])]), ["hidden", "log_p"]
    save_file({"weight": w.float().contiguous(), "bias": torch.tensor([bias])}, str(folder / "judge.safetensors"))
    (folder / "judge.json").write_text(json.dumps({"kind": "judge", "hidden_size": hidden, "threshold": threshold,
                                                   "inputs": inputs}))
    return str(folder)


def test_a_head_with_the_log_p_input_reads_the_targets_probability_of_each_token(tmp_path):
    """The shipped head reads log p(x) beside the state: with weight 100 on it and bias -100 log 0.5
    it accepts exactly the tokens the target gives p > 0.5, which a wrong token never has (the
    argmax has more); with bias -100 log 1e-9 it accepts every token."""
    import math

    lm = tiny_model("llama", vocab=96, seed=1)
    prompt, params = [3, 14, 15, 9, 2], SamplingParams(max_new_tokens=16, ignore_eos=True)
    plain = SpeculativeDecoder(lm, "none").generate(prompt, params).token_ids
    strict = JudgeVerifier(head=_head(tmp_path / "strict", 64, bias=-100 * math.log(0.5), log_p=100.0))
    out = SpeculativeDecoder(lm, WrongDrafter(lm, k=3), verifier=strict).generate(prompt, params)
    assert out.token_ids == plain and out.stats.accepted == 0
    loose = JudgeVerifier(head=_head(tmp_path / "loose", 64, bias=-100 * math.log(1e-9), log_p=100.0))
    out = SpeculativeDecoder(lm, WrongDrafter(lm, k=3), verifier=loose).generate(prompt, params)
    assert out.stats.accepted == out.stats.drafted > 0


def test_a_judge_that_refuses_everything_is_plain_greedy_and_one_that_accepts_everything_keeps_every_draft(tmp_path):
    """The loop must hand the rule the target's hidden states (needs_hidden_states) and the rule
    must use them: a head with bias -20 leaves greedy verification (output = plain decoding, with
    a drafter that is always wrong); with bias +20 every wrong draft token is kept."""
    lm = tiny_model("llama", vocab=96, seed=1)
    prompt, params = [3, 14, 15, 9, 2], SamplingParams(max_new_tokens=20, ignore_eos=True)
    plain = SpeculativeDecoder(lm, "none").generate(prompt, params).token_ids
    never = JudgeVerifier(head=_head(tmp_path / "never", 64, bias=-20.0))
    out = SpeculativeDecoder(lm, WrongDrafter(lm, k=3), verifier=never).generate(prompt, params)
    assert out.token_ids == plain and out.stats.accepted == 0 and not out.stats.lossless
    always = JudgeVerifier(head=_head(tmp_path / "always", 64, bias=20.0))
    out = SpeculativeDecoder(lm, WrongDrafter(lm, k=3), verifier=always).generate(prompt, params)
    assert out.stats.accepted == out.stats.drafted > 0 and out.token_ids != plain


def test_the_judge_reads_each_tree_node_at_its_own_position(tmp_path):
    """Row i + 1 of the step's hidden states belongs to draft node i (row 0 is the last committed
    token): the rule's scores must be those of each node's own state, so an off-by-one would judge
    a node by its parent's state. Checked against a plain forward over each node's path."""
    lm = tiny_model("qwen2", vocab=96, seed=2)
    g = torch.Generator().manual_seed(0)
    judge = JudgeVerifier(head=_head(tmp_path / "h", 64, torch.randn(64, generator=g), threshold=0.5)).bind(lm)
    prefix = [5, 6, 7, 8]
    tokens, parents = [10, 20, 30, 40], [-1, -1, 0, 2]
    from draftsmith.cache import new_cache
    from draftsmith.tree import Tree

    with torch.no_grad():
        cache = new_cache()
        lm.model(torch.tensor([prefix[:-1]]), past_key_values=cache, use_cache=True)
        tree = Tree.from_parents(parents)
        ids = torch.tensor([[prefix[-1], *tokens]])
        depth = torch.tensor([0] + tree.depth) + len(prefix) - 1
        allow = torch.ones(5, 3 + 5, dtype=torch.bool)
        allow[:, 3:] = False
        for i in range(5):
            allow[i, 3] = True
            node = i - 1
            while node >= 0:
                allow[i, 4 + node] = True
                node = parents[node]
        mask = torch.zeros(allow.shape).masked_fill_(~allow, torch.finfo(torch.float32).min)[None, None]
        out = lm.model(ids, past_key_values=cache, use_cache=True, attention_mask=mask, position_ids=depth[None],
                       output_hidden_states=True)
    hidden = out.hidden_states[-1]  # [1, 5, H]
    for i in range(4):
        path, node = [], i
        while node >= 0:
            path.append(tokens[node])
            node = parents[node]
        with torch.no_grad():
            alone = lm.model(torch.tensor([prefix + path[::-1]]), output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(hidden[0, 1 + i], alone, atol=1e-4, rtol=1e-4)
    draft = Draft(torch.tensor([tokens]), None, torch.tensor(parents))
    params = SamplingParams(temperature=0.0)
    ok = judge.scores(hidden[0, 1:]) >= judge.threshold
    result = judge.verify(draft, out.logits, params, hidden=hidden)[0]
    greedy = out.logits[0].argmax(-1)
    passed = [bool(ok[i]) or tokens[i] == int(greedy[parents[i] + 1]) for i in range(4)]
    best = []
    for i in range(4):  # the deepest root path of passed nodes
        path, node = [], i
        while node >= 0 and passed[node]:
            path.append(node)
            node = parents[node]
        if node < 0 and len(path) > len(best):
            best = path[::-1]
    assert result.num_accepted == len(best)


def test_judge_errors_are_one_clear_message(tmp_path):
    lm = tiny_model("llama", vocab=96, seed=1)
    with pytest.raises(DraftsmithError, match="threshold"):
        build_verifier("judge:threshold=2")
    with pytest.raises(DraftsmithError, match="not a judge head folder"):
        JudgeVerifier(head=str(tmp_path)).bind(lm)
    with pytest.raises(DraftsmithError, match="another model"):
        JudgeVerifier(head=_head(tmp_path / "wide", 128)).bind(lm)
    folder = _head(tmp_path / "odd", 64)
    (tmp_path / "odd" / "judge.json").write_text(json.dumps({"hidden_size": 64, "inputs": ["hidden", "entropy"]}))
    with pytest.raises(DraftsmithError, match="reads"):
        JudgeVerifier(head=folder).bind(lm)
    with pytest.raises(DraftsmithError, match="no judge head is shipped"):
        JudgeVerifier().bind(lm)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "judge.safetensors").write_bytes(b"not a file")
    (tmp_path / "bad" / "judge.json").write_text("{}")
    with pytest.raises(DraftsmithError, match="cannot read"):
        JudgeVerifier(head=str(tmp_path / "bad")).bind(lm)


def test_train_judge_writes_a_head_the_rule_loads_and_a_rerun_continues(tmp_path):
    """End to end on a tiny target: rollouts -> candidates, labels, features -> a head folder the
    verifier binds; a second run reads the saved candidates instead of collecting again, and
    a run with other label settings on the same folder is refused (its data would be mixed)."""
    target = tiny_model("llama", vocab=16, seed=0, std=0.05)
    drafter = tiny_model("llama", vocab=16, seed=1, std=0.05)
    drafter.model.save_pretrained(tmp_path / "drafter")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(30):
        prompt = torch.randint(0, 16, (6,), generator=g).tolist()
        rows.append({"id": f"r{i}", "prompt_ids": prompt, "response_ids": _plain(target, prompt, 40)})
    data = tmp_path / "rollouts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "judge"
    kw = dict(drafter=str(tmp_path / "drafter"), per_answer=8, window=4, rejoin=3, shift=2, min_p=0.0, steps=50)
    config = train_judge(target, str(data), str(out), progress=False, **kw)
    assert config["hidden_size"] == 64 and 0.0 <= config["threshold"] <= 1.0
    assert sum(s["candidates"] for s in config["splits"].values()) > 0
    JudgeVerifier(head=str(out)).bind(target)
    mtime = (out / "candidates.pt").stat().st_mtime_ns
    again = train_judge(target, str(data), str(out), progress=False, **kw)
    assert again["splits"] == config["splits"] and (out / "candidates.pt").stat().st_mtime_ns >= mtime
    with pytest.raises(DraftsmithError, match="collected with"):
        train_judge(target, str(data), str(out), progress=False, **{**kw, "window": 5})


def test_the_shipped_head_is_found_for_its_target_and_loads():
    """`--verifier judge` on the default model uses the head shipped in the package (catalog)."""
    from types import SimpleNamespace

    from draftsmith.verify.judge import load_judge, shipped_judge_dir

    folder = shipped_judge_dir(SimpleNamespace(name="smollm2-135m-instruct"))
    weight, bias, config = load_judge(folder)
    assert config["hidden_size"] == 576 and weight.shape == (577,) and 0 < config["threshold"] <= 1
    assert shipped_judge_dir(SimpleNamespace(name="tiny-llama-0")) is None
