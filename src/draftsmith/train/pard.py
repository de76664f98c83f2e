"""PARD (An et al., AMD 2025, arXiv 2504.18583): a draft model adapted to predict K tokens in one
forward. `draftsmith train pard` turns a draft model (the `draft_model` drafter's) into one; the
`pard` drafter (drafters/pard.py) drafts with it.

Inference: the committed tokens, then K - 1 copies of one mask token (`pard_token` in the drafter's
config.json, where vLLM's parallel drafting reads it). The logits at the last committed token give
the first draft token, as in any causal LM; the logits at mask j give the (j + 1)-th.

Training (COD, conditional drop-token): a sequence x_0 .. x_{T-1} is laid out as itself (plain
next-token prediction) followed by K - 1 blocks of mask tokens. Block j holds, for each kept anchor
a, one mask at position a + j that sees x_0 .. x_a and the masks of the same anchor in blocks
1 .. j - 1 (exactly what mask j sees at inference after x_0 .. x_a were committed) and predicts
x_{a+j+1}. Block j keeps each anchor of block j - 1 with probability `keep` (so `keep`^j of them:
deeper positions are cheaper and matter less), and an anchor leaves no gap: a mask needs its
anchor's earlier masks. One forward over the layout trains every depth, with a custom attention
mask and explicit position ids.
"""

from __future__ import annotations

import torch

from ..errors import DraftsmithError
from .batches import Batch


