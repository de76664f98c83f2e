"""Drafters by name. `build_drafter("ngram", k=5)`; register your own with `register`."""

from __future__ import annotations

import difflib
import inspect

from ..errors import DraftsmithError
from .base import DraftContext, Drafter, NoDrafter
from .draft_model import DraftModelDrafter
from .ngram import NgramDrafter
from .heads import AmphistaDrafter, EagleDrafter, HydraDrafter, KoalaDrafter, MedusaDrafter
from .hierarchy import HierarchyDrafter
from .lookahead import LookaheadDrafter
from .recycling import RecyclingDrafter

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Make a drafter class buildable by its `name`."""
    REGISTRY[cls.name] = cls
    return cls


for _cls in (NoDrafter, NgramDrafter, DraftModelDrafter, RecyclingDrafter, HierarchyDrafter, LookaheadDrafter,
             MedusaDrafter, HydraDrafter, EagleDrafter, AmphistaDrafter, KoalaDrafter):
    register(_cls)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_spec(text: str) -> tuple[str, dict]:
    """`NAME[:opt=val,...]` -> (name, options), values cast to int, float or bool where they read so."""
    name, _, opts = text.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise DraftsmithError(f"{text!r}: options are written NAME:key=value,key=value")
        options[key.strip()] = _value(val.strip())
    return name.strip(), options


def build_drafter(name: str | Drafter = "none", **options) -> Drafter:
    """A drafter by registered name with its options, or an instance passed through."""
    if not isinstance(name, str):
        if options:
            raise DraftsmithError("options go to the drafter's constructor, not with an instance")
        return name
    cls = REGISTRY.get(name)
    if cls is None:
        near = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise DraftsmithError(f"unknown drafter {name!r}; known: {', '.join(sorted(REGISTRY))}.{hint}")
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [o for o in options if o not in accepted]
    if unknown:
        known = [p for p in accepted if p != "self"]
        raise DraftsmithError(f"drafter {name!r} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}")
    return cls(**options)


__all__ = ["DraftContext", "Drafter", "NoDrafter", "NgramDrafter", "DraftModelDrafter", "RecyclingDrafter", "HierarchyDrafter",
           "LookaheadDrafter", "MedusaDrafter", "HydraDrafter", "EagleDrafter", "AmphistaDrafter", "KoalaDrafter",
           "build_drafter", "parse_spec", "register", "REGISTRY"]
