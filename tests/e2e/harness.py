"""End-to-end harness: the SmartPBX edge and SIPp as real processes on 127.0.0.1, bounded in time.

The pieces, each usable on its own (the pytest fixtures in ``conftest.py`` and the signalling
benchmark in ``bench/sip_signalling.py`` both build on them):

- :class:`PortAllocator` hands out loopback ports free for both UDP and TCP, below the ephemeral range.
- :class:`EdgeSettings` / :func:`write_edge_config` write an edge YAML config (validated with the
  edge's own schema when ``pbx_edge`` imports).
- :class:`EdgeProcess` starts ``smartpbx edge --config FILE``, waits for ``edge ready`` on its stderr,
  streams stdout+stderr to a log file and stops it with SIGTERM (SIGKILL after a grace period).
  Under ``coverage run`` the edge runs under coverage too, writing data files the parent combines.
- :class:`SippSpec` / :class:`SippProcess` (from :mod:`tests.e2e.sipp`, re-exported here) run SIPp
  in a directory of its own with ``-nostdin``, ``-timeout``, ``-trace_err``, ``-trace_stat`` (and
  optionally ``-trace_msg``/``-trace_rtt``); :class:`SippResult` reads back the exit code and the
  final line of the stat file.
- :class:`E2E` groups one test's processes and stops all of them in :meth:`E2E.close`.

Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.sipp import (
    LOOPBACK,
    SCENARIOS,
    SIPP,
    Addr,
    SippProcess,
    SippResult,
    SippSpec,
    SippStats,
    Transport,
    expect_calls,
    port_is_free,
    tail_file,
)

__all__ = [
    "E2E",
    "E2E_DOMAIN",
    "LOOPBACK",
    "REPO_ROOT",
    "SCENARIOS",
    "SIPP",
    "Addr",
    "EdgeError",
    "EdgeProcess",
    "EdgeSettings",
    "PortAllocator",
    "SippProcess",
    "SippResult",
    "SippSpec",
    "SippStats",
    "Transport",
    "expect_calls",
    "port_is_free",
    "write_edge_config",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EDGE_READY = "edge ready"
E2E_DOMAIN = "pbx.e2e"


# --------------------------------------------------------------------------------------------- ports


class PortAllocator:
    """Loopback ports free for UDP and TCP, picked at random in [low, high) and never handed out twice.

    The default range sits below Linux's ephemeral range (32768-60999), so the ports cannot collide
    with the source ports of connections the edge or SIPp open.
    """

    def __init__(self, low: int = 12000, high: int = 22000, seed: int | None = None) -> None:
        self._low, self._high = low, high
        self._given: set[int] = set()
        self._rng = random.Random(seed if seed is not None else os.getpid() ^ time.time_ns())
        self._lock = threading.Lock()

    def _take(self, span: int, step: int, kinds: Sequence[int]) -> int:
        with self._lock:
            for _ in range(2000):
                base = self._rng.randrange(self._low, self._high - span, step)
                block = range(base, base + span)
                if any(p in self._given for p in block):
                    continue
                if all(port_is_free(p, kinds) for p in block):
                    self._given.update(block)
                    return base
        raise RuntimeError(f"no free loopback port block of {span} in [{self._low}, {self._high})")

    def port(self) -> int:
        """One port free for both UDP and TCP."""
        return self._take(1, 1, (socket.SOCK_DGRAM, socket.SOCK_STREAM))

    def media_port(self) -> int:
        """An even port P with P..P+3 free for UDP (SIPp binds P and P+2 for RTP)."""
        return self._take(4, 2, (socket.SOCK_DGRAM,))


# ---------------------------------------------------------------------------------------- edge config


@dataclass
class EdgeSettings:
    """The subset of the edge configuration the e2e tests vary; everything else keeps its default."""

    port: int
    static_routes: list[dict[str, Any]] = field(default_factory=list)
    host: str = LOOPBACK
    domain: str = E2E_DOMAIN
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    no_answer_timeout: float = 10.0
    no_answer_code: int = 480
    no_answer_reason: str = "Temporarily Unavailable"
    max_calls: int = 10_000
    log_level: str = "INFO"
    node_id: str = "edge-e2e"
    # Relay ports above PortAllocator's range (and below the ephemeral one) so they never collide.
    media: dict[str, Any] = field(
        default_factory=lambda: {"mode": "relay", "port_start": 32768 - 8 * 1200, "port_end": 32767}
    )
    # SIPp load runs come from 127.0.0.1 far above 10 INVITEs/s: that source is a "trunk" here.
    rate_limit: dict[str, Any] = field(default_factory=lambda: {"allow": [LOOPBACK]})
    admin_port: int = 0  # 0: any free port (the edge logs it); set one to query the API
    admin_tokens: list[dict[str, str]] = field(default_factory=list)
    metrics_port: int = 0
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="smartpbx-e2e-data-")))
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    drain_timeout: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def route(prefix: str, host: str, port: int, transport: Transport = "udp") -> dict[str, Any]:
        target = f"sip:{host}:{port}" + (";transport=tcp" if transport == "tcp" else "")
        return {"prefix": prefix, "target": target, "strip": 0, "add_prefix": ""}

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "node_id": self.node_id,
            "log_level": self.log_level,
            "sip": {
                "listen": [
                    {"transport": "udp", "host": self.host, "port": self.port},
                    {"transport": "tcp", "host": self.host, "port": self.port},
                ],
                "domain": self.domain,
                "timers": {"t1": self.t1, "t2": self.t2, "t4": self.t4},
            },
            "calls": {
                "no_answer_timeout": self.no_answer_timeout,
                "no_answer_action": {
                    "action": "reject",
                    "code": self.no_answer_code,
                    "reason": self.no_answer_reason,
                },
                "max_calls": self.max_calls,
            },
            "routing": {"static_routes": list(self.static_routes)},
            "media": dict(self.media),
            "rate_limit": dict(self.rate_limit),
            "admin": {"host": self.host, "port": self.admin_port, "tokens": self.admin_tokens},
            "metrics": {"host": self.host, "port": self.metrics_port},
            "cdr": {"url": f"sqlite:///{self.data_dir}/cdr.sqlite3"},
            "webhooks": {"outbox_url": f"sqlite:///{self.data_dir}/outbox.sqlite3", "targets": self.webhooks},
            "shutdown": {"drain_timeout": self.drain_timeout},
        }
        for section, values in self.extra.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
        return data


def write_edge_config(path: Path, settings: EdgeSettings, validate: bool = True) -> Path:
    """Write ``settings`` as YAML to ``path``; check it against the edge's schema when importable."""
    data = settings.as_dict()
    if validate:
        try:
            from pbx_edge.ops.config import parse_config
        except ImportError:
            pass
        else:
            parse_config(data, environ={})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- edge


