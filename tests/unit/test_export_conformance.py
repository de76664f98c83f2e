"""`draftsmith export` against the engines' own contracts, without the engines: a plain-PyTorch
re-implementation, written from vLLM's source, of what vLLM does with an exported folder, checked
against draftsmith's own drafters on a tiny Llama target.

What is re-implemented (vllm-project/vllm main, read 2025-26; files named in each function):
(a) config reading of the speculators format (transformers_utils/config.py: a config.json with
    `speculators_config` and no top-level `model_type` is a SpeculatorsConfig;
    configs/speculators/base.py + algos.py: the fields vLLM takes and their defaults);
(b) the weight loading (model_loader: every *.safetensors of the folder; models/llama_eagle3.py
    and llama_eagle.py: the name mapping; an unknown tensor name is an error, as vLLM's
    `params_dict[name]` / AutoWeightsLoader make it);
(c) the EAGLE-3 draft step (llama_eagle3.py: combine_hidden_states = fc, the 2H-attention layer
    with norm_before_residual, norm returning (normed, prenorm), compute_logits scattering the
    draft vocabulary through draft_id_to_target_id; v1/spec_decode/eagle.py: ids shifted by one
    with the next token last, positions of the features' tokens, each next step fed the prenorm
    at position + 1, greedy argmax; models/interfaces.py EagleModelMixin: aux id i = the residual
    stream entering target layer i = HF hidden_states[i], concatenated in layer order).
SGLang's EAGLE-3 loader (srt/models/llama_eagle3.py, llama.py) is checked for names and aux ids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from draftsmith import SamplingParams, build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.drafters.heads import HeadsConfig, build_heads, save_heads
from draftsmith.drafters.heads.export import export_heads
from draftsmith.drafters.heads.vocab import save_vocab
from draftsmith.errors import DraftsmithError
from tests.conftest import random_heads, tiny_model

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], list(range(10, 30)), [9, 4]]
K = 3  # draft tokens per proposal
STACKED = [(".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"), (".qkv_proj", ".v_proj", "v"),
           (".gate_up_proj", ".gate_proj", 0), (".gate_up_proj", ".up_proj", 1)]


# ---- (a) vLLM's config reading ------------------------------------------------------------------

def vllm_read_speculators_config(folder: Path, target_layers: int) -> dict:
    """What vLLM makes of `folder`'s config.json: the draft hf_config dict and the speculative
    config it derives (transformers_utils/config.py, configs/speculators/{base,algos}.py,
    gpu_model_runner's aux layers: the config's ids, else (2, L // 2, L - 3))."""
    raw = json.loads((folder / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type is None and raw.get("speculators_config") is not None:
        model_type = "speculators"
    if model_type != "speculators":
        raise ValueError(f"model_type {model_type!r}: vLLM reads this as an ordinary {model_type} config")
    try:  # SpeculatorsConfig.validate_speculators_config
        spec = raw["speculators_config"]
        tokens = spec["proposal_methods"][0]["speculative_tokens"]
        verifier = spec["verifier"]["name_or_path"]
        algo = raw["speculators_model_type"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError("Invalid speculators config structure") from e
    if not isinstance(raw.get("transformer_layer_config"), dict):
        raise ValueError("Must provide transformer_layer_config")
    if algo != "eagle3":
        raise ValueError(f"speculators_model_type {algo!r}")
    hf = dict(raw["transformer_layer_config"])  # update_eagle3
    hf["draft_vocab_size"] = raw.get("draft_vocab_size")
    if raw.get("target_hidden_size") is not None:
        hf["target_hidden_size"] = raw["target_hidden_size"]
    hf["norm_before_residual"] = raw.get("norm_before_residual", True)
    hf["norm_before_fc"] = raw.get("norm_before_fc", False)
    hf["architectures"] = ["Eagle3LlamaForCausalLM"]
    if raw.get("eagle_aux_hidden_state_layer_ids"):
        hf["eagle_aux_hidden_state_layer_ids"] = raw["eagle_aux_hidden_state_layer_ids"]
    if hf["draft_vocab_size"] is None:  # Eagle3LlamaForCausalLM.__init__
        hf["draft_vocab_size"] = hf["vocab_size"]
    L = target_layers
    aux = tuple(hf.get("eagle_aux_hidden_state_layer_ids") or (2, L // 2, L - 3))
    return {"method": algo, "num_speculative_tokens": tokens, "verifier": verifier, "hf": hf, "aux": aux}


# ---- (b) vLLM's weight loading ------------------------------------------------------------------

def _dims(hf: dict) -> tuple[int, int, int, int, int]:
    H, nh = hf["hidden_size"], hf["num_attention_heads"]
    return H, hf["intermediate_size"], nh, hf.get("num_key_value_heads", nh), hf.get("head_dim") or H // nh


def vllm_eagle3_params(hf: dict) -> dict[str, tuple[int, ...]]:
    """Eagle3LlamaForCausalLM's parameters (llama_eagle3.py), name -> shape."""
    H, I, nh, nkv, hd = _dims(hf)
    Ht = hf.get("target_hidden_size", H)
    p = {"model.embed_tokens.weight": (hf["vocab_size"], H), "model.fc.weight": (H, 3 * Ht),
         "model.layers.0.self_attn.qkv_proj.weight": ((nh + 2 * nkv) * hd, 2 * H),
         "model.layers.0.self_attn.o_proj.weight": (H, nh * hd),
         "model.layers.0.mlp.gate_up_proj.weight": (2 * I, H), "model.layers.0.mlp.down_proj.weight": (H, I),
         "model.norm.weight": (H,), "lm_head.weight": (hf["draft_vocab_size"], H),
         "draft_id_to_target_id": (hf["draft_vocab_size"],)}
    for n in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        p[f"model.layers.0.{n}.weight"] = (H,)
    return p


def vllm_eagle1_params(hf: dict) -> dict[str, tuple[int, ...]]:
    """EagleLlamaForCausalLM's parameters (llama_eagle.py): layer 0 without an input norm, fc
    without a bias, no LM head (the target's is attached after loading)."""
    H, I, nh, nkv, hd = _dims(hf)
    return {"model.embed_tokens.weight": (hf["vocab_size"], H), "model.fc.weight": (H, 2 * H),
            "model.layers.0.self_attn.qkv_proj.weight": ((nh + 2 * nkv) * hd, H),
            "model.layers.0.self_attn.o_proj.weight": (H, nh * hd),
            "model.layers.0.mlp.gate_up_proj.weight": (2 * I, H), "model.layers.0.mlp.down_proj.weight": (H, I),
            "model.layers.0.post_attention_layernorm.weight": (H,)}


def vllm_checkpoint(folder: Path) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of every *.safetensors file in the folder (no index file: vLLM loads them all)."""
    return [(n, t) for f in sorted(folder.glob("*.safetensors")) for n, t in load_file(str(f)).items()]


def vllm_load(weights: list[tuple[str, torch.Tensor]], expected: dict[str, tuple[int, ...]], eagle3: bool,
              target) -> dict[str, torch.Tensor]:
    """The loaders' name mapping: EAGLE-3 skips `t2d`, renames `d2t`; both prefix `model.` unless
    the name has `lm_head`; the model maps `midlayer.` to `layers.0.` (EAGLE-3), stacks q/k/v
    and gate/up, skips `embed_tokens.` (EAGLE-1); any other name it does not have is an error.
    Embeddings (and an absent LM head) are the target's, shared after loading."""
    loaded: dict[str, torch.Tensor] = {}
    shards: dict[str, dict] = {}
    for name, w in weights:
        if eagle3 and "t2d" in name:
            continue
        if eagle3 and "d2t" in name:
            name = name.replace("d2t", "draft_id_to_target_id")
        elif "lm_head" not in name:
            name = "model." + name
        if name.startswith("model."):
            name = name.replace("midlayer.", "layers.0.") if eagle3 else name
            if not eagle3 and "embed_tokens." in name:
                continue
            for param, shard, sid in STACKED:
                if shard in name:
                    name = name.replace(shard, param)
                    if name not in expected:
                        raise ValueError(f"There is no module or parameter named {name!r}")
                    shards.setdefault(name, {})[sid] = w
                    break
            else:
                loaded[name] = w
        else:
            loaded[name] = w
        if name not in expected:
            raise ValueError(f"There is no module or parameter named {name!r} in the draft model")
    for name, parts in shards.items():
        order = ["q", "k", "v"] if "qkv" in name else [0, 1]
        assert sorted(parts, key=str) == sorted(order, key=str), f"{name}: shards {sorted(parts, key=str)}"
        loaded[name] = torch.cat([parts[s] for s in order], dim=0)
    for name, w in loaded.items():
        assert tuple(w.shape) == expected[name], f"{name}: {tuple(w.shape)} != {expected[name]}"
    loaded.setdefault("model.embed_tokens.weight", target.model.get_input_embeddings().weight.detach())
    if eagle3:
        loaded.setdefault("lm_head.weight", target.model.get_output_embeddings().weight.detach())
        loaded.setdefault("draft_id_to_target_id", torch.zeros(expected["draft_id_to_target_id"], dtype=torch.long))
    missing = set(expected) - set(loaded)
    assert not missing, f"never loaded: {sorted(missing)}"
    return loaded


# ---- (c) vLLM's EAGLE-3 draft math --------------------------------------------------------------

def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style rotary embedding (vLLM's get_rope for Llama) on x [n, heads, hd]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = positions.float()[:, None] * inv_freq[None]  # [n, hd/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def vllm_eagle3_forward(P: dict, hf: dict, input_ids: torch.Tensor, positions: torch.Tensor,
                        hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eagle3 LlamaModel.forward over a whole sequence (causal; equal to the KV-cached steps):
    input_ids [n], positions [n], hidden [n, H] -> (normed, prenorm) [n, H]."""
    H, I, nh, nkv, hd = _dims(hf)
    eps, theta = hf["rms_norm_eps"], (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta"))
    pre = "model.layers.0."
    embeds = P["model.embed_tokens.weight"][input_ids]  # [n, H]
    e = rms_norm(embeds, P[pre + "input_layernorm.weight"], eps)
    if hf["norm_before_residual"]:
        h = rms_norm(hidden, P[pre + "hidden_norm.weight"], eps)
        residual = h
    else:
        residual = hidden
        h = rms_norm(hidden, P[pre + "hidden_norm.weight"], eps)
    x = torch.cat([e, h], dim=-1)  # [n, 2H]
    q, k, v = (x @ P[pre + "self_attn.qkv_proj.weight"].T).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    n = x.shape[0]
    q = rope(q.view(n, nh, hd), positions, theta)
    k = rope(k.view(n, nkv, hd), positions, theta).repeat_interleave(nh // nkv, dim=1)
    v = v.view(n, nkv, hd).repeat_interleave(nh // nkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    a = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, nh * hd) @ P[pre + "self_attn.o_proj.weight"].T
    residual = a + residual  # post_attention_layernorm(hidden, residual)
    gate, up = (rms_norm(residual, P[pre + "post_attention_layernorm.weight"], eps)
                @ P[pre + "mlp.gate_up_proj.weight"].T).split([I, I], dim=-1)
    mlp = (torch.nn.functional.silu(gate) * up) @ P[pre + "mlp.down_proj.weight"].T
    prenorm = mlp + residual  # norm(hidden, residual)
    return rms_norm(prenorm, P["model.norm.weight"], eps), prenorm


def vllm_compute_logits(P: dict, hf: dict, normed: torch.Tensor) -> torch.Tensor:
    """[n, H] -> [n, V]: draft-vocabulary logits scattered to target ids, -inf elsewhere."""
    logits = normed @ P["lm_head.weight"].T  # [n, Vd]
    targets = torch.arange(hf["draft_vocab_size"]) + P["draft_id_to_target_id"]
    full = logits.new_full((logits.shape[0], hf["vocab_size"]), float("-inf"))
    full[:, targets] = logits
    return full


def vllm_propose(P: dict, hf: dict, ids: list[int], aux_hidden: torch.Tensor, k: int,
                 forced: list[int] | None = None) -> tuple[list[int], torch.Tensor]:
    """EagleProposer.propose for one request whose verified tokens are ids[:-1] (aux_hidden
    [len(ids) - 1, 3 Ht] their captured target states) and whose next token is ids[-1]: k greedy
    draft tokens (or the `forced` ones) and each step's logits [k, V]."""
    hidden = aux_hidden @ P["model.fc.weight"].T  # combine_hidden_states
    input_ids = torch.tensor(ids[1:])  # shifted by one, the next token last
    positions = torch.arange(len(ids) - 1)
    tokens, logits = [], []
    for step in range(k):
        normed, prenorm = vllm_eagle3_forward(P, hf, input_ids, positions, hidden)
        step_logits = vllm_compute_logits(P, hf, normed[-1:])[0]
        tok = forced[step] if forced is not None else int(step_logits.argmax())
        tokens.append(tok)
        logits.append(step_logits)
        input_ids = torch.cat([input_ids, torch.tensor([tok])])
        positions = torch.cat([positions, positions[-1:] + 1])
        hidden = torch.cat([hidden, prenorm[-1:]])  # the next step is fed the prenorm
    return tokens, torch.stack(logits)


# ---- heads, export, and draftsmith's side -------------------------------------------------------

def eagle3_heads(target, folder: Path, aux: list[int], norm_before_residual: bool, vocab: list[int] | None,
                 seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = HeadsConfig.for_target("eagle3", target.config, num_heads=K, aux_layers=aux,
                                 norm_before_residual=norm_before_residual,
                                 draft_vocab_size=len(vocab) if vocab else 0)
    module = build_heads(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        if vocab:
            module.set_vocab(torch.tensor(vocab))
    save_heads(module, folder)
    return folder


def draftsmith_drafts(heads: Path, target, ids: list[int], hs: tuple, params: SamplingParams,
                      generator: torch.Generator | None = None):
    """The eagle3 drafter's proposal after the loop's prefill of `ids` (features of ids[:-1])."""
    drafter = build_drafter("eagle3", heads=str(heads), k=K)
    drafter.bind(target)
    features = torch.cat([hs[i] for i in drafter.feature_layers], dim=-1)[:, : len(ids) - 1]
    drafter.prefill(list(ids), features)
    return drafter.propose(DraftContext(ids=list(ids), max_tokens=K, params=params, generator=generator))


def target_hidden(target, ids: list[int]) -> tuple:
    with torch.no_grad():
        return target.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states


CASES = {  # aux layers (any order), norm_before_residual, draft vocabulary
    "subset-vocab": ([0, 2, 3], False, list(range(1, 96, 3))),
    "unsorted-aux-norm-before-residual": ([3, 1, 2], True, None),
}


@pytest.mark.parametrize("case", CASES)
def test_vllm_reads_the_eagle3_export_as_draftsmith_drafts(case, tmp_path):
    """Guards the EAGLE-3 vLLM export (config fields, tensor names, fc column order, d2t) and
    the lead's Eagle3Head math against vLLM's: loaded through vLLM's config reading, weight
    mapping and draft step (re-implemented above), the exported folder gives the eagle3
    drafter's greedy k=3 chain and its draft logits on every prompt. Negative controls: the
    same folder read with norm_before_residual flipped (the bug of leaving the field out: vLLM
    defaults it to True), or with the aux layers shifted by one (output instead of input of a
    layer), must draft differently, and an unknown tensor name must fail to load."""
    aux, nbr, vocab = CASES[case]
    target = tiny_model("llama", layers=4)
    heads = eagle3_heads(target, tmp_path / "heads", aux, nbr, vocab, seed=3)
    out = export_heads(heads, "vllm", tmp_path / "vllm", verifier="org/tiny-llama")

    spec = vllm_read_speculators_config(out, target.config.num_hidden_layers)
    hf = spec["hf"]
    assert (spec["method"], spec["num_speculative_tokens"], spec["verifier"]) == ("eagle3", K, "org/tiny-llama")
    assert spec["aux"] == tuple(sorted(aux)) and hf["norm_before_residual"] is nbr and hf["norm_before_fc"] is False
    assert (hf["num_hidden_layers"], hf["vocab_size"], hf["draft_vocab_size"]) == (1, 96, len(vocab or range(96)))
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    P = vllm_load(vllm_checkpoint(out), vllm_eagle3_params(hf), eagle3=True, target=target)

    wrong_norm = {**hf, "norm_before_residual": not nbr}
    differs = {"norm": False, "aux": False}
    for prompt in PROMPTS:
        hs = target_hidden(target, prompt)
        aux_states = torch.cat([hs[i] for i in spec["aux"]], dim=-1)[0, : len(prompt) - 1]  # vLLM: layer order
        with torch.no_grad():
            ref_tokens, ref_logits = vllm_propose(P, hf, prompt, aux_states, K)
            draft = draftsmith_drafts(heads, target, prompt, hs, SamplingParams(temperature=0.0))
            assert draft.token_ids[0].tolist() == ref_tokens, f"{case} {prompt}: greedy chains differ"
            gen = torch.Generator().manual_seed(len(prompt))
            sampled = draftsmith_drafts(heads, target, prompt, hs, SamplingParams(temperature=1.0), gen)
            _, forced_logits = vllm_propose(P, hf, prompt, aux_states, K, forced=sampled.token_ids[0].tolist())
            torch.testing.assert_close(sampled.q[0].float(), forced_logits.softmax(-1), atol=2e-5, rtol=1e-4)
            assert torch.isinf(ref_logits).any() == (vocab is not None)
            differs["norm"] |= vllm_propose(P, wrong_norm, prompt, aux_states, K)[0] != ref_tokens
            shifted = torch.cat([hs[i + 1] for i in spec["aux"]], dim=-1)[0, : len(prompt) - 1]
            differs["aux"] |= vllm_propose(P, hf, prompt, shifted, K)[0] != ref_tokens
    assert differs == {"norm": True, "aux": True}, f"{case}: a wrong mapping drafted the same: {differs}"
    with pytest.raises(ValueError, match="no module or parameter named 'model.token_ids'"):
        vllm_load(vllm_checkpoint(out) + [("token_ids", torch.arange(4))], vllm_eagle3_params(hf), True, target)


def test_eagle1_vllm_export_holds_only_names_vllm_maps(tmp_path):
    """Guards the EAGLE-1 vLLM export bug: vLLM loads every *.safetensors of the folder, so the
    draft vocabulary copied beside the heads (`draft_vocab.safetensors`, tensor `token_ids`)
    made vLLM fail with "There is no module or parameter named 'token_ids'". The export holds
    only names EagleLlamaForCausalLM's loader maps; the heads folder itself (the negative
    control) does not load. An earlier export's leftover vocabulary file is removed."""
    target = tiny_model("llama", layers=2)
    heads = Path(random_heads(target, "eagle", tmp_path / "heads"))
    save_vocab(heads, list(range(40)))
    out = tmp_path / "vllm"
    out.mkdir()
    (out / "draft_vocab.safetensors").write_bytes((heads / "draft_vocab.safetensors").read_bytes())
    export_heads(heads, "vllm", out)
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "llama" and raw["architectures"] == ["LlamaForCausalLM"]  # renamed Eagle* by method
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    expected = vllm_eagle1_params(raw)
    loaded = vllm_load(vllm_checkpoint(out), expected, eagle3=False, target=target)
    assert set(loaded) == set(expected)
    with pytest.raises(ValueError, match="token_ids"):
        vllm_load(vllm_checkpoint(heads), expected, eagle3=False, target=target)


def test_sglang_eagle3_export_names_and_aux_ids(tmp_path):
    """Guards the SGLang EAGLE-3 layout: SGLang silently skips tensor names it does not have
    (a `layers.0.*` name would leave its layer random), reads aux ids as layer OUTPUTS (it
    captures the input of id + 1) from eagle_config, and has no norm_before_residual; such heads
    and heads fusing the embeddings (aux layer 0) are refused instead of exported wrong."""
    target = tiny_model("llama", layers=4)
    heads = eagle3_heads(target, tmp_path / "heads", [3, 1, 2], False, None, seed=4)
    out = export_heads(heads, "sglang", tmp_path / "sglang")
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLMEagle3"] and raw["tie_word_embeddings"] is False
    assert [i + 1 for i in raw["eagle_config"]["eagle_aux_hidden_state_layer_ids"]] == [1, 2, 3]
    H = raw["hidden_size"]
    params = {"model.fc.weight", "model.norm.weight", "lm_head.weight", "model.embed_tokens.weight",
              *(f"model.midlayer.{n}.weight" for n in ("input_layernorm", "hidden_norm", "post_attention_layernorm",
                                                       "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                                       "mlp.down_proj"))}
    seen = set()
    for name, w in vllm_checkpoint(out):
        if "d2t" in name or "t2d" in name:
            continue
        for _, shard, _ in STACKED:
            name = name.replace(shard, {".q_proj": ".qkv_proj", ".k_proj": ".qkv_proj", ".v_proj": ".qkv_proj",
                                        ".gate_proj": ".gate_up_proj", ".up_proj": ".gate_up_proj"}[shard])
        mapped = name if name in params else f"model.{name}"
        assert mapped in params, f"SGLang would silently skip {name!r}"
        seen.add(mapped)
    assert seen == params - {"model.embed_tokens.weight"}
    fc = load_file(str(out / "model.safetensors"))["fc.weight"]
    orig = load_file(str(heads / "model.safetensors"))["fc.weight"]  # blocks in aux order [3, 1, 2]
    assert torch.equal(fc, torch.cat([orig[:, H:2 * H], orig[:, 2 * H:], orig[:, :H]], dim=1))
    nbr = eagle3_heads(target, tmp_path / "nbr", [1, 2, 3], True, None, seed=4)
    with pytest.raises(DraftsmithError, match="norm_before_residual"):
        export_heads(nbr, "sglang", tmp_path / "x")
    emb = eagle3_heads(target, tmp_path / "emb", [0, 2, 3], False, None, seed=4)
    with pytest.raises(DraftsmithError, match="embeddings"):
        export_heads(emb, "sglang", tmp_path / "y")
    dup = eagle3_heads(tiny_model("llama", layers=2), tmp_path / "dup", [0, 1, 1], False, None, seed=4)
    with pytest.raises(DraftsmithError, match="twice"):
        export_heads(dup, "vllm", tmp_path / "z", verifier="org/x")
