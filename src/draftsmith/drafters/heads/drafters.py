"""Draft heads on the target's own hidden states (Medusa, Hydra, EAGLE-style, Amphista, KOALA): no
second model runs, and the features come from the verification forward the loop makes anyway.

The loop hands the drafter the target's last hidden state (`feature`, [H]) of every committed
token but the newest (the bonus token, whose feature the next step computes): in `prefill`
(prompt[:-1]) and in `observe` (the root and the accepted path of each step). The invariant is
len(features) == len(ids) - 1, and the heads draft from the newest feature. Drafts are the heads'
argmax when greedy, and samples from q (temperature, top-k, top-p applied to the head's logits)
otherwise, with q returned so rejection sampling keeps the target's distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ...errors import DraftsmithError, IncompatibleDrafterError
from .modules import HeadsConfig, load_heads
from .vocab import SubsetLMHead, load_vocab
from ...sampling import greedy, probs, sample
from ...target import CausalLM
from ...types import Draft, VerifyResult
from ...cache import remove_last
from ..base import DraftContext, DrafterBase, register
from ..trie import position_tree


def shipped_heads_dir(target: CausalLM, kind: str) -> Path | None:
    from ...catalog import SHIPPED_HEADS, packs_root

    folder = SHIPPED_HEADS.get((target.name, kind))
    return packs_root() / folder if folder else None


class HeadsDrafter(DrafterBase):
    """The parts every head kind shares: loading (once, in bind; forks share the weights), the
    feature store (per row), choosing tokens."""

    name: ClassVar[str] = ""
    needs_hidden_states: ClassVar[bool] = True

    def __init__(self, heads: str | None = None, k: int | None = None, vocab: int = 8192):
        """heads: a folder written by `draftsmith train heads` (default: the heads shipped for
        the target, if any). k: longest draft (default: what the heads were trained for).
        vocab: draft over the `vocab` most frequent tokens listed beside the heads (0 = the
        whole vocabulary; see drafters/heads/vocab.py)."""
        if k is not None and not (isinstance(k, int) and k >= 1):
            raise DraftsmithError(f"{self.name}: k (draft length) must be an integer >= 1, got {k!r}")
        if not (isinstance(vocab, int) and vocab >= 0):
            raise DraftsmithError(f"{self.name}: vocab must be an integer >= 0 (0 = the whole vocabulary), got {vocab!r}")
        self.heads_spec, self.k, self.vocab = heads, k, vocab
        self.module = None
        self.features: list[torch.Tensor] = []  # [H] per committed token but the newest

    def bind(self, target: CausalLM) -> None:
        folder = Path(self.heads_spec).expanduser() if self.heads_spec else shipped_heads_dir(target, self.name)
        if folder is None:
            raise IncompatibleDrafterError(
                f"no trained {self.name} heads ship for target {target.name!r}: train them with "
                f"`draftsmith train heads --kind {self.name} --target {target.name} --data sharegpt --out DIR` (or --data "
                f"ROLLOUTS.jsonl, the target's own answers), then pass heads=DIR")
        self.module = load_heads(folder, dtype=target.dtype, device=target.device)
        cfg: HeadsConfig = self.module.cfg
        if cfg.kind != self.name:
            raise IncompatibleDrafterError(f"{folder} holds {cfg.kind} heads, not {self.name}")
        if (cfg.hidden_size, cfg.vocab_size) != (target.config.hidden_size, target.vocab_size):
            raise IncompatibleDrafterError(
                f"{folder}: heads for hidden size {cfg.hidden_size} / vocabulary {cfg.vocab_size}, but target "
                f"{target.name!r} has {target.config.hidden_size} / {target.vocab_size}")
        self.lm_head = target.model.get_output_embeddings()
        ids = load_vocab(folder, self.vocab) if self.vocab else None
        if ids is not None and len(ids) < target.vocab_size:  # draft over the most frequent tokens only
            self.lm_head = SubsetLMHead(self.lm_head, ids)
        self.embed = target.model.get_input_embeddings()
        self.dtype = target.dtype
        self.k = self.k or cfg.num_heads

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        if features is None:
            raise DraftsmithError(f"{self.name} needs the target's hidden states (needs_hidden_states)")
        self.features = list(features[0])  # [n-1] x [H]

    def observe(self, result: VerifyResult) -> None:
        if result.hidden is None:
            raise DraftsmithError(f"{self.name} needs the target's hidden states (needs_hidden_states)")
        self.features.extend(result.hidden[0])

    def _ready(self, ctx: DraftContext) -> bool:
        if len(self.features) != len(ctx.ids) - 1:
            raise DraftsmithError(f"{self.name}: {len(self.features)} features for {len(ctx.ids)} tokens; the loop must "
                                  "pass hidden states in prefill and observe")
        return bool(self.features)

    def _top(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features x [.., H] -> q's n most likely tokens: (log q [.., n], token ids [.., n]). Over
        a draft vocabulary the V-wide logits (-inf outside it) are never built."""
        if hasattr(self.lm_head, "subset"):  # a draft vocabulary (vocab.SubsetLMHead, eagle3's own)
            top = self.lm_head.subset(x).float().log_softmax(-1).topk(n, dim=-1)
            return top.values, self.lm_head.token_ids[top.indices]
        top = self.lm_head(x).float().log_softmax(-1).topk(n, dim=-1)
        return top.values, top.indices

    def _choose(self, logits: torch.Tensor, ctx: DraftContext) -> tuple[int, torch.Tensor | None]:
        """logits [V] -> (token, q [V] or None when greedy)."""
        if ctx.params.greedy:
            return int(greedy(logits)), None
        q = probs(logits[None].float(), ctx.params)  # [1, V]
        return int(sample(q, ctx.generator)), q[0]

    @staticmethod
    def _draft(tokens: list[int], qs: list[torch.Tensor]) -> Draft:
        if not tokens:
            return Draft.empty()
        q = torch.stack(qs)[None] if qs else None  # [1, k, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)


