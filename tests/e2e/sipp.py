"""SIPp as a bounded subprocess: build its command line, run it in a directory of its own and read
back what it left there (exit code, ``-trace_stat`` counters, ``-trace_msg`` messages, ``-trace_rtt``
response times, ``-trace_err`` errors).

Every run uses ``-nostdin``, ``-timeout`` (and ``-timeout_error`` for clients), binds its SIP,
media (``-mi``/``-mp``) and control (``-ci``/``-cp``) sockets to 127.0.0.1, and writes its traces
into its working directory. Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
LOOPBACK = "127.0.0.1"
SIPP: str | None = shutil.which("sipp")

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


def port_is_free(port: int, kinds: Sequence[int] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> bool:
    """True when ``port`` on 127.0.0.1 can be bound for each socket kind (nobody holds it)."""
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def tail_file(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} not written)"
    return "\n".join(text.splitlines()[-lines:])


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
        return tail_file(self.workdir / "errors.log", lines) if (self.workdir / "errors.log").exists() else ""

    def screen(self, lines: int = 60) -> str:
        return tail_file(self.workdir / "screen.log", lines)

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

    def start(self, bind_timeout: float = 5.0) -> SippProcess:
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
        if self.spec.remote is None:
            # a server must be listening before anyone sends to it
            kind = socket.SOCK_STREAM if self.spec.transport == "tcp" else socket.SOCK_DGRAM
            deadline = time.monotonic() + bind_timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if not port_is_free(self.spec.local_port, (kind,)):
                    break
                time.sleep(0.02)
            if self._proc.poll() is not None:
                self._out.close()
                self._out = None
                out, errors = (
                    tail_file(self.workdir / "sipp.out", 30),
                    tail_file(self.workdir / "errors.log", 30),
                )
                raise RuntimeError(
                    f"SIPp {self.name} exited at once ({self._proc.returncode}):\n{out}\n{errors}"
                )
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

    def wait_for_callee_dialogs(self, count: int, timeout: float) -> int:
        """Poll this UAS's message trace until ``count`` dialogs have completed (INVITE and BYE both
        answered 2xx) or ``timeout`` seconds pass; returns how many had completed."""
        view = SippResult(self.name, self.spec.role, self.command, self.workdir, None, 0.0, None)
        deadline = time.monotonic() + timeout
        while True:
            done = view.completed_callee_dialogs()
            if done >= count or time.monotonic() >= deadline or not self.alive:
                return done
            time.sleep(0.25)

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


def expect_calls(result: SippResult, calls: int, what: str = "") -> None:
    """Assert that a SIPp run completed exactly ``calls`` calls with no failure."""
    if result.ok(calls):
        return
    label = f"{what}: " if what else ""
    raise AssertionError(f"{label}expected {calls} successful calls and none failed\n{result.describe()}")
