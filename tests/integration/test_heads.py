"""Draft heads (Medusa, Hydra, EAGLE-style, Amphista, KOALA): forward shapes, greedy equality with the
autoregressive output (single row and batched), a tiny training run whose loss falls and whose
heads then get drafts accepted, and the errors a user meets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith import BatchDecoder
from draftsmith.cli import main
from draftsmith.errors import DraftsmithError
from draftsmith.drafters.heads import HeadsConfig, build_heads, load_heads
from draftsmith.drafters.heads.vocab import SubsetLMHead, load_vocab, save_vocab
from tests.conftest import plain_ids, random_heads, tiny_model

KINDS = ["medusa", "hydra", "eagle", "amphista", "koala", "eagle3", "falcon", "fspad", "chimera", "glide", "longspec"]
PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [7] * 12, list(range(10, 40)), [9]]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_shapes(kind):
    target = tiny_model("llama")
    cfg = HeadsConfig.for_target(kind, target.config, num_heads=3)
    m = build_heads(cfg).to(target.device)
    dev = target.device
    H, V = target.config.hidden_size, target.vocab_size
    lm_head = target.model.get_output_embeddings()
    if kind in ("medusa", "amphista"):
        assert m(torch.randn(2, 5, H, device=dev), lm_head).shape == (2, 5, 3, V)
    elif kind in ("hydra", "koala"):
        assert m(torch.randn(2, 5, H, device=dev), torch.randn(2, 5, 3, H, device=dev), lm_head).shape == (2, 5, 3, V)
        assert m.head(1, torch.randn(4, H, device=dev), torch.randn(4, 2, H, device=dev)).shape == (4, H)
    elif kind == "chimera":
        cache = m.new_cache()
        out = m(torch.randn(2, 5, H, device=dev), torch.randn(2, 5, 3 * H, device=dev), torch.arange(5, device=dev)[None],
                lm_head)
        assert out.shape == (2, 5, 3, V)
        c = m.encode(torch.randn(1, 6, H, device=dev), torch.randn(1, 6, 3 * H, device=dev),
                     torch.arange(6, device=dev)[None], cache)
        assert c.shape == (1, 6, H) and cache.get_seq_length() == 6
        assert m.features(c[0, -1], torch.randn(H, device=dev), heads=2).shape == (2, H)
    elif kind in ("glide", "longspec"):
        cache, kv = m.new_cache(), cfg.num_key_value_heads
        keys, values = torch.randn(1, kv, 7, cfg.head_dim, device=dev), torch.randn(1, kv, 7, cfg.head_dim, device=dev)
        see = torch.ones(1, 6, 7, dtype=torch.bool, device=dev)
        out = m(torch.randn(1, 6, H, device=dev), torch.arange(6, device=dev)[None], keys, values, see, cache)
        assert out.shape == (1, 6, H) and cache.get_seq_length() == 6 and m.logits(out, lm_head).shape == (1, 6, V)
    else:
        cache = m.new_cache()
        out = m(torch.randn(1, 6, H, device=dev), torch.randn(1, 6, H, device=dev), torch.arange(6, device=dev)[None], cache)
        assert out.shape == (1, 6, H) and cache.get_seq_length() == 6
        assert m(torch.randn(1, 1, H, device=dev), torch.randn(1, 1, H, device=dev), torch.tensor([[6]], device=dev), cache).shape == (1, 1, H)


@pytest.mark.parametrize("kind", ["medusa", "hydra", "amphista", "koala", "chimera"])
def test_untrained_heads_start_at_the_lm_head(kind):
    """Zero-initialised residual branches: Medusa/Hydra/Amphista/KOALA/Chimera heads begin as the
    identity on h (EAGLE's layer does not)."""
    target = tiny_model("llama")
    m = build_heads(HeadsConfig.for_target(kind, target.config, num_heads=2))
    h = torch.randn(3, target.config.hidden_size)
    if kind == "chimera":  # whatever the encoder says
        assert torch.allclose(m.features(torch.randn(3, target.config.hidden_size), h), h[:, None].expand(3, 2, -1))
    elif kind in ("medusa", "amphista"):
        assert torch.allclose(m.features(h), h[:, None].expand(3, 2, -1), atol=1e-6)
    else:
        assert torch.allclose(m.head(1, h, torch.randn(3, 2, target.config.hidden_size)), h, atol=1e-6)


def test_amphista_heads_see_each_other():
    """The auto-embedding block is bi-directional: head 0's feature changes when another head's
    input does (trained weights: perturbed, so the zero-initialised branches are live)."""
    target = tiny_model("llama")
    m = build_heads(HeadsConfig.for_target("amphista", target.config, num_heads=3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        h = torch.randn(2, target.config.hidden_size)
        base = m.features(h)  # [2, 3, H]
        m.heads[2][0].linear.bias.add_(1.0)  # only head 2's own block changes
        moved = m.features(h)
    assert not torch.allclose(base[:, 0], moved[:, 0])


VARIANTS = {"medusa": {}, "medusa-tree": {"tree_nodes": 8, "topk": 3}, "hydra": {}, "eagle": {},
            "eagle-tree": {"tree_nodes": 10, "topk": 3, "beam": 2}, "amphista": {},
            "amphista-tree": {"tree_nodes": 8, "topk": 3}, "koala": {}, "falcon": {}, "falcon-k5": {"k": 5},
            "fspad": {}, "fspad-tree": {"tree_nodes": 10, "topk": 3, "beam": 2}, "chimera": {},
            "chimera-tree": {"tree_nodes": 8, "topk": 3}, "glide": {}, "glide-cape": {"cape": 0.9, "expand": 2},
            "longspec": {}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_equals_autoregressive(arch, variant, tmp_path):
    kind, options = variant.split("-")[0], VARIANTS[variant]
    target = tiny_model(arch)
    heads = random_heads(target, kind, tmp_path / kind)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    refs = [plain_ids(arch, p, 40, ignore_eos=True) for p in PROMPTS]
    for prompt, ref in zip(PROMPTS, refs):
        assert SpeculativeDecoder(target, kind, heads=heads, **options).generate(prompt, params).token_ids == ref
    dec = BatchDecoder(target, build_drafter(kind, heads=heads, **options), k_max=3, smartspec=False)
    assert [r.token_ids for r in dec.generate(PROMPTS, params)] == refs


def test_subset_lm_head_is_the_lm_head_on_its_tokens():
    target = tiny_model("llama")
    lm_head = target.model.get_output_embeddings()
    ids = torch.tensor([7, 3, 50], device=target.device)
    x = torch.randn(2, 4, target.config.hidden_size, device=target.device)  # [B, n, H]
    full, sub = lm_head(x), SubsetLMHead(lm_head, ids)(x)
    assert sub.shape == full.shape
    torch.testing.assert_close(sub[..., ids], full[..., ids])
    others = torch.ones(full.shape[-1], dtype=torch.bool, device=full.device)
    others[ids] = False
    assert torch.isinf(sub[..., others]).all() and (sub[..., others] < 0).all()


@pytest.mark.parametrize("variant", ["medusa-tree", "hydra", "eagle", "eagle-tree"])
def test_greedy_with_a_draft_vocabulary(arch, variant, tmp_path):
    """Heads drafting over a third of the vocabulary (the ids stored beside them): the output is
    still the target's own, single row and batched."""
    kind, options = variant.split("-")[0], VARIANTS[variant]
    target = tiny_model(arch)
    heads = random_heads(target, kind, tmp_path / kind)
    save_vocab(heads, list(range(0, target.vocab_size, 3)))
    drafter = build_drafter(kind, heads=heads, vocab=20, **options)
    drafter.bind(target)
    assert isinstance(drafter.lm_head, SubsetLMHead) and drafter.lm_head.weight.shape[0] == 20
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    refs = [plain_ids(arch, p, 30, ignore_eos=True) for p in PROMPTS]
    outs = [SpeculativeDecoder(target, kind, heads=heads, vocab=20, **options).generate(p, params) for p in PROMPTS]
    assert [o.token_ids for o in outs] == refs
    assert sum(o.stats.drafted for o in outs) > 0
    dec = BatchDecoder(target, build_drafter(kind, heads=heads, vocab=20, **options), k_max=3, smartspec=False)
    assert [r.token_ids for r in dec.generate(PROMPTS, params)] == refs


def test_trained_heads_are_accepted_and_stay_exact(tmp_path):
    """Self-distillation on the target's own greedy answers (a random model's: little carries
    over between prompts, so this checks the pipeline, not generalisation): held-out agreement
    is reported, drafts on a training prompt get accepted, and the output still equals the
    target's."""
    target, folder, rollouts, prompts = _self_distillation_data(tmp_path, sequences=40)
    params = SamplingParams(max_new_tokens=48, ignore_eos=True)
    out = tmp_path / "eagle"
    assert main(["train", "heads", "--kind", "eagle", "--target", str(folder), "--data", str(rollouts), "--out",
                 str(out), "--steps", "150", "--batch-tokens", "256", "--lr", "3e-3", "--save-every", "100"]) == 0
    card = load_heads(out).cfg.training
    assert 0 <= card["held_out"]["top1_agreement"][0] <= 1 and card["held_out"]["tokens"] > 0
    prompt = prompts[-1]  # trained on (the first 16 are held out)
    ref = SpeculativeDecoder(target, "none").generate(prompt, params)
    got = SpeculativeDecoder(target, "eagle", heads=str(out)).generate(prompt, params)
    assert got.token_ids == ref.token_ids
    assert got.stats.accepted > 0 and got.stats.steps < ref.stats.steps


def _self_distillation_data(tmp_path, sequences: int, new_tokens: int = 48):
    """A tiny target saved to a folder and a rollouts file of its greedy answers to random prompts."""
    target = tiny_model("llama", vocab=64, seed=4)
    folder = tmp_path / "target"
    target.model.save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    rollouts = tmp_path / "rollouts.jsonl"
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    prompts = []
    with rollouts.open("w") as f:
        for i in range(sequences):
            prompt = torch.randint(64, (8,), generator=gen).tolist()
            prompts.append(prompt)
            answer = SpeculativeDecoder(target, "none").generate(prompt, params).token_ids
            f.write(json.dumps({"id": str(i), "prompt_ids": prompt, "response_ids": answer}) + "\n")
    return target, folder, rollouts, prompts


@pytest.mark.parametrize("kind", ["amphista", "koala"])
def test_train_heads_end_to_end(kind, tmp_path):
    """`draftsmith train heads` for the kinds with no shipped heads (KOALA with its adversarial
    term): the folder loads as that drafter, reports held-out agreement, and decodes exactly."""
    target, folder, rollouts, prompts = _self_distillation_data(tmp_path, sequences=20, new_tokens=24)
    out = tmp_path / kind
    extra = ["--adversarial", "0.1"] if kind == "koala" else []
    assert main(["train", "heads", "--kind", kind, "--target", str(folder), "--data", str(rollouts), "--out", str(out),
                 "--steps", "20", "--batch-tokens", "128", "--lr", "3e-3", "--num-heads", "3", *extra]) == 0
    cfg = load_heads(out).cfg
    assert cfg.kind == kind and cfg.num_layers == (2 if kind == "koala" else 1)
    assert cfg.training["adversarial"] == (0.1 if kind == "koala" else 0.0)
    assert 0 <= cfg.training["held_out"]["top1_agreement"][0] <= 1 and (out / "README.md").is_file()
    vocab = load_vocab(out, 10_000)  # the draft vocabulary: the training answers' tokens, most frequent first
    answers = [t for line in rollouts.read_text().splitlines() for t in json.loads(line)["response_ids"]]
    counts = [answers.count(t) for t in vocab.tolist() if t not in target.eos_token_ids]
    assert set(vocab.tolist()) >= set(answers) and counts == sorted(counts, reverse=True)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ref = SpeculativeDecoder(target, "none").generate(prompts[-1], params)
    assert SpeculativeDecoder(target, kind, heads=str(out)).generate(prompts[-1], params).token_ids == ref.token_ids


TRAINING = {"medusa": {}, "hydra": {}, "amphista": {}, "koala": {}, "koala-adversarial": {"adversarial": 0.1},
            "eagle": {}, "eagle-unroll": {"unroll": 2}, "falcon": {}, "falcon-glance": {"glance": 0.3},
            "fspad": {}, "fspad-unroll": {"unroll": 2, "align": 0.25}, "chimera": {},
            "glide": {"unroll": 2}, "longspec": {"unroll": 2}}


@pytest.mark.parametrize("variant", TRAINING)
def test_heads_training_loss_falls(variant, tmp_path):
    from draftsmith.train.heads import HeadsTrainConfig, train_heads

    kind = variant.split("-")[0]
    target = tiny_model("llama", vocab=64, seed=4)
    gen = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(64, (40,), generator=gen).tolist(), 4) for _ in range(24)]
    cfg = HeadsTrainConfig(kind=kind, out=str(tmp_path / kind), steps=40, num_heads=2, batch_tokens=128,
                           lr=3e-3, holdout=4, log_every=5, **TRAINING[variant])
    train_heads(target, seqs, cfg, progress=False)
    losses = _scalars(tmp_path / kind / "runs", "train/loss")
    assert losses[-1] < losses[0], f"{variant}: {losses}"
    if cfg.adversarial:  # the discriminator trained and its losses were logged beside the heads'
        assert len(_scalars(tmp_path / kind / "runs", "train/adversarial_discriminator")) == len(losses)


def _perturbed_falcon(target, block: int, seed: int = 0):
    m = build_heads(HeadsConfig.for_target("falcon", target.config, num_heads=4, block=block))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def test_falcon_with_blocks_of_one_is_eagles_training_time_test():
    """Falcon's passes (train.heads.falcon_passes) generalise EAGLE's training-time test: with
    one token a block they must be `eagle_passes`, mask for mask (guards an off-by-one in the
    relaxed mask or in which drafted keys a pass sees)."""
    from draftsmith.train.heads import eagle_passes, falcon_passes

    target = tiny_model("llama")
    m = _perturbed_falcon(target, block=1)
    H = target.config.hidden_size
    feats, embeds = torch.randn(2, 9, H), torch.randn(2, 9, H)
    with torch.no_grad():
        ours = falcon_passes(m, feats, embeds, 1, 3)
        theirs = eagle_passes(m, feats, embeds, 3)
    for u in range(3):
        torch.testing.assert_close(ours[u][0][:, u:], theirs[u][:, u:])


@pytest.mark.parametrize("block", [2, 3])
def test_falcon_trains_on_what_it_drafts(block):
    """What Falcon's loss trains (falcon_passes over a whole sequence) must be what the drafter
    computes at draft time: the drafter's greedy tokens, appended to the committed ones as if
    they were the data, are the argmax of the training passes at the queries of that context
    (pass 1's block of the newest pairs, then the drafted blocks). Guards the relaxed mask and
    the cache the drafter keeps (the k - 1 newest pairs fed again each step)."""
    from draftsmith.drafters.base import DraftContext
    from draftsmith.train.heads import falcon_passes

    target = tiny_model("llama")
    m = _perturbed_falcon(target, block=block)
    drafter = build_drafter("falcon", k=2 * block)
    drafter.module, drafter.block, drafter.k = m, block, 2 * block
    drafter.lm_head = target.model.get_output_embeddings()
    drafter.embed = target.model.get_input_embeddings()
    H, gen = target.config.hidden_size, torch.Generator().manual_seed(3)
    ids = torch.randint(target.vocab_size, (12,), generator=gen).tolist()
    feats = torch.randn(len(ids) - 1, H, generator=gen)
    drafter.prefill(ids[:6], feats[None, :5])
    ctx = lambda n: DraftContext(ids=ids[:n], params=SamplingParams(), max_tokens=2 * block)  # noqa: E731
    drafter.propose(ctx(6))  # a first step: the cache then holds the committed pairs but the newest k - 1
    lm, embed = target.model.get_output_embeddings(), target.model.get_input_embeddings()
    for n_ids in (7, 12):  # no draft accepted (one new pair: fewer than a block), then five
        drafter.features = list(feats[:n_ids - 1])
        tokens = drafter.propose(ctx(n_ids)).token_ids[0].tolist()
        c = n_ids - 2  # the newest committed pair
        seq = ids[:n_ids] + tokens
        all_feats = torch.cat([feats[:n_ids - 1], torch.zeros(len(tokens), H)])[None]  # drafted: never read
        with torch.no_grad():
            outs = falcon_passes(m, all_feats, embed(torch.tensor([seq[1:]])), block, 2)
        expect = [int(lm(outs[0][o][0, c - block + 1 + o]).argmax()) for o in range(block)]
        expect += [int(lm(outs[1][o][0, c + 1 + o]).argmax()) for o in range(block)]
        assert tokens == expect, n_ids


def _perturbed(target, kind: str, seed: int = 0, scale: float = 0.3, **options):
    m = build_heads(HeadsConfig.for_target(kind, target.config, num_heads=4, **options))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m.eval()


def _bound(kind: str, module, target, **options):
    """A heads drafter holding `module` (no folder), as bind would leave it."""
    drafter = build_drafter(kind, **options)
    drafter.module, drafter.k = module, options.get("k", module.cfg.num_heads)
    drafter.lm_head = target.model.get_output_embeddings()
    drafter.embed = target.model.get_input_embeddings()
    return drafter


@pytest.mark.parametrize("options", [{}, {"tree_nodes": 8, "topk": 3, "beam": 2}])
def test_fspad_started_from_an_eagle_head_drafts_as_it(options, tmp_path):
    """An FSPAD head started from an EAGLE head (`--init`, modules.FspadHead.from_eagle: the
    sampled block of fc zero) must draft exactly what the EAGLE head drafts, chain and tree; and
    once that block is non-zero the drafts must change (feature sampling is live, not ignored)."""
    from draftsmith.drafters.base import DraftContext
    from draftsmith.train.heads import HeadsTrainConfig, _start_from

    from draftsmith.drafters.heads import save_heads

    target = tiny_model("llama")
    eagle = _perturbed(target, "eagle")
    fspad = build_heads(HeadsConfig.for_target("fspad", target.config, num_heads=4))
    _start_from(fspad, str(save_heads(eagle, tmp_path / "eagle")))  # what `train heads --kind fspad --init` does
    fspad.eval()
    H, gen = target.config.hidden_size, torch.Generator().manual_seed(5)

    def drafts(module, kind):
        out = []
        for seed in range(4):
            ids = torch.randint(target.vocab_size, (9,), generator=torch.Generator().manual_seed(seed)).tolist()
            feats = torch.randn(1, 8, H, generator=torch.Generator().manual_seed(seed))
            d = _bound(kind, module, target, **options)
            d.prefill(ids, feats)
            draft = d.propose(DraftContext(ids=ids, params=SamplingParams(), max_tokens=4))
            out.append((draft.token_ids.tolist(), None if draft.parents is None else draft.parents.tolist()))
        return out

    assert drafts(fspad, "fspad") == drafts(eagle, "eagle")
    with torch.no_grad():
        fspad.fc.weight[:, 2 * H:] = torch.randn(H, H, generator=gen) * 30.0
    assert drafts(fspad, "fspad") != drafts(eagle, "eagle")
    narrow = {**eagle.state_dict(), "fc.weight": torch.zeros(H, H)}
    with pytest.raises(DraftsmithError, match="cannot start a head of width"):
        fspad.from_eagle(narrow)
    cfg = HeadsTrainConfig(kind="fspad", out="unused")
    cfg.check()
    assert cfg.align == 0.5


def test_fspad_partial_alignment_regresses_only_its_share_of_the_feature():
    """FSPAD's partial alignment distillation: with align 0.5 (and no token loss) the feature
    regression must not see the second half of f̂'s dimensions; with align 1 it must."""
    from draftsmith.train.features import Item
    from draftsmith.train.heads import HeadsLoss, HeadsTrainConfig

    target = tiny_model("llama", vocab=64)
    m = _perturbed(target, "fspad")
    H = target.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    item = Item(torch.randint(64, (20,), generator=gen), torch.randn(20, H, generator=gen), 3)
    lm_head = torch.nn.Linear(H, 64, bias=False)
    embed = target.model.get_input_embeddings()

    def loss(align: float, shift: float) -> float:
        handle = m.register_forward_hook(lambda mod, args, out: out + torch.cat([torch.zeros(H // 2), torch.full((H - H // 2,), shift)]))
        try:
            cfg = HeadsTrainConfig(kind="fspad", out="unused", cls_weight=0.0, noise=0.0, align=align)
            cfg.check()
            return float(HeadsLoss(m, lm_head, embed, cfg).batch([item], torch.Generator().manual_seed(0))[0].detach())
        finally:
            handle.remove()

    assert loss(0.5, 0.0) == pytest.approx(loss(0.5, 5.0))
    assert loss(1.0, 5.0) > loss(1.0, 0.0) + 1.0
    with pytest.raises(DraftsmithError, match="--align"):
        HeadsTrainConfig(kind="fspad", out="unused", align=0.0).check()


def test_chimera_trains_on_what_it_drafts():
    """What Chimera's loss trains (the encoder over a whole sequence, heads at c_j) must be what the
    drafter computes step by step from its cache: its greedy draft after 0 and after 5 accepted
    tokens is the argmax of the training computation at the newest pair. Guards the trigram's
    alignment (e_{j-1}, e_j, e_{j+1}) and the pairs fed each step."""
    from draftsmith.drafters.base import DraftContext

    target = tiny_model("llama")
    m = _perturbed(target, "chimera")
    drafter = _bound("chimera", m, target)
    H, gen = target.config.hidden_size, torch.Generator().manual_seed(3)
    ids = torch.randint(target.vocab_size, (12,), generator=gen).tolist()
    feats = torch.randn(len(ids) - 1, H, generator=gen)
    lm, embed = target.model.get_output_embeddings(), target.model.get_input_embeddings()
    drafter.prefill(ids[:6], feats[None, :5])
    ctx = lambda n: DraftContext(ids=ids[:n], params=SamplingParams(), max_tokens=4)  # noqa: E731
    for n in (6, 7, 12):
        drafter.features = list(feats[:n - 1])
        tokens = drafter.propose(ctx(n)).token_ids[0].tolist()
        with torch.no_grad():
            c = m.encode(feats[None, :n - 1], m.trigrams(embed(torch.tensor([ids[:n]]))), torch.arange(n - 1)[None])
            expect = lm(m.features(c[0, -1], feats[n - 2])).argmax(-1).tolist()
        assert tokens == expect, n


def test_glide_reads_the_targets_own_keys_and_values(arch):
    """GliDe's keys and values (drafters/heads/glide.TargetKV: the target's layer run on that
    layer's input, token by token as the loop commits them) must be the target's own KV cache of
    that layer after a plain forward over the same tokens."""
    from transformers import DynamicCache

    from draftsmith.drafters.heads.glide import TargetKV

    target = tiny_model(arch)
    ids = torch.randint(target.vocab_size, (1, 11), generator=torch.Generator().manual_seed(0)).to(target.device)
    layer = target.config.num_hidden_layers - 1
    with torch.no_grad():
        ref = DynamicCache(config=target.config)
        states = target.model(input_ids=ids, past_key_values=ref, use_cache=True, output_hidden_states=True).hidden_states
    kv = TargetKV(target, layer)
    cache = kv.new_cache()
    for lo, hi in ((0, 6), (6, 7), (7, 11)):  # a prompt, then steps that commit 1 and 4 tokens
        kv.extend(cache, states[layer][:, lo:hi], lo)
    keys, values = kv.kv(cache)
    torch.testing.assert_close(keys, ref.layers[layer].keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, ref.layers[layer].values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, options", [("glide", {}), ("longspec", {"window": 3, "sink": 2})])
def test_glide_trains_on_what_it_drafts(kind, options):
    """What GliDe's loss trains (HeadsLoss._glide: the block over a sequence's tokens, draft step
    s at query i reading the target's keys <= i - s) must be what the drafter computes step by step
    from its caches: its greedy draft after 0, 1 and 5 accepted tokens, appended to the committed
    tokens as if it were the data, is the argmax of the training computation at draft steps 1, 2,
    3. Guards the cross-attention window and both caches (the drafts cropped each step)."""
    from draftsmith.drafters.base import DraftContext
    from draftsmith.drafters.heads.glide import TargetKV
    from draftsmith.train.heads import glide_passes
    from draftsmith.types import VerifyResult

    target = tiny_model("llama")
    m = _perturbed(target, kind, scale=0.1, **options)
    drafter = _bound(kind, m, target, k=3)
    layer = m.cfg.glide_layer
    drafter.kv, drafter.feature_layers, drafter.dtype = TargetKV(target, layer), (layer,), target.dtype
    ids = torch.randint(target.vocab_size, (14,), generator=torch.Generator().manual_seed(3)).tolist()

    def layer_inputs(seq):
        with torch.no_grad():
            return target.model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[layer]

    states = layer_inputs(ids)
    drafter.prefill(ids[:6], states[:, :5])
    embed = target.model.get_input_embeddings()
    lm = target.model.get_output_embeddings()
    for n, new in ((6, 0), (7, 1), (12, 5)):
        if new:
            drafter.observe(VerifyResult(tokens=torch.tensor([ids[n - new:n]]), num_accepted=new - 1, num_drafted=3,
                                         hidden=states[:, n - 1 - new:n - 1]))
        tokens = drafter.propose(DraftContext(ids=ids[:n], params=SamplingParams(), max_tokens=3)).token_ids[0].tolist()
        seq = ids[:n] + tokens
        kv = TargetKV(target, layer)
        cache = kv.new_cache()
        kv.extend(cache, layer_inputs(seq), 0)
        keys, values = kv.kv(cache)
        with torch.no_grad():
            e = embed(torch.tensor([seq[:-1]]))
            outs = glide_passes(m, e, keys, values, kv.rope(e, torch.arange(len(seq) - 1)[None]), 3,
                                window=m.cfg.window, sink=m.cfg.sink)
        expect = [int(lm(m.norm(outs[s - 1][0, n - 2 + s])).argmax()) for s in (1, 2, 3)]
        assert tokens == expect, n


def test_longspec_keeps_a_constant_cache_and_the_targets_output(tmp_path, monkeypatch):
    """LongSpec's own cache holds the first `sink` and the last `window` tokens only (plus one
    step's drafts), however long the context grows, and the output is still the target's own,
    single row and batched, with the window binding (prompts and answers longer than it)."""
    from draftsmith.drafters.heads import save_heads

    target = tiny_model("llama")
    folder = save_heads(_perturbed(target, "longspec", scale=0.1, window=5, sink=2), tmp_path / "longspec")
    from draftsmith.drafters.heads.longspec import LongSpecDrafter

    sizes = []  # the draft's own cache after each draft (a row's drafter is a fork: watched through the class)
    propose = LongSpecDrafter.propose

    def watched(self, ctx):
        draft = propose(self, ctx)
        assert len(self.slots) == self.cache.get_seq_length()
        sizes.append((len(ctx.ids), self.cache.get_seq_length()))
        return draft

    monkeypatch.setattr(LongSpecDrafter, "propose", watched)
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    for prompt in PROMPTS:
        dec = SpeculativeDecoder(target, "longspec", heads=str(folder), k=3)
        assert dec.generate(prompt, params).token_ids == plain_ids("llama", prompt, 40, ignore_eos=True)
    assert max(n for n, _ in sizes) > 60 and max(size for _, size in sizes) <= 2 + 5 + 2  # sink + window + drafts fed
    dec = BatchDecoder(target, build_drafter("longspec", heads=str(folder), k=3), k_max=3, smartspec=False)
    assert [r.token_ids for r in dec.generate(PROMPTS, params)] == [plain_ids("llama", p, 40, ignore_eos=True)
                                                                    for p in PROMPTS]


def _scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_missing_or_mismatched_heads_are_clear_errors(tmp_path):
    target = tiny_model("llama")
    with pytest.raises(DraftsmithError, match="draftsmith train heads --kind eagle"):
        SpeculativeDecoder(target, "eagle")
    with pytest.raises(DraftsmithError, match="no draft heads here"):
        SpeculativeDecoder(target, "medusa", heads=str(tmp_path))
    medusa = random_heads(target, "medusa", tmp_path / "m")
    with pytest.raises(DraftsmithError, match="holds medusa heads, not hydra"):
        SpeculativeDecoder(target, "hydra", heads=medusa)
    other = random_heads(tiny_model("llama", vocab=50), "medusa", tmp_path / "o")
    with pytest.raises(DraftsmithError, match="vocabulary"):
        SpeculativeDecoder(target, "medusa", heads=other)


@pytest.mark.parametrize("kind", ["medusa", "hydra", "amphista", "koala", "eagle"])
def test_no_shipped_heads_is_a_clear_error(kind):
    with pytest.raises(DraftsmithError, match=f"no trained {kind} heads ship .* --kind {kind}"):
        SpeculativeDecoder(tiny_model("llama"), kind)


def test_batched_features_equal_one_sequence_at_a_time():
    """The target's features for a step come from one right-padded batch; padding after a
    sequence must change none of its positions, and the order of the sequences is kept."""
    from draftsmith.train.features import extract_features

    target = tiny_model("llama", vocab=64, seed=2)
    gen = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(64, (n,), generator=gen).tolist(), s) for n, s in [(30, 5), (12, 3), (41, 10), (6, 4), (20, 2)]]
    batched = extract_features(target, seqs, max_len=36, top=True, batch_tokens=10_000)
    alone = [item for seq in seqs for item in extract_features(target, [seq], max_len=36, top=True)]
    assert [len(it.ids) for it in batched] == [30, 12, 36, 20]  # (6, 4) has 2 answer tokens: dropped; 41 cut to 36
    for b, a, (ids, start) in zip(batched, alone, [s for s in seqs if len(s[0]) - s[1] >= 3]):
        assert b.ids.tolist() == ids[:36] and b.start == start
        torch.testing.assert_close(b.feats, a.feats, rtol=1e-4, atol=1e-5)
        with torch.inference_mode():
            logits = target.model(input_ids=b.ids[None]).logits[0]  # [L, V]
        assert torch.equal(b.top, logits.argmax(-1))


def test_training_vocabulary_losses_and_agreement():
    """Over a training vocabulary: a token outside it costs nothing under `ce`, and agreement
    maps the head's best index back to its token before comparing with the target's argmax."""
    from draftsmith.train.heads import HeadsLoss, HeadsTrainConfig, _token_loss

    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))  # q over 3 training tokens
    ce = _token_loss(logits, logits, torch.tensor([1, -1]), "ce")
    torch.testing.assert_close(ce, torch.tensor([-math.log(0.25), 0.0]))
    p = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.2, 0.7]]))
    kl = _token_loss(logits, p, torch.tensor([0, 0]), "kl")
    expected = 0.25 * math.log(0.25 / 0.5) + 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(1.0)
    torch.testing.assert_close(kl, torch.tensor([expected, 0.0]))

    target = tiny_model("llama", vocab=64)
    vocab_ids = torch.tensor([7, 3, 50])
    embed = target.model.get_input_embeddings()
    loss = HeadsLoss(None, None, embed, HeadsTrainConfig(kind="eagle", out="unused"), vocab_ids=vocab_ids)
    assert loss._labels(torch.tensor([3, 50, 9, 7])).tolist() == [1, 2, -1, 0]
    head = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])  # best: tokens 3, 7, 50
    assert loss._agree(head, head, torch.tensor([3, 9, 50])).tolist() == [2, 3]
    assert loss._agree(head, torch.tensor([[0.0, 1.0, 0.0]] * 3), None).tolist() == [1, 3]


