"""A reader's private copy of a local-mode knowledge base, refreshed when the original changes.

Why: Qdrant's local mode locks its folder (an exclusive ``flock`` on ``<path>/.lock``) for as long
as a client has it open, so a long-lived reader (the Retriever replica, a notebook) holding
``data/knowledge/qdrant`` would make the nightly ``smartpbx pipeline extract`` fail to open it. The
reader instead opens a copy: :class:`LocalSnapshot` copies the folder while holding that same lock
for the duration of the copy only (so it never copies a half-written store, and never waits: if a
writer has the folder, the previous copy keeps serving and the refresh is tried again later), and
re-copies when a file under the folder changed. A Qdrant server (``url``) needs none of this.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import portalocker

from .knowledge_base import KnowledgeBase, KnowledgeBaseConfig

__all__ = ["LocalSnapshot"]

_LOG = logging.getLogger(__name__)


def _fingerprint(folder: Path) -> tuple[int, int, int]:
    """(files, total bytes, newest mtime in ns) of everything under ``folder`` but the lock file."""
    files = size = newest = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name == ".lock":
                continue
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walked: the next check sees the new state
                continue
            files += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return files, size, newest


class LocalSnapshot:
    """``current()`` is a :class:`KnowledgeBase` on a private copy of ``config.path``.

    The copy is refreshed at most every ``check_interval`` seconds, when the original's files
    changed and no writer holds it. ``version`` counts the copies made (readers rebuild their
    caches when it moves).
    """

    def __init__(
        self,
        config: KnowledgeBaseConfig,
        *,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.path is None:
            raise ValueError("LocalSnapshot needs a local-mode knowledge base (knowledge_base.path)")
        self.config = config
        self.source = Path(config.path)
        self.check_interval = check_interval
        self._clock = clock
        self._workdir = Path(tempfile.mkdtemp(prefix="kb-snapshot-"))
        self._kb: KnowledgeBase | None = None
        self._copy: Path | None = None
        self._seen: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.version = 0

    def current(self) -> KnowledgeBase:
        now = self._clock()
        if self._kb is None or now - self._checked_at >= self.check_interval:
            self._checked_at = now
            self._refresh()
        if self._kb is None:  # nothing copied yet (the writer held the folder): an empty base
            self._kb = KnowledgeBase(self.config.model_copy(update={"path": None}))
        return self._kb

    def close(self) -> None:
        if self._kb is not None:
            self._kb.close()
            self._kb = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _refresh(self) -> None:
        if not self.source.is_dir():
            return
        seen = _fingerprint(self.source)
        if seen == self._seen and self._copy is not None:
            return
        target = self._workdir / f"v{self.version + 1}"
        if not self._copy_locked(target):
            return
        old_kb, old_copy = self._kb, self._copy
        self._kb = KnowledgeBase(self.config.model_copy(update={"path": str(target)}))
        self._copy, self._seen = target, seen
        self.version += 1
        if old_kb is not None:
            old_kb.close()
        if old_copy is not None:
            shutil.rmtree(old_copy, ignore_errors=True)
        _LOG.info("knowledge base snapshot %d of %s", self.version, self.source)

    def _copy_locked(self, target: Path) -> bool:
        """Copy the folder under Qdrant's own lock; False (nothing copied) while a writer has it."""
        lock_path = self.source / ".lock"
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held across the copy, closed below
        except OSError as exc:
            _LOG.warning("knowledge base %s: cannot open its lock file: %s", self.source, exc)
            return False
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            handle.close()
            _LOG.info("knowledge base %s is being written; keeping the previous snapshot", self.source)
            return False
        try:
            shutil.copytree(self.source, target, ignore=shutil.ignore_patterns(".lock"))
        finally:
            portalocker.unlock(handle)
            handle.close()
        return True
