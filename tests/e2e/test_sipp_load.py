"""Load: 200 basic calls at 20 calls/s through the edge (about 10 in progress at once), none may
fail on either side."""

from __future__ import annotations

import pytest

from tests.e2e.harness import E2E, SIPP, expect_calls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)"),
]

CALLS = 200
RATE = 20.0


def test_200_calls_at_20_cps(e2e: E2E) -> None:
    callee = e2e.start_uas("uas_basic.xml", calls=CALLS, timeout_s=90, trace_msg=False)
    edge = e2e.start_edge(e2e.edge_settings(uas_port=callee.port))
    result = e2e.run_uac(
        "uac_basic.xml",
        edge.addr,
        calls=CALLS,
        rate=RATE,
        duration_ms=500,
        timeout_s=60,
        trace_msg=False,
    )
    expect_calls(result, CALLS, "caller")
    expect_calls(e2e.finish_uas(callee, timeout=30), CALLS, "callee")
    assert edge.alive, f"the edge died:\n{edge.log_tail()}"
