"""Online speculative decoding (Liu et al. 2023, arXiv 2310.07177): a draft model that keeps
learning from what the target serves.

    online:drafter=[draft_model:model=smollm2-135m-instruct-drafter]
    online:drafter=[draft_model:model=M],lr=1e-4,batch=4,steps_per_row=4,buffer=64

Serving already computes what distillation needs: every finished row is a prompt and the
target's own answer. When a row leaves (`finish`), its prompt and answer join a shared buffer of
the most recent `buffer` rows, and a background thread trains a float32 copy of the draft model
on them (cross-entropy on the answer tokens: distillation on the target's outputs, the paper's
hard-label form), `steps_per_row` optimizer steps of `batch` rows for each row that arrives, then
waits. The input embeddings stay frozen (rows touch few of their entries); every other weight
learns, the draft-vocabulary head included (answer tokens outside it carry no loss).

Serving never waits for training. The rows draft with the serving weights; after each optimizer
step the trainer marks a new version, and the next `propose` of any row copies the trained weights
into the serving ones (a copy of the draft model's trainable weights, milliseconds for a small
drafter: the only pause serving sees) under a lock the trainer holds only while it updates its
weights. A row's draft KV cache keeps what older weights computed; it is a drafter, so that costs
acceptance at most, never correctness.

Lossless as any drafter: the target verifies every draft, and a sampled draft token carries the q
it was drawn from (the weights of that moment). What changes is reproducibility of speed: which
version drafts a step depends on the thread's timing, so acceptance and speed vary run to run;
greedy output does not (the target decides it). A failing training step is logged once and ends
training; drafting goes on with the last published weights.
"""

from __future__ import annotations

import atexit
import copy
import logging
import threading
from collections import deque
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import DraftsmithError, IncompatibleDrafterError
from ..train.batches import rollout_batch
from ..types import Draft, VerifyResult
from .base import DraftContext, DrafterBase, register
from .draft_model import DraftModelDrafter
from .heads.vocab import SubsetLMHead

log = logging.getLogger(__name__)


