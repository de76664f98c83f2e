"""Every KV-cache operation, in one place.

The loop's cache holds every row of the batch: per layer, keys and values [B, H_kv, T, D] in a
transformers `DynamicCache` whose layers are all full (a sliding window is applied by the mask,
never by evicting keys, so rolling back is always possible), and a validity mask `valid` [B, T]:
a row's committed tokens are its valid slots, in order, wherever they sit. A row with n - 1
committed tokens in the cache has its next token at position n - 1 whatever its slots are, so
padding never shifts positions (RoPE is applied when a key is written).

A step feeds each row its last committed token (the root) and its draft: q = 1 + N_max slots
per row, each query seeing its row's valid slots, the root and its own ancestors in the draft
(tree.py), and, on sliding-window layers, only keys less than `sliding_window` positions back
(query position - key position < window, transformers' `sliding_window_overlay`; a key's
position is its count of valid slots before it, not its slot, since rows hold holes). The model
gets these as {"full_attention": mask, "sliding_attention": mask}, which Gemma 3's forward takes
as they are. A model that builds its own masks over a `new_cache()` (a draft model's
`CausalLM.forward`, mask None) gets the same window: with full layers transformers sizes both
masks to the whole cache and windows by slot, which is position in a cache without holes
(tests/integration/test_sliding_window.py: plain decoding against Hugging Face `generate`, every
drafter, one row and batched, against plain decoding).

After verification `commit` keeps, per row, the root and the accepted nodes:

    one row   the fast path: the cache is cut in place (a chain: crop; a tree: keep the path),
              every slot stays valid, and chains run with no mask at all (plain causal attention),
              except on a model with a sliding window: there the chain gets the dict of both masks
              (`_causal_or_none`), built as for a tree
    B rows    the kept slots become valid, the rest stay as holes; `compact` moves valid slots
              to the front when holes pile up

Cache kinds this cannot roll back (recurrent or linear-attention layers, cross-attention) are
refused when the decoder is built (`check_supported`).

Storage: every cache made here (`new_cache`, `SubsetCache`) keeps each layer's keys and values in
a preallocated buffer (`BufferLayer`) [B, H_kv, capacity, D] with a length n; `layer.keys` is the
view [B, H_kv, n, D]. A step writes its q new slots in place (transformers' `DynamicLayer` instead
concatenates, copying the whole cache every step and every layer); rolling back (`crop`) only
lowers n; a tree's accepted path is moved down in place (`keep_path`); the buffer grows by half
when full. Rows joining or leaving (`add_row`, `keep_rows`, `compact`) assign new tensors, which
become the buffer as they are.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from .errors import DraftsmithError
from .tree import Tree, additive_mask

SUPPORTED_LAYERS = {"full_attention", "sliding_attention"}


def _slots(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.dim() < 2 else t.shape[-2]


class BufferLayer(DynamicLayer):
    """One layer's keys and values in a preallocated buffer (module docstring): the same interface
    as transformers' `DynamicLayer` (`keys`, `values`, `update`, `crop`, `get_seq_length`), with
    `update` writing in place and `crop` only moving the length. Assigning `keys`/`values` makes
    the given tensor the buffer (callers assign both, of the same length).

    Under autograd (new states that require grad) `update` concatenates as `DynamicLayer` does:
    an in-place write would change tensors saved for the backward pass. A buffer made in inference
    mode and written outside it is reallocated first (inference tensors cannot be written there)."""

    SLACK = 128  # free slots at least, when the buffer is (re)allocated

    def __init__(self, **kwargs):
        self._k = self._v = None  # [B, H_kv, capacity, D]
        self._nk = self._nv = 0  # slots in use (equal between steps; assigned one after the other)
        super().__init__(**kwargs)

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[..., :self._nk, :]  # [B, H_kv, n, D]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k, self._nk = value, _slots(value)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[..., :self._nv, :]  # [B, H_kv, n, Dv]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v, self._nv = value, _slots(value)

    @property
    def _n(self) -> int:
        return self._nk

    @_n.setter
    def _n(self, n: int) -> None:
        self._nk = self._nv = n

    @property
    def capacity(self) -> int:
        return 0 if self._k is None or self._k.dim() < 2 else min(self._k.shape[-2], self._v.shape[-2])

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self._n if self.is_initialized and self._k is not None else 0

    def _fits(self, buf: torch.Tensor | None, new: torch.Tensor, q: int) -> bool:
        return (buf is not None and buf.dim() == new.dim() and buf.shape[:-2] == new.shape[:-2]
                and buf.shape[-1] == new.shape[-1] and buf.dtype == new.dtype and buf.device == new.device
                and self._n + q <= buf.shape[-2]
                and (torch.is_inference_mode_enabled() or not buf.is_inference()))

    def _grown(self, buf: torch.Tensor | None, new: torch.Tensor, q: int) -> torch.Tensor:
        n = self._n
        cap = max(n + q + self.SLACK, (3 * max(self.capacity, 1)) // 2)
        out = new.new_zeros(*new.shape[:-2], cap, new.shape[-1])  # [B, H_kv, cap, D]: zeros, never garbage behind a mask
        if n:
            out[..., :n, :].copy_(buf[..., :n, :])
        return out

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append key_states/value_states [B, H_kv, q, D]; -> every key and value [B, H_kv, n + q, D]."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad):
            keys = key_states if self._n == 0 else torch.cat([self.keys, key_states], dim=-2)
            values = value_states if self._n == 0 else torch.cat([self.values, value_states], dim=-2)
            self.keys, self.values = keys, values
            return keys, values
        q, n = key_states.shape[-2], self._n
        if not (self._fits(self._k, key_states, q) and self._fits(self._v, value_states, q)):
            self._k, self._v = self._grown(self._k, key_states, q), self._grown(self._v, value_states, q)
        self._k[..., n:n + q, :].copy_(key_states)
        self._v[..., n:n + q, :].copy_(value_states)
        self._n = n + q
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `-tokens_to_remove` tokens (transformers 5's negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if self.is_initialized and self._k is not None:
            self._n = max(0, self._n + tokens_to_remove)

    def keep_path(self, start: int, index: torch.Tensor) -> None:
        """Keep the first `start` tokens, then the tokens at `index` [m] (each >= start), in place."""
        m = index.numel()
        with torch.inference_mode() if self._k.is_inference() else nullcontext():  # the loop commits outside it
            self._k[..., start:start + m, :] = self._k.index_select(-2, index)
            self._v[..., start:start + m, :] = self._v.index_select(-2, index)
        self._n = start + m


class BufferCache(DynamicCache):
    """A DynamicCache whose layers are `BufferLayer`s (module docstring)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=BufferLayer)


