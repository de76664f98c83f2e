"""The one table of drafter and verifier recipes. The test matrices draw from it:

    greedy       tests/integration/test_equivalence.py   one row, output ids == the autoregressive reference
    batch        tests/integration/test_batch.py         many rows, each == its request alone
    sampling     tests/integration/test_distribution.py  chi-square against the exact distribution, per case
    (heads greedy, single row and batched: tests/integration/test_heads.py, every kind in its KINDS)

A recipe is a factory `make(target, arch, tmp_path, draft=None) -> drafter` (`draft`: the
independent small model a draft-model recipe drafts with; None = a tiny model of `arch` with the
target's vocabulary, seed 1) and the capabilities the recipe's drafter declares or shows:

    registry    the draftsmith.drafters.REGISTRY name it builds (None: a test-only drafter)
    trees       proposes trees (parents given)
    heads       needs the target's hidden states (draft heads)
    sampled_q   at temperature > 0 its drafts carry the q they were drawn from (else q is None)
    forkable    several rows at once (a DrafterBase; a bare object with `propose` is not)
    verifier    the rule every matrix runs the recipe with (a multi-draft rule for multi-draft drafters)

tests/unit/test_recipes.py checks that every registered drafter and verifier has a recipe, that
every recipe is in some matrix, and that the flags are what the drafters really do. A new drafter
without a recipe fails CI there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

from draftsmith import CausalLM, Draft, DrafterBase, VerifierBase, VerifyResult, build_drafter
from draftsmith.sampling import probs
from draftsmith.verify import GreedyVerifier, RecursiveVerifier, RejectionVerifier, SpecTrVerifier
from draftsmith.verify import ArbitrageVerifier, BildVerifier, JudgeVerifier, RelaxedVerifier, TypicalVerifier
from tests.conftest import WrongDrafter, random_heads, tiny_model


@dataclass(frozen=True)
class Recipe:
    make: Callable  # (target, arch, tmp_path, draft=None) -> drafter
    registry: str | None
    trees: bool = False
    heads: bool = False
    sampled_q: bool = False
    forkable: bool = True
    greedy: bool = False  # in test_equivalence's matrix
    batch: bool = False  # in test_batch's matrix
    sampling: tuple[str, ...] = ()  # test_distribution's cases (CASES names) for this recipe
    verifier: str | None = None  # the acceptance rule the matrices run it with (None: the default per request)


def draft_lm(target: CausalLM, arch: str, draft: CausalLM | None) -> CausalLM:
    """The independent draft model: `draft` when the matrix gives one, else a tiny model of `arch`
    with the target's vocabulary (another seed, so q differs from p)."""
    return draft if draft is not None else tiny_model(arch, vocab=target.vocab_size, seed=1)


def folder_with_vocab(lm: CausalLM, folder: Path, ids: list[int]) -> str:
    """A draft model saved to `folder` with a draft vocabulary (heads/vocab.py) beside it."""
    from draftsmith.drafters.heads.vocab import save_vocab

    folder.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(folder)
    save_vocab(folder, ids)
    return str(folder)


def heads_with_vocab(heads: str, ids: list[int]) -> str:
    from draftsmith.drafters.heads.vocab import save_vocab

    save_vocab(heads, ids)
    return heads


