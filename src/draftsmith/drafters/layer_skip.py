"""Layer skipping (SWIFT: Xia et al. 2024, "SWIFT: On-the-Fly Self-Speculative Decoding for LLM
Inference Acceleration", arXiv 2410.06916): the target drafts for itself with some of its decoder
layers skipped, the layers chosen on the fly from the request's own context; nothing trained, no
second model, no copy of the weights.

Two phases per row, as in SWIFT:

    optimisation   at the row's first proposal (once its context has `min_context` tokens), over
                   the last `window` tokens of the context: one target forward gives the target's
                   next-token predictions p at every position and the residual stream entering each
                   layer; each candidate skip set S then runs only from its first skipped layer
                   on (the layers before it compute what the target did) and is scored by how well
                   its predictions q match p there: greedy, the share of positions where the
                   argmax agrees (ties broken by the mean q of the target's argmax); sampling, the
                   mean sum_v min(p, q) under the request's temperature/top-k/top-p, which is the
                   expected per-token acceptance of rejection sampling. The candidates: a few
                   structured sets (every other layer, the deepest block, the middle block), then
                   random sets, then Bayesian optimisation (a Gaussian process over skip vectors,
                   kernel exp(-Hamming / l), upper confidence bound over swaps of the best sets and
                   fresh random ones): `search_steps` candidates in all, drawn from a generator
                   seeded with `seed`, so the chosen set is a function of the context alone.
                   Whole decoder layers are skipped (SWIFT also skips attention and MLP sublayers
                   separately; a whole layer is what the target's public structure offers), never
                   the first or the last when the model has 4 or more (SWIFT skips intermediate
                   layers). A context shorter than `min_context` drafts with every other
                   intermediate layer skipped until it is long enough, then searches once.
    drafting       a chain from the partial model (target.PartialLM over the kept layers, its own
                   KV cache rows caught up with the committed tokens at each proposal), SWIFT's
                   confidence-aware early stop: drafting ends after the first token whose top
                   probability is below `confidence`; the loop's adaptive length policy caps the
                   chain from the measured acceptance and `cost_ratio`.

Options:
    skip          fraction of the decoder layers skipped (0.45; SWIFT uses about 0.45-0.5)
    k             longest draft (8)
    confidence    stop drafting after a token whose top probability is below this (0.6; 0 = off)
    search_steps  candidate skip sets scored in the optimisation phase (16)
    window        context tokens the candidates are scored on (64)
    min_context   context tokens needed before the search runs (8)
    layers        an explicit list of layer indices to skip: no search
    reuse         0 (default): every row searches its own context. N > 0: SWIFT's optimisation phase
                  over a stream: the first N rows of this decoder search, later rows draft with the
                  best-scoring set those found (no search; rows share it through bind's state)
    adaptive      the loop picks the draft length from the measured acceptance (True)
    cost_ratio    one draft token's cost in target steps; default: the weights a one-token forward
                  of the kept layers and the LM head reads over the full model's
    seed          the search's generator seed (0)

Lossless: greedy drafts are the partial model's argmax (q None); sampled drafts are drawn from the
partial model's q under the request's sampling parameters, and carry it. A 30-layer, 135M target
is shallow and narrow and its tied LM head is a fifth of its weights, so a skipped draft costs far
more of a target step than on SWIFT's 7B-70B models: see the benchmarks for what that does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from ..cache import crop
from ..errors import DraftsmithError, IncompatibleDrafterError
from ..sampling import greedy, probs, sample
from ..types import Draft, SamplingParams
from .base import DraftContext, DrafterBase, register

if TYPE_CHECKING:
    from ..target import CausalLM, PartialLM


@dataclass
class SearchResult:
    skip: tuple[int, ...]  # the chosen layers to skip, ascending
    score: float  # its match with the target on the context (see `score_predictions`)
    tried: list[tuple[tuple[int, ...], float]] = field(default_factory=list)  # every candidate, in order
    positions: int = 0  # context positions scored
    seconds: float = 0.0


def score_predictions(p_logits: torch.Tensor, q_logits: torch.Tensor, params: SamplingParams) -> float:
    """How well a skipped model's predictions q match the target's p at the same positions
    (both [W, V]). Greedy: the share of positions whose argmax agrees, plus 1e-3 times the mean q
    of the target's argmax (a tie-break within 1/W). Sampling: the mean of sum_v min(p, q) under
    `params` (the expected per-token acceptance of rejection sampling)."""
    if params.greedy:
        want = greedy(p_logits)  # [W]
        agree = (greedy(q_logits) == want).float().mean()
        mass = q_logits.float().softmax(-1).gather(-1, want[:, None]).mean()
        return float(agree + 1e-3 * mass)
    return float(torch.minimum(probs(p_logits, params), probs(q_logits, params)).sum(-1).mean())


class SkipSearch:
    """SWIFT's optimisation phase over one context (module docstring). Deterministic: the same
    target, context, parameters and options give the same skip set."""

    def __init__(self, target: CausalLM, n_skip: int, eligible: list[int], steps: int = 16, seed: int = 0,
                 kappa: float = 2.0):
        self.target, self.n_skip, self.eligible = target, n_skip, list(eligible)
        self.steps, self.seed, self.kappa = steps, seed, kappa
        self.L = target.num_layers
        self._head = target.partial([0], check=False)  # the final norm + LM head only

    # ----- candidates ------------------------------------------------------------------------
    def structured(self) -> list[tuple[int, ...]]:
        """Every-other-layer (spread evenly), the deepest block, the middle block."""
        E, m = self.eligible, self.n_skip
        spread = tuple(sorted({E[min(len(E) - 1, (2 * i + 1) * len(E) // (2 * m))] for i in range(m)}))
        mid = (len(E) - m) // 2
        out = []
        for s in (spread, tuple(E[-m:]), tuple(E[mid:mid + m])):
            if len(s) == m and s not in out:
                out.append(s)
        return out

    def random(self, g: torch.Generator) -> tuple[int, ...]:
        pick = torch.randperm(len(self.eligible), generator=g)[: self.n_skip]
        return tuple(sorted(self.eligible[int(i)] for i in pick))

    def swaps(self, s: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Every set one swap away: a skipped layer kept and a kept eligible layer skipped."""
        kept = [e for e in self.eligible if e not in s]
        return [tuple(sorted((set(s) - {a}) | {b})) for a in s for b in kept]

    def vector(self, s: tuple[int, ...]) -> torch.Tensor:
        x = torch.zeros(self.L, dtype=torch.float64)
        x[list(s)] = 1.0
        return x

    def propose_bo(self, tried: list[tuple[tuple[int, ...], float]], g: torch.Generator) -> tuple[int, ...] | None:
        """The unscored set of highest upper confidence bound under a Gaussian process fitted to
        the scores so far (pool: swaps of the 3 best, 32 random sets)."""
        seen = {s for s, _ in tried}
        best = [s for s, _ in sorted(tried, key=lambda t: -t[1])[:3]]
        pool = list(dict.fromkeys([c for s in best for c in self.swaps(s)] + [self.random(g) for _ in range(32)]))
        pool = [c for c in pool if c not in seen]
        if not pool:
            return None
        X = torch.stack([self.vector(s) for s, _ in tried])  # [n, L]
        y = torch.tensor([v for _, v in tried], dtype=torch.float64)  # [n]
        y = (y - y.mean()) / (y.std(unbiased=False) + 1e-9)
        C = torch.stack([self.vector(c) for c in pool])  # [c, L]
        ell, m = max(1.0, self.n_skip / 2), float(self.n_skip)
        # a local kernel on Hamming distance plus a linear one (per-layer effects that add up: a layer that
        # helped in one set is tried in others)
        kern = lambda a, b: 0.5 * torch.exp(-torch.cdist(a, b, p=1) / ell) + 0.5 * (a @ b.T) / m  # noqa: E731
        K = kern(X, X) + 1e-4 * torch.eye(len(tried), dtype=torch.float64)
        chol = torch.linalg.cholesky(K)
        Ks = kern(C, X)  # [c, n]
        mean = Ks @ torch.cholesky_solve(y[:, None], chol)[:, 0]
        v = torch.cholesky_solve(Ks.T, chol)  # [n, c]
        var = (kern(C[:1], C[:1])[0, 0] - (Ks * v.T).sum(-1)).clamp_min(1e-12)  # k(c, c) is the same for every c
        ucb = mean + self.kappa * var.sqrt()
        return pool[int(ucb.argmax())]  # first maximum: deterministic

    # ----- scoring ---------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, ids: list[int], window: int, params: SamplingParams) -> SearchResult:
        """Search over the last `window` tokens of `ids` (the context; at least 2 tokens)."""
        t0 = time.perf_counter()
        W = min(window, len(ids))
        dev = self.target.device
        x = torch.tensor([ids[-W:]], dtype=torch.long, device=dev)  # [1, W]
        pos = torch.arange(W, device=dev)[None]  # [1, W]  (relative positions: RoPE sees only differences)
        ref = self.target.step(x, pos, None, hidden_states=True)
        p_logits, hs = ref.logits[0], ref.hidden_states  # [W, V]; hs[j] [1, W, H] enters layer j

        def score(s: tuple[int, ...]) -> float:
            j0 = s[0]
            rest = [j for j in range(j0, self.L) if j not in s]
            if rest:
                q_logits = self.target.partial(rest, check=False).step(None, pos, None, hidden_in=hs[j0]).logits[0]
            else:
                q_logits = self._head.head(hs[j0])[0]
            return score_predictions(p_logits, q_logits, params)

        g = torch.Generator().manual_seed(self.seed)
        tried: list[tuple[tuple[int, ...], float]] = []
        seen: set[tuple[int, ...]] = set()

        def add(s):
            if s is not None and s not in seen and len(tried) < self.steps:
                seen.add(s)
                tried.append((s, score(s)))

        for s in self.structured():
            add(s)
        n_random = max(len(tried) + 1, self.steps // 2)
        for _ in range(4 * self.steps):  # random sets: half the budget (a small space may run out)
            if len(tried) >= n_random:
                break
            add(self.random(g))
        while len(tried) < self.steps:
            s = self.propose_bo(tried, g) if len(tried) >= 2 else self.random(g)
            if s is None:
                break  # every set scored
            add(s)
        best, value = max(tried, key=lambda t: t[1])  # first maximum: the earliest of equal scores
        return SearchResult(best, value, tried, W, time.perf_counter() - t0)


def _weights(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@register
class LayerSkipDrafter(DrafterBase):
    name: ClassVar[str] = "layer_skip"

    def __init__(self, skip: float = 0.45, k: int = 8, confidence: float = 0.6, search_steps: int = 16,
                 window: int = 64, min_context: int = 8, layers: list[int] | None = None, adaptive: bool = True,
                 cost_ratio: float | None = None, seed: int = 0, reuse: int = 0):
        """See the module docstring for every option."""
        if not (isinstance(skip, (int, float)) and 0.0 < skip < 1.0):
            raise DraftsmithError(f"layer_skip: skip (fraction of layers skipped) must be in (0, 1), got {skip!r}")
        if not (isinstance(k, int) and k >= 1):
            raise DraftsmithError(f"layer_skip: k (draft length) must be an integer >= 1, got {k!r}")
        if not (isinstance(confidence, (int, float)) and 0.0 <= confidence < 1.0):
            raise DraftsmithError(f"layer_skip: confidence must be in [0, 1), got {confidence!r}")
        for opt, val, low in (("search_steps", search_steps, 1), ("window", window, 2), ("min_context", min_context, 2),
                              ("reuse", reuse, 0)):
            if not (isinstance(val, int) and not isinstance(val, bool) and val >= low):
                raise DraftsmithError(f"layer_skip: {opt} must be an integer >= {low}, got {val!r}")
        if cost_ratio is not None and not (isinstance(cost_ratio, (int, float)) and cost_ratio >= 0):
            raise DraftsmithError(f"layer_skip: cost_ratio must be a number >= 0, got {cost_ratio!r}")
        if layers is not None:
            if isinstance(layers, int):
                layers = [layers]
            try:
                layers = sorted({int(i) for i in layers})
            except (TypeError, ValueError):
                raise DraftsmithError(f"layer_skip: layers must be a list of layer indices to skip, got {layers!r}") from None
            if not layers:
                raise DraftsmithError("layer_skip: layers (the layers to skip) is empty")
        self.skip, self.k, self.confidence, self.search_steps = float(skip), k, float(confidence), search_steps
        self.window, self.min_context, self.layers, self.adaptive = window, min_context, layers, adaptive
        self.cost_ratio, self.seed, self.reuse = cost_ratio, seed, reuse
        self.target: CausalLM | None = None
        self.found: list[SearchResult] = []  # the searches of this decoder's rows (bind's state, shared by forks)
        self._reset_row()

    def _reset_row(self) -> None:
        self.skipped: tuple[int, ...] | None = None  # this row's skip set
        self.provisional = False  # drafting with the short-context default until the search runs
        self.search: SearchResult | None = None
        self.part: PartialLM | None = None
        self.cache = None
        self.confirmed = 0  # leading tokens of the partial cache known to be committed
        self.tail: list[int] = []  # draft tokens in the partial cache beyond `confirmed`

    # ----- lifecycle -------------------------------------------------------------------------
    def bind(self, target: CausalLM) -> None:
        target.partial(range(target.num_layers))  # refuses (IncompatibleDrafterError) a model it cannot run
        L = target.num_layers
        if L < 2:
            raise IncompatibleDrafterError(f"layer_skip: {target.name} has {L} decoder layer; skipping needs 2 or more")
        self.target, self.found = target, []
        self.eligible = list(range(1, L - 1)) if L >= 4 else list(range(L))
        if self.layers is not None:
            bad = [i for i in self.layers if not 0 <= i < L]
            if bad or len(self.layers) >= L:
                raise DraftsmithError(f"layer_skip: layers={self.layers} must be distinct indices in [0, {L}) leaving at "
                                      f"least one layer ({target.name} has {L} decoder layers)")
            self.n_skip = len(self.layers)
        else:
            self.n_skip = min(len(self.eligible), max(1, round(self.skip * L)))
            if self.n_skip >= L:
                self.n_skip = L - 1
        if self.cost_ratio is None:
            layers = target.model.base_model.layers
            per_layer = [_weights(m) for m in layers]
            head = _weights(target.model.get_output_embeddings())
            kept = sum(per_layer) - (sum(per_layer[i] for i in self.layers) if self.layers is not None
                                     else self.n_skip * sum(per_layer) / L)
            self.cost_ratio = (kept + head) / (sum(per_layer) + head)

    def fork(self) -> LayerSkipDrafter:
        other = super().fork()
        other._reset_row()
        return other

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self._reset_row()
        if self.layers is not None:
            self._use(tuple(self.layers))

    def _use(self, skipped: tuple[int, ...]) -> None:
        """Draft with these layers skipped from now on (a fresh cache of the kept layers)."""
        self.skipped = skipped
        self.part = self.target.partial([i for i in range(self.target.num_layers) if i not in skipped], check=False)
        self.cache, self.confirmed, self.tail = self.part.new_cache(), 0, []

    def _choose(self, ctx: DraftContext) -> None:
        if len(ctx.ids) < self.min_context:
            if self.skipped is None:  # too little context to score on: the spread default for now
                searcher = SkipSearch(self.target, self.n_skip, self.eligible, 1, self.seed)
                self._use(searcher.structured()[0])
                self.provisional = True
            return
        if self.reuse and len(self.found) >= self.reuse:  # the stream's optimisation phase is over
            best = max(self.found[: self.reuse], key=lambda r: r.score)
            self.provisional = False
            if best.skip != self.skipped:
                self._use(best.skip)
            return
        searcher = SkipSearch(self.target, self.n_skip, self.eligible, self.search_steps, self.seed)
        self.search = searcher.run(ctx.ids, self.window, ctx.params)
        if self.reuse:
            self.found.append(self.search)  # the list bind made: every fork sees it
        self.provisional = False
        if self.search.skip != self.skipped:
            self._use(self.search.skip)

    # ----- drafting --------------------------------------------------------------------------
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Append ids to the partial cache; the logits of the last one [V]."""
        dev = self.target.device
        start = self.part.length(self.cache)
        x = torch.tensor([ids], dtype=torch.long, device=dev)  # [1, n]
        pos = torch.arange(start, start + len(ids), device=dev)[None]  # [1, n]
        return self.part.step(x, pos, self.cache, last_only=True).logits[0, -1]

    def _sync(self, ids: list[int]) -> torch.Tensor:
        """Roll the partial cache back to what was committed, feed the rest of `ids`; the logits
        for the next token [V]."""
        keep = self.confirmed
        for tok, committed in zip(self.tail, ids[self.confirmed:]):
            if tok != committed:
                break
            keep += 1
        keep = min(keep, len(ids) - 1, self.part.length(self.cache))  # always feed the last committed token
        crop(self.cache, keep)
        return self._forward(ids[keep:])

    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0:
            return Draft.empty()
        if self.skipped is None or (self.provisional and len(ctx.ids) >= self.min_context):
            self._choose(ctx)
        logits = self._sync(ctx.ids)  # [V]
        tokens, qs = [], []
        for i in range(k):
            if i:
                logits = self._forward([tokens[-1]])
            if ctx.params.greedy:
                tokens.append(int(greedy(logits)))
            else:
                q = probs(logits[None], ctx.params)  # [1, V]
                qs.append(q)
                tokens.append(int(sample(q, ctx.generator)))
            if self.confidence and float(logits.float().softmax(-1).max()) < self.confidence:
                break  # SWIFT's early stop: the draft is unsure, further tokens would likely be rejected
        self.confirmed, self.tail = len(ctx.ids), tokens[:-1]
        q = torch.stack(qs, dim=1) if qs else None  # [1, n, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)
