"""draftsmith eval without a network or a model: the GSM8K answer extraction, HumanEval
completion programs, the sandbox (a pass, a failure, a busy loop killed by the time limit, an
allocation over the memory limit), similarity and the report."""

import json

import pytest

from draftsmith.eval import Case, extract_answer, numbers_equal, run_python, similarity
from draftsmith.eval import report
from draftsmith.eval.tasks import completion_program, extract_code, load_cases, run_humaneval, sanitize, score


# ----- GSM8K --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, number", [
    ("5 * 2 = 10, then 10 + 2 = 12, so 12 / (2/3) = 18.\nThe answer is 18.", 18.0),
    ("She earns $1,250.50 in total.", 1250.5),
    ("3 + 4 = 7\n#### 72\nand 9 more", 72.0),  # "####" wins over a later number
    ("The answer is: **-3**", -3.0),
    ("Final answer = 0.5 hours, i.e. 30 minutes", 0.5),  # "answer" wins over the last number
    ("so the result is \\boxed{42}.", 42.0),
    ("first 3, then 8, then 11", 11.0),  # no marker: the last number
    ("no numbers here", None),
])
def test_extract_answer(text, number):
    assert extract_answer(text) == number


@pytest.mark.parametrize("got, expected, equal", [
    (18.0, "18", True), (18.0000000001, "18", True), (1250.5, "1,250.50", True), (18.5, "18", False),
    (None, "18", False), (3.0, "-3", False),
])
def test_numbers_equal(got, expected, equal):
    assert numbers_equal(got, expected) is equal


def test_gsm8k_score():
    case = Case("gsm8k", "x", "q", {"answer": "18"})
    assert score(case, "The answer is 18.")["correct"] is True
    assert score(case, "The answer is 17.")["correct"] is False


# ----- HumanEval ----------------------------------------------------------------------------
PROBLEM = {
    "task_id": "Test/0", "entry_point": "add",
    "prompt": "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}


def test_extract_code_prefers_the_block_defining_the_function():
    text = "Here:\n```python\nprint('hi')\n```\nand\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b\n"
    assert extract_code("```python\ndef add(a, b):\n    return a +", "add").startswith("def add")  # unclosed
    assert extract_code("    return a + b", "add") == "    return a + b"  # no block: the reply


def test_sanitize_drops_what_runs_and_cuts_truncated_code():
    code = ("import math\nX = 2\ndef add(a, b):\n    return a + b\nprint(add(1, 2))\n"
            "if __name__ == '__main__':\n    input()\ndef broken(:\n")
    out = sanitize(code)
    assert "print" not in out and "__main__" not in out and "broken" not in out
    assert "import math" in out and "X = 2" in out and "def add" in out


@pytest.mark.parametrize("reply, passed", [
    ("```python\ndef add(a: int, b: int) -> int:\n    return a + b\n\nprint(add(2, 2))\n```", True),  # a whole function
    ("    return a + b\n", True),  # a bare body under the prompt's signature
    ("return a + b", True),  # a body without indentation
    ("```python\ndef add(a, b):\n    return a - b\n```", False),  # wrong
    ("I cannot do that.", False),
])
def test_humaneval_replies(reply, passed):
    r = run_humaneval(PROBLEM, reply, timeout_s=10)
    assert r.passed is passed, (r.status, r.output)


def test_completion_program_runs_the_tests():
    program = completion_program(PROBLEM, "    return a + b\n")
    assert program.rstrip().endswith("check(add)")
    assert PROBLEM["test"] in program


# ----- the sandbox ------------------------------------------------------------------------------
def test_sandbox_pass_and_fail():
    ok = run_python("import math\nassert math.sqrt(4) == 2\nprint('ok')")
    assert ok.status == "passed" and ok.returncode == 0 and "ok" in ok.output
    bad = run_python("assert 1 == 2")
    assert bad.status == "failed" and bad.returncode == 1 and "AssertionError" in bad.output


def test_sandbox_kills_an_infinite_loop_at_the_time_limit():
    r = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout" and not r.passed
    assert r.seconds < 10


def test_sandbox_memory_limit():
    r = run_python("x = bytearray(4 << 30)\nprint('allocated')", memory_mb=256)
    assert r.status == "memory" and "allocated" not in r.output


def test_sandbox_is_a_separate_guarded_process(tmp_path):
    import os

    marker = tmp_path / "keep.txt"
    marker.write_text("x")
    r = run_python(f"import os\nos.remove({str(marker)!r})")
    assert r.status == "failed" and marker.exists()  # destructive calls are disabled in the child
    r = run_python("import os\nprint(os.getpid(), os.getcwd())")
    pid, cwd = r.output.split()
    assert int(pid) != os.getpid() and "draftsmith-sandbox-" in cwd
    r = run_python("import os\nprint(sorted(os.environ))")
    assert "PYTHONPATH" not in r.output and "VIRTUAL_ENV" not in r.output


# ----- similarity and the report -----------------------------------------------------------------
def test_similarity():
    assert similarity("abc", "abc") == 1.0
    assert similarity("", "abc") == 0.0
    assert 0 < similarity("the cat sat", "the cat sits") < 1


def _rec(task, method, correct, tokens=10, wall=1.0, steps=5, lossless=True, sim=1.0, same=True):
    return {"task": task, "case_id": "c", "method": method, "verifier": "auto", "correct": correct, "new_tokens": tokens,
            "wall_time": wall, "steps": steps, "lossless": lossless, "similarity": sim, "matches_baseline": same}


def test_report_rows_deltas_and_warnings(tmp_path):
    records = []
    for i in range(10):  # none: 5/10; ngram: same; typical (lossy): 2/10, twice as fast
        records += [_rec("gsm8k", "none", i < 5, steps=10), _rec("gsm8k", "ngram", i < 5),
                    _rec("gsm8k", "ngram:verifier=typical", i < 2, wall=0.5, steps=2, lossless=False, sim=0.5,
                         same=i == 0)]
    records += [_rec("humaneval", "none", True, steps=10), _rec("humaneval", "ngram", True)]
    rows = report.summarize(records)
    by = {(r["task"], r["method"]): r for r in rows}
    assert by["gsm8k", "none"]["score"] == 50.0 and by["gsm8k", "none"]["tau"] == 1.0
    assert by["gsm8k", "ngram"]["delta_points"] == 0 and by["gsm8k", "ngram"]["tau"] == 2.0
    t = by["gsm8k", "ngram:verifier=typical"]
    assert (t["score"], t["delta_points"], t["speedup"], t["tau"], t["lossless"]) == (20.0, -30.0, 2.0, 5.0, False)
    assert t["similarity"] == 0.5 and t["identical"] == 0.1 and t["loses_quality"]
    assert by["humaneval", "ngram"]["score_name"] == "pass@1"
    warns = report.warnings_for(rows)
    assert len(warns) == 1 and "typical" in warns[0] and "30.0 points" in warns[0]
    md = report.markdown(rows)
    assert "| ngram:verifier=typical | **no** | 20.0 (2/10) | -30.0 ⚠ |" in md
    js, mdp = report.write(tmp_path, records, rows, {"title": "t", "command": "draftsmith eval"})
    data = json.loads(js.read_text())
    assert data["warnings"] == warns and len(data["records"]) == len(records)
    assert "Quality warnings" in mdp.read_text()


def test_load_cases_from_a_file(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"g{i}", "source": "gsm8k", "prompt": f"q{i}", "expected": str(i)})
                              for i in range(3)))
    cases = load_cases("gsm8k", limit=2, path=path)
    assert [c.case_id for c in cases] == ["g0", "g1"] and cases[1].reference == {"answer": "1"}
    assert cases[0].prompt.startswith("q0")