def test_sharegpt_first_turns_as_training_sequences(tmp_path):
    """`--data` a ShareGPT file: each usable first turn becomes the chat-template prompt plus the
    answer as the template closes an assistant turn; other records are skipped."""
    from transformers import PreTrainedTokenizerFast

    from draftsmith.target import CausalLM
    from draftsmith.train.rollouts import sharegpt_answers
    from draftsmith.train.features import load_sequences
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert isinstance(tok, PreTrainedTokenizerFast)
    target = CausalLM(tiny_model("llama", vocab=len(tok)).model, tokenizer=tok, name="tiny-chat")
    records = [{"id": "a", "conversations": [{"from": "human", "value": "hello world"},
                                             {"from": "gpt", "value": "the quick brown fox"}]},
               {"id": "b", "conversations": [{"from": "gpt", "value": "no question first"}]},
               {"id": "c", "conversations": [{"from": "human", "value": "tiny"}, {"from": "gpt", "value": "  "}]}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records))
    (ids, start), = load_sequences(target, str(path))
    assert ids[:start] == target.encode([{"role": "user", "content": "hello world"}])
    assert tok.decode(ids[start:]) == "the quick brown fox<eos>"
    with pytest.raises(DraftsmithError, match="no usable ShareGPT"):
        sharegpt_answers(target, str(path), max_prompt_tokens=2)


