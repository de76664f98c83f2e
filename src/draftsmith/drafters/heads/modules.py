"""Draft heads: small modules on the target's last hidden state (the feature `h`, after the final
norm, [.., H]) that propose the tokens after the next one. They share the target's frozen LM head
(`lm_head`, H -> V) and input embeddings (`embed`, V -> H); only the heads' own weights train.

Positions: the target's feature h_t at position t gives (through its LM head) token t+1, which the
decoding loop already has as the bonus token. Heads predict the tokens after it:

    Medusa  head i (i = 1..K):  logits_{t+1+i} = lm_head(ResBlocks_i(h_t))            independent
    Hydra   head i:             logits_{t+1+i} = lm_head(MLP_i([h_t; e_{t+1}; ..; e_{t+i}]))
                                (each head also sees the tokens drafted before it)
    EAGLE   one decoder layer autoregressing on features:
                                f̂_{t+1} = Layer(fc([e_{t+1}; f_t]))  (causal over the sequence)
                                logits_{t+2} = lm_head(f̂_{t+1}); then ([f̂_{t+1}; e_{t+2}]) -> ...
    Amphista (Li et al. 2024)   Medusa's heads between a shared adaptation stage and an
                                "auto-embedding block" (one decoder layer, bi-directional over the K
                                head positions, so the heads see each other):
                                x_i = ResBlocks_i(ResBlock(h_t)); logits_{t+1+i} = lm_head(Layer(x_1..x_K)_i)
    KOALA   (Zhang et al. 2024) Hydra's heads with multi-layer heads: `num_layers` (default 2)
                                decoder blocks per head instead of residual blocks (the adversarial
                                term of KOALA's training is in draftsmith.train.heads)
    EAGLE-3 (Li et al. 2025)    the target's low, middle and high layers instead of its last one,
                                fused by one linear layer, g_t = fc([a_t; b_t; c_t]); one decoder
                                layer whose attention reads [norm(e_{t+1}); norm(g_t)] (2H wide)
                                gives u_{t+1} (before its final norm); logits_{t+2} over its own draft
                                vocabulary = lm_head(norm(u_{t+1})); the next draft step feeds u back
                                in place of g (no fc). Trained on tokens only (no feature regression),
                                with the training-time test. Features: `aux_layers` are the inputs
                                of those target layers (the target's hidden_states[i]), as in vLLM.
    Falcon  (Gao et al. 2024)   EAGLE's layer made semi-autoregressive: one forward drafts `block`
                                (k, default 2) tokens. The pair at j, (f_j, e_{j+1}), predicts
                                f̂_{j+k} (so token j+k+1), and the k newest pairs form a block that
                                attends to itself in full (the relaxed causal mask): with n
                                committed pairs, the query of pair n-k+o (o = 0..k-1) sees every
                                pair up to n-1 and gives f̂_{n+o}. The k drafted pairs
                                (f̂_{n+o}, e(x̂_{n+1+o})) are the next block. Same weights as an
                                EAGLE head (block 1 is EAGLE exactly), so an EAGLE head can start it.
    FSPAD   (Gui et al. 2024)   EAGLE's layer whose input also carries the feature *sampled* by the
                                token it is paired with, the elementwise product f_t ⊙ e_{t+1}
                                ("feature sampling": the feature's components along that token's
                                embedding): f̂_{t+1} = Layer(fc([e_{t+1}; f_t; f_t ⊙ e_{t+1}])).
                                Trained with partial alignment distillation (train.heads: the
                                feature regression on a share of f̂'s dimensions only, the token
                                loss on all). With the third block of fc zero it is EAGLE exactly,
                                so an EAGLE head can start it.
    Chimera (Zeng et al. 2024)  a trigram encoder on the newest three tokens, t_j =
                                W_t [e_{j-1}; e_j; e_{j+1}], a full-context encoder (one causal decoder
                                layer over c_j = Layer(fc([t_j; f_j])), with its own KV cache of
                                committed pairs), and K residual decoding heads that draft in parallel
                                (no autoregression): logits_{j+2+i} = lm_head(Res_i(f_j + W_i [c_j; f_j])).
                                W_i starts at zero, so every head starts as the target's own LM head.
    GliDe   (Du et al. 2024)    a draft block that reads the target's KV cache: self-attention over the
                                draft's own tokens (e_j, its own cache), cross-attention whose keys
                                and values are the target's own at layer `glide_layer` (default the
                                last) for the committed tokens, then the MLP; its own final norm and
                                the target's LM head: u_j = Block(e_j; K, V), logits_{j+1} =
                                lm_head(norm(u_j)). A query at position p sees the target's keys at
                                positions <= p - 1 that exist (at draft time: every committed one).
    LongSpec (Yang et al. 2025) GliDe's block (the same weights) with a constant-size cache of its own:
                                its self-attention sees the first `sink` tokens and the last `window`
                                (sliding window), the context reaching it through the cross-attention
                                to the target's keys; trained with anchor-offset indices (every
                                position after the sink shifted by a random offset, the target's keys
                                rotated there too), so short training sequences show the distances of
                                long contexts.

All start out close to the LM head itself (zero-initialised residual branches), as in Medusa;
Medusa, Hydra, Amphista, KOALA and Chimera heads are exactly the identity on h at init.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm,
                                                      LlamaRotaryEmbedding, rotate_half)

from ...errors import DraftsmithError

KINDS = ("medusa", "hydra", "eagle", "amphista", "koala", "eagle3", "falcon", "fspad", "chimera", "glide",
         "longspec")
DEFAULT_LAYERS = {"koala": 2}  # blocks per head when num_layers is 0 (all other kinds: 1)


@dataclass
class HeadsConfig:
    kind: str
    hidden_size: int
    vocab_size: int
    num_heads: int = 4  # tokens proposed per step (one per head); EAGLE: the default draft length
    num_layers: int = 0  # blocks per Medusa/Hydra/Amphista/KOALA head; 0 = the kind's default (DEFAULT_LAYERS)
    # EAGLE's and Amphista's decoder layer, KOALA's blocks (the target's shape by default)
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    intermediate_size: int = 1536
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    # EAGLE-3: the target layers whose inputs are fused (hidden_states[i]; default 2, L/2, L-3, as
    # vLLM), the target's hidden size, the draft vocabulary's size (0 = the target's), and the
    # place of the hidden norm (vLLM's and speculators' `norm_before_residual`)
    aux_layers: list = field(default_factory=list)
    target_hidden_size: int = 0
    draft_vocab_size: int = 0
    norm_before_residual: bool = False
    block: int = 0  # falcon: tokens drafted per forward (k of its semi-autoregressive blocks); 0 = 2 (other kinds: unused)
    glide_layer: int = -1  # glide: the target layer whose keys and values the draft block cross-attends to (-1: the last)
    head_dim: int = 0  # attention head width (0 = hidden_size // num_attention_heads); glide: the target's
    window: int = 0  # longspec: the self-attention's window (0: 64); glide: unlimited
    sink: int = 0  # longspec: the leading tokens its self-attention always sees (0: 4)
    target: str = ""  # what it was trained on (informative)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DraftsmithError(f"unknown head kind {self.kind!r}; known: {', '.join(KINDS)}")
        self.num_layers = self.num_layers or DEFAULT_LAYERS.get(self.kind, 1)
        if self.kind == "falcon":
            self.block = self.block or 2
            if not isinstance(self.block, int) or self.block < 1:
                raise DraftsmithError(f"falcon: block (tokens per forward) must be an integer >= 1, got {self.block!r}")
        if self.kind in ("glide", "longspec") and not (isinstance(self.glide_layer, int) and self.glide_layer >= -1):
            raise DraftsmithError(f"{self.kind}: glide_layer must be a target layer index (or -1, the last), got "
                                  f"{self.glide_layer!r}")
        if self.kind == "longspec":
            self.window, self.sink = self.window or 64, self.sink or 4
            if not all(isinstance(v, int) and v >= 1 for v in (self.window, self.sink)):
                raise DraftsmithError(f"longspec: window and sink must be integers >= 1, got {self.window!r}, {self.sink!r}")
        if self.kind == "eagle3":
            self.aux_layers = [int(i) for i in self.aux_layers]
            self.target_hidden_size = self.target_hidden_size or self.hidden_size
            self.draft_vocab_size = self.draft_vocab_size or self.vocab_size
            if len(self.aux_layers) != 3 or min(self.aux_layers) < 0:
                raise DraftsmithError(f"eagle3: aux_layers must be three target layer indices >= 0, got {self.aux_layers}")
            if not 1 <= self.draft_vocab_size <= self.vocab_size:
                raise DraftsmithError(f"eagle3: draft_vocab_size must be in [1, {self.vocab_size}], got {self.draft_vocab_size}")

    def llama(self) -> LlamaConfig:
        """A one-layer Llama config of the heads' shape (for the decoder layers they hold)."""
        llama = LlamaConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                            num_hidden_layers=1, vocab_size=self.vocab_size, rms_norm_eps=self.rms_norm_eps,
                            max_position_embeddings=self.max_position_embeddings,
                            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
                            **({"head_dim": self.head_dim} if self.head_dim else {}))
        llama._attn_implementation = "sdpa"
        return llama

    @classmethod
    def for_target(cls, kind: str, target_config, **overrides) -> "HeadsConfig":
        c = target_config
        if kind == "eagle3" and not overrides.get("aux_layers"):
            L = c.num_hidden_layers  # vLLM's default (2, L/2, L-3); tiny targets repeat a layer
            overrides["aux_layers"] = [2, L // 2, L - 3] if L >= 6 else [0, L // 2, L - 1]
        if kind in ("glide", "longspec"):  # the target's attention shape (the keys and values read are its own)
            overrides.setdefault("glide_layer", c.num_hidden_layers - 1)
            if overrides["glide_layer"] == -1:
                overrides["glide_layer"] = c.num_hidden_layers - 1
            overrides.setdefault("head_dim", getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
        rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        return cls(kind=kind, hidden_size=c.hidden_size, vocab_size=c.vocab_size,
                   num_attention_heads=c.num_attention_heads,
                   num_key_value_heads=getattr(c, "num_key_value_heads", c.num_attention_heads),
                   intermediate_size=c.intermediate_size, rope_theta=float(rope), rms_norm_eps=c.rms_norm_eps,
                   max_position_embeddings=c.max_position_embeddings, **overrides)


class ResBlock(nn.Module):
    """x + SiLU(W x), W zero-initialised: the block starts as the identity."""

    def __init__(self, size: int):
        super().__init__()
        self.linear = nn.Linear(size, size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return x + nn.functional.silu(self.linear(x))


class DecoderBlock(nn.Module):
    """A decoder layer on a single position (KOALA's head layer): attention over one position is
    its value and output projections, then the SwiGLU MLP; pre-norm, with the output projection
    and the MLP's down projection zero-initialised so that the block starts as the identity."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        H, llama = cfg.hidden_size, cfg.llama()
        self.attn_norm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.v_proj = nn.Linear(H, H, bias=False)
        self.o_proj = nn.Linear(H, H, bias=False)
        self.mlp_norm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(llama)
        nn.init.zeros_(self.o_proj.weight)
        nn.init.zeros_(self.mlp.down_proj.weight)

    def forward(self, x):
        x = x + self.o_proj(self.v_proj(self.attn_norm(x)))
        return x + self.mlp(self.mlp_norm(x))


def head_blocks(cfg: HeadsConfig, block) -> nn.ModuleList:
    """`num_layers` blocks (block(cfg)) per head, one stack per head."""
    return nn.ModuleList(nn.Sequential(*[block(cfg) for _ in range(cfg.num_layers)]) for _ in range(cfg.num_heads))


def res_block(cfg: HeadsConfig) -> ResBlock:
    return ResBlock(cfg.hidden_size)


class MedusaHeads(nn.Module):
    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = head_blocks(cfg, res_block)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """h [.., H] -> the heads' features [.., K, H] for the tokens 2..K+1 after h's position."""
        return torch.stack([head(h) for head in self.heads], dim=-2)

    def forward(self, h: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """h [.., H] -> logits [.., K, V] for the tokens 2..K+1 after h's position."""
        return lm_head(self.features(h))


class AmphistaHeads(MedusaHeads):
    """Amphista: staged adaptation (a shared residual block turns the target's autoregressive
    feature into the heads' input, then each head's own residual blocks adapt it to its position),
    then the auto-embedding block: one decoder layer with bi-directional (non-causal) attention
    over the K head positions (RoPE gives each position its place), so that every head sees what
    the others predict. The attention and MLP outputs are zero-initialised: at init the block
    is the identity and the heads are Medusa's at init."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__(cfg)
        self.adapt = ResBlock(cfg.hidden_size)
        llama = cfg.llama()
        self.mix = LlamaDecoderLayer(llama, layer_idx=0)
        self.mix.self_attn.is_causal = False  # bi-directional: each head position sees all K
        nn.init.zeros_(self.mix.self_attn.o_proj.weight)
        nn.init.zeros_(self.mix.mlp.down_proj.weight)
        self.rotary = LlamaRotaryEmbedding(llama)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        x = super().features(self.adapt(h))  # [.., K, H]
        K, H = x.shape[-2:]
        flat = x.reshape(-1, K, H)  # [B, K, H]
        positions = torch.arange(K, device=x.device)[None].expand(flat.shape[0], K)  # [B, K]
        out = self.mix(flat, attention_mask=None, position_ids=positions,
                       position_embeddings=self.rotary(flat, positions))
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(x.shape)


class HydraHeads(nn.Module):
    block = staticmethod(res_block)  # what a head stacks `num_layers` of

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_size
        self.inputs = nn.ModuleList(nn.Linear(H * (i + 2), H) for i in range(cfg.num_heads))
        for lin in self.inputs:  # start as the identity on h
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
            with torch.no_grad():
                lin.weight[:, :H] = torch.eye(H)
        self.blocks = head_blocks(cfg, self.block)

    def head(self, i: int, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Head i (0-based): h [.., H] and the embeddings of the i+1 tokens after h's position
        (the bonus token, then earlier drafts) prev [.., i+1, H] -> feature [.., H]."""
        x = torch.cat([h, prev.flatten(-2)], dim=-1)
        return self.blocks[i](self.inputs[i](x))

    def forward(self, h: torch.Tensor, prev: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Teacher-forced: h [.., H], prev [.., K, H] (embeddings of tokens t+1..t+K) ->
        logits [.., K, V] for tokens t+2..t+K+1."""
        return lm_head(torch.stack([self.head(i, h, prev[..., : i + 1, :]) for i in range(self.cfg.num_heads)], dim=-2))


class KoalaHeads(HydraHeads):
    """KOALA on Hydra: the same sequentially dependent heads, each `num_layers` (default 2)
    decoder blocks deep instead of residual blocks."""

    block = DecoderBlock


def head_mask(x: torch.Tensor, cache: DynamicCache | None, allow: torch.Tensor | None = None) -> torch.Tensor | None:
    """The additive attention mask [1, 1, n, past + n] of n new positions x [B, n, .] over a head's
    cache and themselves: `allow` [n, past + n] (True = may attend; draft trees, relaxed masks), or
    causal within the new positions with all of the cache visible; None where that is no mask at all
    (one new position)."""
    n, past = x.shape[1], cache.get_seq_length() if cache is not None else 0
    if allow is None:
        if n == 1:
            return None
        allow = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(past)
    return torch.zeros(allow.shape, dtype=x.dtype, device=x.device).masked_fill(~allow, torch.finfo(x.dtype).min)[None, None]


class EagleHead(nn.Module):
    """fc([next-token embedding; feature]) -> one Llama decoder layer -> predicted next feature.
    The layout of the EAGLE(-1) checkpoints that vLLM and SGLang read: weights `fc.weight` (no
    bias) and `layers.0.*`, no input norm in layer 0 (the fc output goes straight to attention),
    no final norm; the target's embeddings and LM head are not stored."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.cfg = cfg
        self.llama = cfg.llama()
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.layers = nn.ModuleList([LlamaDecoderLayer(self.llama, layer_idx=0)])
        self.layers[0].input_layernorm = nn.Identity()
        self.rotary = LlamaRotaryEmbedding(self.llama)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llama)

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor,
                cache: DynamicCache | None = None, allow: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, n, H] (f_t), embeds [B, n, H] (e_{t+1}), positions [B, n] (t) ->
        predicted features f̂_{t+1} [B, n, H]. Attention: causal over the cache and the n new
        pairs, or `allow` [n, past + n] (True = may attend; draft trees)."""
        x = self.fc(torch.cat([embeds, features], dim=-1))
        mask = head_mask(x, cache, allow)
        cos_sin = self.rotary(x, positions)
        out = self.layers[0](x, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=cache is not None,
                             position_embeddings=cos_sin)
        return out[0] if isinstance(out, tuple) else out


class FalconHead(EagleHead):
    """Falcon's semi-autoregressive drafter (see the module docstring): EAGLE's fc + decoder layer,
    whose pair at j predicts f̂_{j+block}. One layer, so the keys and values of a pair depend on
    that pair alone and the cache is valid under any mask; only the queries see a relaxed mask
    (`allow`, built by the caller: the drafter and `train.heads.falcon_passes`)."""


class FspadHead(EagleHead):
    """FSPAD's drafter (see the module docstring): EAGLE's layer on [e; f; f ⊙ e], fc 3H -> H.
    `from_eagle` starts it from an EAGLE head's weights (the sampled block of fc zero: EAGLE)."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__(cfg)
        self.fc = nn.Linear(3 * cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor,
                cache: DynamicCache | None = None, allow: torch.Tensor | None = None) -> torch.Tensor:
        """As EagleHead.forward; the pair's input is [e_{t+1}; f_t; f_t ⊙ e_{t+1}] ([B, n, 3H])."""
        return super().forward(torch.cat([features, features * embeds], dim=-1), embeds, positions, cache, allow)

    @torch.no_grad()
    def from_eagle(self, state: dict) -> None:
        """Load an EAGLE head's state dict: fc's [e; f] blocks from it, the f ⊙ e block zero."""
        H = self.cfg.hidden_size
        fc = state["fc.weight"]  # [H, 2H]
        if tuple(fc.shape) != (H, 2 * H):
            raise DraftsmithError(f"fspad: an EAGLE head whose fc is {tuple(fc.shape)} cannot start a head of width {H} "
                                  f"(it needs an fc of ({H}, {2 * H}))")
        state = dict(state)
        state["fc.weight"] = torch.cat([fc, torch.zeros(H, H, dtype=fc.dtype)], dim=1)
        self.load_state_dict(state)


class ChimeraHeads(nn.Module):
    """Chimera's draft model (see the module docstring): trigram encoder, full-context encoder (one
    causal decoder layer with a KV cache of committed pairs), K residual decoding heads."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_size
        self.llama = cfg.llama()
        self.trigram = nn.Linear(3 * H, H, bias=False)
        self.fc = nn.Linear(2 * H, H, bias=False)
        self.layers = nn.ModuleList([LlamaDecoderLayer(self.llama, layer_idx=0)])
        self.rotary = LlamaRotaryEmbedding(self.llama)
        self.inputs = nn.ModuleList(nn.Linear(2 * H, H) for _ in range(cfg.num_heads))
        for lin in self.inputs:  # every head starts as the identity on f (the target's LM head)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.heads = head_blocks(cfg, res_block)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llama)

    @staticmethod
    def trigrams(embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings e_0..e_n [B, n+1, H] -> the trigram inputs of pairs 0..n-1,
        [e_{j-1}; e_j; e_{j+1}] [B, n, 3H] (e_{-1} = 0)."""
        before = torch.cat([torch.zeros_like(embeds[:, :1]), embeds[:, :-2]], dim=1)  # e_{j-1}
        return torch.cat([before, embeds[:, :-1], embeds[:, 1:]], dim=-1)

    def encode(self, features: torch.Tensor, trigrams: torch.Tensor, positions: torch.Tensor,
               cache: DynamicCache | None = None) -> torch.Tensor:
        """features [B, n, H] (f_j), trigrams [B, n, 3H] ([e_{j-1}; e_j; e_{j+1}]), positions [B, n]
        (j) -> c_j [B, n, H], causal over the cache and the n new pairs."""
        x = self.fc(torch.cat([self.trigram(trigrams), features], dim=-1))
        out = self.layers[0](x, attention_mask=head_mask(x, cache), position_ids=positions, past_key_values=cache,
                             use_cache=cache is not None, position_embeddings=self.rotary(x, positions))
        return out[0] if isinstance(out, tuple) else out

    def features(self, c: torch.Tensor, f: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """c [.., H] (the encoder's output at j), f [.., H] (the target's feature at j) -> the
        first `heads` (default all) heads' features [.., heads, H], head i for token j+2+i."""
        x = torch.cat([c, f], dim=-1)
        return torch.stack([self.heads[i](f + self.inputs[i](x)) for i in range(heads or self.cfg.num_heads)], dim=-2)

    def forward(self, features, trigrams, positions, lm_head, cache=None):
        """Teacher-forced: -> logits [B, n, K, V] (head i at j: token j+2+i)."""
        return lm_head(self.features(self.encode(features, trigrams, positions, cache), features))


class GlideHead(nn.Module):
    """GliDe's draft block (see the module docstring). Parameter names follow a Llama layer's
    (`input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`) plus the cross-attention
    (`cross_norm`, `cross_q`, `cross_o`, the last zero-initialised) and the final `norm`; the
    target's embeddings and LM head are shared, not stored."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.cfg = cfg
        self.llama = cfg.llama()
        H, heads = cfg.hidden_size, cfg.num_attention_heads
        self.head_dim = cfg.head_dim or H // heads
        self.input_layernorm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(self.llama, layer_idx=0)
        self.cross_norm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.cross_q = nn.Linear(H, heads * self.head_dim, bias=False)
        self.cross_o = nn.Linear(heads * self.head_dim, H, bias=False)
        nn.init.zeros_(self.cross_o.weight)
        self.post_attention_layernorm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(self.llama)
        self.norm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.rotary = LlamaRotaryEmbedding(self.llama)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llama)

    def attend(self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None = None,
               allow: torch.Tensor | None = None) -> torch.Tensor:
        """The self-attention half: embeds [B, n, H] (e_j), positions [B, n] -> the residual stream
        [B, n, H]. Causal over the cache and the n new tokens, or `allow` [n, past + n]."""
        a = self.self_attn(self.input_layernorm(embeds), position_embeddings=self.rotary(embeds, positions),
                           attention_mask=head_mask(embeds, cache, allow), past_key_values=cache, position_ids=positions,
                           use_cache=cache is not None)[0]
        return embeds + a

    def finish(self, r: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               see: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The cross-attention and MLP half: r [B, n, H], positions [B, n], the target's keys and
        values [B, Hkv, T, D] (rotated at their positions, as in its cache), see [B or 1, n, T]
        (True: the query may read that key), rope: (cos, sin) [B, n, D] of the target's own rotary
        embedding at `positions` (default: this block's, from the target's rope_theta) -> u
        [B, n, H]. A query that may read no key gets nothing from the cross-attention."""
        B, n, _ = r.shape
        heads, D = self.cfg.num_attention_heads, self.head_dim
        q = self.cross_q(self.cross_norm(r)).view(B, n, heads, D).transpose(1, 2)  # [B, heads, n, D]
        cos, sin = rope if rope is not None else self.rotary(r, positions)  # the query rotated at its position
        q = q * cos[:, None].to(q.dtype) + rotate_half(q) * sin[:, None].to(q.dtype)
        rep = heads // keys.shape[1]
        k, v = keys.repeat_interleave(rep, dim=1).to(q.dtype), values.repeat_interleave(rep, dim=1).to(q.dtype)
        if k.shape[-2] == 0:
            out = torch.zeros_like(q)
        else:
            mask = torch.zeros(see.shape, dtype=q.dtype, device=q.device).masked_fill(~see, torch.finfo(q.dtype).min)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
            out = out * see.any(-1)[:, None, :, None]  # no key to read: zero
        r = r + self.cross_o(out.transpose(1, 2).reshape(B, n, heads * D))
        return r + self.mlp(self.post_attention_layernorm(r))

    def forward(self, embeds, positions, keys, values, see, cache=None, allow=None, rope=None) -> torch.Tensor:
        """attend, then finish: embeds [B, n, H] -> u [B, n, H]."""
        return self.finish(self.attend(embeds, positions, cache, allow), positions, keys, values, see, rope)

    def logits(self, u: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        return lm_head(self.norm(u))


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer: attention over [input_layernorm(e); hidden_norm(g)] (2H -> H),
    then the MLP, with the residual stream starting at g (after the hidden norm when
    `norm_before_residual`). Parameter names are those of EAGLE-3 checkpoints (`midlayer.*`)."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        H, llama = cfg.hidden_size, cfg.llama()
        self.norm_before_residual = cfg.norm_before_residual
        self.input_layernorm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(llama, layer_idx=0)
        for name in ("q_proj", "k_proj", "v_proj"):  # their input is [e; g], twice the width
            old = getattr(self.self_attn, name)
            setattr(self.self_attn, name, nn.Linear(2 * H, old.out_features, bias=False))
        self.post_attention_layernorm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.mlp = LlamaMLP(llama)

    def forward(self, g, embeds, positions, position_embeddings, mask=None, cache=None):
        """g [B, n, H], embeds [B, n, H] -> u [B, n, H], the residual stream after the layer."""
        h = self.hidden_norm(g)
        residual = h if self.norm_before_residual else g
        x = torch.cat([self.input_layernorm(embeds), h], dim=-1)  # [B, n, 2H]
        a = self.self_attn(x, position_embeddings=position_embeddings, attention_mask=mask,
                           past_key_values=cache, position_ids=positions, use_cache=cache is not None)[0]
        residual = residual + a
        return residual + self.mlp(self.post_attention_layernorm(residual))


class Eagle3Head(nn.Module):
    """EAGLE-3 (see the module docstring): `fc` fuses the target's aux features, `midlayer`
    drafts, `norm` + `lm_head` give logits over the draft vocabulary, whose draft id i is target id
    i + d2t[i] (`d2t` offsets, `t2d` [V] the mask of drafted target ids, as in EAGLE-3 checkpoints).
    The target's embeddings are shared, not stored."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.cfg = cfg
        self.llama = cfg.llama()
        H, Vd = cfg.hidden_size, cfg.draft_vocab_size
        self.fc = nn.Linear(len(cfg.aux_layers) * cfg.target_hidden_size, H, bias=False)
        self.midlayer = Eagle3Layer(cfg)
        self.norm = LlamaRMSNorm(H, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(H, Vd, bias=False)
        self.register_buffer("d2t", torch.zeros(Vd, dtype=torch.long))  # [Vd] target id - draft id
        t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        t2d[:Vd] = True
        self.register_buffer("t2d", t2d)  # [V]
        self.rotary = LlamaRotaryEmbedding(self.llama)

    def set_vocab(self, token_ids: torch.Tensor) -> None:
        """Draft over these target ids (any order; stored ascending, as EAGLE-3 checkpoints do)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).unique(sorted=True)
        if ids.numel() != self.cfg.draft_vocab_size:
            raise DraftsmithError(f"eagle3: {ids.numel()} distinct draft token ids for a draft vocabulary of "
                                  f"{self.cfg.draft_vocab_size}")
        self.d2t.copy_(ids - torch.arange(ids.numel()))
        self.t2d.zero_()
        self.t2d[ids] = True

    def token_ids(self) -> torch.Tensor:
        """[Vd] the target id of every draft id."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llama)

    def combine(self, aux: torch.Tensor) -> torch.Tensor:
        """The target's aux features [.., 3*Ht] (aux_layers' inputs, concatenated in order) -> g [.., H]."""
        return self.fc(aux)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        """u [.., H] -> logits over the draft vocabulary [.., Vd]."""
        return self.lm_head(self.norm(u))

    def forward(self, g: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor,
                cache: DynamicCache | None = None, allow: torch.Tensor | None = None) -> torch.Tensor:
        """g [B, n, H] (fc of the target's features at t, or u_t from the previous draft step),
        embeds [B, n, H] (e_{t+1}), positions [B, n] (t) -> u_{t+1} [B, n, H]. Attention as
        EagleHead's: causal over the cache and the n new pairs, or `allow` [n, past + n]."""
        return self.midlayer(g, embeds, positions, self.rotary(g, positions), head_mask(g, cache, allow), cache)


MODULES = {"medusa": MedusaHeads, "hydra": HydraHeads, "eagle": EagleHead, "amphista": AmphistaHeads, "koala": KoalaHeads,
           "eagle3": Eagle3Head, "falcon": FalconHead, "fspad": FspadHead, "chimera": ChimeraHeads,
           "glide": GlideHead, "longspec": GlideHead}


def build_heads(cfg: HeadsConfig) -> nn.Module:
    return MODULES[cfg.kind](cfg)


def save_heads(module: nn.Module, folder: str | Path) -> Path:
    """`config.json` (HeadsConfig) + `model.safetensors` (the heads' own weights only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"draftsmith_heads": asdict(module.cfg)}
    if module.cfg.kind == "eagle":  # the same folder is an EAGLE draft checkpoint (a 1-layer Llama config)
        config = {**module.llama.to_dict(), "architectures": ["LlamaForCausalLM"], **config}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def load_heads(folder: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise DraftsmithError(f"{folder}: no draft heads here (expected config.json and model.safetensors written by "
                              "`draftsmith train heads`)")
    raw = json.loads(cfg_file.read_text())
    if "draftsmith_heads" not in raw:
        raise DraftsmithError(f"{cfg_file}: not a draftsmith heads config (no 'draftsmith_heads' entry)")
    module = build_heads(HeadsConfig(**raw["draftsmith_heads"]))
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return module.to(device=device, dtype=dtype or torch.float32).eval()
