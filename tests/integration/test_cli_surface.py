"""The command line's surface for the redesigned engine: --verifier, --device, serve --k-max /
--max-batch / a taken port, and bench methods naming their own verifier. Every bad argument is a
one-line `error: ...` (exit 2, no traceback) before any model loads; models here are tiny and
random (load_target is monkeypatched), so nothing is downloaded."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from draftsmith import CausalLM
from draftsmith.bench.runner import MethodSpec
from draftsmith.cli import main
from draftsmith.errors import DraftsmithError
from draftsmith.verify import VERIFIERS, GreedyVerifier
from tests.conftest import tiny_model, tiny_tokenizer


class LossyGreedy(GreedyVerifier):
    """Greedy acceptance that declares itself lossy: a stand-in for a lossy rule (typical acceptance)."""

    name = "test_lossy"
    lossless = False


@pytest.fixture
def lossy(monkeypatch):
    monkeypatch.setitem(VERIFIERS, LossyGreedy.name, LossyGreedy)
    return LossyGreedy.name


@pytest.fixture(scope="module")
def target():
    tok = tiny_tokenizer()
    return CausalLM(tiny_model("llama", vocab=len(tok), seed=3, eos=tok.eos_token_id, max_len=128).model, tok,
                    name="tiny")


@pytest.fixture
def loads(monkeypatch, target):
    """load_target returns the tiny model; the calls made are recorded (name, dtype, device)."""
    calls = []

    def fake(name, dtype="bfloat16", device="cpu", progress=True):
        calls.append((name, dtype, device))
        return target

    monkeypatch.setattr("draftsmith.target.load_target", fake)
    return calls


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: errors must come before it."""

    def fail(*a, **k):
        raise AssertionError("a model was loaded before the bad argument was refused")

    monkeypatch.setattr("draftsmith.target.load_target", fail)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def one_line_error(code, err, needle):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "a", "turns": ["hello world the quick brown fox"]}\n'
                    '{"question_id": 2, "category": "b", "turns": ["speculative decoding drafts"]}\n')
    return str(path)


# ----- --verifier ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "hi"],
    ["bench"],
    ["serve", "--port", "1"],
])
def test_unknown_verifier_is_one_line_before_any_load(capsys, no_load, command):
    """Bug: `--verifier greedyy` loaded the model first (or was silently ignored), then died with a
    traceback; it must be one line naming the known rules and the near miss."""
    code, _, err = run_cli(capsys, *command, "--verifier", "greedyy")
    one_line_error(code, err, "unknown verifier 'greedyy'")
    assert "Did you mean 'greedy'" in err


def test_bad_verifier_option_is_one_line(capsys, no_load):
    """Bug: an option the rule does not take reached its constructor as a TypeError traceback."""
    code, _, err = run_cli(capsys, "generate", "--prompt", "hi", "--verifier", "greedy:eps=0.1")
    one_line_error(code, err, "no option 'eps'")


def test_generate_with_greedy_verifier_equals_default(capsys, loads):
    """Bug: `generate --verifier greedy` was not passed to the decoder (or broke it); greedy is the
    default rule at temperature 0, so the text must equal the default's and say lossless."""
    argv = ["generate", "--prompt", "the quick brown fox", "--max-new-tokens", "10", "--drafter", "ngram:k=3",
            "--dtype", "fp32", "--json"]
    code, default_out, default_err = run_cli(capsys, *argv)
    assert code == 0
    code, out, err = run_cli(capsys, *argv, "--verifier", "greedy")
    assert code == 0 and out == default_out
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["verifier"] == "greedy" and stats["lossless"] is True and stats["new_tokens"] == 10
    assert loads[-1] == (loads[-1][0], "fp32", "cpu")  # --device's default reaches load_target


def test_generate_says_when_the_rule_is_lossy(capsys, loads, lossy):
    """Bug: a lossy rule's output looked like the target's own; the stats line must say lossy."""
    code, _, err = run_cli(capsys, "generate", "--prompt", "hello world", "--max-new-tokens", "6",
                           "--verifier", lossy)
    assert code == 0 and f"verifier {lossy}, lossy]" in err


