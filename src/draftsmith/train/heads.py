"""`draftsmith train heads`: draft heads on a frozen target, which gives every label.

1. Features: every step, the target (frozen, in its own dtype) runs over that step's training
   sequences, right-padded into one batch (causal attention: padding after a sequence changes
   none of its positions), and its last hidden states are the features (`feats`, [L, H] per
   sequence). Sequences are a prompt + the target's own answer (`draftsmith train data`), or a
   ShareGPT first turn in the chat template with ShareGPT's answer (the fixed-data recipe of
   EAGLE and Medusa; the labels are still the target's). Features are made on the fly, so the
   data can be larger than memory, or (`features`: a file) made once for all training sequences
   and read back by every epoch and by later runs (features.py). The target's distribution at every position
   is then free: p_m = softmax(lm_head(feats[m-1])), one LM-head pass, not a target pass.
   Training vocabulary (`train_vocab` N > 0, FR-Spec / EAGLE-3): heads draft over the N most
   frequent answer tokens (drafters/heads/vocab.py), so they also train over them: q and p are the
   softmaxes of the N logits (p conditioned on the subset), which costs N/V of the LM head. The
   logged agreement is still with the target's argmax over the whole vocabulary.
2. Heads train with the target frozen (its LM head and embeddings shared, not updated), on the
   answer tokens only:
   - medusa / hydra / amphista / koala: head i (0-based) at position t predicts token t+2+i. Loss
     per head: forward KL to the target's soft label (`kl`, Hydra++'s teacher distillation) or
     cross-entropy on the token (`ce`); Hydra's and KOALA's heads see the true previous tokens
     (teacher forcing); Amphista's K heads run together (their block is bi-directional).
   - eagle: pairs (f_j + noise, e_{j+1}) -> f̂_{j+1}; loss = SmoothL1(f̂_{j+1}, f_{j+1})
     + w_cls * KL/CE(lm_head(f̂_{j+1}) vs token j+2), as in EAGLE (noise U(-0.1, 0.1)). With
     `unroll` U > 1 the same loss is added at draft steps 2..U (EAGLE-3's training-time test,
     `eagle_passes`): the head then also learns from its own predicted features, as it drafts.
   - eagle3 (EAGLE-3): step 1 reads g_j = fc([a_j; b_j; c_j]) (the inputs of the target's
     `aux_layers` at j, from the same forward as the last hidden state) with e_{j+1}; steps
     2..U read the previous step's output (`eagle_passes` with g as the features; default U = 3).
     No feature regression: the token loss only, at every trained step, over the head's own
     draft vocabulary (its LM head, initialised from the target's rows of the `train_vocab`
     most frequent answer tokens, its norm from the target's final norm, its fc as the identity
     on the newest aux layer: `_init_eagle3`). No feature noise by default (EAGLE-3 trains
     without it).
   - fspad (FSPAD): EAGLE's passes and loss, the head reading [e; f; f ⊙ e] (feature sampling),
     with partial alignment distillation: the feature regression covers the first `align` share
     of f̂'s dimensions only (default 0.5; eagle 1.0), so the rest serve the token loss alone.
   - chimera: pairs j = (f_j + noise, [e_{j-1}; e_j; e_{j+1}]) through the causal full-context
     encoder (one pass over the sequence, as the drafter's cache holds them); head i at j
     predicts token j+2+i from c_j and f_j (the token loss, distillation from p by default).
   - glide (GliDe): the target's keys and values at `glide_layer` for the whole sequence (its own
     layer run on that layer's input, an aux feature of the same target forward: TargetKV); the
     draft block's self-attention over the true tokens once, then its cross-attention and MLP at
     draft steps s = 1..U (default 3): the query at i predicts token i+1 reading the target's
     keys at positions <= i - s, which is what the drafter's s-th draft token reads when the
     drafts before it were accepted (then equal to the data's tokens). The token loss alone;
     the block starts as a copy of the target's layer `glide_layer` (`_init_glide`).
   - longspec: glide's, its self-attention over the first `sink` and the last `window` tokens
     only, with anchor-offset indices: each sequence's positions after the sink shifted by a
     random offset in [0, `max_offset`] (default 7680: a 512-token sequence then spans positions
     as far as an 8k context), the target's keys rotated at those positions too.
   Token losses (`loss`), p the target's softmax over the training vocabulary (renormalised):
   `kl` KL(p || q), `ce` the data's token, and two aimed at acceptance: `tv` the total variation
   1 - Σ min(p, q) = ½ Σ |p - q| (one sampled draft token is accepted with probability Σ min(p, q);
   losses.tvd), and `accept` -log Σ min(p, q) (the log of that probability; 1e-6 added inside the log).
   - adversarial (KOALA's, any kind; `adversarial` > 0): a small discriminator D learns to tell
     the target's next-token distribution p from a head's q, both given the context feature the
     head read (h_t; EAGLE: f_j). D sees a distribution r [V] through the target's frozen LM head,
     as its expected output embedding r @ W_lm [H], so it has no vocabulary-wide weights. D
     trains on BCE (p real, q fake, q detached); the heads add `adversarial` times the
     non-saturating generator loss -log D(q) to their loss, per predicted token.
   Logged per head (eagle: per draft step): top-1 agreement with the target's argmax (what
   greedy acceptance needs).
3. Output: `config.json` + `model.safetensors` (the heads' weights only) + `draft_vocab.safetensors`
   (the answers' tokens by frequency: the pruned draft vocabulary, drafters/heads/vocab.py) + a model card; a
   checkpoint (`checkpoint/`) every `save_every` steps that a rerun resumes from.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import DraftsmithError
from ..drafters.heads.modules import KINDS, HeadsConfig, MedusaHeads, build_heads, load_heads, save_heads
from ..drafters.heads.vocab import count_tokens, save_vocab, vocab_order
from ..target import CausalLM
from .card import write_heads_card
from .losses import tvd
from .features import HOLDOUT, Item, cached_features, extract_features, length_groups, usable
from .trainer import lr_at


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which an epoch visits n training sequences: a permutation seeded by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1009 + epoch)).tolist()


@dataclass
class HeadsTrainConfig:
    kind: str
    out: str
    steps: int = 600
    num_heads: int = 4
    num_layers: int = 0  # blocks per head; 0 = the kind's default (koala 2, others 1)
    batch_tokens: int = 2048  # answer tokens per step (whole sequences, packed greedily)
    micro_tokens: int = 4096  # padded tokens per forward: a step's sequences run in batches of similar lengths
    lr: float = 1e-3
    warmup: float = 0.05
    loss: str = "kl"  # kl (soft labels from the target) | ce (the sampled token) | tv | accept (TOKEN_LOSSES)
    cls_weight: float = 0.1  # eagle: weight of the token loss beside the feature regression
    noise: float | None = None  # eagle, eagle3: uniform feature noise (None: eagle 0.1, eagle3 0)
    unroll: int | None = None  # eagle, eagle3: draft steps trained per position (None: eagle 1, eagle3 3);
    # eagle 1 = EAGLE-1, > 1 = EAGLE-3's training-time test
    unroll_weight: float = 1.0  # eagle: weight of the loss of draft steps after the first
    adversarial: float = 0.0  # KOALA's generator-loss weight (0 = no discriminator)
    glance: float = 0.0  # falcon: share of the drafted inputs of passes > 1 replaced by the target's features (glancing)
    block: int = 0  # falcon: tokens per forward (0 = 2)
    max_offset: int | None = None  # longspec: anchor-offset indices, positions after the sink shifted by up to this
    # (None: 7680; 0 = off)
    align: float | None = None  # eagle kinds: share of f̂'s dimensions under the feature regression (None: fspad 0.5,
    # others 1.0; FSPAD's partial alignment distillation)
    max_len: int = 512
    seed: int = 0
    log_every: int = 10
    save_every: int = 100
    holdout: int = HOLDOUT  # sequences kept aside for the final evaluation
    data: str = ""  # where the sequences came from (for the model card)
    features: str = ""  # keep the target's features of the training sequences in this file (epochs reuse them)
    train_vocab: int = 8192  # train over the N most frequent answer tokens (the draft vocabulary); 0 = all
    init: str = ""  # start from these trained heads (a folder `train heads` wrote, or `shipped`; same kind and shape): more
    # data or steps on a shipped head. An eagle3 head keeps its draft vocabulary.

    def check(self) -> None:
        if self.kind not in KINDS:
            raise DraftsmithError(f"unknown head kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.loss not in TOKEN_LOSSES:
            raise DraftsmithError(f"--loss must be one of {', '.join(TOKEN_LOSSES)}, got {self.loss!r}")
        if self.noise is None:
            self.noise = DEFAULT_NOISE.get(self.kind, 0.0)
        if self.unroll is None:
            self.unroll = DEFAULT_UNROLL.get(self.kind, 1)
        if self.align is None:
            self.align = DEFAULT_ALIGN.get(self.kind, 1.0)
        if self.max_offset is None:
            self.max_offset = 7680 if self.kind == "longspec" else 0
        if not isinstance(self.max_offset, int) or self.max_offset < 0:
            raise DraftsmithError(f"--max-offset must be an integer >= 0, got {self.max_offset!r}")
        if not 0 < self.align <= 1:
            raise DraftsmithError(f"--align (share of the feature's dimensions regressed) must be in (0, 1], got {self.align}")
        if self.steps < 1 or self.num_heads < 1 or self.batch_tokens < 8 or self.micro_tokens < 1:
            raise DraftsmithError("--steps and --num-heads must be >= 1, --batch-tokens >= 8, --micro-tokens >= 1")
        if self.noise < 0:
            raise DraftsmithError(f"--noise must be >= 0, got {self.noise}")
        if not 0 <= self.glance < 1 or self.block < 0:
            raise DraftsmithError(f"--glance must be in [0, 1) and --block >= 0, got {self.glance}, {self.block}")
        if self.unroll < 1 or self.unroll_weight < 0 or (self.kind in RECURRENT and self.unroll > self.num_heads):
            raise DraftsmithError("--unroll must be between 1 and --num-heads (eagle's draft length), "
                                  "--unroll-weight >= 0")
        if self.num_layers < 0 or self.adversarial < 0 or self.train_vocab < 0:
            raise DraftsmithError("--num-layers, --adversarial and --train-vocab must be >= 0")


TOKEN_LOSSES = ("kl", "ce", "tv", "accept")
RECURRENT = ("eagle", "eagle3", "falcon", "fspad", "glide", "longspec")  # kinds that draft step by step from their own output (eagle_passes)
DEFAULT_UNROLL = {"eagle3": 3, "falcon": 2, "glide": 3, "longspec": 3}  # draft steps trained (the training-time test); other kinds 1
DEFAULT_NOISE = {"eagle": 0.1, "falcon": 0.1, "fspad": 0.1}  # uniform feature noise (EAGLE-1's); eagle3 none, as EAGLE-3
DEFAULT_ALIGN = {"fspad": 0.5}  # share of f̂'s dimensions under the feature regression; other kinds all
ACCEPT_EPS = 1e-6  # `accept`: -log(Σ min(p, q) + eps): finite where p and q barely overlap, and its gradient
# in q's logits stays below 2 (that of Σ min(p, q) is at most 2 Σ min(p, q))


def _token_loss(logits: torch.Tensor, p_logits: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """Per position, [N, V] -> [N]: `kl` KL(p || q) with p from the target's logits; `ce` on the
    token (its index in the training vocabulary; -1, outside it, costs nothing); `tv` the total
    variation 1 - Σ min(p, q) (= ½ Σ |p - q|, losses.tvd); `accept` -log Σ min(p, q), the
    negative log of the probability that speculative sampling accepts a token drawn from q."""
    if kind == "tv":
        return tvd(p_logits, logits)  # [N]
    if kind == "accept":  # Σ min(p, q) directly: 1 - tvd cancels to rounding noise (or below 0) when p, q barely overlap
        overlap = torch.minimum(F.softmax(p_logits.float(), -1), F.softmax(logits.float(), -1)).sum(-1)  # [N]
        return -torch.log(overlap + ACCEPT_EPS)
    logq = F.log_softmax(logits.float(), dim=-1)
    if kind == "ce":
        inside = tokens >= 0
        return -logq.gather(-1, tokens.clamp(min=0)[:, None])[:, 0] * inside
    logp = F.log_softmax(p_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def eagle_passes(head, features: torch.Tensor, embeds: torch.Tensor, passes: int) -> list[torch.Tensor]:
    """An EAGLE head's predictions at draft steps 1..`passes` for every index of a sequence at
    once (training-time test, as in EAGLE-3). features [1, n, H] (f_i), embeds [1, n, H] (e_{i+1})
    -> `passes` tensors [1, n, H], each f̂_{i+1} at index i. An EAGLE-3 head (modules.Eagle3Head)
    runs the same way with features g_i = combine(aux_i) and its outputs u_{i+1} in place of f̂.

    Step 1 is EAGLE-1: index i reads (f_i, e_{i+1}) and attends causally to the pairs before it.
    Step u > 1 predicts the same f_{i+1} from what the drafter holds at its u-th draft token: the
    newest u - 1 features are its own (step u reads step u-1's output at i - 1), all older ones
    the target's. So its query at i attends to step 1's keys before i - u + 2 and to step v's key
    at i - u + v (v = 2..u): the drafter's cache at that draft step. Index i < u - 1 has no such
    history (its output is not meaningful)."""
    n = features.shape[1]
    positions = torch.arange(n, device=features.device)[None]
    cache = head.new_cache()
    outs = [head(features, embeds, positions, cache)]
    idx = torch.arange(n, device=features.device)
    for u in range(2, passes + 1):
        prev = torch.cat([torch.zeros_like(outs[-1][:, :1]), outs[-1][:, :-1]], dim=1)  # step u-1's output at i - 1
        allow = torch.zeros(n, u * n, dtype=torch.bool, device=features.device)
        allow[:, :n] = idx[None, :] < (idx[:, None] - u + 2)  # step 1's keys: the target's features
        for v in range(2, u + 1):
            col = idx - u + v
            ok = col >= 0
            allow[idx[ok], (v - 1) * n + col[ok]] = True
        outs.append(head(prev, embeds, positions, cache, allow=allow))
    return outs


def falcon_passes(head, features: torch.Tensor, embeds: torch.Tensor, block: int, passes: int,
                  true_features: torch.Tensor | None = None, glance: torch.Tensor | None = None) -> list[list[torch.Tensor]]:
    """A Falcon head's predictions for every query position of a sequence at once, as it drafts
    (modules.FalconHead; k = `block`). features [B, n, H] (f_i, + noise), embeds [B, n, H]
    (e_{i+1}) -> `passes` lists of k tensors [B, n, H]: out[u-1][o] at m is pass u's offset-o
    query at position m, which predicts f_{m+k} (token m+k+1).

    At draft time the context ends at some c (the newest committed pair). Pass 1's offset-o query
    is the committed pair c-k+1+o and sees every pair up to c: over a whole sequence, the query at
    m sees pairs j <= m + k-1-o. Pass u > 1 drafts from the u-1 blocks drafted so far: its offset-o
    query sits at m = c+1+(u-2)k+o (input: the previous pass's offset-o output at m-k, which
    predicted f_m, with e_{m+1}) and sees the true pairs up to c and, of each drafted block w < u
    (w = 1 the one pass 1 drafted), the pair at c+1+(w-1)k+o' for every o'. The inputs of a pass
    are also the keys later passes see (the drafter's cache at that draft step). `glance` [B, n]
    (True: use `true_features` there instead of a drafted feature, in every drafted block):
    Falcon's glancing. A query with c < k-1 has no full history (its output is not meaningful).
    With block 1 this is `eagle_passes`."""
    n, k, dev = features.shape[1], block, features.device
    positions = torch.arange(n, device=dev)[None]
    idx = torch.arange(n, device=dev)
    cache = head.new_cache()
    first: list[torch.Tensor | None] = [None] * k
    first[k - 1] = head(features, embeds, positions, cache)  # causal; fills the cache with the true pairs
    for o in range(k - 1):
        first[o] = head(features, embeds, positions, allow=idx[None, :] <= idx[:, None] + (k - 1 - o))
    outs = [first]
    for u in range(2, passes + 1):
        prev = outs[-1]
        shifted = [torch.cat([torch.zeros_like(p[:, :k]), p[:, :-k]], dim=1)[:, :n] for p in prev]  # f̂_m at m
        if glance is not None and true_features is not None:
            shifted = [torch.where(glance[..., None], true_features, s) for s in shifted]
        x = torch.cat(shifted, dim=1)  # [B, k*n, H]: block o' at o'*n + m
        keys = cache.get_seq_length()  # n + (u-2)*k*n
        allow = torch.zeros(k * n, keys + k * n, dtype=torch.bool, device=dev)
        for oq in range(k):
            rows = oq * n + idx
            c = idx - 1 - (u - 2) * k - oq  # this query's context end
            allow[rows, :n] = idx[None, :] <= c[:, None]  # the true pairs up to c
            for w in range(1, u):  # drafted block w's pairs at c+1+(w-1)k+o
                base = n + (w - 1) * k * n
                for o in range(k):
                    p = c + 1 + (w - 1) * k + o
                    ok = (p >= 0) & (p < n)
                    allow[rows[ok], base + o * n + p[ok]] = True
        out = head(x, embeds.repeat(1, k, 1), positions.repeat(1, k), cache, allow=allow)  # [B, k*n, H]
        outs.append(list(out.split(n, dim=1)))
    return outs


def glide_passes(head, embeds: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rope, passes: int,
                 positions: torch.Tensor | None = None, window: int = 0, sink: int = 0) -> list[torch.Tensor]:
    """A GliDe block's outputs at draft steps 1..`passes` for every query of a sequence at once.
    embeds [B, n, H] (e_i, i = 0..n-1), the target's keys and values [B, Hkv, >= n, D] (index
    0..), rope: the target's (cos, sin) at the queries' positions, positions [B, n] (default
    0..n-1; longspec: anchor-offset) -> `passes` tensors u [B, n, H]; at i, step s predicts token
    i+1 reading the target's keys at index <= i - s (the drafter's s-th draft token, with the
    drafts before it accepted). The self-attention runs once: causal, or (`window` > 0, longspec)
    over the first `sink` tokens and the last `window`."""
    n, dev = embeds.shape[1], embeds.device
    if positions is None:
        positions = torch.arange(n, device=dev)[None].expand(embeds.shape[0], -1)
    allow = None
    if window:
        i = torch.arange(n, device=dev)
        allow = (i[None, :] <= i[:, None]) & ((i[None, :] < sink) | (i[:, None] - i[None, :] < window))  # [n, n]
    r = head.attend(embeds, positions, allow=allow)
    keys_at = torch.arange(keys.shape[-2], device=dev)
    return [head.finish(r, positions, keys, values, (keys_at[None, :] <= torch.arange(n, device=dev)[:, None] - s)[None], rope)
            for s in range(1, passes + 1)]


class Discriminator(torch.nn.Module):
    """KOALA's adversary, small: context feature h [n, H] and a distribution's expected output
    embedding [n, H] -> logit [n] that the distribution is the target's."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2 * hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([h, embedded], dim=-1))[:, 0]


