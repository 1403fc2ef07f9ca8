"""End-to-end harness: the SmartPBX edge and SIPp as real processes on 127.0.0.1, bounded in time.

The pieces, each usable on its own (the pytest fixtures in ``conftest.py`` and the signalling
benchmark in ``bench/sip_signalling.py`` both build on them):

- :class:`PortAllocator` hands out loopback ports free for both UDP and TCP, below the ephemeral range.
- :class:`EdgeSettings` / :func:`write_edge_config` write an edge YAML config (validated with the
  edge's own schema when ``pbx_edge`` imports).
- :class:`EdgeProcess` starts ``smartpbx edge --config FILE``, waits for ``edge ready`` on its stderr,
  streams stdout+stderr to a log file and stops it with SIGTERM (SIGKILL after a grace period).
  Under ``coverage run`` the edge runs under coverage too, writing data files the parent combines.
- :class:`SippSpec` / :class:`SippProcess` run SIPp in a directory of its own with ``-nostdin``,
  ``-timeout``, ``-trace_err``, ``-trace_stat`` (and optionally ``-trace_msg``/``-trace_rtt``);
  :class:`SippResult` reads back the exit code and the final line of the stat file.
- :class:`E2E` groups one test's processes and stops all of them in :meth:`E2E.close`.

Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
LOOPBACK = "127.0.0.1"
SIPP: str | None = shutil.which("sipp")
EDGE_READY = "edge ready"
E2E_DOMAIN = "pbx.e2e"

Addr = tuple[str, int]
Transport = Literal["udp", "tcp"]

# SIPp exit codes (sipp(1)): 0 all calls succeeded, 1 some failed, 97 stopped by a command,
# 99 normal exit without calls processed, 255/-1 fatal error, 254/-2 fatal error binding a socket.
SIPP_EXIT_MEANING = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    254: "fatal error binding a socket",
    255: "fatal error (or -timeout_error timeout)",
}


# --------------------------------------------------------------------------------------------- ports


class PortAllocator:
    """Loopback ports free for UDP and TCP, picked at random in [low, high) and never handed out twice.

    The default range sits below Linux's ephemeral range (32768-60999), so the ports cannot collide
    with the source ports of connections the edge or SIPp open.
    """

    def __init__(self, low: int = 20000, high: int = 32000, seed: int | None = None) -> None:
        self._low, self._high = low, high
        self._given: set[int] = set()
        self._rng = random.Random(seed if seed is not None else os.getpid() ^ time.time_ns())
        self._lock = threading.Lock()

    @staticmethod
    def _bindable(port: int, kinds: Sequence[int]) -> bool:
        for kind in kinds:
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((LOOPBACK, port))
                except OSError:
                    return False
        return True

    def _take(self, span: int, step: int, kinds: Sequence[int]) -> int:
        with self._lock:
            for _ in range(2000):
                base = self._rng.randrange(self._low, self._high - span, step)
                block = range(base, base + span)
                if any(p in self._given for p in block):
                    continue
                if all(self._bindable(p, kinds) for p in block):
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


def _tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} not written)"
    return "\n".join(text.splitlines()[-lines:])


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
    ) -> None:
        self.settings = settings
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
        if self._proc is None:
            raise EdgeError("edge not started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout: float = 15.0) -> EdgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_edge_config(self.config_path, self.settings)
        rcfile = _coverage_rcfile(self.workdir) if _coverage_wanted() else None
        self.command = edge_command(self.config_path, rcfile)
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
                    f"edge exited with code {code} before '{EDGE_READY}':\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)
        self.stop()
        raise EdgeError(f"edge not ready after {ready_timeout:.0f} s:\n{_tail(self.log_path)}")

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
        return _tail(self.log_path, lines)

    def __enter__(self) -> EdgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------- SIPp


def scenario_path(scenario: str | Path) -> Path:
    path = Path(scenario)
    return path if path.is_absolute() or path.exists() else SCENARIOS / path


@dataclass
class SippSpec:
    """One SIPp run. ``remote`` set means a client (UAC) run; None a server (UAS) run."""

    scenario: str | Path
    local_port: int
    remote: Addr | None = None
    calls: int | None = None
    rate: float | None = None
    rate_period_ms: int = 1000
    limit: int | None = None
    transport: Transport = "udp"
    service: str | None = None
    keys: Mapping[str, str | int] = field(default_factory=dict)
    duration_ms: int = 0
    timeout_s: float = 60.0
    timeout_error: bool = True
    max_retrans: int | None = None
    trace_msg: bool = True
    trace_rtt: bool = False
    media_port: int | None = None
    control_port: int | None = None
    extra: Sequence[str] = ()

    @property
    def role(self) -> str:
        return "uac" if self.remote is not None else "uas"

    def command(self) -> list[str]:
        if SIPP is None:
            raise RuntimeError("sipp is not installed (Debian package sip-tester)")
        cmd = [SIPP]
        if self.remote is not None:
            cmd.append(f"{self.remote[0]}:{self.remote[1]}")
        cmd += [
            "-sf", str(scenario_path(self.scenario)),
            "-i", LOOPBACK, "-p", str(self.local_port),
            "-mi", LOOPBACK, "-ci", LOOPBACK,
            "-t", "t1" if self.transport == "tcp" else "u1",
            "-nostdin",
            "-timeout", str(max(1, round(self.timeout_s))),
            "-d", str(self.duration_ms),
            "-trace_err", "-error_file", "errors.log",
            "-trace_stat", "-stf", "stat.csv", "-fd", "1",
            "-trace_screen", "-screen_file", "screen.log",
        ]  # fmt: skip
        if self.media_port is not None:
            cmd += ["-mp", str(self.media_port)]
        if self.control_port is not None:
            cmd += ["-cp", str(self.control_port)]
        if self.timeout_error:
            cmd.append("-timeout_error")
        if self.calls is not None:
            cmd += ["-m", str(self.calls)]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}", "-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.service is not None:
            cmd += ["-s", self.service]
        for key, value in self.keys.items():
            cmd += ["-key", key, str(value)]
        if self.max_retrans is not None:
            cmd += ["-max_retrans", str(self.max_retrans), "-max_invite_retrans", str(self.max_retrans)]
        if self.trace_msg:
            cmd += ["-trace_msg", "-message_file", "messages.log"]
        if self.trace_rtt:
            cmd += ["-trace_rtt", "-rtt_freq", "1"]
        cmd += list(self.extra)
        return cmd


_FAILURE_COLUMNS = (
    "FailedCannotSendMessage(C)",
    "FailedMaxUDPRetrans(C)",
    "FailedTcpConnect(C)",
    "FailedTcpClosed(C)",
    "FailedUnexpectedMessage(C)",
    "FailedCallRejected(C)",
    "FailedCmdNotSent(C)",
    "FailedRegexpDoesntMatch(C)",
    "FailedRegexpShouldntMatch(C)",
    "FailedRegexpHdrNotFound(C)",
    "FailedOutboundCongestion(C)",
    "FailedTimeoutOnRecv(C)",
    "FailedTimeoutOnSend(C)",
    "FailedTestDoesntMatch(C)",
    "FailedTestShouldntMatch(C)",
    "FailedStrcmpDoesntMatch(C)",
    "FailedStrcmpShouldntMatch(C)",
)


@dataclass(frozen=True)
class SippStats:
    """The cumulative counters from the last line of SIPp's ``-trace_stat`` file."""

    created: int
    successful: int
    failed: int
    current: int
    retransmissions: int
    dead_call_msgs: int
    out_of_call_msgs: int
    failures: dict[str, int]
    raw: dict[str, str]

    @classmethod
    def parse(cls, path: Path) -> SippStats | None:
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as fh:
                rows = [row for row in csv.reader(fh, delimiter=";") if row]
        except OSError:
            return None
        if len(rows) < 2:
            return None
        raw = dict(zip(rows[0], rows[-1], strict=False))

        def num(name: str) -> int:
            try:
                return int(float(raw.get(name, "0") or 0))
            except ValueError:
                return 0

        failures = {name[6:-3]: num(name) for name in _FAILURE_COLUMNS if num(name)}
        return cls(
            created=num("TotalCallCreated"),
            successful=num("SuccessfulCall(C)"),
            failed=num("FailedCall(C)"),
            current=num("CurrentCall"),
            retransmissions=num("Retransmissions(C)"),
            dead_call_msgs=num("DeadCallMsgs(C)"),
            out_of_call_msgs=num("OutOfCallMsgs(C)"),
            failures=failures,
            raw=raw,
        )

    def __str__(self) -> str:
        text = (
            f"created={self.created} successful={self.successful} failed={self.failed} "
            f"current={self.current} retrans={self.retransmissions} "
            f"dead_call_msgs={self.dead_call_msgs} out_of_call_msgs={self.out_of_call_msgs}"
        )
        return text + (f" failures={self.failures}" if self.failures else "")


