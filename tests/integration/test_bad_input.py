"""Bad input gets a clear message and no traceback: in the API and in the CLI."""

import pytest
import torch

from draftsmith import CausalLM, DraftsmithError, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.cli import main
from draftsmith.errors import IncompatibleDrafterError, ModelNotFoundError
from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    """A tiny model saved as a normal Hugging Face folder, with a tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama", vocab=len(tokenizer), seed=3, max_len=64).model
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_cli_generates_from_local_folder(capsys, folder):
    code = main(["generate", "--model", folder, "--dtype", "fp32", "--prompt", "hello", "--max-new-tokens", "8",
                 "--drafter", "ngram:k=3"])
    out = capsys.readouterr()
    assert code == 0 and "τ" in out.err and "tokens in" in out.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no-such-model-pack"], "no-such-model-pack"),
        (["--drafter", "ngramm"], "Did you mean 'ngram'"),
        (["--drafter", "ngram:kk=3"], "no option 'kk'"),
        (["--drafter", "ngram:k"], "key=value"),
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "   "], "prompt is empty"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "7"], "top_p"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--max-new-tokens", "100000"], "context length"),
        (["--dtype", "int3"], "unknown dtype"),
    ],
)
def test_cli_bad_input(capsys, folder, argv, message):
    args = {"--model": folder, "--dtype": "fp32", "--prompt": "hello", "--max-new-tokens": "8", "--drafter": "none"}
    for key, value in zip(argv[::2], argv[1::2]):
        args[key] = value
    code, err = run_cli(capsys, "generate", *[x for kv in args.items() for x in kv])
    assert code == 2 and err.startswith("error:") and message in err


def test_prompt_longer_than_context(folder):
    target = tiny_model("llama", vocab=50, max_len=64)
    dec = SpeculativeDecoder(target, "none")
    with pytest.raises(DraftsmithError, match="at most 63"):
        dec.generate(list(range(40)) * 2, SamplingParams(max_new_tokens=4))
    with pytest.raises(DraftsmithError, match="lower max_new_tokens to at most 24"):
        dec.generate(list(range(40)), SamplingParams(max_new_tokens=30))
    out = dec.generate(list(range(40)), SamplingParams(max_new_tokens=24))  # exactly fills the context
    assert len(out.token_ids) == 24


def test_token_ids_out_of_range():
    with pytest.raises(DraftsmithError, match="out of range"):
        SpeculativeDecoder(tiny_model("llama", vocab=50), "none").generate([3, 99], SamplingParams())


def test_mismatched_vocabularies():
    target = tiny_model("llama", vocab=96)
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        SpeculativeDecoder(target, "draft_model", model=tiny_model("qwen2", vocab=80))


def test_mismatched_tokenizers_same_size(tokenizer):
    other = tiny_tokenizer(vocab=len(tokenizer) + 40)
    target = CausalLM(tiny_model("llama", vocab=400).model, tokenizer)
    draft = CausalLM(tiny_model("llama", vocab=400, seed=2).model, other)
    with pytest.raises(IncompatibleDrafterError, match="different tokenizer"):
        SpeculativeDecoder(target, "draft_model", model=draft)


def test_unknown_model_suggests_a_pack():
    from draftsmith.target import load_target

    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        load_target("smollm2-135m-instruc")


def test_unknown_drafter_and_options():
    with pytest.raises(DraftsmithError, match="known: .*ngram"):
        build_drafter("medusa-xl")
    with pytest.raises(DraftsmithError, match="k \\(draft length\\)"):
        build_drafter("ngram", k=0)
    with pytest.raises(DraftsmithError, match="needs a model"):
        build_drafter("draft_model")


def test_text_prompt_without_tokenizer():
    with pytest.raises(DraftsmithError, match="no tokenizer"):
        SpeculativeDecoder(tiny_model(), "none").generate("hello", SamplingParams())


def test_bench_bad_question_file(capsys, tmp_path, folder):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "category": "x", "turns": ["hi"]}\n{not json\n')
    code, err = run_cli(capsys, "bench", "--model", folder, "--questions", str(bad))
    assert code == 2 and "q.jsonl:2: not valid JSON" in err
    code, err = run_cli(capsys, "bench", "--model", folder, "--questions", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "not found" in err
    code, err = run_cli(capsys, "bench", "--model", folder, "--method", "nope")
    assert code == 2 and "unknown method" in err


def test_bench_end_to_end_on_tiny_model(capsys, tmp_path, folder):
    qs = tmp_path / "q.jsonl"
    qs.write_text('{"question_id": 1, "category": "a", "turns": ["hello world", "the quick brown fox"]}\n'
                  '{"question_id": 2, "category": "b", "turns": ["speculative decoding"]}\n')
    out = tmp_path / "out"
    code = main(["bench", "--model", folder, "--dtype", "fp32", "--questions", str(qs), "--max-new-tokens", "12",
                 "--method", "none", "--method", "ngram:k=3", "--method", "hf_prompt_lookup:k=3", "--method", "hf",
                 "--out", str(out)])
    assert code == 0
    import json

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 4  # 3 turns x 4 methods
    assert all(r["matches_baseline"] for r in records)  # fp32 greedy: every method (HF's plain generate too) equals none
    assert (out / "speedup.png").stat().st_size > 0 and (out / "report.md").exists()
    report = (out / "report.md").read_text()
    assert "Roofline: triad bandwidth" in report and "| ngram:k=3 |" in report  # the roofline has the loop's methods
    assert "ngram:k=3" in capsys.readouterr().out


def test_bench_methods_from_config(capsys, tmp_path, folder):
    qs = tmp_path / "q.jsonl"
    qs.write_text('{"question_id": 1, "category": "a", "turns": ["hello world"]}\n')
    cfg = tmp_path / "methods.yaml"
    cfg.write_text("methods:\n  - none\n  - {name: ngram, k: 2, max_ngram: 2}\n")
    out = tmp_path / "out"
    assert main(["bench", "--model", folder, "--dtype", "fp32", "--questions", str(qs), "--max-new-tokens", "6",
                 "--config", str(cfg), "--out", str(out)]) == 0
    assert "ngram:k=2,max_ngram=2" in (out / "report.md").read_text()
    cfg.write_text("methods: 3\n")
    code, err = run_cli(capsys, "bench", "--model", folder, "--questions", str(qs), "--config", str(cfg))
    assert code == 2 and "non-empty list" in err
