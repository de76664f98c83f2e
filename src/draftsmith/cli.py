"""draftsmith generate | bench | eval | train | serve | models"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

from .errors import DraftsmithError

DEFAULT_QUESTIONS = "mtbench"


def _sampling(args):
    from .types import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, stop=tuple(getattr(args, "stop", None) or ()))


def _add_target_args(p: argparse.ArgumentParser, verifier_help: str) -> None:
    """--device and --verifier (generate, bench, serve)."""
    p.add_argument("--device", default="cpu", help="where the target runs: cpu (default), cuda, cuda:N or mps")
    p.add_argument("--verifier", default="auto", help="acceptance rule NAME[:opt=val,...]: greedy, rejection, or "
                   "any registered with draftsmith.register_verifier; auto (default) = greedy at temperature 0, "
                   "rejection sampling otherwise. " + verifier_help)
    p.add_argument("--exact", action="store_true",
                   help="greedy output id for id identical to plain decoding in bf16 too, whatever the drafter and "
                   "the batch (one attention call per query in verification forwards; see draftsmith.exact)")


def _check_target_args(args) -> None:
    """Fail on a bad --verifier or --device now, before any model loads."""
    from .target import resolve_device
    from .verify import build_verifier

    build_verifier(args.verifier)
    resolve_device(args.device)


def _verifier(args):
    """--verifier as the decoders take it: None for auto, else the spec."""
    return None if args.verifier == "auto" else args.verifier


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .catalog import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="pack name, local Hugging Face folder or hub id "
                   f"(default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="bf16", help="bf16 (default) or fp32")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def cmd_generate(args) -> int:
    import torch

    from .decode import SpeculativeDecoder
    from .drafters import build_drafter, parse_spec
    from .target import load_target

    from .policy.memory import parse_size

    params = _sampling(args)
    name, options = parse_spec(args.drafter)
    drafter = build_drafter(name, **options)
    budget = parse_size(args.memory_budget) if args.memory_budget is not None else None
    _check_target_args(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt or not prompt.strip():
        raise DraftsmithError("prompt is empty")
    target = load_target(args.model, dtype=args.dtype, device=args.device)
    decoder = SpeculativeDecoder(target, drafter, verifier=_verifier(args), exact=args.exact, memory_budget=budget)
    ids = target.encode(prompt, chat=False if args.no_chat else None)
    generator = torch.Generator().manual_seed(args.seed)
    result = None
    for chunk in decoder.stream(ids, params, generator):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        result = chunk.result or result
    sys.stdout.write("\n")
    s = result.stats
    memory = {}
    if decoder.memory is not None:
        memory = {"memory_budget": decoder.memory.budget, "memory_weights": decoder.memory.weights,
                  "memory_per_token": decoder.memory.per_token, "memory_per_node": decoder.memory.per_node}
    if args.json:
        print(json.dumps({"drafter": args.drafter, "verifier": args.verifier, "model": args.model, **memory,
                          **s.as_dict()}), file=sys.stderr)
    else:
        label = args.drafter if args.verifier == "auto" else f"{args.drafter}, verifier {args.verifier}"
        print(f"[{label}{'' if s.lossless else ', lossy'}] {s.new_tokens} tokens in {s.steps} steps: τ {s.tau:.2f}, "
              f"acceptance {s.acceptance_rate:.2f}, {s.tokens_per_second:.1f} tok/s, drafter "
              f"{100 * s.drafter_share:.0f}% of time, finish: {s.finish_reason}"
              + (f", {decoder.memory.describe()}" if decoder.memory is not None else ""), file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from .bench import report
    from .data.questions import load_questions
    from .bench.runner import MethodSpec, run_bench
    from .target import load_target

    params = _sampling(args)
    methods = list(args.method or [])
    if args.config:
        methods += _config_methods(args.config)
    specs = [MethodSpec.parse(m) for m in (methods or ["none", "ngram"])]
    _check_target_args(args)
    questions = load_questions(args.questions, args.categories, args.per_category, args.limit)
    target = load_target(args.model, dtype=args.dtype, device=args.device)
    bar = tqdm(desc="bench", unit="gen", file=sys.stderr)

    def progress(n, total):
        bar.total = total
        bar.update(n)

    from .bench import roofline

    hardware = roofline.machine(target)  # the bandwidth in the same run, before the methods
    records = run_bench(target, questions, specs, params, repeats=args.repeats, warmup=args.warmup, progress=progress,
                        verifier=_verifier(args), exact=args.exact)
    bar.close()
    rows = report.summarize(records)
    roof = roofline.markdown(roofline.rows(records, hardware), hardware)
    mode = "greedy" if params.greedy else f"T={params.temperature}"
    rule = ("" if args.verifier == "auto" else f", verifier {args.verifier}") + (", exact" if args.exact else "")
    title = (f"{args.model} ({args.dtype}, {args.device}, {mode}{rule}, {params.max_new_tokens} new tokens), "
             f"{len(questions)} questions from {Path(args.questions).name}")
    report.print_table(rows, title)
    print(roof)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "records.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        plots = report.plot(rows, records, out, title)
        command = "draftsmith " + " ".join(sys.argv[1:])
        machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {_threads()}"
        (out / "report.md").write_text(
            f"# {title}\n\n`{command}`\n\n{dt.datetime.now().isoformat(timespec='seconds')}, {machine}\n\n"
            f"{report.markdown(rows)}\n\n{roof}\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots))
        print(f"wrote {out / 'records.jsonl'}, {out / 'report.md'}, " + ", ".join(str(p) for p in plots))
    return 0


def _config_methods(path: str) -> list[str]:
    """Methods from a YAML or JSON file: `methods: [ngram:k=5, {name: ngram, k: 8}]`."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except FileNotFoundError:
        raise DraftsmithError(f"config file {path!r} not found") from None
    except yaml.YAMLError as exc:
        raise DraftsmithError(f"config file {path!r} is not valid YAML/JSON: {exc}") from None
    items = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise DraftsmithError(f"config file {path!r} needs a non-empty list under `methods`")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            opts = ",".join(f"{k}={v}" for k, v in item.items() if k != "name")
            out.append(f"{item['name']}:{opts}" if opts else item["name"])
        else:
            raise DraftsmithError(f"config file {path!r}: a method is a string or a mapping with `name`, got {item!r}")
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def cmd_models(args) -> int:
    from . import models

    if args.action == "list":
        for row in models.list_packs():
            mark = "fetched" if row["fetched"] else "-"
            print(f"{row['name']:32} {mark:8} {row.get('upstream', '')}")
        return 0
    path = models.fetch(args.name, force=args.force)
    print(path)
    return 0