@dataclass
class SippResult:
    """What one SIPp run left behind: exit code, stats and the paths of its traces."""

    name: str
    role: str
    command: list[str]
    workdir: Path
    returncode: int | None
    duration_s: float
    stats: SippStats | None
    killed: bool = False

    @property
    def successful(self) -> int:
        return self.stats.successful if self.stats else 0

    @property
    def failed(self) -> int:
        return self.stats.failed if self.stats else 0

    @property
    def created(self) -> int:
        return self.stats.created if self.stats else 0

    def ok(self, calls: int) -> bool:
        """Exactly ``calls`` calls made it to the end of the scenario and none failed."""
        return self.stats is not None and self.successful == calls and self.failed == 0

    def errors(self, lines: int = 60) -> str:
        return _tail(self.workdir / "errors.log", lines) if (self.workdir / "errors.log").exists() else ""

    def screen(self, lines: int = 60) -> str:
        return _tail(self.workdir / "screen.log", lines)

    def messages(self) -> str:
        path = self.workdir / "messages.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def traced(self, direction: Literal["sent", "received"]) -> list[str]:
        """The SIP messages SIPp sent or received, in order, from its ``-trace_msg`` log."""
        found: list[str] = []
        for block in self.messages().split("\n-----------------------------------------------"):
            head, _, body = block.partition("\n\n")
            lines = head.strip().splitlines()
            if lines and f"message {direction}" in lines[-1]:
                found.append(body.strip())
        return found

    def dialogs(self) -> dict[str, list[tuple[str, str, str]]]:
        """Traced messages grouped by Call-ID: (``sent``/``received``, start line, CSeq method)."""
        calls: dict[str, list[tuple[str, str, str]]] = {}
        for block in self.messages().split("\n-----------------------------------------------"):
            head, _, body = block.partition("\n\n")
            lines = head.strip().splitlines()
            if not lines or " message " not in lines[-1]:
                continue
            direction = "sent" if "message sent" in lines[-1] else "received"
            headers = body.strip().splitlines()
            if not headers:
                continue
            call_id = method = ""
            for line in headers[1:]:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                if key in ("call-id", "i"):
                    call_id = value.strip()
                elif key == "cseq":
                    method = value.split()[-1] if value.split() else ""
                elif not line.strip():
                    break
            if call_id:
                calls.setdefault(call_id, []).append((direction, headers[0].strip(), method))
        return calls

    def completed_callee_dialogs(self) -> int:
        """Calls in which this UAS answered an INVITE with a 2xx and a BYE with a 2xx (from its trace)."""
        done = 0
        for events in self.dialogs().values():
            seen = {
                (d, line.split()[1][0] if line.startswith("SIP/2.0") else line.split()[0], m)
                for d, line, m in events
            }
            if {
                ("received", "INVITE", "INVITE"),
                ("sent", "2", "INVITE"),
                ("received", "BYE", "BYE"),
                ("sent", "2", "BYE"),
            } <= seen:
                done += 1
        return done

    def response_times_ms(self, rtd: str | None = None) -> list[float]:
        """Per-call response times from ``-trace_rtt`` files (optionally one named rtd only)."""
        values: list[float] = []
        for path in sorted(self.workdir.glob("*_rtt.csv")):
            with path.open(newline="", encoding="utf-8") as fh:
                for row in csv.reader(fh, delimiter=";"):
                    if len(row) < 3 or not row[1].replace(".", "", 1).isdigit():
                        continue
                    if rtd is None or row[2] == rtd:
                        values.append(float(row[1]))
        return values

    def describe(self) -> str:
        code = self.returncode
        meaning = SIPP_EXIT_MEANING.get(code if code is not None else -999, "")
        parts = [
            f"SIPp {self.role} '{self.name}': exit {code} ({meaning}){' [killed]' if self.killed else ''}"
            f" after {self.duration_s:.1f} s",
            f"  stats: {self.stats if self.stats else '(no stat file)'}",
            f"  command: {shlex.join(self.command)}",
            f"  workdir: {self.workdir}",
        ]
        errors = self.errors(30)
        if errors:
            parts.append("  errors.log (tail):\n" + errors)
        return "\n".join(parts)


