"""SuffixDecoding (Oliaro et al. 2024, arXiv 2411.04975): draft trees read off suffix
structures of what was already written, with a draft size that grows with the match length.
Model-free and training-free; the draft is deterministic (q = None: verified as one-hot, so
sampling stays lossless).

Two structures, the same kind (`SuffixTrie` below):
- per row (request): this row's prompt and its output so far, extended in `observe`;
- global: earlier requests (each request's last `global_prompt` prompt tokens and its output),
  folded in when a row finishes. `bind` builds it once and every fork shares it, so in the
  server (`BatchDecoder`) concurrent rows draft from each other's finished requests. Its memory
  is bounded: at most `max_cached_requests` requests and `max_cached_tokens` tokens; beyond
  either, the oldest requests are removed (FIFO), and removal frees their nodes.

A `SuffixTrie` holds every substring of at most `max_depth` tokens of its sequences with its
number of occurrences (a suffix tree cut at depth `max_depth`, as in the paper and vLLM: the
depth bounds the match plus the draft). A chain of one occurrence is kept as a reference into
its sequence, not as nodes, so memory grows with the text that repeats, and appending a token
costs O(#open suffixes that end on an explicit node) <= max_depth, whatever the history's length.
Matching never rescans the history: a lookup walks at most `max_depth` nodes.

Propose, for each structure: find the longest suffix of the context (at most max_depth - 1
tokens) that occurred earlier with a continuation; for that match length p and the shorter
ones, grow a speculation tree greedily from the matched node: the candidate of highest score
(the product of the empirical probabilities count(child) / count(parent) along its path) is
added next, until the node budget

    min(max_nodes, floor(max_spec_factor * p + max_spec_offset))

is spent (SuffixDecoding's adaptive draft size: a longer match earns a bigger tree) or no
candidate reaches `min_token_prob` (a node whose path probability is below it is dropped, as in
vLLM). A tree's score is the sum of its nodes' path probabilities (its expected number of
accepted tokens); the best tree over match lengths and the two structures is proposed (ties: the
longer match, then the row's own structure). Depth is at most the loop's `ctx.max_tokens`.
The row's own current occurrence (the context itself, which ends on the matched node) is not
counted in the probabilities.

Options (defaults):
    max_depth            24     structure depth: match + draft length (vLLM's max tree depth)
    max_nodes            24     the most nodes a tree may have (the loop's depth cap applies too)
    max_spec_factor      1.0    tree budget per matched token
    max_spec_offset      4.0    tree budget added to it (may be negative). vLLM's is 0; on the default model
                                (bf16, one Spec-Bench question in each of rag, translation, summarization,
                                writing and qa, 48 tokens) 0 gave 1-2 nodes after the short matches that
                                start most copies and a tau below `ngram`'s in all five; 4 matched or beat it
    min_token_prob       0.1    drop nodes whose path probability is below this (0..1)
    max_cached_requests  256    earlier requests kept in the global structure (0: none, no global)
    max_cached_tokens    262144 tokens kept in the global structure (oldest requests go first; about
                                200-500 bytes of Python objects a token)
    global_prompt        -1     last prompt tokens cached with each request's output (-1: all,
                                0: outputs only, as the paper's global tree)
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..types import Draft, VerifyResult
from .base import DraftContext, DrafterBase, int_option, register


class _Node:
    """An explicit node: how many suffix occurrences pass through (or end at) it, and its
    children by token: a `_Node`, or a tail `(seq_id, pos)`: a chain of one occurrence whose
    tokens are seqs[seq_id][pos:] (up to the depth bound)."""

    __slots__ = ("count", "children")

    def __init__(self, count: int = 0):
        self.count = count
        self.children: dict[int, _Node | tuple[int, int]] = {}


# a position in a trie: (explicit node, None) or (None, (tokens, next pos, end)) inside a tail
Cursor = tuple


class SuffixTrie:
    """Every substring of at most `max_depth` tokens of the sequences held, with its count.

    `start(tokens)` opens a sequence (returns its id), `append(sid, token)` extends an open one,
    `close(sid)` says it will not grow, `remove(sid)` takes a closed one out and frees what only
    it used. Sizes: `nodes` (explicit nodes), `tails` (one-occurrence chains), `tokens`."""

    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.root = _Node()
        self.seqs: dict[int, list[int]] = {}
        # open sequences: suffix start -> the explicit node its path ends at (suffixes whose path
        # ends inside their own tail extend by themselves as the sequence grows)
        self.open: dict[int, dict[int, _Node]] = {}
        self.nodes = self.tails = self.tokens = 0
        self._next = 0

    # ----- building --------------------------------------------------------------------------
    def start(self, tokens=()) -> int:
        sid, self._next = self._next, self._next + 1
        self.seqs[sid], self.open[sid] = [], {}
        self.extend(sid, tokens)
        return sid

    def extend(self, sid: int, tokens) -> None:
        for t in tokens:
            self.append(sid, int(t))

    def close(self, sid: int) -> None:
        self.open.pop(sid, None)

    def append(self, sid: int, token: int) -> None:
        seq, ends = self.seqs[sid], self.open[sid]
        j = len(seq)
        seq.append(token)
        self.tokens += 1
        self.root.count += 1
        ends[j] = self.root  # the new suffix starts here (an empty path, at the root)
        new: dict[int, _Node] = {}
        for begin, node in ends.items():
            depth = j - begin + 1  # the extended path's length
            child = node.children.get(token)
            if child is None:  # a new continuation: one occurrence, a tail on this sequence
                node.children[token] = (sid, j)
                self.tails += 1
                continue
            if type(child) is tuple:  # another occurrence's tail: its first token becomes a node
                child = self._split(node, token, child, depth, sid, new)
            child.count += 1
            if depth < self.max_depth:
                new[begin] = child
        self.open[sid] = new

    def _split(self, parent: _Node, token: int, tail: tuple[int, int], depth: int, sid: int,
               new: dict[int, _Node]) -> _Node:
        """Make the tail's first token an explicit node (count 1: the tail's occurrence) at
        `depth`; the rest of the tail hangs below it."""
        sid2, pos = tail
        node = _Node(1)
        seq2 = self.seqs[sid2]
        if depth < self.max_depth and pos + 1 < len(seq2):
            node.children[seq2[pos + 1]] = (sid2, pos + 1)
        else:
            self.tails -= 1
            if depth < self.max_depth and sid2 in self.open:  # the owner's path ends here: it
                owner = pos + 1 - depth                         # extends from this node next time
                (new if sid2 == sid else self.open[sid2])[owner] = node
        parent.children[token] = node
        self.nodes += 1
        return node

    def remove(self, sid: int) -> None:
        """Take a sequence out: every count it added is taken back; nodes and tails left with no
        occurrence are dropped (so memory is freed)."""
        seq = self.seqs.pop(sid)
        self.open.pop(sid, None)
        self.tokens -= len(seq)
        D, n = self.max_depth, len(seq)
        for begin in range(n):
            node = self.root
            node.count -= 1
            for pos in range(begin, min(n, begin + D)):
                tok = seq[pos]
                child = node.children[tok]
                if type(child) is tuple:  # this occurrence's own tail: nothing else below
                    del node.children[tok]
                    self.tails -= 1
                    break
                child.count -= 1
                if child.count == 0:
                    del node.children[tok]
                    self._drop(child)
                    break
                node = child

    def _drop(self, node: _Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            self.nodes -= 1
            for c in n.children.values():
                if type(c) is tuple:
                    self.tails -= 1
                else:
                    stack.append(c)

    # ----- reading ---------------------------------------------------------------------------
    def walk(self, pattern) -> Cursor | None:
        """Where `pattern` (at most max_depth tokens) ends in the trie, or None if it never occurred."""
        node, tail, depth, D = self.root, None, 0, self.max_depth
        for tok in pattern:
            depth += 1
            if tail is None:
                child = node.children.get(tok)
                if child is None:
                    return None
                if type(child) is tuple:
                    sid2, pos = child
                    seq2 = self.seqs[sid2]
                    node, tail = None, (seq2, pos + 1, min(len(seq2), pos - depth + 1 + D))
                else:
                    node = child
            else:
                seq2, pos, end = tail
                if pos >= end or seq2[pos] != tok:
                    return None
                tail = (seq2, pos + 1, end)
        return node, tail

    def continuations(self, cursor: Cursor, depth: int, own: set[int]) -> tuple[int, list]:
        """(denominator, [(token, count, cursor)]) after `cursor` at `depth`. `own`: ids of the nodes
        where an open sequence's current suffixes end (the context itself), not counted."""
        node, tail = cursor
        if tail is not None:
            seq2, pos, end = tail
            return (1, [(seq2[pos], 1, (None, (seq2, pos + 1, end)))]) if pos < end else (1, [])
        out = []
        D = self.max_depth
        for tok, child in node.children.items():
            if type(child) is tuple:
                sid2, pos = child
                seq2 = self.seqs[sid2]
                out.append((tok, 1, (None, (seq2, pos + 1, min(len(seq2), pos - depth + D)))))
            else:
                out.append((tok, child.count, (child, None)))
        return node.count - (id(node) in own), out

    def own_ends(self) -> set[int]:
        return {id(n) for ends in self.open.values() for n in ends.values()}

    def check(self) -> None:
        """Recount everything from the sequences and compare (tests): counts, sizes, tails."""
        D = self.max_depth
        want: dict[int, int] = {}
        for sid, seq in self.seqs.items():
            for begin in range(len(seq)):
                node, tail, tail_at = self.root, None, 0
                want[id(node)] = want.get(id(node), 0) + 1
                for pos in range(begin, min(len(seq), begin + D)):
                    if tail is not None:
                        s2, p2 = tail
                        assert self.seqs[s2][p2 + pos - tail_at] == seq[pos], "tail token"
                        continue
                    child = node.children[seq[pos]]
                    if type(child) is tuple:
                        assert child[0] in self.seqs and self.seqs[child[0]][child[1]] == seq[pos], "tail reference"
                        assert child == (sid, pos), "a tail is shared by two occurrences"
                        tail, tail_at = child, pos
                        continue
                    want[id(child)] = want.get(id(child), 0) + 1
                    node = child
        nodes = tails = 0
        stack = [self.root]
        while stack:
            n = stack.pop()
            assert n.count == want.get(id(n), 0) and (n is self.root or n.count > 0), "node count"
            for c in n.children.values():
                if type(c) is tuple:
                    tails += 1
                else:
                    nodes += 1
                    stack.append(c)
        assert (nodes, tails) == (self.nodes, self.tails), f"sizes {nodes, tails} != {self.nodes, self.tails}"
        assert self.tokens == sum(len(s) for s in self.seqs.values())


