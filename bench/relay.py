"""RTP relay benchmark: added latency, loss, CPU and memory of the edge's media relay, against no relay
and against rtpengine, on the same traffic in the same run.

Each measurement sets up N calls, then every call sends 50 packets/s of RTP (12-byte header, PT 0,
160-byte G.711 payload) in both directions for ``--duration`` seconds after a ``--warmup``, and ends
with a ``--drain`` period for packets still in flight. The traffic comes from ``bench/rtpload.c``
(built here with ``cc -O2``): one UDP socket per call end, sends spread evenly over the 20 ms period,
a CLOCK_MONOTONIC send time in every packet and the kernel's receive timestamp at the far end. Paths:

- **direct**: the two ends of each call send straight to each other (the baseline; its latency is
  the generator's and the kernel's own);
- **edge (native)** / **edge (python)**: a real edge (``smartpbx edge``, ``media.mode: relay``) with
  that relay engine; calls are set up through its SIP port by a small UAC+UAS (``bench/_relay_sip.py``)
  whose callee the catch-all static route points at, and each end sends where the SDP it got says;
- **rtpengine**: Debian's rtpengine in userspace mode (``--table=-1``), driven over its ng control
  protocol (``bench/_relay_ng.py``), when installed.

For each N: latency p50/p99/p99.9 (ms) raw and *added* (relay minus direct at the same N), loss %
(sent after the warm-up and not received by the end of the drain), the relay's CPU % (all threads,
100 % = one core) and RSS per call ((RSS with N calls up - RSS before the calls) / N) over the
steady-state window, and the generator's own CPU %. Then the ratios edge / rtpengine, and for each
relay the largest N stepped through ``--steps`` (up to ``--max-n``) whose p99 < 5 ms and loss < 0.1 %.

Everything binds and sends on 127.0.0.0/8 only (call ends on 127.0.0.2 and 127.0.0.3, relays on
127.0.0.1); every process is bounded in time. Each relay runs in a fresh process per measurement.

The generator runs on the same machine as the relay and needs about as much CPU per packet (on a
small VM most of it is the kernel's loopback delivery, charged to the sender), so near the machine's
limit the figures measure the machine as much as the relay: the ``gen``, ``other`` and ``lag``
columns say when. Before each run the bench waits (``--idle-wait``) for other work to calm down, and
a run that other work disturbed anyway is made again (``--retries``).

Usage::

    python bench/relay.py                          # N = 100, 500, 1000 + search up to 2000 (~3-5 min)
    python bench/relay.py --calls 100 --duration 3 --targets direct,rtpengine --no-search
    python bench/relay.py --runs 3 --duration 10 --json relay.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._machine import print_machine  # noqa: E402
from bench._relay_load import (  # noqa: E402
    CallEnd,
    CpuWindow,
    LoadError,
    LoadResult,
    build_rtpload,
    raise_nofile,
    rss_bytes,
    run_load,
    wait_for_idle,
)
from bench._relay_ng import RTPENGINE, NgError, RtpEngineProcess  # noqa: E402
from bench._relay_report import (  # noqa: E402
    COLUMNS,
    HEADER,
    LABELS,
    LOSS_LIMIT,
    OTHER_WARN,
    P99_LIMIT_MS,
    Measurement,
    Run,
    report,
    row,
    summary,
    table,
)
from bench._relay_sip import Addr, BenchCall, SipBench  # noqa: E402

CALLER_IP = "127.0.0.2"
CALLEE_IP = "127.0.0.3"
RELAY_IP = "127.0.0.1"
BUSY_LIMIT = 25.0  # % of one core used by other processes above which the machine counts as busy
DEFAULT_CALLS = (100, 500, 1000)
DEFAULT_STEPS = (100, 250, 500, 750, 1000, 1500, 2000)
ALL_TARGETS = ("direct", "native", "python", "rtpengine")


class Skip(Exception):
    """This path cannot run here (not installed, not configured); the message says why."""


# -------------------------------------------------------------------------------------------- the paths


class Bench:
    """Runs the measurements of one benchmark invocation and keeps what it needs between them."""

    def __init__(self, args: argparse.Namespace, workdir: Path, binary: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.binary = binary
        self.skipped: dict[str, str] = {}
        self._count = 0

    def ends_for(self, pairs: list[tuple[Addr, Addr, Addr, Addr]]) -> list[CallEnd]:
        """Call ends from (caller local, caller dest, callee local, callee dest) per call."""
        ends: list[CallEnd] = []
        for i, (a_local, a_dest, b_local, b_dest) in enumerate(pairs):
            ends.append(CallEnd(i, 0, a_local, a_dest))
            ends.append(CallEnd(i, 1, b_local, b_dest))
        return ends

    def local_ends(self, n: int) -> list[tuple[Addr, Addr]]:
        base = self.args.gen_port_base
        return [((CALLER_IP, base + 2 * i), (CALLEE_IP, base + 2 * i)) for i in range(n)]

    def load(
        self, ends: list[CallEnd], pids: list[int], rss_pid: int | None
    ) -> tuple[LoadResult, float | None, int | None]:
        """Run the generator; returns its result, the CPU % of ``pids`` and the RSS of ``rss_pid``
        at the end of the steady-state window."""
        window = CpuWindow(pids)
        rss_at_end: list[int] = []

        def on_mark(what: str) -> None:
            window.mark(what)
            if what == "end" and rss_pid is not None:
                with contextlib.suppress(Exception):
                    rss_at_end.append(rss_bytes(rss_pid))

        result, _ = run_load(
            self.binary,
            ends,
            duration=self.args.duration,
            warmup=self.args.warmup,
            drain=self.args.drain,
            tick_us=self.args.tick_us,
            on_mark=on_mark,
            workdir=self.workdir,
        )
        return result, window.percent, (rss_at_end[0] if rss_at_end else None)

    # -- direct ------------------------------------------------------------------------------------------
    def run_direct(self, n: int) -> Run:
        result, _, _ = self.load(self.ends_for([(a, b, b, a) for a, b in self.local_ends(n)]), [], None)
        return Run(result, calls_up=n)

    # -- the edge ----------------------------------------------------------------------------------------
    def run_edge(self, n: int, engine: str) -> Run:
        from tests.e2e.harness import E2E, EdgeError, EdgeSettings, PortAllocator

        try:
            from pbx_edge.ops.config import ConfigError, parse_config
        except ImportError as exc:
            raise Skip(f"pbx_edge does not import: {exc}") from exc
        media = {
            "mode": "relay",
            "bind_host": RELAY_IP,
            "port_start": self.args.edge_ports[0],
            "port_end": self.args.edge_ports[1],
            "engine": engine,
        }
        if engine == "native" and self.args.native_threads:
            media["native_threads"] = self.args.native_threads
        self._count += 1
        e2e = E2E(self.workdir / f"edge-{engine}-{n}-{self._count}", PortAllocator(low=5100, high=9900))
        sip = None
        try:
            sip_port = e2e.ports.port()
            sip = SipBench((RELAY_IP, sip_port), domain="pbx.bench")
            settings = EdgeSettings(
                port=sip_port,
                static_routes=[EdgeSettings.route("", RELAY_IP, sip.uas_port)],
                domain="pbx.bench",
                log_level="WARNING",
                max_calls=max(10_000, 2 * n),
                no_answer_timeout=60.0,
                extra={"media": media},
            )
            try:
                parse_config(settings.as_dict(), environ={})
            except ConfigError as exc:
                why = str(exc).splitlines()[-1].strip()
                raise Skip(f"this edge does not take the relay configuration: {why}") from None
            try:
                edge = e2e.start_edge(settings, ready_timeout=20.0, max_lifetime_s=self._lifetime())
            except EdgeError as exc:
                raise Skip(f"the edge did not start with engine {engine}: {_last_lines(str(exc))}") from exc
            time.sleep(0.3)
            rss_before = rss_bytes(edge.edge_pid)
            started = time.monotonic()
            calls = [BenchCall(i, a, b) for i, (a, b) in enumerate(self.local_ends(n))]
            up = sip.setup(calls, window=self.args.sip_window, timeout=30.0 + n / 100)
            setup_s = time.monotonic() - started
            notes: list[str] = []
            failed = [c for c in calls if c.state != "up"]
            if failed:
                notes.append(f"{len(failed)} calls failed to set up, first: {failed[0].error}")
            if not up:
                raise RuntimeError(f"no call was set up through the edge:\n{edge.log_tail(15)}")
            pairs = [
                (c.caller_media, c.caller_dest, c.callee_media, c.callee_dest)
                for c in up
                if c.caller_dest is not None and c.callee_dest is not None
            ]
            direct = sum(1 for a, a_dest, b, _ in pairs if a_dest == b)
            if direct:
                notes.append(f"{direct} calls' SDP was not rewritten: their media bypasses the relay")
            result, cpu, rss_after = self.load(self.ends_for(pairs), [edge.edge_pid], edge.edge_pid)
            if not edge.alive:
                raise RuntimeError(f"the edge died during the run:\n{edge.log_tail(15)}")
            ended = sip.teardown(up, window=self.args.sip_window, timeout=30.0)
            if ended < len(up):
                notes.append(f"{len(up) - ended} calls did not end cleanly with BYE")
            rss = (rss_after - rss_before) / len(up) / 1024 if rss_after else None
            return Run(result, len(pairs), cpu, rss, setup_s, notes)
        finally:
            if sip is not None:
                sip.close()
            e2e.close()

    # -- rtpengine ---------------------------------------------------------------------------------------
    def run_rtpengine(self, n: int) -> Run:
        if RTPENGINE is None:
            raise Skip("rtpengine is not installed (Debian package rtpengine-daemon)")
        from tests.e2e.harness import port_is_free

        ng_port = self.args.ng_port
        if not port_is_free(ng_port, (socket.SOCK_DGRAM,)):
            free = [p for p in range(9900, 9999) if port_is_free(p, (socket.SOCK_DGRAM,))]
            if not free:
                raise Skip(f"no free UDP port for rtpengine's ng socket ({ng_port} is taken)")
            ng_port = free[0]
        low, high = self.args.rtpengine_ports
        daemon = RtpEngineProcess(
            self.workdir,
            ng_port,
            low,
            high,
            threads=self.args.rtpengine_threads,
            max_lifetime_s=self._lifetime(),
        )
        try:
            try:
                client = daemon.start()
            except (RuntimeError, OSError) as exc:
                raise Skip(f"rtpengine did not start: {_last_lines(str(exc))}") from exc
            time.sleep(0.2)
            rss_before = rss_bytes(daemon.pid)
            started = time.monotonic()
            pairs: list[tuple[Addr, Addr, Addr, Addr]] = []
            opened: list[int] = []
            errors: list[str] = []
            for i, (a, b) in enumerate(self.local_ends(n)):
                try:
                    a_dest, b_dest = client.open_call(i, a, b)
                except (NgError, ValueError, KeyError) as exc:
                    errors.append(f"call {i}: {exc}")
                    continue
                pairs.append((a, a_dest, b, b_dest))
                opened.append(i)
            setup_s = time.monotonic() - started
            if not pairs:
                raise RuntimeError(f"rtpengine set up no call: {errors[:1]}")
            result, cpu, rss_after = self.load(self.ends_for(pairs), [daemon.pid], daemon.pid)
            for i in opened:
                with contextlib.suppress(NgError, OSError):
                    client.close_call(i)
            notes = [f"{len(errors)} calls failed to set up, first: {errors[0]}"] if errors else []
            rss = (rss_after - rss_before) / len(pairs) / 1024 if rss_after else None
            return Run(result, len(pairs), cpu, rss, setup_s, notes)
        finally:
            daemon.stop()

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _lifetime(self) -> float:
        return float(self.args.warmup + self.args.duration + self.args.drain + 240.0)

    def measure(self, target: str, n: int) -> Measurement:
        """``--runs`` runs of ``target`` at ``n`` calls, merged; a run that other work on the machine
        disturbed (more than OTHER_WARN % CPU) is made again, up to ``--retries`` times."""
        m = Measurement(target, n)
        if target in self.skipped:
            m.error = self.skipped[target]
            return m
        runner: Callable[[int], Run] = {
            "direct": self.run_direct,
            "native": lambda x: self.run_edge(x, "native"),
            "python": lambda x: self.run_edge(x, "python"),
            "rtpengine": self.run_rtpengine,
        }[target]
        retries = self.args.retries
        while m.runs < self.args.runs:
            busy = wait_for_idle(self.args.idle_wait, BUSY_LIMIT)
            try:
                run = runner(n)
            except Skip as exc:
                self.skipped[target] = m.error = str(exc)
                print(f"  {LABELS[target]}: skipped: {exc}", flush=True)
                return m
            except (LoadError, RuntimeError, OSError) as exc:
                m.error = _last_lines(str(exc), 6)
                print(f"  {LABELS[target]} at N={n}: failed: {m.error}", flush=True)
                return m
            other = run.other_cpu
            if other is not None and other > OTHER_WARN and retries > 0:
                retries -= 1
                print(f"  {LABELS[target]} at N={n}: {other:.0f}% CPU went to other work; again", flush=True)
                continue
            if busy >= BUSY_LIMIT:
                run.notes.append(f"the machine was busy before the run ({busy:.0f}% CPU from other work)")
            m.add(run)
            time.sleep(0.3)
        return m


def _last_lines(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


# ------------------------------------------------------------------------------------------------ main


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _range(text: str) -> tuple[int, int]:
    low, high = (int(x) for x in text.split("-"))
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--calls", type=_ints, default=list(DEFAULT_CALLS), help="N values to tabulate (default 100,500,1000)"
    )
    add("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    add("--warmup", type=float, default=1.0, help="seconds of traffic before measuring (default 1)")
    add("--drain", type=float, default=0.5, help="seconds to wait for packets in flight (default 0.5)")
    add("--runs", type=int, default=1, help="runs per path and N, their packets merged (default 1)")
    add("--targets", type=_names, default=list(ALL_TARGETS), help="of direct,native,python,rtpengine (all)")
    add("--max-n", type=int, default=2000, help="largest N the search tries (default 2000)")
    add("--steps", type=_ints, default=list(DEFAULT_STEPS), help="N values of the largest-N search")
    add("--no-search", action="store_true", help="skip the largest-N search")
    add("--edge-ports", type=_range, default=(20000, 39999), help="edge media ports (20000-39999)")
    add("--rtpengine-ports", type=_range, default=(40000, 59999), help="rtpengine ports (40000-59999)")
    add("--rtpengine-threads", type=int, default=2, help="rtpengine --num-threads (default 2)")
    add("--native-threads", type=int, help="media.native_threads of the native engine (default: the edge's)")
    add("--ng-port", type=int, default=2223, help="rtpengine's ng control port (default 2223)")
    add("--gen-port-base", type=int, default=10000, help="first UDP port of the call ends (default 10000)")
    add("--tick-us", type=int, default=200, help="generator wake-up period in microseconds (default 200)")
    add("--sip-window", type=int, default=100, help="SIP transactions in flight at once (default 100)")
    add("--retries", type=int, default=1, help="runs made again when other work disturbed them (1)")
    add("--idle-wait", type=float, default=30.0, help="seconds to wait for an idle machine per run (30)")
    add("--json", type=Path, help="also write the figures to this file")
    add("--keep", action="store_true", help="keep the work directory (edge and rtpengine logs, configs)")
    return parser


def search(
    bench: Bench, measured: dict[tuple[str, int], Measurement], steps: list[int]
) -> dict[str, int | None]:
    """For each relay, step N up until p99 or loss goes over the limits; the last N within them."""
    best: dict[str, int | None] = {}
    relays = [t for t in bench.args.targets if t != "direct" and t not in bench.skipped]
    if not relays:
        return best
    print(f"\nsearch: largest N with p99 < {P99_LIMIT_MS:g} ms and loss < {LOSS_LIMIT:.1%}", flush=True)
    print(HEADER)
    for target in relays:
        best[target] = None
        for n in steps:
            m = measured.get((target, n))
            if m is None:
                m = measured[(target, n)] = bench.measure(target, n)
                print(row(m, measured.get(("direct", n))), flush=True)
            if not m.passes:
                break
            best[target] = n
        if target in bench.skipped:
            del best[target]
    return best


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [t for t in args.targets if t not in ALL_TARGETS]
    if unknown:
        print(f"unknown targets {unknown}; choose from {','.join(ALL_TARGETS)}", file=sys.stderr)
        return 2
    steps = [] if args.no_search else sorted(s for s in args.steps if s <= args.max_n)
    top = max([*args.calls, *steps])
    if args.gen_port_base + 2 * top > 32_768 or args.gen_port_base < 1024:
        print(f"{top} calls do not fit the generator's ports from {args.gen_port_base}", file=sys.stderr)
        return 2
    nofile = raise_nofile()
    try:
        binary = build_rtpload()
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"cannot build the RTP generator: {exc}", file=sys.stderr)
        return 2

    print("SmartPBX RTP relay benchmark")
    print_machine()
    print(
        f"traffic: per call 2 x 50 packets/s of RTP (PT 0, 12 + 160 bytes); {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured, {args.drain:g} s drain; {args.runs} run(s) per point"
    )
    print(f"generator: {binary} (C, one socket per call end, {args.tick_us} us tick, kernel rx timestamps)")
    print(f"call ends on {CALLER_IP} and {CALLEE_IP}, relays on {RELAY_IP}; open files limit {nofile}")
    print(COLUMNS)

    workdir = Path(tempfile.mkdtemp(prefix="smartpbx-relay-bench-"))
    bench = Bench(args, workdir, binary)
    measured: dict[tuple[str, int], Measurement] = {}
    started = time.monotonic()
    try:
        for n in args.calls:
            print(f"\n... N = {n}", flush=True)
            for target in args.targets:
                measured[(target, n)] = bench.measure(target, n)
            print(table(n, [measured[(t, n)] for t in args.targets]), flush=True)
        best = search(bench, measured, steps) if steps else {}
        print(summary(measured, args.targets, best, steps))
        for target, why in bench.skipped.items():
            print(f"  {LABELS[target]}: skipped: {why}")
        print(
            f"  targets: p99 < 1 ms at 100 calls; 1000 calls with p99 < {P99_LIMIT_MS:g} ms and loss < "
            f"{LOSS_LIMIT:.1%}; < 200 KB RSS per relayed call"
        )
        print(f"  total time {time.monotonic() - started:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(report(measured, best), indent=2), encoding="utf-8")
            print(f"  figures written to {args.json}")
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
