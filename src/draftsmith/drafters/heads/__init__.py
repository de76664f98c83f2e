"""Draft heads on the target's hidden states, every kind in this folder: the modules and their
saving and loading (modules.py), the pruned draft vocabulary (vocab.py), the drafters that draft
with them (drafters.py) and the export to other engines (export.py). Training is in
draftsmith.train.heads."""

from .drafters import AmphistaDrafter, EagleDrafter, HeadsDrafter, HydraDrafter, KoalaDrafter, MedusaDrafter
from .modules import KINDS, HeadsConfig, build_heads, load_heads, save_heads

__all__ = ["KINDS", "HeadsConfig", "build_heads", "load_heads", "save_heads", "HeadsDrafter", "MedusaDrafter",
           "HydraDrafter", "EagleDrafter", "AmphistaDrafter", "KoalaDrafter"]
