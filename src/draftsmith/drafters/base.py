"""The one drafter interface, its lifecycle, and the defaults every drafter inherits.

Lifecycle (the loop is the only caller):

    drafter = build_drafter("ngram", k=5)   # options checked here
    drafter.bind(target)                    # ONCE per decoder: check the target, load weights and
                                            # tables; everything built here is shared by all rows
    row = drafter.fork()                    # per row (one generation, one server request): a light
                                            # copy sharing bind's state, with its own per-row state
    row.prefill(prompt_ids, features)       # the row starts; features [1, n-1, H] (the target's last
                                            # hidden states of prompt[:-1]) when needs_hidden_states,
                                            # else None
    while not done:
        draft = row.propose(ctx)            # at most ctx.max_tokens tokens deep
        row.observe(result)                 # what the target kept (result.hidden for heads)
    row.finish()                            # the row left (done, cancelled or failed): fold what it
                                            # learned into shared state (n-gram databases)

Capabilities are declared class attributes, read once when the decoder is built:
    needs_hidden_states  the loop hands the target's last hidden states to prefill and observe
    feature_layers       None (the last hidden state, after the final norm) or the target layers
                         whose inputs it reads instead, concatenated (EAGLE-3's low/mid/high;
                         may be set in bind, once the drafter knows its weights)
    trimmable            proposes chains that cost nothing more at full length and keeps no state
                         assuming the whole draft was verified: a batch policy may ask for the
                         longest draft and cut it after seeing every row's
    trees                may propose trees (parents given)
    adaptive             the loop picks this row's draft length each step from its measured
                         acceptance and `cost_ratio` (policy/length.py); otherwise it offers `k`
    k                    the longest draft (chain length, or tree depth): the policy's cap
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch

from ..errors import DraftsmithError, IncompatibleDrafterError
from ..types import Draft, SamplingParams, VerifyResult

if TYPE_CHECKING:
    from ..target import CausalLM


REGISTRY: dict[str, type] = {}


def int_option(who: str, name: str, value, low: int, kind: str = "an integer"):
    """`value` when it is an int (not a bool) >= `low`; else a DraftsmithError naming the drafter
    (`who`) and the option, e.g. "pard: topk must be an integer >= 1, got 0"."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise DraftsmithError(f"{who}: {name} must be {kind} >= {low}, got {value!r}")
    return value


def register(cls: type) -> type:
    """Make a drafter class buildable by its `name` (a class decorator: `@register`)."""
    if not getattr(cls, "name", None) or not callable(getattr(cls, "propose", None)):
        raise DraftsmithError(f"{cls!r} is not a drafter: it needs a `name` and a `propose` method")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class DraftContext:
    """What a drafter may look at when proposing."""

    ids: list[int]  # every committed token: prompt + generated so far
    max_tokens: int  # propose at most this many tokens deep (draft-length policy, budget, context left)
    params: SamplingParams
    generator: torch.Generator | None = None


@runtime_checkable
class Drafter(Protocol):
    """What the loop needs of a drafter. Subclass `DrafterBase` to get every default; an object with
    only `propose` (and optionally `bind`, `prefill`, `observe`) is adapted by `as_drafter`."""

    name: ClassVar[str]

    def propose(self, ctx: DraftContext) -> Draft: ...


class DrafterBase:
    """Defaults for the lifecycle above. A drafter overrides `propose` and what it needs."""

    name: ClassVar[str] = ""
    needs_hidden_states: ClassVar[bool] = False
    feature_layers: tuple[int, ...] | None = None
    trimmable: ClassVar[bool] = False
    trees: ClassVar[bool] = False
    adaptive: bool = False
    cost_ratio: float = 0.0  # one draft token's cost in target steps (adaptive length)
    k: int = 8

    def bind(self, target: CausalLM) -> None:
        """Check compatibility with the target and load what every row shares; raise
        IncompatibleDrafterError with a clear message otherwise. Called once."""

    def fork(self) -> DrafterBase:
        """A drafter for one more row, sharing what `bind` built. The default is a shallow copy:
        per-row state is (re)made in `prefill`; override when state made elsewhere is per-row."""
        return copy.copy(self)

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        """This row starts with this prompt. `features` [1, n-1, H] with needs_hidden_states."""

    def propose(self, ctx: DraftContext) -> Draft:
        raise NotImplementedError

    def observe(self, result: VerifyResult) -> None:
        """Learn from what the target kept (n-gram tables, caches)."""

    def finish(self) -> None:
        """This row left the batch."""


@register
class NoDrafter(DrafterBase):
    """Plain autoregressive decoding: proposes nothing, so every step emits the bonus token
    only. The reference the other drafters are checked against."""

    name: ClassVar[str] = "none"
    trimmable: ClassVar[bool] = True
    k = 0

    def propose(self, ctx: DraftContext) -> Draft:
        return Draft.empty()


class ProtocolDrafter(DrafterBase):
    """A user's object with `propose` (and any of `bind`, `prefill`, `observe`) but not built on
    DrafterBase. Capabilities are read from it once, here; rows share the one object (it cannot
    be forked), so a decoder with one can run one row at a time."""

    def __init__(self, inner):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.needs_hidden_states = bool(getattr(inner, "needs_hidden_states", False))
        self.trimmable = bool(getattr(inner, "trimmable", False))
        self.trees = bool(getattr(inner, "trees", True))
        k = getattr(inner, "k", None)  # no k: drafts as long as the room allows
        self.k = 1 << 20 if k is None else int(k)
        self.forked = False

    def bind(self, target):
        if callable(getattr(self.inner, "bind", None)):
            self.inner.bind(target)
        layers = getattr(self.inner, "feature_layers", None)
        if layers is not None:  # hidden_states has L + 1 entries: the inputs of layers 0..L-1, then the last
            L = target.config.num_hidden_layers
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= L for i in layers):
                raise IncompatibleDrafterError(f"drafter {self.name!r}: feature_layers must be target layer indices in "
                                               f"[0, {L}], got {layers!r}")
            layers = tuple(layers)
        self.feature_layers = layers

    def fork(self):
        if self.forked:
            raise DraftsmithError(f"drafter {self.name!r} has no fork(): it can decode one row at a time; build it on "
                                  "draftsmith.drafters.DrafterBase to run several rows")
        self.forked = True
        return self

    def prefill(self, prompt_ids, features=None):
        fn = getattr(self.inner, "prefill", None)
        if callable(fn):
            fn(prompt_ids, features) if self.needs_hidden_states else fn(prompt_ids)

    def propose(self, ctx):
        return self.inner.propose(ctx)

    def observe(self, result):
        if callable(getattr(self.inner, "observe", None)):
            self.inner.observe(result)

    def finish(self):
        self.forked = False


def as_drafter(obj) -> DrafterBase:
    """The loop's view of a drafter: DrafterBase instances as they are, other objects with a
    `propose` method adapted."""
    if isinstance(obj, DrafterBase):
        return obj
    if callable(getattr(obj, "propose", None)):
        return ProtocolDrafter(obj)
    raise DraftsmithError(f"{obj!r} is not a drafter: it needs a propose(ctx) method (see draftsmith.drafters.DrafterBase)")
