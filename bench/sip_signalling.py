"""SIP signalling benchmark: the call rate the edge sustains, and how fast it answers an INVITE.

Everything runs on 127.0.0.1 and every process is bounded in time:

1. prints the machine (``bench/_machine.py``);
2. starts a SIPp UAS and an edge whose catch-all static route points at it;
3. **latency**: 100 calls/s of basic calls whose caller leg crosses a timestamping UDP relay in front
   of the edge (``tests/e2e/lossy_udp_shim.py`` with no loss; the caller advertises the relay in
   Via/Contact so the edge's responses come back through it). The relay notes, with
   ``time.perf_counter_ns``, when each INVITE arrives from SIPp and when the edge's 100 Trying for it
   arrives; the difference is the edge's INVITE -> 100 time plus two loopback hops and the relay's
   wake-up (tens of microseconds), and none of SIPp's scheduling, whose own response times have a
   1 ms resolution;
4. **throughput**: SIPp UAC -> edge -> SIPp UAS at increasing rates (``uac_basic.xml`` /
   ``uas_basic.xml``: INVITE/180/200/ACK/BYE/200, no media, no pause), each step ``rate x
   step-seconds`` calls; per step the share of calls that succeeded, the rate SIPp achieved, and the
   edge's CPU % and RSS (psutil, sampled every 0.25 s, children included). The edge runs with
   ``media.mode: passthrough`` (``--media relay`` binds relay ports for every call as well). A
   rate is *sustained* when more than 99.9 % of its calls succeed at 95 % or more of the target
   rate;
5. the same rates SIPp UAC -> SIPp UAS directly (what SIPp itself manages on this machine, on the
   same cores) and the ratio of the two highest sustained rates.

Usage::

    python bench/sip_signalling.py            # 100..2000 calls/s, 10 s per step
    python bench/sip_signalling.py --quick    # 100, 200, 300 calls/s, 3 s per step
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._machine import print_machine  # noqa: E402
from tests.e2e.harness import E2E, LOOPBACK, SIPP, EdgeProcess, SippResult  # noqa: E402
from tests.e2e.lossy_udp_shim import LossProfile, ShimThread, UdpPipe  # noqa: E402

FULL_RATES = (100, 200, 300, 500, 700, 1000, 1500, 2000)
QUICK_RATES = (100, 200, 300)
SUCCESS_THRESHOLD = 0.999
RATE_THRESHOLD = 0.95
LATENCY_RATE = 100


# ------------------------------------------------------------------------------------------ sampling


class CpuSampler:
    """Samples a process's CPU % (of one core, children included) and RSS in a background thread."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process(pid)
        self._interval = interval
        self.cpu: list[float] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._known: dict[int, Any] = {}

    def _procs(self) -> list[Any]:
        procs = [self._proc]
        with contextlib.suppress(self._psutil.Error):
            procs += self._proc.children(recursive=True)
        out = []
        for p in procs:
            known = self._known.setdefault(p.pid, p)
            out.append(known)
        return out

    def _run(self) -> None:
        for p in self._procs():
            with contextlib.suppress(self._psutil.Error):
                p.cpu_percent(None)
        while not self._stop.wait(self._interval):
            cpu = 0.0
            rss = 0
            for p in self._procs():
                try:
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                except self._psutil.Error:
                    continue
            self.cpu.append(cpu)
            self.rss.append(rss)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------- steps


@dataclass
class Step:
    path: str
    rate: int
    calls: int
    created: int
    successful: int
    failed: int
    retransmissions: int
    achieved_rate: float
    wall_s: float
    cpu_avg: float | None = None
    cpu_max: float | None = None
    rss_max_mb: float | None = None
    sipp_exit: int | None = None
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def success(self) -> float:
        return self.successful / self.calls if self.calls else 0.0

    @property
    def sustained(self) -> bool:
        return self.success > SUCCESS_THRESHOLD and self.achieved_rate >= RATE_THRESHOLD * self.rate


def _achieved_rate(result: SippResult, calls: int) -> float:
    """Calls created per second up to the moment the last call was created (SIPp's CallRate(C) on
    the first periodic stat line that counts all of them)."""
    try:
        with (result.workdir / "stat.csv").open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh, delimiter=";") if r]
    except OSError:
        return 0.0
    if len(rows) < 2:
        return 0.0
    header = rows[0]
    best = 0.0
    for row in rows[1:]:
        data = dict(zip(header, row, strict=False))
        try:
            created = int(data.get("TotalCallCreated", "0"))
            rate = float(data.get("CallRate(C)", "0"))
        except ValueError:
            continue
        best = rate
        if created >= calls:
            break
    return best


def rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        total: int = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return float("nan")
    return total / 2**20


def run_step(
    e2e: E2E, path: str, remote: tuple[str, int], rate: int, seconds: float, edge: EdgeProcess | None
) -> Step:
    calls = max(1, round(rate * seconds))
    started = time.monotonic()
    sampler = CpuSampler(edge.edge_pid) if edge is not None else None
    with sampler if sampler is not None else contextlib.nullcontext():
        result = e2e.run_uac(
            "uac_basic.xml",
            remote,
            calls=calls,
            rate=rate,
            duration_ms=0,
            limit=max(200, rate * 30),
            timeout_s=seconds + 40,
            trace_msg=False,
            extra=["-recv_timeout", "10000"],
        )
    stats = result.stats
    step = Step(
        path=path,
        rate=rate,
        calls=calls,
        created=stats.created if stats else 0,
        successful=stats.successful if stats else 0,
        failed=stats.failed if stats else 0,
        retransmissions=stats.retransmissions if stats else 0,
        achieved_rate=_achieved_rate(result, calls),
        wall_s=time.monotonic() - started,
        sipp_exit=result.returncode,
        failures=dict(stats.failures) if stats else {},
    )
    if sampler is not None and sampler.cpu:
        step.cpu_avg = statistics.fmean(sampler.cpu)
        step.cpu_max = max(sampler.cpu)
        step.rss_max_mb = max(sampler.rss) / 2**20
    return step


def run_rates(
    e2e: E2E,
    path: str,
    remote: tuple[str, int],
    rates: list[int],
    seconds: float,
    edge: EdgeProcess | None,
    keep_going: bool,
) -> list[Step]:
    steps: list[Step] = []
    print(f"\n{path}")
    print(
        f"  {'rate':>5} {'calls':>6} {'ok':>6} {'failed':>6} {'success':>9} {'achieved':>9} "
        f"{'CPU% avg':>8} {'CPU% max':>8} {'RSS MB':>7} {'retrans':>7} {'time':>6}"
    )
    for rate in rates:
        step = run_step(e2e, path, remote, rate, seconds, edge)
        steps.append(step)

        def opt(value: float | None, width: int, precision: int) -> str:
            return f"{value:>{width}.{precision}f}" if value is not None else f"{'-':>{width}}"

        print(
            f"  {step.rate:>5} {step.calls:>6} {step.successful:>6} {step.failed:>6} "
            f"{step.success * 100:>8.3f}% {step.achieved_rate:>9.1f} {opt(step.cpu_avg, 8, 0)} "
            f"{opt(step.cpu_max, 8, 0)} {opt(step.rss_max_mb, 7, 1)} {step.retransmissions:>7} "
            f"{step.wall_s:>5.1f}s" + ("" if step.sustained else "  <- not sustained"),
            flush=True,
        )
        if step.failures:
            print(f"        failures: {step.failures}")
        if not step.sustained and not keep_going:
            break
        time.sleep(2.5)  # let the UAS's 2 s timewaits drain before the next step
    return steps


def best_rate(steps: list[Step]) -> int | None:
    sustained = [s.rate for s in steps if s.sustained]
    return max(sustained) if sustained else None


# ------------------------------------------------------------------------------------------- latency


