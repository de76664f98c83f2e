"""What the lossy rules share (`typical`, `relaxed`, `bild`): a per-node acceptance test, the
longest accepted root path, and the bonus token. Not a rule itself (not registered).

A lossy rule keeps a draft token that the target would not have chosen itself, when the
target's distribution says the token is good enough. Each rule decides every draft node at
once from the distribution the target gave at the node's parent (row `parent + 1` of the
step's logits), with tensor operations over the whole draft:

    accept[i]  = rule(node i's token, the target's distribution before it, q of node i)
    chain:       the accepted prefix (the first rejection ends it)
    tree:        the longest root path of accepted nodes; ties: the higher sum of log p
    bonus:       the target's own next token after the last accepted node (argmax at
                 temperature 0, a draw from p otherwise; a rule may draw from a residual)

The distribution the rules read: at temperature > 0, p as the request shapes it
(temperature, top-k, top-p; `sampling.probs`); at temperature 0 the target's raw distribution
softmax(logits) (temperature 1), since the one-hot argmax that greedy decoding reads would make
every rule plain greedy verification.

Every rule here has `lossless = False`, so each run that used one is labelled lossy
(`RunStats.lossless`, the bench and eval records, the generate stats line, the server's
`speculative.lossless`). A rule that measured a quality loss says so once per process
(`LossyRuleWarning`, from `quality_note`) whenever it is built.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch

from ..sampling import probs, sample
from ..types import Draft, SamplingParams, VerifyResult
from .base import VerifierBase

QUALITY_REPORT = "benchmarks/smollm2-135m-lossy-quality/README.md"


_WARNED: set[str] = set()


class LossyRuleWarning(UserWarning):
    """A lossy acceptance rule measured to lose quality (see the rule's `quality_note`)."""


def criterion_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[..., V] logits -> the float32 distribution the lossy rules judge drafts by: the request's
    p when it samples, softmax(logits) (temperature 1) when it is greedy."""
    if params.greedy:
        return logits.float().softmax(-1)
    return probs(logits, params)


class LossyVerifier(VerifierBase):
    """Base of the lossy rules: subclasses give `accept(x, p, q, params, generator)` (one bool per
    draft node) and may override `bonus`."""

    lossless: ClassVar[bool] = False
    trees: ClassVar[bool] = True
    quality_note: ClassVar[str | None] = None  # a measured quality loss, said whenever the rule is built
    reads_paths: ClassVar[bool] = False  # accept() also gets parents= [N] (-1: the root) to judge root paths

    def __init__(self) -> None:
        if self.quality_note and self.name not in _WARNED:  # once per rule and process
            _WARNED.add(self.name)
            warnings.warn(f"verifier {self.name!r} is lossy: {self.quality_note}", LossyRuleWarning, stacklevel=3)

    def lossless_for(self, params: SamplingParams) -> bool:
        return False

    # ----- what a rule decides ------------------------------------------------------------
    def accept(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, params: SamplingParams,
               generator: torch.Generator | None) -> torch.Tensor:
        """x [N] draft tokens, p [N, V] the target's distribution before each (criterion_probs),
        q [N, V] the drafter's or None -> [N] bool: node i passes the rule. A rule with
        `reads_paths` also gets parents= (node i's parent, -1 for the root)."""
        raise NotImplementedError

    def bonus(self, p: torch.Tensor, logits: torch.Tensor, rejected: int | None, q: torch.Tensor | None,
              params: SamplingParams, generator: torch.Generator | None) -> int:
        """The target's token after the last accepted node: p [V] (criterion_probs), logits [V];
        `rejected` the first refused child's token on a chain (None after a full acceptance or in
        a tree), q [V] that child's q or None."""
        if params.greedy:
            return int(logits.float().argmax())
        return int(sample(p.unsqueeze(0), generator)[0])

    # ----- the shared walk --------------------------------------------------------------------
    def verify_row(self, draft: Draft, target_logits: torch.Tensor, params: SamplingParams,
                   generator: torch.Generator | None = None, hidden: torch.Tensor | None = None) -> VerifyResult:
        """One row: [1, N] draft, [1, N+1, V] logits; hidden [1, N+1, H] for a rule that reads the
        target's states (`needs_hidden_states`), handed to `accept` as the nodes' [N, H]."""
        n_draft = draft.size
        logits = target_logits[0]  # [N+1, V]
        p_all = criterion_probs(logits, params)  # [N+1, V]
        tokens = draft.token_ids[0]  # [N]
        if n_draft == 0:
            b = self.bonus(p_all[0], logits[0], None, None, params, generator)
            return VerifyResult(tokens=torch.tensor([[b]], device=tokens.device), num_accepted=0, num_drafted=0,
                                target_logits=target_logits)
        tree = draft.tree
        parents = list(range(-1, n_draft - 1)) if tree is None else list(tree.parents)
        rows = torch.tensor(parents, device=logits.device) + 1  # [N] the logits row before each node
        p_before = p_all[rows]  # [N, V]
        q = None if draft.q is None else draft.q[0].float()  # [N, V]
        states = {} if hidden is None else {"hidden": hidden[0, 1:n_draft + 1]}  # [N, H] the nodes' own
        if self.reads_paths:
            states["parents"] = parents
        ok = self.accept(tokens, p_before, q, params, generator, **states).tolist()  # [N] bool
        if tree is None:
            n = next((i for i, a in enumerate(ok) if not a), n_draft)
            end = n - 1  # the last accepted node (-1: the root)
            rejected = int(tokens[n]) if n < n_draft else None
            b = self.bonus(p_all[end + 1], logits[end + 1], rejected, None if q is None or rejected is None else q[n],
                           params, generator)
            out = torch.cat([tokens[:n], torch.tensor([b], device=tokens.device)]).unsqueeze(0)
            return VerifyResult(tokens=out, num_accepted=n, num_drafted=n_draft, target_logits=target_logits)
        path = self._longest_path(tree, ok, tokens, p_before)
        end = path[-1] if path else -1
        b = self.bonus(p_all[end + 1], logits[end + 1], None, None, params, generator)
        ids = tokens.tolist()
        out = torch.tensor([[ids[i] for i in path] + [b]], device=tokens.device)
        return VerifyResult(tokens=out, num_accepted=len(path), num_drafted=n_draft, path=path,
                            target_logits=target_logits)

    @staticmethod
    def _longest_path(tree, ok: list[bool], tokens: torch.Tensor, p_before: torch.Tensor) -> list[int]:
        """The deepest root path whose every node passed; ties go to the higher sum of log p
        (Medusa's tie-break among equally long candidates)."""
        logp = p_before.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30).log().tolist()  # [N]
        best: dict[int, tuple[int, float]] = {-1: (0, 0.0)}  # node -> (depth, sum log p) when reachable
        for i, parent in enumerate(tree.parents):  # topological order: a parent comes first
            if ok[i] and parent in best:
                d, s = best[parent]
                best[i] = (d + 1, s + logp[i])
        end = max(best, key=lambda node: (best[node][0], best[node][1], -node))
        path = []
        while end != -1:
            path.append(end)
            end = tree.parents[end]
        return path[::-1]
