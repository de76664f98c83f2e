"""The drafter-training recipe end to end on a tiny random target (seconds): rollouts, pretrain,
distill (each loss family, DistillSpec on-policy, AdaSPEC), resume, the saved folder loading in
transformers and serving as a lossless `draft_model` drafter, and 2-process training (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.cli import main
from draftsmith.drafters import NoDrafter
from draftsmith.target import load_target
from tests.conftest import tiny_model, tiny_tokenizer

WORDS = "the quick brown fox jumps over the lazy dog and speculative decoding drafts verifies tokens".split()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny target folder (with tokenizer and chat template) and a tiny ShareGPT file."""
    root = tmp_path_factory.mktemp("train")
    tok = tiny_tokenizer()
    lm = tiny_model("llama", vocab=len(tok), seed=3, eos=tok.eos_token_id)
    lm.model.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")
    gen = torch.Generator().manual_seed(0)
    convs = []
    for i in range(24):
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (12,), generator=gen)]
        convs.append({"id": f"c{i}", "conversations": [
            {"from": "human", "value": " ".join(words[:6])}, {"from": "gpt", "value": " ".join(words[6:])}]})
    text = json.dumps(convs)
    (root / "sharegpt.json").write_text(text[: len(text) - 40])  # truncated, like the packaged file
    return root


def run(*argv) -> None:
    assert main(list(argv)) == 0


def test_recipe_end_to_end(workdir, capsys):
    target, sharegpt = str(workdir / "target"), str(workdir / "sharegpt.json")
    data = workdir / "rollouts.jsonl"
    run("train", "data", "--target", target, "--sharegpt", sharegpt, "--out", str(data), "--limit", "12",
        "--batch-size", "4", "--max-new-tokens", "12")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert 10 <= len(rows) <= 12 and all(r["response_ids"] for r in rows)
    run("train", "data", "--target", target, "--sharegpt", sharegpt, "--out", str(data), "--limit", "12")
    assert len(data.read_text().splitlines()) == len(rows)  # resumed: nothing redone

    pre = workdir / "pre"
    run("train", "pretrain", "--target", target, "--sharegpt", sharegpt, "--out", str(pre), "--steps", "30",
        "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3", "--log-every", "5")
    state = json.loads((pre / "training.json").read_text())
    assert state["final_metrics"]["loss"] < 5.0  # starts near ln(320) = 5.77
    for loss, extra in [("fkl", []), ("tvdpp", ["--on-policy", "0.5"]), ("rkl", ["--adaspec-ref", str(pre)])]:
        out = workdir / f"kd-{loss}"
        run("train", "distill", "--target", target, "--drafter", str(pre), "--data", str(data), "--out", str(out),
            "--loss", loss, "--steps", "6", "--batch-size", "4", "--log-every", "3", *extra)
        record = json.loads((out / "training.json").read_text())
        assert 0.0 <= record["config"]["extra"]["held_out"]["tvd"] <= 1.0
        card = (out / "README.md").read_text()
        assert card.startswith("---")
        assert f"  - {pre}: pretrain, 30 steps of batch 4" in card  # the card names the stage it started from

    # a Hugging Face folder: transformers loads it; draftsmith drafts with it losslessly
    folder = workdir / "kd-fkl"
    assert AutoModelForCausalLM.from_pretrained(folder).config.tie_word_embeddings
    tgt = load_target(target, dtype="float32")
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    want = SpeculativeDecoder(tgt, NoDrafter()).generate("the quick brown fox", params).token_ids
    drafter = build_drafter("draft_model", model=str(folder), dtype="float32", k=4)
    got = SpeculativeDecoder(tgt, drafter).generate("the quick brown fox", params)
    assert got.token_ids == want


def test_training_resumes_from_its_checkpoint(workdir, capsys):
    target, sharegpt, out = str(workdir / "target"), str(workdir / "sharegpt.json"), workdir / "resume"
    args = ["train", "pretrain", "--target", target, "--sharegpt", sharegpt, "--out", str(out),
            "--batch-size", "2", "--seq-len", "16", "--save-every", "2"]
    run(*args, "--steps", "4")
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    capsys.readouterr()
    run(*args, "--steps", "6")
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6


def test_bad_training_input_is_a_clear_error(workdir, capsys):
    target = str(workdir / "target")
    assert main(["train", "distill", "--target", target, "--drafter", target, "--data", str(workdir / "nope.jsonl"),
                 "--out", str(workdir / "x")]) == 2
    assert "rollout file not found" in capsys.readouterr().err
    assert main(["train", "distill", "--target", target, "--drafter", target, "--data", "x", "--out", "y",
                 "--loss", "kl"]) == 2
    assert "unknown loss" in capsys.readouterr().err


