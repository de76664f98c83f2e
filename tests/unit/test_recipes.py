"""The recipe table (tests/recipes.py) covers every registered drafter and verifier, every recipe
is in some test matrix, and each recipe's flags are what its drafter declares and does. A new
drafter or verifier registered without a recipe fails here."""

from typing import ClassVar

import pytest
import torch

from draftsmith import DrafterBase, SamplingParams, SpeculativeDecoder, VerifierBase
from draftsmith.drafters import REGISTRY, as_drafter
from draftsmith.verify import VERIFIERS, RejectionVerifier
from tests.conftest import tiny_model
from tests.recipes import RECIPES, VERIFIER_RECIPES, recipes, sampling_cases


def test_every_registered_drafter_has_a_recipe():
    covered = {r.registry for r in RECIPES.values()}
    missing = sorted(set(REGISTRY) - covered)
    assert not missing, f"drafters registered without a test recipe (add them to tests/recipes.py): {missing}"
    unknown = sorted(covered - set(REGISTRY) - {None})
    assert not unknown, f"recipes name drafters that are not registered: {unknown}"


def test_every_registered_verifier_has_a_recipe():
    covered = {v.registry for v in VERIFIER_RECIPES.values()}
    missing = sorted(set(VERIFIERS) - covered)
    assert not missing, f"verifiers registered without a test recipe (add them to tests/recipes.py): {missing}"
    for name, v in VERIFIER_RECIPES.items():
        rule = v.make()
        assert bool(rule.lossless) == v.lossless, name
        if v.registry is not None:
            assert isinstance(rule, VERIFIERS[v.registry]), name
    assert any(not v.lossless and v.sampling for v in VERIFIER_RECIPES.values()), "no negative control"


def test_every_recipe_is_in_a_matrix_and_every_drafter_is_tested():
    idle = [n for n, r in RECIPES.items() if not (r.greedy or r.batch or r.sampling)]
    assert not idle, f"recipes in no test matrix: {idle}"
    from tests.integration.test_distribution import CASES
    from tests.integration.test_heads import KINDS

    assert all(c in CASES for _, c in sampling_cases())
    for name, cls in REGISTRY.items():
        mine = [r for r in RECIPES.values() if r.registry == name]
        if cls.needs_hidden_states:  # heads: greedy single-row and batched in test_heads
            assert name in KINDS, f"{name} is missing from test_heads.KINDS"
        elif name != "none":
            assert any(r.greedy for r in mine), f"{name} has no recipe in the greedy equivalence matrix"
            assert any(r.batch for r in mine), f"{name} has no recipe in the batched matrix"
        if name != "none":
            assert any(r.sampling for r in mine), f"{name} has no recipe in the sampling matrix"
    assert recipes("greedy") and recipes("batch") and recipes("sampling")


class Spy(VerifierBase):
    """Rejection sampling that writes down what each draft looked like."""

    name: ClassVar[str] = "spy"

    def __init__(self):
        self.seen: list[tuple[int, bool, bool]] = []  # (size, q given, parents given)

    def verify_row(self, draft, target_logits, params, generator=None):
        self.seen.append((draft.size, draft.q is not None, draft.parents is not None))
        return RejectionVerifier().verify_row(draft, target_logits, params, generator)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_flags_are_what_the_drafter_does(name, tmp_path):
    recipe = RECIPES[name]
    target = tiny_model("llama")
    drafter = recipe.make(target, "llama", tmp_path)
    if recipe.registry is not None:
        assert isinstance(drafter, REGISTRY[recipe.registry])
    assert isinstance(drafter, DrafterBase) == recipe.forkable
    view = as_drafter(drafter)
    assert bool(view.trees) == recipe.trees, f"{name}: declares trees={view.trees}"
    assert bool(view.needs_hidden_states) == recipe.heads, f"{name}: declares needs_hidden_states={view.needs_hidden_states}"
    spy = Spy()
    dec = SpeculativeDecoder(target, drafter, verifier=spy)
    prompt = [5, 17, 3, 42, 5, 17, 3, 42, 5, 17]
    out = dec.generate(prompt, SamplingParams(temperature=1.0, max_new_tokens=16, ignore_eos=True),
                       torch.Generator().manual_seed(0))
    assert len(out.token_ids) == 16
    drafted = [(q, tree) for size, q, tree in spy.seen if size > 0]
    if name == "none":
        assert not drafted
        return
    if not drafted:  # an adaptive draft length may choose plain decoding on a random model
        assert view.adaptive, f"{name} drafted nothing in 16 tokens"
        return
    assert any(q for q, _ in drafted) == recipe.sampled_q, f"{name}: q given = {[q for q, _ in drafted]}"
    if any(tree for _, tree in drafted):
        assert recipe.trees, f"{name} proposed a tree but its recipe says chains"
