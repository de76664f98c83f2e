"""Exact mode: greedy output id-for-id identical to plain decoding in bf16, whatever the drafter
and whatever else is in the batch.

Why outputs differ without it. A verification forward over 1 + N tokens (or over B rows) and a
one-token forward compute the same function but round differently in bf16, so a token whose
top-2 logits are within rounding can flip, and everything after it differs. Measured on the
2-core CPU (torch 2.13, SmolLM2 bf16), op by op, feeding a token alone or among others:

    embedding, RMSNorm, rotary, SiLU, residual adds       the same bits
    linear layers over M <= 32 rows                       the same bits (oneDNN changes kernels above);
                                                          on an AMD EPYC one shape differs from M = 2
    attention over q queries with a mask                  differs from a one-query call for q >= 2
                                                          (kernel blocking over queries and keys)

So exact mode changes two things, only inside the verification forward (`Exact.active()`):

    attention     each query is computed by the very call plain decoding makes for it:
                  transformers' sdpa, one query, over exactly the keys it sees, in cache order,
                  with no mask (`Exact.attention`). Plain decoding's call is its own; a draft
                  node's call gets the same keys (the committed prefix, then its path), so the
                  same inputs give the same bits on any deterministic kernel, CPU or GPU.
    linear        run in chunks of rows, per weight shape the largest count for which every row
                  of a product equals its one-row product, measured at start-up on this device
                  (`row_stable_chunks`; a shape whose kernel changes at 2 rows runs row by row).

Prefill is the same forward in plain and speculative decoding (the same prompt), so it keeps the
fast path. A model whose attention does not go through draftsmith's attention function, or a
device where the premise fails, is refused at start-up: `Exact` runs a chain forward against
one-token forwards on the target itself and compares the logits bit for bit (`self_check`).

What it costs: a step runs one attention call per query and layer instead of one per layer
(measured in benchmarks/smollm2-135m-bf16-exact/). Exact mode promises greedy equality; sampled
outputs stay lossless (the same distribution), as without it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from functools import partial

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa

from .cache import sliding_window
from .errors import DraftsmithError

_ACTIVE: ContextVar["Exact | None"] = ContextVar("draftsmith_exact", default=None)


def current() -> "Exact | None":
    """The exact mode of the forward running in this thread, if any."""
    return _ACTIVE.get()


# ----- linear layers ------------------------------------------------------------------------
def _row_stable_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward, in chunks of its weight shape's row-stable count while exact mode is active."""
    state = _ACTIVE.get()
    rows = x.numel() // max(1, x.shape[-1])
    chunk = state.chunks.get(_shape_key(module), 1) if state is not None else rows
    if rows <= chunk:
        return F.linear(x, module.weight, module.bias)
    flat = x.reshape(1, rows, x.shape[-1])  # [1, M, in]
    out = torch.cat([F.linear(c, module.weight, module.bias) for c in flat.split(chunk, dim=1)], dim=1)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _install_row_stable_linears(model) -> int:
    """Route every nn.Linear of `model` through `_row_stable_linear` (the same as before while
    exact mode is off). Returns how many were switched."""
    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and not isinstance(mod.forward, partial):
            mod.forward = partial(_row_stable_linear, mod)
            n += 1
    return n


def _shape_key(mod: torch.nn.Linear) -> tuple:
    w = mod.weight
    return (tuple(w.shape), w.dtype, w.device, mod.bias is not None)


def _probe_input(gen: torch.Generator, rows: int, width: int, wide: bool) -> torch.Tensor:
    """[1, rows, width] float32: normal values, or (`wide`) signed powers of two over 2^-14..2^14,
    whose products make summation order show in the last bits of a low-precision result."""
    if not wide:
        return torch.randn(1, rows, width, generator=gen)
    exps = torch.randint(-14, 15, (1, rows, width), generator=gen).float()
    return torch.sign(torch.randn(1, rows, width, generator=gen)) * torch.exp2(exps)


