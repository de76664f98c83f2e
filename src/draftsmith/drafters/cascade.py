"""Cascade Speculative Drafting (CS Drafting; Chen et al. 2023, arXiv 2312.11462): drafters
ordered from the most to the least expensive, each cheaper one drafting for the one above.

    cascade:levels=[draft_model:model=M,ngram]
    cascade:levels=[draft_model:model=BIG,draft_model:model=SMALL,ngram:k=4],split=3

Vertical cascade. The top level is a draft model. Instead of one forward per draft token, it
asks the next level for a proposal continuing the draft so far, runs ONE forward over its own
last token and those tokens with its own KV cache (none when the logits it already has refuse
the proposal's first token), keeps the prefix it agrees with plus one token of its own (the
correction, or the next token when it agrees with all), and crops its cache back to what it
kept. Each forward of the draft model thus yields one token or more, and the draft is still the
draft model's:
  - greedy: every kept token is the draft model's argmax, so the draft equals the draft
    model's own greedy chain (tests/unit/test_cascade_union.py checks it);
  - temperature > 0: a lower proposal x is kept with probability min(1, q(x) / q_low(x))
    (q_low one-hot for a deterministic lower level), otherwise the token is drawn from the
    residual norm(max(0, q - q_low)): speculative sampling between the two levels, so each
    drafted token is distributed exactly by the draft model's q, the q rows the draft carries.
With three levels or more, the levels below the top form a cascade of their own.

Horizontal cascade. The later, less likely positions are left to the next level alone: every
position from `split` on, and every position after the draft model's own `confidence` (its
draft_model option) falls below its threshold. Those tokens carry the next level's q when it
has one, else a one-hot row (a deterministic proposal), so q stays the law each token was drawn
from.

Options: levels (at least two drafter specs, dicts or instances; the top one a `draft_model`);
k (draft length; default the top level's k); split (first position drafted by the next level
alone; default None: only after the confidence drops). The length policy is the top level's
(`adaptive`, `cost_ratio`: a draft model's cost per token, an upper bound of the cascade's).

What a lower level must do: draft from the context alone. It is asked for continuations of
contexts that end in unverified draft tokens, and it is never observed (the target verified the
cascade's draft, not its proposals), so a level that needs the target's hidden states (draft
heads) is refused when the cascade is built; a level proposing a tree contributes its first
branch. A lower level that raises (or returns a draft the loop would refuse) is dropped for the
rest of the row with a warning, and the top level drafts alone, one token per forward; one that
proposes nothing leaves it so, and one that is always wrong costs wider forwards, not more.
Known limit: a lower `hierarchy` level's session database learns the contexts it was asked
about, up to k unverified draft tokens at the end of the row."""

from __future__ import annotations

import copy
import logging
from typing import ClassVar

import torch

from ..errors import DraftsmithError, IncompatibleDrafterError
from ..sampling import greedy, sample, uniform
from ..types import Draft
from .base import DraftContext, DrafterBase, int_option, register
from .draft_model import DraftModelDrafter

log = logging.getLogger(__name__)


def first_branch(draft: Draft) -> Draft:
    """A tree's first root path (each node's first child), as a chain; a chain as it is."""
    tree = draft.tree
    if tree is None:
        return draft
    path, node = [], -1
    while tree.children.get(node):
        node = tree.children[node][0]
        path.append(node)
    sel = torch.tensor(path, dtype=torch.long, device=draft.token_ids.device)
    return Draft(draft.token_ids[:, sel], None if draft.q is None else draft.q[:, sel])


