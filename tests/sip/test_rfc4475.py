"""RFC 4475 torture messages against the parser and the edge's pre-routing checks.

Each fixture under ``fixtures/rfc4475/`` is one message of RFC 4475 §3, byte-exact: extracted from
the RFC's own Appendix A archive (base64 of a gzip'd tar, whose CRC vouches for every byte), named
``<section>-<name>.sip``. The SHA-256 in the table guards against end-of-line conversion by git or
an editor (mpart01 holds NULs and bare CRs in its body; every file has CRLF line ends).

Expected outcomes, one per fixture:

* ``"valid"``: parses, key fields are as the RFC describes, and :func:`check_request` lets a
  request through (the edge routes it; what the far end or the registrar then answers is theirs).
* ``"400"``: :class:`SipParseError` with ``partial`` set, so the edge answers 400 statelessly.
* ``"drop"``: :class:`SipParseError` without ``partial``: nothing can be answered (a response, or
  a request lacking what a response copies).
* an ``int``: the status the edge answers before routing, from :func:`check_request` on the parsed
  request or on the ``partial`` of the error (505).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pbx_edge.sip.framing import StreamFramer
from pbx_edge.sip.message import Request, Response, SipParseError, parse_message
from pbx_edge.sip.responses import check_request, make_response

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"
SUPPORTED = {"100rel", "timer", "replaces"}

Outcome = Literal["valid", "400", "drop"] | int


@dataclass(frozen=True)
class Case:
    file: str
    sha256: str
    outcome: Outcome
    why: str
    fields: dict[str, object] = field(default_factory=dict)


CASES = [
    # --- 3.1.1 valid messages ---------------------------------------------------------------
    Case(
        "3.1.1.1-wsinv.sip",
        "d6f6cdee99cd0a1f8e3d9a0fdd67c877700e19ab86d8186dada06f61260e3e61",
        "valid",
        "folding, LWS everywhere, escaped quotes, compact forms, leading zeros",
        {
            "method": "INVITE",
            "uri": "sip:vivekg@chair-dnrc.example.com;unknownparam",
            "call_id": "wsinv.ndaksdj@192.0.2.1",
            "cseq": (9, "INVITE"),
            "from_tag": "98asjd8",
            "to_tag": "1918181833n",
            "via_transports": ["UDP", "TCP", "UDP"],
            "top_branch": "390skdjuw",
            "body_len": 150,
            "headers": {
                "Max-Forwards": "0068",
                "Subject": "",
                "NewFangledHeader": "newfangled value continued newfangled value",
                "UnknownHeaderWithUnusualValue": ";;,,;;,;",
                "Route": "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
            },
            "from_display": '"J Rosenberg \\\\\\""',
            "contact_params": [{"newparam": "newvalue", "secondparam": None, "q": "0.33"}],
        },
    ),
    Case(
        "3.1.1.2-intmeth.sip",
        "b957a8292c1c0a9851fe94705b90f94320738f43aacde64998e401f742ef688d",
        "valid",
        "every token character in method, branch, tag; quoted NUL/BEL/DEL in To; UTF-8 values",
        {
            "method": "!interesting-Method0123456789_*+`.%indeed'~",
            "ruri_user": "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
            "ruri_password": "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)",
            "call_id": "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
            "cseq": (139122385, "!interesting-Method0123456789_*+`.%indeed'~"),
            "top_branch": "z9hG4bK-.!%66*_+`'~",
            "from_tag": "_token~1'+`*%!-.",
            "from_display": "token1~` token2'+_ token3*%!.-",
            "to_display": '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"',
            "headers": {"extensionHeader-!.%*+_`'~": "\ufeff\u5927\u505c\u96fb"},
            "body_len": 0,
        },
    ),
    Case(
        "3.1.1.3-esc01.sip",
        "be3a316d4ce5f69cad474646191e390dd4b50fc8371e44b5197fe1237781973e",
        "valid",
        "% HEX HEX escapes in user parts and URI parameters",
        {
            "ruri_user_unescaped": "sips:user@example.com",
            "to_user_unescaped": "user",
            "from_user_unescaped": "I have spaces",
            "contact_uri_params": [{"%6c%72": None, "n%61me": "v%61lue%25%34%31"}],
            "headers": {"Content-Type": "application/sdp"},
            "body_len": 150,
        },
    ),
    Case(
        "3.1.1.4-escnull.sip",
        "263fe2ecd12a5ccbb6c67b3174e9211d11da9b600e7d69666a86d2ee42873e90",
        "valid",
        "escaped NULs in user parts: two distinct contacts",
        {
            "method": "REGISTER",
            "to_user_unescaped": "null-\x00-null",
            "contact_users_unescaped": ["\x00", "\x00\x00"],
            "body_len": 0,
        },
    ),
    Case(
        "3.1.1.5-esc02.sip",
        "9a9c59449f00327b02071feafc8e5c2a261c98c818044167894cc17809a12199",
        "valid",
        "% is no escape in a method or a header name: RE%47IST%45R, C%6Fntact",
        {
            "method": "RE%47IST%45R",
            "cseq": (29344, "RE%47IST%45R"),
            "contact_count": 2,
            "headers": {"C%6Fntact": "<sip:alias2@host2.example.com>"},
            "to_display": '"%Z%45"',
        },
    ),
    Case(
        "3.1.1.6-lwsdisp.sip",
        "d1b36b6316c12824f6f04bf6b1fd1f021cade9b74871693b9c3474cd9fa7f4e6",
        "valid",
        "no LWS between display name and <",
        {"method": "OPTIONS", "from_display": "caller", "from_tag": "323"},
    ),
    Case(
        "3.1.1.7-longreq.sip",
        "185739292bc676760e5b1cca77c87705aa570240171c506ad76f8c35af0ecdaa",
        "valid",
        "long values, 34 Vias in every spelling of the name",
        {
            "call_id": "longreq.one" + "really" * 20 + "longcallid",
            "from_tag": "12" + "982" * 50 + "424",
            "via_count": 34,
            "top_branch": None,
            "contact_users": ["amazinglylongcallername" * 5],
            "headers": {
                "Unknown-" + "Long" * 20 + "-Name": "unknown-"
                + "long" * 20
                + "-value; unknown-"
                + "long" * 20
                + "-parameter-name = unknown-"
                + "long" * 20
                + "-parameter-value"
            },
            "body_len": 150,
        },
    ),
    Case(
        "3.1.1.8-dblreq.sip",
        "a6be48426565c2a705389c4ce2ea17e57b891cb13f80490a2cb9392c797b46ef",
        "valid",
        "octets after the body of a datagram are ignored",
        {"method": "REGISTER", "call_id": "dblreq.0ha0isndaksdj99sdfafnl3lk233412", "body_len": 0},
    ),
    Case(
        "3.1.1.9-semiuri.sip",
        "87bbaed6b4b354dbd3c5c7a20e66686303c63e43a0aa19b89de1ac75231611a2",
        "valid",
        "; and an escaped @ in the Request-URI user part",
        {
            "ruri_user": "user;par=u%40example.net",
            "ruri_user_unescaped": "user;par=u@example.net",
            "ruri_host": "example.com",
            "headers": {
                "Accept": "application/sdp, application/pkcs7-mime, multipart/mixed, "
                "multipart/signed, message/sip, message/sipfrag"
            },
        },
    ),
    Case(
        "3.1.1.10-transports.sip",
        "33b4553a3b9418121b099ff07882535151edd6a1e81898c63a916aad2cbf90bc",
        "valid",
        "known and unknown Via transports",
        {
            "via_transports": ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"],
            "call_id": "transports.kijh4akdnaqjkwendsasfdj",
        },
    ),
    Case(
        "3.1.1.11-mpart01.sip",
        "92147c8e24997bac59629e1b163767697d0d6d499af87f89e325d69968bec3ba",
        "valid",
        "multipart body with NULs and bare CRs, framed by Content-Length",
        {"method": "MESSAGE", "body_len": 553, "body_has_nul": True, "from_tag": "2fb0dcc9"},
    ),
    Case(
        "3.1.1.12-unreason.sip",
        "4f939d6ebf4817eea70f011d3209e83732872ffc20ffd304b244084dc392f4d7",
        "valid",
        "reason phrase with reserved and UTF-8 characters",
        {
            "status": 200,
            "reason": "= 2**3 * 5**2 но сто девяносто девять - простое",
            "body_len": 154,
        },
    ),
    Case(
        "3.1.1.13-noreason.sip",
        "07e11e470a69fffa3674de805e5165d1351a9439a91045ee70c9570ea24ab4fe",
        "valid",
        "empty reason phrase",
        {"status": 100, "reason": "", "to_tag": "902jndnke3"},
    ),
    # --- 3.1.2 invalid messages -------------------------------------------------------------
    Case("3.1.2.1-badinv01.sip", "9ee2b88f2e0b5a9eeb9bf729b6177f0a0c7d0b5e6c84be593e0480d7962f3ab8",
         "400", "empty Via elements (;;,;,,) and empty Contact parameters"),
    Case("3.1.2.2-clerr.sip", "d9da629086a38df433438fb0fb19a8730f34516f049a5520dd0cac3285485290",
         "400", "Content-Length larger than the datagram"),
    Case("3.1.2.3-ncl.sip", "7ea6538edc1f054fdb6cd1c821040460cffca3cb682fa2e8e2a502d92170b4c2",
         "400", "negative Content-Length"),
    Case("3.1.2.4-scalar02.sip", "53158177326568e9964bce5dcfac27a2bf8a90953bbc03f6c5e2775864a97e4b",
         "400", "CSeq number > 2**32-1 (and Max-Forwards 300)"),
    Case("3.1.2.5-scalarlg.sip", "0957eca31737e3592eb1418bb41e9f5219278a78ff420111620d7fb60175b551",
         "drop", "response with an overlarge CSeq: discarded"),
    Case("3.1.2.6-quotbal.sip", "e61978a2ea359fc666f0336fe4dbc623447532280e3273ea98119b3d3f788c84",
         "400", "unterminated quoted display name in To"),
    Case("3.1.2.7-ltgtruri.sip", "bcacb2dc17610e8cc8f9b8b0e3d6ee65ab473f93787a03bbd33579e1cea473df",
         "400", "Request-URI enclosed in <>"),
    Case("3.1.2.8-lwsruri.sip", "3e22ceeca585ad23cc180208e2dad94e0a5aa4bb877a61cac443aa927f758b9e",
         "400", "LWS inside the Request-URI"),
    Case("3.1.2.9-lwsstart.sip", "f884e5626c6c5b1210cfc4a3540b8a28bd52939cff092f3f0c5c971e032adb0e",
         "400", "several SP between request-line elements (rejecting is acceptable)"),
    Case("3.1.2.10-trws.sip", "64ae20694026e28c10746b57386b7fd1276de02b6f8d42d418070e87d6f4499f",
         "400", "SP after the SIP-Version (rejecting is acceptable)"),
    Case("3.1.2.11-escruri.sip", "c3cf30af13a9d107829cc105effd79355f1139c6ecc683a048b4c27951f8f416",
         "400", "headers in the Request-URI (RFC 3261 §19.1.1 forbids them)"),
    Case(
        "3.1.2.12-baddate.sip",
        "1208a6e3e0c8a8c33a06a1f3733d158413cb72e58c379d094c4ecea11e9d4c28",
        "valid",
        "non-GMT Date: the edge never reads Date, so it need not reject it",
        {"method": "INVITE", "headers": {"Date": "Fri, 01 Jan 2010 16:00:00 EST"}},
    ),
    Case("3.1.2.13-regbadct.sip", "575d27530275814c1c98be164808fac89a0e2b4fc899dadcd97e6ba499437bda",
         "400", "Contact addr-spec with ? must be a name-addr"),
    Case("3.1.2.14-badaspec.sip", "f8f6e2f4247287b0be6adb5ac222a6db4759395e44d27d2ddb9b39393e94867e",
         "400", "spaces inside <...> of To"),
    Case("3.1.2.15-baddn.sip", "9d9428e8017092f194ec11077ba6865c251308cdfd7fd9db6a993b28e5748951",
         "400", "unquoted display names with non-token characters"),
    Case("3.1.2.16-badvers.sip", "037d702d19e934bfeebbd2609050d7d54928d590cf90c78f3914522771dd8e03",
         505, "SIP/7.0: 505 from the partial request"),
    Case("3.1.2.17-mismatch01.sip", "a2c285636e451e75420da0cc62ee55ca3e398827008418befbfb078726bf0793",
         "400", "CSeq method differs from the request method"),
    Case("3.1.2.18-mismatch02.sip", "01b287f9a9c492f7f57405c36c8a2af0e2393896ed2d25fb92b502f2a6722bc4",
         "400", "unknown method, CSeq INVITE (RFC allows 400 besides 501)"),
    Case("3.1.2.19-bigcode.sip", "f79450070975da54c3525c9a5cbe75bae3c9d8cb92eba609772c26f66f225c2e",
         "drop", "status code 4294967301"),
    # --- 3.2 transaction layer ----------------------------------------------------------------
    Case("3.2.1-badbranch.sip", "cb049c727f16b5ec49e822f9e8b7d0ee20ca2d20ffb50baecd0b411a5e64fa7d",
         "400", "branch=z9hG4bK with no identifier: rejected statelessly"),
    # --- 3.3 application layer ----------------------------------------------------------------
    Case("3.3.1-insuf.sip", "1e3efd9f3b238c6351ba12bc7eb46d843f2761b5d4a6b82b63bffdf07f2c5aee",
         "drop", "no Call-ID, From or To: a response could not be built"),
    Case("3.3.2-unkscm.sip", "81be1a6a566c7ab52fe1c58c4a75440dfd697ad04c5e09fa71340de7da7b8bbb",
         416, "unknown Request-URI scheme"),
    Case("3.3.3-novelsc.sip", "9a50a7343fcf685e77c4d0f477138a28f32a41c75aa566d200f3df210b01e648",
         416, "known but atypical scheme (soap.beep)"),
    Case(
        "3.3.4-unksm2.sip",
        "f6914409ced613ef5eb56e264d2f096dac26ab9e397d6a638934d2027f1f6acb",
        "valid",
        "non-SIP URIs in To, From, Contact: the registrar rejects the AOR",
        {"method": "REGISTER", "to_uri": "isbn:2983792873", "from_uri": "http://www.example.com",
         "contact_uris": ["name:John_Smith"]},
    ),
    Case("3.3.5-bext01.sip", "57181987c02c4f5752b7aa8c2847311f6184216ce7621e40303015949e70761c",
         420, "Require with unknown option tags (Proxy-Require is ignored by a UAS)"),
    Case("3.3.6-invut.sip", "9b39e824947df46f90f824cd308fb3c118f548d94637f581101e355b381a0d92",
         415, "INVITE body of unknown type: the media relay needs SDP"),
    Case(
        "3.3.7-regaut01.sip",
        "885ba0488872cfc04a3c7622854b8381955a5ee890745d6010834e3731a73faa",
        "valid",
        "unknown Authorization scheme: carried as text",
        {"method": "REGISTER", "headers": {"Authorization": "NoOneKnowsThisScheme opaque-data=here"}},
    ),
    Case("3.3.8-multi01.sip", "d156ab12105b4bfd8a6498de6f7195087058162b8cda1606169855b722411791",
         "400", "several Call-ID, To, From, Max-Forwards and CSeq values"),
    Case("3.3.9-mcl01.sip", "887191619bf003b7e87399200b5cf4c3b5397344dbf70288ad5e23bd157b7fe4",
         "400", "conflicting Content-Length values"),
    Case(
        "3.3.10-bcast.sip",
        "073637c63597199179cf5fc91b980b2d530c066a0048ea3b908772def57b4c36",
        "valid",
        "response with a broadcast Via: well formed; discarding it is the transaction layer's job",
        {"status": 200, "via_hosts": ["192.0.2.198", "255.255.255.255"], "body_len": 154},
    ),
    Case(
        "3.3.11-zeromf.sip",
        "50954ef47acca4f9f5263ded06246d06dee4e2ee508a8d284191795d7fddf365",
        "valid",
        "Max-Forwards 0 on an out-of-dialog OPTIONS, which the edge answers itself (an INVITE gets 483)",
        {"method": "OPTIONS", "headers": {"Max-Forwards": "0"}},
    ),
    Case(
        "3.3.12-cparam01.sip",
        "dfa6b5cdb289adc694b9b7e103ebfa7a2167335c46e5dc9de67055021910ae1c",
        "valid",
        "addr-spec Contact: unknownparam is a contact-param",
        {"contact_params": [{"unknownparam": None}], "contact_uri_params": [{}]},
    ),
    Case(
        "3.3.13-cparam02.sip",
        "e93574215bd1d804bb46cc15ca6176b567def7ea1b15f72ab2c2dcf598af465a",
        "valid",
        "name-addr Contact: unknownparam is a url-parameter",
        {"contact_params": [{}], "contact_uri_params": [{"unknownparam": None}]},
    ),
    Case(
        "3.3.14-regescrt.sip",
        "dab4087c133348b06fd7b3c4c7ef15094f8754e265e4e8c2137bb3ecda2ef477",
        "valid",
        "escaped Route header in a Contact URI",
        {"contact_uri_headers": ["Route=%3Csip:sip.example.com%3E"]},
    ),
    Case("3.3.15-sdp01.sip", "497c5f1ced6c7b579b48075e2dca919ce9b819a735964128a6e744a3a0b9e57f",
         406, "INVITE whose Accept excludes application/sdp"),
    # --- 3.4 backward compatibility -----------------------------------------------------------
    Case(
        "3.4.1-inv2543.sip",
        "76fac8afe22dee49ea696b511621946694897ac7030fc5d07f57c8b487ce0521",
        "valid",
        "RFC 2543: no branch, no From tag, no Content-Length, no Max-Forwards",
        {"method": "INVITE", "top_branch": None, "from_tag": None, "body_len": 105,
         "headers": {"Max-Forwards": None}},
    ),
]  # fmt: skip

IDS = [case.file.removesuffix(".sip") for case in CASES]


def load(case: Case) -> bytes:
    return (FIXTURES / case.file).read_bytes()


def test_table_covers_every_fixture() -> None:
    assert sorted(case.file for case in CASES) == sorted(p.name for p in FIXTURES.glob("*.sip"))
    assert len(CASES) == 49  # 13 + 19 valid/invalid syntax, 1 transaction, 15 application, 1 compat


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fixture_is_byte_exact(case: Case) -> None:
    data = load(case)
    assert hashlib.sha256(data).hexdigest() == case.sha256
    if not case.file.endswith("mpart01.sip"):  # its binary body holds bare CRs
        assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r") > 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expected_outcome(case: Case) -> None:
    data = load(case)
    if case.outcome == "valid":
        message = parse_message(data)
        check_fields(message, case.fields)
        if isinstance(message, Request):
            assert check_request(message, SUPPORTED) is None
        assert parse_message(bytes(message)) == message
        return
    if isinstance(case.outcome, int):
        try:
            request = parse_message(data)
        except SipParseError as exc:
            assert exc.partial is not None, exc.reason
            assert exc.status == case.outcome
            request = exc.partial
        assert isinstance(request, Request)
        problem = check_request(request, SUPPORTED)
        assert problem is not None
        status, reason = problem
        assert status == case.outcome and reason
        assert_answer(request, status, reason)
        return
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    error = info.value
    assert error.reason and error.reason.isprintable() and len(error.reason) <= 200
    if case.outcome == "drop":
        assert error.partial is None
        return
    assert error.partial is not None, error.reason
    assert error.status == 400
    assert_answer(error.partial, 400, error.reason)


def assert_answer(request: Request, status: int, reason: str) -> None:
    """The response the edge would send: Vias, From, To, Call-ID and CSeq copied as received."""
    response = make_response(request, status, reason)
    wire = bytes(response)
    assert wire.startswith(f"SIP/2.0 {status} ".encode())
    for name in ("From", "To", "Call-ID", "CSeq"):
        assert response.headers.get(name) == request.headers.get(name)
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.body == b""


def check_fields(message: Request | Response, fields: dict[str, object]) -> None:
    for key, expected in fields.items():
        if key == "method":
            assert isinstance(message, Request) and message.method == expected
        elif key == "uri":
            assert isinstance(message, Request) and message.uri == expected
        elif key.startswith("ruri_"):
            assert isinstance(message, Request)
            uri = message.request_uri
            attr = {"ruri_user": uri.user, "ruri_password": uri.password, "ruri_host": uri.host}
            value = uri.user_unescaped if key == "ruri_user_unescaped" else attr[key]
            assert value == expected, key
        elif key == "status":
            assert isinstance(message, Response) and message.status == expected
        elif key == "reason":
            assert isinstance(message, Response) and message.reason == expected
        elif key == "call_id":
            assert message.call_id == expected
        elif key == "cseq":
            assert (message.cseq.seq, message.cseq.method) == expected
        elif key == "from_tag":
            assert message.from_tag == expected
        elif key == "to_tag":
            assert message.to_tag == expected
        elif key == "from_display":
            assert message.from_addr.display == expected
        elif key == "to_display":
            assert message.to_addr.display == expected
        elif key == "from_user_unescaped":
            assert message.from_addr.uri.user_unescaped == expected
        elif key == "to_user_unescaped":
            assert message.to_addr.uri.user_unescaped == expected
        elif key == "to_uri":
            assert str(message.to_addr.uri) == expected
        elif key == "from_uri":
            assert str(message.from_addr.uri) == expected
        elif key == "via_transports":
            assert [via.transport for via in message.vias] == expected
        elif key == "via_hosts":
            assert [via.host for via in message.vias] == expected
        elif key == "via_count":
            assert len(message.vias) == expected
        elif key == "top_branch":
            assert message.top_via.branch == expected
        elif key == "body_len":
            assert len(message.body) == expected
        elif key == "body_has_nul":
            assert (b"\x00" in message.body) == expected
        elif key == "contact_count":
            assert len(message.contacts) == expected
        elif key == "contact_params":
            assert [c.params for c in message.contacts] == expected
        elif key == "contact_uri_params":
            assert [c.uri.params for c in message.contacts] == expected
        elif key == "contact_uri_headers":
            assert [c.uri.headers for c in message.contacts] == expected
        elif key == "contact_users":
            assert [c.uri.user for c in message.contacts] == expected
        elif key == "contact_users_unescaped":
            assert [c.uri.user_unescaped for c in message.contacts] == expected
        elif key == "contact_uris":
            assert [str(c.uri) for c in message.contacts] == expected
        elif key == "headers":
            assert isinstance(expected, dict)
            for name, value in expected.items():
                assert message.headers.get(name) == value, name
        else:
            raise AssertionError(f"unknown field {key}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["udp", "tcp"])
def test_never_crashes(case: Case, stream: bool) -> None:
    """Every fixture, as a datagram or as a framed stream message, parses or raises SipParseError."""
    try:
        message = parse_message(load(case), stream=stream)
    except SipParseError as exc:
        if exc.partial is not None:
            bytes(make_response(exc.partial, exc.status, exc.reason))
        return
    if isinstance(message, Request):
        check_request(message, SUPPORTED)


def test_inv2543_needs_content_length_on_a_stream() -> None:
    data = load(next(c for c in CASES if c.file == "3.4.1-inv2543.sip"))
    with pytest.raises(SipParseError) as info:
        parse_message(data, stream=True)
    assert info.value.reason == "Missing Content-Length"
    assert info.value.partial is not None  # answerable: Via, From, To, Call-ID and CSeq are there
    with pytest.raises(SipParseError, match="Missing Content-Length"):
        StreamFramer().feed(data)


def test_dblreq_over_a_stream_is_two_messages_and_junk() -> None:
    """On TCP the "extra octets" of RFC 4475 §3.1.1.8 are the next message (its body is 155 octets
    against a Content-Length of 150), and the 5 octets left over end the stream."""
    framer = StreamFramer()
    messages = framer.feed(load(next(c for c in CASES if c.file == "3.1.1.8-dblreq.sip")))
    first, second = (parse_message(m, stream=True) for m in messages)
    assert isinstance(first, Request) and first.method == "REGISTER"
    assert isinstance(second, Request) and second.method == "INVITE" and len(second.body) == 150
    assert framer.error is not None and framer.error.reason == "Missing Content-Length"
    with pytest.raises(SipParseError, match="Missing Content-Length"):
        framer.feed(b"")


def test_every_framed_fixture_survives_the_framer() -> None:
    """All fixtures at once over one stream: each either comes out whole or stops the stream."""
    for case in CASES:
        data = load(case)
        framer = StreamFramer()
        try:
            out = framer.feed(data)
        except SipParseError:
            continue
        position = 0
        for message in out:  # in order, verbatim; only CRLFs between messages are skipped
            found = data.find(message, position)
            assert found >= 0 and not data[position:found].strip(b"\r\n")
            position = found + len(message)


def test_bext01_unsupported_lists_the_require_tags() -> None:
    request = parse_message(load(next(c for c in CASES if c.file == "3.3.5-bext01.sip")))
    assert isinstance(request, Request)
    assert request.option_tags("Require") - SUPPORTED == {"nothingsupportsthis", "nothingsupportsthiseither"}