class InviteTimer:
    """Timestamps INVITEs going to the edge and the edge's first 100/1xx coming back, by Call-ID."""

    def __init__(self) -> None:
        self.invite: dict[bytes, int] = {}
        self.trying: dict[bytes, int] = {}
        self.first_provisional: dict[bytes, tuple[int, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _header(data: bytes, name: bytes, short: bytes) -> bytes | None:
        for line in data.split(b"\r\n", 40)[1:]:
            if not line:
                return None
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key in (name, short):
                return value.strip()
        return None

    def tap(self, direction: str, data: bytes, t_ns: int) -> None:
        if direction == "l2r":
            if not data.startswith(b"INVITE "):
                return
            call_id = self._header(data, b"call-id", b"i")
            if call_id is not None:
                with self._lock:
                    self.invite.setdefault(call_id, t_ns)  # the first transmission, not retransmissions
            return
        if not data.startswith(b"SIP/2.0 1"):
            return
        cseq = self._header(data, b"cseq", b"cseq") or b""
        if not cseq.endswith(b"INVITE"):
            return
        call_id = self._header(data, b"call-id", b"i")
        if call_id is None:
            return
        code = int(data[8:11])
        with self._lock:
            self.first_provisional.setdefault(call_id, (t_ns, code))
            if code == 100:
                self.trying.setdefault(call_id, t_ns)

    def latencies_ms(self) -> tuple[list[float], str]:
        with self._lock:
            pairs = [(cid, t) for cid, t in self.trying.items() if cid in self.invite]
            if pairs:
                return [(t - self.invite[cid]) / 1e6 for cid, t in pairs], "100 Trying"
            firsts = [
                (cid, t, code) for cid, (t, code) in self.first_provisional.items() if cid in self.invite
            ]
            codes = sorted({code for _, _, code in firsts})
            return [(t - self.invite[cid]) / 1e6 for cid, t, _ in firsts], f"first provisional {codes}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure_latency(e2e: E2E, edge: EdgeProcess, seconds: float) -> dict[str, Any]:
    timer = InviteTimer()
    uac_port = e2e.ports.port()
    calls = max(50, round(LATENCY_RATE * seconds))
    with ShimThread() as shim:
        relay = shim.add(
            UdpPipe(
                edge.addr,
                LossProfile(loss=0.0, duplicate=0.0, reorder=0.0),
                left_peer=(LOOPBACK, uac_port),
                name="timestamping relay",
                tap=timer.tap,
            )
        )
        result = e2e.run_uac(
            "uac_lossy.xml",  # the basic call, advertising the relay so responses come back through it
            relay.left_addr,
            calls=calls,
            rate=LATENCY_RATE,
            local_port=uac_port,
            keys={"adv_host": LOOPBACK, "adv_port": relay.right_addr[1]},
            duration_ms=0,
            timeout_s=seconds + 40,
            trace_msg=False,
            extra=["-recv_timeout", "10000"],
        )
    values, what = timer.latencies_ms()
    return {
        "rate": LATENCY_RATE,
        "calls": calls,
        "successful": result.successful,
        "measured": len(values),
        "response": what,
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else float("nan"),
        "method": "timestamping UDP relay in front of the edge (perf_counter_ns at the relay)",
    }


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="rates 100,200,300 and 3 s per step")
    parser.add_argument(
        "--rates", help="comma-separated calls/s (default 100,200,300,500,700,1000,1500,2000)"
    )
    parser.add_argument("--step-seconds", type=float, help="seconds of calls per rate (default 10; quick 3)")
    parser.add_argument("--keep-going", action="store_true", help="run every rate even after one fails")
    parser.add_argument("--skip-direct", action="store_true", help="skip the SIPp UAC -> SIPp UAS baseline")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--media",
        choices=("passthrough", "relay"),
        default="passthrough",
        help="edge media mode (default passthrough: SDP untouched, signalling alone is measured)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, SIPp stats)")
    args = parser.parse_args(argv)

    if SIPP is None:
        print("sipp is not installed (Debian package sip-tester); run scripts/setup.sh", file=sys.stderr)
        return 2
    rates = (
        [int(r) for r in args.rates.split(",")]
        if args.rates
        else list(QUICK_RATES if args.quick else FULL_RATES)
    )
    seconds = args.step_seconds or (3.0 if args.quick else 10.0)

    print("SmartPBX SIP signalling benchmark")
    print_machine()
    print(f"rates: {rates} calls/s, {seconds:g} s per step; sustained = success > {SUCCESS_THRESHOLD:.1%}")
    print(f"and >= {RATE_THRESHOLD:.0%} of the target rate; all traffic on {LOOPBACK}")

    workdir = Path(tempfile.mkdtemp(prefix="smartpbx-bench-"))
    e2e = E2E(workdir)
    report: dict[str, Any] = {"rates": rates, "step_seconds": seconds}
    try:
        bound = (len(rates) * (seconds + 45)) * 2 + 300
        uas = e2e.start_uas("uas_basic.xml", calls=None, timeout_s=bound, trace_msg=False)
        settings = e2e.edge_settings(uas_port=uas.port, log_level="WARNING", max_calls=1_000_000)
        settings.media = {"mode": args.media}  # passthrough: signalling only (bench/relay.py: media)
        edge = e2e.start_edge(settings, max_lifetime_s=bound)
        print(f"edge: pid {edge.edge_pid} on {LOOPBACK}:{edge.settings.port}: {' '.join(edge.command)}")
        rss_start = rss_mb(edge.edge_pid)

        warm = run_step(e2e, "warm-up", edge.addr, 50, 2.0, edge)
        print(f"warm-up: {warm.successful}/{warm.calls} calls at 50 calls/s")

        latency = measure_latency(e2e, edge, seconds=min(seconds, 5.0))
        report["latency"] = latency
        print(
            f"\nINVITE -> {latency['response']} at {latency['rate']} calls/s ({latency['measured']} calls): "
            f"p50 {latency['p50_ms']:.3f} ms, p90 {latency['p90_ms']:.3f} ms, "
            f"p99 {latency['p99_ms']:.3f} ms, max {latency['max_ms']:.3f} ms"
        )
        print(f"  method: {latency['method']}")

        edge_steps = run_rates(
            e2e, "SIPp UAC -> edge -> SIPp UAS", edge.addr, rates, seconds, edge, args.keep_going
        )
        report["edge"] = [asdict(s) | {"success": s.success, "sustained": s.sustained} for s in edge_steps]
        if not edge.alive:
            print(f"the edge died:\n{edge.log_tail()}")
        edge_done = time.monotonic()
        calls_total = warm.calls + latency["calls"] + sum(s.calls for s in edge_steps)

        direct_steps: list[Step] = []
        if not args.skip_direct:
            direct_uas = e2e.start_uas("uas_basic.xml", calls=None, timeout_s=bound, trace_msg=False)
            direct_steps = run_rates(
                e2e, "SIPp UAC -> SIPp UAS (direct)", direct_uas.addr, rates, seconds, None, args.keep_going
            )
            report["direct"] = [
                asdict(s) | {"success": s.success, "sustained": s.sustained} for s in direct_steps
            ]

        if edge.alive:
            # the edge keeps finished transactions for 64*T1 (32 s); measure once they are gone
            settle = 35.0 if not args.quick else 3.0
            time.sleep(max(0.0, settle - (time.monotonic() - edge_done)))
            rss_end = rss_mb(edge.edge_pid)
            idle = time.monotonic() - edge_done
            report["edge_rss_mb"] = {"start": rss_start, "end": rss_end, "calls": calls_total, "idle_s": idle}
            print(
                f"\nedge RSS: {rss_start:.1f} MB at start, {rss_end:.1f} MB after {calls_total} calls and "
                f"{idle:.0f} s idle (+{(rss_end - rss_start) * 1024 / max(1, calls_total):.1f} KB per call, "
                "an upper bound of what stays: Python seldom gives freed memory back)"
            )

        edge_best, direct_best = best_rate(edge_steps), best_rate(direct_steps)
        report["edge_best_rate"], report["direct_best_rate"] = edge_best, direct_best
        print("\nsummary")
        print(f"  highest rate sustained through the edge: {edge_best if edge_best else 'none'} calls/s")
        if not args.skip_direct:
            top = max(rates)
            capped = " (the highest rate tried)" if direct_best == top else ""
            print(f"  highest rate sustained SIPp -> SIPp:      {direct_best or 'none'} calls/s{capped}")
            if edge_best and direct_best:
                ratio = edge_best / direct_best
                report["ratio"] = ratio
                if edge_best == top and direct_best == top:
                    print("  edge / direct: both sustained every rate tried; add higher --rates to compare")
                elif capped:
                    print(f"  edge / direct: <= {ratio:.2f} (SIPp -> SIPp was not pushed to its limit)")
                else:
                    print(f"  edge / direct: {ratio:.2f}")
        at_best = [s for s in edge_steps if s.rate == edge_best]
        if at_best and at_best[0].cpu_avg is not None:
            s = at_best[0]
            print(
                f"  edge at {s.rate} calls/s: CPU {s.cpu_avg:.0f}% avg, {s.cpu_max:.0f}% max "
                f"(100% = one core); RSS {s.rss_max_mb:.1f} MB"
            )
        print(
            f"  INVITE -> {latency['response']} at {LATENCY_RATE} calls/s: p50 {latency['p50_ms']:.3f} ms, "
            f"p99 {latency['p99_ms']:.3f} ms"
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            print(f"  figures written to {args.json}")
    finally:
        e2e.close()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
