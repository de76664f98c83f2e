"""Hierarchy Drafting (HD, Cho et al. 2025): several token databases ordered by temporal
locality, queried from the most local down, their continuations merged into one draft tree.

- context     n-grams of the current sequence (prompt + generated so far);
- model       n-grams of this drafter's earlier sequences in the session (what the target
              generated before: it tends to repeat its own phrasing);
- statistics  a static n-gram table built from a corpus (by default ShareGPT assistant turns
              from the packaged data pack, tokenized with the target's tokenizer and cached).

For the last n committed tokens (n from `max_ngram` down to 1) each database returns the
continuations that followed those n tokens, most recent (or most frequent) first; candidates are
taken database by database until `max_candidates`, then merged into a tree of at most
`max_nodes` nodes. Training-free; the draft is deterministic (q = None).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import DraftsmithError
from .base import DraftContext, DrafterBase, register
from .ngram import earlier_matches
from .trie import merge_paths


class NgramTable:
    """n-gram (n = 1..max_ngram) -> continuations of length k, newest first, at most `keep`."""

    def __init__(self, max_ngram: int, k: int, keep: int):
        self.max_ngram, self.k, self.keep = max_ngram, k, keep
        self.table: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def add(self, ids: Sequence[int], start: int = 0) -> None:
        """Index every position of `ids` from `start` on (a position needs k tokens after it to
        be a full continuation; shorter tails are indexed too)."""
        for end in range(max(start, 1), len(ids)):
            cont = tuple(ids[end:end + self.k])
            for n in range(1, min(self.max_ngram, end) + 1):
                key = tuple(ids[end - n:end])
                seen = self.table.setdefault(key, [])
                if cont in seen:
                    seen.remove(cont)
                seen.insert(0, cont)
                del seen[self.keep:]

    def lookup(self, suffix: Sequence[int]) -> list[tuple[int, ...]]:
        for n in range(min(self.max_ngram, len(suffix)), 0, -1):
            hits = self.table.get(tuple(suffix[-n:]))
            if hits:
                return hits
        return []


def count_table(docs: Iterable[Sequence[int]], max_ngram: int, k: int, keep: int) -> NgramTable:
    """A static table: the `keep` most frequent continuations of each n-gram."""
    counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for ids in docs:
        for end in range(1, len(ids) - 1):
            cont = tuple(ids[end:end + k])
            for n in range(max(2, max_ngram - 1), max_ngram + 1):  # the longer keys only: they carry the signal
                if end >= n:
                    counts[tuple(ids[end - n:end])][cont] += 1
    table = NgramTable(max_ngram, k, keep)
    table.table = {key: [c for c, n in counter.most_common(keep) if n > 1] for key, counter in counts.items()}
    table.table = {key: v for key, v in table.table.items() if v}
    return table


@register
class HierarchyDrafter(DrafterBase):
    name: ClassVar[str] = "hierarchy"
    trees: ClassVar[bool] = True

    def __init__(self, k: int = 6, max_ngram: int = 3, max_candidates: int = 4, max_nodes: int = 20,
                 corpus: str = "sharegpt", corpus_docs: int = 2000):
        """k: draft depth. corpus: 'sharegpt' (packaged), a text file (one document per
        blank-line-separated block), or 'none' for no statistics database."""
        if not all(isinstance(v, int) and v >= 1 for v in (k, max_ngram, max_candidates, max_nodes, corpus_docs)):
            raise DraftsmithError("hierarchy: k, max_ngram, max_candidates, max_nodes, corpus_docs must be integers >= 1")
        self.k, self.max_ngram, self.max_candidates, self.max_nodes = k, max_ngram, max_candidates, max_nodes
        self.corpus, self.corpus_docs = corpus, corpus_docs
        self.model_db = NgramTable(max_ngram, k, keep=max_candidates)
        self.stats_db: NgramTable | None = None
        self.sequence: list[int] = []  # the current sequence (prompt + committed)
        self.prompt_len = 0

    # ----- databases -----------------------------------------------------------------
    def bind(self, target) -> None:
        if self.corpus != "none" and self.stats_db is None:
            self.stats_db = self._static_table(target)

    def _static_table(self, target) -> NgramTable:
        if target.tokenizer is None:
            raise DraftsmithError("hierarchy: the statistics database needs the target's tokenizer (or corpus=none)")
        from ..models import cache_dir

        import zlib

        vocab = sorted(target.tokenizer.get_vocab().items())
        vocab_tag = f"{len(vocab)}-{zlib.crc32(repr(vocab).encode()):08x}"  # stable across processes
        name = Path(self.corpus).name if self.corpus != "sharegpt" else "sharegpt"
        cache = cache_dir() / "hierarchy" / f"{name}-{self.corpus_docs}-{self.max_ngram}-{self.k}-{self.max_candidates}-{vocab_tag}.pt"
        if cache.is_file():
            table = NgramTable(self.max_ngram, self.k, self.max_candidates)
            table.table = torch.load(cache, weights_only=False)
            return table
        table = count_table((target.tokenizer.encode(t) for t in self._documents()), self.max_ngram, self.k, self.max_candidates)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{id(self)}")
        torch.save(table.table, tmp)
        tmp.replace(cache)  # atomic: a concurrent reader never sees half a file
        return table

    def _documents(self) -> Iterable[str]:
        if self.corpus == "sharegpt":
            from ..data.sharegpt import read_sharegpt, sharegpt_path, turns

            n = 0
            for record in read_sharegpt(sharegpt_path()):
                for role, text in turns(record):
                    if role == "gpt" and text.strip():
                        yield text
                        n += 1
                        if n >= self.corpus_docs:
                            return
            return
        path = Path(self.corpus)
        if not path.is_file():
            raise DraftsmithError(f"hierarchy: corpus must be 'sharegpt', 'none' or a text file; {path} not found")
        for i, block in enumerate(path.read_text(errors="replace").split("\n\n")):
            if i >= self.corpus_docs:
                return
            if block.strip():
                yield block

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        """A row starts (forks share the static table and the session database)."""
        self.sequence, self.prompt_len = list(prompt_ids), len(prompt_ids)

    def finish(self) -> None:
        """The row's generation joins the session database every row drafts from."""
        if len(self.sequence) > self.prompt_len:
            self.model_db.add(self.sequence, start=self.prompt_len)

    # ----- drafting --------------------------------------------------------------------
    def _context_candidates(self, ids: list[int]) -> list[tuple[int, ...]]:
        """Continuations of the longest suffix n-gram found earlier in the sequence, latest first."""
        t = torch.tensor(ids, dtype=torch.long)
        L = len(ids)
        for n in range(min(self.max_ngram, L - 1), 0, -1):
            hits = earlier_matches(t, n)
            if hits:
                out: list[tuple[int, ...]] = []
                for h in reversed(hits):
                    cont = tuple(ids[h + n: h + n + self.k])
                    if cont and cont not in out:
                        out.append(cont)
                    if len(out) >= self.max_candidates:
                        break
                return out
        return []

    def propose(self, ctx: DraftContext):
        self.sequence = list(ctx.ids)
        depth = min(self.k, ctx.max_tokens)
        if depth <= 0:
            return merge_paths([], 0, 0)
        candidates: list[tuple[int, ...]] = []
        for source in (self._context_candidates(ctx.ids), self.model_db.lookup(ctx.ids),
                       self.stats_db.lookup(ctx.ids) if self.stats_db is not None else []):
            for cont in source:
                if cont not in candidates:
                    candidates.append(cont)
            if len(candidates) >= self.max_candidates:
                break
        return merge_paths(candidates[: self.max_candidates], max_nodes=self.max_nodes, max_depth=depth)
