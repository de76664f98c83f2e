"""`draftsmith train early-exit`: Kangaroo adapters (drafters/early_exit.py) on a frozen target.

1. Data: training sequences (a prompt + an answer: ShareGPT first turns in the chat template with
   ShareGPT's answer, or the target's own rollouts; features.load_sequences). The target (frozen,
   in its own dtype) runs once over each, right-padded in batches of similar lengths, and keeps,
   per sequence, the residual stream after every exit layer L ([E, T, H]: the adapter's input)
   and its final hidden state from the answer on ([T - lo, H], after the final norm: what its LM
   head reads, so the target's next-token distribution p is one LM-head pass away). Made once and
   kept in a file (`features`, bf16: (E + 1) x H x 2 bytes a token) that reruns read back.
2. Loss per answer position t (the adapter at t drafts token t + 1), every exit's adapter at once
   (they share nothing but the data):
       forward KL(p_t || q_t)  with q_t = softmax(lm_head(adapter_L(x_L)_t)), the LM head frozen,
       + hidden_weight x SmoothL1(adapter_L(x_L)_t, h_final_t)    (Kangaroo's regression; 0 = off)
   over the training vocabulary (the N most frequent answer tokens, as `train heads` does: q and
   p are the N-way softmaxes; the drafter then drafts over those tokens, `draft_vocab.safetensors`).
   The adapter's final norm starts as the target's final norm and its attention output at zero:
   step 0 is the naive exit (the target's LM head on x_L), reported beside the trained adapter.
3. After training, on the held-out sequences (the first `holdout`, never trained on): top-1
   agreement of each exit with the target's argmax over the whole vocabulary (first-token
   agreement: the chance that the first drafted token is accepted greedily), and the SpecEE-style
   stop predictor per exit (logistic regression of that agreement on q's top probability, entropy
   and top-2 margin, fitted on those positions). The default exit is the one with the best
   expected tokens per unit of cost (E[tau](alpha, k) / (1 + k c_L), best k <= 8).
4. Output: `config.json` + `model.safetensors` (adapters only, bf16) + `draft_vocab.safetensors` +
   README.md (the model card); a checkpoint (`checkpoint/state.pt`) every `save_every` steps that
   a rerun resumes from.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..drafters.early_exit import (AdapterConfig, ExitAdapters, draft_token_cost, expected_tokens, q_features,
                                   save_adapters)
from ..drafters.heads.vocab import count_tokens, save_vocab, vocab_order
from ..errors import DraftsmithError
from ..target import CausalLM
from .card import write_readme
from .features import HOLDOUT, usable
from .heads import epoch_order
from .trainer import lr_at


@dataclass
class EarlyExitTrainConfig:
    out: str
    exits: tuple[int, ...] = (4, 6, 8)
    steps: int = 300
    batch_tokens: int = 2048  # answer tokens per step (whole sequences)
    lr: float = 2e-3
    warmup: float = 0.05
    hidden_weight: float = 0.0  # Kangaroo's hidden-state regression beside the KL (0 = KL only)
    intermediate_size: int = 0  # 0: Kangaroo's attention-only adapter; > 0: plus a SwiGLU MLP this wide
    max_len: int = 512
    seed: int = 0
    log_every: int = 10
    save_every: int = 25
    holdout: int = HOLDOUT
    data: str = ""  # where the sequences came from (for the card)
    features: str = ""  # keep the target's states of the sequences in this file (reruns read it back)
    train_vocab: int = 8192  # train over the N most frequent answer tokens (the draft vocabulary); 0 = all
    bf16: bool | None = None  # autocast the adapters' forward to bf16 (None: where it is faster, trainer.bf16_pays)

    def check(self) -> None:
        if not self.exits or any((not isinstance(e, int)) or e < 1 for e in self.exits):
            raise DraftsmithError(f"--exits must be layer numbers >= 1, got {self.exits!r}")
        if self.steps < 1 or self.batch_tokens < 8 or self.lr <= 0:
            raise DraftsmithError("--steps must be >= 1, --batch-tokens >= 8, --lr > 0")
        if self.hidden_weight < 0 or self.intermediate_size < 0 or self.train_vocab < 0:
            raise DraftsmithError("--hidden-weight, --intermediate-size and --train-vocab must be >= 0")


class ExitItem(NamedTuple):
    """One sequence with the target's view of it."""

    ids: torch.Tensor  # [T]
    states: torch.Tensor  # [E, T, H] residual stream after each exit layer
    final: torch.Tensor  # [T - lo, H] final hidden states (after the final norm) from lo = max(start - 1, 0)
    start: int  # first answer token


