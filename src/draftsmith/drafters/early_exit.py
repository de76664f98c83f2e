"""Early exit: the target drafts for itself with its first layers and a small trained adapter.

Kangaroo (Liu et al. 2024, arXiv 2404.18911): the target's first L layers (a shallow sub-network
of the target itself, so no second model) and a light adapter map the residual stream after layer
L toward the target's final hidden state; the target's own LM head turns it into q. The adapter
is Kangaroo's: one attention layer between two RMS norms (optionally a small SwiGLU MLP),

    a = x_L + Attn(Norm_in(x_L))            (attention over the adapter's own cache of x_L)
    h = Norm_out(a [+ MLP(Norm_mlp(a))])    ->  q = softmax(lm_head(h))

with the attention's output projection zero-initialised, so an untrained adapter is the naive
exit (the target's LM head on the layer-L state, through a norm the training initialises from the
target's final norm). It is trained by `draftsmith train early-exit` (forward KL to the target's
next-token distribution through the frozen LM head, optionally plus a regression toward the
target's final hidden state, as Kangaroo does; draftsmith.train.early_exit). One adapter folder
holds adapters for one or several exit layers.

Drafting (a chain): each propose first brings this row's shallow cache up to date with the
committed tokens (one forward of the new tokens through the first layers; draft tokens that were
accepted are reused when the exit did not change), then drafts autoregressively at exit L: shallow
forward of the last token -> adapter -> LM head -> next token, at most `k` deep. The shallow
layers have their own cache rows (`CausalLM.partial`): the loop's target cache is never touched.

Draft length:
- Kangaroo's early stop: stop once the drafter's top probability falls below `confidence`.
- `predictor=True` (SpecEE-style, Xu et al. 2025): a tiny logistic regression on the drafted
  position's q (top probability, entropy, top-1 minus top-2 margin), fitted by the training on
  held-out positions, predicts whether the target's argmax agrees; drafting stops once the
  chain's predicted probability of being accepted to its end (the product of those predictions)
  falls below `confidence`.
- `exit_layer="dynamic"` (DEL, Zarch et al. 2025): with adapters for several exits, every exit's
  adapter also runs on the committed tokens (their shallow states come out of the same catch-up
  forward), so each exit's prediction of every committed token is known: a "shadow" acceptance
  estimate alpha_L per exit and row (discounted counts, started from the training's held-out
  agreement). Each step picks the exit and the draft length that maximise expected tokens per unit
  of cost, E[tau](alpha_L, k) / (1 + c_catch + (k - 1) c_L), where c_L is a draft token's cost at
  exit L relative to one target step (weights read per token: L layers, the adapter and the LM
  head rows drafted over) and c_catch the catch-up forward's (to the deepest exit, every adapter).
  The confidence or predictor stop still applies within the chosen length. When no exit and
  length beats plain decoding (rate 1), the row drafts nothing for 16 steps, then probes (one
  catch-up over the tokens committed meanwhile, which also scores every exit on them, and a
  one-token draft).

Tokens are the argmax when greedy (q None: a deterministic proposal) and samples from q
(temperature, top-k, top-p applied to the adapter's logits) otherwise, q returned: lossless. The
stop rules read only the drafter's own q, never the target's.

Options: adapter (folder; default: the one shipped for the target, catalog.SHIPPED_HEADS kind
"early_exit"), exit_layer (an exit of the folder, "dynamic" for DEL; default: the folder's
default exit), k (longest draft, 6), confidence (0.3; 0 = off), predictor (False), vocab (draft
over the N most frequent tokens stored beside the adapter, as the draft heads do; 0 = the whole
vocabulary; default 8192), adaptive (False; a fixed exit's length chosen by the loop's policy from
the measured acceptance and the exit's cost, policy/length.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache

from ..cache import crop
from ..errors import DraftsmithError, IncompatibleDrafterError
from ..sampling import greedy, probs, sample
from ..types import Draft
from .base import DraftContext, DrafterBase, register
from .heads.vocab import SubsetLMHead, load_vocab

CONFIG_KEY = "draftsmith_early_exit"


# ----- the adapter -----------------------------------------------------------------------------
@dataclass
class AdapterConfig:
    """The adapters of one folder: one per exit layer, all of one shape."""

    hidden_size: int
    vocab_size: int
    target_layers: int  # the target's decoder layers; an exit L reads the residual stream after layer L
    exits: list[int]  # exit layers with an adapter, ascending
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int = 0  # 0: Kangaroo's adapter (attention only); > 0: plus a SwiGLU MLP
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    default_exit: int = 0  # 0: the first exit
    target: str = ""  # the target it was trained for (informative)
    held_out: dict = field(default_factory=dict)  # str(exit) -> held-out top-1 agreement with the target
    predictor: dict = field(default_factory=dict)  # str(exit) -> [bias, w_top, w_entropy, w_margin]
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        self.exits = sorted(int(e) for e in self.exits)
        if not self.exits or self.exits[0] < 1 or self.exits[-1] >= self.target_layers:
            raise DraftsmithError(f"early_exit: exit layers must lie in [1, {self.target_layers - 1}], got {self.exits}")
        self.default_exit = int(self.default_exit or self.exits[0])
        if self.default_exit not in self.exits:
            raise DraftsmithError(f"early_exit: default exit {self.default_exit} is not among the exits {self.exits}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise DraftsmithError("early_exit: attention heads must be a multiple of the key/value heads")

    @classmethod
    def for_target(cls, target_config, exits, **overrides) -> "AdapterConfig":
        """The target's attention shape (heads, key/value heads, head size, RoPE base, norm eps)."""
        c = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
        heads = int(c.num_attention_heads)
        rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        return cls(hidden_size=int(c.hidden_size), vocab_size=int(c.vocab_size), target_layers=int(c.num_hidden_layers),
                   exits=list(exits), num_attention_heads=heads,
                   num_key_value_heads=int(getattr(c, "num_key_value_heads", None) or heads),
                   head_dim=int(getattr(c, "head_dim", None) or c.hidden_size // heads), rope_theta=float(rope),
                   rms_norm_eps=float(getattr(c, "rms_norm_eps", 1e-5)), **overrides)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (the rotate-half layout): x [B, heads, n, D], positions [B, n]."""
    D = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D))  # [D/2]
    angles = positions[:, None, :, None].float() * inv  # [B, 1, n, D/2]
    cos, sin = angles.cos().repeat(1, 1, 1, 2).to(x.dtype), angles.sin().repeat(1, 1, 1, 2).to(x.dtype)
    half = torch.cat([-x[..., D // 2:], x[..., : D // 2]], dim=-1)
    return x * cos + half * sin


class ExitAdapter(nn.Module):
    """Kangaroo's adapter for one exit: x_L [B, n, H] -> the hidden state the LM head reads."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        H, D = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.in_norm = RMSNorm(H, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(H, cfg.num_attention_heads * D, bias=False)
        self.k_proj = nn.Linear(H, cfg.num_key_value_heads * D, bias=False)
        self.v_proj = nn.Linear(H, cfg.num_key_value_heads * D, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * D, H, bias=False)
        nn.init.normal_(self.q_proj.weight, std=0.02)
        nn.init.normal_(self.k_proj.weight, std=0.02)
        nn.init.normal_(self.v_proj.weight, std=0.02)
        nn.init.zeros_(self.o_proj.weight)  # the adapter starts as the naive exit: out_norm(x_L)
        if cfg.intermediate_size:
            self.mlp_norm = RMSNorm(H, cfg.rms_norm_eps)
            self.gate_proj = nn.Linear(H, cfg.intermediate_size, bias=False)
            self.up_proj = nn.Linear(H, cfg.intermediate_size, bias=False)
            self.down_proj = nn.Linear(cfg.intermediate_size, H, bias=False)
            nn.init.zeros_(self.down_proj.weight)
        self.out_norm = RMSNorm(H, cfg.rms_norm_eps)

    def new_cache(self) -> DynamicCache:
        return DynamicCache()

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        """x [B, n, H] (the residual stream after the exit layer), positions [B, n] -> [B, n, H]
        (normed, for the LM head). Causal attention over `cache` (appended to) and the n new
        positions."""
        B, n, _ = x.shape
        c = self.cfg
        h = self.in_norm(x)
        q = rope(self.q_proj(h).view(B, n, c.num_attention_heads, c.head_dim).transpose(1, 2), positions, c.rope_theta)
        k = rope(self.k_proj(h).view(B, n, c.num_key_value_heads, c.head_dim).transpose(1, 2), positions, c.rope_theta)
        v = self.v_proj(h).view(B, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)  # [B, kv, n, D]
        past = cache.get_seq_length() if cache is not None else 0
        if cache is not None:
            k, v = cache.update(k, v, 0)  # [B, kv, past + n, D]
        mask, causal = None, False
        if n > 1 and past:
            mask = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(past)  # [n, past + n]
        elif n > 1:
            causal = True
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=c.num_key_value_heads != c.num_attention_heads)  # [B, heads, n, D]
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, n, -1))
        if c.intermediate_size:
            m = self.mlp_norm(x)
            x = x + self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))
        return self.out_norm(x)


