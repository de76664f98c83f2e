"""The verifier interface and its registry.

A verifier is the acceptance rule of one step: given each row's draft and the target's logits
over it, it decides which draft tokens are accepted and draws the bonus token.

Glossary: target, drafter, draft, accepted, bonus, step; `p` the target's distribution (from
`target_logits` shaped by `params`), `q` the drafter's (`draft.q`, None = a deterministic
proposal, treated as one-hot). A rule is `lossless` when the emitted tokens are distributed
exactly as the target's own samples (greedy: identical tokens); a lossy rule says so and every
output that used it is labelled lossy.

    verify(draft, target_logits, params, generator) -> [VerifyResult] * B
        draft.token_ids  [B, N]      N draft nodes per row (a chain, or a tree via draft.parents [N])
        draft.q          [B, N, V]   or None
        target_logits    [B, N+1, V] row 0 after the last committed token, row i+1 after node i
        returns one VerifyResult per row (rows accept different counts: the result is ragged)

    bind(target)   optional: called once by the decoder before any step, for a rule that reads the
                   target itself (e.g. `relaxed`: its output embeddings)
    needs_hidden_states   optional, default False: the loop then also passes
        hidden           [B, N+1, H]  the target's last hidden states of the same forward (row i+1 at
                                      node i), as `verify(..., hidden=...)` (e.g. `judge`)

Rows of one call share `params` and `generator`; the loop calls a verifier once per row today
(each request has its own sampling parameters and generator), and a vectorised rule may take
many rows at once. New rules: one file, a class with `name` and `verify`, and one line in
`verify/__init__.py` registering it.
"""

from __future__ import annotations

import difflib
import inspect
from typing import ClassVar, Protocol, runtime_checkable

import torch

from ..errors import DraftsmithError
from ..types import Draft, SamplingParams, VerifyResult


@runtime_checkable
class Verifier(Protocol):
    name: ClassVar[str]
    lossless: ClassVar[bool]  # the output distribution is the target's
    trees: ClassVar[bool]  # accepts tree drafts (parents given); False: chains only

    def verify(self, draft: Draft, target_logits: torch.Tensor, params: SamplingParams,
               generator: torch.Generator | None = None) -> list[VerifyResult]: ...


class VerifierBase:
    """Defaults for a rule that decides one row at a time: `verify` splits the batch into rows and
    calls `verify_row` on each ([1, ...] tensors)."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    trees: ClassVar[bool] = True
    needs_hidden_states: ClassVar[bool] = False  # verify() then also gets hidden= [B, N+1, H]

    def lossless_for(self, params: SamplingParams) -> bool:
        """Whether this rule keeps the target's distribution under these sampling parameters."""
        return bool(self.lossless)

    def bind(self, target) -> "VerifierBase":
        """Called once by the decoder before any step; a rule that reads the target does it here."""
        return self

    def verify(self, draft: Draft, target_logits: torch.Tensor, params: SamplingParams,
               generator: torch.Generator | None = None, hidden: torch.Tensor | None = None) -> list[VerifyResult]:
        B = draft.token_ids.shape[0]

        def extra(b):  # only a rule that reads hidden states is given them
            return {} if hidden is None else {"hidden": hidden[b:b + 1]}

        if B == 1:
            return [self.verify_row(draft, target_logits, params, generator, **extra(0))]
        return [self.verify_row(draft.row(b), target_logits[b:b + 1], params, generator, **extra(b)) for b in range(B)]

    def verify_row(self, draft: Draft, target_logits: torch.Tensor, params: SamplingParams,
                   generator: torch.Generator | None) -> VerifyResult:  # [1, N], [1, N+1, V]
        raise NotImplementedError


VERIFIERS: dict[str, type] = {}


def register_verifier(cls: type) -> type:
    """Make a verifier class buildable by its `name` (`build_verifier(name)`, `--verifier NAME`)."""
    if not getattr(cls, "name", None) or not callable(getattr(cls, "verify", None)):
        raise DraftsmithError(f"{cls!r} is not a verifier: it needs a `name` and a `verify` method")
    VERIFIERS[cls.name] = cls
    return cls


AUTO = "auto"  # greedy at temperature 0, rejection sampling otherwise (per request)


def build_verifier(name, **options):
    """A verifier by registered name (`NAME:opt=val` accepted) with its options, an instance passed
    through, or None / "auto" for the default rule chosen per request from its sampling
    parameters (greedy at temperature 0, rejection sampling otherwise)."""
    if name is None or (isinstance(name, str) and name == AUTO and not options):
        return None
    if not isinstance(name, str):
        if options:
            raise DraftsmithError("options go to the verifier's constructor, not with an instance")
        if not isinstance(name, Verifier):
            raise DraftsmithError(f"{name!r} is not a verifier: it needs `name`, `lossless`, `trees` and `verify`")
        return name
    from ..drafters import parse_spec

    name, parsed = parse_spec(name)
    options = {**parsed, **options}
    cls = VERIFIERS.get(name)
    if cls is None:
        near = difflib.get_close_matches(name, list(VERIFIERS) + [AUTO], n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise DraftsmithError(f"unknown verifier {name!r}; known: {', '.join(sorted([*VERIFIERS, AUTO]))}.{hint}")
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [o for o in options if o not in accepted]
    if unknown:
        known = [p for p in accepted if p not in ("self", "args", "kwargs")]
        raise DraftsmithError(f"verifier {name!r} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}")
    return cls(**options)


def default_verifier(params: SamplingParams) -> Verifier:
    """The rule for a request that named none: greedy at temperature 0, rejection sampling otherwise."""
    return VERIFIERS["greedy"]() if params.greedy else VERIFIERS["rejection"]()


def bind_verifier(rule, target):
    """`rule.bind(target)` where the rule has one (a bare object with `verify` may not); the rule."""
    bind = getattr(rule, "bind", None)
    if rule is not None and callable(bind):
        bind(target)
    return rule
