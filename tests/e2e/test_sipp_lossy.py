"""Calls through a lossy UDP relay: 20 % of datagrams dropped each way (plus 5 % duplicated and
5 % held back 50 ms, so overtaken), and every call must still complete thanks to retransmissions
(RFC 3261 17.1.1.2 timers A/E, 2xx retransmission by the UAS core, ACK retransmission by the UAC
core).

``test_lossy_calls_through_edge`` puts one relay between the caller and the edge and another between
the edge and the callee; both SIPp sides advertise the relay's address in Via/Contact, so every
request and response of both legs crosses a lossy hop. ``test_lossy_relay_sipp_to_sipp`` runs the
same scenarios with the relay alone, which checks the relay, the scenarios and SIPp's own
retransmissions without the edge.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import E2E, LOOPBACK, SIPP, SippProcess, SippResult, expect_calls
from tests.e2e.lossy_udp_shim import LossProfile, ShimThread, UdpPipe

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)"),
    pytest.mark.timeout(240),
]

CALLS = 20
RATE = 4.0
PROFILE = LossProfile(loss=0.2, duplicate=0.05, reorder=0.05, reorder_delay=0.05, seed=20241124)
# SIPp gives up a transaction after -max_retrans retransmissions (default 5 for INVITE); with 20 %
# loss each way a request/response round trip fails 36 % of the time, so allow as many as the edge's
# own Timer B/F (64*T1) would: 0.5+1+2+4+4+... s.
MAX_RETRANS = 12
SIPP_TIMEOUT_S = 150
# The caller's pause between ACK and BYE; not a multiple of T1, see uas_lossy.xml.
PAUSE_MS = 700


def _assert_lossy(pipe: UdpPipe) -> None:
    stats = pipe.stats
    assert stats.left_to_right.dropped > 0 and stats.right_to_left.dropped > 0, f"{pipe.name}: {stats}"


# The edge answers the caller's BYE itself and then hangs up the callee leg; through 20 % loss that
# BYE may still be retransmitting (up to 64*T1 = 32 s) when the caller is done.
CALLEE_BYE_WAIT_S = 35.0


def _assert_callee(uas: SippProcess) -> None:
    """Every call reached the callee and was answered and hung up there. The UAS lingers 32 s per
    call to answer BYE retransmissions, so it is judged from its trace and then stopped."""
    uas.wait_for_callee_dialogs(CALLS, timeout=CALLEE_BYE_WAIT_S)
    result = uas.stop(grace=0.5)
    assert result.failed == 0, result.describe()
    assert result.completed_callee_dialogs() == CALLS, result.describe()


def _start_callee(e2e: E2E, local_port: int, adv_port: int) -> SippProcess:
    """The lossy UAS on ``local_port``, naming ``adv_port`` (its side of a relay) in Via/Contact."""
    return e2e.start_uas(
        "uas_lossy.xml",
        calls=CALLS,
        local_port=local_port,
        keys={"adv_host": LOOPBACK, "adv_port": adv_port},
        max_retrans=MAX_RETRANS,
        timeout_s=SIPP_TIMEOUT_S,
    )


def _run_caller(e2e: E2E, pipe: UdpPipe, local_port: int) -> SippResult:
    """The lossy UAC on ``local_port`` placing every call through ``pipe``; all of them complete."""
    result = e2e.run_uac(
        "uac_lossy.xml",
        pipe.left_addr,
        calls=CALLS,
        rate=RATE,
        local_port=local_port,
        keys={"adv_host": LOOPBACK, "adv_port": pipe.right_addr[1]},
        max_retrans=MAX_RETRANS,
        duration_ms=PAUSE_MS,
        timeout_s=SIPP_TIMEOUT_S,
    )
    expect_calls(result, CALLS, f"caller (relay: {pipe.stats})")
    return result


def test_lossy_calls_through_edge(e2e: E2E, shim: ShimThread) -> None:
    uac_port, uas_port = e2e.ports.port(), e2e.ports.port()
    settings = e2e.edge_settings()
    edge_addr = (LOOPBACK, settings.port)
    caller_pipe = shim.add(UdpPipe(edge_addr, PROFILE, left_peer=(LOOPBACK, uac_port), name="caller<->edge"))
    callee_pipe = shim.add(
        UdpPipe(
            (LOOPBACK, uas_port),
            LossProfile(**{**PROFILE.__dict__, "seed": PROFILE.seed + 1}),
            left_peer=edge_addr,
            name="edge<->callee",
        )
    )
    settings.static_routes.append(settings.route("", LOOPBACK, callee_pipe.left_addr[1]))

    uas = _start_callee(e2e, uas_port, callee_pipe.left_addr[1])
    e2e.start_edge(settings)
    _run_caller(e2e, caller_pipe, uac_port)
    _assert_callee(uas)
    _assert_lossy(caller_pipe)
    _assert_lossy(callee_pipe)


def test_lossy_relay_sipp_to_sipp(e2e: E2E, shim: ShimThread) -> None:
    uac_port, uas_port = e2e.ports.port(), e2e.ports.port()
    pipe = shim.add(UdpPipe((LOOPBACK, uas_port), PROFILE, left_peer=(LOOPBACK, uac_port), name="relay"))
    uas = _start_callee(e2e, uas_port, uas_port)
    result = _run_caller(e2e, pipe, uac_port)
    _assert_callee(uas)
    _assert_lossy(pipe)
    assert result.stats is not None and result.stats.retransmissions > 0
