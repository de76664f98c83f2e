"""GliDe with CaPE (Du et al. 2024, arXiv 2402.02082) as a drafter: a draft block that
cross-attends to the target's KV cache (modules.GlideHead), and confidence-aware proposal
expansion.

- The keys and values: GliDe's point is that the draft reads the target's own cache of the
  committed tokens instead of re-encoding the context. The loop hands this drafter the input of
  the target layer `glide_layer` (`feature_layers`) for every committed token, from the same
  verification forward; `TargetKV` runs that one target layer on them with its own cache
  (target.PartialLM), so the keys and values are the target's cache entries of that layer exactly
  (tests/integration/test_heads.py checks them against the target's own cache), at the cost of
  one target layer per committed token (1/L of a target step: the loop's cache is not shared).
- Drafting: self-attention over the draft's own tokens (its cache holds the committed ones;
  drafted entries are cropped at the next step), cross-attention over the target's keys of every
  committed token (a query at p reads keys <= p - 1), then the MLP, its norm and the target's LM
  head; a chain of k tokens, one block forward each.
- CaPE (`cape` > 0): at a draft position whose top probability is below `cape`, the next
  `expand` most likely tokens are added beside the chain's token, as leaves: the chain is kept
  and the uncertain positions get more candidates, in one tree verified in one target forward.
  Tree nodes are deterministic (q None), lossless at any temperature; without CaPE a sampled
  chain carries q, so rejection sampling keeps the target's distribution.

Options: heads (a folder from `draftsmith train heads --kind glide`; default: the heads shipped
for the target, if any), k (draft length; default the heads' num_heads), cape (0 = off: a
chain), expand (2), vocab (the pruned draft vocabulary, as the other heads').
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ...cache import keep_path, remove_last
from ...errors import DraftsmithError, IncompatibleDrafterError
from ...target import CausalLM, PartialLM
from ...types import Draft, VerifyResult
from ..base import DraftContext, register
from .drafters import HeadsDrafter


class TargetKV:
    """The target's keys and values at one layer, from that layer's input: its own layer run over
    them with its own cache, so they are what the target caches there."""

    def __init__(self, target: CausalLM, layer: int):
        self.partial, self.layer = PartialLM(target, [layer]), layer

    def new_cache(self):
        return self.partial.new_cache()

    def extend(self, cache, hidden_in: torch.Tensor, start: int, positions: torch.Tensor | None = None) -> None:
        """Append the tokens at positions start.. (or `positions` [B, m], increasing) whose layer
        input is hidden_in [B, m, H]."""
        B, m = hidden_in.shape[:2]
        if positions is None:
            positions = torch.arange(start, start + m, device=hidden_in.device)[None].expand(B, m)
        self.partial.step(None, positions, cache, head=False, hidden_in=hidden_in)

    def kv(self, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """-> keys, values [B, Hkv, T, D] (empty before the first token)."""
        if cache.get_seq_length() == 0:
            return None, None
        layer = cache.layers[self.layer]
        return layer.keys, layer.values

    def rope(self, h: torch.Tensor, positions: torch.Tensor):
        return self.partial.rope(h, positions)


@register
class GlideDrafter(HeadsDrafter):
    name: ClassVar[str] = "glide"
    trees: ClassVar[bool] = True

    def __init__(self, heads: str | None = None, k: int | None = None, cape: float = 0.0, expand: int = 2,
                 vocab: int = 8192):
        super().__init__(heads, k, vocab)
        if not (isinstance(cape, (int, float)) and 0 <= cape <= 1) or not (isinstance(expand, int) and expand >= 1):
            raise DraftsmithError(f"{self.name}: cape (a probability, 0 = off) must be in [0, 1] and expand an integer >= 1, "
                                  f"got {cape!r}, {expand!r}")
        self.cape, self.expand = float(cape), expand
        self.feature_layers: tuple[int, ...] | None = None  # known once the heads are loaded

    def bind(self, target: CausalLM) -> None:
        super().bind(target)
        cfg, c = self.module.cfg, target.config
        if not 0 <= cfg.glide_layer < c.num_hidden_layers:
            raise IncompatibleDrafterError(f"{self.name}: the heads read target layer {cfg.glide_layer}, but the target has "
                                           f"{c.num_hidden_layers} layers")
        kv_heads = getattr(c, "num_key_value_heads", c.num_attention_heads)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        if (cfg.num_key_value_heads, cfg.head_dim) != (kv_heads, head_dim):
            raise IncompatibleDrafterError(f"{self.name}: heads for {cfg.num_key_value_heads} key/value heads of width "
                                           f"{cfg.head_dim}, the target has {kv_heads} of width {head_dim}")
        self.feature_layers = (cfg.glide_layer,)
        self.kv = TargetKV(target, cfg.glide_layer)

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        if features is None:
            raise DraftsmithError(f"{self.name} needs the target's hidden states (needs_hidden_states)")
        self.tcache, self.count = self.kv.new_cache(), 0  # the target's keys and values, committed tokens
        self._extend(features)
        self.cache, self.cached = self.module.new_cache(), 0  # the draft's own, committed tokens
        self.slots: list[int] = []  # the position of each entry of the draft's own cache

    def observe(self, result: VerifyResult) -> None:
        if result.hidden is None:
            raise DraftsmithError(f"{self.name} needs the target's hidden states (needs_hidden_states)")
        self._extend(result.hidden)

    def _extend(self, hidden: torch.Tensor) -> None:
        """hidden [1, m, H]: the inputs of layer glide_layer of the newly committed tokens."""
        if hidden.shape[-1] != self.module.cfg.hidden_size:
            raise DraftsmithError(f"{self.name} got features of width {hidden.shape[-1]}, expected {self.module.cfg.hidden_size} "
                                  "(the loop must honour feature_layers)")
        if hidden.shape[1]:
            self.kv.extend(self.tcache, hidden.to(self.dtype), self.count)
            self.count += hidden.shape[1]

    def _ready(self, ctx: DraftContext) -> bool:
        if self.count != len(ctx.ids) - 1:
            raise DraftsmithError(f"{self.name}: the target's keys of {self.count} tokens for {len(ctx.ids)} tokens; the loop "
                                  "must pass hidden states in prefill and observe")
        return True

    def _trim(self, n: int) -> None:
        """Drop last step's drafted entries from the draft's own cache; with a window (longspec),
        also every committed entry no query from position n - 1 on may see (constant size)."""
        committed = sum(1 for p in self.slots if p < self.cached)
        remove_last(self.cache, self.cache.get_seq_length() - committed)
        self.slots = self.slots[:committed]
        W, S = self.module.cfg.window, self.module.cfg.sink
        if W:
            keep = [i for i, p in enumerate(self.slots) if p < S or p >= n - W]
            if len(keep) < len(self.slots):
                keep_path(self.cache, 0, keep)
                self.slots = [self.slots[i] for i in keep]

    def _allow(self, queries: torch.Tensor) -> torch.Tensor | None:
        """The self-attention mask of new queries at positions `queries` [q] over the cache and
        themselves, [q, cached + q] (None: causal, no window), and record their slots."""
        W, S = self.module.cfg.window, self.module.cfg.sink
        keys = torch.tensor(self.slots + queries.tolist(), device=queries.device)  # [cached + q]
        self.slots += queries.tolist()
        if not W:
            return None
        return (keys[None] <= queries[:, None]) & ((keys[None] < S) | (queries[:, None] - keys[None] < W))

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0 or not self._ready(ctx):
            return Draft.empty()
        n, m = len(ctx.ids), self.module
        dev = m.norm.weight.device
        self._trim(n)
        keys, values = self.kv.kv(self.tcache)
        if keys is None:  # a one-token prompt: nothing cached by the target yet
            shape = (1, m.cfg.num_key_value_heads, 0, m.head_dim)
            keys = values = torch.zeros(shape, dtype=self.dtype, device=dev)
        T = keys.shape[-2]
        W, S = m.cfg.window, m.cfg.sink
        feed = [p for p in range(self.cached, n) if not W or p < S or p >= n - W]  # committed, not yet fed (a window:
        # only those a query from n - 1 on sees; a token's keys and values depend on it alone)
        pos = torch.tensor([feed], device=dev)  # [1, q]
        see = (torch.arange(T, device=dev)[None, :] <= pos[0][:, None] - 1)[None]  # [1, q, T]
        e = self.embed(torch.tensor([[ctx.ids[p] for p in feed]], device=dev))
        u = m(e, pos, keys, values, see, self.cache, self._allow(pos[0]), rope=self.kv.rope(e, pos))[:, -1:]  # [1, 1, H]
        self.cached = n
        every = torch.ones(1, 1, T, dtype=torch.bool, device=dev)
        tokens, qs, parents, chain = [], [], [], -1
        for i in range(k):
            x = m.norm(u[:, -1])  # [1, H]
            if self.cape:
                logq, top = self._top(x[0], 1 + self.expand)
                tok = int(top[0])
                if float(logq[0].exp()) < self.cape:  # uncertain: more candidates here, as leaves
                    for alt in top[1:].tolist():
                        tokens.append(alt)
                        parents.append(chain)
            elif ctx.params.greedy:
                tok = int(self._top(x[0], 1)[1][0])
            else:
                tok, q = self._choose(self.lm_head(x)[0], ctx)
                qs.append(q)
            tokens.append(tok)
            parents.append(chain)
            chain = len(tokens) - 1
            if i + 1 < k:
                e = self.embed(torch.tensor([[tok]], device=dev))
                p = torch.tensor([[n + i]], device=dev)
                u = m(e, p, keys, values, every, self.cache, self._allow(p[0]), rope=self.kv.rope(e, p))
        if not self.cape:
            return self._draft(tokens, qs)
        ids = torch.tensor([tokens], dtype=torch.long)
        if all(p == j - 1 for j, p in enumerate(parents)):
            return Draft(ids)
        return Draft(ids, parents=torch.tensor(parents, dtype=torch.long))