# ----- --device --------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["bench"], ["serve", "--port", "1"]])
def test_cuda_on_a_cpu_machine_is_one_line(capsys, no_load, command):
    """Bug: `--device cuda` on a machine without CUDA was a torch traceback after the model loaded."""
    code, _, err = run_cli(capsys, *command, "--device", "cuda")
    one_line_error(code, err, "sees no CUDA device")


def test_unknown_device_is_one_line(capsys, no_load):
    """Bug: `--device gpu` was a RuntimeError from torch.device."""
    code, _, err = run_cli(capsys, "generate", "--prompt", "hi", "--device", "gpu")
    one_line_error(code, err, "unknown device 'gpu'")


# ----- bench: a method's own verifier ----------------------------------------------------------
def test_method_spec_takes_the_verifier_out_of_the_drafter_options(lossy):
    """Bug: `ngram:k=5,verifier=greedy` handed verifier= to the n-gram drafter ("no option")."""
    spec = MethodSpec.parse("ngram:k=5,verifier=greedy")
    assert (spec.name, spec.options, spec.verifier, spec.label) == ("ngram", {"k": 5}, "greedy", "ngram:k=5,verifier=greedy")
    assert MethodSpec.parse("ngram:k=5").verifier is None
    assert MethodSpec.parse("ngram:verifier=[rejection]").verifier == "rejection"  # bracketed spelling


@pytest.mark.parametrize("text, needle", [
    ("ngram:verifier=nope", "unknown verifier 'nope'"),
    ("ngram:verifier=[greedy:eps=1]", "no option 'eps'"),
    ("hf_prompt_lookup:k=3,verifier=greedy", "takes no verifier"),
])
def test_method_spec_bad_verifier(text, needle):
    """Bug: a bad verifier in a method spec surfaced only after the model loaded, mid-benchmark."""
    with pytest.raises(DraftsmithError, match=needle):
        MethodSpec.parse(text)


def test_bench_marks_a_lossy_method(capsys, tmp_path, loads, lossy, questions):
    """Bug: a method whose verifier is lossy was reported like a lossless one; its records must say
    lossless false and its rule, and the table and report.md must tag it (lossy)."""
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "bench", "--questions", questions, "--max-new-tokens", "8", "--warmup", "0",
                              "--method", "none", "--method", "ngram:k=3",
                              "--method", f"ngram:k=2,verifier={lossy}", "--out", str(out))
    assert code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    by = {}
    for r in records:
        by.setdefault(r["method"], set()).add((r["verifier"], r["lossless"]))
    assert by == {"none": {("auto", True)}, "ngram:k=3": {("auto", True)}, f"ngram:k=2,verifier={lossy}": {(lossy, False)}}
    report = (out / "report.md").read_text()
    assert f"| ngram:k=2,verifier={lossy} (lossy) |" in report and "| ngram:k=3 |" in report
    assert "(lossy)" in stdout  # the terminal table tags it too


def test_bench_default_verifier_spares_the_baseline(capsys, tmp_path, loads, lossy, questions):
    """Bug risk: `bench --verifier RULE` applied a lossy rule to the `none` baseline too, so speedups
    and "= none" compared against a lossy output; the baseline stays the target's plain decoding."""
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "bench", "--questions", questions, "--max-new-tokens", "6", "--warmup", "0",
                         "--method", "ngram:k=3", "--method", "ngram:k=2,verifier=greedy", "--verifier", lossy,
                         "--out", str(out))
    assert code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    rules = {r["method"]: (r["verifier"], r["lossless"]) for r in records}
    assert rules == {"none": ("auto", True), "ngram:k=3": (lossy, False), "ngram:k=2,verifier=greedy": ("greedy", True)}
    assert f"verifier {lossy}" in (out / "report.md").read_text().splitlines()[0]


