"""The IVR flows of a folder, kept live: the last good version of each file, reloaded on change.

A bad edit is recorded (:attr:`FlowRegistry.errors`) and the previous version stays live. Flows are
immutable, so a call keeps the object it started with (and its ``version``) while later calls get the
new one. :class:`FlowWatcher` (a thread) or :func:`watch_flows` (an asyncio task) polls the folder.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .flow_loader import FlowError, FlowProblem, load_flow
from .flow_schema import IvrFlow

__all__ = ["FlowRegistry", "FlowWatcher", "ReloadResult", "watch_flows"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class ReloadResult:
    loaded: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()
    failed: tuple[tuple[Path, FlowError], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.removed or self.failed)


class FlowRegistry:
    """Every ``*.yaml``/``*.yml`` flow in ``folder``, indexed by called number, reloaded on change.

    :meth:`reload_if_changed` compares each file's mtime and size with the last look: a new or
    changed file is parsed, and only a valid one (whose numbers no other file serves) replaces the
    previous version; an invalid one is recorded in :attr:`errors` and its old version stays live.
    Thread-safe: lookups may run while a watcher reloads.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"IVR flow folder {self.folder} does not exist")
        self._lock = threading.Lock()
        self._stamps: dict[Path, _Stamp] = {}
        self._flows: dict[Path, IvrFlow] = {}
        self._errors: dict[Path, FlowError] = {}
        self._by_number: dict[str, IvrFlow] = {}
        self.reload_if_changed()

    def flow_for(self, number: str) -> IvrFlow | None:
        """The current flow for a called number (a new call keeps the object it gets)."""
        with self._lock:
            return self._by_number.get(number)

    @property
    def flows(self) -> dict[Path, IvrFlow]:
        with self._lock:
            return dict(self._flows)

    @property
    def errors(self) -> dict[Path, FlowError]:
        """Files whose latest content is invalid (their previous good version, if any, is live)."""
        with self._lock:
            return dict(self._errors)

    def _files(self) -> list[Path]:
        return sorted(
            p
            for pattern in ("*.yaml", "*.yml")
            for p in self.folder.glob(pattern)
            if p.is_file() and not p.name.startswith(".")
        )

    def _conflict(self, path: Path, flow: IvrFlow) -> FlowError | None:
        for other_path, other in self._flows.items():
            if other_path == path:
                continue
            for i, number in enumerate(flow.numbers):
                if number in other.numbers:
                    where = FlowProblem(
                        str(path), 1, 1, f"numbers[{i}]", f"{number} is served by {other_path.name}"
                    )
                    return FlowError([where])
        return None

    def reload_if_changed(self) -> ReloadResult:
        """Pick up new, changed and deleted files; returns what happened."""
        try:
            files = self._files()
        except OSError as e:
            _LOG.warning("IVR flows: cannot list %s: %s", self.folder, e)
            return ReloadResult()
        loaded: list[Path] = []
        failed: list[tuple[Path, FlowError]] = []
        with self._lock:
            removed = [p for p in self._stamps if p not in files]
            for path in removed:
                self._stamps.pop(path, None)
                self._flows.pop(path, None)
                self._errors.pop(path, None)
            for path in files:
                try:
                    st = path.stat()
                except OSError:
                    continue  # deleted between the listing and now: the next pass sees it gone
                stamp = _Stamp(st.st_mtime_ns, st.st_size)
                if self._stamps.get(path) == stamp:
                    continue
                self._stamps[path] = stamp
                try:
                    flow = load_flow(path)
                    error = self._conflict(path, flow)
                except FlowError as e:
                    error = e
                if error is not None:
                    self._errors[path] = error
                    failed.append((path, error))
                    _LOG.warning("IVR flow %s rejected, keeping the previous version: %s", path, error)
                    continue
                old = self._flows.get(path)
                self._errors.pop(path, None)
                if old == flow:
                    continue
                self._flows[path] = flow
                loaded.append(path)
                _LOG.info("IVR flow %s loaded, version %s", path, flow.version)
            self._by_number = {n: f for f in self._flows.values() for n in f.numbers}
            if loaded or removed:  # a number may have been freed: retry the rejected files next pass
                for path in self._errors:
                    self._stamps.pop(path, None)
        return ReloadResult(tuple(loaded), tuple(removed), tuple(failed))


class FlowWatcher:
    """Polls a registry from a thread; the owner calls :meth:`start` and :meth:`stop` (or uses ``with``)."""

    def __init__(
        self,
        registry: FlowRegistry,
        interval: float = 2.0,
        on_reload: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.registry = registry
        self.interval = interval
        self.on_reload = on_reload
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FlowWatcher already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ivr-flow-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> FlowWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            _poll_once(self.registry, self.on_reload)


def _poll_once(registry: FlowRegistry, on_reload: Callable[[ReloadResult], None] | None) -> None:
    try:
        result = registry.reload_if_changed()
        if on_reload is not None and result.changed:
            on_reload(result)
    except Exception:  # a watcher must outlive one bad pass
        _LOG.exception("IVR flow watcher: reload failed")


async def watch_flows(
    registry: FlowRegistry, interval: float = 2.0, on_reload: Callable[[ReloadResult], None] | None = None
) -> None:
    """Poll ``registry`` until cancelled (the task's owner cancels it); file I/O runs in a thread."""
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(_poll_once, registry, on_reload)
