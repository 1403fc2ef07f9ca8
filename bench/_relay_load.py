"""The RTP side of the relay benchmark: build ``bench/rtpload.c``, run it, read its figures back.

``rtpload`` (C, single thread, epoll + recvmmsg, kernel receive timestamps) does the packets; this
module writes its list of call ends, watches its ``warm``/``end`` marks to time the CPU window of the
processes under test, and turns its latency histogram and counters into a :class:`LoadResult`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._relay_sip import Addr

SOURCE = Path(__file__).resolve().with_name("rtpload.c")
CC: str | None = shutil.which("cc") or shutil.which("gcc")


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_rtpload(cache_dir: Path | None = None) -> Path:
    """Compile ``rtpload.c`` with ``cc -O2`` into a cache directory keyed by the source's hash."""
    if CC is None:
        raise FileNotFoundError("no C compiler (cc/gcc) on PATH")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    base = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smartpbx-bench"
    binary = base / f"rtpload-{digest}"
    if binary.exists():
        return binary
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".rtpload-{digest}-{os.getpid()}"
    result = subprocess.run(
        [CC, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cc failed on {SOURCE}:\n{result.stderr}")
    tmp.replace(binary)
    return binary


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class CallEnd:
    """One UDP socket of the generator: ``direction`` 0 is the caller's end, 1 the callee's."""

    call: int
    direction: int
    local: Addr
    dest: Addr


@dataclass
class DirectionCounts:
    sent: int = 0
    recv: int = 0
    late: int = 0
    dup: int = 0
    misrouted: int = 0
    stale: int = 0


@dataclass
class LoadResult:
    """What one generator run measured (only packets sent after the warm-up are counted)."""

    ends: int
    directions: list[DirectionCounts] = field(default_factory=lambda: [DirectionCounts(), DirectionCounts()])
    hist: list[tuple[int, int, int]] = field(default_factory=list)  # (low ns, width ns, count)
    negative: int = 0
    send_lag_max_ns: int = 0
    send_lag_over_1ms: int = 0
    send_errors: int = 0
    recv_errors: int = 0
    bad: int = 0
    window_s: float = 0.0  # wall time between the warm and end marks
    generator_cpu: float | None = None  # the generator's own CPU % over that window
    machine_cpu: float | None = None  # the whole machine's busy CPU % over that window

    @property
    def sent(self) -> int:
        return sum(d.sent for d in self.directions)

    @property
    def received(self) -> int:
        return sum(d.recv for d in self.directions)

    @property
    def loss(self) -> float:
        """Share of the packets sent that never arrived (before the drain ended)."""
        return (self.sent - self.received) / self.sent if self.sent else 1.0

    @property
    def late(self) -> int:
        return sum(d.late for d in self.directions)

    @property
    def misrouted(self) -> int:
        return sum(d.misrouted for d in self.directions)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the one-way latency in ms, interpolated in its bin."""
        return histogram_percentile(self.hist, q) / 1e6

    def merge(self, other: LoadResult) -> LoadResult:
        """Both runs' packets together (used by ``--runs``)."""
        bins: dict[tuple[int, int], int] = {}
        for low, width, count in [*self.hist, *other.hist]:
            bins[(low, width)] = bins.get((low, width), 0) + count
        return LoadResult(
            ends=self.ends,
            directions=[
                DirectionCounts(
                    *(getattr(a, f) + getattr(b, f) for f in DirectionCounts.__dataclass_fields__)
                )
                for a, b in zip(self.directions, other.directions, strict=True)
            ],
            hist=sorted((low, width, count) for (low, width), count in bins.items()),
            negative=self.negative + other.negative,
            send_lag_max_ns=max(self.send_lag_max_ns, other.send_lag_max_ns),
            send_lag_over_1ms=self.send_lag_over_1ms + other.send_lag_over_1ms,
            send_errors=self.send_errors + other.send_errors,
            recv_errors=self.recv_errors + other.recv_errors,
            bad=self.bad + other.bad,
            window_s=self.window_s + other.window_s,
            generator_cpu=weighted_mean(
                (self.generator_cpu, self.window_s), (other.generator_cpu, other.window_s)
            ),
            machine_cpu=weighted_mean((self.machine_cpu, self.window_s), (other.machine_cpu, other.window_s)),
        )


def weighted_mean(*values: tuple[float | None, float]) -> float | None:
    """Mean of the values that are not None, weighted by the second item (e.g. seconds measured)."""
    known = [(v, w) for v, w in values if v is not None and w > 0]
    total = sum(w for _, w in known)
    return sum(v * w for v, w in known) / total if total else None


def histogram_percentile(hist: Sequence[tuple[int, int, int]], q: float) -> float:
    """Percentile of a histogram of (low, width, count) bins sorted by ``low``; NaN when empty."""
    total = sum(count for _, _, count in hist)
    if total == 0:
        return float("nan")
    rank = q / 100 * total
    seen = 0
    for low, width, count in hist:
        if seen + count >= rank:
            return low + width * max(0.0, min(1.0, (rank - seen) / count))
        seen += count
    low, width, _ = hist[-1]
    return float(low + width)


def parse_output(lines: Sequence[str], ends: int) -> LoadResult:
    """Read the result records ``rtpload`` prints after its run."""
    result = LoadResult(ends=ends)
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        if kind == "dir":
            values = dict(zip(parts[2::2], map(int, parts[3::2]), strict=False))
            result.directions[int(parts[1])] = DirectionCounts(**values)
        elif kind == "hist":
            result.hist.append((int(parts[1]), int(parts[2]), int(parts[3])))
        elif kind == "sendlag":
            result.send_lag_max_ns, result.send_lag_over_1ms = int(parts[2]), int(parts[4])
        elif kind == "errors":
            result.send_errors, result.recv_errors, result.bad = int(parts[2]), int(parts[4]), int(parts[6])
        elif kind == "negative":
            result.negative = int(parts[1])
    result.hist.sort()
    return result


# ------------------------------------------------------------------------------------------------ running


def write_config(path: Path, ends: Sequence[CallEnd]) -> None:
    lines = [f"{e.call} {e.direction} {e.local[0]} {e.local[1]} {e.dest[0]} {e.dest[1]}" for e in ends]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class LoadError(RuntimeError):
    """The generator failed (bind error, crash, no result)."""


def run_load(
    binary: Path,
    ends: Sequence[CallEnd],
    *,
    duration: float,
    warmup: float,
    drain: float,
    rate: int = 50,
    payload: int = 160,
    tick_us: int = 200,
    on_mark: Callable[[str], None] | None = None,
    workdir: Path | None = None,
) -> tuple[LoadResult, int]:
    """Run ``rtpload`` over ``ends``; ``on_mark("warm"/"end")`` is called as the marks arrive.

    Returns the result and the generator's pid (already exited)."""
    tmpdir = Path(tempfile.mkdtemp(prefix="rtpload-", dir=workdir))
    config = tmpdir / "ends.txt"
    write_config(config, ends)
    command = [
        str(binary), "--config", str(config), "--duration", str(duration), "--warmup", str(warmup),
        "--drain", str(drain), "--rate", str(rate), "--payload", str(payload), "--tick-us", str(tick_us),
        "--run-id", str((os.getpid() << 12 ^ time.monotonic_ns()) & 0x7FFFFFFF),
    ]  # fmt: skip
    bound = duration + warmup + drain + 40
    stderr_path = tmpdir / "stderr.txt"
    marks: dict[str, float] = {}
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert proc.stdout is not None
        own_cpu = CpuWindow([proc.pid])
        machine = SystemCpu()
        lines: list[str] = []
        started = time.monotonic()
        try:
            for line in proc.stdout:
                word = line.strip()
                if word in ("warm", "end"):
                    marks[word] = time.monotonic()
                    own_cpu.mark(word)
                    machine.mark(word)
                    if on_mark is not None:
                        on_mark(word)
                else:
                    lines.append(word)
                if time.monotonic() - started > bound:
                    break
            proc.wait(max(1.0, bound - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        finally:
            proc.stdout.close()
    if proc.returncode != 0 or "done" not in lines:
        err = stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise LoadError(f"rtpload exited with {proc.returncode}: {err or '(no message)'}")
    shutil.rmtree(tmpdir, ignore_errors=True)
    result = parse_output(lines, len(ends))
    if "warm" in marks and "end" in marks:
        result.window_s = marks["end"] - marks["warm"]
    result.generator_cpu = own_cpu.percent
    result.machine_cpu = machine.percent
    return result, proc.pid


# ------------------------------------------------------------------------------------------------ CPU/RSS


class CpuWindow:
    """CPU time of a set of processes (all threads, children included) between two marks."""

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil

        self._psutil = psutil
        self._procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self._procs.append(psutil.Process(pid))
        self._start: tuple[float, float] | None = None
        self.percent: float | None = None

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._procs:
            with contextlib.suppress(self._psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
                for child in proc.children(recursive=True):
                    with contextlib.suppress(self._psutil.Error):
                        ct = child.cpu_times()
                        total += ct.user + ct.system
        return total

    def mark(self, what: str) -> None:
        if what == "warm":
            self._start = (time.monotonic(), self._cpu())
        elif what == "end" and self._start is not None:
            wall = time.monotonic() - self._start[0]
            self.percent = (self._cpu() - self._start[1]) / wall * 100 if wall > 0 else None


class SystemCpu:
    """Busy CPU of the whole machine between the two marks, in % of one core (2 cores busy = 200)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._start: tuple[float, float] | None = None
        self.percent: float | None = None

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        idle = sum(getattr(t, name, 0.0) for name in ("idle", "iowait", "steal", "guest", "guest_nice"))
        return float(sum(t) - idle)

    def mark(self, what: str) -> None:
        if what == "warm":
            self._start = (time.monotonic(), self._busy())
        elif what == "end" and self._start is not None:
            wall = time.monotonic() - self._start[0]
            self.percent = (self._busy() - self._start[1]) / wall * 100 if wall > 0 else None


def wait_for_idle(max_wait: float, busy_limit: float = 25.0) -> float:
    """Wait up to ``max_wait`` s for the machine to be nearly idle (busy CPU below ``busy_limit`` % of
    one core over 0.5 s); returns the busy % last seen."""
    import psutil

    cores = psutil.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=0.5) * cores
        if busy < busy_limit or time.monotonic() >= deadline:
            return float(busy)


def rss_bytes(pid: int) -> int:
    """RSS of a process and its children."""
    import psutil

    proc = psutil.Process(pid)
    total: int = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total
