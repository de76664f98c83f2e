"""Draft heads on the target's hidden states: modules, saving and loading (training is in
draftsmith.train.heads, drafting in draftsmith.drafters.heads)."""

from .modules import KINDS, HeadsConfig, build_heads, load_heads, save_heads

__all__ = ["KINDS", "HeadsConfig", "build_heads", "load_heads", "save_heads"]
