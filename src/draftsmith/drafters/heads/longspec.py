"""LongSpec (Yang et al. 2025, arXiv 2502.17421) as a drafter: GliDe's draft block (it reads the
target's own keys and values of every committed token through its cross-attention) with a
constant-size cache of its own: its self-attention sees the first `sink` tokens and the last
`window` ones, and its cache keeps only those (drafters/heads/glide.py: `_trim`, `_allow`). Its
positions are the true ones; anchor-offset indices are a training device (`draftsmith train heads
--kind longspec --max-offset N`: every position after the sink shifted by a random offset up to N,
the target's keys rotated there too, so that 512-token training sequences show the draft block the
sink-to-query distances of 8k-token contexts).

What stays O(context): the cross-attention reads every committed key (as in LongSpec), and this
drafter keeps its own copy of the target's keys and values at that one layer (glide.TargetKV: the
loop's cache is not shared), 1/L of the target's cache.

Options: those of `glide` (heads, k, cape, expand, vocab); window and sink are the heads'.
"""

from __future__ import annotations

from typing import ClassVar

from ..base import register
from .glide import GlideDrafter


@register
class LongSpecDrafter(GlideDrafter):
    name: ClassVar[str] = "longspec"