def _coverage_wanted() -> bool:
    if os.environ.get("SMARTPBX_E2E_COVERAGE") in ("0", "false", "no"):
        return False
    return os.environ.get("COVERAGE_RUN") == "true" or os.environ.get("SMARTPBX_E2E_COVERAGE") == "1"


def edge_command(config: Path, rcfile: Path | None = None) -> list[str]:
    """How to start the edge: ``$SMARTPBX_EDGE_CMD`` if set, under coverage when the tests are, else
    the venv's ``smartpbx`` console script (falling back to ``python -m pbx_edge.cli``)."""
    override = os.environ.get("SMARTPBX_EDGE_CMD")
    if override:
        return [*shlex.split(override), "--config", str(config)]
    if rcfile is not None:
        return [
            sys.executable, "-m", "coverage", "run", f"--rcfile={rcfile}",
            "-m", "pbx_edge.cli", "edge", "--config", str(config),
        ]  # fmt: skip
    script = Path(sys.executable).with_name("smartpbx")
    if script.exists():
        return [str(script), "edge", "--config", str(config)]
    return [sys.executable, "-m", "pbx_edge.cli", "edge", "--config", str(config)]


def _coverage_rcfile(workdir: Path) -> Path:
    """A coverage config for the edge subprocess: parallel data files in the repo root (where the
    parent's ``coverage combine`` looks), saved on SIGTERM too."""
    rc = workdir / "edge-coveragerc"
    rc.write_text(
        "[run]\n"
        "branch = true\n"
        "parallel = true\n"
        "sigterm = true\n"
        "source =\n    pbx_edge\n    ai_serve\n"
        f"data_file = {REPO_ROOT / '.coverage'}\n",
        encoding="utf-8",
    )
    return rc


_TIMEOUT: str | None = shutil.which("timeout")


class EdgeError(RuntimeError):
    """The edge did not start, or died; the message carries the tail of its log."""


