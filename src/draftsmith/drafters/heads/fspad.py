"""FSPAD (Gui et al. 2024, arXiv 2408.15562) as a drafter: an EAGLE head whose input also carries
the feature sampled by its paired token, f ⊙ e (modules.FspadHead), trained with partial alignment
distillation (`draftsmith train heads --kind fspad`: the feature regression on `--align` of the
output's dimensions, the token loss on all of them; `--init` an EAGLE head).

It drafts as `eagle` does (FSPAD is built into EAGLE-2): a chain, or an EAGLE-2 dynamic tree; the
feature sampling happens inside the head, on committed pairs (f_j, e_{j+1}) and on drafted ones
(f̂, e(x̂)) alike. Greedy drafts are the head's argmax; sampled chains carry q, so rejection
sampling keeps the target's distribution; tree nodes are deterministic (q None).

Options: those of `eagle` (heads, k, tree_nodes, topk, beam, vocab).
"""

from __future__ import annotations

from typing import ClassVar

from ..base import register
from .drafters import EagleDrafter


@register
class FspadDrafter(EagleDrafter):
    name: ClassVar[str] = "fspad"