class SampledTree:
    """Two root children drawn independently from q, each with one child drawn from q. Not a
    DrafterBase: the loop adapts it (one row at a time)."""

    name = "sampled-tree"
    needs_hidden_states = False

    def __init__(self, draft_lm):
        self.lm = draft_lm

    def bind(self, target):
        pass

    def prefill(self, prompt_ids):
        pass

    def _q(self, ids, params):
        with torch.no_grad():
            ids = torch.tensor([ids], device=self.lm.device)
            return probs(self.lm.model(ids).logits[0, -1], params)  # [V]

    def propose(self, ctx):
        if ctx.max_tokens < 2:
            return Draft.empty()
        q_root = self._q(ctx.ids, ctx.params)
        gen = ctx.generator
        cpu = lambda q: q.cpu() if gen is not None and gen.device != q.device else q  # noqa: E731
        firsts = torch.multinomial(cpu(q_root), 2, replacement=True, generator=gen).tolist()
        tokens, parents, qs = [], [], []
        for x in firsts:
            q_child = self._q(ctx.ids + [x], ctx.params)
            y = int(torch.multinomial(cpu(q_child), 1, generator=gen))
            tokens += [x, y]
            parents += [-1, len(tokens) - 2]
            qs += [q_root, q_child]
        order = [0, 2, 1, 3]  # topological order: both root children first
        remap = {old: new for new, old in enumerate(order)}
        return Draft(torch.tensor([[tokens[i] for i in order]]),
                     q=torch.stack([qs[i] for i in order]).unsqueeze(0),
                     parents=torch.tensor([-1 if parents[i] < 0 else remap[parents[i]] for i in order]))

    def observe(self, result):
        pass


def _heads(kind: str, seed: int = 2, scale: float = 0.5, vocab_ids: list[int] | None = None, **options):
    def make(target, arch, tmp_path, draft=None):
        folder = random_heads(target, kind, Path(tmp_path) / f"heads-{kind}-{seed}", seed=seed, scale=scale)
        if vocab_ids is not None:
            heads_with_vocab(folder, vocab_ids)
        return build_drafter(kind, heads=folder, **options)
    return make


def _dm(k: int, adaptive: bool = False, confidence: float = 0.0, self_draft: bool = False):
    def make(target, arch, tmp_path, draft=None):
        lm = CausalLM(target.model) if self_draft else draft_lm(target, arch, draft)
        return build_drafter("draft_model", model=CausalLM(lm.model), k=k, adaptive=adaptive, confidence=confidence)
    return make


def _online(k: int = 3):
    """An online drafter whose draft model trains hard while the matrix runs (lr 1e-2, 2 steps a
    finished row): its weights change between rows and mid-row, and every output must not."""
    def make(target, arch, tmp_path, draft=None):
        lm = copy.deepcopy(draft_lm(target, arch, draft).model)  # it trains the weights it drafts with: a copy of its own
        dm = build_drafter("draft_model", model=CausalLM(lm), k=k, adaptive=False, confidence=0.0)
        return build_drafter("online", drafter=dm, lr=1e-2, batch=2, steps_per_row=2, warmup=0, seed=0)
    return make


def _pard(k: int = 3, **options):
    """A PARD drafter: the tiny draft model with the last id as its mask token (never trained for
    it, so its later positions are poor guesses; outputs must equal plain decoding all the same)."""
    def make(target, arch, tmp_path, draft=None):
        lm = draft_lm(target, arch, draft)
        return build_drafter("pard", model=CausalLM(lm.model), k=k, mask_token=target.vocab_size - 1, **options)
    return make


def _dm_vocab(ids: Callable[[int], list[int]], k: int = 3):
    def make(target, arch, tmp_path, draft=None):
        folder = Path(tmp_path) / f"draft-model-vocab-{arch}"
        if not (folder / "config.json").exists():
            folder_with_vocab(draft_lm(target, arch, draft), folder, ids(target.vocab_size))
        return build_drafter("draft_model", model=str(folder), k=k, adaptive=False, confidence=0)
    return make


def _multi(replacement: bool, branches: int = 3, k: int = 2):
    def make(target, arch, tmp_path, draft=None):
        return build_drafter("multi", model=CausalLM(draft_lm(target, arch, draft).model), branches=branches,
                             replacement=replacement, k=k)
    return make


