"""The preallocated KV cache (cache.BufferLayer): the same keys, values and logits as
transformers' DynamicCache under every operation the loop makes, without copying the cache on
each step. Runs on the test device (--device)."""

import torch
from transformers import DynamicCache

from draftsmith.cache import BufferLayer, RowsCache, crop, keep_path, new_cache
from tests.conftest import tiny_model


def _feed(target, cache, ids):
    n = cache.get_seq_length()
    dev = target.device
    slots = torch.arange(n, n + len(ids), device=dev)
    return target.step(torch.tensor([ids], device=dev), slots[None], cache, cache_position=slots).logits


def test_steps_crops_and_tree_paths_give_dynamic_cache_logits_bit_for_bit():
    """Guards the cache swap itself: a prefill, chains cropped back, tree paths kept and growth
    past the buffer's slack must give DynamicCache's logits exactly (fp32, tiny Llama and Qwen2)."""
    for arch in ("llama", "qwen2"):
        target = tiny_model(arch)
        mine, ref = new_cache(), DynamicCache()
        gen = torch.Generator().manual_seed(0)
        a, b = _feed(target, mine, list(range(3, 40))), _feed(target, ref, list(range(3, 40)))
        assert torch.equal(a, b)
        for step in range(60):  # 60 steps of 5 slots: well past the first buffer's 128 free slots
            ids = torch.randint(0, 96, (5,), generator=gen).tolist()
            a, b = _feed(target, mine, ids), _feed(target, ref, ids)
            assert torch.equal(a, b), f"{arch}: step {step} differs"
            L = mine.get_seq_length() - 5
            if step % 3 == 0:
                crop(mine, L + 2), crop(ref, L + 2)
            elif step % 3 == 1:
                keep_path(mine, L, [0, 2, 4]), keep_path(ref, L, [0, 2, 4])
        for x, y in zip(mine.layers, ref.layers):
            assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


def test_a_step_writes_in_place_and_a_crop_copies_nothing():
    """Guards the point of the buffer: DynamicCache concatenates, copying the whole cache on every
    step; here a step after a crop writes into the same storage."""
    target = tiny_model("llama")
    cache = new_cache()
    _feed(target, cache, list(range(20)))
    layer = cache.layers[0]
    ptr = layer.keys.data_ptr()
    for _ in range(10):
        _feed(target, cache, [1, 2, 3, 4])
        crop(cache, cache.get_seq_length() - 3)
    assert layer.keys.data_ptr() == ptr and cache.get_seq_length() == 30
    assert isinstance(layer, BufferLayer) and layer.capacity >= 30


def test_keys_and_values_assigned_one_after_the_other_never_show_unwritten_slots():
    """Guards a bug of the first version: one length for both made `values` read past what was
    written (uninitialised memory, NaN in the batched tests) once `keys` alone was reassigned,
    as RowsCache.add_row does, one statement each."""
    layer = BufferLayer()
    k = torch.randn(1, 2, 3, 4)
    layer.update(k, k + 1)
    longer = torch.randn(1, 2, 7, 4)
    layer.keys = longer
    assert layer.values.shape[-2] == 3 and torch.equal(layer.values, k + 1)
    layer.values = longer + 1
    assert layer.get_seq_length() == 7 and torch.equal(layer.values, longer + 1)
    layer.update(k, k)
    assert torch.equal(layer.keys[..., :7, :], longer) and torch.equal(layer.keys[..., 7:, :], k)


def test_rows_joining_and_compacting_keep_every_rows_keys():
    """RowsCache's row operations assign tensors (add_row, keep_rows, compact); the buffer must
    take them as they are and keep growing in place afterwards."""
    rows = RowsCache(tiny_model("llama").config, torch.device("cpu"), torch.float32)
    caches = []
    for n in (4, 6):
        c = new_cache()
        c.update(torch.full((1, 2, n, 8), float(n)), torch.full((1, 2, n, 8), -float(n)), 0)
        caches.append(c)
        rows.add_row(c, n)
    layer = rows.cache.layers[0]
    assert layer.keys.shape == (2, 2, 6, 8) and float(layer.keys[0, 0, 3, 0]) == 4 and float(layer.keys[1, 0, 5, 0]) == 6
    assert float(layer.values[0, 0, 0, 0]) == -4 and float(layer.keys[0, 0, 5, 0]) == 0  # padding is zeros
    rows.keep_rows([1])
    assert layer.keys.shape == (1, 2, 6, 8) and float(layer.values[0, 0, 5, 0]) == -6


def test_autograd_and_inference_mode_boundaries():
    """Under autograd the update concatenates (an in-place write would corrupt saved tensors); a
    buffer made in inference mode and written outside it is reallocated, not written in place."""
    layer = BufferLayer()
    w = torch.randn(1, 2, 3, 4, requires_grad=True)
    k, v = layer.update(w * 2, w * 3)
    k2, v2 = layer.update(w * 4, w * 5)
    (k2.sum() + v2.sum()).backward()
    assert torch.allclose(w.grad, torch.full_like(w, 14.0))
    other = BufferLayer()
    with torch.inference_mode():
        other.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    with torch.no_grad():
        keys, _ = other.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert keys.shape[-2] == 4 and not keys.is_inference() and float(keys[..., :3, :].min()) == 1
