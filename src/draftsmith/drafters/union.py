"""One draft tree merging the candidates of several drafters, the node budget shared by measured
acceptance (the kind of fusion RASD and Hierarchy Drafting make of their sources).

    union:drafters=[ngram,eagle:tree_nodes=24]
    union:drafters=[ngram:k=6,draft_model:model=M,hierarchy],max_nodes=24

Each step every member proposes (a chain or a tree) for the same context; the proposals are
merged into one trie (a node whose path from the root is already in the tree is shared, not
repeated), at most `max_nodes` nodes. The budget goes to the members in the order of a UCB score
(UCB1, Auer et al. 2002) on each member's accepted tokens per node it put into the tree: the first
member's nodes go in (in its own order, which is topological, so its tree stays prefix-closed)
until the budget or its draft runs out, then the next member's, and so on; nodes another member
already added cost nothing. The score is

    accepted_i / nodes_i + explore * sqrt(ln(steps) / steps_i)

with decayed counts (`decay` per step: the mix of text changes within one answer); a member
that has not yet put any node into the tree ranks first (ties: the order listed). The rule is
deterministic: no random number is drawn, so the output distribution is untouched. When the
budget is not binding (the default 32 nodes over, say, an 8-token n-gram chain and a 24-node
EAGLE tree), the merged tree contains every member's draft, so under greedy decoding it accepts
at least as many tokens as any member alone; when it binds, the members that earned the most
tokens per node get the nodes, and the others are tried again as the exploration term grows.

Sampling (temperature > 0). The merged tree carries no q: its nodes come from different
members, and one node may stand for proposals made under different laws, so no one q per node
would be honest. So members are asked for their deterministic candidates (they draft as at
temperature 0: argmax chains, top-k trees, table lookups), a function of the context alone;
recursive rejection with one-hot q over a tree of distinct siblings (a trie) is then exact. A
member that still returns a sampled draft (q) is dropped for the row: its tokens were drawn from
q, and keeping them without it would bend the distribution.

What members observe. Every member is told what the target kept in terms of its own draft: a
VerifyResult whose tokens, num_accepted and hidden are the step's (what was committed: heads
extend their features from it), whose path lists the member's own nodes on the accepted path
(fewer than num_accepted when the accepted path left its draft), whose num_drafted is its own
draft's size, and whose target_logits are the rows of its own nodes (None when the budget cut
some of them: a learner like `recycling` then skips the step). Members that need the target's
hidden states get them in prefill and observe (the union needs them when one member does).

A member that raises (in prefill, propose or observe) or proposes a draft the loop would refuse
is dropped for the rest of the row, with a warning; the others go on, and a union whose members
are all gone drafts nothing. A member that proposes nothing costs nothing; one that is always
wrong earns no acceptance and sinks to the end of the order.

Paying for a member (`gate`). Every member that proposes costs its drafting time on every step,
whether or not its nodes win (an EAGLE tree is a fifth of a CPU step). With the gate on, a
member sits a step out when what it adds does not pay for it: per member, the decayed mean of
its marginal tokens g (accepted tokens of the step that no other member's nodes covered: the
accepted path's length minus its longest prefix inside the other members' drafts) and of its
drafting time c (its proposals: observing is paid either way), against the step's time T (between two proposals of the
row) and tokens per step τ. Dropping it turns T/τ into (T - c)/(τ - g), so it is kept while
g >= τ c / T. A member sitting out still observes every step (so heads keep their features), and
it is asked again every `probe` steps to refresh g. The first `warmup` steps ask everyone, and the
member with the most accepted tokens per step it was asked in is always asked (two members that
cover the same tokens add nothing over each other; one must stay). The
gate reads the clock, so the draft tree depends on timing: outputs stay the target's (greedy:
the same tokens; sampling: the same distribution, since no draft depends on the random draws),
but a seeded sample could differ between runs; `gate=auto` gates greedy rows only, `true` every
row, `false` (the default) none. Measured (benchmarks/smollm2-135m-bf16-union-gate/, Spec-Bench, 21
turns, 64 tokens, greedy, bf16) it does not pay yet: union of suffix and the EAGLE tree 2.08x
ungated, 1.95x gated (τ 3.06 -> 2.73 for drafting 44 -> 34 ms a step); better on math (1.80x ->
1.99x), worse on roleplay (1.86x -> 1.29x). A gated EAGLE member catches up on the skipped steps'
features at its next proposal, so its measured cost rises exactly when it is probed, and the
marginal tokens of one probe in eight are a noisy estimate; both push it out too often.

Options: drafters (specs, dicts or instances), max_nodes (32), explore (0.3), decay (0.98), gate
(false), probe (8), warmup (4)."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import replace
from typing import ClassVar

import torch

from ..errors import DraftsmithError, IncompatibleDrafterError
from ..types import Draft, VerifyResult
from .base import DraftContext, DrafterBase, register

log = logging.getLogger(__name__)


class SourceStats:
    """Decayed acceptance counts of one member: accepted tokens, nodes in the tree, steps."""

    def __init__(self):
        self.accepted = self.nodes = self.steps = 0.0

    def mean(self) -> float:
        return self.accepted / self.nodes if self.nodes > 0 else 0.0


@register
class UnionDrafter(DrafterBase):
    name: ClassVar[str] = "union"
    trees: ClassVar[bool] = True

    def __init__(self, drafters=None, max_nodes: int = 32, explore: float = 0.3, decay: float = 0.98,
                 gate=False, probe: int = 8, warmup: int = 4):
        from . import build_drafter

        if gate not in ("auto", True, False):
            raise DraftsmithError(f"union: gate must be auto, true or false, got {gate!r}")
        for key, v in (("probe", probe), ("warmup", warmup)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise DraftsmithError(f"union: {key} must be an integer >= 1, got {v!r}")
        self.gate, self.probe, self.warmup = gate, probe, warmup

        if not isinstance(drafters, (list, tuple)) or not drafters:
            raise DraftsmithError("union needs drafters=[...], e.g. union:drafters=[ngram,eagle:tree_nodes=24]")
        if not (isinstance(max_nodes, int) and not isinstance(max_nodes, bool) and max_nodes >= 1):
            raise DraftsmithError(f"union: max_nodes must be an integer >= 1, got {max_nodes!r}")
        if not (isinstance(explore, (int, float)) and explore >= 0):
            raise DraftsmithError(f"union: explore must be a number >= 0, got {explore!r}")
        if not (isinstance(decay, (int, float)) and 0 < decay <= 1):
            raise DraftsmithError(f"union: decay must be in (0, 1], got {decay!r}")
        self.members: list[DrafterBase] = [build_drafter(spec) for spec in drafters]
        self.max_nodes, self.explore, self.decay = max_nodes, float(explore), float(decay)
        self.needs_hidden_states = any(m.needs_hidden_states for m in self.members)
        self.k = max(m.k or 0 for m in self.members)  # heads learn theirs in bind
        self._reset()

    def _reset(self) -> None:
        """Per-row state: the members still in, their statistics, this step's merge."""
        self.alive = [True] * len(self.members)
        self.stats = [SourceStats() for _ in self.members]
        self.steps = 0.0
        self.given = [0] * len(self.members)  # nodes each member added to the tree over the row (not decayed)
        self.steps_seen = 0
        self.last: dict[int, tuple[Draft, list[int | None]]] = {}  # member -> (its draft, its nodes' tree nodes)
        # the gate (module docstring): decayed marginal tokens g and drafting seconds c per member, the
        # row's step seconds and tokens per step, steps each member has sat out, the clock at the last propose
        self.gain = [0.0] * len(self.members)
        self.cost = [0.0] * len(self.members)
        self.step_s = self.step_w = self.tau_s = self.tau_w = 0.0  # decayed sums and their weights
        self.idle = [0] * len(self.members)
        self.asked = [0] * len(self.members)  # steps each member proposed in (over the row)
        self.clock: float | None = None

    def bind(self, target) -> None:
        for m in self.members:
            m.bind(target)
        self.k = max(m.k or 0 for m in self.members)  # heads know their k once bound
        layers = {m.feature_layers for m in self.members if m.needs_hidden_states}
        if len(layers) > 1:
            raise IncompatibleDrafterError(f"union: members read different target features ({sorted(map(str, layers))}); "
                                           "the loop hands one kind to a drafter")
        self.feature_layers = next(iter(layers), None)
        self.vocab, self.device = target.vocab_size, target.device

    def fork(self) -> "UnionDrafter":
        other = copy.copy(self)
        other.members = [m.fork() for m in self.members]
        other._reset()
        return other

    def _drop(self, i: int, where: str, exc: Exception) -> None:
        self.alive[i] = False
        self.last.pop(i, None)
        log.warning("union: member %d (%s) failed in %s (%s: %s); it is dropped for the rest of this row",
                    i, self.members[i].name, where, type(exc).__name__, exc)

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        self._reset()
        for i, m in enumerate(self.members):
            try:
                m.prefill(prompt_ids, features if m.needs_hidden_states else None)
            except Exception as exc:  # noqa: BLE001 - one member fails alone
                self._drop(i, "prefill", exc)

    def finish(self) -> None:
        for i, m in enumerate(self.members):
            try:
                m.finish()
            except Exception as exc:  # noqa: BLE001
                log.warning("union: member %d (%s) failed in finish (%s: %s)", i, m.name, type(exc).__name__, exc)

    # ----- the bandit --------------------------------------------------------------------------
    def score(self, i: int) -> float:
        s = self.stats[i]
        if s.steps <= 0:
            return math.inf
        return s.mean() + self.explore * math.sqrt(math.log(max(self.steps, 1.0)) / s.steps)

    def order(self, members) -> list[int]:
        """Members by score, best first; ties in the order listed."""
        return sorted(members, key=lambda i: -self.score(i))

    # ----- drafting ----------------------------------------------------------------------------
    def _member_draft(self, i: int, ctx: DraftContext, depth: int) -> Draft | None:
        from ..decode.checks import check_draft  # decode imports the drafters package: import at call time

        m = self.members[i]
        try:
            # deterministic candidates at any temperature (module docstring); no generator: a member
            # cannot draw from the row's random stream
            params = ctx.params if ctx.params.greedy else replace(ctx.params, temperature=0.0)
            d = m.propose(DraftContext(ctx.ids, depth, params, None))
            d = check_draft(d, vocab=self.vocab, cap=depth, device=self.device, trees=True,
                            who=f"union member {m.name!r}")
            if d.q is not None and not ctx.params.greedy:
                raise DraftsmithError("proposed a sampled draft (with q) when asked for deterministic candidates")
        except Exception as exc:  # noqa: BLE001 - one member fails alone
            self._drop(i, "propose", exc)
            return None
        return d

    def _gated(self, ctx: DraftContext) -> set[int]:
        """The members that sit this step out (module docstring: g < τ c / T)."""
        on = self.gate is True or (self.gate == "auto" and ctx.params.greedy)
        if not on or self.steps_seen < self.warmup or self.step_w <= 0 or self.tau_w <= 0:
            return set()
        T, tau = self.step_s / self.step_w, self.tau_s / self.tau_w  # the row's mean step (s) and tokens per step
        alive = [i for i in range(len(self.members)) if self.alive[i]]
        if not alive:
            return set()
        # the member with the most accepted tokens per step it was asked in is always asked: when two
        # members cover the same tokens, neither adds anything over the other, and one must stay
        anchor = max(alive, key=lambda i: (self.stats[i].accepted / self.stats[i].steps if self.stats[i].steps > 0 else 0.0, -i))
        out = set()
        for i in alive:  # gain and cost: decayed sums over the same (asked) steps
            if i == anchor:
                continue
            pays = self.gain[i] * T >= tau * self.cost[i]
            if not pays and self.idle[i] + 1 < self.probe:
                out.add(i)
        return out

    def propose(self, ctx: DraftContext) -> Draft:
        now = time.perf_counter()
        if self.clock is not None:  # the row's step: from one proposal to the next
            self.step_s = self.decay * self.step_s + (now - self.clock)
            self.step_w = self.decay * self.step_w + 1
        self.clock = now
        self.last = {}
        depth = max(0, min(self.k, ctx.max_tokens))  # members are asked even for 0: each sees every step
        gated = self._gated(ctx)
        drafts = {}
        for i in range(len(self.members)):
            if not self.alive[i]:
                continue
            if i in gated:
                self.idle[i] += 1
                continue
            t0 = time.perf_counter()
            d = self._member_draft(i, ctx, depth)
            self.cost[i] = self.decay * self.cost[i] + (time.perf_counter() - t0)
            self.idle[i] = 0
            self.asked[i] += 1
            if d is not None:
                drafts[i] = d
        tokens: list[int] = []
        parents: list[int] = []
        node_of: dict[tuple[int, int], int] = {}  # (parent tree node, token) -> tree node
        for i in self.order(drafts):
            d = drafts[i]
            own = d.token_ids[0].tolist()
            up = d.parents.tolist() if d.parents is not None else list(range(-1, len(own) - 1))
            where: list[int | None] = []  # member node -> tree node (None: cut by the budget)
            for tok, p in zip(own, up):
                parent = -1 if p < 0 else where[p]
                key = (parent, tok)
                if parent is not None and key not in node_of and len(tokens) < self.max_nodes:
                    node_of[key] = len(tokens)
                    tokens.append(tok)
                    parents.append(parent)
                    self.given[i] += 1
                where.append(node_of.get(key) if parent is not None else None)
            self.last[i] = (d, where)
        if not tokens:
            return Draft.empty()
        ids = torch.tensor([tokens], dtype=torch.long)  # [1, N]
        if all(p == j - 1 for j, p in enumerate(parents)):
            return Draft(ids)  # the merge is a chain
        return Draft(ids, parents=torch.tensor(parents, dtype=torch.long))

    def _marginal(self, path: list[int]) -> None:
        """Decay the gate's statistics and add this step's: each asked member's marginal tokens (the
        accepted path's length minus its longest prefix inside the other members' nodes)."""
        d = self.decay
        self.tau_s, self.tau_w = d * self.tau_s + len(path) + 1, d * self.tau_w + 1
        covers = {i: {t for t in where if t is not None} for i, (_, where) in self.last.items()}
        for i in self.last:  # decayed over the steps it was asked in, as its cost is
            others = set().union(*(c for j, c in covers.items() if j != i))
            prefix = next((n for n, node in enumerate(path) if node not in others), len(path))
            self.gain[i] = d * self.gain[i] + len(path) - prefix

    def observe(self, result: VerifyResult) -> None:
        path = list(result.path) if result.path is not None else list(range(result.num_accepted))
        self.steps = self.decay * self.steps + 1
        self.steps_seen += 1
        self._marginal(path)
        for s in self.stats:
            s.accepted, s.nodes, s.steps = self.decay * s.accepted, self.decay * s.nodes, self.decay * s.steps
        for i in range(len(self.members)):  # a member that sat the step out still learns what was kept
            if self.alive[i] and i not in self.last:
                try:
                    self.members[i].observe(replace(result, num_drafted=0, path=[], target_logits=None))
                except Exception as exc:  # noqa: BLE001 - one member fails alone
                    self._drop(i, "observe", exc)
        for i, (d, where) in list(self.last.items()):
            mine = {t: j for j, t in reversed(list(enumerate(where))) if t is not None}  # tree node -> member node
            own_path: list[int] = []
            for node in path:
                if node not in mine:
                    break
                own_path.append(mine[node])
            included = sum(t is not None for t in where)
            if included:
                s = self.stats[i]
                s.accepted, s.nodes, s.steps = s.accepted + len(own_path), s.nodes + included, s.steps + 1
            logits = result.target_logits
            if logits is not None:
                logits = logits[:, [0] + [1 + t for t in where]] if included == len(where) else None
            view = replace(result, num_drafted=d.size, path=own_path, target_logits=logits)
            try:
                self.members[i].observe(view)
            except Exception as exc:  # noqa: BLE001 - one member fails alone
                self._drop(i, "observe", exc)