def new_cache() -> DynamicCache:
    """An empty cache of full layers in preallocated buffers (see the module docstring for sliding
    windows and storage)."""
    return BufferCache()


class SubsetCache(BufferCache):
    """The cache of a forward over a subset of the decoder layers (target.PartialLM): each layer
    writes at its own `layer_idx`, as in the full model, so the layers it skips stay empty. Its
    length is read from its first kept layer (DynamicCache reads layer 0, which may be skipped);
    `crop`, `keep_path` and `remove_last` below work on it as on any cache."""

    def __init__(self, layers: list[int]):
        super().__init__()
        if not layers:
            raise DraftsmithError("a SubsetCache needs at least one layer")
        self.kept = tuple(sorted(int(i) for i in layers))

    def get_seq_length(self, layer_idx: int | None = None) -> int:
        return super().get_seq_length(self.kept[0] if layer_idx is None else layer_idx)


def remove_last(cache: DynamicCache, n: int) -> None:
    """Drop the last n tokens of every layer (transformers 5: `crop` takes a negative count)."""
    if n > 0:
        cache.crop(-n)


def crop(cache: DynamicCache, length: int) -> None:
    """Roll the cache back so that it holds its first `length` tokens."""
    extra = cache.get_seq_length() - length
    if extra < 0:
        raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} tokens to {length}")
    remove_last(cache, extra)


def keep_path(cache: DynamicCache, start: int, rows: list[int]) -> None:
    """Keep the first `start` tokens, then the tokens at `start + r` for `rows`, in that order
    (a tree's accepted path); drop the rest."""
    for layer in initialized(cache):
        index = torch.tensor([start + r for r in rows], dtype=torch.long, device=layer.keys.device)
        if isinstance(layer, BufferLayer):
            layer.keep_path(start, index)
            continue
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys.index_select(-2, index)], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values.index_select(-2, index)], dim=-2)


