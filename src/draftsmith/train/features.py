"""The target's features: its last hidden states over training sequences (a prompt + an answer),
which `train heads` trains on and `train distill --features` takes p from (through the target's LM
head, with no target forward per step). Made on the fly in right-padded batches
(`extract_features`), or made once and kept in a file that later epochs and later runs read back
(`cached_features`: the same file serves both commands when they are given the same data, limit
and max length).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import DraftsmithError
from ..target import CausalLM
from .rollouts import training_rows

HOLDOUT = 16  # sequences kept aside for the final evaluation (train distill --features holds out the same)


def usable(sequences: list[tuple[list[int], int]], max_len: int) -> list[tuple[list[int], int]]:
    """(ids, answer start) cut to `max_len`, keeping those with at least 3 answer tokens left."""
    return [(ids[:max_len], start) for ids, start in sequences if len(ids[:max_len]) - start >= 3]


def load_sequences(target: CausalLM, data: str, *, limit: int | None = None) -> list[tuple[list[int], int]]:
    """Training sequences (ids, answer start) from `data` (rollouts.training_rows: rollouts, or
    ShareGPT first turns)."""
    return [(r["prompt_ids"] + r["response_ids"], len(r["prompt_ids"])) for r in training_rows(target, data, limit=limit)]


class Item(NamedTuple):
    """One training sequence with the target's view of it."""

    ids: torch.Tensor    # [L]
    feats: torch.Tensor  # [L, H] the target's last hidden states
    start: int           # first answer token
    top: torch.Tensor | None = None  # [L] the target's argmax over the whole vocabulary after each position


@torch.inference_mode()
def extract_features(target: CausalLM, sequences: list[tuple[list[int], int]], max_len: int, *,
                     top: bool = False, progress: bool = False, batch_tokens: int = 8192) -> list[Item]:
    """(ids, answer start) per sequence -> Items, in order (`top`: with the target's argmax over
    the whole vocabulary, one more LM-head pass). Sequences with fewer than 3 answer tokens after
    truncation to `max_len` are dropped. The target runs on right-padded batches of at most
    `batch_tokens` (padded) tokens, of sequences of similar lengths."""
    from tqdm import tqdm

    kept = usable(sequences, max_len)
    by_length = sorted(range(len(kept)), key=lambda k: len(kept[k][0]))
    lm_head = target.model.get_output_embeddings()
    out: dict[int, Item] = {}
    bar = tqdm(total=len(kept), desc="target features", disable=not progress)
    i = 0
    while i < len(by_length):
        j = i + 1  # lengths ascend, so the last sequence taken is the longest
        while j < len(by_length) and len(kept[by_length[j]][0]) * (j - i + 1) <= batch_tokens:
            j += 1
        chunk = by_length[i:j]
        longest = len(kept[chunk[-1]][0])
        ids = torch.zeros((len(chunk), longest), dtype=torch.long)  # [B, T], right-padded with token 0
        for row, k in enumerate(chunk):
            ids[row, : len(kept[k][0])] = torch.tensor(kept[k][0])
        hidden = target.model(input_ids=ids.to(target.device), output_hidden_states=True,
                              logits_to_keep=1).hidden_states[-1]  # [B, T, H]
        for row, k in enumerate(chunk):
            h = hidden[row, : len(kept[k][0])]  # [L, H]
            out[k] = Item(ids[row, : len(h)].clone(), h.to("cpu"), kept[k][1],
                          lm_head(h).argmax(-1).to("cpu") if top else None)
        bar.update(len(chunk))
        i = j
    bar.close()
    return [out[k] for k in range(len(kept))]


def cached_features(target: CausalLM, sequences: list[tuple[list[int], int]], max_len: int, path: str,
                    progress: bool = True) -> list[Item]:
    """The target's features of `sequences` (each with at least 3 answer tokens), made once and
    kept in `path` (bf16 or the target's dtype: H x 2 bytes a token) for later epochs and later
    runs: another head kind, other settings. A file made from other sequences, another target
    or another `max_len` is made again."""
    import zlib

    digest = zlib.crc32(json.dumps([[ids[:max_len], start] for ids, start in sequences]).encode())
    meta = {"target": target.name, "max_len": max_len, "sequences": len(sequences), "crc32": digest}
    file = Path(path)
    if file.is_file():
        saved = torch.load(file, weights_only=True)
        if saved.get("meta") == meta:
            return [Item(i, f, int(s)) for i, f, s in zip(saved["ids"], saved["feats"], saved["start"].tolist())]
    items = []
    for b in range(0, len(sequences), 256):  # in slices, so that the bar moves
        items += extract_features(target, sequences[b:b + 256], max_len)
        if progress:
            print(f"target features: {len(items)}/{len(sequences)} sequences", flush=True)
    if len(items) != len(sequences):
        raise DraftsmithError("cached_features: every sequence needs at least 3 answer tokens after truncation")
    file.parent.mkdir(parents=True, exist_ok=True)
    part = file.with_name(file.name + ".part")  # written whole, then renamed: a reader never sees half a file
    torch.save({"meta": meta, "ids": [it.ids for it in items], "feats": [it.feats for it in items],
                "start": torch.tensor([it.start for it in items])}, part)
    part.replace(file)
    return items