def test_two_processes_with_gloo(workdir):
    """The same command under torchrun with 2 CPU processes: each takes every other batch and
    DDP averages the gradients."""
    out = workdir / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "draftsmith.cli", "train", "pretrain", "--target", str(workdir / "target"),
           "--sharegpt", str(workdir / "sharegpt.json"), "--out", str(out), "--steps", "4",
           "--batch-size", "2", "--seq-len", "16", "--log-every", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["processes"] == 2
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


def _chat_target(workdir) -> Path:
    """The tiny target with a chat template (ShareGPT data needs one)."""
    target = workdir / "chat-target"
    if not (target / "config.json").is_file():
        tok = tiny_tokenizer()
        tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
                             "{% if add_generation_prompt %}<assistant>{% endif %}")
        lm = tiny_model("llama", vocab=len(tok), seed=3, eos=tok.eos_token_id)
        lm.model.save_pretrained(target)
        tok.save_pretrained(target)
    return target


def test_distill_on_sharegpt_answers(workdir):
    """`train distill --data sharegpt.json`: ShareGPT's own answers under the target's labels."""
    target = _chat_target(workdir)
    pre, out = workdir / "chat-pre", workdir / "chat-kd"
    run("train", "pretrain", "--target", str(target), "--sharegpt", str(workdir / "sharegpt.json"), "--out", str(pre),
        "--steps", "2", "--batch-size", "2", "--seq-len", "16")
    run("train", "distill", "--target", str(target), "--drafter", str(pre), "--data", str(workdir / "sharegpt.json"),
        "--out", str(out), "--steps", "4", "--batch-size", "4")
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["extra"]["stage_data"].startswith("22 ShareGPT first turns")  # 23 whole records, 1 held out
    assert record["config"]["extra"]["held_out"]["tokens"] > 0


def test_distill_from_a_feature_file_over_a_training_vocabulary(workdir):
    """`train pretrain/distill --train-vocab`, `distill --features`: the drafter trains over the
    data's most frequent tokens (labels outside them skipped), p comes from the target's stored
    hidden states through its LM head and equals p from a target forward, the file is made once
    and reused, and the drafter drafts over its vocabulary, still token for token the target's."""
    from draftsmith.drafters.heads.vocab import SubsetLMHead, load_vocab
    from draftsmith.train.batches import feature_batch
    from draftsmith.train.features import HOLDOUT, cached_features, load_sequences, usable
    from draftsmith.train.trainer import SelectedLogits, subset_logits

    target, sharegpt = _chat_target(workdir), str(workdir / "sharegpt.json")
    pre, feats = workdir / "voc-pre", workdir / "feats.pt"
    run("train", "pretrain", "--target", str(target), "--sharegpt", sharegpt, "--out", str(pre), "--steps", "4",
        "--batch-size", "2", "--seq-len", "16", "--train-vocab", "8")
    vocab = load_vocab(pre, None)
    tgt = load_target(str(target), dtype="float32")
    assert len(vocab) == 8 and int(vocab[0]) in tgt.eos_token_ids  # end of sequence first, then by frequency
    for out in (workdir / "voc-kd", workdir / "voc-kd2"):
        run("train", "distill", "--target", str(target), "--drafter", str(pre), "--data", sharegpt, "--out", str(out),
            "--features", str(feats), "--steps", "3", "--batch-size", "1", "--loss", "tvdpp")
        if out.name == "voc-kd":
            made = feats.stat().st_mtime_ns
    assert feats.stat().st_mtime_ns == made  # the second run read the file
    record = json.loads((out / "training.json").read_text())
    assert "target's features" in record["config"]["extra"]["stage_data"]
    assert record["config"]["extra"]["held_out"]["tokens"] > 0
    assert torch.equal(load_vocab(out, None), vocab)  # distillation keeps the drafter's vocabulary
    assert f"most frequent tokens of the data of the drafter it started from ({pre})" in (out / "README.md").read_text()

    # p from a feature file == p from a target forward, position for position (fp32 here; the runs'
    # file is the bf16 target's)
    sequences = usable(load_sequences(tgt, sharegpt), 512)[HOLDOUT:]
    batch = feature_batch(cached_features(tgt, sequences, 512, str(workdir / "feats32.pt"), progress=False)[:3], pad_id=0)
    lm_head = tgt.model.get_output_embeddings()
    from_file = subset_logits(lm_head, batch.target_hidden, vocab)  # [N, 8]
    with torch.no_grad():
        from_forward = SelectedLogits(tgt.model, vocab)(batch.ids, batch.attention, batch.loss_mask.bool())
    assert from_file.shape == from_forward.shape and torch.allclose(from_file, from_forward, atol=1e-4)

    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    want = SpeculativeDecoder(tgt, NoDrafter()).generate("the quick brown fox", params).token_ids
    for vocab_arg, subset in ((None, True), (0, False)):
        drafter = build_drafter("draft_model", model=str(out), dtype="float32", k=3, vocab=vocab_arg)
        got = SpeculativeDecoder(tgt, drafter).generate("the quick brown fox", params)
        assert got.token_ids == want
        assert isinstance(drafter.draft.model.get_output_embeddings(), SubsetLMHead) == subset
    with pytest.raises(Exception, match="has none beside it"):
        SpeculativeDecoder(tgt, build_drafter("draft_model", model=str(target), vocab=8)).generate("the", params)