@torch.inference_mode()
def row_stable_chunks(model, max_rows: int = 32, seed: int = 0, budget: float = 2e8) -> dict[tuple, int]:
    """Per weight shape of the model's linear layers: the largest c <= max_rows such that for every
    m <= c each row of an m-row product equals that row's one-row product (bitwise).

    A kernel that accumulates in another order for m rows changes float32 sums in their last bits,
    which bf16 rounding hides for most inputs, so one random input rarely shows it. Each shape is
    tried on 4-64 inputs (as many as `budget` multiply-adds allow; half normal, half with a wide
    range of magnitudes). Measured on an AMD EPYC (AVX512-BF16, torch 2.13): SmolLM2's 576x1536
    down projection differs from 2 rows (one input agreed up to 16); a 64x64 projection of a tiny
    Gemma 3 differs in 1 of 20 normal inputs and 1 of 5 wide ones, which a 4-input probe missed
    and greedy decoding then found. Per shape, because kernels are chosen per shape: one chunk
    for all would run every layer row by row. Still a probe, not a proof: the self-check and the
    tests compare whole decodes."""
    shapes: dict[tuple, torch.nn.Linear] = {}
    for mod in model.modules():
        if type(mod) is torch.nn.Linear:
            shapes.setdefault(_shape_key(mod), mod)
    gen = torch.Generator().manual_seed(seed)
    chunks = {}
    for key, mod in shapes.items():
        memo = (key, max_rows, seed, budget, torch.get_num_threads())
        if memo in _MEASURED:  # kernels are chosen by shape, dtype, device and threads: measured once per process
            chunks[key] = _MEASURED[memo]
            continue
        best = max_rows
        out_f, in_f = key[0]
        trials = int(min(64, max(4, budget / (max_rows * in_f * out_f))))
        for t in range(trials):
            x = _probe_input(gen, best, in_f, wide=t % 2 == 1).to(device=key[2], dtype=key[1])  # [1, M, in]
            alone = torch.cat([F.linear(x[:, i:i + 1], mod.weight, mod.bias) for i in range(best)], dim=1)  # [1, M, out]
            for m in range(2, best + 1):  # every row in an m-row call (chunks of m): as many rows tried at each m
                chunked = torch.cat([F.linear(c, mod.weight, mod.bias) for c in x.split(m, dim=1)], dim=1)
                if not torch.equal(chunked, alone):
                    best = m - 1
                    break
            if best == 1:
                break
        chunks[key] = _MEASURED[memo] = best
    return chunks


_MEASURED: dict[tuple, int] = {}  # row_stable_chunks' measurements in this process (a fact about the machine)


# ----- attention ------------------------------------------------------------------------------
class _RowPlan:
    """How one row's queries see the keys: `index` the committed slots then the step's slots (a
    buffer of keys in cache order; None = the first `n` slots as they are), and per query its
    (start, end) run in that buffer plus the extra buffer positions of its path (a tree node)."""

    __slots__ = ("b", "index", "queries")

    def __init__(self, b: int, index: torch.Tensor | None, queries: list[tuple[int, int, int, torch.Tensor | None]]):
        self.b, self.index, self.queries = b, index, queries  # queries: (j, start, end, path | None)


def _plan(mask, q: int, K: int, B: int, device, valid: torch.Tensor | None = None) -> list[_RowPlan]:
    """Per row and query, the keys it sees, from the step's mask (additive [B|1, 1, q, K], boolean,
    or None: causal, the queries being the last q of the K keys). `valid` [B, K - q]: the rows'
    committed slots (cache.py; None: those some query sees)."""
    if mask is None:
        vis = torch.ones(1, q, K, dtype=torch.bool).tril(K - q)  # [1, q, K]
    else:
        m = mask[:, 0] if mask.dim() == 4 else mask  # [B|1, q, K]
        vis = (m if m.dtype == torch.bool else m == 0).cpu()
    vis = vis.expand(B, q, K)
    plans = []
    first_new = K - q  # the step's own slots are the last q
    for b in range(B):
        seen_any = vis[b, :, :first_new].any(0) if valid is None else valid[b, :first_new]
        committed = seen_any.nonzero().flatten().tolist()
        n_c = len(committed)
        dense = committed == list(range(n_c))
        # buffer = committed slots, then the q step slots
        index = None if dense and n_c == first_new else torch.tensor(
            committed + list(range(first_new, K)), dtype=torch.long, device=device)
        queries = []
        for j in range(q):
            row = vis[b, j]
            seen_c = row[:first_new].nonzero().flatten().tolist()
            seen_new = (row[first_new:].nonzero().flatten() + n_c).tolist()  # buffer positions
            if seen_c:
                start = committed.index(seen_c[0])
                if committed[start:start + len(seen_c)] != seen_c or start + len(seen_c) != n_c:
                    raise DraftsmithError("exact mode: a query sees a committed prefix that is not one run")
            else:
                start = n_c
            if seen_new == list(range(n_c, n_c + len(seen_new))):
                queries.append((j, start, n_c + len(seen_new), None))
            else:
                queries.append((j, start, n_c, torch.tensor(seen_new, dtype=torch.long, device=device)))
        plans.append(_RowPlan(b, index, queries))
    return plans