@register
class CascadeDrafter(DrafterBase):
    name: ClassVar[str] = "cascade"

    def __init__(self, levels=None, k: int | None = None, split: int | None = None):
        from . import build_drafter

        if not isinstance(levels, (list, tuple)) or len(levels) < 2:
            raise DraftsmithError("cascade needs levels=[...] of at least two drafters, the most expensive first, "
                                  "e.g. cascade:levels=[draft_model:model=NAME,ngram]")
        if k is not None:
            int_option("cascade", "k (draft length)", k, 1)
        if split is not None and not (isinstance(split, int) and not isinstance(split, bool) and split >= 1):
            raise DraftsmithError(f"cascade: split must be an integer >= 1 (or unset), got {split!r}")
        built = [build_drafter(spec) for spec in levels]
        top = built[0]
        if not isinstance(top, DraftModelDrafter) or top.trees:
            raise IncompatibleDrafterError(
                f"cascade: the top level must be a draft_model (it checks the next level's proposals with its own "
                f"forward and KV cache); got {top.name!r}")
        for low in built[1:]:
            if low.needs_hidden_states:
                raise IncompatibleDrafterError(
                    f"cascade: level {low.name!r} needs the target's hidden states, which exist only for verified "
                    "tokens; a lower level must draft from the context alone (ngram, hierarchy, draft_model, ...)")
        self.top: DraftModelDrafter = top
        self.lower: DrafterBase | None = built[1] if len(built) == 2 else CascadeDrafter(levels=built[1:])
        self.k, self.split = k or top.k, split
        self.adaptive, self.cost_ratio = top.adaptive, top.cost_ratio

    def bind(self, target) -> None:
        self.top.bind(target)
        self.lower.bind(target)
        self.cost_ratio = self.top.cost_ratio
        self.vocab, self.device = target.vocab_size, target.device

    def fork(self) -> "CascadeDrafter":
        other = copy.copy(self)
        other.top = self.top.fork()
        other.lower = self.lower.fork() if self.lower is not None else None
        return other

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self.top.prefill(prompt_ids)
        if self.lower is not None:
            self.lower.prefill(prompt_ids, None)

    def observe(self, result) -> None:
        self.top.observe(result)  # the cascade's draft is the top level's: its view is the result itself

    def finish(self) -> None:
        self.top.finish()
        if self.lower is not None:
            self.lower.finish()

    # ----- drafting ----------------------------------------------------------------------------
    def _low(self, ctx: DraftContext, drafted: list[int], n: int) -> tuple[list[int], torch.Tensor | None]:
        """The next level's proposal continuing ctx.ids + drafted: (tokens, q [d, V] or None)."""
        if n <= 0 or self.lower is None:
            return [], None
        from ..decode.checks import check_draft  # decode imports the drafters package: import at call time

        try:
            d = self.lower.propose(DraftContext(ctx.ids + drafted, n, ctx.params, ctx.generator))
            d = first_branch(check_draft(d, vocab=self.vocab, cap=n, device=self.device, trees=True,
                                         who=f"cascade level {self.lower.name!r}"))
        except Exception as exc:  # noqa: BLE001 - the top level drafts on alone
            log.warning("cascade: level %r failed (%s: %s); it is dropped for the rest of this row",
                        self.lower.name, type(exc).__name__, exc)
            self.lower = None
            return [], None
        return d.token_ids[0].tolist(), None if d.q is None else d.q[0]

    def _step(self, x: int | None, x_q: torch.Tensor | None, logits: torch.Tensor, ctx: DraftContext):
        """One draft position: the next level's token x (its q row x_q [V]; None = deterministic, and
        x None = no proposal left) against the draft model's logits there ([V_draft]).
        -> (the token drafted, its law q [V] or None when greedy, whether it is x)."""
        if ctx.params.greedy:
            best = int(greedy(logits[: self.vocab]))
            return best, None, best == x
        q = self.top._q(logits[None, None], ctx.params)[0]  # [V]
        gen = ctx.generator
        if x is None:
            return int(sample(q[None], gen)), q, False
        q_low = 1.0 if x_q is None else float(x_q[x])
        if float(uniform((), gen, q.device)) * q_low < float(q[x]):
            return x, q, True  # kept with probability min(1, q(x) / q_low(x))
        if x_q is None:
            residual = q.clone()
            residual[x] = 0.0
        else:
            residual = (q - x_q.to(q.device)).clamp_min(0.0)
        mass = residual.sum()
        return int(sample((residual / mass if mass > 0 else q)[None], gen)), q, False

    def _unsure(self, logits: torch.Tensor) -> bool:
        """The draft model's top probability ([V_draft] logits) below its confidence threshold."""
        return bool(self.top.confidence) and float(logits.float().softmax(-1).max()) < self.top.confidence

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0:
            return Draft.empty()
        top, ids = self.top, ctx.ids
        split = k if self.split is None else min(self.split, k)
        head = top._sync(ids)[0, -1]  # [V]: the draft model's logits for the first draft token
        tokens: list[int] = []
        qs: list[torch.Tensor] = []  # [V] rows, temperature > 0 only
        cached: list[int] = []  # draft tokens in the draft model's cache after ids
        stop = False
        while len(tokens) < split and not stop:
            prop, prop_q = self._low(ctx, tokens, split - len(tokens) - 1)
            before, pending = len(tokens), tokens[len(cached):]  # pending: its last token, not yet fed
            out = None

            def logits(i: int) -> torch.Tensor:
                """The draft model's logits for proposal position i ([V]); one forward over the pending
                token and the whole proposal the first time one is needed past what `head` gives."""
                nonlocal out
                if i == 0 and not pending:
                    return head
                if out is None:
                    out = top.draft.forward(pending + prop).logits[0]  # [len(pending) + d, V]
                return out[i - 1 + len(pending)]

            kept = 0
            for i in range(len(prop) + 1):
                x = prop[i] if i < len(prop) else None
                row = logits(i)
                tok, q, same = self._step(x, None if x is None or prop_q is None else prop_q[i], row, ctx)
                tokens.append(tok)
                qs += [] if q is None else [q]
                kept += same
                stop = self._unsure(row)  # the horizontal cascade takes the positions after an unsure token
                if not same or stop:
                    break
            if out is not None:
                top.draft.crop(len(ids) + before + kept)  # keep the agreed prefix, drop the rest
                cached = tokens[:before] + prop[:kept]
        top.confirmed, top.tail = len(ids), cached  # what DraftModelDrafter._sync rolls back next step
        if len(tokens) < k:  # horizontal: the next level drafts the remaining positions alone
            prop, prop_q = self._low(ctx, tokens, k - len(tokens))
            tokens += prop
            if not ctx.params.greedy:
                qs += list(prop_q) if prop_q is not None else list(
                    torch.nn.functional.one_hot(torch.tensor(prop, dtype=torch.long), self.vocab).float())
        q = torch.stack([row.to(self.device) for row in qs])[None] if qs else None  # [1, N, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)
