"""Registration through the edge's registrar: a REGISTER binds the SIPp UAS's address to alice, a
call to sip:alice@<domain> then reaches it, and a REGISTER with Expires: 0 removes the binding so
the next call is rejected (404/410/480/604) instead of reaching the old contact.

The edge has no static route at all here, so the location table is the only way to the UAS.

The REGISTER is sent from the UAS's own address (SIPp binds the port the UAS then listens on): the
edge treats a REGISTER whose source differs from its Contact as coming from behind a NAT and sends
calls to that source, as RFC 3581 ``received``/``rport`` would. The removal is sent from another
port on purpose: a binding is keyed by its Contact URI, not by where the REGISTER came from.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import E2E, E2E_DOMAIN, LOOPBACK, SIPP, SippResult, expect_calls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)"),
]

USER = "alice"
CALL_ID = f"reg-{USER}-%u@127.0.0.1"  # one UA: the same Call-ID, a higher CSeq for the removal


def _register(
    e2e: E2E, edge_addr: tuple[str, int], contact_port: int, expires: int, cseq: int, **options: int
) -> SippResult:
    keys = {
        "user": USER,
        "domain": E2E_DOMAIN,
        "contact_host": LOOPBACK,
        "contact_port": contact_port,
        "expires": expires,
    }
    result = e2e.run_uac(
        "uac_register.xml",
        edge_addr,
        keys=keys,
        extra=["-cid_str", CALL_ID, "-base_cseq", str(cseq)],
        timeout_s=15,
        **options,
    )
    expect_calls(result, 1, f"REGISTER Expires: {expires}")
    return result


def _contact_lines(result: SippResult) -> list[str]:
    (ok,) = [m for m in result.traced("received") if m.startswith("SIP/2.0 200")]
    return [line for line in ok.splitlines() if re.match(r"(?i)^(contact|m)\s*:", line)]


def test_register_call_unregister(e2e: E2E) -> None:
    uas_port = e2e.ports.port()
    edge = e2e.start_edge(e2e.edge_settings(static_routes=[]))

    registered = _register(e2e, edge.addr, uas_port, expires=60, cseq=1, local_port=uas_port)
    bound = _contact_lines(registered)
    assert any(f":{uas_port}" in line for line in bound), f"200 OK lists no binding for us: {bound}"

    # -m 2: if the edge still routed to the removed contact, the UAS would answer the last call
    # and uac_unreachable.xml would fail on the 180
    callee = e2e.start_uas("uas_basic.xml", calls=2, local_port=uas_port, timeout_s=60)
    call = e2e.run_uac(
        "uac_call_aor.xml",
        edge.addr,
        service=USER,
        keys={"domain": E2E_DOMAIN},
        duration_ms=300,
        timeout_s=20,
    )
    expect_calls(call, 1, f"call to {USER}@{E2E_DOMAIN} while registered")

    removed = _register(e2e, edge.addr, uas_port, expires=0, cseq=2)
    remaining = [line for line in _contact_lines(removed) if f":{uas_port}" in line]
    assert all(re.search(r"expires=0\b", line) for line in remaining), f"binding still listed: {remaining}"

    gone = e2e.run_uac(
        "uac_unreachable.xml", edge.addr, service=USER, keys={"domain": E2E_DOMAIN}, timeout_s=15
    )
    expect_calls(gone, 1, f"call to {USER}@{E2E_DOMAIN} after Expires: 0")

    answered = callee.stop(grace=3.0)
    assert answered.created == 1 and answered.successful == 1 and answered.failed == 0, answered.describe()