def _rasd(k: int = 2, retrieval: str = "ngram:k=4,max_ngram=2", eagle: bool = False, **options):
    """RASD: a draft-model tree (or an EAGLE-2 head tree) fused with a retrieval tree."""
    def make(target, arch, tmp_path, draft=None):
        if eagle:
            model = build_drafter("eagle", heads=random_heads(target, "eagle", Path(tmp_path) / "heads-rasd-eagle", seed=2,
                                                              scale=0.5), tree_nodes=6, topk=2)
        else:
            model = build_drafter("draft_model", model=CausalLM(draft_lm(target, arch, draft).model), k=k)
        return build_drafter("rasd", model=model, retrieval=retrieval, **options)
    return make


def _gsd(k: int = 3, **options):
    """GSD: the tiny draft model's dynamic tree with nodes of equal recent tokens merged (a DAG, unrolled)."""
    def make(target, arch, tmp_path, draft=None):
        model = build_drafter("draft_model", model=CausalLM(draft_lm(target, arch, draft).model), k=k)
        return build_drafter("gsd", model=model, **options)
    return make


def _cascade(k: int = 4, **options):
    """Cascade: the tiny draft model (the top level) checking an n-gram level's proposals."""
    def make(target, arch, tmp_path, draft=None):
        top = build_drafter("draft_model", model=CausalLM(draft_lm(target, arch, draft).model), k=k, adaptive=False,
                            confidence=0)
        return build_drafter("cascade", levels=[top, "ngram:k=3,max_ngram=2"], **options)
    return make


def _union(eagle: bool = False, **options):
    """Union: an n-gram chain merged with the tiny draft model's chain (or an EAGLE-2 head tree)."""
    def make(target, arch, tmp_path, draft=None):
        if eagle:
            other = build_drafter("eagle", heads=random_heads(target, "eagle", Path(tmp_path) / "heads-union-eagle",
                                                              seed=2, scale=0.5), tree_nodes=6, topk=2)
        else:
            other = build_drafter("draft_model", model=CausalLM(draft_lm(target, arch, draft).model), k=3,
                                  adaptive=False, confidence=0)
        return build_drafter("union", drafters=["ngram:k=3,max_ngram=2", other], **options)
    return make


