"""whisper-base assembled from its two packages: verified, atomic, reused, rebuilt; local model_path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_serve.models.whisper_assets import (
    MANIFEST,
    MODEL_CACHE_ENV,
    MODEL_PATH_ENV,
    SUPPORT_FILES,
    WHISPER_BASE_PACKAGES,
    InvalidModelDirError,
    MissingModelPackageError,
    WhisperModelConfig,
    assemble_whisper_base,
    default_cache_root,
)

from .speech import MISSING_MODEL_PACKAGES, figure

needs_packages = pytest.mark.skipif(
    bool(MISSING_MODEL_PACKAGES),
    reason="whisper-base packages not installed: "
    f"{' '.join(MISSING_MODEL_PACKAGES)} (pip install -e '.[ai]')",
)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    """A cache root that is emptied afterwards: pytest keeps old tmp dirs, 150 MB per build."""
    root = tmp_path / "cache"
    root.mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _part_sizes() -> int:
    import importlib.resources

    total = 0
    for _, mod in WHISPER_BASE_PACKAGES:
        for entry in (importlib.resources.files(mod) / "data").iterdir():
            if entry.name.startswith("model.bin.part"):
                total += len(entry.read_bytes())
    return total


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_packages
def test_assembles_verified_folder_then_reuses_it(cache: Path) -> None:
    t0 = time.perf_counter()
    folder = assemble_whisper_base(cache)
    built = time.perf_counter() - t0
    assert folder == cache / "whisper-base"
    assert {p.name for p in folder.iterdir()} == {"model.bin", MANIFEST, *SUPPORT_FILES}
    assert (folder / "model.bin").stat().st_size == _part_sizes()
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"]["model.bin"]["sha256"] == _sha256(folder / "model.bin")
    assert set(manifest["sources"]) == {d for d, _ in WHISPER_BASE_PACKAGES}
    assert _leftovers(cache) == []  # the temporary build folder was renamed, nothing left over
    assert os.stat(folder).st_mode & 0o055 == 0o055  # readable by other users (Ray workers)

    mtime = (folder / "model.bin").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert assemble_whisper_base(cache) == folder
    reused = time.perf_counter() - t0
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # not rewritten
    assert reused < 0.5
    figure(f"whisper-base assembly: build {built:.2f} s, reuse {reused * 1000:.1f} ms")


@needs_packages
def test_broken_folder_is_rebuilt(cache: Path) -> None:
    folder = assemble_whisper_base(cache)
    good = _sha256(folder / "model.bin")
    with open(folder / "model.bin", "r+b") as f:  # an interrupted copy from some other tool
        f.truncate(1000)
    assert assemble_whisper_base(cache) == folder
    assert _sha256(folder / "model.bin") == good
    assert _leftovers(cache) == []

    # Same size, one byte flipped: the cheap size check misses it, verify_hash catches it.
    with open(folder / "model.bin", "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert assemble_whisper_base(cache) == folder
    assert _sha256(folder / "model.bin") != good
    assert WhisperModelConfig(cache_dir=cache, verify_hash=True).resolve() == folder
    assert _sha256(folder / "model.bin") == good


@needs_packages
def test_concurrent_assembly_yields_one_complete_folder(cache: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(assemble_whisper_base(cache))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [cache / "whisper-base"] * 2
    assert (results[0] / "model.bin").stat().st_size == _part_sizes()
    assert _leftovers(cache) == []


def test_missing_package_is_named(tmp_path: Path) -> None:
    packages = ((WHISPER_BASE_PACKAGES[0]), ("no-such-whisper-part", "no_such_whisper_part"))
    with pytest.raises(MissingModelPackageError) as exc:
        assemble_whisper_base(tmp_path, packages=packages)
    assert "no-such-whisper-part" in exc.value.packages
    assert "no-such-whisper-part" in str(exc.value)
    assert "pip install" in str(exc.value)
    assert not (tmp_path / "whisper-base").exists()


def _fake_model_dir(folder: Path, with_manifest: bool) -> None:
    folder.mkdir(parents=True)
    files = {"model.bin": b"\0" * 64, **{n: b"{}" for n in SUPPORT_FILES}}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if with_manifest:
        manifest = {
            "format": 1,
            "sources": {},
            "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
        }
        (folder / MANIFEST).write_text(json.dumps(manifest))


def test_cached_folder_is_used_when_packages_are_gone(tmp_path: Path) -> None:
    _fake_model_dir(tmp_path / "whisper-base", with_manifest=True)
    packages = (("no-such-whisper-part", "no_such_whisper_part"),)
    assert assemble_whisper_base(tmp_path, packages=packages) == tmp_path / "whisper-base"


def test_model_path_wins_over_packaged_model(tmp_path: Path) -> None:
    local = tmp_path / "whisper-large-ct2"
    _fake_model_dir(local, with_manifest=False)
    cache = tmp_path / "cache"
    assert WhisperModelConfig(model_path=local, cache_dir=cache).resolve() == local
    assert not cache.exists()


def test_invalid_model_path_says_what_is_missing(tmp_path: Path) -> None:
    local = tmp_path / "m"
    _fake_model_dir(local, with_manifest=False)
    (local / "tokenizer.json").unlink()
    with pytest.raises(InvalidModelDirError, match=r"missing tokenizer\.json"):
        WhisperModelConfig(model_path=local).resolve()
    with pytest.raises(InvalidModelDirError, match="is not a directory"):
        WhisperModelConfig(model_path=tmp_path / "nowhere").resolve()


def test_config_from_env(tmp_path: Path) -> None:
    env = {MODEL_PATH_ENV: str(tmp_path / "m"), MODEL_CACHE_ENV: str(tmp_path / "c")}
    cfg = WhisperModelConfig.from_env(env)
    assert cfg.model_path == tmp_path / "m"
    assert cfg.cache_dir == tmp_path / "c"
    assert WhisperModelConfig.from_env(env, model_path=tmp_path / "x").model_path == tmp_path / "x"
    assert WhisperModelConfig.from_env({}) == WhisperModelConfig()
    assert default_cache_root({MODEL_CACHE_ENV: str(tmp_path)}) == tmp_path
    assert default_cache_root({}) == Path.home() / ".cache" / "smartpbx" / "models"