class ExitAdapters(nn.Module):
    """The adapters of a folder, by exit layer."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        self.adapters = nn.ModuleDict({str(e): ExitAdapter(cfg) for e in cfg.exits})

    def __getitem__(self, exit_layer: int) -> ExitAdapter:
        return self.adapters[str(exit_layer)]

    def num_parameters(self, exit_layer: int) -> int:
        return sum(p.numel() for p in self[exit_layer].parameters())


def save_adapters(module: ExitAdapters, folder: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """`config.json` ({"draftsmith_early_exit": AdapterConfig}) + `model.safetensors` (the
    adapters' weights, `exit{L}.*`, stored in `dtype`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({CONFIG_KEY: asdict(module.cfg)}, indent=1))
    state = {f"exit{e}.{k}": v.detach().to(dtype).contiguous()
             for e, adapter in module.adapters.items() for k, v in adapter.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def read_config(folder: str | Path) -> AdapterConfig:
    cfg_file = Path(folder) / "config.json"
    if not cfg_file.is_file():
        raise DraftsmithError(f"{folder}: no early-exit adapter here (expected config.json and model.safetensors "
                              "written by `draftsmith train early-exit`)")
    raw = json.loads(cfg_file.read_text())
    if CONFIG_KEY not in raw:
        raise DraftsmithError(f"{cfg_file}: not an early-exit adapter config (no {CONFIG_KEY!r} entry)")
    return AdapterConfig(**raw[CONFIG_KEY])


def load_adapters(folder: str | Path, dtype: torch.dtype | None = None,
                  device: str | torch.device = "cpu") -> ExitAdapters:
    folder = Path(folder)
    module = ExitAdapters(read_config(folder))
    state = load_file(str(folder / "model.safetensors"))
    for e, adapter in module.adapters.items():
        mine = {k[len(f"exit{e}."):]: v.float() for k, v in state.items() if k.startswith(f"exit{e}.")}
        adapter.load_state_dict(mine)
    return module.to(device=device, dtype=dtype or torch.float32).eval()


def draft_token_cost(target, exit_layer: int, adapter_params: int, head_rows: int) -> float:
    """One draft token's cost at `exit_layer` in target steps: the weights it reads (the first
    `exit_layer` layers, the adapter, `head_rows` rows of the LM head) over the weights one target
    token reads (decoding is memory-bound; a fixed ratio keeps runs reproducible)."""
    from .draft_model import _weights_read_per_token

    total = _weights_read_per_token(target)
    head = target.model.get_output_embeddings().weight  # [V, H]
    cfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    per_layer = (total - head.numel()) / int(cfg.num_hidden_layers)
    return (exit_layer * per_layer + adapter_params + head_rows * head.shape[1]) / total


# ----- draft-length rules ------------------------------------------------------------------------
def q_features(logits: torch.Tensor) -> torch.Tensor:
    """The predictor's features of the drafter's distribution: logits [.., V] -> [.., 3]
    (top probability, entropy in nats, top-1 minus top-2 probability), at temperature 1."""
    logp = logits.float().log_softmax(-1)
    p = logp.exp()
    top2 = p.topk(2, dim=-1).values  # [.., 2]
    entropy = -(p * logp.clamp(min=-1e4)).sum(-1)
    return torch.stack([top2[..., 0], entropy, top2[..., 0] - top2[..., 1]], dim=-1)


def predict_accept(weights: list[float], feats: torch.Tensor) -> torch.Tensor:
    """The logistic predictor: [bias, w_1..w_3] and features [.., 3] -> P(the target agrees) [..]."""
    w = torch.tensor(weights, dtype=torch.float32, device=feats.device)
    return torch.sigmoid(w[0] + feats.float() @ w[1:])


def expected_tokens(alpha: float, k: int) -> float:
    """E[tau] of a k-token chain with per-token acceptance alpha (bonus included)."""
    alpha = min(max(alpha, 0.0), 0.999)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def choose_exit(alphas: dict[int, float], costs: dict[int, float], catch_up: float, cap: int,
                allow_none: bool = False) -> tuple[int, int]:
    """DEL's choice: (exit, draft length 1..cap) maximising E[tau](alpha_L, k) / (1 + catch_up +
    (k - 1) c_L). `catch_up`: the catch-up forward's cost in target steps (paid once per step,
    whatever the exit), `costs`: a draft token's at each exit. Ties go to the shallower exit.
    `allow_none`: length 0 (plain decoding: one token per target step) when no draft beats it."""
    best, best_rate = (min(alphas), 1), -1.0
    if allow_none:
        best, best_rate = (min(alphas), 0), 1.0
    for exit_layer in sorted(alphas):
        for k in range(1, cap + 1):
            rate = expected_tokens(alphas[exit_layer], k) / (1 + catch_up + (k - 1) * costs[exit_layer])
            if rate > best_rate + 1e-12:
                best, best_rate = (exit_layer, k), rate
    return best


class Shadow:
    """DEL's shadow acceptance estimates of one row: per exit, discounted counts of how often that
    exit's argmax equalled the committed token (prior: `prior` with the weight of `strength` trials)."""

    def __init__(self, prior: dict[int, float], decay: float = 0.95, strength: float = 4.0):
        self.decay = decay
        self.hits = {e: strength * a for e, a in prior.items()}
        self.trials = {e: strength for e in prior}

    def update(self, exit_layer: int, agreed: int, count: int) -> None:
        d = self.decay ** count
        self.hits[exit_layer] = self.hits[exit_layer] * d + agreed
        self.trials[exit_layer] = self.trials[exit_layer] * d + count

    def alphas(self) -> dict[int, float]:
        return {e: self.hits[e] / max(self.trials[e], 1e-9) for e in self.hits}


# ----- the drafter -------------------------------------------------------------------------------
def shipped_adapter_dir(target) -> Path | None:
    """The adapter folder shipped for this target (catalog.SHIPPED_HEADS, kind "early_exit")."""
    from ..catalog import SHIPPED_HEADS, packs_root

    folder = SHIPPED_HEADS.get((target.name, "early_exit"))
    return packs_root() / folder if folder else None


@register
class EarlyExitDrafter(DrafterBase):
    """Kangaroo self-speculation from the target's first layers (module docstring)."""

    name: ClassVar[str] = "early_exit"

    def __init__(self, adapter: str | None = None, exit_layer: int | str | None = None, k: int = 6,
                 confidence: float = 0.3, predictor: bool = False, vocab: int = 8192, adaptive: bool = False):
        """adapter: a folder written by `draftsmith train early-exit` (default: the one shipped for
        the target). exit_layer: one of its exits, or "dynamic" (DEL: per step, the exit and length
        of best expected tokens per cost from shadow acceptance estimates); default: the folder's
        default exit. k: longest draft. confidence: stop drafting once the top probability falls
        below it (with `predictor`: once the chain's predicted acceptance falls below it); 0 = off.
        predictor: SpecEE-style stop on the folder's logistic predictor instead of the top
        probability. vocab: draft over the N most frequent tokens stored beside the adapter (0 =
        the whole vocabulary). adaptive: a fixed exit's draft length chosen each step by the loop
        from the measured acceptance and the exit's cost (policy/length.py; 0 when drafting does
        not pay); "dynamic" chooses its own."""
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise DraftsmithError(f"early_exit: k (draft length) must be an integer >= 1, got {k!r}")
        if not (isinstance(confidence, (int, float)) and 0.0 <= confidence < 1.0):
            raise DraftsmithError(f"early_exit: confidence must be in [0, 1), got {confidence!r}")
        if not (isinstance(vocab, int) and vocab >= 0):
            raise DraftsmithError(f"early_exit: vocab must be an integer >= 0 (0 = the whole vocabulary), got {vocab!r}")
        dynamic = isinstance(exit_layer, str) and exit_layer.lower() == "dynamic"
        if exit_layer is not None and not dynamic and not (isinstance(exit_layer, int) and not isinstance(exit_layer, bool)):
            raise DraftsmithError(f"early_exit: exit_layer must be a layer number or 'dynamic', got {exit_layer!r}")
        self.adapter_spec, self.exit_layer, self.dynamic = adapter, None if dynamic else exit_layer, dynamic
        self.k, self.confidence, self.use_predictor, self.vocab = k, float(confidence), bool(predictor), vocab
        if not isinstance(adaptive, bool) or (adaptive and dynamic):
            raise DraftsmithError("early_exit: adaptive is true or false, for a fixed exit (exit_layer=dynamic chooses "
                                  f"its own draft length), got {adaptive!r}")
        self.adaptive = adaptive
        self.probe_every = 16
        self.module: ExitAdapters | None = None
        self._reset_row()

    def _reset_row(self) -> None:
        self.caches: list = []  # per segment of layers: its SubsetCache
        self.adapter_caches: dict[int, DynamicCache] = {}
        self.fed = 0  # committed tokens every cache holds
        self.tail: list[int] = []  # draft tokens fed beyond `fed` (fixed exit: reused when accepted)
        self.pending: dict[int, tuple[int, int]] = {}  # exit -> (position, its argmax for the token there): shadow scoring
        self.shadow: Shadow | None = None
        self.chosen: list[tuple[int, int]] = []  # (exit, length) chosen per step (dynamic), for reports
        self.quiet = 0  # dynamic: plain steps since DEL last found no draft worth its cost (0: drafting)

    # ----- once per decoder --------------------------------------------------------------------
    def bind(self, target) -> None:
        folder = Path(self.adapter_spec).expanduser() if self.adapter_spec else shipped_adapter_dir(target)
        if folder is None:
            raise IncompatibleDrafterError(
                f"no early-exit adapter ships for target {target.name!r}: train one with `draftsmith train early-exit "
                f"--target {target.name} --out DIR`, then pass adapter=DIR")
        module = load_adapters(folder, dtype=target.dtype, device=target.device)
        cfg = module.cfg
        n_layers = target.num_layers
        if (cfg.hidden_size, cfg.vocab_size, cfg.target_layers) != (target.config.hidden_size, target.vocab_size, n_layers):
            raise IncompatibleDrafterError(
                f"{folder}: adapters for hidden size {cfg.hidden_size} / vocabulary {cfg.vocab_size} / {cfg.target_layers} "
                f"layers, but target {target.name!r} has {target.config.hidden_size} / {target.vocab_size} / {n_layers}")
        if self.dynamic:
            exits = list(cfg.exits)
        else:
            chosen = cfg.default_exit if self.exit_layer is None else self.exit_layer
            if chosen not in cfg.exits:
                raise DraftsmithError(f"early_exit: {folder} has adapters for exits {cfg.exits}, not {chosen}")
            exits = [chosen]
        if self.use_predictor:
            missing = [e for e in exits if str(e) not in cfg.predictor]
            if missing:
                raise DraftsmithError(f"early_exit: predictor=true, but {folder} has no stop predictor for exits {missing} "
                                      "(`draftsmith train early-exit` fits one)")
        self.module, self.exits = module, exits
        starts = [0] + exits[:-1]
        self.segments = [target.partial(range(a, b)) for a, b in zip(starts, exits)]  # layers [a, b): exit b
        self.lm_head = target.model.get_output_embeddings()
        ids = load_vocab(folder, self.vocab) if self.vocab else None
        if ids is not None and len(ids) < target.vocab_size:
            self.lm_head = SubsetLMHead(self.lm_head, ids)
        rows = self.lm_head.weight.shape[0]
        self.costs = {e: draft_token_cost(target, e, module.num_parameters(e), rows) for e in exits}
        # the catch-up forward: to the deepest exit in use, through every adapter in use and its head rows
        extra = sum(module.num_parameters(e) + rows * cfg.hidden_size for e in exits[:-1])
        self.catch_up = self.costs[exits[-1]] + extra / _target_weights(target)
        self.cost_ratio = self.costs[exits[-1]] if not self.dynamic else min(self.costs.values())
        self.prior = {e: float(cfg.held_out.get(str(e), 0.5)) for e in exits}
        self.device = target.device

    def fork(self) -> "EarlyExitDrafter":
        other = super().fork()
        other._reset_row()
        return other

    # ----- per row --------------------------------------------------------------------------------
    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self._reset_row()
        self.caches = [seg.new_cache() for seg in self.segments]
        self.adapter_caches = {e: self.module[e].new_cache() for e in self.exits}
        self.shadow = Shadow(self.prior)
        if len(prompt_ids) > 1:
            with torch.inference_mode():
                self._feed(prompt_ids[:-1], 0, depth=len(self.exits))
            self.fed = len(prompt_ids) - 1

    def _feed(self, ids: list[int], start: int, depth: int) -> dict[int, torch.Tensor]:
        """Append `ids` at positions start.. to the caches of the first `depth` segments and their
        adapters -> each of those exits' adapter output [1, n, H]."""
        positions = torch.arange(start, start + len(ids), device=self.device)[None]  # [1, n]
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, n]
        h, outs = None, {}
        for seg, cache, e in zip(self.segments[:depth], self.caches, self.exits):
            h = seg.step(tokens if h is None else None, positions, cache, head=False, hidden_in=h).hidden  # [1, n, H]
            outs[e] = self.module[e](h, positions, self.adapter_caches[e])
        return outs

    def _rollback(self, keep: int) -> None:
        for cache in self.caches:
            if cache.get_seq_length() > keep:
                crop(cache, keep)
        for cache in self.adapter_caches.values():
            if cache.get_seq_length() > keep:
                crop(cache, keep)

    def _catch_up(self, ids: list[int]) -> dict[int, torch.Tensor]:
        """Bring every cache to the committed tokens; -> each exit's logits [m, V] at the fed
        positions (the last row: the next token's). Scores the shadow estimates (dynamic)."""
        n = len(ids)
        keep = self.fed
        if not self.dynamic:  # draft tokens fed at the one exit and accepted are valid entries
            for tok, committed in zip(self.tail, ids[self.fed:]):
                if tok != committed:
                    break
                keep += 1
        keep = min(keep, n - 1)  # always feed the newest token: its output drafts the next one
        self._rollback(keep)
        outs = self._feed(ids[keep:], keep, depth=len(self.exits))
        self.fed, self.tail = n, []
        logits = {e: self.lm_head(out[0]) for e, out in outs.items()}  # [m, V] each
        if self.dynamic:
            known = torch.tensor(ids[keep + 1:], dtype=torch.long, device=self.device)  # tokens the outputs predicted
            for e, lg in logits.items():
                pred = greedy(lg)  # [m]
                agreed = int((pred[:-1] == known).sum()) if len(known) else 0
                count = len(known)
                if e in self.pending and self.pending[e][0] == keep:
                    agreed, count = agreed + int(self.pending[e][1] == ids[keep]), count + 1
                self.shadow.update(e, agreed, count)
                self.pending[e] = (n, int(pred[-1]))
        return logits

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        cap = min(self.k, ctx.max_tokens)
        if cap <= 0 or not ctx.ids:
            return Draft.empty()
        if self.quiet:  # DEL found no draft worth its cost: plain steps (the caches catch up at the probe)
            self.quiet += 1
            if self.quiet <= self.probe_every:
                return Draft.empty()
        logits = self._catch_up(ctx.ids)
        if self.dynamic:
            exit_layer, length = choose_exit(self.shadow.alphas(), self.costs, self.catch_up, cap, allow_none=True)
            self.quiet = 1 if length == 0 else 0  # drafting does not pay: plain steps, then a probe
            cap = max(length, 1)  # this step (a probe when 0) drafts at least one token: its shadows were paid
            self.chosen.append((exit_layer, cap))
        else:
            exit_layer = self.exits[0]
        depth = self.exits.index(exit_layer) + 1
        weights = self.module.cfg.predictor.get(str(exit_layer)) if self.use_predictor else None
        row = logits[exit_layer][-1]  # [V]
        n = len(ctx.ids)
        tokens, qs, chain = [], [], 1.0
        for i in range(cap):
            if i:
                out = self._feed([tokens[-1]], n + i - 1, depth)[exit_layer]
                self.tail.append(tokens[-1])
                row = self.lm_head(out[0, -1])  # [V]
            if ctx.params.greedy:
                tokens.append(int(greedy(row)))
            else:
                q = probs(row[None], ctx.params)  # [1, V]
                qs.append(q[0])
                tokens.append(int(sample(q, ctx.generator)))
            if weights is not None:
                chain *= float(predict_accept(weights, q_features(row)))
                if chain < self.confidence:
                    break
            elif self.confidence and float(row.float().softmax(-1).max()) < self.confidence:
                break  # Kangaroo's early stop: the shallow exit is unsure
        q = torch.stack(qs)[None] if qs else None  # [1, N, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)


def _target_weights(target) -> int:
    from .draft_model import _weights_read_per_token

    return _weights_read_per_token(target)