class SippProcess:
    """A SIPp subprocess running in ``workdir`` (its traces land there), bounded by ``-timeout``."""

    def __init__(self, spec: SippSpec, workdir: Path, name: str) -> None:
        self.spec = spec
        self.workdir = workdir
        self.name = name
        self.command = spec.command()
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        self._started = 0.0
        self._result: SippResult | None = None
        self._killed = False

    @property
    def port(self) -> int:
        return self.spec.local_port

    @property
    def addr(self) -> Addr:
        return (LOOPBACK, self.spec.local_port)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, settle: float = 0.3) -> SippProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._out = (self.workdir / "sipp.out").open("wb")
        self._out.write(f"$ {shlex.join(self.command)}\n".encode())
        self._out.flush()
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            self.command,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.spec.remote is None and settle > 0:
            # a server must be listening before anyone sends to it; SIPp binds within milliseconds
            time.sleep(settle)
            if self._proc.poll() is not None:
                return self
        return self

    def _finish(self) -> SippResult:
        assert self._proc is not None
        if self._out is not None:
            self._out.close()
            self._out = None
        self._result = SippResult(
            name=self.name,
            role=self.spec.role,
            command=self.command,
            workdir=self.workdir,
            returncode=self._proc.returncode,
            duration_s=time.monotonic() - self._started,
            stats=SippStats.parse(self.workdir / "stat.csv"),
            killed=self._killed,
        )
        return self._result

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit by itself (default bound: its own -timeout plus 15 s), else kill it."""
        if self._result is not None:
            return self._result
        if self._proc is None:
            raise RuntimeError(f"SIPp {self.name} not started")
        bound = timeout if timeout is not None else self.spec.timeout_s + 15
        try:
            self._proc.wait(bound)
        except subprocess.TimeoutExpired:
            return self.stop()
        return self._finish()

    def stop(self, grace: float = 5.0) -> SippResult:
        """Ask SIPp to finish (SIGUSR1: no new calls, end when the current ones end), then SIGTERM,
        then SIGKILL; returns the result either way."""
        if self._result is not None:
            return self._result
        if self._proc is None:
            raise RuntimeError(f"SIPp {self.name} not started")
        for sig, wait_s in ((signal.SIGUSR1, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self._proc.poll() is not None:
                break
            self._killed = self._killed or sig != signal.SIGUSR1
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(self._proc.pid, sig)
                else:
                    self._proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(wait_s)
        return self._finish()


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

    def start_edge(self, settings: EdgeSettings, ready_timeout: float = 15.0) -> EdgeProcess:
        edge = EdgeProcess(settings, self.workdir, name=self._name("edge"))
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


def expect_calls(result: SippResult, calls: int, what: str = "") -> None:
    """Assert that a SIPp run completed exactly ``calls`` calls with no failure."""
    if result.ok(calls):
        return
    label = f"{what}: " if what else ""
    raise AssertionError(f"{label}expected {calls} successful calls and none failed\n{result.describe()}")