class EdgeProcess:
    """One edge subprocess with its config, its log file and a bounded start and stop."""

    def __init__(
        self,
        settings: EdgeSettings,
        workdir: Path,
        *,
        name: str = "edge",
        env: Mapping[str, str] | None = None,
        max_lifetime_s: float = 900.0,
    ) -> None:
        self.settings = settings
        self.max_lifetime_s = max_lifetime_s
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.command: list[str] = []
        self.exit_code: int | None = None

    @property
    def addr(self) -> Addr:
        return (self.settings.host, self.settings.port)

    @property
    def pid(self) -> int:
        """The pid of what was started (the ``timeout`` wrapper when there is one)."""
        if self._proc is None:
            raise EdgeError("edge not started")
        return self._proc.pid

    @property
    def edge_pid(self) -> int:
        """The pid of the edge itself, below the ``timeout`` wrapper."""
        pid = self.pid
        if self.command[:1] != [_TIMEOUT]:
            return pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return pid
        return int(children[0]) if children else pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout: float = 15.0) -> EdgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_edge_config(self.config_path, self.settings)
        rcfile = _coverage_rcfile(self.workdir) if _coverage_wanted() else None
        self.command = edge_command(self.config_path, rcfile)
        if _TIMEOUT is not None:
            # a hard bound even if this process dies without stopping it; SIGTERM is passed on
            self.command = [_TIMEOUT, "-k", "5", str(max(1, round(self.max_lifetime_s))), *self.command]
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.pop("COVERAGE_PROCESS_START", None)
        self._log = self.log_path.open("wb")
        self._log.write(f"$ {shlex.join(self.command)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if EDGE_READY in self.log_path.read_text(encoding="utf-8", errors="replace"):
                return self
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise EdgeError(
                    f"edge exited with code {code} before '{EDGE_READY}':\n{tail_file(self.log_path)}"
                )
            time.sleep(0.05)
        self.stop()
        raise EdgeError(f"edge not ready after {ready_timeout:.0f} s:\n{tail_file(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            code = proc.returncode
            self.exit_code = code
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, lines: int = 80) -> str:
        return tail_file(self.log_path, lines)

    def __enter__(self) -> EdgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- sessions


class E2E:
    """One test's worth of processes on loopback: ports, a work directory, edges and SIPp runs.

    Everything started through it is stopped by :meth:`close`, in reverse order.
    """

    def __init__(self, workdir: Path, ports: PortAllocator | None = None) -> None:
        self.workdir = workdir
        self.ports = ports or PortAllocator()
        self.edges: list[EdgeProcess] = []
        self.sipps: list[SippProcess] = []
        self.results: list[SippResult] = []
        self._counter = 0

    def _name(self, base: str) -> str:
        self._counter += 1
        return f"{self._counter:02d}-{base}"

    # -- edge
    def edge_settings(
        self,
        *,
        uas_port: int | None = None,
        uas_transport: Transport = "udp",
        static_routes: list[dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> EdgeSettings:
        """Settings for an edge on a fresh port; ``uas_port`` adds a catch-all route to a SIPp UAS."""
        routes = list(static_routes or [])
        if uas_port is not None:
            routes.append(EdgeSettings.route("", LOOPBACK, uas_port, uas_transport))
        return EdgeSettings(port=self.ports.port(), static_routes=routes, **overrides)

    def start_edge(
        self, settings: EdgeSettings, ready_timeout: float = 15.0, max_lifetime_s: float = 900.0
    ) -> EdgeProcess:
        edge = EdgeProcess(settings, self.workdir, name=self._name("edge"), max_lifetime_s=max_lifetime_s)
        self.edges.append(edge)
        return edge.start(ready_timeout)

    # -- SIPp
    def sipp_spec(self, scenario: str | Path, **kwargs: Any) -> SippSpec:
        kwargs.setdefault("local_port", self.ports.port())
        kwargs.setdefault("media_port", self.ports.media_port())
        kwargs.setdefault("control_port", self.ports.port())
        return SippSpec(scenario=scenario, **kwargs)

    def start_uas(self, scenario: str | Path, *, calls: int | None, **kwargs: Any) -> SippProcess:
        """Start a SIPp server in the background; bound it with ``calls`` (-m) and ``timeout_s``."""
        kwargs.setdefault("timeout_error", False)
        spec = self.sipp_spec(scenario, calls=calls, **kwargs)
        proc = SippProcess(spec, self.workdir / self._name(Path(scenario).stem), Path(scenario).stem)
        self.sipps.append(proc)
        return proc.start()

    def run_uac(
        self,
        scenario: str | Path,
        remote: Addr,
        *,
        calls: int = 1,
        rate: float = 10.0,
        **kwargs: Any,
    ) -> SippResult:
        """Run a SIPp client to completion (``-m calls -r rate -timeout T -timeout_error``)."""
        spec = self.sipp_spec(scenario, remote=remote, calls=calls, rate=rate, **kwargs)
        proc = SippProcess(spec, self.workdir / self._name(Path(scenario).stem), Path(scenario).stem)
        self.sipps.append(proc)
        result = proc.start().wait()
        self.results.append(result)
        return result

    def finish_uas(self, uas: SippProcess, timeout: float = 15.0) -> SippResult:
        """Let a UAS finish its -m calls (timewait included), else stop it; record its result."""
        result = uas.wait(timeout)
        self.results.append(result)
        return result

    # -- teardown and reporting
    def close(self) -> None:
        for proc in reversed(self.sipps):
            with contextlib.suppress(Exception):
                if proc.alive:
                    proc.stop(grace=2.0)
        for edge in reversed(self.edges):
            with contextlib.suppress(Exception):
                edge.stop()

    def report(self) -> Iterator[tuple[str, str]]:
        """(title, text) sections worth showing when a test fails."""
        for edge in self.edges:
            yield f"{edge.name} log ({edge.log_path})", edge.log_tail(120)
        for proc in self.sipps:
            result = proc._result
            if result is not None:
                yield f"SIPp {proc.name} ({proc.workdir})", result.describe()
            else:
                yield f"SIPp {proc.name} ({proc.workdir})", "(running, no result yet)"
