"""Multi-draft proposals from one draft model: `branches` first tokens drawn from the draft
model's q after the committed context, each continued by its own sampled chain, as one tree
(k tokens deep). What the multi-draft rules verify:

    multi:model=M,branches=3,replacement=true    the first tokens drawn i.i.d. from q (duplicates
                                                 allowed): SpecTr's k independent drafts (`spectr`)
    multi:model=M,branches=3,replacement=false   the first tokens drawn without replacement
                                                 (Gumbel-top-k: keys log q + Gumbel noise, the
                                                 largest in order), distinct: Recursive
                                                 Speculative Decoding's siblings (`recursive`)

How the siblings were drawn is written in the draft itself, where the loop's boundary check keeps
it: `q[:, i]` is the law node i was drawn from (types.Draft). I.i.d. siblings all carry q; the
j-th sibling drawn without replacement carries q with the earlier siblings removed and
renormalised (zero at their tokens). `spectr` and `recursive` check that and refuse drafts drawn
the other way; `rejection` (recursive rejection with each node's own q) is exact on both.

`of` names the drafter whose q is drawn from: only `draft_model` today (its options: model, k,
dtype, vocab). At temperature 0 the branches are the draft model's top `branches` first tokens,
each with its greedy chain (q None; any rule then verifies greedily)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..sampling import greedy, sample, uniform
from ..types import Draft
from .base import DraftContext, register
from .draft_model import DraftModelDrafter


@register
class MultiDrafter(DraftModelDrafter):
    name: ClassVar[str] = "multi"
    trees: ClassVar[bool] = True

    def __init__(self, model=None, of: str = "draft_model", branches: int = 3, replacement: bool = True, k: int = 4,
                 adaptive: bool = False, dtype=None, vocab: int | None = None):
        """branches: first tokens (root children), each continued by a chain to depth k.
        replacement: True = i.i.d. (SpecTr), False = without replacement (recursive)."""
        if of != "draft_model":
            raise DraftsmithError(f"multi: of={of!r} is not supported; multi drafts from a draft model's q "
                                  "(of=draft_model, model=NAME_OR_PATH)")
        if not (isinstance(branches, int) and not isinstance(branches, bool) and branches >= 1):
            raise DraftsmithError(f"multi: branches must be an integer >= 1, got {branches!r}")
        if not isinstance(replacement, bool):
            raise DraftsmithError(f"multi: replacement must be true or false, got {replacement!r}")
        if model is None:
            raise DraftsmithError("multi needs a draft model: multi:model=NAME_OR_PATH,branches=3")
        super().__init__(model=model, k=k, adaptive=adaptive, confidence=0.0, dtype=dtype, vocab=vocab)
        self.branches, self.replacement = branches, replacement
        self.siblings = "iid" if replacement else "without_replacement"  # how root siblings are drawn

    def _firsts(self, q: torch.Tensor, generator) -> tuple[list[int], list[torch.Tensor]]:
        """The root children and the law each was drawn from ([V] rows)."""
        n = self.branches
        if self.replacement:
            xs = sample(q.expand(n, -1).contiguous(), generator).tolist()
            return xs, [q[0]] * n
        n = min(n, int((q[0] > 0).sum()))  # fewer tokens with mass than branches: that many
        gumbel = -torch.log(-torch.log(uniform(q.shape[-1:], generator, q.device).clamp_min(1e-30)))  # [V]
        keys = torch.where(q[0] > 0, q[0].log() + gumbel, torch.full_like(gumbel, float("-inf")))
        xs = keys.topk(n).indices.tolist()  # in key order: a sample without replacement, in order
        laws, law = [], q[0]
        for x in xs:
            laws.append(law)
            law = law.clone()
            law[x] = 0.0
            law = law / law.sum().clamp_min(1e-30)
        return xs, laws

    def propose(self, ctx: DraftContext) -> Draft:
        depth = min(self.k, ctx.max_tokens)
        if depth <= 0:
            return Draft.empty()
        ids, params, gen = ctx.ids, ctx.params, ctx.generator
        logits = self._sync(ids)  # the draft's cache holds ids; [1, 1, V] for the first token
        if params.greedy:
            top = logits[0, -1, : self.vocab].float()
            firsts, laws = top.topk(min(self.branches, top.shape[-1])).indices.tolist(), None
        else:
            firsts, laws = self._firsts(self._q(logits, params), gen)
        tokens, parents, qs, chain = [], [], [], []
        for b, x in enumerate(firsts):
            self.draft.crop(len(ids))
            chain = [x]
            tokens.append(x)
            parents.append(-1)
            if laws is not None:
                qs.append(laws[b])
            for _ in range(depth - 1):
                out = self.draft.forward([chain[-1]]).logits
                if params.greedy:
                    y = int(greedy(out[0, -1, : self.vocab]))
                else:
                    q = self._q(out, params)  # [1, V]
                    qs.append(q[0])
                    y = int(sample(q, gen))
                parents.append(len(tokens) - 1)
                tokens.append(y)
                chain.append(y)
        # the cache holds ids + the last branch's chain but its last token
        self.confirmed, self.tail = len(ids), chain[:-1]
        q = torch.stack(qs).unsqueeze(0) if qs else None  # [1, N, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q, parents=torch.tensor(parents, dtype=torch.long))
