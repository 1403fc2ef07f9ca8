"""Building responses (RFC 3261 §8.2.6) and the checks every request passes before routing (§8.2.2).

:func:`check_request` runs on a request that parsed (or on the ``partial`` of a
:class:`~pbx_edge.sip.message.SipParseError`) and names the response the edge must send instead of
routing it, in the order of RFC 3261 §8.2 and §16.3: version (505), Request-URI scheme (416),
Max-Forwards (483), Require (420), body type (415) and Accept (406). It never raises.
"""

from __future__ import annotations

from pbx_edge.sip.headers import split_comma_list
from pbx_edge.sip.message import SIP_VERSION, Headers, Request, Response
from pbx_edge.sip.uri import Address

SUPPORTED_URI_SCHEMES = frozenset({"sip", "sips"})
# Methods whose body is an SDP offer or answer the media relay must rewrite (RFC 3264).
SESSION_METHODS = frozenset({"INVITE", "UPDATE", "PRACK"})
ACCEPTED_BODY_TYPES = frozenset({"application/sdp"})
# Accept media ranges that admit an SDP answer (RFC 3261 §20.1).
_SDP_RANGES = frozenset({"application/sdp", "application/*", "*/*"})


def make_response(req: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """The response skeleton of RFC 3261 §8.2.6: every Via in order, From, To, Call-ID, CSeq.

    ``to_tag`` is added to To unless To already has a tag (an unparseable To is copied verbatim).
    A 100 Trying also copies Timestamp (§8.2.6.1). There is no body; ``reason`` is used as given
    (control characters replaced, so a parser's reason cannot break the status line).
    """
    items: list[tuple[str, str]] = []
    request_items = req.headers._items
    for name, value in request_items:
        if name == "Via":
            items.append(("Via", value))
    for key in ("From", "To", "Call-ID", "CSeq"):
        found = next((v for n, v in request_items if n == key), None)
        if found is None:
            continue
        if key == "To" and to_tag is not None and _untagged(found):
            found = f"{found};tag={to_tag}"
        items.append((key, found))
    if status == 100:
        timestamp = req.headers.get("Timestamp")
        if timestamp is not None:
            items.append(("Timestamp", timestamp))
    headers = Headers.__new__(Headers)
    headers._items = items
    if not reason.isprintable():
        reason = "".join(c if c.isprintable() else "?" for c in reason)
    return Response(headers=headers, status=status, reason=reason)


def _untagged(to: str) -> bool:
    try:
        return Address.parse(to).tag is None
    except ValueError:
        return False


def check_request(req: Request, supported: set[str]) -> tuple[int, str] | None:
    """The (status, reason) the edge must answer ``req`` with before any routing, or None.

    ``supported`` are the option tags the edge implements (compared case-insensitively). For 420
    the caller adds ``Unsupported`` (the tags of Require not in ``supported``); for 415 it should
    add ``Accept: application/sdp``. ACK is never answered. Max-Forwards 0 is not an error for a
    request the edge answers itself rather than forwards: REGISTER (it is the registrar), CANCEL
    (hop by hop) and out-of-dialog OPTIONS (RFC 3261 §16.3 step 3; RFC 4475 §3.3.11).
    """
    method = req.method
    if method == "ACK":
        return None
    if req.version.upper() != SIP_VERSION:
        return 505, "Version Not Supported"
    scheme = req.uri.partition(":")[0].lower()
    if scheme not in SUPPORTED_URI_SCHEMES:
        return 416, "Unsupported URI Scheme"
    headers = req.headers
    max_forwards = (headers.get("Max-Forwards") or "").strip()
    if max_forwards and max_forwards.isascii() and max_forwards.isdigit() and int(max_forwards) == 0:
        answered_here = method in ("REGISTER", "CANCEL") or (method == "OPTIONS" and _out_of_dialog(req))
        if not answered_here:
            return 483, "Too Many Hops"
    if method != "CANCEL":
        allowed = {tag.lower() for tag in supported}
        if req.option_tags("Require") - allowed:
            return 420, "Bad Extension"
    if method in SESSION_METHODS and req.body:
        content_type = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if content_type not in ACCEPTED_BODY_TYPES or encoding != "identity":
            return 415, "Unsupported Media Type"
    if method == "INVITE":
        accept = headers.get_all("Accept")
        if accept and not _accepts_sdp(accept):
            return 406, "Not Acceptable"
    return None


def _out_of_dialog(req: Request) -> bool:
    try:
        return req.to_tag is None
    except ValueError:
        return True


def _accepts_sdp(values: list[str]) -> bool:
    for value in values:
        for media_range in split_comma_list(value):
            if media_range.partition(";")[0].strip().lower() in _SDP_RANGES:
                return True
    return False