def test_report_of_a_run_stopped_early(tmp_path):
    records = [_rec("gsm8k", "none", True), _rec("gsm8k", "ngram", True),
               {**_rec("gsm8k", "none", False), "case_id": "d"}]  # case d: ngram never ran
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert report.complete_cases(records) == records[:2]
    assert report.main([str(tmp_path), "--title", "partial"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["cases"] for r in data["summary"]] == [1, 1]


def test_a_resumed_eval_keeps_complete_cases_reruns_the_rest_and_refuses_other_settings(tmp_path):
    """A long eval (264 cases x methods, hours on this CPU) is stopped by a session's end; a rerun
    with --resume must keep every case all methods finished, run again a case only some did (its
    partial records dropped, so no case mixes two runs), and refuse a run with other settings,
    whose records would not compare."""
    from types import SimpleNamespace

    from draftsmith.bench.runner import MethodSpec
    from draftsmith.errors import DraftsmithError
    from draftsmith.eval.cli import _resume, _settings
    from draftsmith.eval.tasks import Case
    from draftsmith.types import SamplingParams

    args = SimpleNamespace(model="m", dtype="bfloat16", task=["gsm8k"], verifier="auto", limit=None)
    specs = [MethodSpec.parse("ngram")]
    params = SamplingParams(max_new_tokens=64)
    settings = _settings(args, specs, params)
    cases = [Case("gsm8k", c, "q", {"answer": "1"}) for c in ("c", "d", "e")]
    assert _resume(tmp_path, settings, cases) == ([], cases)  # nothing yet: everything runs
    records = [_rec("gsm8k", "none", True), _rec("gsm8k", "ngram", True),
               {**_rec("gsm8k", "none", False), "case_id": "d"}]  # case d: ngram never ran
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{\"torn")
    with pytest.raises(DraftsmithError, match="no run.json"):
        _resume(tmp_path, settings, cases)
    (tmp_path / "run.json").write_text(json.dumps(settings))
    prior, todo = _resume(tmp_path, settings, cases)
    assert prior == records[:2] and [c.case_id for c in todo] == ["d", "e"]
    other = _settings(args, specs, SamplingParams(max_new_tokens=128))
    with pytest.raises(DraftsmithError, match="max_new_tokens was 64, now 128"):
        _resume(tmp_path, other, cases)