def cmd_export(args) -> int:
    from .drafters.heads.export import export_heads
    from .catalog import SHIPPED_DRAFTERS, SHIPPED_HEADS, packs_root, shipped_drafter_dir

    heads = args.heads
    if not Path(heads).expanduser().exists() and heads in SHIPPED_DRAFTERS:  # a shipped draft model
        heads = str(shipped_drafter_dir(heads))
    elif not Path(heads).expanduser().exists():  # a target's shipped heads of --kind
        if (heads, args.kind) not in SHIPPED_HEADS:
            shipped = sorted(k for t, k in SHIPPED_HEADS if t == heads and k in ("eagle", "eagle3"))
            raise DraftsmithError(f"{heads!r} is neither a heads folder nor a target with shipped {args.kind} heads"
                                  + (f" (it ships: {', '.join(shipped)}; pick one with --kind)" if shipped else ""))
        heads = str(packs_root() / SHIPPED_HEADS[(heads, args.kind)])
    print(export_heads(heads, args.engine, args.out, verifier=args.verifier))
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Bind (host, port) briefly, as uvicorn will (SO_REUSEADDR), so a taken port or a bad host is
    a clear error before the model loads rather than a uvicorn log line after it."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DraftsmithError(f"--host {host!r} cannot be resolved: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise DraftsmithError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server "
                                  "running there? pick another --port)") from None


