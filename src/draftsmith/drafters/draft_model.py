"""An independent draft model: a smaller causal LM sharing the target's tokenizer proposes k
tokens autoregressively (sampled from q when sampling, argmax when greedy)."""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from ..errors import DraftsmithError, IncompatibleDrafterError
from ..sampling import probs, sample
from ..target import CausalLM, load_causal_lm
from ..types import Draft, VerifyResult
from .base import DraftContext
from .length import AdaptiveLength


def check_same_vocabulary(target: CausalLM, draft: CausalLM) -> None:
    """The draft must speak the target's token ids."""
    if target.tokenizer is not None and draft.tokenizer is not None:
        if target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
            raise IncompatibleDrafterError(
                f"draft model {draft.name!r} uses a different tokenizer from target {target.name!r} "
                f"({len(draft.tokenizer)} vs {len(target.tokenizer)} tokens): a draft model must share "
                "the target's vocabulary"
            )
    elif draft.vocab_size != target.vocab_size:
        raise IncompatibleDrafterError(
            f"draft model {draft.name!r} has {draft.vocab_size} logits, target {target.name!r} has "
            f"{target.vocab_size}: a draft model must share the target's vocabulary"
        )


class DraftModelDrafter:
    name: ClassVar[str] = "draft_model"
    needs_hidden_states: ClassVar[bool] = False

    def __init__(self, model: str | CausalLM | None = None, k: int = 5, adaptive: bool = True,
                 confidence: float = 0.0, dtype: str | torch.dtype | None = None):
        """k: longest draft. adaptive: choose k each step from the measured acceptance and cost
        (see length.py). confidence: stop drafting once the draft model's top probability falls
        below this (0 = off), as Hugging Face's assistant_confidence_threshold does."""
        if model is None:
            raise DraftsmithError("draft_model needs a model: build_drafter('draft_model', model=NAME_OR_PATH)")
        if not (isinstance(k, int) and k >= 1):
            raise DraftsmithError(f"draft_model: k (draft length) must be an integer >= 1, got {k!r}")
        if not 0.0 <= confidence < 1.0:
            raise DraftsmithError(f"draft_model: confidence must be in [0, 1), got {confidence!r}")
        self.model_spec, self.k, self.adaptive, self.confidence, self.dtype = model, k, adaptive, confidence, dtype
        self.draft: CausalLM | None = None
        self.length = AdaptiveLength(k)
        self.confirmed = 0  # leading tokens of the draft's cache known to be committed
        self.tail: list[int] = []  # draft tokens in the draft's cache beyond `confirmed`
        self.token_time = 0.0  # EMA of seconds per draft forward

    def bind(self, target: CausalLM) -> None:
        if isinstance(self.model_spec, CausalLM):
            self.draft = self.model_spec
        else:
            self.draft = load_causal_lm(self.model_spec, dtype=self.dtype or target.dtype, device=str(target.device))
        check_same_vocabulary(target, self.draft)
        self.vocab = target.vocab_size

    def prefill(self, prompt_ids: list[int]) -> None:
        self.draft.reset()
        self.length = AdaptiveLength(self.k)
        if len(prompt_ids) > 1:
            self.draft.forward(prompt_ids[:-1], last_only=True)
        self.confirmed, self.tail = len(prompt_ids) - 1, []

    def _sync(self, ids: list[int]) -> torch.Tensor:
        """Roll the draft's cache back to what was committed, feed the rest of `ids`, and
        return the logits for the next token ([1, 1, V])."""
        keep = self.confirmed
        for tok, committed in zip(self.tail, ids[self.confirmed :]):
            if tok != committed:
                break
            keep += 1
        self.draft.crop(keep)
        return self.draft.forward(ids[keep:], last_only=True).logits

    def _q(self, logits: torch.Tensor, params) -> torch.Tensor:
        q = probs(logits[:, -1], params)  # [1, V_draft]
        if q.shape[-1] != self.vocab:  # same tokenizer, differently padded embeddings
            q = torch.nn.functional.pad(q, (0, self.vocab - q.shape[-1])) if q.shape[-1] < self.vocab else q[:, : self.vocab]
        return q

    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if self.adaptive and ctx.target_step_time:
            k = min(k, self.length.choose(self.token_time / ctx.target_step_time))
        if k <= 0:
            return Draft.empty()
        t0 = time.perf_counter()
        logits = self._sync(ctx.ids)
        tokens, qs = [], []
        for i in range(k):
            if i:
                logits = self.draft.forward([tokens[-1]]).logits
            if ctx.params.greedy:
                tokens.append(int(logits[0, -1].argmax()))
            else:
                q = self._q(logits, ctx.params)
                qs.append(q)
                tokens.append(int(sample(q, ctx.generator)))
            if self.confidence and float(logits[0, -1].float().softmax(-1).max()) < self.confidence:
                break  # the draft model is unsure: more tokens would likely be rejected
        self.confirmed, self.tail = len(ctx.ids), tokens[:-1]
        per_token = (time.perf_counter() - t0) / len(tokens)
        self.token_time = per_token if not self.token_time else 0.8 * self.token_time + 0.2 * per_token
        q = torch.stack(qs, dim=1) if qs else None  # [1, k, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)

    def observe(self, result: VerifyResult) -> None:
        self.length.update(result.num_drafted, result.num_accepted)