@register
class MedusaDrafter(HeadsDrafter):
    """K independent heads on the newest feature: head i proposes the (i+1)-th token after it.
    A chain of each head's choice, or (tree_nodes > 0) a static-shape tree: the `topk` best
    tokens of each head, combined by beam search on the summed log-probabilities, the best
    `tree_nodes` nodes merged into one tree (deterministic nodes, so any temperature is lossless
    through recursive rejection with one-hot q)."""

    name: ClassVar[str] = "medusa"
    trees: ClassVar[bool] = True

    def __init__(self, heads: str | None = None, k: int | None = None, tree_nodes: int = 0, topk: int = 4,
                 vocab: int = 8192):
        super().__init__(heads, k, vocab)
        if tree_nodes < 0 or topk < 1:
            raise DraftsmithError(f"{self.name}: tree_nodes must be >= 0 and topk >= 1, got {tree_nodes}, {topk}")
        self.tree_nodes, self.topk = tree_nodes, topk

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, self.module.cfg.num_heads, ctx.max_tokens)
        if k <= 0 or not self._ready(ctx):
            return Draft.empty()
        logits = self.module(self.features[-1][None], self.lm_head)[0, :k]  # [k, V]
        if self.tree_nodes:
            return self._tree(logits.float().log_softmax(-1))
        picks = [self._choose(logits[i], ctx) for i in range(k)]
        return self._draft([t for t, _ in picks], [q for _, q in picks if q is not None])

    def _tree(self, logq: torch.Tensor) -> Draft:
        """logq [k, V] -> a tree of the best paths through each head's top tokens."""
        return position_tree(logq, self.topk, self.tree_nodes)


@register
class HydraDrafter(HeadsDrafter):
    """Sequential heads: head i sees the newest feature and the embeddings of the bonus token
    and of the i drafts before it."""

    name: ClassVar[str] = "hydra"

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, self.module.cfg.num_heads, ctx.max_tokens)
        if k <= 0 or not self._ready(ctx):
            return Draft.empty()
        h = self.features[-1][None]  # [1, H]
        prev = self.embed(torch.tensor([[ctx.ids[-1]]], device=h.device))  # [1, 1, H]
        tokens, qs = [], []
        for i in range(k):
            logits = self.lm_head(self.module.head(i, h, prev))[0]  # [V]
            tok, q = self._choose(logits, ctx)
            tokens.append(tok)
            qs += [q] if q is not None else []
            prev = torch.cat([prev, self.embed(torch.tensor([[tok]], device=h.device))], dim=1)
        return self._draft(tokens, qs)


@register
class AmphistaDrafter(MedusaDrafter):
    """Amphista heads: Medusa's drafting (a chain, or a tree of each head's top-k), with all K
    heads computed together in one call (their bi-directional block needs every position)."""

    name: ClassVar[str] = "amphista"


@register
class KoalaDrafter(HydraDrafter):
    """KOALA heads: Hydra's sequential drafting, each head several decoder blocks deep."""

    name: ClassVar[str] = "koala"


