"""`draftsmith train data` on the batched engine (train/rollouts.py generate_rollouts): per-prompt
seeded answers whatever shares the batch, continuous refill, resuming, `--drafter` (tiny fp32
targets with the test tokenizer's chat template; seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder
from draftsmith.cli import main
from draftsmith.decode.api import BatchDecoder
from draftsmith.train.rollouts import generate_rollouts, rollout_generator
from tests.conftest import tiny_model, tiny_tokenizer

WORDS = "the quick brown fox jumps over the lazy dog and speculative decoding drafts verifies tokens".split()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def chat_target(tok, eos_scale: float = 1.0) -> CausalLM:
    """A tiny random target with the tokenizer (chat template, EOS <eos>). `eos_scale` > 1 makes
    the EOS logit swing with the context: some answers stop at once, others run to the budget."""
    lm = tiny_model("llama", vocab=len(tok), seed=3, eos=tok.eos_token_id)
    with torch.no_grad():
        lm.model.lm_head.weight[tok.eos_token_id] *= eos_scale
    return CausalLM(lm.model, tokenizer=tok, name="tiny-chat")


def instructions(n: int, seed: int = 0) -> list[tuple[str, str]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (3 + i % 5,), generator=gen)]
        out.append((f"p{i}", " ".join(words)))
    return out


def records(path, torn: int = 0) -> dict[str, dict]:
    """The file's records by prompt id; exactly `torn` lines are not JSON (a killed run's)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            torn -= 1
    assert torn == 0, "torn lines"
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "a prompt was answered twice"
    return by_id


def test_a_record_does_not_depend_on_its_batch(tok, tmp_path):
    """Guards: one generator per batch (the old sample_batch path) made a prompt's sampled answer
    depend on which prompts shared its batch; each prompt now has its own seeded generator, and
    its answer is the target's own sample under that generator (plain decoding of it alone)."""
    target, insts = chat_target(tok), instructions(6)
    kw = dict(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=5, progress=False)
    generate_rollouts(target, [insts[3]], tmp_path / "alone.jsonl", batch_size=4, **kw)
    generate_rollouts(target, insts[::-1], tmp_path / "among.jsonl", batch_size=4, **kw)
    alone, among = records(tmp_path / "alone.jsonl"), records(tmp_path / "among.jsonl")
    assert alone["p3"] == among["p3"]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16)
    for pid, text in insts:
        want = SpeculativeDecoder(target, "none").generate(target.encode([{"role": "user", "content": text}]), params,
                                                           rollout_generator(5, pid)).token_ids
        assert among[pid]["response_ids"] == want, pid
    assert len({tuple(r["response_ids"]) for r in among.values()}) == len(among)  # the seeds differ per prompt


def test_continuous_refill_answers_every_prompt(tok, tmp_path, monkeypatch):
    """Guards: rows that finish must leave and the next prompt join while the others still run
    (continuous refill), never more than batch_size rows, and every prompt answered exactly once
    with `finish` telling EOS ('stop') from the token budget ('length')."""
    target, insts = chat_target(tok, eos_scale=2.0), instructions(9)
    running_at_add = []
    add = BatchDecoder.add

    def counting_add(self, *args, **kwargs):
        running_at_add.append(len(self.rows))
        return add(self, *args, **kwargs)

    monkeypatch.setattr(BatchDecoder, "add", counting_add)
    out = tmp_path / "refill.jsonl"
    summary = generate_rollouts(target, insts, out, temperature=1.0, max_new_tokens=40, batch_size=2, seed=1,
                                progress=False)
    got = records(out)
    assert sorted(got) == sorted(pid for pid, _ in insts) and summary["prompts"] == len(insts)
    lengths = [len(r["response_ids"]) for r in got.values()]
    assert min(lengths) <= 5 and max(lengths) == 40  # the premise: very different answer lengths
    for r in got.values():
        ends_at_eos = r["response_ids"][-1] == tok.eos_token_id
        assert r["finish"] == ("stop" if ends_at_eos else "length")
        assert ends_at_eos or len(r["response_ids"]) == 40
    assert summary["tokens"] == sum(lengths)
    assert len(running_at_add) == len(insts) and max(running_at_add) <= 1  # at most 2 rows in flight
    assert 1 in running_at_add[2:]  # a prompt joined while another row was still decoding


def test_resume_adds_nothing_and_redoes_a_torn_line(tok, tmp_path):
    """Guards: a rerun over the same prompts must skip every prompt in the file; a run killed
    mid-line leaves a torn last record, which is ignored and regenerated identically."""
    target, insts = chat_target(tok), instructions(5)
    out = tmp_path / "resume.jsonl"
    kw = dict(temperature=0.8, max_new_tokens=12, batch_size=3, seed=2, progress=False)
    generate_rollouts(target, insts, out, **kw)
    text = out.read_text()
    again = generate_rollouts(target, insts, out, **kw)
    assert again["prompts"] == 0 and again["skipped_done"] == len(insts) and out.read_text() == text
    lines = text.splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # torn last line
    redo = generate_rollouts(target, insts, out, **kw)
    assert redo["prompts"] == 1 and records(out, torn=1) == {r["id"]: r for r in map(json.loads, lines)}


def test_drafter_is_lossless(tok, tmp_path):
    """Guards: `drafter` must reach the engine (it drafts) and, being verified losslessly, give the
    answers plain decoding gives (greedy in fp32, so equality is exact)."""
    target, insts = chat_target(tok), instructions(6)
    kw = dict(temperature=0.0, max_new_tokens=24, batch_size=3, progress=False)
    plain = generate_rollouts(target, insts, tmp_path / "none.jsonl", **kw)
    spec = generate_rollouts(target, insts, tmp_path / "ngram.jsonl", drafter="ngram", **kw)
    assert records(tmp_path / "ngram.jsonl") == records(tmp_path / "none.jsonl")
    assert plain["drafted"] == 0 and spec["drafted"] > 0 and spec["drafter"] == "ngram"


def test_cli_passes_the_drafter(tok, tmp_path, capsys):
    """Guards: `train data --drafter` must reach generate_rollouts (the summary names it and
    counts drafted tokens); a drafter name that does not exist is a clear error."""
    target = chat_target(tok)
    folder = tmp_path / "target"
    target.model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps([{"id": pid, "conversations": [{"from": "human", "value": text}]}
                                for pid, text in instructions(4)]))
    argv = ["train", "data", "--target", str(folder), "--sharegpt", str(data), "--out", str(tmp_path / "r.jsonl"),
            "--limit", "4", "--batch-size", "2", "--max-new-tokens", "24", "--temperature", "0"]
    capsys.readouterr()
    assert main([*argv, "--drafter", "ngram"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["drafter"] == "ngram" and summary["drafted"] > 0 and len(records(tmp_path / "r.jsonl")) == 4
    assert main([*argv, "--drafter", "no-such-drafter"]) == 2
    assert "no-such-drafter" in capsys.readouterr().err
