"""Relaxed acceptance over latent-proximity groups, in the style of LANTERN (Jang et al., ICLR
2025, for visual autoregressive models): lossy.

A draft token x stands for its group A(x): x and its `k` nearest tokens by cosine similarity of
the target's output embeddings (lm_head rows; computed once per token and model, cached). The
group lends x the target's mass of its members, nearest first, while the mass borrowed stays
within `delta` (LANTERN's bound on the total variation between p and the relaxed distribution,
here exactly the borrowed mass):

    p~(x) = p(x) + sum of p(y) over the nearest neighbours y of x, the longest prefix with sum <= delta

    temperature 0:  accept x when p~(x) >= max_y p(y)     (x's group outweighs the target's top token;
                                                           p = softmax(logits), see lossy.py)
    temperature>0:  accept x with probability min(1, p~(x) / q~(x)), q~ the drafter's q summed over
                    the same group (1 for a deterministic draft); on a chain's rejection the bonus is
                    drawn from max(0, p - q) with x's group removed (p with the group removed when q is
                    None), else from p

`delta = 0` is greedy / rejection verification again. The rule needs the target's output
embeddings: `bind(target)` (draftsmith eval and bench do it), `model=NAME_OR_FOLDER` (read from
its safetensors without loading the model), or `embeddings=` a [V, H] tensor. The loop does not
yet hand verifiers the target, so `draftsmith generate --verifier relaxed` needs `model=`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..sampling import sample, uniform
from ..types import SamplingParams
from .base import register_verifier
from .lossy import QUALITY_REPORT, LossyVerifier

EMBEDDING_KEYS = ("lm_head.weight", "model.embed_tokens.weight", "embed_tokens.weight",
                  "transformer.wte.weight", "model.language_model.embed_tokens.weight")


def output_embeddings(model: str) -> torch.Tensor:
    """[V, H] the output embeddings (the LM head, or the tied input embeddings) of a pack name or a
    Hugging Face folder, read from its safetensors files without building the model."""
    from safetensors import safe_open

    from ..models import resolve_model

    folder = Path(resolve_model(model, progress=False))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise DraftsmithError(f"relaxed: no safetensors files in {folder} (model {model!r})")
    tied = True
    config = folder / "config.json"
    if config.is_file():
        tied = bool(json.loads(config.read_text()).get("tie_word_embeddings", True))
    keys = EMBEDDING_KEYS if not tied else EMBEDDING_KEYS[1:] + EMBEDDING_KEYS[:1]
    for key in keys:
        for f in files:
            with safe_open(str(f), "pt") as sf:
                if key in sf.keys():
                    return sf.get_tensor(key).float()
    raise DraftsmithError(f"relaxed: found none of {', '.join(EMBEDDING_KEYS)} in {folder}")


class Neighbours:
    """The k nearest tokens of each token by cosine similarity of [V, H] embeddings, computed for a
    token the first time it is asked for (one [n, H] x [H, V] product per batch of new tokens) and
    kept: a token's neighbours cost one product per model, never per step."""

    def __init__(self, embeddings: torch.Tensor, k: int):
        e = embeddings.detach().float()
        self.unit = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [V, H]
        self.k = min(k, e.shape[0] - 1)
        self.table = torch.full((e.shape[0], self.k), -1, dtype=torch.long, device=e.device)  # [V, k]
        self.known = torch.zeros(e.shape[0], dtype=torch.bool, device=e.device)  # [V]

    @property
    def vocab(self) -> int:
        return self.unit.shape[0]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] token ids -> [N, k] their neighbours, nearest first (never the token itself)."""
        ids = ids.to(self.table.device)
        new = ids[~self.known[ids]].unique()
        if new.numel() and self.k:
            sim = self.unit[new] @ self.unit.T  # [n, V]
            sim[torch.arange(new.numel(), device=sim.device), new] = -float("inf")  # not itself
            self.table[new] = sim.topk(self.k, dim=-1).indices
            self.known[new] = True
        return self.table[ids]


@register_verifier
class RelaxedVerifier(LossyVerifier):
    name: ClassVar[str] = "relaxed"
    quality_note: ClassVar[str | None] = (  # measured: benchmarks/smollm2-135m-lossy-quality
        "on smollm2-135m (bf16, greedy, ngram drafts, 3 GSM8K + 3 HumanEval cases) its text kept 0.80-0.85 "
        "difflib similarity to lossless decoding; an accuracy loss was not resolvable there (0/3 for every "
        "method, lossless included); quality not established, see " + QUALITY_REPORT)

    def __init__(self, k: int = 8, delta: float = 0.2, model: str | None = None,
                 embeddings: torch.Tensor | None = None):
        """k: neighbours per group (LANTERN's k); delta: the most target mass a group may lend its
        token (LANTERN's total-variation bound); model / embeddings: where the output embeddings
        come from when `bind(target)` is not called."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise DraftsmithError(f"relaxed: k must be an integer >= 0, got {k!r}")
        if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not 0 <= delta <= 1:
            raise DraftsmithError(f"relaxed: delta must be a number in [0, 1], got {delta!r}")
        self.k, self.delta, self.model = k, float(delta), model
        self._neighbours: Neighbours | None = None
        self._source = None  # what the table was built from (a weight tensor or a model name)
        self._given = embeddings is not None  # a codebook of the user's (LANTERN: the image tokenizer's latents)
        if embeddings is not None:
            self._neighbours, self._source = Neighbours(embeddings, k), embeddings
        super().__init__()

    def bind(self, target) -> "RelaxedVerifier":
        """Take the target's output embeddings (once per model: binding the same target again keeps the table).
        Embeddings given to the constructor are kept: they say which tokens are close (LANTERN groups by the
        image tokenizer's latents, which the target's LM head need not reflect)."""
        if self._given:
            return self
        model = getattr(target, "model", target)
        weight = model.get_output_embeddings().weight
        if self._source is not weight:
            self._neighbours, self._source = Neighbours(weight, self.k), weight
        return self

    def neighbours(self, vocab: int) -> Neighbours:
        if self._neighbours is None:
            if self.model is None:
                raise DraftsmithError("verifier 'relaxed' needs the target's output embeddings: use it through "
                                      "draftsmith eval or bench (they bind it), give relaxed:model=NAME_OR_FOLDER, "
                                      "or call .bind(target) on an instance")
            self._neighbours, self._source = Neighbours(output_embeddings(self.model), self.k), self.model
        if self._neighbours.vocab != vocab:
            raise DraftsmithError(f"relaxed: the embeddings have {self._neighbours.vocab} rows, the target's logits "
                                  f"{vocab} tokens: bind the verifier to this target")
        return self._neighbours

    def groups(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N], p [N, V] -> (p~(x) [N], members [N, k] bool: which neighbours lend mass)."""
        nb = self.neighbours(p.shape[-1])(x).to(p.device)  # [N, k]
        lent = p.gather(-1, nb).cumsum(-1)  # [N, k] mass borrowed by taking the first j neighbours
        members = lent <= self.delta + 1e-7  # a prefix: the cumulative sum only grows
        borrowed = torch.where(members, lent, torch.zeros_like(lent)).amax(-1) if nb.shape[-1] else \
            torch.zeros(x.shape, device=p.device)
        return p.gather(-1, x.unsqueeze(-1)).squeeze(-1) + borrowed, members

    def accept(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, params: SamplingParams,
               generator: torch.Generator | None) -> torch.Tensor:
        p_group, members = self.groups(x, p)
        if params.greedy:
            return (p_group >= p.amax(-1)) | (x == p.argmax(-1))
        if q is None:
            q_group = torch.ones_like(p_group)
        else:
            nb = self.neighbours(p.shape[-1])(x).to(p.device)
            q_x = q.gather(-1, x.unsqueeze(-1)).squeeze(-1)
            q_group = q_x + (q.gather(-1, nb) * members).sum(-1)
        r = uniform(p_group.shape, generator, p_group.device)
        return r * q_group < p_group

    def bonus(self, p: torch.Tensor, logits: torch.Tensor, rejected: int | None, q: torch.Tensor | None,
              params: SamplingParams, generator: torch.Generator | None) -> int:
        if params.greedy or rejected is None:
            return super().bonus(p, logits, rejected, q, params, generator)
        x = torch.tensor([rejected], device=p.device)
        _, members = self.groups(x, p.unsqueeze(0))
        group = torch.cat([x, self.neighbours(p.shape[-1])(x).to(p.device)[0][members[0]]])
        residual = p if q is None else (p - q).clamp_min(0.0)
        residual = residual.clone()
        residual[group] = 0.0
        if float(residual.sum()) <= 0:
            residual = p
        return int(sample(residual.unsqueeze(0), generator)[0])
