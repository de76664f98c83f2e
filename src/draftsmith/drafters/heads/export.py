"""EAGLE heads for other engines: folders that vLLM and SGLang load as EAGLE(-1) draft models.

What `draftsmith train heads --kind eagle` writes is already the EAGLE-1 checkpoint layout both
read (drafters/heads/modules.EagleHead): `fc.weight` over [next-token embedding; target feature] (embedding
first), one decoder layer `layers.0.*` without an input norm, no final norm, no embeddings or LM
head (the engines share the target's), and the target feature is its last hidden state after the
final norm, which is what both engines hand their EAGLE drafter. What differs, read from the
engines' sources (vLLM `model_executor/models/llama_eagle.py`, `transformers_utils/configs/eagle.py`;
SGLang `srt/models/llama_eagle.py`), not run (neither runs on a CPU-only machine):

- vllm    the folder as it is, with `architectures: ["LlamaForCausalLM"]`: vLLM renames it to
          `EagleLlamaForCausalLM` when `speculative_config={"method": "eagle", "model": DIR}` says
          so (without the method it would load it as an ordinary draft model). Its `fc` has no
          bias, and a `fc.bias` tensor would be an unknown weight.
- sglang  `architectures: ["LlamaForCausalLMEagle"]` (SGLang does not rename), and an all-zero
          `fc.bias`: SGLang's `fc` has a bias and would otherwise keep its random initial value.
          The draft vocabulary as `token_map.pt` (a saved id tensor) for `--speculative-token-map`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...errors import DraftsmithError
from .vocab import load_vocab

ENGINES = ("vllm", "sglang")
ARCHITECTURE = {"vllm": "LlamaForCausalLM", "sglang": "LlamaForCausalLMEagle"}


def export_eagle(heads: str | Path, engine: str, out: str | Path) -> Path:
    """Write `out`, a copy of the EAGLE heads folder `heads` that `engine` loads as an EAGLE draft model."""
    if engine not in ENGINES:
        raise DraftsmithError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    heads, out = Path(heads).expanduser(), Path(out).expanduser()
    cfg_file = heads / "config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    kind = config.get("draftsmith_heads", {}).get("kind")
    if kind != "eagle":
        raise DraftsmithError(f"{heads}: export takes EAGLE heads written by `draftsmith train heads --kind eagle`"
                              + (f"; these are {kind} heads, which vLLM and SGLang have no loader for" if kind else ""))
    if out.resolve() == heads.resolve():
        raise DraftsmithError("export: --out must be another folder than the heads'")
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(heads / "model.safetensors"))
    if engine == "sglang":
        fc = weights["fc.weight"]  # [H, 2H]
        weights["fc.bias"] = torch.zeros(fc.shape[0], dtype=fc.dtype)
        vocab = load_vocab(heads, None)
        if vocab is not None:
            torch.save(vocab.clone(), out / "token_map.pt")
    save_file(weights, str(out / "model.safetensors"))
    config["architectures"] = [ARCHITECTURE[engine]]
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("README.md", "draft_vocab.safetensors"):
        if (heads / name).is_file():
            shutil.copyfile(heads / name, out / name)
    return out
