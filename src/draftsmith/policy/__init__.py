"""Draft length: the one owner. The loop asks, each step, how long each row's draft may be.

    row level    FixedLength (the drafter's k) or AdaptiveLength (per row, from its measured
                 acceptance rate and the drafter's cost_ratio; Leviathan et al. 2023, 3.4)
    batch level  SmartSpec (goodput over the whole batch, from a timed step-cost model)
    memory       MemoryPlan (memory.py, SpecMemo): the draft nodes per row that fit in a memory
                 budget once the rows' contexts are reserved

A row's draft is at most min(drafter.k, row policy, batch policy, budget - 1, room - 1) tokens
deep; every policy searches no further than that cap, so a huge `k` costs nothing per step."""

from .length import AdaptiveLength, FixedLength, LengthPolicy, row_policy
from .smartspec import History, SmartSpec, StepCost, calibrate

__all__ = ["AdaptiveLength", "FixedLength", "History", "LengthPolicy", "SmartSpec", "StepCost", "calibrate", "row_policy"]