def pard_layout(ids: list[int], start: int, k: int, mask_id: int, *, keep: float = 0.8,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One training sequence (`ids`, the answer starting at `start`) laid out for PARD with drafts
    of `k` tokens. Returns `ids` [L], `positions` [L], `labels` [L] (the token each element
    predicts, -100 where none), `block` [L] (0 = the sequence, j = mask block j) and `anchor` [L]
    (the last real token each element sees). Only answer tokens are labels; anchors run from the
    last prompt token on."""
    if k < 1:
        raise DraftsmithError(f"pard: k must be >= 1, got {k}")
    if not 0.0 < keep <= 1.0:
        raise DraftsmithError(f"pard: keep must be in (0, 1], got {keep}")
    T = len(ids)
    x = torch.tensor(ids, dtype=torch.long)  # [T]
    first = max(start - 1, 0)  # the first anchor: the last prompt token
    labels = torch.full((T,), -100, dtype=torch.long)
    labels[first: T - 1] = x[first + 1:]
    parts_ids, parts_pos, parts_lab, parts_blk, parts_anc = [x], [torch.arange(T)], [labels], [torch.zeros(T, dtype=torch.long)], [torch.arange(T)]
    anchors = torch.arange(first, T, dtype=torch.long)
    for j in range(1, k):
        anchors = anchors[anchors + j + 1 < T]  # mask j of anchor a predicts x[a + j + 1]
        if keep < 1.0 and len(anchors):
            anchors = anchors[torch.rand(len(anchors), generator=generator) < keep]
        if not len(anchors):
            break
        parts_ids.append(torch.full_like(anchors, mask_id))
        parts_pos.append(anchors + j)
        parts_lab.append(x[anchors + j + 1])
        parts_blk.append(torch.full_like(anchors, j))
        parts_anc.append(anchors)
    return {"ids": torch.cat(parts_ids), "positions": torch.cat(parts_pos), "labels": torch.cat(parts_lab),
            "block": torch.cat(parts_blk), "anchor": torch.cat(parts_anc)}


def layout_mask(block: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """[..., L] block and anchor ids -> [..., L, L] bool, True where element e (row) attends to f
    (column): a real token sees the real tokens up to itself; a mask sees the real tokens up to its
    anchor and its anchor's masks up to its own block. Padding (block -1) sees only itself."""
    be, bf = block.unsqueeze(-1), block.unsqueeze(-2)    # [..., L, 1], [..., 1, L]
    ae, af = anchor.unsqueeze(-1), anchor.unsqueeze(-2)
    real = (bf == 0) & (be >= 0) & (af <= ae)
    masks = (bf > 0) & (be > 0) & (af == ae) & (bf <= be)
    eye = torch.eye(block.shape[-1], dtype=torch.bool, device=block.device)
    return real | masks | ((be < 0) & eye)


def pard_batch(layouts: list[dict[str, torch.Tensor]], pad_id: int) -> Batch:
    """Layouts right-padded into one batch: `attention` is the [B, 1, L, L] boolean mask, with
    `positions` and `labels` beside it."""
    L = max(len(lay["ids"]) for lay in layouts)
    B = len(layouts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    positions = torch.zeros((B, L), dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    block = torch.full((B, L), -1, dtype=torch.long)
    anchor = torch.full((B, L), -1, dtype=torch.long)
    for i, lay in enumerate(layouts):
        n = len(lay["ids"])
        ids[i, :n], positions[i, :n], labels[i, :n] = lay["ids"], lay["positions"], lay["labels"]
        block[i, :n], anchor[i, :n] = lay["block"], lay["anchor"]
    attention = layout_mask(block, anchor).unsqueeze(1)  # [B, 1, L, L]
    return Batch(ids, attention, (labels >= 0).long(), positions=positions, labels=labels)


def choose_mask_token(vocab_size: int, seen: set[int], special: set[int]) -> int:
    """The mask token when the drafter has none: the largest id that is neither in the training
    data nor a special token (its embedding row is then free to learn the mask's meaning)."""
    for tok in range(vocab_size - 1, -1, -1):
        if tok not in seen and tok not in special:
            return tok
    raise DraftsmithError("pard: every token id occurs in the data; pass --mask-token")


@torch.inference_mode()
def depth_agreement(drafter: torch.nn.Module, groups: list[list[dict[str, torch.Tensor]]], pad_id: int, k: int,
                    vocab_ids: torch.Tensor | None = None) -> list[float]:
    """Held-out top-1 agreement with the data per draft position (1 .. k), over groups of layouts
    (each group one batch): how often the token a PARD forward puts at position j is the data's
    (the target's own answer, for rollouts) given the true prefix."""
    from .trainer import SelectedLogits

    device = next(drafter.parameters()).device
    vocab_ids = None if vocab_ids is None else vocab_ids.to(device)
    model = SelectedLogits(drafter, vocab_ids).eval()
    right, total = torch.zeros(k), torch.zeros(k)
    for group in groups:
        b = pard_batch(group, pad_id).to(device)
        block = torch.nn.utils.rnn.pad_sequence([lay["block"] for lay in group], batch_first=True, padding_value=-1)
        select = b.labels >= 0  # [B, L]
        logits = model(b.ids, b.attention, select, b.positions).float()  # [N, V or N_vocab]
        guess = logits.argmax(-1) if vocab_ids is None else vocab_ids[logits.argmax(-1)]  # [N]
        hit, depth = guess == b.labels[select], block.to(device)[select]  # block j = draft position j + 1
        for j in range(k):
            right[j] += float(hit[depth == j].sum())
            total[j] += float((depth == j).sum())
    return [round(float(r / t), 4) if t else 0.0 for r, t in zip(right, total)]


def train_pard(target, drafter_path: str, data: str, cfg, *, k: int = 4, keep: float = 0.8,
               mask_token: int | None = None, max_len: int = 512, limit: int | None = None,
               progress: bool = True):
    """`draftsmith train pard`: adapt the draft model at `drafter_path` to draft `k` tokens per
    forward on `data` (rollouts JSONL: the target's own answers; or ShareGPT), keeping its draft
    vocabulary. Writes a Hugging Face folder whose config carries `pard_token` and `pard_k`."""
    import random

    from ..target import load_causal_lm
    from .pipeline import _drafter_vocab, _ids, _main_process, save_drafter
    from .rollouts import training_rows
    from .trainer import train

    rows = [r for r in training_rows(target, data, limit=limit) if len(r["response_ids"]) >= 2]
    if len(rows) < 2:
        raise DraftsmithError(f"{data} holds {len(rows)} usable training rows; pard needs at least 2 (some are held out)")
    held = max(1, min(16, len(rows) // 50))
    train_rows, eval_rows = rows[held:], rows[:held]
    drafter = load_causal_lm(drafter_path, dtype="float32", progress=progress).model.train()
    vocab = _drafter_vocab(drafter_path, target, [r["response_ids"] for r in train_rows], cfg)
    V = drafter.get_input_embeddings().weight.shape[0]
    if mask_token is None:
        mask_token = getattr(drafter.config, "pard_token", None)
    if mask_token is None:
        seen = {t for r in rows for t in r["prompt_ids"] + r["response_ids"]} | set(vocab[: cfg.train_vocab or None])
        special = set(target.tokenizer.all_special_ids) if target.tokenizer is not None else set()
        mask_token = choose_mask_token(min(V, target.vocab_size), seen, special | set(target.eos_token_ids))
    if not (isinstance(mask_token, int) and 0 <= mask_token < V):
        raise DraftsmithError(f"pard: the mask token must be a token id in [0, {V}), got {mask_token!r}")
    pad = target.tokenizer.pad_token_id if target.tokenizer is not None and target.tokenizer.pad_token_id is not None else 0
    order = list(range(len(train_rows)))
    random.Random(cfg.seed).shuffle(order)

    def lay(row: dict, generator: torch.Generator | None, keep_: float) -> dict:
        seq = (row["prompt_ids"] + row["response_ids"])[-max_len:]
        start = max(1, len(seq) - len(row["response_ids"]))
        return pard_layout(seq, start, k, mask_token, keep=keep_, generator=generator)

    def get_batch(i: int) -> Batch:
        g = torch.Generator().manual_seed(cfg.seed * 100003 + i)  # batch i is the same batch on a resumed run
        picked = [train_rows[order[(i * cfg.batch_size + j) % len(order)]] for j in range(cfg.batch_size)]
        return pard_batch([lay(r, g, keep) for r in picked], pad)

    cfg.extra.update(stage_data=f"{len(train_rows)} rows of {data}", init_from=str(drafter_path), max_len=max_len,
                     pard_k=k, pard_keep=keep, pard_token=mask_token)
    metrics = train(drafter, get_batch, cfg, vocab_ids=_ids(vocab, cfg), progress=progress, device=target.device)
    if not _main_process():
        from pathlib import Path

        return Path(cfg.out)
    drafter.config.pard_token = mask_token
    drafter.config.pard_k = k
    groups = [[lay(r, None, 1.0) for r in eval_rows[i:i + 4]] for i in range(0, len(eval_rows), 4)]
    cfg.extra["pard_held_out"] = {"rows": len(eval_rows),
                             "agreement_by_position": depth_agreement(drafter, groups, pad, k, _ids(vocab, cfg))}
    return save_drafter(drafter, target, cfg, metrics, vocab)