# attention kwargs that change nothing in the attention's arithmetic (what Llama/Qwen2-style layers
# pass along; with them a call went through transformers' wrapper, 4 more ops per query and layer);
# any other (a softcap, a bias) sends a call through transformers' own sdpa
INERT_KWARGS = frozenset({"position_ids", "cache_position", "sliding_window", "output_hidden_states", "use_cache",
                          "output_attentions", "return_dict"})


class Exact:
    """Exact mode for one target (see the module docstring). Built once per decoder."""

    def __init__(self, target, max_rows: int = 32):
        from .attention import NAME

        impl = getattr(target.config, "_attn_implementation", None)
        if impl != NAME:
            raise DraftsmithError(
                f"exact mode needs the target's attention to run through draftsmith's ({NAME}); {target.name} "
                f"runs {impl!r} (its modeling code could not be switched safely), so its output cannot be "
                "made bit-equal to plain decoding here; fp32 (`--dtype fp32`) makes near-tie differences rare.")
        self.target = target
        self.windowed = sliding_window(target.config) is not None
        self.chunks = row_stable_chunks(target.model, max_rows)
        self.chunk = min(self.chunks.values(), default=max_rows)  # the smallest, for messages
        _install_row_stable_linears(target.model)
        self._plans: dict = {}
        self._valid = None
        self.self_check()

    @contextmanager
    def active(self, valid: torch.Tensor | None = None):
        """Exact mode for the forwards run inside (this thread only). `valid` [B, T]: the rows'
        committed slots (RowsCache.valid), needed where a sliding window hides some of them."""
        token = _ACTIVE.set(self)
        self._plans = {}
        self._valid = valid.cpu() if valid is not None else None
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            self._plans = {}

    def attention(self, module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
        """query [B, H, q, D], key/value [B, H_kv, K, D], attention_mask as the model gives it ->
        ([B, q, H, D], None): every query by the one-query call plain decoding makes."""
        B, H, q, D = query.shape
        K = key.shape[2]
        ident = (id(attention_mask), q, K, B)
        plans = self._plans.get(ident)
        if plans is None:
            plans = self._plans[ident] = _plan(attention_mask, q, K, B, key.device, self._valid)
        n_rep = getattr(module, "num_key_value_groups", 1)
        # plain decoding's one-query call: transformers' sdpa with no mask; on CPU and CUDA that is
        # this F.sdpa call (kwargs beyond the usual, e.g. a softcap, go through transformers itself)
        direct = set(kwargs) <= INERT_KWARGS and (
            n_rep == 1 or use_gqa_in_sdpa(None, key, value))
        gqa = {"enable_gqa": True} if n_rep > 1 else {}

        def one(qj, k, v, start):  # [1, H, 1, D], keys from `start` visible -> [1, 1, H, Dv]
            if self.windowed:  # plain decoding's call here has every key and an additive mask (cache.py)
                mask = torch.zeros(1, 1, 1, k.shape[2], dtype=qj.dtype, device=qj.device)
                mask[..., :start] = torch.finfo(qj.dtype).min
                return sdpa_attention_forward(module, qj, k, v, mask, dropout=dropout, scaling=scaling, **kwargs)[0]
            k, v = k[:, :, start:], v[:, :, start:]
            if direct:
                return F.scaled_dot_product_attention(qj, k, v, attn_mask=None, dropout_p=0.0, scale=scaling,
                                                      is_causal=False, **gqa).transpose(1, 2)
            return sdpa_attention_forward(module, qj, k, v, None, dropout=dropout, scaling=scaling, **kwargs)[0]

        outs = []  # [1, 1, H, Dv] per (row, query), rows first: the plans' order
        for p in plans:
            queries = query[p.b:p.b + 1].split(1, dim=2)  # q x [1, H, 1, D]
            k_row, v_row = key[p.b:p.b + 1], value[p.b:p.b + 1]  # [1, H_kv, K, D]
            if p.index is not None:
                k_row, v_row = k_row.index_select(2, p.index), v_row.index_select(2, p.index)
            scratch = None
            for j, start, end, path in p.queries:
                if path is None:
                    k, v = k_row[:, :, :end], v_row[:, :, :end]
                else:  # a tree node: its path written after the prefix, in a scratch copy
                    if scratch is None:
                        scratch = (k_row.clone(), v_row.clone())
                    ks, vs = scratch
                    n = path.numel()
                    ks[:, :, end:end + n] = k_row.index_select(2, path)
                    vs[:, :, end:end + n] = v_row.index_select(2, path)
                    k, v = ks[:, :, :end + n], vs[:, :, :end + n]
                outs.append(one(queries[j], k, v, start))
        return torch.cat(outs, dim=1).reshape(B, q, H, value.shape[-1]), None  # [B, q, H, Dv]

    @torch.inference_mode()
    def self_check(self, context: int = 12, width: int = 9) -> None:
        """On the target, with the loop's own inputs (cache.py's RowsCache): one-token steps in exact
        mode against plain decoding's, and a `width`-token verification forward against the
        one-token steps, bit for bit; refuse exact mode where they differ."""
        from .cache import RowsCache, new_cache

        target = self.target
        dev = target.device
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, target.vocab_size, (1, context + width), generator=gen).to(dev)  # [1, n]

        def row() -> RowsCache:  # a row whose cache holds ids[:context]; ids[context] is its root
            cache, slots = new_cache(), torch.arange(context, device=dev)
            target.step(ids[:, :context], slots[None], cache, cache_position=slots)
            rows = RowsCache(target.config, dev, target.dtype)
            rows.add_row(cache, context)
            return rows

        def forward(rows: RowsCache, n_committed: int, draft: torch.Tensor, exact: bool) -> torch.Tensor:
            inputs = rows.step_inputs([int(ids[0, n_committed - 1])], [draft], [None], [n_committed])
            ids_, pos, cache_position, mask = inputs
            with self.active(rows.valid) if exact else nullcontext():
                return target.step(ids_, pos, rows.cache, cache_position=cache_position, mask=mask).logits

        def one_token_steps(exact: bool) -> torch.Tensor:
            rows, out = row(), []
            for n in range(context + 1, context + width + 1):
                out.append(forward(rows, n, ids[0, :0], exact))
                rows.commit([[0]], 1)
            return torch.cat(out, dim=1)  # [1, width, V]

        exact_steps = one_token_steps(True)
        hint = ("" if target.dtype == torch.float32 else " In fp32 such differences are far rarer.") + (
            " Without exact mode greedy output can differ from plain decoding at near ties (bench reports the "
            "margin at the first difference).")
        if not torch.equal(exact_steps, one_token_steps(False)):
            raise DraftsmithError(f"exact mode is not available for {target.name} ({target.dtype}) on {dev}: its "
                                  "one-token forward does not give plain decoding's bits (its attention takes "
                                  "arguments exact mode does not reproduce)." + hint)
        together = forward(row(), context + 1, ids[0, context + 1:], True)  # [1, width, V]
        if not torch.equal(exact_steps, together):
            raise DraftsmithError(
                f"exact mode is not available for {target.name} ({target.dtype}) on {dev}: a {width}-token "
                "verification forward does not reproduce one-token forwards bit for bit even with per-query "
                f"attention and per-shape linear chunks ({sorted(set(self.chunks.values()))} rows; a kernel here depends on the number of rows)." + hint)