class SuffixCache:
    """The global structure: finished requests in one trie, oldest removed first when there are
    more than `max_requests` or more than `max_tokens` tokens."""

    def __init__(self, max_depth: int, max_requests: int, max_tokens: int):
        self.trie = SuffixTrie(max_depth)
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.fifo: deque[int] = deque()

    def add(self, tokens: list[int]) -> None:
        if self.max_requests <= 0 or not tokens:
            return
        tokens = tokens[-self.max_tokens:]
        sid = self.trie.start(tokens)
        self.trie.close(sid)
        self.fifo.append(sid)
        while len(self.fifo) > self.max_requests or self.trie.tokens > self.max_tokens:
            self.trie.remove(self.fifo.popleft())

    @property
    def requests(self) -> int:
        return len(self.fifo)

    def size(self) -> int:
        """Nodes + tails + tokens held: what the memory grows with."""
        t = self.trie
        return t.nodes + t.tails + t.tokens


def _int(name: str, value, low: int) -> int:
    return int_option("suffix", name, value, low)


def _real(name: str, value, low: float | None = None, high: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        span = f" in [{low}, {high}]" if high is not None else f" >= {low}" if low is not None else ""
        raise DraftsmithError(f"suffix: {name} must be a finite number{span}, got {value!r}")
    return float(value)


@register
class SuffixDrafter(DrafterBase):
    name: ClassVar[str] = "suffix"
    trees: ClassVar[bool] = True

    def __init__(self, max_depth: int = 24, max_nodes: int = 24, max_spec_factor: float = 1.0,
                 max_spec_offset: float = 4.0, min_token_prob: float = 0.1, max_cached_requests: int = 256,
                 max_cached_tokens: int = 262144, global_prompt: int = -1):
        self.max_depth = _int("max_depth", max_depth, 2)
        self.max_nodes = _int("max_nodes", max_nodes, 1)
        self.max_spec_factor = _real("max_spec_factor", max_spec_factor, 0.0)
        self.max_spec_offset = _real("max_spec_offset", max_spec_offset)
        self.min_token_prob = _real("min_token_prob", min_token_prob, 0.0, 1.0)
        self.max_cached_requests = _int("max_cached_requests", max_cached_requests, 0)
        self.max_cached_tokens = _int("max_cached_tokens", max_cached_tokens, 1)
        self.global_prompt = _int("global_prompt", global_prompt, -1)
        self.k = self.max_depth - 1  # the deepest draft: the structure holds match + draft <= max_depth
        self.cache: SuffixCache | None = None
        self.local: SuffixTrie | None = None  # this row's prompt + output
        self.sid = 0
        self.prompt_len = 0
        # the last proposal: (structure "request" or "global", match length, each node's path probability)
        self.last_match: tuple[str, int, list[float]] | None = None

    # ----- lifecycle -------------------------------------------------------------------------
    def bind(self, target) -> None:
        self._shared()

    def _shared(self) -> SuffixCache:
        if self.cache is None:
            self.cache = SuffixCache(self.max_depth, self.max_cached_requests, self.max_cached_tokens)
        return self.cache

    def fork(self) -> SuffixDrafter:
        """A row's drafter: the global structure shared, the row's own structure its own."""
        self._shared()
        other = super().fork()
        other.local, other.prompt_len, other.last_match = None, 0, None
        return other

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self.local = SuffixTrie(self.max_depth)
        self.sid = self.local.start(prompt_ids)
        self.prompt_len = len(prompt_ids)

    def observe(self, result: VerifyResult) -> None:
        if self.local is not None:
            self.local.extend(self.sid, result.tokens[0].tolist())

    def finish(self) -> None:
        """Fold this request (its last prompt tokens and its output) into the global structure."""
        if self.local is None:
            return
        seq = self.local.seqs[self.sid]
        out = seq[self.prompt_len:]
        if out:
            keep = self.prompt_len if self.global_prompt < 0 else min(self.global_prompt, self.prompt_len)
            self._shared().add(seq[self.prompt_len - keep:])
        self.local = None

    def _sync(self, ids: list[int]) -> None:
        """The row's structure holds exactly `ids` (rebuilt if it was never prefilled or holds
        something else, e.g. tokens a commit cut)."""
        local = self.local
        seq = local.seqs[self.sid] if local is not None else None
        if seq is None or len(seq) > len(ids) or (seq and seq[-1] != ids[len(seq) - 1]):
            self.prefill(list(ids))
            return
        if len(seq) < len(ids):
            local.extend(self.sid, ids[len(seq):])

    # ----- drafting --------------------------------------------------------------------------
    def budget(self, match_len: int) -> int:
        """Nodes a tree from a match of `match_len` tokens may have."""
        return max(0, min(self.max_nodes, int(self.max_spec_factor * match_len + self.max_spec_offset + 1e-6)))

    def propose(self, ctx: DraftContext) -> Draft:
        self.last_match = None
        depth = min(ctx.max_tokens, self.max_depth - 1)
        if depth <= 0:
            return Draft.empty()
        ids = ctx.ids
        self._sync(ids)
        best = (0.0, [], [], [], 0)
        sources = [("request", self.local)]
        if self.cache is not None and self.cache.requests:
            sources.append(("global", self.cache.trie))
        for label, trie in sources:  # the higher-scoring tree of the two (ties: the row's own)
            found = self._speculate(trie, ids, depth, best[0])
            if found is not None and found[0] > best[0]:
                best = found
                self.last_match = (label, found[4], found[3])
        _, tokens, parents, _, _ = best
        if not tokens:
            return Draft.empty()
        ids_t = torch.tensor([tokens], dtype=torch.long)  # [1, N]
        if all(p == i - 1 for i, p in enumerate(parents)):
            return Draft(ids_t)  # a chain
        return Draft(ids_t, parents=torch.tensor(parents, dtype=torch.long))  # parents [N]

    def _speculate(self, trie: SuffixTrie, ids: list[int], depth: int, to_beat: float):
        """The best tree from `trie` scoring above `to_beat`: (score, tokens, parents, probabilities,
        match length), or None."""
        own = trie.own_ends()
        longest = min(self.max_depth - 1, len(ids))
        cursors: dict[int, Cursor] = {}

        def matched(p: int) -> bool:  # occurred earlier with a continuation (monotone in p)
            cur = trie.walk(ids[len(ids) - p:])
            if cur is None:
                return False
            denom, kids = trie.continuations(cur, p, own)
            if denom <= 0 or not kids:
                return False
            cursors[p] = cur
            return True

        lo, hi = 0, longest  # the longest p with a match: every shorter suffix matches too
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if matched(mid):
                lo = mid
            else:
                hi = mid - 1
        best = None
        for p in range(lo, 0, -1):
            budget = self.budget(p)
            if budget <= to_beat:  # a tree's score is at most its size: shorter matches cannot win
                break
            cur = cursors.get(p)
            if cur is None:
                cur = trie.walk(ids[len(ids) - p:])
            score, tokens, parents, probs = self._grow(trie, cur, p, budget, depth, own)
            if score > to_beat:
                best, to_beat = (score, tokens, parents, probs, p), score
        return best

    def _grow(self, trie: SuffixTrie, cursor: Cursor, match_len: int, budget: int, max_depth: int, own: set[int]):
        """Greedy best-first tree: the frontier node of highest path probability goes in next."""
        min_prob = self.min_token_prob
        heap: list = []
        n = 0

        def push(cur, at_depth, prob, parent, tree_depth):
            nonlocal n
            denom, kids = trie.continuations(cur, at_depth, own)
            if denom <= 0:
                return
            for tok, count, child in kids:
                p = prob * count / denom
                if p >= min_prob and p > 0:
                    heapq.heappush(heap, (-p, n, tok, parent, child, tree_depth))
                    n += 1

        push(cursor, match_len, 1.0, -1, 1)
        tokens: list[int] = []
        parents: list[int] = []
        probs: list[float] = []
        while heap and len(tokens) < budget:
            neg, _, tok, parent, child, d = heapq.heappop(heap)
            tokens.append(tok)
            parents.append(parent)
            probs.append(-neg)
            if d < max_depth:
                push(child, match_len + d, -neg, len(tokens) - 1, d + 1)
        return sum(probs), tokens, parents, probs