class Adversarial(NamedTuple):
    """Loss sums of the adversarial term: the heads' (generator) and the discriminator's. Two
    graphs, backpropagated one after the other (so never stacked into one tensor)."""

    generator: torch.Tensor = torch.zeros(())
    discriminator: torch.Tensor = torch.zeros(())

    def __add__(self, other: "Adversarial") -> "Adversarial":
        return Adversarial(self.generator + other.generator, self.discriminator + other.discriminator)


class HeadsLoss:
    """The loss of one sequence for each head kind, with per-head agreement counts."""

    def __init__(self, module, lm_head, embed, cfg: HeadsTrainConfig, disc: Discriminator | None = None,
                 vocab_ids: torch.Tensor | None = None, kv=None):
        """`lm_head` gives logits over the training vocabulary `vocab_ids` [N] (None: all V tokens);
        `kv`: glide's TargetKV (the target's keys and values at its layer)."""
        self.m, self.lm_head, self.embed, self.cfg, self.disc, self.kv = module, lm_head, embed, cfg, disc, kv
        self.vocab_ids = vocab_ids
        self.passes = cfg.unroll  # EAGLE draft steps run per sequence (evaluation may run more than are trained)
        self.index_of = None  # token id -> its index in the training vocabulary, -1 outside it
        if vocab_ids is not None:
            self.index_of = torch.full((embed.weight.shape[0],), -1, dtype=torch.long, device=vocab_ids.device)
            self.index_of[vocab_ids] = torch.arange(len(vocab_ids), device=vocab_ids.device)

    def _labels(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.index_of is None else self.index_of[tokens]

    def _agree(self, logits: torch.Tensor, p_logits: torch.Tensor, top: torch.Tensor | None) -> torch.Tensor:
        """[agreements, count] of the head's argmax with the target's: over the whole vocabulary
        when `top` is known, else within the training vocabulary."""
        logits = logits.detach().float()  # (argmax over bf16 logits is about 10x slower on a CPU)
        if top is None:
            return torch.tensor([int((logits.argmax(-1) == p_logits.float().argmax(-1)).sum()), len(logits)])
        best = logits.argmax(-1)
        if self.vocab_ids is not None:
            best = self.vocab_ids[best]
        return torch.tensor([int((best == top).sum()), len(top)])

    def _adversarial(self, h: torch.Tensor, logits: torch.Tensor, p_logits: torch.Tensor) -> Adversarial:
        """h [n, H], the head's and the target's logits [n, V] -> the two loss sums."""
        if self.disc is None:
            return Adversarial()
        w = self.lm_head.weight  # [V, H]
        q = F.softmax(logits.float(), dim=-1)  # [n, V]
        p = F.softmax(p_logits.float(), dim=-1)
        return Adversarial(-F.logsigmoid(self.disc(h, q @ w)).sum(),
                           F.softplus(-self.disc(h, p @ w)).sum() + F.softplus(self.disc(h, q.detach() @ w)).sum())

    def _padded(self, items: list[Item], generator: torch.Generator, offset: int):
        """Several sequences as one right-padded batch: ids [B, T], the target's features [B, T, H],
        what step 1 reads [B, T, H or 3H] (features or eagle3's aux, + noise), the target's argmax
        over the whole vocabulary [B, T] (-1 unknown), and every (row [M], j [M]) whose prediction,
        token j + offset, is an answer token."""
        device = self.lm_head.weight.device
        eagle3 = self.cfg.kind in ("eagle3", "glide", "longspec")  # step 1 reads the aux features
        if eagle3 and any(it.aux is None for it in items):
            raise DraftsmithError("eagle3 heads train on the inputs of the target's aux layers; these features "
                                  "have none (a feature file made for another head kind?)")
        B, T = len(items), max(len(it.ids) for it in items)
        H = items[0].feats.shape[-1]
        width = items[0].aux.shape[-1] if eagle3 else H
        ids = torch.zeros(B, T, dtype=torch.long)  # [B, T] right-padded
        feats = torch.zeros(B, T, H)  # [B, T, H] the target's last hidden states
        src = torch.zeros(B, T, width)  # [B, T, H or 3H] what step 1 reads (+ noise)
        top = torch.full((B, T), -1, dtype=torch.long)  # [B, T] the target's argmax over the whole vocabulary
        rows, js = [], []
        for b, it in enumerate(items):
            L = len(it.ids)
            ids[b, :L], feats[b, :L] = it.ids, it.feats.float()
            x = (it.aux if eagle3 else it.feats).float()
            src[b, :L] = x + (torch.rand(x.shape, generator=generator) * 2 - 1) * self.cfg.noise if self.cfg.noise else x
            if it.top is not None:
                top[b, :L] = it.top
            j = torch.arange(max(it.start - offset, 0), L - offset)
            rows.append(torch.full_like(j, b))
            js.append(j)
        row, j = torch.cat(rows).to(device), torch.cat(js).to(device)  # [M], [M]
        return ids.to(device), feats.to(device), src.to(device), top.to(device), row, j

    def _eagle(self, items: list[Item], generator: torch.Generator):
        """EAGLE's loss (`eagle`) or EAGLE-3's (`eagle3`) at draft steps 1..`passes` of
        `eagle_passes`, over several sequences in one right-padded batch [B, T] (every attention
        in `eagle_passes` looks only backwards, so the padding after a sequence changes none of
        its positions); steps past `unroll` are only counted (evaluation). EAGLE: step 1 reads
        the target's features f (+ noise), the loss is the feature regression + cls_weight x the
        token loss through the target's LM head. EAGLE-3: step 1 reads g = fc(aux) (the aux
        layers' inputs, + noise), the loss is the token loss alone, over the head's own draft
        vocabulary (its logits are in the vocabulary's order, = vocab_ids)."""
        if self.cfg.kind == "falcon":
            return self._falcon(items, generator)
        if self.cfg.kind in ("glide", "longspec"):
            return self._glide(items, generator)
        eagle3 = self.cfg.kind == "eagle3"
        # every (sequence, j): f̂_{j+1} predicts token j+2, an answer token
        ids, feats, src, top, row, j = self._padded(items, generator, 2)
        known = bool((top[row, j + 1] >= 0).all()) if len(j) else False
        with torch.no_grad():
            p_logits = self.lm_head(feats[row, j + 1])  # [M, N]: the target's view of token j+2
        labels = self._labels(ids[row, j + 2])  # [M]
        first = src[:, :-1]  # [B, T-1, .] index i reads position i
        if eagle3:
            first = self.m.combine(first)  # g_i
        outs = eagle_passes(self.m, first, self.embed(ids[:, 1:]).float(), self.passes)  # f̂_{i+1} at index i
        stats = torch.zeros(self.m.cfg.num_heads, 2)  # row u-1: draft step u
        total, count, adv = 0.0, 0, Adversarial()
        for u, out in enumerate(outs, start=1):
            sel = j >= u - 1  # index i < u - 1 has no draft history at step u
            if not sel.any():
                break
            r, jj = row[sel], j[sel]
            f_hat = out[r, jj]  # [m, H]
            logits = self.lm_head(f_hat) if not eagle3 else self.m.logits(f_hat)  # [m, N]
            stats[u - 1] += self._agree(logits, p_logits[sel], top[r, jj + 1] if known else None)
            if u > self.cfg.unroll:
                continue
            loss = _token_loss(logits, p_logits[sel], labels[sel], self.cfg.loss)
            if not eagle3:
                a = max(1, round(self.cfg.align * f_hat.shape[-1]))  # fspad: partial alignment
                loss = (F.smooth_l1_loss(f_hat[:, :a], feats[r, jj + 1, :a], reduction="none").mean(-1)
                        + self.cfg.cls_weight * loss)
            total = total + loss.sum() * (1.0 if u == 1 else self.cfg.unroll_weight)
            if u == 1:
                count = int(sel.sum())
                adv = self._adversarial(feats[r, jj], logits, p_logits[sel])
        return total, count, stats, adv

    def _falcon(self, items: list[Item], generator: torch.Generator):
        """Falcon's loss: `falcon_passes` (pass u, offset o: the query at m predicts f_{m+k} and
        token m+k+1, k = block), the feature regression + cls_weight x the token loss, as EAGLE's;
        passes after the first read the passes before (coupled), with a `glance` share of their
        inputs the target's true features (glancing). Draft token (u-1)k + o is row (u-1)k + o of
        the stats; rows past `unroll` passes are only counted."""
        k = self.m.cfg.block
        ids, feats, src, top, row, j = self._padded(items, generator, k + 1)  # j: query m = j, token j+k+1
        known = bool((top[row, j + k] >= 0).all()) if len(j) else False
        with torch.no_grad():
            p_logits = self.lm_head(feats[row, j + k])  # [M, N]: the target's view of token j+k+1
        labels = self._labels(ids[row, j + k + 1])  # [M]
        glance = None
        if self.cfg.glance > 0 and self.passes > 1:
            glance = torch.rand(ids[:, :-1].shape, generator=generator).to(ids.device) < self.cfg.glance  # [B, T-1]
        outs = falcon_passes(self.m, src[:, :-1], self.embed(ids[:, 1:]).float(), k, self.passes,
                             true_features=feats[:, :-1], glance=glance)
        stats = torch.zeros(self.m.cfg.num_heads, 2)
        total, count, adv = 0.0, 0, Adversarial()
        for u, blocks in enumerate(outs, start=1):
            for o, out in enumerate(blocks):
                d = (u - 1) * k + o  # draft token index
                sel = (j - 1 - (u - 2) * k - o >= k - 1) if u > 1 else torch.ones_like(j, dtype=torch.bool)
                if d >= self.m.cfg.num_heads or not sel.any():
                    continue
                r, jj = row[sel], j[sel]
                f_hat = out[r, jj]  # [m, H]
                logits = self.lm_head(f_hat)  # [m, N]
                stats[d] += self._agree(logits, p_logits[sel], top[r, jj + k] if known else None)
                if u > self.cfg.unroll:
                    continue
                loss = _token_loss(logits, p_logits[sel], labels[sel], self.cfg.loss)
                loss = F.smooth_l1_loss(f_hat, feats[r, jj + k], reduction="none").mean(-1) + self.cfg.cls_weight * loss
                total = total + loss.sum() * (1.0 if u == 1 else self.cfg.unroll_weight)
                if u == 1 and o == 0:
                    count = int(sel.sum())
                    adv = self._adversarial(feats[r, jj], logits, p_logits[sel])
        return total, count, stats, adv

    def _glide(self, items: list[Item], generator: torch.Generator):
        """GliDe's loss over several sequences in one right-padded batch (causal self-attention;
        cross-attention reads keys at or before the query: padding changes none of a sequence's
        positions): draft step s at query i predicts token i+1 from the true tokens <= i and the
        target's keys and values <= i - s; the token loss against the target's view of token i+1."""
        if self.kv is None or any(it.aux is None for it in items):
            raise DraftsmithError("glide heads train on the input of the target's glide_layer (aux features) and its "
                                  "keys and values; these features have none (a feature file made for another kind?)")
        ids, feats, src, top, row, j = self._padded(items, generator, 1)  # src: the layer inputs; j: token j+1
        B, T = ids.shape
        hc = self.m.cfg
        positions = torch.arange(T, device=ids.device)[None].expand(B, -1)  # [B, T]
        if self.cfg.max_offset:  # anchor-offset indices: every position after the sink shifted, per sequence
            offset = torch.randint(self.cfg.max_offset + 1, (B, 1), generator=generator).to(ids.device)
            positions = positions + offset * (positions >= hc.sink)
        with torch.no_grad():
            cache = self.kv.new_cache()
            self.kv.extend(cache, src.to(self.kv.partial.lm.dtype), 0, positions)
            keys, values = (t.clone().float() for t in self.kv.kv(cache))  # [B, Hkv, T, D]
        embeds = self.embed(ids[:, :-1]).float()  # [B, T-1, H]
        rope = tuple(t.clone().float() for t in self.kv.rope(embeds, positions[:, :-1]))
        outs = glide_passes(self.m, embeds, keys, values, rope, min(self.passes, hc.num_heads), positions[:, :-1],
                            hc.window, hc.sink)
        with torch.no_grad():
            p_logits = self.lm_head(feats[row, j])  # [M, N]: the target's view of token j+1
        labels = self._labels(ids[row, j + 1])
        known = bool((top[row, j] >= 0).all()) if len(j) else False
        stats = torch.zeros(self.m.cfg.num_heads, 2)
        total, count, adv = 0.0, 0, Adversarial()
        for s, u in enumerate(outs, start=1):
            sel = j >= s  # the query reads at least one key
            if not sel.any():
                break
            rr, jj = row[sel], j[sel]
            logits = self.lm_head(self.m.norm(u[rr, jj]))  # [m, N]
            stats[s - 1] += self._agree(logits, p_logits[sel], top[rr, jj] if known else None)
            if s > self.cfg.unroll:
                continue
            loss = _token_loss(logits, p_logits[sel], labels[sel], self.cfg.loss)
            total = total + loss.sum() * (1.0 if s == 1 else self.cfg.unroll_weight)
            if s == 1:
                count = int(sel.sum())
                adv = self._adversarial(feats[rr, jj], logits, p_logits[sel])
        return total, count, stats, adv

    def _chimera(self, items: list[Item], generator: torch.Generator):
        """Chimera's loss over several sequences in one right-padded batch (the encoder is causal,
        so padding after a sequence changes none of its positions): index i reads the pair
        (f_i + noise, [e_{i-1}; e_i; e_{i+1}]); head h at i predicts token i+2+h, an answer token
        within the sequence, against the target's view of it (lm_head(f_{i+1+h}))."""
        ids, feats, src, top, row, j = self._padded(items, generator, 2)  # j: token j+2 is an answer token
        K, dev = self.m.cfg.num_heads, ids.device
        lengths = torch.tensor([len(it.ids) for it in items], device=dev)[row]  # [M]
        embeds = self.embed(ids).float()  # [B, T, H]
        positions = torch.arange(ids.shape[1] - 1, device=dev)[None]
        c = self.m.encode(src[:, :-1], self.m.trigrams(embeds), positions)  # [B, T-1, H]: c_i at index i
        x = self.m.features(c[row, j], src[row, j])  # [M, K, H]
        stats = torch.zeros(K, 2)
        total, count, adv = 0.0, 0, Adversarial()
        for h in range(K):
            ok = j + 2 + h < lengths
            if not ok.any():
                break
            r, jj = row[ok], j[ok]
            with torch.no_grad():
                p_logits = self.lm_head(feats[r, jj + 1 + h])  # [m, N]: the target's view of token j+2+h
            logits = self.lm_head(x[ok, h])  # [m, N]
            total = total + _token_loss(logits, p_logits, self._labels(ids[r, jj + 2 + h]), self.cfg.loss).sum()
            adv = adv + self._adversarial(feats[r, jj], logits, p_logits)
            count += int(ok.sum())
            known = bool((top[r, jj + 1 + h] >= 0).all())
            stats[h] += self._agree(logits, p_logits, top[r, jj + 1 + h] if known else None)
        return total, count, stats, adv

    def batch(self, items: list[Item], generator: torch.Generator):
        """Several sequences -> the sums of `__call__`'s (loss, tokens, per-head stats,
        Adversarial). EAGLE kinds run them as one padded batch; the other kinds one at a time."""
        if self.cfg.kind in RECURRENT:
            return self._eagle(items, generator)
        if self.cfg.kind == "chimera":
            return self._chimera(items, generator)
        total, tokens, stats, adv = 0.0, 0, torch.zeros(self.m.cfg.num_heads, 2), Adversarial()
        for item in items:
            loss, n, s, a = self(item, generator)
            total, tokens, stats, adv = total + loss, tokens + n, stats + s, adv + a
        return total, tokens, stats, adv

    def __call__(self, item: Item, generator: torch.Generator):
        """One sequence -> (loss sum, tokens, per-head [agree, count], Adversarial (zero without
        a discriminator))."""
        if self.cfg.kind in RECURRENT:
            return self._eagle([item], generator)
        if self.cfg.kind == "chimera":
            return self._chimera([item], generator)
        ids, feats, start, top = item.ids, item.feats, item.start, item.top
        device = self.lm_head.weight.device  # items come on the CPU (features.py); the heads train here
        ids, feats, top = ids.to(device), feats.to(device), None if top is None else top.to(device)
        kind, K, L = self.cfg.kind, self.m.cfg.num_heads, len(ids)
        feats = feats.float()
        lo = max(start - 1, 0)  # the losses read the target's view of answer tokens only
        with torch.no_grad():
            p_logits = self.lm_head(feats[lo:])  # [L-lo, V]: row m-1-lo is the target's view of token m
        stats = torch.zeros(K, 2)
        total, n_tok, adv = 0.0, 0, Adversarial()
        t = torch.arange(max(start - 2, 0), L - 2, device=device)  # head 0 at t predicts token t+2
        h = feats[t]  # [n, H]
        prev = self.embed(ids[torch.clamp(t[:, None] + 1 + torch.arange(K, device=device), max=L - 1)]).float()  # [n, K, H]
        parallel = isinstance(self.m, MedusaHeads)  # medusa, amphista: all K heads from h alone
        all_feats = self.m.features(h) if parallel else None  # [n, K, H]
        for i in range(K):
            ok = t + 2 + i < L
            if not ok.any():
                break
            feat_i = all_feats[ok, i] if parallel else self.m.head(i, h[ok], prev[ok, : i + 1])
            logits = self.lm_head(feat_i)  # [n_i, V]
            target_pos = t[ok] + 1 + i  # the target's view of token m is p_logits[m-1-lo]
            total = total + _token_loss(logits, p_logits[target_pos - lo], self._labels(ids[target_pos + 1]),
                                        self.cfg.loss).sum()
            adv = adv + self._adversarial(h[ok], logits, p_logits[target_pos - lo])
            n_tok += int(ok.sum())
            stats[i] += self._agree(logits, p_logits[target_pos - lo], None if top is None else top[target_pos])
        return total, n_tok, stats, adv


def micro_batches(items: list[Item], padded_tokens: int) -> list[list[Item]]:
    """A step's sequences in groups of similar lengths, each at most `padded_tokens` once padded
    to its longest (a longer sequence alone), so each group runs as one batch."""
    return [[items[k] for k in group] for group in length_groups([len(it.ids) for it in items], padded_tokens)]


def train_heads(target: CausalLM, sequences: list[tuple[list[int], int]], cfg: HeadsTrainConfig, *,
                progress: bool = True) -> Path:
    """Train heads on (ids, answer start) sequences, the target's features made step by step;
    write `cfg.out`. Resumes from `cfg.out/checkpoint`. The first `cfg.holdout` sequences are
    held out for the final evaluation. The heads train on the target's device."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    cfg.check()
    sequences = usable(sequences, cfg.max_len)
    if len(sequences) <= cfg.holdout:
        raise DraftsmithError(f"{len(sequences)} usable training sequences; need more than the {cfg.holdout} held out")
    out = Path(cfg.out)
    held, train = sequences[: cfg.holdout], sequences[cfg.holdout:]
    # the draft vocabulary: the answers' tokens, most frequent first (drafters/heads/vocab.py); the end of
    # sequence tokens always in it
    vocab = vocab_order(count_tokens(ids[start:] for ids, start in sequences), always=sorted(target.eos_token_ids))
    device = target.device
    vocab_ids = torch.tensor(vocab[: cfg.train_vocab], dtype=torch.long, device=device) if cfg.train_vocab else None
    lm_head, embed = target.model.get_output_embeddings(), target.model.get_input_embeddings()
    for p in target.model.parameters():
        p.requires_grad_(False)
    weight = lm_head.weight.detach().float()  # [V, H]
    if vocab_ids is not None:
        weight = weight[vocab_ids]  # [N, H]
    lm_head_f32 = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lm_head_f32.weight = torch.nn.Parameter(weight, requires_grad=False)
    embed_f32 = torch.nn.Embedding.from_pretrained(embed.weight.detach().float(), freeze=True)
    extra = {"draft_vocab_size": 0 if vocab_ids is None else len(vocab_ids)} if cfg.kind == "eagle3" else {}
    if cfg.kind == "falcon":
        extra = {"block": cfg.block}
    hcfg = HeadsConfig.for_target(cfg.kind, target.config, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                                  target=target.name, **extra)
    torch.manual_seed(cfg.seed)
    module = build_heads(hcfg).float().to(device).train()
    aux_layers = tuple(hcfg.aux_layers) if cfg.kind == "eagle3" else None
    kv = None
    if cfg.kind in ("glide", "longspec"):  # the input of its target layer, and that layer's keys and values
        from ..drafters.heads.glide import TargetKV

        aux_layers, kv = (hcfg.glide_layer,), TargetKV(target, hcfg.glide_layer)
    if cfg.kind == "eagle3" and vocab_ids is not None:  # its own LM head over the draft vocabulary (ascending)
        module.set_vocab(vocab_ids)
    if cfg.init:
        _start_from(module, _init_folder(target, cfg))
    if cfg.kind == "eagle3":
        vocab_ids = module.token_ids() if vocab_ids is not None else None
        if vocab_ids is not None:
            lm_head_f32.weight = torch.nn.Parameter(lm_head.weight.detach().float()[vocab_ids], requires_grad=False)
        if not cfg.init:
            _init_eagle3(module, target, lm_head_f32.weight)
    if cfg.kind in ("glide", "longspec") and not cfg.init:
        _init_glide(module, target)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=0.0)
    disc = Discriminator(hcfg.hidden_size).float().to(device).train() if cfg.adversarial > 0 else None
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, weight_decay=0.0) if disc is not None else None
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    ckpt = out / "checkpoint" / "state.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        saved_d2t = state["module"].get("d2t")
        if saved_d2t is not None and not torch.equal(saved_d2t.cpu(), module.d2t.cpu()):
            raise DraftsmithError(f"{ckpt}: this checkpoint drafts over another draft vocabulary (it was made from other "
                                  "data or another --init); resume with the data it was made from, or use another --out")
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["opt"])
        if disc is not None and "disc" in state:
            disc.load_state_dict(state["disc"])
            disc_opt.load_state_dict(state["disc_opt"])
        generator.set_state(state["generator"])
        step, cursor, seen = state["step"], state["cursor"], state.get("seen", 0)
    else:
        cursor, seen = 0, 0
    loss_fn = HeadsLoss(module, lm_head_f32, embed_f32, cfg, disc, vocab_ids, kv=kv)
    stored = (cached_features(target, train, cfg.max_len, cfg.features, progress, aux_layers=aux_layers)
              if cfg.features else None)
    writer = SummaryWriter(str(out / "runs"))
    orders: dict[int, list[int]] = {}

    def pick(c: int) -> int:
        """The c-th sequence drawn: each epoch is its own seeded permutation."""
        epoch = c // len(train)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = epoch_order(len(train), cfg.seed, epoch)
        return orders[epoch][c % len(train)]

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.kind}", disable=not progress)
    run_start, run_tokens = time.perf_counter(), 0  # this run's throughput (a resumed run counts its own steps)
    window = {"loss": 0.0, "adv": torch.zeros(2), "tokens": 0, "stats": torch.zeros(cfg.num_heads, 2), "t": time.perf_counter()}
    from .trainer import bf16_pays

    bf16 = bf16_pays(device)  # autocast where bf16 is the faster (not on an AVX2-only CPU)
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, floor=0.0)
        picked, answer_tokens = [], 0  # whole sequences until the step has batch_tokens answer tokens
        while answer_tokens < cfg.batch_tokens:
            k = pick(cursor)
            cursor += 1
            picked.append(k)
            answer_tokens += len(train[k][0]) - train[k][1]
        seen += answer_tokens
        total, tokens, stats, adv = 0.0, 0, torch.zeros(cfg.num_heads, 2), Adversarial()
        items = ([stored[k] for k in picked] if stored else
                 extract_features(target, [train[k] for k in picked], cfg.max_len, aux_layers=aux_layers))
        for group in micro_batches(items, cfg.micro_tokens):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, n, s, a = loss_fn.batch(group, generator)
            total, tokens, stats, adv = total + loss, tokens + n, stats + s, adv + a
        loss = total / max(tokens, 1)
        gen_loss, disc_loss = adv.generator / max(tokens, 1), adv.discriminator / max(tokens, 1)
        opt.zero_grad(set_to_none=True)
        (loss + cfg.adversarial * gen_loss).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        if disc is not None:  # after the heads' step: clears what the generator term left in D's grads
            disc_opt.zero_grad(set_to_none=True)
            disc_loss.backward()
            disc_opt.step()
        step += 1
        bar.update(1)
        window["loss"] += float(loss.detach()) * tokens
        window["adv"] += torch.stack([gen_loss, disc_loss]).detach().float().cpu() * tokens
        window["tokens"] += tokens
        window["stats"] += stats
        run_tokens += tokens
        if step % cfg.log_every == 0 or step == cfg.steps:
            acc = (window["stats"][:, 0] / window["stats"][:, 1].clamp(min=1)).tolist()
            seconds = time.perf_counter() - window["t"]
            writer.add_scalar("train/loss", window["loss"] / max(window["tokens"], 1), step)
            writer.add_scalar("train/tokens_per_second", window["tokens"] / max(seconds, 1e-9), step)
            if disc is not None:
                gen, dis = (window["adv"] / max(window["tokens"], 1)).tolist()
                writer.add_scalar("train/adversarial_generator", gen, step)
                writer.add_scalar("train/adversarial_discriminator", dis, step)
            for i, a in enumerate(acc):
                writer.add_scalar(f"train/top1_head{i}", a, step)
            writer.flush()
            bar.set_postfix(loss=f"{window['loss'] / max(window['tokens'], 1):.3f}",
                            top1=" ".join(f"{a:.2f}" for a in acc if a > 0),
                            tok_s=f"{window['tokens'] / max(seconds, 1e-9):.0f}")
            if progress:  # one plain line per log (the bar alone is hard to read in a log file)
                print(f"step {step}/{cfg.steps} loss {window['loss'] / max(window['tokens'], 1):.4f} top1 "
                      + " ".join(f"{a:.3f}" for a in acc if a > 0)
                      + f" tok/s {window['tokens'] / max(seconds, 1e-9):.0f} lr {opt.param_groups[0]['lr']:.2e}",
                      flush=True)
            window = {"loss": 0.0, "adv": torch.zeros(2), "tokens": 0, "stats": torch.zeros(cfg.num_heads, 2), "t": time.perf_counter()}
        if step % cfg.save_every == 0 or step == cfg.steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            extra = {"disc": disc.state_dict(), "disc_opt": disc_opt.state_dict()} if disc is not None else {}
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "generator": generator.get_state(),
                        "step": step, "cursor": cursor, "seen": seen, **extra}, ckpt)
    bar.close()
    writer.close()
    seconds = time.perf_counter() - run_start
    module.eval()
    metrics = evaluate_heads(loss_fn, extract_features(target, held, cfg.max_len, top=True, aux_layers=aux_layers))
    module.cfg.training = {**asdict(cfg), "sequences": len(train),
                           "sequence_answer_tokens": sum(len(ids) - start for ids, start in train),
                           "answer_tokens_seen": seen, "held_out": metrics}
    if run_tokens:
        module.cfg.training["tokens_per_second"] = round(run_tokens / max(seconds, 1e-9), 1)  # the last run's
    save_heads(module, out)
    save_vocab(out, vocab)
    write_heads_card(out, module.cfg, metrics)
    return out


def _init_folder(target: CausalLM, cfg: HeadsTrainConfig) -> str:
    """`init`: a folder, or `shipped` for the heads of this kind shipped for the target."""
    if cfg.init != "shipped":
        return cfg.init
    from ..drafters.heads.drafters import shipped_heads_dir

    folder = shipped_heads_dir(target, cfg.kind)
    if folder is None:
        raise DraftsmithError(f"--init shipped: no {cfg.kind} heads ship for {target.name!r}; pass a folder")
    return str(folder)


@torch.no_grad()
def _start_from(module: torch.nn.Module, folder: str) -> None:
    """`init`: the weights (and an eagle3 head's draft vocabulary) of trained heads of the same
    kind and shape."""
    trained = load_heads(folder)
    mine, theirs = asdict(module.cfg), asdict(trained.cfg)
    free = ("training", "target")
    pair = (mine["kind"], theirs["kind"])
    if pair in (("falcon", "eagle"), ("fspad", "eagle"), ("longspec", "glide")):  # falcon: the same weights (block 1
        free += ("kind", "block", "window", "sink")  # is EAGLE); fspad: EAGLE's with the sampled block of fc zero;
        # longspec: GliDe's block, windowed
    shape = [k for k in mine if k not in free and mine[k] != theirs.get(k)]
    if shape:
        raise DraftsmithError(f"--init {folder}: those heads differ from the ones asked for in "
                              + ", ".join(f"{k} ({theirs.get(k)!r} there, {mine[k]!r} here)" for k in shape))
    if pair == ("fspad", "eagle"):
        module.from_eagle(trained.state_dict())
    else:
        module.load_state_dict(trained.state_dict())


@torch.no_grad()
def _init_eagle3(module, target: CausalLM, lm_weight: torch.Tensor) -> None:
    """An EAGLE-3 head starts reading the target's residual stream as the target reads it: its
    LM head is the target's rows of its draft vocabulary (`lm_weight` [Vd, H], in draft-id
    order), its final norm the target's final norm (when the target has one named `norm`), and
    its fc passes the newest aux layer's input through (identity on that block, zero on the
    others; at equal widths), so that at init u carries the target's features of that layer
    plus the decoder layer's update. Measured on SmolLM2-135M features: top-1 agreement at init
    0.046 at draft step 1, against 0.001 with a random fc."""
    if module.lm_head.weight.shape == lm_weight.shape:
        module.lm_head.weight.copy_(lm_weight.to(module.lm_head.weight))
    norm = getattr(target.model.base_model, "norm", None)
    weight = getattr(norm, "weight", None)
    if weight is not None and weight.shape == module.norm.weight.shape:
        module.norm.weight.copy_(weight.detach().float())
    H, Ht = module.cfg.hidden_size, module.cfg.target_hidden_size
    if H == Ht:
        module.fc.weight.zero_()
        module.fc.weight[:, -Ht:] = torch.eye(H)


GLIDE_NORM_START = 0.05  # _init_glide: the draft block's final norm starts at this share of the target's


@torch.no_grad()
def _init_glide(module, target: CausalLM) -> None:
    """A GliDe block starts from the target's layer `glide_layer`: its self-attention, norms and
    MLP, and for the cross-attention that layer's query projection and input norm (queries the
    target's own keys answer), the final norm the target's; the three residual branches' output
    projections (self-attention, cross-attention, MLP down) start at zero, so u = e at init, and
    the final norm at GLIDE_NORM_START times the target's: the target's own norm on a raw
    embedding makes the tied LM head predict the input token itself with near certainty (measured
    on SmolLM2: KL 107 nats a draft step at init, against 9.3 for flat logits and 11 at 0.1 of
    it). Weights of another shape (and biases) are left as they are."""
    from ..target import _decoder_parts

    _, layers, _, norm = _decoder_parts(target)
    layer = layers[module.cfg.glide_layer]
    attn = layer.self_attn
    pairs = [(module.input_layernorm, layer.input_layernorm), (module.post_attention_layernorm, layer.post_attention_layernorm),
             (module.cross_norm, layer.input_layernorm), (module.cross_q, attn.q_proj), (module.cross_o, attn.o_proj),
             (module.norm, norm)]
    pairs += [(getattr(module.self_attn, n), getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    pairs += [(getattr(module.mlp, n), getattr(layer.mlp, n, None)) for n in ("gate_proj", "up_proj", "down_proj")]
    for mine, theirs in pairs:
        w = getattr(theirs, "weight", None)
        if w is not None and w.shape == mine.weight.shape:
            mine.weight.copy_(w.detach().float())
    for out in (module.self_attn.o_proj, module.cross_o, module.mlp.down_proj):  # residual branches start at zero
        out.weight.zero_()
    module.norm.weight.mul_(GLIDE_NORM_START)  # nearly flat first logits


@torch.inference_mode()
def evaluate_heads(loss_fn: HeadsLoss, held: list) -> dict:
    """Top-1 agreement with the target's argmax per head on held-out sequences."""
    stats = torch.zeros(loss_fn.m.cfg.num_heads, 2)
    g = torch.Generator().manual_seed(0)
    saved, loss_fn.cfg.noise, disc, loss_fn.disc, passes = loss_fn.cfg.noise, 0.0, loss_fn.disc, None, loss_fn.passes
    K = loss_fn.m.cfg.num_heads
    loss_fn.passes = max(passes, min(3, K))  # eagle: agreement at draft steps 1-3 at least
    if loss_fn.m.cfg.kind == "falcon":  # falcon: passes of `block` tokens, all num_heads draft tokens
        loss_fn.passes = max(passes, -(-K // loss_fn.m.cfg.block))
    for group in micro_batches(held, loss_fn.cfg.micro_tokens):
        stats += loss_fn.batch(group, g)[2]
    loss_fn.cfg.noise, loss_fn.disc, loss_fn.passes = saved, disc, passes
    return {"top1_agreement": [round(a, 4) for a in (stats[:, 0] / stats[:, 1].clamp(min=1)).tolist() if a > 0],
            "tokens": int(stats[0, 1])}
