"""Coverage-guided fuzz target for the SIP parser and stream framer (atheris / libFuzzer).

Not part of the test suite (pytest does not collect it). Run, with atheris installed::

    python tests/sip/fuzz_parser.py -max_len=4096 -runs=1000000 tests/sip/fixtures/rfc4475/

The RFC 4475 fixtures make a good seed corpus; pass a directory as the first argument so the
fuzzer writes new inputs there (copy the fixtures into a scratch directory first). Without atheris
the script replays the files or directories given on the command line once each, so a crash file
can be reproduced with plain Python.

The property: any byte string either parses, and is then usable (re-serializes to an equal message,
every accessor and :func:`check_request` work, a response can be built), or raises
:class:`SipParseError`, whose ``partial`` (when set) can be answered. Anything else is a bug.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from pbx_edge.sip.framing import StreamFramer
from pbx_edge.sip.message import Request, SipParseError, parse_message
from pbx_edge.sip.responses import check_request, make_response


def test_one_input(data: bytes) -> None:
    for stream in (False, True):
        try:
            message = parse_message(data, stream=stream, max_size=8192)
        except SipParseError as exc:
            if exc.partial is not None:
                bytes(make_response(exc.partial, exc.status, exc.reason))
                check_request(exc.partial, {"100rel"})
            continue
        if parse_message(bytes(message), max_size=1 << 20) != message:
            raise AssertionError("re-parse differs")
        _ = (message.call_id, message.cseq, message.vias, message.top_via, message.from_tag, message.to_tag)
        _ = (message.contacts, message.option_tags("Require"))
        if isinstance(message, Request):
            _ = message.request_uri
            check_request(message, {"100rel"})
            parse_message(bytes(make_response(message, 200, "OK", to_tag="t")), max_size=1 << 20)
    framer = StreamFramer(max_size=8192)
    try:
        for i in range(0, len(data), 7):
            for chunk in framer.feed(data[i : i + 7]):
                with contextlib.suppress(SipParseError):
                    parse_message(chunk, stream=True, max_size=8192)
    except SipParseError:
        pass


def _replay(paths: list[str]) -> None:
    files = [f for p in map(Path, paths) for f in (sorted(p.iterdir()) if p.is_dir() else [p])]
    for path in files:
        test_one_input(path.read_bytes())
    print(f"replayed {len(files)} inputs: no failure")


def main() -> None:
    try:
        import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        _replay(sys.argv[1:] or [str(Path(__file__).parent / "fixtures" / "rfc4475")])
        return
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
