"""An independent draft model: a smaller causal LM sharing the target's tokenizer proposes k
tokens autoregressively (sampled from q when sampling, argmax when greedy).

A draft model trained by `draftsmith train` over a training vocabulary has that vocabulary beside
it (`draft_vocab.safetensors`, heads/vocab.py); the drafter then drafts over those tokens only,
which skips most of its LM head (the largest matmul of a small drafter). q is zero outside them,
so sampling stays lossless; the target still emits every token."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError, IncompatibleDrafterError
from .heads.vocab import SubsetLMHead, load_vocab
from ..sampling import greedy, probs, sample
from ..target import CausalLM, load_causal_lm
from ..types import Draft
from .base import DraftContext, DrafterBase, register


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


def _weights_read_per_token(lm: CausalLM) -> int:
    """Parameters a one-token forward reads: all but the input embedding table (one row of it),
    the LM head included even when it shares that table."""
    embed, head = lm.model.get_input_embeddings().weight, lm.model.get_output_embeddings().weight
    return lm.model.num_parameters() - embed.numel() + (head.numel() if head is embed else 0)


@register
class DraftModelDrafter(DrafterBase):
    name: ClassVar[str] = "draft_model"

    def __init__(self, model: str | CausalLM | None = None, k: int = 5, adaptive: bool = True,
                 confidence: float = 0.4, cost_ratio: float | None = None, dtype: str | torch.dtype | None = None,
                 vocab: int | None = None):
        """k: longest draft. adaptive: the loop chooses k each step from the measured acceptance
        rate and the cost of a draft token relative to a target step (policy/length.py). cost_ratio: that
        cost; by default the ratio of the weights a one-token forward reads (decoding is
        memory-bound, so a forward costs about its weight bytes). A fixed ratio rather than a live timing keeps runs
        reproducible: same seed, same output. confidence: stop drafting once the draft model's
        top probability falls below this (0 = off; 0.4 as in Hugging Face's
        assistant_confidence_threshold). vocab: draft over the first `vocab` tokens of the draft
        vocabulary stored beside the model (None: all of it when there is one; 0: the whole
        vocabulary)."""
        if model is None:
            raise DraftsmithError("draft_model needs a model: build_drafter('draft_model', model=NAME_OR_PATH)")
        if not (isinstance(k, int) and k >= 1):
            raise DraftsmithError(f"draft_model: k (draft length) must be an integer >= 1, got {k!r}")
        if cost_ratio is not None and not (isinstance(cost_ratio, (int, float)) and cost_ratio >= 0):
            raise DraftsmithError(f"draft_model: cost_ratio must be a number >= 0, got {cost_ratio!r}")
        self.cost_ratio = cost_ratio
        if not 0.0 <= confidence < 1.0:
            raise DraftsmithError(f"draft_model: confidence must be in [0, 1), got {confidence!r}")
        if vocab is not None and not (isinstance(vocab, int) and vocab >= 0):
            raise DraftsmithError(f"draft_model: vocab must be an integer >= 0 (0 = the whole vocabulary), got {vocab!r}")
        self.model_spec, self.k, self.adaptive, self.confidence, self.dtype = model, k, adaptive, confidence, dtype
        self.vocab_limit = vocab
        self.draft: CausalLM | None = None
        self.confirmed = 0  # leading tokens of the draft's cache known to be committed
        self.tail: list[int] = []  # draft tokens in the draft's cache beyond `confirmed`

    def fork(self) -> "DraftModelDrafter":
        """A drafter for another row: the same weights, its own KV cache."""
        other = super().fork()
        d = self.draft
        other.draft = CausalLM(d.model, d.tokenizer, d.name)
        other.confirmed, other.tail = 0, []
        return other

    def bind(self, target: CausalLM) -> None:
        if isinstance(self.model_spec, CausalLM):
            self.draft = self.model_spec
            check_same_vocabulary(target, self.draft)
        else:
            self.draft = load_causal_lm(self.model_spec, dtype=self.dtype or target.dtype, device=str(target.device))
            check_same_vocabulary(target, self.draft)
            self._subset_vocab()
        if self.cost_ratio is None:
            self.cost_ratio = _weights_read_per_token(self.draft) / _weights_read_per_token(target)
        self.vocab = target.vocab_size

    def _subset_vocab(self) -> None:
        """Draft over the stored draft vocabulary (a model this drafter loaded itself)."""
        from ..models import resolve_model

        if self.vocab_limit == 0:
            return
        ids = load_vocab(resolve_model(self.model_spec, progress=False), self.vocab_limit)
        if ids is None:
            if self.vocab_limit is not None:
                raise DraftsmithError(f"draft_model: vocab={self.vocab_limit} asks for a draft vocabulary, but "
                                      f"{self.model_spec!r} has none beside it; pass vocab=0 for the whole vocabulary")
            return
        lm = self.draft.model
        if len(ids) < lm.get_output_embeddings().weight.shape[0]:
            lm.set_output_embeddings(SubsetLMHead(lm.get_output_embeddings(), ids))

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self.draft.reset()
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
        keep = min(keep, len(ids) - 1)  # always feed the last committed token: its logits are next
        self.draft.crop(keep)
        return self.draft.forward(ids[keep:], last_only=True).logits

    def _q(self, logits: torch.Tensor, params) -> torch.Tensor:
        q = probs(logits[:, -1], params)  # [1, V_draft]
        if q.shape[-1] != self.vocab:  # same tokenizer, differently padded embeddings
            if q.shape[-1] < self.vocab:
                q = torch.nn.functional.pad(q, (0, self.vocab - q.shape[-1]))
            else:
                q = q[:, : self.vocab]
                q = q / q.sum(-1, keepdim=True)  # tokens the target cannot emit carry no draft mass
        return q

    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)  # the loop's draft-length policy already chose ctx.max_tokens
        if k <= 0:
            return Draft.empty()
        logits = self._sync(ctx.ids)
        tokens, qs = [], []
        for i in range(k):
            if i:
                logits = self.draft.forward([tokens[-1]]).logits
            if ctx.params.greedy:  # over the target's ids only (a draft model's head may be wider)
                tokens.append(int(greedy(logits[0, -1, : self.vocab])))
            else:
                q = self._q(logits, ctx.params)
                qs.append(q)
                tokens.append(int(sample(q, ctx.generator)))
            if self.confidence and float(logits[0, -1].float().softmax(-1).max()) < self.confidence:
                break  # the draft model is unsure: more tokens would likely be rejected
        self.confirmed, self.tail = len(ctx.ids), tokens[:-1]
        q = torch.stack(qs, dim=1) if qs else None  # [1, k, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)
