"""EAGLE and EAGLE-3 heads for other engines: folders that vLLM and SGLang load as draft models.

`export_heads(heads, engine, out)` reads the heads' kind and writes the layout that engine's loader
reads. Every contract below was read from the engines' sources (no engine runs in this test suite:
tests/unit/test_export_conformance.py re-implements vLLM's config reading, weight-name mapping and
EAGLE-3 draft step in plain PyTorch and checks these folders against draftsmith's own drafters;
benchmarks/vllm_peer.py runs the real vLLM). Sources read: vLLM (vllm-project/vllm, main, 2025-26)
`model_executor/models/llama_eagle.py`, `llama_eagle3.py`, `models/interfaces.py`
(EagleModelMixin), `v1/spec_decode/eagle.py` (EagleProposer), `transformers_utils/config.py`,
`transformers_utils/configs/eagle.py`, `transformers_utils/configs/speculators/{base,algos}.py`,
`config/speculative.py`; speculators (vllm-project/speculators @ c05b95b)
`models/eagle3/config.py`, `config.py`, `convert/eagle/eagle3_converter.py`; SGLang
(sgl-project/sglang @ 03d5a77) `srt/models/llama_eagle.py`, `llama_eagle3.py`, `llama.py`.

Both engines load EVERY `*.safetensors` file of the folder (there is no index file), and vLLM fails
on any tensor name its model does not have ("There is no module or parameter named ..."), so an
export holds one weights file, `model.safetensors`, and nothing else in that format: the draft
vocabulary of EAGLE heads (`draft_vocab.safetensors`, `token_ids`) stays behind.

EAGLE (`train heads --kind eagle`): the heads folder is already the EAGLE-1 checkpoint layout
(modules.EagleHead): `fc.weight` over [next-token embedding; feature], one decoder layer `layers.0.*`
without an input norm, no final norm, no embeddings or LM head (both engines share the target's),
the feature being the target's last hidden state after its final norm.

- vllm    the folder with `architectures: ["LlamaForCausalLM"]`; vLLM renames it to
          `EagleLlamaForCausalLM` when `speculative_config={"method": "eagle", "model": DIR}`. It
          prefixes `model.` to every name but `lm_head*`, stacks q/k/v and gate/up, skips
          `embed_tokens.*`; its `fc` has no bias and layer 0 has no input norm (either tensor would
          be unknown). The draft vocabulary has no place here (vLLM's EAGLE-1 drafts over the
          target's whole vocabulary).
- sglang  `architectures: ["LlamaForCausalLMEagle"]` (SGLang does not rename) and an all-zero
          `fc.bias` (SGLang's fc has a bias and would keep its random init), plus the draft
          vocabulary as `token_map.pt` (a saved id tensor) for `--speculative-token-map`.

EAGLE-3 (`train heads --kind eagle3`, modules.Eagle3Head): fc over the concatenated inputs of three
target layers, one decoder layer whose attention reads [input_layernorm(embedding);
hidden_norm(fused)], a final norm and an LM head over the draft vocabulary (`d2t`: target id =
draft id + d2t[draft id]), the next draft step fed the layer's output before the final norm.

- vllm    the speculators format (what `speculators` saves and vLLM detects when config.json has
          `speculators_config` and no top-level `model_type`): `speculators_model_type: "eagle3"`,
          `architectures: ["Eagle3Speculator"]` (vLLM replaces it with `Eagle3LlamaForCausalLM`),
          `speculators_config` {algorithm "eagle3", proposal_methods [{proposal_type "greedy",
          speculative_tokens k}], default_proposal_method "greedy", verifier {name_or_path,
          architectures}}, `transformer_layer_config` (a Llama config of the draft layer:
          num_hidden_layers 1, vocab_size the target's), `draft_vocab_size`, `target_hidden_size`,
          `norm_before_residual` (always written: vLLM defaults it to TRUE when absent),
          `norm_before_fc: false`, `eagle_aux_hidden_state_layer_ids` (vLLM captures, for id i, the
          residual stream entering target layer i = HF hidden_states[i], draftsmith's aux_layers).
          Weights `fc.weight`, `layers.0.*` (vLLM also maps `midlayer.*`), `norm.weight`,
          `lm_head.weight`, `d2t` (loaded as draft_id_to_target_id), `t2d` (skipped); no
          `embed_tokens` (vLLM then shares the target's). vLLM concatenates the captured layers in
          layer order, so fc's column blocks are written in ascending layer order; a layer listed
          twice cannot be expressed. Use: `vllm serve DIR` (the verifier named in the config is
          loaded as the target) or speculative_config={"method": "eagle3", "model": DIR, ...}.
- sglang  a Llama config with `architectures: ["LlamaForCausalLMEagle3"]`, `draft_vocab_size`,
          `target_hidden_size` and `eagle_config.eagle_aux_hidden_state_layer_ids`, which SGLang
          reads as OUTPUTS of layers (it captures the input of layer id + 1): draftsmith's aux
          layer i is written as i - 1, so the embeddings (aux layer 0) cannot be expressed.
          Weights `midlayer.*` (SGLang silently skips names it does not know, so `layers.0.*` would
          leave the layer random), `fc.weight`, `norm.weight`, `lm_head.weight`, `d2t` (its
          hot_token_id), `t2d`. SGLang's EAGLE-3 layer always starts the residual at the fused
          feature before the hidden norm, so heads with `norm_before_residual` are refused.
          Use: --speculative-algorithm EAGLE3 --speculative-draft-model-path DIR.

Draft models (`draft_model` and `pard` drafters, `draftsmith train`): a plain causal LM folder,
written as it is minus the draft vocabulary (vLLM loads every `*.safetensors`; outside draftsmith
the tied LM head drafts over the whole vocabulary). vLLM: speculative_config={"method":
"draft_model", "model": DIR, "num_speculative_tokens": k}; a PARD drafter adds "parallel_drafting":
true, and vLLM reads the mask id from `pard_token` in config.json (`v1/spec_decode/
llm_base_proposer.py`, `_init_parallel_drafting_params`): the export writes parallel drafting into
the config it suggests exactly when the folder has one. SGLang: --speculative-algorithm STANDALONE --speculative-draft-model-path DIR (not
run here: SGLang has no CPU wheel on PyPI).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...errors import DraftsmithError
from .modules import HeadsConfig
from .vocab import FILE as VOCAB_FILE, load_vocab

ENGINES = ("vllm", "sglang")
KINDS = ("eagle", "eagle3")
ARCHITECTURE = {"vllm": "LlamaForCausalLM", "sglang": "LlamaForCausalLMEagle"}  # EAGLE-1
EAGLE3_LAYER = ("input_layernorm", "hidden_norm", "post_attention_layernorm", "self_attn.q_proj",
                "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                "mlp.down_proj")


def export_heads(heads: str | Path, engine: str, out: str | Path, verifier: str | None = None) -> Path:
    """Write `out`, the folder `engine` loads as a draft model for the EAGLE or EAGLE-3 heads in
    `heads`. verifier: the target's Hugging Face id or local folder, written into the speculators
    config of an EAGLE-3 vLLM export (default: the upstream id of the target the heads were trained on,
    when it is a known model pack)."""
    if engine not in ENGINES:
        raise DraftsmithError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    heads, out = Path(heads).expanduser(), Path(out).expanduser()
    cfg_file = heads / "config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    kind = config.get("draftsmith_heads", {}).get("kind")
    if kind not in KINDS and not (kind is None and any(str(a).endswith("ForCausalLM") for a in config.get("architectures", []))):
        raise DraftsmithError(f"{heads}: export takes EAGLE heads, EAGLE(-1) or EAGLE-3, written by `draftsmith train "
                              "heads --kind eagle` or `--kind eagle3`, or a draft model folder"
                              + (f"; these are {kind} heads, which vLLM and SGLang have no loader for" if kind else ""))
    if out.resolve() == heads.resolve():
        raise DraftsmithError("export: --out must be another folder than the heads'")
    if kind is None:  # a draft model folder
        return export_draft_model(heads, engine, out)
    weights = load_file(str(heads / "model.safetensors"))
    if kind == "eagle":
        files = _eagle(heads, engine, config, weights)
    else:
        files = _eagle3(HeadsConfig(**config["draftsmith_heads"]), engine, weights, verifier)
    _refuse_foreign_weights(out, ("model.safetensors", VOCAB_FILE))
    out.mkdir(parents=True, exist_ok=True)
    (out / VOCAB_FILE).unlink(missing_ok=True)  # written there by earlier exports; vLLM rejects its `token_ids`
    tensors, config_out, extra = files
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config_out, indent=1))
    for name, value in extra.items():
        torch.save(value, out / name)
    if (heads / "README.md").is_file():
        shutil.copyfile(heads / "README.md", out / "README.md")
    return out


def _refuse_foreign_weights(out: Path, ours: tuple[str, ...]) -> None:
    """The engines load every *.safetensors of the folder: refuse an `out` holding others than `ours`."""
    foreign = [f.name for f in out.glob("*.safetensors") if f.name not in ours]
    if foreign:
        raise DraftsmithError(f"export: {out} holds other weights ({', '.join(sorted(foreign))}), which the engines would "
                              "load with the draft model; choose an empty folder")


DRAFT_MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "README.md")


def export_draft_model(model: str | Path, engine: str, out: str | Path) -> Path:
    """The draft model folder `model` as `engine` loads it (see the module docstring): its files
    but the draft vocabulary. The speculative_config to pass is written beside it
    (`speculative_config.json`)."""
    model, out = Path(model).expanduser(), Path(out).expanduser()
    config = json.loads((model / "config.json").read_text())
    if not (model / "model.safetensors").is_file():
        raise DraftsmithError(f"{model}: no model.safetensors (a draft model folder written by `draftsmith train`)")
    _refuse_foreign_weights(out, ("model.safetensors",))
    out.mkdir(parents=True, exist_ok=True)
    for name in DRAFT_MODEL_FILES:
        if (model / name).is_file():
            shutil.copyfile(model / name, out / name)
    k = int(config.get("pard_k") or 5)
    spec = {"method": "draft_model", "model": str(out.resolve()), "num_speculative_tokens": k}
    if config.get("pard_token") is not None:
        spec["parallel_drafting"] = True
    if engine == "sglang":
        spec = {"speculative_algorithm": "STANDALONE", "speculative_draft_model_path": str(out.resolve()),
                "speculative_num_draft_tokens": k + 1}
    (out / "speculative_config.json").write_text(json.dumps(spec, indent=1) + "\n")
    return out


export_eagle = export_heads  # the name this module's one entry point had when it took EAGLE heads only


def _eagle(heads: Path, engine: str, config: dict, weights: dict) -> tuple[dict, dict, dict]:
    """EAGLE-1: the heads' own tensors (plus SGLang's zero fc bias), the config with the engine's
    architecture name, and (SGLang) the draft vocabulary as token_map.pt."""
    extra = {}
    if engine == "sglang":
        fc = weights["fc.weight"]  # [H, 2H]
        weights["fc.bias"] = torch.zeros(fc.shape[0], dtype=fc.dtype)
        vocab = load_vocab(heads, None)
        if vocab is not None:
            extra["token_map.pt"] = vocab.clone()
    return weights, {**config, "architectures": [ARCHITECTURE[engine]]}, extra


def _eagle3(cfg: HeadsConfig, engine: str, weights: dict, verifier: str | None) -> tuple[dict, dict, dict]:
    aux = list(cfg.aux_layers)
    if len(set(aux)) != len(aux):
        raise DraftsmithError(f"export: these EAGLE-3 heads fuse target layer(s) {aux}, one of them twice; vLLM and "
                              "SGLang capture each layer once, so they cannot be expressed (train heads on three "
                              "distinct layers)")
    order = sorted(range(len(aux)), key=lambda j: aux[j])  # the engines concatenate in layer order
    Ht = cfg.target_hidden_size
    fc = weights["fc.weight"]  # [H, 3 Ht], column blocks in aux order
    fc = torch.cat([fc[:, j * Ht:(j + 1) * Ht] for j in order], dim=1)
    aux = [aux[j] for j in order]
    layer = {name: weights[f"midlayer.{name}.weight"] for name in EAGLE3_LAYER}
    common = {"fc.weight": fc, "norm.weight": weights["norm.weight"], "lm_head.weight": weights["lm_head.weight"],
              "d2t": weights["d2t"].to(torch.int64), "t2d": weights["t2d"].to(torch.bool)}
    llama = cfg.llama().to_dict()
    rope_theta = (llama.get("rope_parameters") or {}).get("rope_theta", cfg.rope_theta)
    llama.update(num_hidden_layers=1, vocab_size=cfg.vocab_size, tie_word_embeddings=False, rope_theta=rope_theta,
                 attention_bias=False, mlp_bias=False)  # the head's linears have no biases
    for key in ("architectures", "id2label", "label2id", "_name_or_path", "transformers_version"):
        llama.pop(key, None)
    if llama.get("dtype") is None:  # the engines run the draft in the target's dtype
        llama.pop("dtype", None)
    if engine == "vllm":
        tensors = {**common, **{f"layers.0.{name}.weight": w for name, w in layer.items()}}
        name_or_path, architectures = _verifier(cfg, verifier)
        config = {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "speculators_config": {
                "algorithm": "eagle3",
                "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": cfg.num_heads,
                                      "verifier_accept_k": 1, "accept_tolerance": 0.0}],
                "default_proposal_method": "greedy",
                "verifier": {"name_or_path": name_or_path, "architectures": architectures},
            },
            "transformer_layer_config": {**llama, "model_type": "llama"},
            "draft_vocab_size": cfg.draft_vocab_size,
            "target_hidden_size": Ht,
            "norm_before_residual": bool(cfg.norm_before_residual),
            "norm_before_fc": False,
            "eagle_aux_hidden_state_layer_ids": aux,
        }
        return tensors, config, {}
    if cfg.norm_before_residual:
        raise DraftsmithError("export: SGLang's EAGLE-3 layer keeps the fused feature before the hidden norm as its "
                              "residual; these heads were trained with norm_before_residual, which it cannot run "
                              "(export them for vllm)")
    if aux[0] == 0:
        raise DraftsmithError(f"export: these EAGLE-3 heads fuse target layers {aux}; SGLang names a layer by its "
                              "output, so the embeddings (layer 0's input) cannot be expressed (export them for vllm)")
    tensors = {**common, **{f"midlayer.{name}.weight": w for name, w in layer.items()}}
    config = {**llama, "model_type": "llama", "architectures": ["LlamaForCausalLMEagle3"],
              "draft_vocab_size": cfg.draft_vocab_size, "target_hidden_size": Ht,
              "eagle_config": {"use_aux_hidden_state": True, "eagle_aux_hidden_state_layer_ids": [i - 1 for i in aux]}}
    return tensors, config, {}


def _verifier(cfg: HeadsConfig, verifier: str | None) -> tuple[str, list[str]]:
    """(name_or_path, architectures) of the target for the speculators config: `verifier` if given
    (architectures read from its config.json when it is a local folder), else the upstream id of
    the model pack the heads were trained on."""
    from ...catalog import PACKS

    name = verifier or (PACKS[cfg.target].upstream if cfg.target in PACKS else cfg.target)
    if not name:
        raise DraftsmithError("export: these EAGLE-3 heads do not name their target; pass --verifier (its Hugging Face "
                              "id or folder), which vLLM loads as the target of `vllm serve DIR`")
    architectures: list[str] = []
    local = Path(name).expanduser() / "config.json"
    if local.is_file():
        architectures = list(json.loads(local.read_text()).get("architectures") or [])
    return name, architectures


__all__ = ["ENGINES", "KINDS", "export_heads", "export_eagle"]