def initialized(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]


def layer_types(config) -> list[str]:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(cfg, "layer_types", None)
    return list(types) if types else ["full_attention"] * int(getattr(cfg, "num_hidden_layers", 1))


def sliding_window(config) -> int | None:
    """The sliding window of a model whose layers mix full and windowed attention (Gemma 3), else None."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if "sliding_attention" not in layer_types(config):
        return None
    window = getattr(cfg, "sliding_window", None)
    return int(window) if window else None


def check_supported(model, name: str) -> None:
    """Refuse, with a message, a model whose cache the loop cannot roll back."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        raise DraftsmithError(f"{name}: encoder-decoder models are not supported (the loop needs a decoder-only causal LM)")
    odd = sorted(set(layer_types(cfg)) - SUPPORTED_LAYERS)
    if odd:
        raise DraftsmithError(f"{name}: layers of kind {', '.join(odd)} keep a state the loop cannot roll back to an "
                              "accepted prefix; supported: full and sliding-window attention")


def _pad_seq(t: torch.Tensor, width: int) -> torch.Tensor:
    """[B, H, T, D] -> [B, H, width, D], zeros appended along the sequence."""
    pad = width - t.shape[-2]
    return torch.cat([t, t.new_zeros(*t.shape[:-2], pad, t.shape[-1])], dim=-2) if pad > 0 else t


