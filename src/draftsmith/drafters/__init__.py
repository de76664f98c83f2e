"""Drafters by name. `build_drafter("ngram", k=5)`; register your own with `register`.

A new drafter is one file (a `DrafterBase` subclass with a `name`, decorated `@register`) and one
line below importing it (which registers it). Specs are `NAME[:key=value,...]`; a value may be a bracketed list of specs, so specs nest:
`cascade:levels=[draft_model:model=X,ngram:k=3]` (the list stays a list of spec strings for
the drafter to build), or a dict `{"name": ..., **options}` (a YAML/JSON config file's form)."""

from __future__ import annotations

import difflib
import inspect

from ..errors import DraftsmithError
from .base import REGISTRY, DraftContext, Drafter, DrafterBase, NoDrafter, ProtocolDrafter, as_drafter, register

# one line per drafter module: importing it registers its drafters (@register)
from .draft_model import DraftModelDrafter
from .ngram import NgramDrafter
from .heads import AmphistaDrafter, EagleDrafter, HydraDrafter, KoalaDrafter, MedusaDrafter
from .heads.eagle3 import Eagle3Drafter
from .heads.falcon import FalconDrafter
from .heads.fspad import FspadDrafter
from .heads.chimera import ChimeraDrafter
from .heads.glide import GlideDrafter
from .heads.longspec import LongSpecDrafter
from .hierarchy import HierarchyDrafter
from .lookahead import LookaheadDrafter
from .recycling import RecyclingDrafter
from .multi import MultiDrafter
from .layer_skip import LayerSkipDrafter
from .cascade import CascadeDrafter
from .union import UnionDrafter
from .suffix import SuffixDrafter
from .rasd import RasdDrafter
from .early_exit import EarlyExitDrafter
from .online import OnlineDrafter
from .pard import PardDrafter
from .gsd import GsdDrafter


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets: "a,b:x=[c,d],e" -> ["a", "b:x=[c,d]", "e"]."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise DraftsmithError(f"{text!r}: a ']' closes no '['")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise DraftsmithError(f"{text!r}: a '[' is never closed")
    parts.append("".join(cur))
    return parts


def _spec_list(text: str) -> list[str]:
    """A bracketed list's items: "draft_model:model=X,k=3,ngram" -> ["draft_model:model=X,k=3", "ngram"]
    (an item whose text before its first ':' holds '=' is one more option of the spec before it:
    a drafter name never holds '=')."""
    items: list[str] = []
    for part in (p.strip() for p in split_top(text)):
        if part and items and "=" in part.partition(":")[0]:
            items[-1] += "," + part
        elif part:
            items.append(part)
    return items


def parse_spec(text: str) -> tuple[str, dict]:
    """`NAME[:opt=val,...]` -> (name, options), values cast to int, float or bool where they read
    so; `[spec,spec]` is a list of (nested) spec strings."""
    if not isinstance(text, str):
        raise DraftsmithError(f"a spec is a string NAME[:key=value,...], got {type(text).__name__}")
    name, _, opts = text.partition(":")
    options = {}
    for item in filter(None, split_top(opts)):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise DraftsmithError(f"{text!r}: options are written NAME:key=value,key=value")
        val = val.strip()
        if val.startswith("[") and val.endswith("]"):
            options[key.strip()] = _spec_list(val[1:-1])
        else:
            options[key.strip()] = _value(val)
    if not name.strip():
        raise DraftsmithError(f"{text!r}: the spec has no name (NAME[:key=value,...])")
    return name.strip(), options


def build_drafter(name: str | dict | Drafter = "none", **options) -> DrafterBase:
    """A drafter by registered name or spec (`"ngram:k=5"`, a dict with "name") with its options,
    or an instance passed through (objects not built on DrafterBase are adapted: `as_drafter`)."""
    if isinstance(name, dict):
        spec = dict(name)
        if "name" not in spec:
            raise DraftsmithError(f"a drafter config needs a 'name': {name!r}")
        return build_drafter(spec.pop("name"), **spec, **options)
    if not isinstance(name, str):
        if options:
            raise DraftsmithError("options go to the drafter's constructor, not with an instance")
        return as_drafter(name)
    if ":" in name:
        name, parsed = parse_spec(name)
        options = {**parsed, **options}
    cls = REGISTRY.get(name)
    if cls is None:
        near = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise DraftsmithError(f"unknown drafter {name!r}; known: {', '.join(sorted(REGISTRY))}.{hint}")
    accepted = {n for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = [o for o in options if o not in accepted]
    if unknown:
        known = [p for p in accepted if p != "self"]
        raise DraftsmithError(f"drafter {name!r} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}")
    return cls(**options)


__all__ = ["DraftContext", "Drafter", "DrafterBase", "NoDrafter", "ProtocolDrafter", "as_drafter", "split_top", "NgramDrafter", "DraftModelDrafter", "RecyclingDrafter", "MultiDrafter", "LayerSkipDrafter", "CascadeDrafter", "UnionDrafter", "SuffixDrafter", "RasdDrafter", "EarlyExitDrafter", "OnlineDrafter", "HierarchyDrafter", "PardDrafter", "GsdDrafter",
           "LookaheadDrafter", "MedusaDrafter", "HydraDrafter", "EagleDrafter", "AmphistaDrafter", "KoalaDrafter", "Eagle3Drafter",
           "build_drafter", "parse_spec", "register", "REGISTRY"]
