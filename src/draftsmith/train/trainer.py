"""One training loop for every drafter stage, single- or multi-process.

Run as a plain process, or unchanged under `accelerate launch` / `torchrun` (each process takes
every world-th batch; gradients are averaged by DDP through `accelerate`). Progress on a tqdm
bar, scalars to TensorBoard (`OUT/runs`), and a checkpoint (`OUT/checkpoint`) every
`save_every` steps that a rerun with the same command resumes from. The drafter trains on
`device` (`--device`: cpu by default, cuda, cuda:N, mps), where the target already is; batches
may be made on the CPU.

Stages (the loss per training token):
- pretrain  next-token cross-entropy on packed text.
- pard      cross-entropy over PARD's layout (train/pard.py): the sequence and its mask blocks.
- align     FastDraft's alignment (Zafrir et al. 2024): next-token cross-entropy on target-generated
            sequences (sequence-level distillation: the target's tokens are the labels; no
            target forward at all).
- distill   a distance between the target's p and the drafter's q (losses.py) on
            target-generated answers. Options: DistillSpec on-policy data (with probability
            `on_policy` a batch's answers are resampled from the drafter itself, and the
            target scores them), and AdaSPEC token selection (score each token by
            FKL(drafter) - FKL(reference drafter); train on the top `adaspec_keep` fraction).
            p comes from a target forward over the batch, or, when the batch carries the
            target's last hidden states (`Batch.target_hidden`, from a feature file), from the
            target's LM head alone.

Training vocabulary (`vocab_ids`, the N most frequent tokens of the data; FR-Spec / EAGLE-3, as
for draft heads): the drafter's LM head, most of a small drafter's compute, runs on those N rows
only; q and p are the softmaxes of the N logits (p conditioned on the subset), and pretraining
skips the labels outside it. The drafter then drafts over the same N tokens (draft_model's
`vocab`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DraftsmithError
from .batches import Batch
from .losses import LOSSES, fkl, per_token_loss


@dataclass
class TrainConfig:
    stage: str                       # pretrain | align | distill | pard
    out: str
    steps: int
    batch_size: int = 8
    lr: float = 1e-3
    warmup: float = 0.03             # fraction of steps with a linear warm-up
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss: str = "ce"                 # ce (pretrain, align, pard) or one of losses.LOSSES (distill)
    on_policy: float = 0.0           # DistillSpec: probability a batch is resampled from the drafter
    on_policy_temperature: float = 1.0
    on_policy_max_new_tokens: int = 128
    adaspec_ref: str | None = None   # AdaSPEC: reference drafter folder
    adaspec_keep: float = 0.4
    train_vocab: int = 8192          # train over the N most frequent tokens of the data (0 = all)
    bf16: bool | None = None         # autocast the drafter's forward to bf16 (None: where it pays, bf16_pays)
    seed: int = 0
    log_every: int = 10
    save_every: int = 100
    extra: dict = field(default_factory=dict)  # recorded in the model card

    def check(self) -> None:
        if self.stage not in ("pretrain", "align", "distill", "pard"):
            raise DraftsmithError(f"unknown stage {self.stage!r}")
        if self.loss != "ce" and self.loss not in LOSSES:
            raise DraftsmithError(f"unknown loss {self.loss!r}; choose ce or one of {', '.join(LOSSES)}")
        if self.stage == "distill" and self.loss == "ce":
            raise DraftsmithError(f"distill needs a distillation loss: {', '.join(LOSSES)}")
        if self.stage in ("pard", "align") and self.loss != "ce":
            raise DraftsmithError(f"{self.stage} trains with cross-entropy on the data's tokens (loss ce)")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DraftsmithError("steps and batch size must be >= 1 and lr > 0")
        if not 0.0 <= self.on_policy <= 1.0 or not 0.0 < self.adaspec_keep <= 1.0:
            raise DraftsmithError("on_policy must be in [0, 1] and adaspec_keep in (0, 1]")
        if self.train_vocab < 0:
            raise DraftsmithError(f"train_vocab must be >= 0 (0 = the whole vocabulary), got {self.train_vocab}")


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than fp32 on `device`: on CUDA, yes; on a CPU it
    depends on its bf16 units. With AMX or AVX512-BF16 bf16 is the faster; an AVX2-only CPU
    emulates it, and there one training step of the default draft model took 20 s in bf16
    against 1.2 s in fp32 (the LM head's backward matmul, [2056, 8192] x [8192, 384]: 10.5 s
    against 86 ms; 2026-12-03, an AMD EPYC host with avx2 only). Measured here on one product of
    that shape class, a few milliseconds in fp32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.ones(256, 2048, dtype=dtype, device=device)  # [N, V]
        b = torch.ones(2048, 256, dtype=dtype, device=device)  # [V, H]
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        seconds[dtype] = time.perf_counter() - start
    return seconds[torch.bfloat16] < seconds[torch.float32]


class SelectedLogits(nn.Module):
    """A causal LM returning logits only at selected positions ([N, V], or [N, N_vocab] over
    `vocab_ids`): the LM head, the costliest matmul here, runs on the training tokens (and the
    training vocabulary) alone."""

    def __init__(self, lm: nn.Module, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        self.lm = lm
        self.vocab_ids = vocab_ids

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, select: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        lm = self.lm
        if hasattr(lm, "model") and hasattr(lm, "lm_head") and not getattr(lm.config, "final_logit_softcapping", None):
            hidden = lm.model(input_ids=ids, attention_mask=attention, position_ids=positions).last_hidden_state  # [B, T, H]
            return subset_logits(lm.lm_head, hidden[select], self.vocab_ids)  # [N, V or N_vocab]
        logits = lm(input_ids=ids, attention_mask=attention, position_ids=positions).logits[select]  # [N, V]
        return logits if self.vocab_ids is None else logits[:, self.vocab_ids]


def subset_logits(lm_head: nn.Module, hidden: torch.Tensor, vocab_ids: torch.Tensor | None) -> torch.Tensor:
    """hidden [N, H] -> logits over the whole vocabulary [N, V], or over `vocab_ids` [N, N_vocab]
    (the gradient reaches the LM head's rows of those tokens only)."""
    if vocab_ids is None:
        return lm_head(hidden)
    bias = getattr(lm_head, "bias", None)
    return F.linear(hidden, lm_head.weight[vocab_ids], None if bias is None else bias[vocab_ids])


def _fresh_window() -> dict:
    """Sums over the steps since the last log line."""
    return {"loss": 0.0, "tokens": 0, "agree": 0.0, "tvd": 0.0, "n": 0, "t0": time.perf_counter()}


def lr_at(step: int, cfg, floor: float = 0.1) -> float:
    """The learning rate of every training loop (drafter stages and draft heads): a linear warm-up
    over the first `cfg.warmup` fraction of `cfg.steps`, then a cosine from `cfg.lr` down to
    `floor` x `cfg.lr` (drafter stages: 10%; draft heads: 0). `cfg`: any config with `steps`,
    `lr` and `warmup`."""
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(drafter: nn.Module, get_batch: Callable[[int], Batch], cfg: TrainConfig, *,
          target: nn.Module | None = None, reference: nn.Module | None = None,
          resample: Callable[[nn.Module, Batch, torch.Generator], Batch] | None = None,
          vocab_ids: torch.Tensor | None = None, progress: bool = True, device: str | torch.device = "cpu") -> dict:
    """Train `drafter` in place for cfg.steps optimizer steps. `get_batch(i)` returns the i-th
    batch of the run (the same i always gives the same batch, so a resumed run continues the
    same sequence). `vocab_ids` [N]: the training vocabulary (None = all). `device`: where the
    drafter trains (cpu, cuda, cuda:N, mps; the target and reference must be there already);
    batches may come on the CPU. Returns the last logged metrics."""
    from accelerate import Accelerator
    from tqdm import tqdm

    from ..target import resolve_device

    cfg.check()
    if cfg.stage == "distill" and target is None:
        raise DraftsmithError("distill needs the target model")
    device = resolve_device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate takes the current CUDA device
    out = Path(cfg.out)
    acc = Accelerator(cpu=device.type == "cpu", log_with="tensorboard", project_dir=str(out / "runs"))
    device = acc.device
    if vocab_ids is not None:
        vocab_ids = vocab_ids.to(device)
    cfg.extra["processes"] = acc.num_processes
    if cfg.bf16 is None:
        cfg.bf16 = bf16_pays(device)
    model = SelectedLogits(drafter, vocab_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model, optimizer = acc.prepare(model, optimizer)
    teacher = SelectedLogits(target, vocab_ids).eval() if target is not None else None
    ref = SelectedLogits(reference, vocab_ids).eval() if reference is not None else None
    p_head = None  # the target's LM head (weight, bias) in float32 over the training vocabulary; made at the
                   # first batch that carries the target's features (other runs never need this copy)
    column = None  # token id -> its column among the training vocabulary's logits (-1: outside)
    if vocab_ids is not None:
        column = torch.full((int(vocab_ids.max()) + 1,), -1, dtype=torch.long, device=device)
        column[vocab_ids] = torch.arange(len(vocab_ids), device=device)

    ckpt, start = out / "checkpoint", 0
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + acc.process_index)
    if (ckpt / "state.json").is_file():
        acc.load_state(str(ckpt))
        start = json.loads((ckpt / "state.json").read_text())["step"]
        gen_file = ckpt / f"generator-{acc.process_index}.pt"
        if gen_file.is_file():  # on-policy and TVD++ draws continue where they stopped
            generator.set_state(torch.load(gen_file))
        acc.print(f"resuming from {ckpt} at step {start}")
    if start >= cfg.steps:
        return json.loads((ckpt / "state.json").read_text()).get("metrics", {})
    acc.init_trackers("train", config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))})

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=cfg.stage,
               disable=not (progress and acc.is_main_process))
    metrics: dict = {}
    window = _fresh_window()
    for step in bar:
        model.train()
        batch = get_batch(step * acc.num_processes + acc.process_index)
        if cfg.on_policy and resample is not None and torch.rand((), generator=generator) < cfg.on_policy:
            model.eval()
            batch = resample(acc.unwrap_model(model).lm, batch, generator)
            model.train()
        batch = batch.to(device)
        if batch.labels is not None:  # a layout with its own labels (PARD's mask blocks)
            select = batch.labels >= 0  # [B, T]
            labels = batch.labels[select]  # [N] token ids
        else:
            select = batch.loss_mask.bool()  # [B, T]
            labels = batch.ids[:, 1:][select[:, :-1]]  # [N] token ids
        if column is not None:  # as columns of the training vocabulary; -1 outside it
            labels = torch.where(labels < len(column), column[labels.clamp(max=len(column) - 1)], -1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            q_logits = model(batch.ids, batch.attention, select, batch.positions)  # [N, V or N_vocab]
        q_logits = q_logits.float()
        p_logits = None
        valid = torch.ones(q_logits.shape[0], dtype=torch.bool, device=device)  # [N]
        if teacher is not None and cfg.stage == "distill":
            with torch.inference_mode():
                if batch.target_hidden is not None:  # the target's features: its LM head alone gives p
                    if p_head is None:
                        lm_head = target.get_output_embeddings()
                        p_head = tuple(None if t is None else (t.detach() if vocab_ids is None else t.detach()[vocab_ids]).float()
                                       for t in (lm_head.weight, getattr(lm_head, "bias", None)))
                    p_logits = F.linear(batch.target_hidden.float(), *p_head)  # [N, V or N_vocab]
                else:
                    p_logits = teacher(batch.ids, batch.attention, select).float()  # [N, V or N_vocab]
            p_logits = p_logits.clone()  # inference tensors cannot enter autograd
            per_token = per_token_loss(cfg.loss, p_logits, q_logits, generator=generator)
        else:
            valid = labels >= 0  # pretraining over a training vocabulary: labels outside it are skipped
            per_token = F.cross_entropy(q_logits, labels.clamp(min=0), reduction="none")
        keep = valid
        if ref is not None and p_logits is not None and cfg.adaspec_keep < 1.0:
            with torch.inference_mode():
                r_logits = ref(batch.ids, batch.attention, select).float()
                gap = fkl(p_logits, q_logits.detach()) - fkl(p_logits, r_logits)  # [N]
            chosen = gap.topk(min(gap.numel(), max(1, int(cfg.adaspec_keep * gap.numel())))).indices
            keep = torch.zeros_like(keep)
            keep[chosen] = True
        loss = per_token[keep].mean() if keep.any() else q_logits.sum() * 0.0  # no training token: a no-op step
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        acc.backward(loss)
        if cfg.grad_clip:
            acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():
            window["loss"] += float(loss)
            window["tokens"] += labels.numel()
            truth = p_logits.argmax(-1) if p_logits is not None else labels
            window["agree"] += float((q_logits.argmax(-1) == truth)[valid].float().mean()) if valid.any() else 0.0
            if p_logits is not None:
                window["tvd"] += float(0.5 * (p_logits.softmax(-1) - q_logits.softmax(-1)).abs().sum(-1).mean())
            window["n"] += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            n, seconds = window["n"], time.perf_counter() - window["t0"]
            metrics = {"loss": window["loss"] / n, "top1_agreement": window["agree"] / n,
                       "tokens_per_s": window["tokens"] * acc.num_processes / seconds, "lr": lr_at(step, cfg)}
            if p_logits is not None:
                metrics["tvd"] = window["tvd"] / n  # 1 - expected acceptance of one drafted token
            acc.log(metrics, step=done)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", agree=f"{metrics['top1_agreement']:.2f}",
                            tok_s=f"{metrics['tokens_per_s']:.0f}")
            window = _fresh_window()
        if done % cfg.save_every == 0 or done == cfg.steps:
            acc.wait_for_everyone()
            acc.save_state(str(ckpt))
            torch.save(generator.get_state(), ckpt / f"generator-{acc.process_index}.pt")
            acc.wait_for_everyone()
            if acc.is_main_process:
                (ckpt / "state.json").write_text(json.dumps({"step": done, "metrics": metrics,
                                                             "processes": acc.num_processes}))
    acc.end_training()
    return metrics