# ----- serve -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--max-batch", "0"], "--max-batch must be an integer >= 1, got 0"),
    (["--k-max", "-1"], "--k-max must be an integer >= 0"),
    (["--port", "0"], "--port must be in 1..65535"),
])
def test_serve_bad_arguments_before_the_model_loads(capsys, no_load, argv, needle):
    """Bug: `serve --max-batch 0` loaded the model, then Engine's error came after minutes (or as a
    traceback); `--k-max -1` was not checked at all."""
    code, _, err = run_cli(capsys, "serve", *argv)
    one_line_error(code, err, needle)


def test_serve_k_max_not_an_integer_is_argparse_error(capsys):
    """Bug guard: `--k-max 2.5` must be refused by the parser (usage + message), not reach Engine."""
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--k-max", "2.5"])
    assert exc.value.code == 2 and "--k-max: invalid int value" in capsys.readouterr().err


def test_serve_taken_port_is_one_line_before_the_model_loads(capsys, no_load):
    """Bug: a port already in use was found by uvicorn only after the model loaded and calibrated."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, err = run_cli(capsys, "serve", "--port", str(port))
    one_line_error(code, err, f"cannot listen on 127.0.0.1:{port}")


def test_serve_passes_verifier_k_max_and_device(capsys, monkeypatch, loads, lossy):
    """Bug: serve built its Engine without --verifier and --k-max (the server-wide rule and the batch's
    longest draft were silently the defaults); the app must name the rule and usage say lossless."""
    import uvicorn
    from fastapi.testclient import TestClient

    from draftsmith.serve import engine as engine_mod

    seen = {}
    real_engine = engine_mod.Engine

    class Spy(real_engine):
        def __init__(self, *a, **k):
            seen.update(k)
            super().__init__(*a, **k)

    def fake_run(app, host, port, log_level):
        with TestClient(app) as client:
            seen["models"] = client.get("/v1/models").json()
            seen["completion"] = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello world",
                                                                       "max_tokens": 6, "temperature": 0}).json()

    monkeypatch.setattr("draftsmith.serve.Engine", Spy)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code, _, err = run_cli(capsys, "serve", "--served-name", "tiny", "--drafter", "ngram:k=4", "--k-max", "3",
                           "--verifier", lossy, "--no-smartspec", "--port", port, "--dtype", "fp32")
    assert code == 0, err
    assert seen["k_max"] == 3 and seen["verifier"] == lossy and loads[-1][1:] == ("fp32", "cpu")
    model = seen["models"]["data"][0]
    assert model["verifier"] == lossy and model["lossless"] is False
    usage = seen["completion"]["usage"]
    assert usage["completion_tokens"] == 6 and usage["speculative"]["lossless"] is False
    assert f"verifier {lossy} (lossy)" in err


# ----- --memory-budget (policy/memory.py) --------------------------------------------------------
@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["serve", "--port", "1"]])
def test_a_bad_memory_budget_is_one_line_before_the_model_loads(capsys, no_load, command):
    code, _, err = run_cli(capsys, *command, "--memory-budget", "lots")
    one_line_error(code, err, "give a size such as 1.5GB")


def test_generate_under_a_memory_budget_reports_the_plan_and_refuses_what_cannot_fit(capsys, loads):
    """`generate --memory-budget`: the stats carry the plan; a budget below the weights is a
    one-line error naming the least that would do."""
    argv = ["generate", "--prompt", "the quick brown fox", "--max-new-tokens", "8", "--dtype", "fp32", "--json"]
    code, plain_out, _ = run_cli(capsys, *argv)
    code, out, err = run_cli(capsys, *argv, "--memory-budget", "64MiB")
    stats = json.loads(err.strip().splitlines()[-1])
    assert code == 0 and out == plain_out and stats["memory_budget"] == 64 << 20 and stats["memory_weights"] > 0
    code, _, err = run_cli(capsys, *argv, "--memory-budget", "1KiB")
    one_line_error(code, err, "below the weights")
