"""What the relay benchmark prints and writes: the per-N tables, the summary, the JSON report."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench._relay_load import LoadResult, weighted_mean

P99_LIMIT_MS = 5.0
LOSS_LIMIT = 0.001
OTHER_WARN = 25.0  # % of one core used by other work during a run above which its figures are flagged
LAG_WARN = 0.05  # sends more than 1 ms late above this share: the generator could not keep up
LABELS = {
    "direct": "direct",
    "native": "edge (native)",
    "python": "edge (python)",
    "rtpengine": "rtpengine",
}

COLUMNS = """\
columns: latency in ms, one way (send -> arrival in the far end's socket, kernel timestamp);
  +pXX = that percentile minus direct's at the same N (what the relay adds); loss % of the packets sent
  after the warm-up that had not arrived by the end of the drain; late = arrived after the last send;
  CPU % = the relay process, all threads (100 = one core); KB/call = (RSS with the calls up - RSS
  before) / calls; gen = the generator's own CPU %; other = CPU % of everything else on the machine
  meanwhile (other jobs, kernel work charged to no process; the figures are clean when it is near 0);
  lag = share of sends more than 1 ms behind schedule (the generator falling behind)"""


def other_cpu(result: LoadResult, relay_cpu: float | None) -> float | None:
    """CPU % the rest of the machine used while ``result`` was measured (0 when it cannot be told)."""
    if result.machine_cpu is None or result.generator_cpu is None:
        return None
    return max(0.0, result.machine_cpu - (relay_cpu or 0.0) - result.generator_cpu)


@dataclass
class Run:
    """What one run of one path measured."""

    result: LoadResult
    calls_up: int
    cpu: float | None = None  # the relay's CPU %, 100 = one core
    rss_per_call_kb: float | None = None
    setup_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def other_cpu(self) -> float | None:
        return other_cpu(self.result, self.cpu)


@dataclass
class Measurement:
    """One path at one N (several runs merged)."""

    target: str
    n: int
    calls_up: int = 0
    result: LoadResult | None = None
    cpu: float | None = None  # the relay's CPU %, 100 = one core
    rss_per_call_kb: float | None = None
    setup_s: float | None = None
    runs: int = 0
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.target]

    def p(self, q: float) -> float:
        return self.result.percentile_ms(q) if self.result is not None else math.nan

    @property
    def lag_share(self) -> float:
        r = self.result
        return r.send_lag_over_1ms / r.sent if r is not None and r.sent else math.nan

    @property
    def other_cpu(self) -> float | None:
        return other_cpu(self.result, self.cpu) if self.result is not None else None

    def add(self, run: Run) -> None:
        """Merge one more run: packets and histograms summed, CPU and RSS averaged."""
        prior = self.result.window_s if self.result is not None else 0.0
        self.cpu = weighted_mean((self.cpu, prior), (run.cpu, run.result.window_s))
        self.rss_per_call_kb = weighted_mean((self.rss_per_call_kb, self.runs), (run.rss_per_call_kb, 1.0))
        self.setup_s = weighted_mean((self.setup_s, self.runs), (run.setup_s, 1.0))
        self.calls_up = min(self.calls_up, run.calls_up) if self.runs else run.calls_up
        self.result = run.result if self.result is None else self.result.merge(run.result)
        self.notes.extend(note for note in run.notes if note not in self.notes)
        self.runs += 1

    @property
    def passes(self) -> bool:
        """p99 < 5 ms and loss < 0.1 % with every call up."""
        return (
            self.result is not None
            and not self.error
            and self.calls_up == self.n
            and self.p(99) < P99_LIMIT_MS
            and self.result.loss < LOSS_LIMIT
        )


def _f(value: float | None, width: int, precision: int) -> str:
    if value is None or math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{precision}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}"


HEADER = (
    f"  {'path':<14} {'calls':>5} {'p50':>7} {'p99':>7} {'p99.9':>7} {'+p50':>7} {'+p99':>7} "
    f"{'+p99.9':>7} {'loss %':>7} {'late':>5} {'CPU %':>5} {'KB/call':>7} {'gen':>4} {'other':>5} {'lag':>6}"
)


def row(m: Measurement, direct: Measurement | None) -> str:
    """One line of a table (plus indented notes)."""
    if m.result is None:
        return f"  {m.label:<14} {'-':>5}  {m.error or 'no result'}"
    r = m.result
    base = direct if direct is not None and direct.result is not None and m is not direct else None
    added = [m.p(q) - base.p(q) if base is not None else None for q in (50, 99, 99.9)]
    verdict = "" if m.target == "direct" else ("  ok" if m.passes else "  over")
    line = (
        f"  {m.label:<14} {m.calls_up:>5} {_f(m.p(50), 7, 3)} {_f(m.p(99), 7, 3)} {_f(m.p(99.9), 7, 3)} "
        f"{_f(added[0], 7, 3)} {_f(added[1], 7, 3)} {_f(added[2], 7, 3)} {_f(r.loss * 100, 7, 3)} "
        f"{r.late:>5} {_f(m.cpu, 5, 0)} {_f(m.rss_per_call_kb, 7, 1)} {_f(r.generator_cpu, 4, 0)} "
        f"{_f(m.other_cpu, 5, 0)} {_f(m.lag_share * 100, 5, 1)}%" + verdict
    )
    notes = list(m.notes)
    other = m.other_cpu
    if other is not None and other > OTHER_WARN:
        notes.append(f"{other:.0f}% CPU went to other work meanwhile: these figures may be disturbed")
    if m.lag_share > LAG_WARN:
        notes.append("the generator fell behind schedule: the machine, not only the relay, is the limit here")
    if r.misrouted:
        notes.append(f"{r.misrouted} packets reached the wrong call end")
    if r.send_errors or r.recv_errors or r.bad:
        notes.append(f"socket errors: send {r.send_errors}, receive {r.recv_errors}; malformed {r.bad}")
    if r.negative:
        notes.append(f"{r.negative} negative latencies (clock mapping)")
    return "\n".join([line, *(f"  {'':<14} note: {note}" for note in notes)])


def table(n: int, rows: Iterable[Measurement], rate: int = 50) -> str:
    rows = list(rows)
    direct = next((m for m in rows if m.target == "direct" and m.result is not None), None)
    lines = [
        f"\nN = {n} calls: {n * rate:,} packets/s each way, {2 * n * rate:,} through the relay in all",
        HEADER,
        *(row(m, direct) for m in rows),
    ]
    return "\n".join(lines)


def summary(
    measured: dict[tuple[str, int], Measurement],
    targets: list[str],
    best: dict[str, int | None],
    steps: list[int],
) -> str:
    """Every point measured, the edge / rtpengine ratios and the largest N of each relay."""
    lines = [
        "\nsummary",
        f"  {'path':<14} {'N':>5} {'p50':>7} {'p99':>7} {'p99.9':>7} {'loss %':>7} {'CPU %':>6} "
        f"{'KB/call':>7}",
    ]
    for target in targets:
        for n in sorted(k[1] for k in measured if k[0] == target):
            m = measured[(target, n)]
            if m.result is None:
                continue
            lines.append(
                f"  {m.label:<14} {n:>5} {_f(m.p(50), 7, 3)} {_f(m.p(99), 7, 3)} {_f(m.p(99.9), 7, 3)} "
                f"{_f(m.result.loss * 100, 7, 3)} {_f(m.cpu, 6, 0)} {_f(m.rss_per_call_kb, 7, 1)}"
            )
    for engine in ("native", "python"):
        pairs = [
            (measured.get((engine, n)), measured.get(("rtpengine", n)), n)
            for n in sorted({k[1] for k in measured})
        ]
        both = [(e, r, n) for e, r, n in pairs if e is not None and r is not None and e.result and r.result]
        if both:
            lines.append(f"\n  {LABELS[engine]} / rtpengine (below 1 = the edge does better):")
            for e, r, n in both:
                lines.append(
                    f"    N={n:<5} p99 {ratio(e.p(99), r.p(99)):>6}   CPU {ratio(e.cpu, r.cpu):>6}   "
                    f"KB/call {ratio(e.rss_per_call_kb, r.rss_per_call_kb):>6}"
                )
    if best:
        lines.append(
            f"\n  largest N with p99 < {P99_LIMIT_MS:g} ms and loss < {LOSS_LIMIT:.1%} "
            f"(steps {','.join(map(str, steps))}):"
        )
        for target, largest in best.items():
            lines.append(f"    {LABELS[target]:<14} {largest if largest is not None else 'none'}")
    return "\n".join(lines)


def report(measured: dict[tuple[str, int], Measurement], best: dict[str, int | None]) -> dict[str, Any]:
    """The figures as JSON-ready data."""
    points = []
    for (target, n), m in sorted(measured.items()):
        r = m.result
        points.append(
            {
                "path": target,
                "n": n,
                "calls_up": m.calls_up,
                "error": m.error or None,
                "p50_ms": m.p(50) if r else None,
                "p99_ms": m.p(99) if r else None,
                "p999_ms": m.p(99.9) if r else None,
                "loss": r.loss if r else None,
                "sent": r.sent if r else None,
                "received": r.received if r else None,
                "late": r.late if r else None,
                "cpu_percent": m.cpu,
                "rss_per_call_kb": m.rss_per_call_kb,
                "generator_cpu_percent": r.generator_cpu if r else None,
                "other_cpu_percent": m.other_cpu,
                "send_lag_share": m.lag_share if r else None,
                "setup_s": m.setup_s,
                "passes": m.passes,
                "notes": m.notes,
            }
        )
    return {"points": points, "largest_n": best}