def _check_serve_args(args) -> None:
    """Every numeric serve option, with a one-line message naming it (before the model loads)."""
    import math

    from .policy.memory import parse_size

    if args.memory_budget is not None:
        parse_size(args.memory_budget)
    from .target import parse_dtype

    if not 0 < args.port < 65536:
        raise DraftsmithError(f"--port must be in 1..65535, got {args.port}")
    for flag, value, low, what in (("--max-batch", args.max_batch, 1, ""), ("--k-max", args.k_max, 0, " (0: no drafting)"),
                                   ("--max-body", args.max_body, 1, " (bytes)"), ("--max-queue", args.max_queue, 1, ""),
                                   ("--default-max-tokens", args.default_max_tokens, 1, ""),
                                   ("--max-tokens-limit", args.max_tokens_limit, 0, " (0: the context length)"),
                                   ("--max-restarts", args.max_restarts, 0, ""), ("--threads", args.threads, 1, ""),
                                   ("--prefill-chunk", args.prefill_chunk, 0, " (0: a prompt at once)")):
        if value is not None and value < low:
            raise DraftsmithError(f"{flag} must be an integer >= {low}{what}, got {value}")
    for flag, value in (("--request-timeout", args.request_timeout), ("--first-token-timeout", args.first_token_timeout),
                        ("--body-timeout", args.body_timeout)):
        if not (math.isfinite(value) and value >= 0):
            raise DraftsmithError(f"{flag} must be a number of seconds >= 0 (0: no timeout), got {value}")
    if args.max_tokens_limit and args.default_max_tokens > args.max_tokens_limit:
        raise DraftsmithError(f"--default-max-tokens ({args.default_max_tokens}) is over --max-tokens-limit "
                              f"({args.max_tokens_limit})")
    parse_dtype(args.dtype)


