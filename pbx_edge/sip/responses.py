"""Building responses (RFC 3261 §8.2.6) and the checks every request passes before routing (§8.2.2)."""

from __future__ import annotations

from pbx_edge.sip.message import Headers, Request, Response


def make_response(req: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    headers = Headers()
    for value in req.headers.get_all("Via"):
        headers.add("Via", value)
    headers.add("From", req.headers.get("From") or "")
    to = req.headers.get("To") or ""
    if to_tag is not None and status > 100 and ";tag=" not in to.lower():
        to = f"{to};tag={to_tag}"
    headers.add("To", to)
    headers.add("Call-ID", req.call_id)
    headers.add("CSeq", req.headers.get("CSeq") or "")
    return Response(headers=headers, status=status, reason=reason)


def check_request(req: Request, supported: set[str]) -> tuple[int, str] | None:
    try:
        uri = req.request_uri
    except ValueError:
        return 400, "Bad Request-URI"
    if uri.scheme not in ("sip", "sips"):
        return 416, "Unsupported URI Scheme"
    max_forwards = req.headers.get("Max-Forwards")
    if max_forwards is not None and max_forwards.isdigit() and int(max_forwards) == 0:
        if req.method != "OPTIONS" and req.method != "REGISTER":
            return 483, "Too Many Hops"
    if req.method not in ("ACK", "CANCEL"):
        unknown = req.option_tags("Require") - supported
        if unknown:
            return 420, "Bad Extension"
    return None