class OnlineLearner:
    """The state every row shares: the example buffer, the float32 trainer copy of the draft
    model, its optimizer and thread, and the version counters."""

    def __init__(self, serving: torch.nn.Module, *, lr: float, batch: int, steps_per_row: int, buffer: int,
                 max_len: int, pad_id: int, seed: int, warmup: int = 16):
        self.serving_model = serving
        self.model = copy.deepcopy(serving).float().train()
        names = [n for n, _ in serving.named_parameters()]
        embed = serving.get_input_embeddings().weight
        frozen = {n for n, p in serving.named_parameters() if p is embed}
        head = self.model.get_output_embeddings()
        for n, p in self.model.named_parameters():
            p.requires_grad_(n not in frozen)
        if isinstance(head, SubsetLMHead):
            head.weight.requires_grad_(True)
        serving_params = dict(serving.named_parameters())
        trainer_params = dict(self.model.named_parameters())
        self.pairs = [(serving_params[n], trainer_params[n]) for n in names if trainer_params[n].requires_grad]
        self.lr, self.warmup = lr, warmup
        self.opt = torch.optim.AdamW([t for _, t in self.pairs], lr=lr, weight_decay=0.0)
        self.batch, self.steps_per_row, self.max_len, self.pad_id = batch, steps_per_row, max_len, pad_id
        self.examples: deque[tuple[list[int], list[int]]] = deque(maxlen=buffer)
        self.generator = torch.Generator().manual_seed(seed)
        self.cond = threading.Condition()
        self.weights_lock = threading.Lock()
        self.budget = 0          # optimizer steps owed to rows that arrived
        self.version = 0         # optimizer steps taken
        self.published = 0       # the version the serving weights hold
        self.rows_seen = 0
        self.losses: deque[float] = deque(maxlen=32)
        self.error: str | None = None
        self.stopped = False
        self.busy = False        # a step is running
        # token id -> its index in a subset head (-1: not in it), or None: the whole vocabulary
        self.index = None
        if isinstance(head, SubsetLMHead):
            self.index = torch.full((head.vocab_size,), -1, dtype=torch.long)
            self.index[head.token_ids.cpu()] = torch.arange(head.token_ids.numel())
        self.thread = threading.Thread(target=self._run, name="draftsmith-online-sd", daemon=True)
        self.thread.start()
        atexit.register(self.stop)  # a daemon thread still inside torch at interpreter exit aborts the process

    # ----- the serving side ---------------------------------------------------------------------
    def add(self, prompt: list[int], answer: list[int]) -> None:
        """A finished row: its prompt and the target's answer."""
        if not answer or self.stopped:
            return
        with self.cond:
            self.examples.append((list(prompt), list(answer)))
            self.rows_seen += 1
            self.budget += self.steps_per_row
            self.cond.notify()

    def publish(self) -> bool:
        """Copy the trained weights into the serving ones if a newer version exists (the caller
        runs no draft forward meanwhile). -> whether it copied."""
        if self.version == self.published:
            return False
        with self.weights_lock, torch.no_grad():
            for s, t in self.pairs:
                s.copy_(t)
            self.published = self.version
        return True

    def idle(self) -> bool:
        """Every step owed so far has been taken (or training stopped)."""
        return self.stopped or (self.budget <= 0 and not self.busy)

    def stop(self) -> None:
        """End training: the thread finishes the step it is in (if any) and returns."""
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout=30)
        atexit.unregister(self.stop)

    # ----- the trainer thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and (self.budget <= 0 or not self.examples):
                    self.cond.wait()
                if self.stopped:
                    return
                self.busy = True  # before the budget falls: `idle` reads both without the lock
                self.budget -= 1
                rows = self._pick()
            try:
                self._step(rows)
                self.busy = False
            except Exception as exc:  # noqa: BLE001 - training must never take serving down
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("online: a training step failed (%s); training stops, drafting goes on with the "
                            "weights of version %d", self.error, self.published)
                self.stopped = True
                return

    def _pick(self) -> list[tuple[list[int], list[int]]]:
        """The newest row and up to batch-1 others drawn from the buffer."""
        rows = [self.examples[-1]]
        others = len(self.examples) - 1
        if others > 0 and self.batch > 1:
            take = torch.randperm(others, generator=self.generator)[: self.batch - 1].tolist()
            rows += [self.examples[i] for i in take]
        return rows

    def _step(self, rows: list[tuple[list[int], list[int]]]) -> None:
        trimmed = []
        for prompt, answer in rows:  # the last max_len tokens, so a long prompt keeps its answer
            seq = (prompt + answer)[-self.max_len:]
            n_answer = min(len(answer), len(seq) - 1)
            trimmed.append({"prompt_ids": seq[: len(seq) - n_answer], "response_ids": seq[len(seq) - n_answer:]})
        batch = rollout_batch(trimmed, self.pad_id, self.max_len).to(next(self.model.parameters()).device)
        ids, attention = batch.ids, batch.attention    # [B, T]
        loss_mask = batch.loss_mask[:, :-1].bool()     # [B, T-1] position t predicts ids[t + 1]
        labels = ids[:, 1:]  # [B, T-1]
        head = self.model.get_output_embeddings()
        hidden = self.model.base_model(input_ids=ids, attention_mask=attention).last_hidden_state[:, :-1]  # [B, T-1, H]
        if self.index is not None:
            labels = self.index.to(ids.device)[labels]  # [B, T-1] index in the subset, -1 outside it
            loss_mask &= labels >= 0
            logits = head.subset(hidden[loss_mask])  # [N, V_sub]
        else:
            logits = head(hidden[loss_mask])  # [N, V]
        if logits.shape[0] == 0:
            return
        loss = F.cross_entropy(logits.float(), labels[loss_mask])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([t for _, t in self.pairs], 1.0)
        for group in self.opt.param_groups:  # linear warm-up: Adam's first steps are full-size whatever the gradient
            group["lr"] = self.lr * min(1.0, (self.version + 1) / max(1, self.warmup))
        with self.weights_lock:
            self.opt.step()
            self.version += 1
        self.losses.append(float(loss.detach()))