def test_fastdraft_text_completions_and_alignment(workdir):
    """FastDraft (`train data --text-prefix`, `train align`): the target continues plain-text
    prefixes of whole conversations (no chat template: the prompt is the prefix's own tokens), and
    alignment trains on the target's tokens with cross-entropy and no target forward per step.
    Guards: a prefix fed through the chat template (the rollout would answer, not continue), and
    alignment batches taken in file order (a file of answers, then completions, would train on
    one kind first)."""
    import draftsmith.train.pipeline as pipeline
    from draftsmith.data.sharegpt import sharegpt_texts
    from draftsmith.train.pipeline import align
    from draftsmith.train.trainer import TrainConfig

    target, sharegpt = _chat_target(workdir), str(workdir / "sharegpt.json")
    tgt = load_target(str(target), dtype="float32")
    data = workdir / "completions.jsonl"
    run("train", "data", "--target", str(target), "--sharegpt", sharegpt, "--out", str(data), "--text-prefix", "5",
        "--limit", "6", "--batch-size", "3", "--max-new-tokens", "6", "--temperature", "0")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 6 and all(r["id"].startswith("text-") and len(r["prompt_ids"]) == 5 for r in rows)
    texts = list(sharegpt_texts(sharegpt, limit=1))
    assert rows[0]["prompt_ids"] == tgt.tokenizer.encode(texts[0], add_special_tokens=False)[:5]  # plain text, no template
    # the continuation is the target's own greedy one
    want = SpeculativeDecoder(tgt, NoDrafter()).generate(rows[0]["prompt_ids"], SamplingParams(max_new_tokens=6)).token_ids
    assert rows[0]["response_ids"] == want

    pre = workdir / "fd-pre"
    run("train", "pretrain", "--target", str(target), "--sharegpt", sharegpt, "--out", str(pre), "--steps", "2",
        "--batch-size", "2", "--seq-len", "16")
    out = workdir / "fd-align"
    run("train", "align", "--target", str(target), "--drafter", str(pre), "--data", str(data), "--out", str(out),
        "--steps", "3", "--batch-size", "2")
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["stage"] == "align" and record["config"]["loss"] == "ce"
    assert record["config"]["extra"]["held_out"]["tokens"] > 0
    cfg = TrainConfig(stage="align", out=str(workdir / "x"), steps=1, loss="fkl")
    with pytest.raises(Exception, match="cross-entropy"):
        cfg.check()

    # the batches mix the file's kinds: rows are shuffled before the held-out split and the batches
    seen = []
    real = pipeline.train
    try:
        def spy(drafter, get_batch, cfg, **kw):
            seen.extend(tuple(p) for i in range(4) for p in get_batch(i).prompts)
            return {}
        pipeline.train = spy
        lines = data.read_text().splitlines()
        answers = [json.dumps({"id": f"a{i}", "prompt_ids": [1, 2, 3, 4, 5, 6, 7, i], "response_ids": [5, 6]})
                   for i in range(6)]
        mixed = workdir / "mixed.jsonl"
        mixed.write_text("\n".join(answers + lines) + "\n")
        align(tgt, str(pre), str(mixed), TrainConfig(stage="align", out=str(workdir / "fd-spy"), steps=4, batch_size=2))
    finally:
        pipeline.train = real
    assert {len(p) for p in seen[:4]} == {5, 8}  # the first two batches already hold both kinds
