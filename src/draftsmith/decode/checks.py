"""Checks at the loop's boundary: what a drafter proposes is checked before the target sees it,
so a broken or dishonest drafter fails its own row with a message (never the batch, never a CUDA
error, never a silently bent distribution).

    token_ids   a [1, N] integer tensor, every id in [0, V) of the target's vocabulary
    parents     None (a chain) or N ints with -1 <= parents[i] < i (topological order)
    q           None (deterministic) or [1, N, V] over the target's vocabulary: finite,
                non-negative, each row summing to 1 within Q_TOLERANCE (then renormalised
                exactly); the drawn token must have q > 0. A q further from 1 is an error: a
                drafter whose q sums to 0.25 would make rejection sampling accept too often and
                shift the output distribution, so it is refused rather than repaired.
    depth       cut to the room left (the draft-length policy's k, the budget, the context)
"""

from __future__ import annotations

import torch

from ..errors import DraftsmithError
from ..tree import Tree
from ..types import Draft

Q_TOLERANCE = 1e-2


class DraftError(DraftsmithError):
    """A drafter proposed something the loop cannot verify; its row fails with this message."""


def check_draft(draft, *, vocab: int, cap: int, device: torch.device, trees: bool, who: str) -> Draft:
    """The draft, checked, cut to `cap` tokens deep and moved to `device`."""
    if not isinstance(draft, Draft):
        raise DraftError(f"{who}: propose() returned {type(draft).__name__}, not a draftsmith.Draft")
    ids = draft.token_ids
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
        raise DraftError(f"{who}: draft token_ids must be a [1, N] tensor, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise DraftError(f"{who}: draft token_ids must be integers, got {ids.dtype}")
    n = ids.shape[1]
    if n == 0 or cap <= 0:
        return Draft.empty(device=device)
    tree = None
    if draft.parents is not None:
        if not trees:
            raise DraftError(f"{who} proposed a tree, but this verifier takes chains only")
        parents = draft.parents
        if isinstance(parents, torch.Tensor):
            if parents.dim() != 1 or parents.dtype.is_floating_point:
                raise DraftError(f"{who}: draft parents must be a 1-D integer tensor, got {tuple(parents.shape)} {parents.dtype}")
            parents = parents.tolist()
        if len(parents) != n:
            raise DraftError(f"{who}: the draft has {n} tokens but {len(parents)} parents")
        try:
            tree = Tree.from_parents(parents)
        except DraftsmithError as exc:
            raise DraftError(f"{who}: {exc}") from None
    q = draft.q
    if q is not None:
        if not isinstance(q, torch.Tensor) or tuple(q.shape) != (1, n, vocab):
            shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise DraftError(f"{who}: draft q must be [1, {n}, {vocab}] (the target's vocabulary), got {shape}")
    ids = ids.to(device=device, dtype=torch.long)
    bad_ids = ((ids < 0) | (ids >= vocab)).any()
    if q is None:
        if bool(bad_ids):
            raise DraftError(f"{who}: draft token ids out of range [0, {vocab}): {_out_of_range(ids, vocab)}")
    else:
        q = q.to(device=device, dtype=torch.float32)  # [1, N, V]
        mass = q.sum(-1)  # [1, N]
        drawn = q.gather(-1, ids.clamp(0, vocab - 1)[..., None])[..., 0]  # [1, N]
        flags = torch.stack([bad_ids, ~torch.isfinite(q).all(), (q < 0).any(), ((mass - 1).abs() > Q_TOLERANCE).any(),
                             (drawn <= 0).any()]).tolist()  # one device sync for every check
        if flags[0]:
            raise DraftError(f"{who}: draft token ids out of range [0, {vocab}): {_out_of_range(ids, vocab)}")
        if flags[1]:
            raise DraftError(f"{who}: draft q holds NaN or infinite values")
        if flags[2]:
            raise DraftError(f"{who}: draft q holds negative probabilities (min {float(q.min()):.3g})")
        if flags[3]:
            raise DraftError(f"{who}: draft q must sum to 1 over the target's vocabulary; its rows sum to "
                             f"{[round(m, 4) for m in mass[0].tolist()[:4]]}")
        if flags[4]:
            raise DraftError(f"{who}: a draft token has q = 0 under the drafter's own q: it was not drawn from q")
        q = q / mass[..., None]
    return _cut(_with_tree(ids, q, tree), tree, cap)


def _with_tree(ids: torch.Tensor, q: torch.Tensor | None, tree: Tree | None) -> Draft:
    """A draft whose tree is the one already parsed and checked here (the loop and the verifier
    read `draft.tree`; without this each would parse the parents again)."""
    draft = Draft(ids, q, None if tree is None else torch.tensor(tree.parents, dtype=torch.long))
    if tree is not None:
        draft.__dict__["tree"] = tree  # the cached_property's slot
    return draft


def _out_of_range(ids: torch.Tensor, vocab: int) -> list[int]:
    return [t for t in ids[0].tolist() if not 0 <= t < vocab][:5]


def _cut(draft: Draft, tree: Tree | None, cap: int) -> Draft:
    """At most `cap` tokens deep: a chain's first cap tokens; a tree's nodes of depth <= cap."""
    if tree is None:
        return draft.truncate(cap)
    if max(tree.depth) <= cap:
        return draft
    keep = [i for i, d in enumerate(tree.depth) if d <= cap]  # ancestors are shallower: kept too
    index = {old: new for new, old in enumerate(keep)}
    cut = Tree(tuple(index[tree.parents[i]] if tree.parents[i] >= 0 else -1 for i in keep))
    sel = torch.tensor(keep, device=draft.token_ids.device)
    return _with_tree(draft.token_ids[:, sel], None if draft.q is None else draft.q[:, sel], cut)


def check_result(result, draft: Draft, vocab: int, who: str):
    """A verifier's answer for one row must keep draft tokens as drafted, along one root path of
    the draft, followed by one bonus token in the vocabulary."""
    tokens = result.tokens
    n = result.num_accepted
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape != (1, n + 1):
        raise DraftError(f"verifier {who}: tokens must be [1, num_accepted + 1] = [1, {n + 1}], got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if not 0 <= n <= draft.size or result.num_drafted != draft.size:
        raise DraftError(f"verifier {who}: accepted {n} of {result.num_drafted} (the draft has {draft.size} tokens)")
    if draft.parents is None:
        path = list(range(n))
    else:
        path = list(result.path or [])
        tree = draft.tree
        if len(path) != n or any(tree.parents[c] != (path[i - 1] if i else -1) for i, c in enumerate(path)):
            raise DraftError(f"verifier {who}: path {path} is not a root path of {n} nodes in the draft tree")
    got = tokens[0].tolist()
    drafted = draft.token_ids[0].tolist()
    if got[:n] != [drafted[i] for i in path] or not 0 <= got[n] < vocab:
        raise DraftError(f"verifier {who}: emitted {got}, which is not the accepted draft tokens plus a bonus token in "
                         f"[0, {vocab})")
    return path
