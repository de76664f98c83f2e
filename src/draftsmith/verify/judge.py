"""Judge decoding (Bachmann et al., ICLR 2025, arXiv 2501.19309): lossy.

Standard verification refuses a draft token the target would not have chosen itself, even when
the token is fine ("So the answer" for "The answer"). Judge decoding adds a small trained head on
the target's own embedding of each draft token, computed in the same verification forward: the
target has read the draft token, and its last hidden state there says whether it "minds" it.

    judge(i)  = sigmoid(w . h_i + v log p(x_i) + b)
                h_i [H] the target's last hidden state at draft node i (the paper's input), p(x_i)
                the target's probability of the token before it (criterion_probs: softmax(logits)
                at temperature 0, the request's p otherwise); a head trained without it has no v
    accept i  = (the standard rule accepts i) or judge(i) >= threshold

    temperature 0:  the standard rule is greedy (x_i = argmax p)
    temperature>0:  the standard rule is rejection sampling's test (u < p(x_i) / q(x_i)); on a
                    chain's rejection the bonus comes from the residual max(0, p - q), as there

The first node both refuse ends a chain; a tree keeps its longest accepted root path (lossy.py).
The bonus is the target's own next token after the last accepted node.

The head is a folder written by `draftsmith train judge` (`judge.safetensors`: weight [H] or
[H + 1], bias [1]; `judge.json`: threshold, hidden size, inputs, how it was trained) or the one shipped for the target
(catalog.SHIPPED_HEADS, kind "judge"). The paper labels mismatched draft tokens as correct or
wrong by hand or with an LLM; draftsmith's labels are made by the target itself (train/judge.py:
a mismatched token is "acceptable" when the target, continuing greedily after it, rejoins its own
answer within a few tokens). The rule needs the target's hidden states, which the loop hands any
verifier with `needs_hidden_states` (decode/loop.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..sampling import sample, uniform
from ..types import SamplingParams
from .base import register_verifier
from .lossy import LossyVerifier

HEAD_FILE, CONFIG_FILE = "judge.safetensors", "judge.json"


def shipped_judge_dir(target) -> Path | None:
    """The judge head shipped for this target (catalog.SHIPPED_HEADS, kind "judge"), if any."""
    from ..catalog import SHIPPED_HEADS, packs_root

    folder = SHIPPED_HEADS.get((getattr(target, "name", None), "judge"))
    return packs_root() / folder if folder else None


def load_judge(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(weight [H], bias [1], config) of a judge head folder; a clear error for anything else."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / HEAD_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise DraftsmithError(f"judge: {folder} is not a judge head folder (it needs {HEAD_FILE} and {CONFIG_FILE}; "
                              "make one with `draftsmith train judge`)")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        tensors = load_file(str(folder / HEAD_FILE))
        weight, bias = tensors["weight"].float(), tensors["bias"].float().reshape(1)
    except Exception as exc:  # a damaged or foreign file: say which
        raise DraftsmithError(f"judge: cannot read the head in {folder}: {exc}") from exc
    inputs = config.get("inputs", ["hidden"])
    if inputs not in (["hidden"], ["hidden", "log_p"]):
        raise DraftsmithError(f"judge: the head in {folder} reads {inputs!r}; this version reads ['hidden'] or "
                              "['hidden', 'log_p']")
    width = (config.get("hidden_size") or 0) + (len(inputs) - 1)
    if weight.dim() != 1 or weight.shape[0] != width:
        raise DraftsmithError(f"judge: the head in {folder} has weight {tuple(weight.shape)}, its config says "
                              f"{width} inputs (hidden size {config.get('hidden_size')}, {inputs})")
    return weight, bias, config


@register_verifier
class JudgeVerifier(LossyVerifier):
    name: ClassVar[str] = "judge"
    needs_hidden_states: ClassVar[bool] = True
    quality_note: ClassVar[str | None] = (  # measured: benchmarks/smollm2-135m-judge-quality
        "on smollm2-135m (bf16, greedy, draft-model drafts, 76 GSM8K + 75 HumanEval cases) the shipped head at "
        "its threshold kept lossless decoding's scores (GSM8K 6/76, HumanEval 9/75, as lossless), but at "
        "threshold=0.6 it LOST 5.3 points on both (GSM8K 2/76, HumanEval 5/75) for 1.57-1.70x against "
        "1.32-1.40x; see benchmarks/smollm2-135m-judge-quality/report.md")

    def __init__(self, head: str | None = None, threshold: float | None = None):
        """head: a folder from `draftsmith train judge` (default: the head shipped for the target).
        threshold: accept a refused token when the judge's probability is at least this (default:
        the head's own, chosen at training for a precision target; 1 = never, plain verification)."""
        if threshold is not None and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
                                      or not 0.0 <= threshold <= 1.0):
            raise DraftsmithError(f"judge: threshold must be a number in [0, 1], got {threshold!r}")
        if head is not None and not isinstance(head, str):
            raise DraftsmithError(f"judge: head must be a folder path, got {head!r}")
        self.head, self.threshold = head, None if threshold is None else float(threshold)
        self.weight = self.bias = None
        self.log_p = False
        super().__init__()

    def bind(self, target) -> "JudgeVerifier":
        folder = self.head or shipped_judge_dir(target)
        if folder is None:
            raise DraftsmithError(f"judge: no judge head is shipped for {getattr(target, 'name', target)!r}; "
                                  "train one (`draftsmith train judge`) and pass head=FOLDER")
        weight, bias, config = load_judge(folder)
        hidden = target.config.hidden_size
        if config.get("hidden_size") != hidden:
            raise DraftsmithError(f"judge: the head in {folder} reads hidden states of size {config.get('hidden_size')}, "
                                  f"the target's are {hidden}: it was trained for another model")
        self.log_p = "log_p" in config.get("inputs", ["hidden"])
        self.weight, self.bias = weight.to(target.device), bias.to(target.device)
        if self.threshold is None:
            self.threshold = float(config.get("threshold", 0.5))
        return self

    def scores(self, hidden: torch.Tensor, p_x: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., H] the target's last hidden states at the tokens, p_x [...] the target's
        probability of each token (a head with the log_p input reads it) -> [...] the judge's
        probability that the token is acceptable."""
        if self.weight is None:
            raise DraftsmithError("judge: the rule was not bound to a target (the decoding loop binds it; "
                                  "call bind(target) when verifying by hand)")
        H = hidden.shape[-1]
        z = hidden.float() @ self.weight[:H] + self.bias
        if self.log_p:
            if p_x is None:
                raise DraftsmithError("judge: this head also reads the target's probability of each token (p_x)")
            z = z + p_x.float().clamp_min(1e-9).log() * self.weight[H]
        return torch.sigmoid(z)

    def accept(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, params: SamplingParams,
               generator: torch.Generator | None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """x [N], p [N, V], q [N, V] or None, hidden [N, H] the target's state at each node."""
        if hidden is None:
            raise DraftsmithError("judge: the target's hidden states are missing (the loop hands them to a "
                                  "verifier with needs_hidden_states; pass hidden= when verifying by hand)")
        p_x = p.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # [N]
        judged = self.scores(hidden, p_x) >= self.threshold  # [N]
        if params.greedy:
            return judged | (x == p.argmax(-1))
        q_x = torch.ones_like(p_x) if q is None else q.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        return judged | (uniform(p_x.shape, generator, p_x.device) * q_x < p_x)

    def bonus(self, p: torch.Tensor, logits: torch.Tensor, rejected: int | None, q: torch.Tensor | None,
              params: SamplingParams, generator: torch.Generator | None) -> int:
        if params.greedy or rejected is None:
            return super().bonus(p, logits, rejected, q, params, generator)
        residual = p.clone() if q is None else (p - q).clamp_min(0.0)  # [V]
        if q is None:
            residual[rejected] = 0.0
        if float(residual.sum()) <= 0:
            residual = p
        return int(sample(residual.unsqueeze(0), generator)[0])