@torch.inference_mode()
def exit_features(target: CausalLM, sequences: list[tuple[list[int], int]], exits: tuple[int, ...], max_len: int,
                  batch_tokens: int = 4096) -> list[ExitItem]:
    """(ids, answer start) -> ExitItems in order (sequences with fewer than 3 answer tokens after
    truncation to `max_len` are dropped). Right-padded batches of similar lengths; causal
    attention, so padding after a sequence changes none of its positions."""
    kept = usable(sequences, max_len)
    order = sorted(range(len(kept)), key=lambda k: len(kept[k][0]))
    out: dict[int, ExitItem] = {}
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and len(kept[order[j]][0]) * (j - i + 1) <= batch_tokens:
            j += 1
        chunk = order[i:j]
        longest = len(kept[chunk[-1]][0])
        ids = torch.zeros((len(chunk), longest), dtype=torch.long)  # [B, T]
        for row, k in enumerate(chunk):
            ids[row, : len(kept[k][0])] = torch.tensor(kept[k][0])
        hs = target.model(input_ids=ids.to(target.device), output_hidden_states=True, logits_to_keep=1).hidden_states
        # hs[0]: the embeddings, hs[L]: after layer L, hs[-1]: after the final norm (what the LM head reads)
        states = torch.stack([hs[e] for e in exits], dim=1)  # [B, E, T, H]
        for row, k in enumerate(chunk):
            n, start = len(kept[k][0]), kept[k][1]
            lo = max(start - 1, 0)
            out[k] = _on_cpu(ids[row, :n], states[row, :, :n], hs[-1][row, lo:n], start)
        i = j
    return [out[k] for k in range(len(kept))]


def _on_cpu(ids, states, final, start) -> ExitItem:
    return ExitItem(ids.clone(), states.to("cpu", torch.bfloat16).clone(), final.to("cpu", torch.bfloat16).clone(),
                    int(start))


def cached_exit_features(target: CausalLM, sequences, exits, max_len: int, path: str, progress: bool = True):
    """exit_features, made once and kept in `path` (remade for other sequences, exits or target)."""
    digest = zlib.crc32(json.dumps([[ids[:max_len], start] for ids, start in sequences]).encode())
    meta = {"target": target.name, "max_len": max_len, "exits": list(exits), "sequences": len(sequences),
            "crc32": digest}
    file = Path(path) if path else None
    if file is not None and file.is_file():
        saved = torch.load(file, weights_only=True)
        if saved.get("meta") == meta:
            return [ExitItem(*row) for row in zip(saved["ids"], saved["states"], saved["final"], saved["start"].tolist())]
    items: list[ExitItem] = []
    t0 = time.perf_counter()
    for b in range(0, len(sequences), 32):
        items += exit_features(target, sequences[b:b + 32], exits, max_len)
        if progress:
            tokens = sum(len(it.ids) for it in items)
            print(f"target states: {len(items)}/{len(sequences)} sequences, {tokens} tokens, "
                  f"{tokens / max(time.perf_counter() - t0, 1e-9):.0f} tok/s", flush=True)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        part = file.with_name(file.name + ".part")
        torch.save({"meta": meta, "ids": [it.ids for it in items], "states": [it.states for it in items],
                    "final": [it.final for it in items], "start": torch.tensor([it.start for it in items])}, part)
        part.replace(file)
    return items


