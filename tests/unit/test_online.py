"""Online speculative decoding (drafters/online.py): the draft model learns the target's answers
from finished rows in a background thread, while serving never waits and never changes its output."""

import copy
import time

import pytest
import torch

from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from tests.conftest import plain_ids, tiny_model

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [9, 8, 7, 6, 5, 4], list(range(10, 30))]


def online(target, **options):
    lm = tiny_model("llama", vocab=target.vocab_size, seed=1)
    dm = build_drafter("draft_model", model=CausalLM(copy.deepcopy(lm.model)), k=4, adaptive=False, confidence=0.0)
    return build_drafter("online", drafter=dm, **options)


def wait_trained(learner, timeout: float = 120.0) -> None:
    """Until the thread has taken every step it owes (or stopped)."""
    deadline = time.time() + timeout
    while not learner.idle() and time.time() < deadline:
        time.sleep(0.05)


def test_the_draft_model_learns_the_answers_it_serves_and_output_never_changes():
    """The point of online SD: acceptance on a repeated stream rises as the drafter trains on the
    served answers. Guards a learner that never publishes (serving weights stay the initial ones,
    acceptance flat), and publishing that bends greedy output."""
    target = tiny_model("llama")
    drafter = online(target, lr=3e-3, batch=3, steps_per_row=20, seed=0)
    dec = SpeculativeDecoder(target, drafter)
    learner = drafter.learner  # bound by the decoder: the learner every row shares
    params = SamplingParams(max_new_tokens=32)

    def one_pass() -> float:
        accepted = drafted = 0
        for p in PROMPTS:
            out = dec.generate(p, params)
            assert out.token_ids == plain_ids("llama", p, 32)
            accepted, drafted = accepted + out.stats.accepted, drafted + out.stats.drafted
        return accepted / max(drafted, 1)

    first = one_pass()
    assert learner.rows_seen == 3
    before = [s.detach().clone() for s, _ in learner.pairs]
    for _ in range(4):
        wait_trained(learner)
        one_pass()
    wait_trained(learner)
    last = one_pass()
    assert learner.error is None and learner.version > 0 and learner.published > 0
    assert any(not torch.equal(b, s) for b, (s, _) in zip(before, learner.pairs))  # the serving weights moved
    assert last > first + 0.2, (first, last)
    assert learner.losses[-1] < 1.0
    learner.stop()


def test_a_failing_training_step_stops_training_and_serving_goes_on(monkeypatch, caplog):
    """Guards: an exception in the trainer thread (out of memory, a bad row) must not reach the
    rows; they keep drafting with the last published weights."""
    target = tiny_model("llama")
    drafter = online(target, steps_per_row=2)
    dec = SpeculativeDecoder(target, drafter)
    learner = drafter.learner

    def broken(rows):
        raise RuntimeError("injected")

    monkeypatch.setattr(learner, "_step", broken)
    for p in PROMPTS:
        assert dec.generate(p, SamplingParams(max_new_tokens=16)).token_ids == plain_ids("llama", p, 16)
    deadline = time.time() + 30
    while learner.error is None and time.time() < deadline:
        time.sleep(0.05)
    assert learner.error == "RuntimeError: injected" and learner.stopped
    assert dec.generate(PROMPTS[0], SamplingParams(max_new_tokens=16)).token_ids == plain_ids("llama", PROMPTS[0], 16)


@pytest.mark.parametrize("options, needle", [
    ({}, "online needs the draft model"),
    ({"drafter": "draft_model:model=x", "lr": 0}, "lr must be"),
    ({"drafter": "draft_model:model=x", "batch": 0}, "batch must be"),
    ({"drafter": ["a", "b"]}, "takes one drafter"),
])
def test_bad_options_are_one_clear_message(options, needle):
    with pytest.raises(DraftsmithError, match=needle):
        build_drafter("online", **options)


def test_only_a_draft_model_can_be_trained_online():
    with pytest.raises(IncompatibleDrafterError, match="online trains a draft model"):
        build_drafter("online", drafter="ngram")


def test_a_process_exiting_while_the_drafter_trains_exits_cleanly(tmp_path):
    """Bug guard: the trainer is a daemon thread; a process that ended while it was inside torch
    (training or waiting) aborted at exit ("terminate called without an active exception", rc 134)
    after every answer had been given. The learner now stops at interpreter exit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "serve_and_exit.py"
    script.write_text(
        "import copy\n"
        "from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder, build_drafter\n"
        "from tests.conftest import tiny_model\n"
        "t = tiny_model('llama')\n"
        "lm = tiny_model('llama', vocab=t.vocab_size, seed=1)\n"
        "dm = build_drafter('draft_model', model=CausalLM(copy.deepcopy(lm.model)), k=3, adaptive=False, confidence=0.0)\n"
        "dec = SpeculativeDecoder(t, build_drafter('online', drafter=dm, lr=1e-2, steps_per_row=50))\n"
        "for p in ([1, 2, 3], [4, 5, 6]):\n"
        "    dec.generate(p, SamplingParams(max_new_tokens=8))\n"
        "print('answered')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert "answered" in done.stdout
    assert done.returncode == 0, done.stderr[-500:]
