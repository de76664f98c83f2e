"""The target's features: its last hidden states over training sequences (a prompt + an answer),
which `train heads` trains on and `train distill --features` takes p from (through the target's LM
head, with no target forward per step), and for EAGLE-3 heads also the inputs of some of its
layers (`aux_layers`: hidden_states[i] concatenated, [L, 3H]) from the same forward. Made on the
fly in right-padded batches (`extract_features`), or made once and kept in a file that later
epochs and later runs read back (`cached_features`: the same file serves both commands when they
are given the same data, limit and max length; a file with other aux layers is made again). The
file is made slice by slice (each slice kept in `FILE.parts/` until the whole file is written), so
an interrupted run resumes at its last slice, and it is read back memory-mapped: epochs stream
the features from disk instead of holding them all in memory.
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


def length_groups(lengths: list[int], padded_tokens: int) -> list[list[int]]:
    """Indices of sequences of these lengths in groups of similar lengths (ascending), each at
    most `padded_tokens` once padded to its longest (a longer sequence alone): the batches that
    waste the least padding."""
    groups, group = [], []
    for k in sorted(range(len(lengths)), key=lambda k: lengths[k]):  # lengths ascend: the newest is the longest
        if group and lengths[k] * (len(group) + 1) > padded_tokens:
            groups.append(group)
            group = []
        group.append(k)
    return groups + [group] if group else groups


class Item(NamedTuple):
    """One training sequence with the target's view of it."""

    ids: torch.Tensor    # [L]
    feats: torch.Tensor  # [L, H] the target's last hidden states
    start: int           # first answer token
    top: torch.Tensor | None = None  # [L] the target's argmax over the whole vocabulary after each position
    aux: torch.Tensor | None = None  # [L, len(aux_layers) * H] the inputs of the aux layers (EAGLE-3), in order


@torch.inference_mode()
def extract_features(target: CausalLM, sequences: list[tuple[list[int], int]], max_len: int, *,
                     top: bool = False, progress: bool = False, batch_tokens: int = 8192,
                     aux_layers: tuple[int, ...] | list[int] | None = None) -> list[Item]:
    """(ids, answer start) per sequence -> Items, in order (`top`: with the target's argmax over
    the whole vocabulary, one more LM-head pass; `aux_layers`: with the inputs of those target
    layers, hidden_states[i] concatenated in order, from the same forward). Sequences with fewer
    than 3 answer tokens after truncation to `max_len` are dropped. The target runs on
    right-padded batches of at most `batch_tokens` (padded) tokens, of sequences of similar
    lengths."""
    from tqdm import tqdm

    kept = usable(sequences, max_len)
    lm_head = target.model.get_output_embeddings()
    out: dict[int, Item] = {}
    bar = tqdm(total=len(kept), desc="target features", disable=not progress)
    for chunk in length_groups([len(ids) for ids, _ in kept], batch_tokens):
        longest = len(kept[chunk[-1]][0])
        ids = torch.zeros((len(chunk), longest), dtype=torch.long)  # [B, T], right-padded with token 0
        for row, k in enumerate(chunk):
            ids[row, : len(kept[k][0])] = torch.tensor(kept[k][0])
        states = target.model(input_ids=ids.to(target.device), output_hidden_states=True,
                              logits_to_keep=1).hidden_states
        hidden = states[-1]  # [B, T, H]
        aux = torch.cat([states[i] for i in aux_layers], dim=-1) if aux_layers else None  # [B, T, 3H]
        for row, k in enumerate(chunk):
            n = len(kept[k][0])
            h = hidden[row, :n]  # [L, H]
            out[k] = Item(ids[row, :n].clone(), h.to("cpu"), kept[k][1],
                          lm_head(h).argmax(-1).to("cpu") if top else None,
                          None if aux is None else aux[row, :n].to("cpu").clone())
        bar.update(len(chunk))
    bar.close()
    return [out[k] for k in range(len(kept))]


def cached_features(target: CausalLM, sequences: list[tuple[list[int], int]], max_len: int, path: str,
                    progress: bool = True, aux_layers: tuple[int, ...] | list[int] | None = None) -> list[Item]:
    """The target's features of `sequences` (each with at least 3 answer tokens), made once and
    kept in `path` (bf16 or the target's dtype: H x 2 bytes a token, and 3H x 2 more with three
    `aux_layers`) for later epochs and later runs: another head kind, other settings. A file made
    from other sequences, another target, another `max_len` or other aux layers (none for a file
    of last hidden states only) is made again, never read as this one. Slices of 256 sequences
    are kept in `path.parts/` as they are made, so an interrupted run resumes after its last
    slice; the file is read back memory-mapped (the OS pages the features in as epochs read them)."""
    import shutil
    import zlib

    digest = zlib.crc32(json.dumps([[ids[:max_len], start] for ids, start in sequences]).encode())
    meta = {"target": target.name, "max_len": max_len, "sequences": len(sequences), "crc32": digest}
    if aux_layers:  # absent for last-hidden-state files, so that the files made before aux layers still match
        meta["aux_layers"] = [int(i) for i in aux_layers]
    file = Path(path)
    if file.is_file():
        saved = _load(file)
        if saved.get("meta") == meta:
            return _items(saved)
    parts = file.with_name(file.name + ".parts")
    items: list[Item] = []
    for b in range(0, len(sequences), 256):  # in slices, so that the bar moves and a rerun resumes
        part = parts / f"{b:08d}.pt"
        if part.is_file():
            saved = _load(part)
            if saved.get("meta") == meta:
                items += _items(saved)
                continue
        made = extract_features(target, sequences[b:b + 256], max_len, aux_layers=aux_layers)
        if len(made) == len(sequences[b:b + 256]):
            parts.mkdir(parents=True, exist_ok=True)
            _save(part, meta, made)
        items += made
        if progress:
            print(f"target features: {len(items)}/{len(sequences)} sequences", flush=True)
    if len(items) != len(sequences):
        raise DraftsmithError("cached_features: every sequence needs at least 3 answer tokens after truncation")
    _save(file, meta, items)
    shutil.rmtree(parts, ignore_errors=True)
    return _items(_load(file))


def _save(file: Path, meta: dict, items: list[Item]) -> None:
    """Write items to `file` whole (written, then renamed: a reader never sees half a file)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    part = file.with_name(file.name + ".tmp")
    saved = {"meta": meta, "ids": [it.ids for it in items], "feats": [it.feats for it in items],
             "start": torch.tensor([it.start for it in items])}
    if "aux_layers" in meta:
        saved["aux"] = [it.aux for it in items]
    torch.save(saved, part)
    part.replace(file)


def _load(file: Path) -> dict:
    try:
        return torch.load(file, weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError):  # a file cut short (a killed run): made again
        return {}


def _items(saved: dict) -> list[Item]:
    aux = saved.get("aux") or [None] * len(saved["ids"])
    return [Item(i, f, int(s), None, a) for i, f, s, a in zip(saved["ids"], saved["feats"], saved["start"].tolist(), aux)]