def final_norm_weight(target: CausalLM) -> torch.Tensor | None:
    """The target's final norm's weight (the decoder's `norm`, where the architecture has one)."""
    decoder = target.model.get_decoder() if hasattr(target.model, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    weight = getattr(norm, "weight", None)
    return weight.detach().float().clone() if isinstance(weight, torch.Tensor) else None


def build_for_target(target: CausalLM, exits, intermediate_size: int = 0, seed: int = 0) -> ExitAdapters:
    """Fresh adapters for `target`: the naive exit (zero attention output, the target's final norm)."""
    cfg = AdapterConfig.for_target(target.config, exits, intermediate_size=intermediate_size, target=target.name)
    torch.manual_seed(seed)
    module = ExitAdapters(cfg)
    weight = final_norm_weight(target)
    if weight is not None and weight.shape == (cfg.hidden_size,):
        with torch.no_grad():
            for adapter in module.adapters.values():
                adapter.out_norm.weight.copy_(weight)
    return module


class ExitLoss:
    """The loss of one sequence for every exit's adapter, with per-exit agreement counts."""

    def __init__(self, module: ExitAdapters, head_weight: torch.Tensor, vocab_ids: torch.Tensor | None,
                 hidden_weight: float, autocast: bool):
        """`head_weight` [N, H]: the frozen LM head's rows of the training vocabulary `vocab_ids`
        (None: all V rows)."""
        self.m, self.w, self.vocab_ids, self.hidden_weight, self.autocast = module, head_weight, vocab_ids, hidden_weight, autocast
        self.exits = module.cfg.exits

    def __call__(self, item: ExitItem, *, top: torch.Tensor | None = None, collect: list | None = None):
        """-> (loss sum, positions, [E, 2] agreement counts). `top` [m]: the target's argmax over
        the whole vocabulary at the loss positions (else agreement is within the training
        vocabulary); `collect`: append per exit (features [m, 3], agreed [m]) for the predictor."""
        device = self.w.device
        ids, states, final = item.ids.to(device), item.states.to(device).float(), item.final.to(device).float()
        T, lo = len(ids), max(item.start - 1, 0)
        positions = torch.arange(T, device=device)[None]
        with torch.no_grad():
            logp = F.linear(final, self.w).float().log_softmax(-1)  # [m, N], m = T - lo
            best = logp.argmax(-1) if top is None else top.to(device)
        total, stats = 0.0, torch.zeros(len(self.exits), 2)
        for i, e in enumerate(self.exits):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
                h = self.m[e](states[i][None], positions)[0, lo:]  # [m, H]
                logits = F.linear(h, self.w)  # [m, N]
            logq = logits.float().log_softmax(-1)
            total = total + (logp.exp() * (logp - logq)).sum()
            if self.hidden_weight:
                total = total + self.hidden_weight * F.smooth_l1_loss(h.float(), final, reduction="none").mean(-1).sum()
            pick = logq.argmax(-1)
            if top is not None and self.vocab_ids is not None:
                pick = self.vocab_ids[pick]
            agree = pick == best
            stats[i] += torch.tensor([int(agree.sum()), len(agree)])
            if collect is not None:
                collect[i].append((q_features(logits.detach()), agree.float()))
        return total, T - lo, stats


def fit_predictor(feats: torch.Tensor, agreed: torch.Tensor, iters: int = 200) -> list[float]:
    """Logistic regression of `agreed` [n] on `feats` [n, 3] (with an intercept): [bias, w_1..w_3]."""
    x = torch.cat([torch.ones(len(feats), 1), feats.float().cpu()], dim=1)  # [n, 4]
    y = agreed.float().cpu()
    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w, y) + 1e-3 * (w[1:] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return [round(float(v), 5) for v in w.detach()]


def best_rate(alpha: float, cost: float, cap: int = 8) -> tuple[float, int]:
    """max_k E[tau](alpha, k) / (1 + k cost) and its k (k = 0: plain decoding, rate 1)."""
    best = (1.0, 0)
    for k in range(1, cap + 1):
        best = max(best, (expected_tokens(alpha, k) / (1 + k * cost), k))
    return best


def evaluate(loss_fn: ExitLoss, target: CausalLM, held: list[ExitItem], full_head: torch.Tensor) -> dict:
    """Held-out first-token agreement with the target's argmax over the whole vocabulary, per
    exit, and the predictor's training pairs."""
    stats = torch.zeros(len(loss_fn.exits), 2)
    collect: list[list] = [[] for _ in loss_fn.exits]
    with torch.no_grad():  # not inference mode: the predictor's fit below needs autograd on these features
        for item in held:
            top = F.linear(item.final.to(full_head.device).float(), full_head).argmax(-1)  # [m]
            stats += loss_fn(item, top=top, collect=collect)[2]
    agreement = {str(e): round(float(stats[i, 0] / stats[i, 1].clamp(min=1)), 4) for i, e in enumerate(loss_fn.exits)}
    predictor = {}
    for i, e in enumerate(loss_fn.exits):
        feats = torch.cat([f for f, _ in collect[i]])
        agreed = torch.cat([a for _, a in collect[i]])
        predictor[str(e)] = fit_predictor(feats, agreed)
    return {"agreement": agreement, "tokens": int(stats[0, 1]), "predictor": predictor}


def train_early_exit(target: CausalLM, sequences: list[tuple[list[int], int]], cfg: EarlyExitTrainConfig, *,
                     progress: bool = True) -> Path:
    """Train one adapter per exit on (ids, answer start) sequences; write `cfg.out` (resumes
    from `cfg.out/checkpoint`). The first `cfg.holdout` sequences are held out."""
    cfg.check()
    n_layers = int(target.config.get_text_config().num_hidden_layers if hasattr(target.config, "get_text_config")
                   else target.config.num_hidden_layers)
    exits = tuple(sorted(set(cfg.exits)))
    if exits[-1] >= n_layers:
        raise DraftsmithError(f"--exits: {target.name} has {n_layers} layers; an exit must be below {n_layers}")
    sequences = usable(sequences, cfg.max_len)
    if len(sequences) <= cfg.holdout:
        raise DraftsmithError(f"{len(sequences)} usable training sequences; need more than the {cfg.holdout} held out")
    out = Path(cfg.out)
    held_seqs, train_seqs = sequences[: cfg.holdout], sequences[cfg.holdout:]
    vocab = vocab_order(count_tokens(ids[start:] for ids, start in sequences), always=sorted(target.eos_token_ids))
    device = target.device
    vocab_ids = torch.tensor(vocab[: cfg.train_vocab], dtype=torch.long, device=device) if cfg.train_vocab else None
    for p in target.model.parameters():
        p.requires_grad_(False)
    full_head = target.model.get_output_embeddings().weight.detach().float()  # [V, H]
    head_weight = full_head if vocab_ids is None else full_head[vocab_ids]  # [N, H]
    if getattr(target.model.get_output_embeddings(), "bias", None) is not None:
        raise DraftsmithError(f"{target.name}: an LM head with a bias is not supported by train early-exit")

    module = build_for_target(target, exits, cfg.intermediate_size, cfg.seed).float().to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, cursor, seen, log = 0, 0, 0, []
    ckpt = out / "checkpoint" / "state.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["opt"])
        step, cursor, seen, log = state["step"], state["cursor"], state["seen"], state.get("log", [])
        if progress:
            print(f"resumed from {ckpt} at step {step}", flush=True)
    train_items = cached_exit_features(target, train_seqs, exits, cfg.max_len, cfg.features, progress)
    held_items = exit_features(target, held_seqs, exits, cfg.max_len)
    if cfg.bf16 is None:
        from .trainer import bf16_pays

        cfg.bf16 = bf16_pays(next(module.parameters()).device)
    loss_fn = ExitLoss(module, head_weight, vocab_ids, cfg.hidden_weight, cfg.bf16)
    naive = None
    if step == 0:  # the naive exit (step 0): the target's LM head on x_L through its final norm
        module.eval()
        naive = evaluate(loss_fn, target, held_items, full_head)["agreement"]
        if progress:
            print(f"naive exit, held-out agreement: {naive}", flush=True)
    else:
        naive = next((r["naive"] for r in log if "naive" in r), None)
    module.train()
    orders: dict[int, list[int]] = {}

    def pick(c: int) -> int:
        epoch = c // len(train_items)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = epoch_order(len(train_items), cfg.seed, epoch)
        return orders[epoch][c % len(train_items)]

    window = {"loss": 0.0, "tokens": 0, "stats": torch.zeros(len(exits), 2), "t": time.perf_counter()}
    if naive is not None and not any("naive" in r for r in log):
        log.append({"naive": naive})
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, floor=0.0)
        picked, answer_tokens = [], 0
        while answer_tokens < cfg.batch_tokens:
            k = pick(cursor)
            cursor += 1
            picked.append(k)
            answer_tokens += len(train_items[k].ids) - train_items[k].start
        total, tokens, stats = 0.0, 0, torch.zeros(len(exits), 2)
        for k in picked:
            loss, n, s = loss_fn(train_items[k])
            total, tokens, stats = total + loss, tokens + n, stats + s
        loss = total / max(tokens * len(exits), 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        step += 1
        seen += tokens
        window["loss"] += float(loss.detach()) * tokens
        window["tokens"] += tokens
        window["stats"] += stats
        if step % cfg.log_every == 0 or step == cfg.steps:
            acc = (window["stats"][:, 0] / window["stats"][:, 1].clamp(min=1)).tolist()
            seconds = time.perf_counter() - window["t"]
            row = {"step": step, "loss": round(window["loss"] / max(window["tokens"], 1), 4),
                   "agreement": {str(e): round(a, 4) for e, a in zip(exits, acc)},
                   "tokens_per_s": round(window["tokens"] / max(seconds, 1e-9), 1)}
            log.append(row)
            if progress:
                print(json.dumps(row), flush=True)
            window = {"loss": 0.0, "tokens": 0, "stats": torch.zeros(len(exits), 2), "t": time.perf_counter()}
        if step % cfg.save_every == 0 or step == cfg.steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            part = ckpt.with_name("state.pt.part")
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "step": step, "cursor": cursor,
                        "seen": seen, "log": log}, part)
            part.replace(ckpt)
    module.eval()
    metrics = evaluate(loss_fn, target, held_items, full_head)
    head_rows = len(vocab_ids) if vocab_ids is not None else full_head.shape[0]
    costs = {str(e): round(draft_token_cost(target, e, module.num_parameters(e), head_rows), 4) for e in exits}
    rates = {e: best_rate(metrics["agreement"][e], costs[e]) for e in costs}
    default = max(rates, key=lambda e: rates[e][0])
    module.cfg.default_exit = int(default)
    module.cfg.held_out = metrics["agreement"]
    module.cfg.predictor = metrics["predictor"]
    module.cfg.training = {**asdict(cfg), "exits": list(exits), "sequences": len(train_items),
                           "answer_tokens_seen": seen, "held_out_tokens": metrics["tokens"], "naive_exit": naive,
                           "draft_token_cost": costs, "best_rate": {e: [round(r, 4), k] for e, (r, k) in rates.items()},
                           "last_logged": log[-1] if log else {}}
    save_adapters(module, out)
    save_vocab(out, vocab)
    write_card(out, module.cfg)
    return out