class RowsCache:
    """The keys/values of every row in the loop, with a validity mask [B, T] (module docstring)."""

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.window = sliding_window(config)
        self.types = layer_types(config)
        self.cache = new_cache()
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=device)  # [B, T]
        self.dense = True  # no holes: every slot of every row is valid (known without a device sync)

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    # ----- rows join and leave ---------------------------------------------------------
    def add_row(self, cache: DynamicCache, length: int) -> None:
        """Append a one-row cache holding `length` tokens (0 for a one-token prompt) as the last row."""
        B, width = self.rows, max(self.width, length)
        row = torch.zeros(1, width, dtype=torch.bool, device=self.device)
        row[0, :length] = True
        mine, theirs = initialized(self.cache), initialized(cache)
        if B == 0:
            self.cache = cache
        elif not mine and theirs:  # every row so far had a one-token prompt: all their slots are padding
            for r in theirs:
                r.keys = torch.cat([r.keys.new_zeros(B, *r.keys.shape[1:-2], width, r.keys.shape[-1]), _pad_seq(r.keys, width)])
                r.values = torch.cat([r.values.new_zeros(B, *r.values.shape[1:-2], width, r.values.shape[-1]),
                                      _pad_seq(r.values, width)])
            self.cache = cache
        elif mine:
            for i, m in enumerate(mine):  # a one-token prompt brings an empty row
                k = theirs[i].keys if theirs else m.keys[:1, :, :0]
                v = theirs[i].values if theirs else m.values[:1, :, :0]
                m.keys = torch.cat([_pad_seq(m.keys, width), _pad_seq(k, width)])
                m.values = torch.cat([_pad_seq(m.values, width), _pad_seq(v, width)])
        pad = torch.zeros(B, width - self.width, dtype=torch.bool, device=self.device)
        self.dense = B == 0 or (self.dense and length == self.width)
        self.valid = torch.cat([torch.cat([self.valid, pad], dim=1), row])

    def keep_rows(self, rows: list[int]) -> None:
        if not rows:  # the batch is empty: start afresh
            self.cache, self.dense = new_cache(), True
            self.valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        for layer in initialized(self.cache):
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self.valid = self.valid.index_select(0, index)

    def compact(self) -> None:
        """Move each row's valid slots to the front; drop the columns no row needs."""
        counts = self.valid.sum(1)
        width = int(counts.max()) if counts.numel() else 0
        order = torch.argsort((~self.valid).to(torch.int8), dim=1, stable=True)[:, :width]  # [B, width] valid first
        for layer in initialized(self.cache):
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, idx), layer.values.gather(2, idx)
        self.valid = torch.arange(width, device=self.device)[None, :] < counts[:, None]
        self.dense = self.rows <= 1

    # ----- one step ----------------------------------------------------------------------
    def step_inputs(self, roots: list[int], drafts: list[torch.Tensor], trees: list[Tree | None],
                    lengths: list[int]):
        """The verification forward's inputs: ids [B, q], positions [B, q], cache_position [q] and
        the attention mask (None: plain causal; a [B, 1, q, T+q] additive mask; or, with sliding
        windows, a dict of one per layer type). `drafts[b]` [N_b] ids, `lengths[b]` the row's
        committed tokens (its root sits at position lengths[b] - 1)."""
        B, T = len(roots), self.width
        q = 1 + max(d.numel() for d in drafts)
        dev = self.device
        if B == 1 and not self.dense:
            self.compact()
            T = self.width
        if B == 1 and trees[0] is None:  # the fast path: one chain over a hole-free cache
            ids = torch.cat([torch.tensor([roots[0]], dtype=torch.long, device=dev), drafts[0].to(dev)])[None]
            pos = torch.arange(T, T + ids.shape[1], device=dev)[None]
            return ids, pos, torch.arange(T, T + ids.shape[1], device=dev), self._causal_or_none(pos, T)
        ids = torch.zeros(B, q, dtype=torch.long, device=dev)  # [B, q]: root + draft, padded
        pos = torch.zeros(B, q, dtype=torch.long, device=dev)  # [B, q]
        allow = torch.zeros(B, q, T + q, dtype=torch.bool, device=dev)  # [B, q, T+q]
        allow[:, :, :T] = self.valid[:, None, :]
        for b, (root, d, tree) in enumerate(zip(roots, drafts, trees)):
            n = d.numel()
            tree = tree or Tree.chain(n)
            ids[b, 0] = root
            ids[b, 1:n + 1] = d.to(dev)
            pos[b, :n + 1] = tree.position_ids(lengths[b] - 1, dev)[0]
            allow[b, :n + 1, T:T + n + 1] = tree.ancestry.to(dev)
            allow[b, n + 1:, :] = False
            pad = torch.arange(n + 1, q, device=dev)
            allow[b, pad, T + pad] = True  # padding sees itself only
        return ids, pos, torch.arange(T, T + q, device=dev), self._masks(allow, pos)

    def _causal_or_none(self, pos: torch.Tensor, T: int):
        if self.window is None:
            return None
        q = pos.shape[1]
        allow = torch.ones(1, q, T + q, dtype=torch.bool, device=self.device).tril(T)
        return self._masks(allow, pos)

    def _masks(self, allow: torch.Tensor, pos: torch.Tensor):
        """allow [B, q, T+q] -> the additive mask [B, 1, q, T+q]; with a sliding window, a dict
        {layer type: mask} whose windowed mask also hides keys `window` or more positions back."""
        additive = lambda a: additive_mask(a, self.dtype, self.device)[:, None]  # noqa: E731
        if self.window is None:
            return additive(allow)
        key_pos = torch.cat([self.valid.long().cumsum(1) - 1, pos], dim=1)  # [B, T+q] position of each key slot
        near = (pos[:, :, None] - key_pos[:, None, :]) < self.window  # [B, q, T+q]
        return {"full_attention": additive(allow), "sliding_attention": additive(allow & near)}

    def commit(self, kept: list[list[int]], q: int) -> None:
        """After a step of q slots per row: keep, per row, the step slots `kept[b]` (0 = the root,
        1 + i = draft node i)."""
        if self.rows == 1:  # the fast path: cut the cache in place, no holes
            k, T = kept[0], self.width
            if k == list(range(len(k))):
                crop(self.cache, T + len(k))
            else:
                keep_path(self.cache, T, k)
            self.valid = torch.ones(1, T + len(k), dtype=torch.bool, device=self.device)
            self.dense = True
            return
        new = torch.zeros(self.rows, q, dtype=torch.bool, device=self.device)
        for b, k in enumerate(kept):
            new[b, k] = True
        self.valid = torch.cat([self.valid, new], dim=1)
        self.dense = False
        if self.width > 2 * int(self.valid.sum(1).max()) + 32:
            self.compact()