def cmd_serve(args) -> int:
    from .drafters import build_drafter, parse_spec
    from .target import load_target

    # every argument is checked before the model loads (seconds to minutes)
    _check_serve_args(args)
    name, options = parse_spec(args.drafter)
    build_drafter(name, **options)  # a bad drafter spec fails before the model loads
    _check_target_args(args)
    _check_port_free(args.host, args.port)

    import uvicorn

    from .serve import Engine, create_app

    target = load_target(args.model, dtype=args.dtype, device=args.device)
    engine = Engine(target, build_drafter(name, **options), verifier=_verifier(args), max_batch=args.max_batch,
                    smartspec=not args.no_smartspec, k_max=args.k_max, max_queue=args.max_queue,
                    max_restarts=args.max_restarts, exact=args.exact, prefill_chunk=args.prefill_chunk or None,
                    memory_budget=args.memory_budget)
    app = create_app(engine, args.served_name or args.model, args.drafter, max_body=args.max_body,
                     verifier_name=args.verifier, request_timeout=args.request_timeout,
                     first_token_timeout=args.first_token_timeout, body_timeout=args.body_timeout,
                     default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit or None)
    rule = "" if args.verifier == "auto" else f", verifier {args.verifier}" + ("" if engine.lossless else " (lossy)")
    rule += ", exact" if args.exact else ""
    print(f"serving {args.model} on {args.device} with drafter {args.drafter}{rule}, k_max {args.k_max}, on "
          f"http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    engine.close()
    return 0


def cmd_bench_serve(args) -> int:
    from .data.questions import load_questions
    from .bench.serving import long_prompt_text, run_serving_bench, write_report

    if any(c < 1 for c in args.concurrency):
        raise DraftsmithError("--concurrency values must be >= 1")
    if args.long_prompt_tokens is not None and args.long_prompt_tokens < 1:
        raise DraftsmithError("--long-prompt-tokens must be >= 1")
    if args.long_prompt_at and not set(args.long_prompt_at) <= set(args.concurrency):
        raise DraftsmithError(f"--long-prompt-at {args.long_prompt_at}: each must be one of --concurrency {args.concurrency}")
    if args.request_timeout <= 0:
        raise DraftsmithError("--request-timeout must be > 0 seconds")
    if args.rounds < 1 or args.requests_per_client < 1:
        raise DraftsmithError("--rounds and --requests-per-client must be >= 1")
    questions = load_questions(args.questions, per_category=args.per_category)
    prompts = [q.turns[0] for q in questions]
    if not prompts:
        raise DraftsmithError("no questions")
    methods = args.method or ["none", "ngram"]
    if methods[0] != "none":
        methods = ["none", *[m for m in methods if m != "none"]]
    long_prompt = None
    if args.long_prompt_tokens:
        from transformers import AutoTokenizer

        from .models import resolve_model

        long_prompt = long_prompt_text(prompts, args.long_prompt_tokens,
                                       AutoTokenizer.from_pretrained(resolve_model(args.model, progress=False)))
    rows = run_serving_bench(args.model, methods, prompts, args.concurrency, max_tokens=args.max_new_tokens,
                             requests_per_client=args.requests_per_client, rounds=args.rounds, dtype=args.dtype, max_batch=args.max_batch,
                             threads=args.threads, long_prompt=long_prompt, long_prompt_at=args.long_prompt_at or None,
                             request_timeout=args.request_timeout)
    if args.out:
        command = "draftsmith " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("draftsmith") else "draftsmith bench-serve"
        write_report(rows, Path(args.out), command,
                     f"serving {args.model} ({args.dtype}, greedy, {args.max_new_tokens} new tokens), "
                     f"{dt.datetime.now().isoformat(timespec='seconds')}, {platform.machine()}")
        print(f"wrote {args.out}/report.md")
    return 0


MEMORY_HELP = ("memory for weights, KV caches and a step's buffers, e.g. 1.5GB or 800MiB (a bare number: MiB): "
               "each request reserves its context and every step drafts as many nodes as fit (SpecMemo; "
               "policy/memory.py)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="draftsmith", description="Lossless speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text, streaming it as it is accepted")
    _add_model_args(g)
    g.add_argument("--drafter", default="ngram", help="NAME[:opt=val,...], e.g. ngram:k=5, none, "
                   "draft_model:model=qwen2.5-coder-0.5b-instruct (default: ngram)")
    g.add_argument("--prompt", required=True, help="text (chat template applied when the model has one); - reads stdin")
    g.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true", help="print the stats as JSON")
    g.add_argument("--memory-budget", help=MEMORY_HELP)
    _add_target_args(g, "A lossy rule is said so in the stats line.")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="compare methods against plain decoding on a question set")
    _add_model_args(b)
    b.add_argument("--questions", default=DEFAULT_QUESTIONS, help="Spec-Bench-format JSONL path, or a packaged set: "
                   "mtbench, humaneval, gsm8k (default: mtbench)")
    b.add_argument("--method", action="append", help="NAME[:opt=val,...] (repeatable); `none` is always run first; "
                   "the option verifier=RULE (or verifier=[RULE:opt=val,...]) picks the method's acceptance rule")
    b.add_argument("--config", help="YAML or JSON file with a `methods` list (added to --method)")
    b.add_argument("--categories", nargs="+", help="only these categories")
    b.add_argument("--per-category", type=int, help="first N questions of each category")
    b.add_argument("--limit", type=int, help="first N questions overall")
    b.add_argument("--repeats", type=int, default=1)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--out", help="folder for records.jsonl, report.md and plots")
    _add_target_args(b, "The rule of every method whose spec names none (a method names its own with "
                     "verifier=, e.g. --method ngram:k=5,verifier=greedy); the `none` baseline stays plain decoding. "
                     "Lossy methods are tagged (lossy) in the report.")
    b.set_defaults(func=cmd_bench)

    from .train.cli import add_train_parser

    add_train_parser(sub)

    from .eval.cli import add_eval_parser

    add_eval_parser(sub)

    v = sub.add_parser("serve", help="an OpenAI-compatible HTTP server")
    from .catalog import DEFAULT_MODEL

    v.add_argument("--model", default=DEFAULT_MODEL, help="pack name, local Hugging Face folder or hub id")
    v.add_argument("--dtype", default="bf16")
    v.add_argument("--drafter", default="ngram", help="NAME[:opt=val,...] (default: ngram)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--served-name", help="the model id clients send (default: --model)")
    v.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    v.add_argument("--max-batch", type=int, default=16, help="rows decoded together (default 16)")
    v.add_argument("--k-max", type=int, default=8, help="the batch's longest draft: caps every row's draft length "
                   "(SmartSpec picks up to it); 0 = no drafting (default 8)")
    v.add_argument("--no-smartspec", action="store_true", help="always draft the full length, whatever the batch")
    v.add_argument("--max-queue", type=int, default=256, help="requests waiting for a row at most; more get 429 with "
                   "Retry-After (default 256)")
    v.add_argument("--request-timeout", type=float, default=600.0, help="seconds from a request's arrival to its "
                   "end; past it the request is cancelled (its row freed) and answered 504 (default 600; 0 = none)")
    v.add_argument("--first-token-timeout", type=float, default=120.0, help="seconds from a request's arrival to its "
                   "first text, likewise (default 120; 0 = none)")
    v.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a request's body; past it 408 "
                   "(default 30; 0 = none)")
    v.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens of a request that names none "
                   "(chat and completions; never more than the context left) (default 256)")
    v.add_argument("--max-tokens-limit", type=int, default=0, help="the largest max_tokens a request may ask for; "
                   "more is a 400 (default 0 = the context length)")
    v.add_argument("--max-restarts", type=int, default=3, help="engine worker restarts after failures within a minute "
                   "before the server reports itself unhealthy (default 3)")
    v.add_argument("--prefill-chunk", type=int, default=256, help="prefill a longer prompt this many tokens per step, "
                   "between the running streams' steps, so none waits longer than one chunk (default 256; 0 = a "
                   "prompt at once)")
    v.add_argument("--memory-budget", help=MEMORY_HELP + "; a request that must wait for memory stays queued")
    v.add_argument("--threads", type=int, help="torch threads")
    _add_target_args(v, "The server-wide rule for every request (requests keep the OpenAI schema: no per-request rule).")
    v.set_defaults(func=cmd_serve)

    s = sub.add_parser("bench-serve", help="throughput and latency of the server under concurrent clients")
    _add_model_args(s)
    s.add_argument("--questions", default=DEFAULT_QUESTIONS)
    s.add_argument("--per-category", type=int, default=2)
    s.add_argument("--method", action="append", help="drafter spec (repeatable); `none` always runs first")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    s.add_argument("--requests-per-client", type=int, default=2)
    s.add_argument("--rounds", type=int, default=1, help="repeat every level, methods interleaved")
    s.add_argument("--max-batch", type=int, default=16)
    s.add_argument("--long-prompt-tokens", type=int, help="also run each level with one prompt of about this many "
                   "tokens arriving mid-run, and report the other requests' TTFT p99 with it against without it")
    s.add_argument("--long-prompt-at", type=int, nargs="+", help="the levels the long-prompt probe runs at (default: every one)")
    s.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take before it "
                   "counts as hung (the server gets the same timeout)")
    s.add_argument("--out", help="folder for report.md, results.json, throughput.png")
    s.set_defaults(func=cmd_bench_serve)

    e = sub.add_parser("export", help="EAGLE or EAGLE-3 heads, or a draft model (draft_model, pard), as a folder vLLM "
                       "or SGLang loads as a draft model")
    e.add_argument("heads", help="an EAGLE or EAGLE-3 heads folder (`train heads --kind eagle|eagle3`), a target "
                   "whose heads of --kind ship, or a draft model folder or shipped drafter name (`train pretrain|distill|pard`; "
                   "the speculative_config to pass is written beside it)")
    e.add_argument("--kind", choices=["eagle", "eagle3"], default="eagle",
                   help="with a target name: which of its shipped heads (default: eagle)")
    e.add_argument("--engine", required=True, choices=["vllm", "sglang"])
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--verifier", help="EAGLE-3 for vllm: the target's Hugging Face id or folder, written into the "
                   "speculators config (default: the upstream id of the target the heads were trained on)")
    e.set_defaults(func=cmd_export)

    m = sub.add_parser("models", help="list or fetch model packs")
    m.add_argument("action", choices=["list", "fetch"])
    m.add_argument("name", nargs="?")
    m.add_argument("--force", action="store_true")
    m.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models" and args.action == "fetch" and not args.name:
        print("error: models fetch needs a pack name (see `draftsmith models list`)", file=sys.stderr)
        return 2
    try:
        if getattr(args, "threads", None) is not None and args.threads < 1:
            raise DraftsmithError(f"--threads must be an integer >= 1, got {args.threads}")
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except DraftsmithError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