def write_card(out: Path, cfg: AdapterConfig) -> Path:
    t = cfg.training
    data = t.get("data") or "?"
    lines = [f"# Early-exit adapters for {cfg.target}", "",
             f"Kangaroo-style adapters (one attention layer between two RMS norms"
             + (f", plus a {cfg.intermediate_size}-wide SwiGLU MLP" if cfg.intermediate_size else "")
             + f") on the residual stream after layers {', '.join(map(str, cfg.exits))} of the "
             f"{cfg.target_layers}-layer target, trained by `draftsmith train early-exit` with the target frozen "
             f"(its LM head shared). Default exit: layer {cfg.default_exit}.", "",
             "## Recipe", "",
             f"- data: `{data}`, {t.get('sequences')} training sequences (prompt + answer, at most {t.get('max_len')} "
             f"tokens), {t.get('holdout')} held out; answer tokens seen: {t.get('answer_tokens_seen')}",
             f"- loss: forward KL to the target's next-token distribution over the "
             + (f"{t['train_vocab']}-token training vocabulary" if t.get("train_vocab") else "whole vocabulary")
             + (f" + {t['hidden_weight']} x SmoothL1 to the target's final hidden state" if t.get("hidden_weight") else ""),
             f"- {t.get('steps')} steps x {t.get('batch_tokens')} answer tokens, lr {t.get('lr')} (AdamW, cosine, "
             f"warm-up {t.get('warmup')}), seed {t.get('seed')}", "",
             "## Held-out first-token agreement with the target's greedy token", "",
             f"{t.get('held_out_tokens')} answer positions of the held-out sequences; the naive exit is the target's "
             "own final norm and LM head on the layer-L state (the adapter at step 0).", "",
             "| exit layer | naive exit | trained adapter | draft-token cost (target steps) | best E[tau]/cost (k) |",
             "|---|---|---|---|---|"]
    for e in cfg.exits:
        naive = (t.get("naive_exit") or {}).get(str(e))
        rate, k = t.get("best_rate", {}).get(str(e), (None, None))
        lines.append(f"| {e} | {naive if naive is not None else '-'} | {cfg.held_out.get(str(e))} | "
                     f"{t.get('draft_token_cost', {}).get(str(e))} | {rate} ({k}) |")
    lines += ["", "The cost is weights read per draft token (the first L layers, the adapter, the drafted LM-head rows) "
              "over the target's; E[tau]/cost assumes every drafted token is accepted with the first-token "
              "agreement.", "",
              f"Use: `build_drafter(\"early_exit\")` on `{cfg.target}` (shipped), or "
              "`build_drafter(\"early_exit\", adapter=\"THIS_FOLDER\", exit_layer=L)`; `exit_layer=\"dynamic\"` "
              "chooses among the exits per step (DEL)."]
    return write_readme(out, lines)


