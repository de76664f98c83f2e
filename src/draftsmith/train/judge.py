"""`draftsmith train judge`: the head of Judge decoding (verify/judge.py) for a target.

Judge decoding (Bachmann et al., ICLR 2025) trains a linear head on the target's embedding of a
draft token to say whether the token is acceptable although the target would not have chosen it.
The paper's labels come from people (or an LLM) who read the draft; here they come from the target:

  1. candidates: the draft model reads each of the target's own answers (rollouts from `train
     data`, temperature 0) with the true prefix and guesses every next token (teacher forcing,
     one forward); a guess that differs from the answer's token is a candidate, the mismatch a
     verifier meets after an accepted prefix. At most `per_answer` per answer, spread over it.
  2. labels: the target continues greedily after each candidate for `window` tokens, every
     candidate of an answer in ONE forward per token (a branch per candidate, attending to the
     answer's prefix and its own tokens: a custom [1, 1, L, L] mask with explicit positions, the
     layout of train/pard.py). A candidate is acceptable when its branch rejoins the target's
     own answer: the branch's last >= `rejoin` tokens equal the answer's at an offset within
     `shift` tokens (a word skipped, added or reworded; `rejoins`), and the target itself gave
     the token at least `min_p` (a misspelt word the target repairs rejoins too, but is not
     acceptable). A different number or name does not rejoin.
  3. features: the target's last hidden state at the candidate token (the first forward of step
     2, the state verification computes when it reads that draft token), and the log of the
     probability the target gave the token (the paper's head reads the state only; on the default
     model the state alone ranked held-out candidates at AUC 0.60-0.65, with log p 0.72-0.78).
  4. a logistic regression on (features, label), class-balanced, L2, over a train split of the
     answers; the threshold is the lowest whose precision on a calibration split is at least
     `precision`; precision, recall and acceptance are reported on a third, test split.

The output folder holds `judge.safetensors` (weight [H], bias [1]), `judge.json` (threshold,
hidden size, inputs, the splits' numbers, the command's settings) and the candidates' data
(`candidates.pt`, read back by a rerun, which continues where a stopped one ended)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from ..errors import DraftsmithError
from .pard import layout_mask

from ..verify.judge import CONFIG_FILE, HEAD_FILE

DATA_FILE = "candidates.pt"


def rejoins(branch: list[int], answer: list[int], *, rejoin: int = 4, shift: int = 3) -> bool | None:
    """Whether a branch (the candidate token, then the target's greedy continuation) rejoins the
    answer (the target's own tokens from the candidate's position on): some tail branch[i:] of at
    least `rejoin` tokens equals answer[j:j + len(tail)] with |i - j| <= shift. None when the
    answer is too short to tell."""
    n = len(branch)
    if n < rejoin:
        return None
    for i in range(0, n - rejoin + 1):
        tail = branch[i:]
        for j in range(max(0, i - shift), i + shift + 1):
            if j + len(tail) <= len(answer) and answer[j:j + len(tail)] == tail:
                return True
    if len(answer) < n + shift:  # the answer ended before every offset could be checked
        return None
    return False


def pick_candidates(guesses: list[int], answer: list[int], per_answer: int, window: int, shift: int,
                    rng: random.Random) -> list[int]:
    """Answer positions t whose guess differs from answer[t], with room for a branch of `window`
    tokens and the offset after it; at most `per_answer`, drawn evenly at random."""
    room = len(answer) - window - shift  # t + (window + 1) + shift <= len(answer)
    ts = [t for t in range(0, max(room, 0)) if guesses[t] != answer[t]]
    if len(ts) > per_answer:
        ts = sorted(rng.sample(ts, per_answer))
    return ts


@torch.inference_mode()
def branch_rollouts(target, seq: list[int], start: int, ts: list[int], tokens: list[int], window: int,
                    eos: set[int]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """For each candidate (answer position t, token x): the target's last hidden state at x after
    seq[:start + t] ([M, H]), the target's probability of x there ([M]) and the branch
    [x, g_1 .. g_window] of its greedy continuation (cut after an end-of-sequence token).

    The sequence is read once into a KV cache; then every branch advances together, one token
    each per forward: the layout is the sequence, then depth 0 of every branch, depth 1, ...;
    a branch's token sees the sequence up to its anchor (the token before t) and its own branch
    (train/pard.py's `layout_mask`, block = depth + 1), at position anchor + 1 + depth."""
    from ..cache import new_cache
    from ..tree import additive_mask

    T, M = len(seq), len(ts)
    model, device = target.model, target.device
    cache = new_cache()
    anchors = [start + t - 1 for t in ts]  # the last real token each branch sees
    out = model(input_ids=torch.tensor([seq], device=device), past_key_values=cache, use_cache=True,
                position_ids=torch.arange(T, device=device)[None], logits_to_keep=torch.tensor(anchors, device=device))
    x = torch.tensor(tokens, device=device)
    p_x = out.logits[0].float().softmax(-1).gather(-1, x[:, None])[:, 0].cpu()  # [M] the target's p of each x
    blk, anc = [0] * T, list(range(T))
    branches, states, new = [[t] for t in tokens], None, x
    for depth in range(window + 1):
        blk += [depth + 1] * M
        anc += anchors
        allow = layout_mask(torch.tensor(blk, device=device), torch.tensor(anc, device=device))[-M:]  # [M, L]
        mask = additive_mask(allow, target.dtype)[None, None]  # [1, 1, M, L]
        L = len(blk)
        out = model(input_ids=new[None], past_key_values=cache, use_cache=True, attention_mask=mask,
                    position_ids=torch.tensor([[a + 1 + depth for a in anchors]], device=device),
                    cache_position=torch.arange(L - M, L, device=device), output_hidden_states=depth == 0)
        if depth == 0:
            states = out.hidden_states[-1][0].float().cpu()  # [M, H] at the candidate tokens
        if depth == window:
            break
        new = out.logits[0].argmax(-1)  # [M]
        for br, tok in zip(branches, new.tolist()):
            br.append(int(tok))
    kept = []
    for br in branches:
        cut = next((i + 1 for i, tok in enumerate(br[1:], 1) if tok in eos), len(br))
        kept.append(br[:cut])
    return states, p_x, kept


@torch.inference_mode()
def teacher_guesses(draft_model, seq: list[int], start: int, device) -> list[int]:
    """The draft model's greedy guess of every answer token given the true prefix: [len(seq) - start]."""
    logits = draft_model(input_ids=torch.tensor([seq], device=device), use_cache=False).logits[0]  # [T, V]
    return logits[start - 1:-1].argmax(-1).tolist()


def collect(target, draft_model, rows: list[dict], out: Path, *, per_answer: int, window: int, rejoin: int,
            shift: int, min_p: float, max_len: int, seed: int, progress: bool = True) -> dict:
    """Candidates, labels and features of every row, saved to out/candidates.pt as it goes (a rerun
    continues after the rows it holds)."""
    from tqdm import tqdm

    file = out / DATA_FILE
    settings = {"per_answer": per_answer, "window": window, "rejoin": rejoin, "shift": shift, "min_p": min_p,
                "max_len": max_len, "seed": seed}
    data = torch.load(file) if file.is_file() else {"ids": [], "states": [], "labels": [], "p": [], "answer_ids": [],
                                                   "settings": settings}
    if data.get("settings") != settings:
        raise DraftsmithError(f"judge: {file} was collected with {data.get('settings')}, this run asks {settings}; "
                              "use another --out (or delete the file)")
    done = set(data["answer_ids"])
    eos = set(target.eos_token_ids)
    bar = tqdm(total=len(rows), initial=len(done), desc="judge data", unit="answer", disable=not progress)
    last_save = time.monotonic()
    for row in rows:
        if row["id"] in done:
            continue
        seq = (row["prompt_ids"] + row["response_ids"])[-max_len:]
        start = len(seq) - len(row["response_ids"])
        if start < 1:
            bar.update(1)
            continue
        answer = seq[start:]
        guesses = teacher_guesses(draft_model, seq, start, target.device)
        rng = random.Random(f"{seed}:{row['id']}")
        ts = pick_candidates(guesses, answer, per_answer, window, shift, rng)
        if ts:
            states, p_x, branches = branch_rollouts(target, seq, start, ts, [guesses[t] for t in ts], window, eos)
            for t, state, p, br in zip(ts, states, p_x.tolist(), branches):
                label = rejoins(br, answer[t:], rejoin=rejoin, shift=shift)
                if label is None:
                    continue
                label = label and p >= min_p  # a token the target finds implausible is a corruption it repairs
                data["ids"].append((row["id"], t, guesses[t]))
                data["states"].append(state.to(torch.bfloat16))
                data["labels"].append(bool(label))
                data["p"].append(round(p, 6))
        data["answer_ids"].append(row["id"])
        bar.update(1)
        if time.monotonic() - last_save > 60:
            torch.save(data, file)
            last_save = time.monotonic()
    bar.close()
    torch.save(data, file)
    return data


def split_answers(answer_ids: list[str], seed: int) -> dict[str, str]:
    """Answer id -> "train" (70%), "calib" (15%) or "test" (15%): whole answers, seeded."""
    ids = sorted(set(answer_ids))
    random.Random(seed).shuffle(ids)
    n = len(ids)
    a, b = int(n * 0.7), int(n * 0.85)
    return {i: ("train" if k < a else "calib" if k < b else "test") for k, i in enumerate(ids)}


def fit(x: torch.Tensor, y: torch.Tensor, *, steps: int = 400, lr: float = 0.05, weight_decay: float = 1e-3,
        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced logistic regression (full batch, Adam) on x [M, H], y [M] bool: (w [H], b [1])."""
    g = torch.Generator().manual_seed(seed)
    H = x.shape[1]
    w = (torch.randn(H, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(1, requires_grad=True)
    pos = float(y.sum())
    neg = float(len(y) - pos)
    if pos == 0 or neg == 0:
        raise DraftsmithError(f"judge: the labels are all {'acceptable' if neg == 0 else 'not acceptable'} "
                              f"({len(y)} candidates); more answers, or another --window / --rejoin")
    weight = torch.where(y, neg / pos, 1.0)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y.float(), weight=weight)
            (loss + weight_decay * (w * w).sum()).backward()
            opt.step()
    return w.detach(), b.detach()


def rates(p: torch.Tensor, y: torch.Tensor, threshold: float) -> dict:
    """Precision, recall and the share of candidates accepted at a threshold."""
    take = p >= threshold
    tp = int((take & y).sum())
    return {"candidates": len(y), "acceptable": round(float(y.float().mean()), 4) if len(y) else 0.0,
            "accepted": round(float(take.float().mean()), 4) if len(y) else 0.0,
            "precision": round(tp / int(take.sum()), 4) if int(take.sum()) else None,
            "recall": round(tp / int(y.sum()), 4) if int(y.sum()) else None}


def choose_threshold(p: torch.Tensor, y: torch.Tensor, precision: float) -> float:
    """The lowest threshold whose precision on (p, y) is at least `precision` (1.0: accept none)."""
    order = torch.argsort(p, descending=True)
    hits = y[order].float().cumsum(0)
    prec = hits / torch.arange(1, len(y) + 1)
    ok = (prec >= precision).nonzero().flatten()
    if not len(ok):
        return 1.0
    return float(p[order][int(ok[-1])])


def train_judge(target, data: str, out: str, *, drafter: str, per_answer: int = 16, window: int = 8,
                rejoin: int = 4, shift: int = 3, min_p: float = 0.02, precision: float = 0.5, max_len: int = 512,
                limit: int | None = None, seed: int = 0, steps: int = 400, weight_decay: float = 0.05,
                progress: bool = True) -> dict:
    """Collect (or continue collecting) the candidates of `data`, fit the head, write the folder."""
    from safetensors.torch import save_file

    from ..drafters.draft_model import check_same_vocabulary
    from ..target import load_causal_lm
    from .rollouts import read_rollouts

    for label, v, lo in (("per-answer", per_answer, 1), ("window", window, 1), ("rejoin", rejoin, 1),
                         ("shift", shift, 0), ("max-len", max_len, 8), ("steps", steps, 1)):
        if not isinstance(v, int) or v < lo:
            raise DraftsmithError(f"train judge: --{label} must be an integer >= {lo}, got {v!r}")
    if rejoin > window + 1:
        raise DraftsmithError(f"train judge: --rejoin ({rejoin}) cannot exceed the branch (--window + 1 = {window + 1})")
    if not 0.0 <= min_p <= 1.0:
        raise DraftsmithError(f"train judge: --min-p must be in [0, 1], got {min_p}")
    if not 0.0 < precision <= 1.0:
        raise DraftsmithError(f"train judge: --precision must be in (0, 1], got {precision}")
    rows = read_rollouts(data)[:limit]
    if len(rows) < 3:
        raise DraftsmithError(f"{data} holds {len(rows)} answers; train judge needs at least 3 (three splits)")
    if any("id" not in r for r in rows):
        raise DraftsmithError(f"{data}: every row needs an `id` (rollouts from `draftsmith train data` have one)")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    draft = load_causal_lm(drafter, dtype=str(target.dtype).replace("torch.", ""), device=str(target.device),
                           progress=progress)
    check_same_vocabulary(target, draft)
    t0 = time.perf_counter()
    got = collect(target, draft.model, rows, folder, per_answer=per_answer, window=window, rejoin=rejoin,
                  shift=shift, min_p=min_p, max_len=max_len, seed=seed, progress=progress)
    collect_s = time.perf_counter() - t0
    if not got["labels"]:
        raise DraftsmithError(f"train judge: no candidates in {len(rows)} answers (answers too short for "
                              f"--window {window} + --shift {shift}?)")
    split = split_answers([a for a, _, _ in got["ids"]], seed)
    H = got["states"][0].shape[-1]
    log_p = torch.tensor(got["p"]).clamp_min(1e-9).log()  # [M] the target's log p of each candidate
    x = torch.cat([torch.stack(got["states"]).float(), log_p[:, None]], dim=1)  # [M, H + 1]
    y = torch.tensor(got["labels"])  # [M]
    part = [split[a] for a, _, _ in got["ids"]]
    sel = {s: torch.tensor([p == s for p in part]) for s in ("train", "calib", "test")}
    if not all(int(m.sum()) for m in sel.values()):
        raise DraftsmithError(f"train judge: {len(y)} candidates are too few for three splits; more answers")
    mean = x[sel["train"]].mean(0)
    scale = x[sel["train"]].std(0).clamp_min(1e-4)
    w, b = fit((x[sel["train"]] - mean) / scale, y[sel["train"]], steps=steps, seed=seed, weight_decay=weight_decay)
    w_raw, b_raw = w / scale, b - (w / scale * mean).sum().reshape(1)  # the head reads raw states
    p = torch.sigmoid(x @ w_raw + b_raw)  # [M]
    threshold = choose_threshold(p[sel["calib"]], y[sel["calib"]], precision)
    report = {s: rates(p[m], y[m], threshold) for s, m in sel.items()}
    config = {"kind": "judge", "hidden_size": int(H), "inputs": ["hidden", "log_p"], "threshold": round(threshold, 6),
              "target": target.name, "drafter": str(drafter), "data": str(data), "answers": len(got["answer_ids"]),
              "features": "the target's last hidden state (hidden_states[-1]) at the draft token, then the log of "
                          "the target's probability of the token (weight[H])",
              "labels": f"acceptable = the target's greedy branch of {window} tokens after the token rejoins its own "
                        f"answer (>= {rejoin} tokens, offset <= {shift}) and the target gave the token p >= {min_p}",
              "settings": {"per_answer": per_answer, "window": window, "rejoin": rejoin, "shift": shift,
                           "min_p": min_p, "precision": precision,
                           "weight_decay": weight_decay, "max_len": max_len, "seed": seed, "steps": steps},
              "splits": report, "collect_seconds": round(collect_s, 1)}
    save_file({"weight": w_raw.contiguous(), "bias": b_raw.contiguous()}, str(folder / HEAD_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return config


def add_parser(stages, default_model: str, add_device) -> None:
    """The `train judge` subcommand (train/cli.py adds it to `draftsmith train`)."""
    j = stages.add_parser("judge", help="Judge decoding's head: accepts mismatched draft tokens the target does not mind")
    j.add_argument("--target", default=default_model)
    j.add_argument("--data", required=True, help="rollouts JSONL from `draftsmith train data --temperature 0` "
                                                 "(the target's own greedy answers)")
    j.add_argument("--drafter", default="smollm2-135m-instruct-drafter",
                   help="the draft model whose guesses make the candidates (a pack or a folder sharing the target's "
                        "vocabulary; default: the shipped drafter)")
    j.add_argument("--out", required=True, help="output folder (a rerun continues collecting where one stopped)")
    j.add_argument("--per-answer", type=int, default=16, help="candidates drawn per answer (16)")
    j.add_argument("--window", type=int, default=8, help="tokens the target continues after a candidate (8)")
    j.add_argument("--rejoin", type=int, default=4, help="tokens a branch must share with the answer at its end (4)")
    j.add_argument("--shift", type=int, default=3, help="largest offset between branch and answer when rejoining (3)")
    j.add_argument("--min-p", type=float, default=0.02,
                   help="a candidate the target gives less probability than this is never acceptable (0.02)")
    j.add_argument("--precision", type=float, default=0.5,
                   help="the threshold is the lowest with at least this precision on the calibration split (0.5)")
    j.add_argument("--weight-decay", type=float, default=0.05, help="L2 on the standardized head's weights (0.05)")
    j.add_argument("--max-len", type=int, default=512)
    j.add_argument("--limit", type=int, help="first N answers of --data")
    j.add_argument("--steps", type=int, default=400, help="optimizer steps of the logistic regression")
    j.add_argument("--seed", type=int, default=0)
    add_device(j)
    j.set_defaults(func=cmd_judge)


def cmd_judge(args) -> int:
    from ..target import load_target

    target = load_target(args.target, dtype="bfloat16", device=args.device)
    config = train_judge(target, args.data, args.out, drafter=args.drafter, per_answer=args.per_answer,
                         window=args.window, rejoin=args.rejoin, shift=args.shift, min_p=args.min_p,
                         precision=args.precision,
                         max_len=args.max_len, limit=args.limit, seed=args.seed, steps=args.steps,
                         weight_decay=args.weight_decay)
    print(json.dumps({"out": args.out, "threshold": config["threshold"], **config["splits"]}, indent=2))
    return 0
