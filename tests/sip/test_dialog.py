from __future__ import annotations

from pbx_edge.sip.dialog import Dialog
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response, parse_message

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: c1\r\nCSeq: 10 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1:5060>\r\nContent-Length: 0\r\n\r\n"
)


def _invite() -> Request:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    return msg


def test_uas_dialog_takes_route_set_in_order_and_contact_as_target() -> None:
    dialog = Dialog.as_uas(_invite(), "local1")
    assert dialog.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert dialog.remote_target == "sip:alice@10.0.0.1:5060"
    assert dialog.remote_tag == "a1" and dialog.remote_seq == 10
    bye = dialog.new_request("BYE", "SIP/2.0/UDP me:5060;branch=z9hG4bKx", None)
    assert bye.uri == "sip:alice@10.0.0.1:5060"
    assert bye.headers.get_all("Route") == dialog.route_set
    assert bye.to_tag == "a1" and bye.from_tag == "local1"
    assert bye.cseq.seq == 1
    assert dialog.next_hop("UDP") == Endpoint("UDP", "p2.example.com", 5060)


def test_uac_dialog_reverses_route_set_and_refreshes_target() -> None:
    req = _invite()
    dialog = Dialog.as_uac(req)
    resp = Response(status=200, reason="OK")
    for name in ("Via", "Record-Route", "From", "Call-ID", "CSeq"):
        for v in req.headers.get_all(name):
            resp.headers.add(name, v)
    resp.headers.add("To", "<sip:bob@example.com>;tag=b1")
    resp.headers.add("Contact", "<sip:bob@10.0.0.2:5070;transport=tcp>")
    dialog.update_from_response(resp)
    assert not dialog.early and dialog.remote_tag == "b1"
    assert dialog.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    ack = dialog.ack(10, "SIP/2.0/UDP me;branch=z9hG4bKa")
    assert ack.cseq.seq == 10 and ack.cseq.method == "ACK"
    assert dialog.new_request("INFO", "SIP/2.0/UDP me;branch=z9hG4bKb", None).cseq.seq == 11
    dialog.route_set = []
    assert dialog.next_hop("UDP") == Endpoint("TCP", "10.0.0.2", 5070)


def test_remote_cseq_must_increase_except_ack_and_cancel() -> None:
    dialog = Dialog.as_uas(_invite(), "l")
    req = _invite()
    req.headers.set("CSeq", "10 INFO")
    req.method = "INFO"
    assert not dialog.accept_remote_cseq(req)
    req.headers.set("CSeq", "11 INFO")
    assert dialog.accept_remote_cseq(req)
    req.method = "ACK"
    req.headers.set("CSeq", "1 ACK")
    assert dialog.accept_remote_cseq(req)