# ----- `draftsmith train early-exit` -------------------------------------------------------------
def add_parser(stages, default_model: str, add_device) -> None:
    """The `train early-exit` subcommand (train/cli.py adds it to `draftsmith train`)."""
    e = stages.add_parser("early-exit", help="Kangaroo early-exit adapters on the frozen target's first layers")
    e.add_argument("--target", default=default_model)
    e.add_argument("--data", default="sharegpt",
                   help="`sharegpt` (the packaged ShareGPT: first turns with ShareGPT's answers; default), a ShareGPT "
                        ".json file, or rollouts JSONL from `draftsmith train data` (the target's own answers)")
    e.add_argument("--limit", type=int, help="use at most this many training sequences (the first 16 are held out)")
    e.add_argument("--features", help="keep the target's states of the sequences in this file (made once, read back "
                                      "by reruns; (exits + 1) x hidden x 2 bytes a token)")
    e.add_argument("--out", required=True, help="output folder (reruns resume from its checkpoint)")
    e.add_argument("--exits", default="4,6,8", help="exit layers, one adapter each (default 4,6,8)")
    e.add_argument("--steps", type=int, default=300)
    e.add_argument("--batch-tokens", type=int, default=2048, help="answer tokens per step")
    e.add_argument("--lr", type=float, default=2e-3)
    e.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of Kangaroo's hidden-state regression (SmoothL1 to the target's final hidden state) "
                        "beside the KL (default 0: KL only)")
    e.add_argument("--intermediate-size", type=int, default=0,
                   help="add a SwiGLU MLP this wide to each adapter (default 0: Kangaroo's attention-only adapter)")
    e.add_argument("--train-vocab", type=int, default=8192,
                   help="train over the N most frequent answer tokens, the drafter's draft vocabulary (0 = all)")
    e.add_argument("--max-len", type=int, default=512)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--save-every", type=int, default=25)
    e.add_argument("--no-bf16", dest="bf16", action="store_false", default=None,
                   help="train the adapters' forward in fp32 (default: bf16 autocast where it is faster, measured at start)")
    add_device(e)
    e.set_defaults(func=cmd_early_exit)


def cmd_early_exit(args) -> int:
    from .cli import _target
    from .features import load_sequences

    try:
        exits = tuple(int(x) for x in str(args.exits).split(",") if x.strip())
    except ValueError:
        raise DraftsmithError(f"--exits takes layer numbers separated by commas, got {args.exits!r}") from None
    if args.limit is not None and args.limit < 1:
        raise DraftsmithError("--limit must be >= 1")
    cfg = EarlyExitTrainConfig(out=args.out, exits=exits, steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr,
                               hidden_weight=args.hidden_weight, intermediate_size=args.intermediate_size,
                               max_len=args.max_len, seed=args.seed, save_every=args.save_every, data=args.data,
                               features=args.features or "", train_vocab=args.train_vocab, bf16=args.bf16)
    cfg.check()
    target = _target(args.target, args.device)
    print(train_early_exit(target, load_sequences(target, args.data, limit=args.limit), cfg))
    return 0