def test_feature_file_is_made_once_and_matches_its_sequences(tmp_path, monkeypatch):
    """`--features FILE`: the target's features are made once and read back for the same
    sequences; other sequences make the file again."""
    from draftsmith.train import features as features_mod

    target = tiny_model("llama", vocab=64, seed=2)
    gen = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(64, (n,), generator=gen).tolist(), 3) for n in (20, 9, 31)]
    path = str(tmp_path / "feats.pt")
    made = features_mod.cached_features(target, seqs, 32, path, progress=False)
    calls = []
    monkeypatch.setattr(features_mod, "extract_features", lambda *a, **k: calls.append(1) or [])
    again = features_mod.cached_features(target, seqs, 32, path, progress=False)
    assert not calls and [it.ids.tolist() for it in again] == [s[:32] for s, _ in seqs]
    for a, b in zip(made, again):
        assert torch.equal(a.feats, b.feats) and a.start == b.start
    with pytest.raises(DraftsmithError):  # other sequences: made again (here by the stub, which makes none)
        features_mod.cached_features(target, seqs[:2], 32, path, progress=False)
    assert calls


def test_training_from_a_feature_file(tmp_path):
    """Heads train over several epochs of stored features, and the loss falls."""
    from draftsmith.train.heads import HeadsTrainConfig, train_heads

    target = tiny_model("llama", vocab=64, seed=4)
    gen = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(64, (40,), generator=gen).tolist(), 4) for _ in range(12)]
    cfg = HeadsTrainConfig(kind="eagle", out=str(tmp_path / "eagle"), steps=30, batch_tokens=128, lr=3e-3, holdout=4,
                           log_every=5, features=str(tmp_path / "feats.pt"))
    train_heads(target, seqs, cfg, progress=False)  # 30 steps of ~4 sequences: ~15 epochs of 8 sequences
    losses = _scalars(tmp_path / "eagle" / "runs", "train/loss")
    assert (tmp_path / "feats.pt").is_file() and losses[-1] < losses[0]
    assert load_heads(tmp_path / "eagle").cfg.training["answer_tokens_seen"] >= 30 * 128


