"""The benchmark's roofline (bench/roofline.py): the bound a step cannot beat, and where a step's
time goes."""

from __future__ import annotations

import math

from draftsmith import SamplingParams, SpeculativeDecoder
from draftsmith.bench import roofline
from tests.conftest import tiny_model


def test_weight_bytes_count_a_tied_lm_head_once():
    """A tied embedding / LM head is one tensor read once: counting it twice would double the
    bound of every small model with tied weights (SmolLM2's LM head is a fifth of it)."""
    target = tiny_model("llama")
    model = target.model
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    assert roofline.weight_bytes(model) == sum(unique.values())
    c = target.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    assert roofline.kv_bytes_per_token(target) == 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4  # fp32


def test_triad_bandwidth_is_a_plausible_number():
    bw = roofline.triad_bandwidth("cpu", mib=8, repeats=2)
    assert math.isfinite(bw) and 1e8 < bw < 1e13  # 0.1 GB/s .. 10 TB/s


def test_step_time_splits_into_forward_drafter_and_the_rest():
    """Per step: the target's forward (timed by the loop), the drafter and the rest add up to the
    step; the bound is weights plus KV at the mean context over the bandwidth."""
    records = [{"method": "ngram", "steps": 10, "wall_time": 1.2, "prefill_time": 0.2, "target_time": 0.6,
                "drafter_time": 0.1, "prompt_tokens": 100, "new_tokens": 20},
               {"method": "hf_prompt_lookup", "steps": None, "wall_time": 1.0, "target_time": None}]
    m = {"bandwidth": 1e9, "weight_bytes": 1_000_000, "kv_bytes_per_token": 1000}
    (row,) = roofline.rows(records, m)
    assert row["method"] == "ngram"
    assert math.isclose(row["step_ms"], 100.0) and math.isclose(row["forward_ms"], 60.0)
    assert math.isclose(row["drafter_ms"], 10.0) and math.isclose(row["other_ms"], 30.0)
    assert math.isclose(row["bound_ms"], (1_000_000 + 1000 * 110) / 1e9 * 1e3)
    assert math.isclose(row["not_forward_share"], 0.4)
    assert "| ngram | 100.0 | 60.0 |" in roofline.markdown([row], m)


def test_the_loop_times_the_targets_forward():
    """RunStats.target_time: the verification forwards only (a part of the generation's time)."""
    target = tiny_model("llama")
    out = SpeculativeDecoder(target, "ngram").generate([5, 6, 7, 5, 6, 7, 5], SamplingParams(max_new_tokens=12,
                                                                                           ignore_eos=True))
    s = out.stats
    assert 0 < s.target_time < s.wall_time and s.as_dict()["target_time_s"] > 0
