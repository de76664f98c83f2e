"""`draftsmith eval`: GSM8K accuracy and HumanEval pass@1 of methods next to plain decoding.

    tasks.py    the cases (data packs), prompts, answer extraction and scoring
    sandbox.py  running a completion's tests in a limited child process
    runner.py   methods over cases, interleaved, each output scored and compared with plain decoding
    report.py   summary rows, JSON and markdown
    cli.py      the subcommand"""

from .runner import run_eval, similarity
from .sandbox import SandboxResult, run_python
from .tasks import TASKS, Case, extract_answer, load_cases, numbers_equal

__all__ = ["TASKS", "Case", "SandboxResult", "extract_answer", "load_cases", "numbers_equal", "run_eval", "run_python",
           "similarity"]
