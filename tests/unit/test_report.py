"""Benchmark arithmetic: τ counts the bonus token, speedup is the mean of per-question
tokens/s over the baseline's (Spec-Bench), with total tokens / total time beside it."""

import pytest

from draftsmith.bench.report import ALL, markdown, summarize
from draftsmith.bench.runner import first_divergence


def rec(method, cat, tokens, wall, steps=None, drafted=None, accepted=None, same=True, div=None):
    return {"method": method, "category": cat, "new_tokens": tokens, "wall_time": wall, "steps": steps,
            "drafted": drafted, "accepted": accepted, "drafter_time": 0.0 if steps else None,
            "matches_baseline": same, "first_divergence": div, "accepted_per_step": None}


RECORDS = [
    rec("none", "a", 100, 10.0, steps=100, drafted=0, accepted=0),
    rec("none", "a", 10, 0.5, steps=10, drafted=0, accepted=0),
    rec("ngram", "a", 100, 5.0, steps=40, drafted=80, accepted=60),
    rec("ngram", "a", 10, 0.5, steps=10, drafted=10, accepted=0, same=False, div=3),
]


def test_metrics_by_hand():
    rows = {(r["method"], r["category"]): r for r in summarize(RECORDS)}
    ngram = rows[("ngram", "a")]
    # per-question tokens/s: none (10, 20) -> 15; ngram (20, 20) -> 20
    assert ngram["speedup"] == pytest.approx(20 / 15)
    # totals: none 110 / 10.5; ngram 110 / 5.5
    assert ngram["speedup_total"] == pytest.approx((110 / 5.5) / (110 / 10.5))
    assert ngram["tau"] == pytest.approx(110 / 50)  # tokens per step, bonus included
    assert ngram["alpha"] == pytest.approx(60 / 90)
    assert ngram["identical"] == 1 and ngram["first_divergence"] == 3
    assert rows[("none", "a")]["tau"] == 1.0 and rows[("none", "a")]["speedup"] == 1.0
    assert rows[("ngram", ALL)]["turns"] == 2
    assert "| ngram | a | 1.33x |" in markdown(summarize(RECORDS))


def test_acceptance_per_position():
    from draftsmith.bench.report import position_acceptance

    steps = {"drafted_per_step": [3, 3, 2, 0], "accepted_per_step": [3, 1, 0, 0]}
    # position 1: reached 3 times (the empty draft does not count), kept twice
    # position 2: reached by steps 1 and 2, kept once; position 3: reached once (step 1), kept
    assert position_acceptance([steps], positions=4) == [2 / 3, 1 / 2, 1.0, None]


def test_spread_across_repeats():
    recs = [dict(r, repeat=0) for r in RECORDS] + [
        dict(rec("none", "a", 100, 10.0, steps=100, drafted=0, accepted=0), repeat=1),
        dict(rec("ngram", "a", 100, 2.5, steps=40, drafted=80, accepted=60), repeat=1)]
    ngram = next(r for r in summarize(recs) if r["method"] == "ngram" and r["category"] == "a")
    assert ngram["speedup_std"] == pytest.approx(((20 / 15 - 4.0) ** 2 / 2) ** 0.5)


def test_lossy_methods_are_flagged():
    recs = [RECORDS[0], dict(RECORDS[2], method="typical", lossless=False)]
    assert {r["method"] for r in summarize(recs)} == {"none", "typical (lossy)"}


def test_hf_rows_have_no_tau():
    rows = summarize([RECORDS[0], rec("hf_assisted", "a", 100, 5.0)])
    hf = next(r for r in rows if r["method"] == "hf_assisted")
    assert hf["tau"] is None and hf["alpha"] is None and hf["speedup"] == pytest.approx(2.0)


@pytest.mark.parametrize("a, b, expected", [([1, 2, 3], [1, 2, 3], None), ([1, 2, 3], [1, 5, 3], 1),
                                            ([1, 2], [1, 2, 3], 2), ([], [], None)])
def test_first_divergence(a, b, expected):
    assert first_divergence(a, b) == expected


def test_console_table_prints_nested_specs_whole(capsys):
    """Bug: the console table went through rich's markup, which took a nested spec's brackets
    for styles: `union:drafters=[ngram,eagle]` and `union:drafters=[suffix,eagle]` both printed as
    `union:drafters=`, two rows with one name."""
    from draftsmith.bench.report import print_table

    records = [rec("none", "a", 10, 1.0, steps=10, drafted=0, accepted=0),
               rec("union:drafters=[ngram,eagle]", "a", 10, 0.5, steps=5, drafted=8, accepted=5),
               rec("union:drafters=[suffix,eagle]", "a", 10, 0.5, steps=5, drafted=8, accepted=5)]
    print_table(summarize(records), "title [x]")
    out = capsys.readouterr().out
    assert "union:drafters=[ngram,eagle]" in out and "union:drafters=[suffix,eagle]" in out and "title [x]" in out
