"""Distillation losses between the target's p and the drafter's q, per token.

Each function takes logits `target_logits`, `draft_logits` ([N, V], one row per training token,
already masked to the tokens that count) and returns the per-token loss [N]; `distill_loss`
averages it. All are computed in float32 at temperature 1.

- fkl   forward KL  KL(p || q) = Σ p (log p - log q)            (mode-covering, the usual KD)
- rkl   reverse KL  KL(q || p) = Σ q (log q - log p)            (mode-seeking)
- jsd   Jensen-Shannon, ½ KL(p || m) + ½ KL(q || m), m = ½(p + q)
- tvd   total variation ½ Σ |p - q|. Speculative sampling accepts a draft token with
        probability 1 - TVD(p, q), so this is the loss that matches the acceptance rate.
- tvdpp TVD++ (Goel et al. 2024, "Direct Alignment of Draft Model...", §3.3). The TVD gradient is
        a policy gradient: ∇ TVD = -E_{y~q}[ r(y) ∇ log q(y) ] with reward r(y) = 1{p(y) > q(y)}
        (use Σ_y ∇q(y) = 0 to turn ½ Σ sign(q - p) ∇q into this form). TVD++ reduces the
        variance of its sampled estimate by normalising the reward, r̃ = (r - μ) / σ, with μ and
        σ the mean and standard deviation of the rewards in the batch. What we implement: at
        every training position (teacher-forced on the data), draw `samples` tokens y ~ q with
        an explicit generator, reward r = 1{p(y) > q(y)}, normalise over all of the batch's
        samples, and take the surrogate -r̃ · log q(y) (r̃ held constant), averaged over the
        samples. Its value is a surrogate, not a distance; `tvd` reports the distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DraftsmithError

LOSSES = ("fkl", "rkl", "jsd", "tvd", "tvdpp")


def _plogratio(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """a * (log a - log b) elementwise, 0 where a = 0 (a masked token: no NaN from 0 * inf)."""
    return torch.where(log_a > float("-inf"), log_a.exp() * (log_a - log_b), torch.zeros_like(log_a))


def fkl(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    log_p, log_q = F.log_softmax(target_logits.float(), -1), F.log_softmax(draft_logits.float(), -1)  # [N, V]
    return _plogratio(log_p, log_q).sum(-1)  # [N]


def rkl(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    log_p, log_q = F.log_softmax(target_logits.float(), -1), F.log_softmax(draft_logits.float(), -1)
    return _plogratio(log_q, log_p).sum(-1)


def jsd(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    log_p, log_q = F.log_softmax(target_logits.float(), -1), F.log_softmax(draft_logits.float(), -1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), 0) - torch.log(torch.tensor(2.0))
    return 0.5 * _plogratio(log_p, log_m).sum(-1) + 0.5 * _plogratio(log_q, log_m).sum(-1)


def tvd(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    p, q = target_logits.float().softmax(-1), draft_logits.float().softmax(-1)
    return 0.5 * (p - q).abs().sum(-1)


def tvdpp(target_logits: torch.Tensor, draft_logits: torch.Tensor, tokens: torch.Tensor | None = None,
          generator: torch.Generator | None = None, samples: int = 4) -> torch.Tensor:
    """TVD++ surrogate per position. `tokens` [N, S]: the sampled y ~ q (drawn here from
    `generator` when None)."""
    log_q_all = F.log_softmax(draft_logits.float(), -1)  # [N, V]
    if tokens is None:
        q_all = log_q_all.detach().exp()
        if generator is not None and generator.device != q_all.device:  # a CPU generator, logits on a GPU
            q_all = q_all.to(generator.device)
        tokens = torch.multinomial(q_all, samples, replacement=True, generator=generator).to(log_q_all.device)  # [N, S]
    log_p = F.log_softmax(target_logits.float(), -1).gather(-1, tokens)  # [N, S]
    log_q = log_q_all.gather(-1, tokens)  # [N, S]
    reward = (log_p > log_q.detach()).float()  # [N, S]
    if reward.numel() > 1:
        reward = (reward - reward.mean()) / (reward.std() + 1e-6)
    return (-reward * log_q).mean(-1)  # [N]


def per_token_loss(name: str, target_logits: torch.Tensor, draft_logits: torch.Tensor,
                   tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N] losses. `tokens` and `generator` are for tvdpp only (its y ~ q samples)."""
    if name == "tvdpp":
        return tvdpp(target_logits, draft_logits, tokens, generator)
    if name not in LOSSES:
        raise DraftsmithError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return {"fkl": fkl, "rkl": rkl, "jsd": jsd, "tvd": tvd}[name](target_logits, draft_logits)


def distill_loss(name: str, target_logits: torch.Tensor, draft_logits: torch.Tensor,
                 tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    return per_token_loss(name, target_logits, draft_logits, tokens, generator).mean()