def test_eagle_unrolled_training_matches_drafting_step_by_step():
    """Training-time test: draft step u computed for every index at once equals what the
    drafter computes at its u-th draft token, with the target's features in its cache and its
    own predicted features for the u - 1 newest tokens."""
    from draftsmith.train.heads import eagle_passes

    target = tiny_model("llama")
    cfg = HeadsConfig.for_target("eagle", target.config, num_heads=4)
    torch.manual_seed(3)
    head = build_heads(cfg).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    head = head.double()  # float64: the two orders of summation agree to ~1e-12
    n, H = 9, cfg.hidden_size
    feats, embeds = torch.randn(1, n, H, dtype=torch.float64), torch.randn(1, n, H, dtype=torch.float64)  # f_i, e_{i+1}
    with torch.no_grad():
        outs = eagle_passes(head, feats, embeds, 3)
        for i in range(n):  # drafting from the committed pairs 0..i-1 onwards
            cache = head.new_cache()
            if i:
                head(feats[:, :i], embeds[:, :i], torch.arange(i)[None], cache)
            f = head(feats[:, i:i + 1], embeds[:, i:i + 1], torch.tensor([[i]]), cache)  # step 1 at index i
            torch.testing.assert_close(f, outs[0][:, i:i + 1], rtol=1e-9, atol=1e-9)
            for u in (2, 3):  # step u at index i + u - 1 reads the previous step's output
                k = i + u - 1
                if k >= n:
                    break
                f = head(f, embeds[:, k:k + 1], torch.tensor([[k]]), cache)
                torch.testing.assert_close(f, outs[u - 1][:, k:k + 1], rtol=1e-9, atol=1e-9)