@register
class OnlineDrafter(DrafterBase):
    name: ClassVar[str] = "online"

    def __init__(self, drafter=None, lr: float = 3e-5, batch: int = 4, steps_per_row: int = 4, buffer: int = 64,
                 max_len: int = 512, warmup: int = 16, seed: int = 0):
        """drafter: the draft_model drafter to train (a spec, e.g. [draft_model:model=NAME]). lr: AdamW's
        learning rate. batch: rows per optimizer step (the newest and batch-1 drawn from the buffer).
        steps_per_row: optimizer steps each finished row earns. buffer: the most recent rows kept.
        max_len: the last tokens of a row that are trained on. warmup: optimizer steps of linear
        learning-rate warm-up. seed: the buffer draws. (lr 2e-4 made the shipped SmolLM2 drafter
        worse on a Python-topic stream: benchmarks/smollm2-135m-bf16-online-sd/.)"""
        from . import build_drafter

        if isinstance(drafter, (list, tuple)):
            if len(drafter) != 1:
                raise DraftsmithError(f"online: drafter=[...] takes one drafter spec, got {len(drafter)}")
            drafter = drafter[0]
        if drafter is None:
            raise DraftsmithError("online needs the draft model it trains: online:drafter=[draft_model:model=NAME]")
        for opt, value, low in (("batch", batch, 1), ("steps_per_row", steps_per_row, 0), ("buffer", buffer, 1),
                                ("max_len", max_len, 2), ("warmup", warmup, 0), ("seed", seed, 0)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise DraftsmithError(f"online: {opt} must be an integer >= {low}, got {value!r}")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < 1):
            raise DraftsmithError(f"online: lr must be a number in (0, 1), got {lr!r}")
        inner = build_drafter(drafter)
        if not isinstance(inner, DraftModelDrafter):
            raise IncompatibleDrafterError(f"online trains a draft model; got drafter {inner.name!r} "
                                           "(use online:drafter=[draft_model:model=NAME])")
        self.inner: DraftModelDrafter = inner
        self.options = dict(lr=float(lr), batch=batch, steps_per_row=steps_per_row, buffer=buffer, max_len=max_len,
                            warmup=warmup, seed=seed)
        self.k, self.adaptive, self.cost_ratio = inner.k, inner.adaptive, inner.cost_ratio
        self.learner: OnlineLearner | None = None
        self.prompt: list[int] = []
        self.answer: list[int] = []

    def bind(self, target) -> None:
        self.inner.bind(target)
        self.k, self.adaptive, self.cost_ratio = self.inner.k, self.inner.adaptive, self.inner.cost_ratio
        tok = target.tokenizer
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
        self.learner = OnlineLearner(self.inner.draft.model, pad_id=pad, **self.options)

    def fork(self) -> "OnlineDrafter":
        other = copy.copy(self)
        other.inner = self.inner.fork()
        other.prompt, other.answer = [], []
        return other

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self.prompt, self.answer = list(prompt_ids), []
        self.inner.prefill(prompt_ids)

    def propose(self, ctx: DraftContext) -> Draft:
        if self.learner is not None:
            self.learner.publish()
        return self.inner.propose(ctx)

    def observe(self, result: VerifyResult) -> None:
        self.answer.extend(result.tokens.reshape(-1).tolist())
        self.inner.observe(result)

    def finish(self) -> None:
        self.inner.finish()
        if self.learner is not None and self.prompt:
            self.learner.add(self.prompt, self.answer)
        self.prompt, self.answer = [], []