def random_adapter(target: CausalLM, folder, exits=(1,), seed: int = 3, scale: float = 0.3) -> str:
    """Untrained early-exit adapters for `target` with perturbed weights (so the attention and
    norms do something), a stop predictor and held-out priors, saved to `folder` in fp32."""
    from draftsmith.drafters.early_exit import AdapterConfig, ExitAdapters, save_adapters

    torch.manual_seed(seed)
    cfg = AdapterConfig.for_target(target.config, exits, predictor={str(e): [0.5, 2.0, -0.5, 1.0] for e in exits},
                                   held_out={str(e): 0.5 for e in exits})
    module = ExitAdapters(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    save_adapters(module, folder, dtype=torch.float32)
    return str(folder)


def _early_exit(**options):
    """Kangaroo early exit after the tiny target's first layer, with a random adapter."""
    def make(target, arch, tmp_path, draft=None):
        return build_drafter("early_exit", adapter=random_adapter(target, Path(tmp_path) / "early-exit"), **options)
    return make


def _named(name: str, **options):
    return lambda target, arch, tmp_path, draft=None: build_drafter(name, **options)


DEFAULT_SAMPLING = ("t1",)

RECIPES: dict[str, Recipe] = {
    # --- greedy equivalence (one row) ---
    "ngram-k1": Recipe(_named("ngram", k=1), "ngram", greedy=True),
    "ngram-k4": Recipe(_named("ngram", k=4, max_ngram=2), "ngram", greedy=True),
    "ngram-k8-n4": Recipe(_named("ngram", k=8, max_ngram=4, min_ngram=2), "ngram", greedy=True),
    "draft_model-self": Recipe(_dm(6, self_draft=True), "draft_model", sampled_q=True, greedy=True),
    "draft_model-other": Recipe(_dm(4), "draft_model", sampled_q=True, greedy=True),
    "draft_model-adaptive": Recipe(lambda target, arch, tmp_path, draft=None: build_drafter(
        "draft_model", model=draft_lm(target, arch, draft), k=4), "draft_model", sampled_q=True, greedy=True),
    "draft_model-confidence": Recipe(_dm(6, confidence=0.3), "draft_model", sampled_q=True, greedy=True),
    "wrong": Recipe(lambda target, arch, tmp_path, draft=None: WrongDrafter(target, k=4), None, greedy=True),
    "recycling": Recipe(_named("recycling"), "recycling", trees=True, greedy=True),
    "recycling-narrow": Recipe(_named("recycling", topk=2, branching="2-1-1"), "recycling", trees=True, greedy=True),
    "lookahead": Recipe(_named("lookahead"), "lookahead", trees=True, greedy=True),
    "lookahead-n2": Recipe(_named("lookahead", window=3, ngram=2, guesses=2), "lookahead", trees=True, greedy=True),
    "hierarchy": Recipe(_named("hierarchy", corpus="none"), "hierarchy", trees=True, greedy=True, batch=True),
    "hierarchy-narrow": Recipe(_named("hierarchy", k=3, max_ngram=1, max_candidates=1, corpus="none"), "hierarchy",
                               trees=True, greedy=True),
    # SuffixDecoding: trees from suffix structures over this request and earlier ones (the global one persists
    # across the prompts of one decoder, so later prompts draft from earlier answers); a wide budget: more siblings
    "suffix": Recipe(_named("suffix", max_spec_offset=3, min_token_prob=0.0), "suffix", trees=True, greedy=True),
    # early exit: the target's first layer + a random Kangaroo adapter drafts a chain (q sampled from it)
    "early_exit": Recipe(_early_exit(k=4, confidence=0.1), "early_exit", sampled_q=True, greedy=True, batch=True,
                         sampling=("t1", "t0.7-topk3")),
    # --- batched greedy (many rows) ---
    "none": Recipe(_named("none"), "none", batch=True),
    "ngram-k4-batch": Recipe(_named("ngram", k=4), "ngram", batch=True),
    "recycling-4-2-1": Recipe(_named("recycling", topk=4, branching="4-2-1"), "recycling", trees=True, batch=True),
    "lookahead-w3-n3": Recipe(_named("lookahead", window=3, ngram=3, guesses=2), "lookahead", trees=True, batch=True),
    "suffix-batch": Recipe(_named("suffix", max_depth=12, max_cached_requests=4, min_token_prob=0.05), "suffix",
                           trees=True, batch=True),
    "draft_model-k3": Recipe(_dm(3), "draft_model", sampled_q=True, batch=True, sampling=("t1", "t0.7-topk3", "topp0.8")),
    # online speculative decoding: the draft model trained in a background thread on finished rows
    "online": Recipe(_online(), "online", sampled_q=True, greedy=True, batch=True, sampling=("t1",)),
    # parallel drafting: k tokens from one draft forward (mask tokens)
    "pard": Recipe(_pard(), "pard", sampled_q=True, greedy=True, batch=True, sampling=("t1",)),
    "pard-tree": Recipe(_pard(4, tree_nodes=7, topk=2), "pard", trees=True, greedy=True, sampling=("t0.7-topk3",)),
    "draft_model-vocab-third": Recipe(_dm_vocab(lambda v: list(range(0, v, 3))), "draft_model", sampled_q=True,
                                      batch=True),
    # --- sampling (exact distribution on a tiny vocabulary) ---
    # a draft length that depends on the drafter's own confidence keeps the target's law
    "draft_model-k3-confidence": Recipe(_dm(3, confidence=0.5), "draft_model", sampled_q=True, sampling=("t1",)),
    # a draft model folder with a stored draft vocabulary drafts over it: q is zero outside it
    "draft_model-vocab-1-3": Recipe(_dm_vocab(lambda v: [1, 3]), "draft_model", sampled_q=True,
                                    sampling=("t0.7-topk3",)),
    # ngram drafts carry no q (one-hot): acceptance with p(x), residual p without x
    "ngram-k3": Recipe(_named("ngram", k=3, max_ngram=2), "ngram", sampling=("t1",)),
    # a deterministic tree of distinct siblings: recursive rejection with one-hot q
    "recycling-3-2-1": Recipe(_named("recycling", topk=3, branching="3-2-1"), "recycling", trees=True,
                              sampling=("t1",)),
    # Jacobi window + n-gram pool (a tree whose pool grows across samples)
    "lookahead-w3-n2": Recipe(_named("lookahead", window=3, ngram=2, guesses=3), "lookahead", trees=True,
                              sampling=("t1",)),
    # context and session n-gram databases merged into a tree
    "hierarchy-k3": Recipe(_named("hierarchy", k=3, max_ngram=2, max_candidates=3, corpus="none"), "hierarchy",
                           trees=True, sampling=("t0.7-topk3",)),
    # suffix trees over the earlier samples' answers: siblings ranked by frequency, q None (one-hot)
    "suffix-t1": Recipe(_named("suffix", max_cached_requests=16, min_token_prob=0.05, max_spec_offset=2), "suffix",
                        trees=True, sampling=("t1", "t0.7-topk3")),
    # draft heads on the target's hidden states, drafts sampled from the heads' q
    "medusa": Recipe(_heads("medusa"), "medusa", trees=True, heads=True, sampled_q=True, sampling=("t1",)),
    "hydra": Recipe(_heads("hydra"), "hydra", heads=True, sampled_q=True, sampling=("t0.7-topk3",)),
    "eagle": Recipe(_heads("eagle"), "eagle", trees=True, heads=True, sampled_q=True, sampling=("t1",)),
    "amphista": Recipe(_heads("amphista"), "amphista", trees=True, heads=True, sampled_q=True, sampling=("t1",)),
    "koala": Recipe(_heads("koala"), "koala", heads=True, sampled_q=True, sampling=("t0.7-topk3",)),
    # EAGLE-3: fused low/mid/high target features (feature_layers), its own draft vocabulary
    "eagle3": Recipe(_heads("eagle3"), "eagle3", trees=True, heads=True, sampled_q=True, sampling=("t1",)),
    # Falcon: EAGLE's layer drafting 2 tokens a forward (semi-autoregressive), a chain sampled from q
    "falcon": Recipe(_heads("falcon"), "falcon", heads=True, sampled_q=True, sampling=("t1",)),
    # FSPAD: an EAGLE head reading the sampled feature f ⊙ e too; Chimera: parallel residual heads after a
    # trigram and a full-context encoder
    "fspad": Recipe(_heads("fspad"), "fspad", trees=True, heads=True, sampled_q=True, sampling=("t1",)),
    "chimera": Recipe(_heads("chimera"), "chimera", trees=True, heads=True, sampled_q=True, sampling=("t0.7-topk3",)),
    # GliDe: a draft block cross-attending to the target's keys and values (a chain sampled from q), and with
    # CaPE's expansion (a deterministic tree)
    "glide": Recipe(_heads("glide"), "glide", trees=True, heads=True, sampled_q=True, sampling=("t1",)),
    "glide-cape": Recipe(_heads("glide", cape=0.9), "glide", trees=True, heads=True, sampling=("t1",)),
    # LongSpec: GliDe's block with a windowed self-attention (a constant-size cache)
    "longspec": Recipe(_heads("longspec"), "longspec", trees=True, heads=True, sampled_q=True, sampling=("t0.7-topk3",)),
    # an EAGLE-2 dynamic tree: the heads' top-k at each depth, deterministic (q None) even when sampling
    "eagle-tree": Recipe(_heads("eagle", tree_nodes=6, topk=2), "eagle", trees=True, heads=True, sampling=("t1",)),
    # heads drafting over part of the vocabulary: q is zero outside it
    "eagle-vocab": Recipe(_heads("eagle", vocab_ids=[1, 3], vocab=2), "eagle", trees=True, heads=True, sampled_q=True,
                          sampling=("t1",)),
    # a tree of siblings sampled independently from the drafter's q (a bare object: not forkable)
    "sampled-tree": Recipe(lambda target, arch, tmp_path, draft=None: SampledTree(draft_lm(target, arch, draft)),
                           None, trees=True, sampled_q=True, forkable=False, sampling=("t1", "t0.7-topk3")),
    # multi-draft: k first tokens drawn i.i.d. (SpecTr's K-SEQ selection) or without replacement
    # (recursive rejection), each continued by a sampled chain (tests/integration/test_multidraft.py: controls)
    "multi-iid-spectr": Recipe(_multi(True), "multi", trees=True, sampled_q=True, greedy=True,
                               sampling=("t1", "t0.7-topk3"), verifier="spectr"),
    "multi-distinct-recursive": Recipe(_multi(False), "multi", trees=True, sampled_q=True, greedy=True, batch=True,
                                       sampling=("t1", "t0.7-topk3"), verifier="recursive"),
    # RASD: the draft model's top-k tree, retrieved n-gram continuations pruned by its probabilities and fused in
    # (deterministic tree, q None at every temperature: recursive rejection with one-hot q)
    "rasd": Recipe(_rasd(max_nodes=8, model_nodes=4, topk=2, beam=2, min_prob=0.05, confidence=0.0), "rasd", trees=True,
                   greedy=True, batch=True, sampling=("t1", "t0.7-topk3")),
    # GSD: merge=1 merges every node whose last token recurs (many merges on a 96-token vocabulary); a deterministic tree
    "gsd": Recipe(_gsd(merge=1, max_nodes=8, topk=2, beam=2, confidence=0.0), "gsd", trees=True, greedy=True, batch=True,
                  sampling=("t1", "t0.7-topk3")),
    "rasd-eagle": Recipe(_rasd(eagle=True, retrieval="hierarchy:corpus=none,k=4", max_nodes=10, min_prob=0.05), "rasd",
                         trees=True, heads=True, greedy=True),
    # cascade: the draft model's chain made with an n-gram level's help (vertical; q = the draft model's law) and,
    # with split, its later positions drafted by the n-gram level alone (horizontal; one-hot q rows)
    "cascade": Recipe(_cascade(k=3), "cascade", sampled_q=True, greedy=True, batch=True),
    "cascade-split": Recipe(_cascade(k=3, split=2), "cascade", sampled_q=True, sampling=("t1", "t0.7-topk3")),
    # union: one trie over several drafters' deterministic candidates (q None at every temperature)
    "union": Recipe(_union(max_nodes=6), "union", trees=True, greedy=True, batch=True),
    "union-t1": Recipe(_named("union", drafters=["ngram:k=3,max_ngram=2", "recycling:topk=2,branching=2-1"], max_nodes=5),
                       "union", trees=True, sampling=("t1", "t0.7-topk3")),
    "union-eagle": Recipe(_union(eagle=True, max_nodes=10), "union", trees=True, heads=True, greedy=True),
    # layer_skip (SWIFT): the target with layers skipped, the set searched on the context (a short prompt drafts
    # with the default set first); chains sampled from the partial model's q; with early stop
    "layer_skip": Recipe(_named("layer_skip", k=4, adaptive=False, confidence=0, min_context=10, search_steps=4),
                         "layer_skip", sampled_q=True, greedy=True, batch=True),
    "layer_skip-t1": Recipe(_named("layer_skip", k=3, adaptive=False, confidence=0, min_context=4, search_steps=2),
                            "layer_skip", sampled_q=True, sampling=("t1", "t0.7-topk3")),
    "layer_skip-confidence": Recipe(_named("layer_skip", k=6, confidence=0.5, skip=0.3), "layer_skip",
                                    sampled_q=True, greedy=True),
}


def recipes(matrix: str) -> list[str]:
    """The recipe names in one matrix: "greedy", "batch", or "sampling"."""
    return [n for n, r in RECIPES.items() if (bool(r.sampling) if matrix == "sampling" else getattr(r, matrix))]


def sampling_cases() -> list[tuple[str, str]]:
    """(recipe, case) pairs of the sampling matrix."""
    return [(n, c) for n, r in RECIPES.items() for c in r.sampling]


def build(name: str, target, arch: str, tmp_path, draft=None):
    return RECIPES[name].make(target, arch, tmp_path, draft)


def verifier_of(name: str):
    """The rule recipe `name` runs with (None: the default per request)."""
    return RECIPES[name].verifier


# ----- verifiers -----------------------------------------------------------------------------
class AlwaysAccept(VerifierBase):
    """Negative control: keeps every draft token (lossy), then samples the bonus from p."""

    name: ClassVar[str] = "always_accept"
    lossless: ClassVar[bool] = False
    trees: ClassVar[bool] = False

    def verify_row(self, draft: Draft, target_logits, params, generator=None) -> VerifyResult:
        p = probs(target_logits[:, draft.size], params)  # [1, V]
        if generator is not None and generator.device != p.device:
            p = p.cpu()
        bonus = torch.multinomial(p, 1, generator=generator).to(draft.token_ids.device)  # [1, 1]
        return VerifyResult(torch.cat([draft.token_ids, bonus], -1), draft.size, draft.size)


@dataclass(frozen=True)
class VerifierRecipe:
    make: Callable[[], object]
    registry: str | None  # the draftsmith.verify.VERIFIERS name (None: test-only)
    lossless: bool
    greedy: bool  # decides temperature-0 requests (the greedy equivalence runs it)
    sampling: bool  # decides sampled requests (the distribution test runs it; a lossy one must fail it)


VERIFIER_RECIPES: dict[str, VerifierRecipe] = {
    "greedy": VerifierRecipe(GreedyVerifier, "greedy", lossless=True, greedy=True, sampling=False),
    "rejection": VerifierRecipe(RejectionVerifier, "rejection", lossless=True, greedy=True, sampling=True),
    "always_accept": VerifierRecipe(AlwaysAccept, None, lossless=False, greedy=False, sampling=True),
    # lossy rules: at temperature 0 they keep tokens the target would not choose (not in the greedy matrix), and on
    # the tiny sampling models they come out close to lossless (no negative control); tests/unit/test_lossy_verifiers.py
    "typical": VerifierRecipe(TypicalVerifier, "typical", lossless=False, greedy=False, sampling=False),
    "relaxed": VerifierRecipe(RelaxedVerifier, "relaxed", lossless=False, greedy=False, sampling=False),
    "bild": VerifierRecipe(BildVerifier, "bild", lossless=False, greedy=False, sampling=False),
    "arbitrage": VerifierRecipe(ArbitrageVerifier, "arbitrage", lossless=False, greedy=False, sampling=False),
    # needs a trained head; tests/unit/test_judge.py runs it through the loop with heads made there
    "judge": VerifierRecipe(JudgeVerifier, "judge", lossless=False, greedy=False, sampling=False),
    # multi-draft rules: their distribution tests run with the multi drafter's recipes (verifier=)
    "spectr": VerifierRecipe(SpecTrVerifier, "spectr", lossless=True, greedy=True, sampling=True),
    "recursive": VerifierRecipe(RecursiveVerifier, "recursive", lossless=True, greedy=True, sampling=True),
}


def lossy_verifiers() -> list[str]:
    return [n for n, v in VERIFIER_RECIPES.items() if not v.lossless and v.sampling]