def test_top_tokens_over_a_draft_vocabulary_are_the_full_layouts():
    """The drafter's top-n over a draft vocabulary (never building V-wide logits) equals top-n of
    the V-wide logits SubsetLMHead returns: same token ids, same log q."""
    target = tiny_model("llama", vocab=96)
    drafter = build_drafter("eagle", heads=None)
    drafter.lm_head = SubsetLMHead(target.model.get_output_embeddings(), torch.tensor([50, 3, 77, 10, 91, 0, 42]))
    x = torch.randn(4, target.config.hidden_size, generator=torch.Generator().manual_seed(0))
    values, ids = drafter._top(x, 3)
    full = drafter.lm_head(x).float().log_softmax(-1).topk(3, dim=-1)
    assert torch.equal(ids, full.indices)
    torch.testing.assert_close(values, full.values)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_eagle_export_for_other_engines(engine, tmp_path):
    """`draftsmith export`: the shipped EAGLE head as the EAGLE-1 folder each engine loads. Every
    weight but `fc` is a tensor of a one-layer Llama decoder of the target's shape (names
    without the `model.` prefix, which both loaders add; layer 0 without an input norm; no
    embeddings, final norm or LM head); vLLM's fc has no bias, SGLang's has one (zero here). One
    weights file only: both engines load every *.safetensors of the folder, and vLLM rejected the
    draft vocabulary's `token_ids` that the export used to copy beside it."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaModel

    from draftsmith.catalog import SHIPPED_HEADS, packs_root

    shipped = packs_root() / SHIPPED_HEADS[("smollm2-135m-instruct", "eagle")]
    out = tmp_path / engine
    assert main(["export", "smollm2-135m-instruct", "--engine", engine, "--out", str(out)]) == 0
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{"vllm": "LlamaForCausalLM", "sglang": "LlamaForCausalLMEagle"}[engine]]
    weights, original = load_file(str(out / "model.safetensors")), load_file(str(shipped / "model.safetensors"))
    layer = LlamaModel(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "draftsmith_heads")}))
    reference = {k: v.shape for k, v in layer.state_dict().items()
                 if not k.startswith(("embed_tokens", "norm", "layers.0.input_layernorm", "rotary"))}
    assert {k: v.shape for k, v in weights.items() if not k.startswith("fc.")} == reference
    H = config["hidden_size"]
    assert weights["fc.weight"].shape == (H, 2 * H) and torch.equal(weights["fc.weight"], original["fc.weight"])
    if engine == "sglang":
        assert torch.equal(weights["fc.bias"], torch.zeros(H))
        assert torch.equal(torch.load(out / "token_map.pt"), load_vocab(shipped, None))
    else:
        assert "fc.bias" not in weights and load_heads(out).cfg.kind == "eagle"  # still draftsmith's folder too


def test_export_takes_eagle_heads_only(tmp_path, capsys):
    """`draftsmith export` takes EAGLE and EAGLE-3 heads (the latter as the speculators folder vLLM
    reads, tests/unit/test_export_conformance.py) and refuses other kinds with a message."""
    from draftsmith.catalog import SHIPPED_HEADS, packs_root

    medusa = packs_root() / SHIPPED_HEADS[("smollm2-135m-instruct", "medusa")]
    assert main(["export", str(medusa), "--engine", "vllm", "--out", str(tmp_path / "x")]) == 2
    assert "medusa heads, which vLLM and SGLang have no loader for" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--engine", "sglang", "--out", str(tmp_path / "y")]) == 2
    assert "export takes EAGLE heads" in capsys.readouterr().err
    e3 = random_heads(tiny_model("llama", layers=4), "eagle3", tmp_path / "e3")
    assert main(["export", e3, "--engine", "vllm", "--out", str(tmp_path / "v"), "--verifier", "org/tiny"]) == 0
    assert json.loads((tmp_path / "v" / "config.json").read_text())["speculators_model_type"] == "eagle3"