@register
class EagleDrafter(HeadsDrafter):
    """One decoder layer autoregressing on features. Its KV cache holds the pairs (e_{j+1}, f_j)
    of committed tokens (true features from the target); drafting appends predicted features,
    which are cropped away again afterwards. A chain of k tokens, or (tree_nodes > 0) an
    EAGLE-2 dynamic tree: at each depth the `beam` most likely nodes so far (by the product of
    draft probabilities along the path) are expanded with their `topk` children in one batched
    head forward, and the `tree_nodes` most likely nodes of all become the draft."""

    name: ClassVar[str] = "eagle"
    trees: ClassVar[bool] = True

    def __init__(self, heads: str | None = None, k: int | None = None, tree_nodes: int = 0, topk: int = 4,
                 beam: int = 4, vocab: int = 8192):
        super().__init__(heads, k, vocab)
        if tree_nodes < 0 or topk < 1 or beam < 1:
            raise DraftsmithError(f"eagle: tree_nodes must be >= 0, topk and beam >= 1; got {tree_nodes}, {topk}, {beam}")
        self.tree_nodes, self.topk, self.beam = tree_nodes, topk, beam

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        super().prefill(prompt_ids, features)
        self.cache = self.module.new_cache()
        self.cached = 0  # committed pairs in the cache

    def _sync(self, ctx: DraftContext, block: int = 1) -> torch.Tensor:
        """Drop last step's predicted features, feed the committed pairs not yet cached and
        return the outputs of the `block` newest [1, block, H] (EAGLE: 1, f̂ for the bonus token).
        A block > 1 (Falcon) sees all of itself (the relaxed causal mask), and its block - 1
        newest pairs stay out of the cached count: next step's block queries them again."""
        n = len(self.features)  # pairs available: (e_{j+1}, f_j) for j < n
        remove_last(self.cache, self.cache.get_seq_length() - self.cached)
        past, dev = self.cached, self.features[0].device
        feats = torch.stack(self.features[past:])[None]  # [1, m, H]
        embeds = self.embed(torch.tensor([ctx.ids[past + 1:n + 1]], device=dev))  # [1, m, H]
        pos = torch.arange(past, n, device=dev)[None]
        allow = None  # causal over the cache and the new pairs
        if block > 1:
            allow = torch.ones(n - past, n, dtype=torch.bool, device=dev).tril(past)  # [m, past + m]
            allow[n - past - block:] = True
        f = self.module(feats, embeds, pos, self.cache, allow=allow)[:, -block:]
        self.cached = n - (block - 1)
        return f

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0 or not self._ready(ctx):
            return Draft.empty()
        f = self._sync(ctx)
        if self.tree_nodes:
            return self._tree(f, k)
        n, dev = len(self.features), f.device
        tokens, qs = [], []
        for i in range(k):
            if ctx.params.greedy:
                tok, q = int(self._top(f[0, 0], 1)[1][0]), None
            else:
                tok, q = self._choose(self.lm_head(f)[0, 0], ctx)
            tokens.append(tok)
            qs += [q] if q is not None else []
            if i + 1 < k:
                e = self.embed(torch.tensor([[tok]], device=dev))
                f = self.module(f, e, torch.tensor([[n + i]], device=dev), self.cache)
        return self._draft(tokens, qs)

    def _tree(self, f: torch.Tensor, depth: int) -> Draft:
        """f̂ of the bonus token [1, 1, H] -> an EAGLE-2 dynamic draft tree of at most `depth` levels."""
        n, dev = len(self.features), f.device
        past = self.cache.get_seq_length()  # committed pairs; fed draft nodes go after them
        tokens: list[int] = []
        parents: list[int] = []
        scores: list[float] = []  # log of the product of draft probabilities along the path
        depths: list[int] = []
        fhat = {-1: f}  # node -> predicted feature once the node is fed (the root: f)
        slot: dict[int, int] = {}  # node -> its cache slot
        frontier = [-1]
        values, indices = self._top(f[0], self.topk)  # [1, topk]: the root's best children
        for d in range(depth):
            for row, node in enumerate(frontier):
                base = scores[node] if node >= 0 else 0.0
                for v, t in zip(values[row].tolist(), indices[row].tolist()):
                    tokens.append(t)
                    parents.append(node)
                    scores.append(base + v)
                    depths.append(d)
            if d + 1 == depth:
                break
            level = [i for i in range(len(tokens)) if depths[i] == d]
            frontier = sorted(level, key=lambda i: -scores[i])[: self.beam]
            start = self.cache.get_seq_length()
            allow = torch.zeros(len(frontier), start + len(frontier), dtype=torch.bool, device=dev)
            allow[:, :past] = True  # every committed pair, then only the node's own draft ancestors
            for r, node in enumerate(frontier):
                slot[node] = start + r
                allow[r, start + r] = True
                a = parents[node]
                while a >= 0:
                    allow[r, slot[a]] = True
                    a = parents[a]
            feats = torch.cat([fhat[parents[i]] for i in frontier], dim=1)  # [1, F, H]
            embeds = self.embed(torch.tensor([[tokens[i] for i in frontier]], device=dev))  # [1, F, H]
            out = self.module(feats, embeds, torch.full((1, len(frontier)), n + d, device=dev), self.cache, allow=allow)
            for r, node in enumerate(frontier):
                fhat[node] = out[:, r:r + 1]
            values, indices = self._top(out[0], self.topk)  # [F, topk]
        # the most likely nodes, each with its parent (a parent never scores below its child)
        kept: list[int] = []
        chosen: set[int] = set()
        for i in sorted(range(len(tokens)), key=lambda i: (-scores[i], i)):
            if len(kept) == self.tree_nodes:
                break
            if parents[i] < 0 or parents[i] in chosen:
                kept.append(i)
                chosen.add(i)
        kept.sort()  # parents come before children
        index = {old: new for new, old in enumerate(kept)}
        ids = torch.tensor([[tokens[i] for i in kept]], dtype=torch.long)
        par = [index[parents[i]] if parents[i] >= 0 else -1 for i in kept]
        if all(p == j - 1 for j, p in enumerate(par)):
            return Draft(ids)
        return Draft(ids, parents=torch.tensor(par, dtype=torch.long))
