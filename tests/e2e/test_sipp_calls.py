"""Calls through the edge, SIPp on both sides: caller (UAC) -> edge (B2BUA) -> callee (UAS).

The edge routes every call to the SIPp UAS by a catch-all static route. Each case runs a caller-side
scenario against the edge and its callee-side pair behind it, and requires every call to reach the
end of both scenarios: the edge must relay each step on the other leg (with its own Call-ID, tags and
branches) and complete its own transactions (ACK, PRACK, CANCEL/487) on both.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import E2E, SIPP, Transport, expect_calls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)"),
]

# (case, caller scenario, callee scenario, calls, extra SIPp client options)
CASES: list[tuple[str, str, str, int, dict[str, Any]]] = [
    ("basic", "uac_basic.xml", "uas_basic.xml", 3, {"duration_ms": 300}),
    ("busy", "uac_busy.xml", "uas_busy.xml", 2, {}),
    ("caller_cancel", "uac_cancel.xml", "uas_cancel.xml", 2, {}),
    ("callee_hangs_up", "uac_callee_bye.xml", "uas_callee_bye.xml", 2, {}),
    ("prack_100rel", "uac_prack.xml", "uas_prack.xml", 2, {"duration_ms": 200}),
    ("update_mid_call", "uac_update.xml", "uas_update.xml", 2, {}),
    ("reinvite_hold_unhold", "uac_hold.xml", "uas_hold.xml", 2, {}),
]


def _call_through_edge(
    e2e: E2E,
    uac: str,
    uas: str,
    calls: int,
    *,
    caller_transport: Transport = "udp",
    callee_transport: Transport = "udp",
    no_answer_timeout: float = 10.0,
    **options: Any,
) -> None:
    callee = e2e.start_uas(uas, calls=calls, transport=callee_transport, timeout_s=40)
    edge = e2e.start_edge(
        e2e.edge_settings(
            uas_port=callee.port, uas_transport=callee_transport, no_answer_timeout=no_answer_timeout
        )
    )
    result = e2e.run_uac(
        uac, edge.addr, calls=calls, rate=10, transport=caller_transport, timeout_s=30, **options
    )
    expect_calls(result, calls, "caller")
    expect_calls(e2e.finish_uas(callee), calls, "callee")
    assert edge.alive, f"the edge died:\n{edge.log_tail()}"


@pytest.mark.parametrize(("case", "uac", "uas", "calls", "options"), CASES, ids=[c[0] for c in CASES])
def test_call_flow(e2e: E2E, case: str, uac: str, uas: str, calls: int, options: dict[str, Any]) -> None:
    _call_through_edge(e2e, uac, uas, calls, **options)


def test_no_answer_timer(e2e: E2E) -> None:
    """The callee rings and never answers: after calls.no_answer_timeout (2 s) the edge CANCELs the
    callee leg (the UAS answers 200 + 487) and gives the caller 480."""
    callee = e2e.start_uas("uas_cancel.xml", calls=2, timeout_s=40)
    edge = e2e.start_edge(e2e.edge_settings(uas_port=callee.port, no_answer_timeout=2.0))
    result = e2e.run_uac("uac_noanswer.xml", edge.addr, calls=2, rate=10, timeout_s=30, trace_rtt=True)
    expect_calls(result, 2, "caller")
    expect_calls(e2e.finish_uas(callee), 2, "callee")
    times = result.response_times_ms("noanswer")
    assert len(times) == 2, result.describe()
    assert all(1800 <= t <= 4000 for t in times), f"INVITE -> 480 took {times} ms, the timer is 2 s"


@pytest.mark.parametrize(
    ("caller", "callee"),
    [("tcp", "udp"), ("tcp", "tcp"), ("udp", "tcp")],
    ids=["tcp-udp", "tcp-tcp", "udp-tcp"],
)
def test_tcp_call(e2e: E2E, caller: Transport, callee: Transport) -> None:
    """A basic call with the caller leg and/or the callee leg over TCP (SIPp -t t1; the static route
    target carries ;transport=tcp for a TCP callee)."""
    _call_through_edge(
        e2e,
        "uac_basic.xml",
        "uas_basic.xml",
        2,
        caller_transport=caller,
        callee_transport=callee,
        duration_ms=300,
    )
