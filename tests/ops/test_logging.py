from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from pbx_edge.ops.config import EdgeConfig, parse_config
from pbx_edge.ops.logging import call_context, call_fields, configure_logging, shutdown_logging

ROOT = Path(__file__).resolve().parents[2]


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    shutdown_logging()
    root.setLevel(level)
    structlog.reset_defaults()


def config(**data: Any) -> EdgeConfig:
    return parse_config({"node_id": "edge-7", **data}, environ={})


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_shape() -> None:
    out = io.StringIO()
    configure_logging(config(logging={"format": "json"}), stream=out)
    logging.getLogger("pbx_edge.b2bua").info("call %s answered after %.1f s", "c1", 2.25)
    (line,) = lines(out)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert line["level"] == "info"
    assert line["logger"] == "pbx_edge.b2bua"
    assert line["event"] == "call c1 answered after 2.2 s"
    assert line["node_id"] == "edge-7"
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == timedelta(0) and line["timestamp"].endswith("Z")
    assert abs(datetime.now(UTC) - stamp) < timedelta(seconds=60)
    assert "\n" not in out.getvalue().rstrip("\n")  # one object per line


def test_extra_fields_pass_through() -> None:
    out = io.StringIO()
    configure_logging(config(logging={"format": "json"}), stream=out)
    log = logging.getLogger("pbx_edge")
    log.warning(
        "leg ended",
        extra={**call_fields("c9", a_call_id="a@h", b_call_id="b@h"), "event_name": "call.ended", "n": 3},
    )
    log.info("not json-typed", extra={"peer": ("10.0.0.1", 5060), "obj": object()})
    first, second = lines(out)
    assert first["call_id"] == "c9" and first["a_call_id"] == "a@h" and first["b_call_id"] == "b@h"
    assert first["event_name"] == "call.ended" and first["n"] == 3
    assert second["peer"] == ["10.0.0.1", 5060]
    assert second["obj"].startswith("<object object")


def test_call_context() -> None:
    dialog_a, dialog_b = SimpleNamespace(call_id="a@h"), SimpleNamespace(call_id="b@h")
    call = SimpleNamespace(id="c1", a=SimpleNamespace(dialog=dialog_a), b=None)
    assert call_context(call) == {"call_id": "c1", "a_call_id": "a@h"}
    call.b = SimpleNamespace(dialog=dialog_b)
    assert call_context(call) == {"call_id": "c1", "a_call_id": "a@h", "b_call_id": "b@h"}
    assert call_fields() == {}


def test_exceptions_and_structlog_loggers() -> None:
    out = io.StringIO()
    configure_logging(config(logging={"format": "json"}), stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("pbx_edge").exception("error handling message from %s", "udp:1.2.3.4:5060")
    structlog.get_logger("pbx_edge.ai").info("stream %s opened", "s1", call_id="c2")
    failed, native = lines(out)
    assert failed["level"] == "error"
    assert "RuntimeError: boom" in failed["exception"]
    assert native["event"] == "stream s1 opened"
    assert native["logger"] == "pbx_edge.ai" and native["call_id"] == "c2" and native["level"] == "info"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_edge_ready_line_in_both_formats(fmt: str) -> None:
    out = io.StringIO()
    configure_logging(config(logging={"format": fmt}), stream=out)
    logging.getLogger("pbx_edge").warning("edge ready node=%s listening on %s", "edge-7", "udp:0.0.0.0:5060")
    assert "edge ready node=edge-7 listening on udp:0.0.0.0:5060" in out.getvalue()


def test_console_format() -> None:
    out = io.StringIO()
    configure_logging(config(logging={"format": "console"}), stream=out)
    logging.getLogger("pbx_edge.media").warning("port block %d busy", 20000, extra={"call_id": "c3"})
    text = out.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "port block 20000 busy" in text and "pbx_edge.media" in text and "call_id=c3" in text
    assert "warning" in text
    assert "\x1b[" not in text  # no colour codes when the stream is not a terminal


def test_auto_format_follows_the_terminal() -> None:
    tty = TtyStream()
    configure_logging(config(logging={"format": "auto"}), stream=tty)
    logging.getLogger("pbx_edge").warning("hello")
    assert not tty.getvalue().startswith("{")
    pipe = io.StringIO()
    configure_logging(config(logging={"format": "auto"}), stream=pipe)
    logging.getLogger("pbx_edge").warning("hello")
    assert lines(pipe)[0]["event"] == "hello"


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(config(logging={"format": "json"}))
    logging.getLogger("pbx_edge").warning("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.splitlines()[-1])["event"] == "to stderr"


def test_file_output(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "edge.jsonl"
    path.parent.mkdir()
    path.write_text('{"earlier": true}\n')
    out = io.StringIO()
    configure_logging(config(logging={"format": "console", "file": str(path)}), stream=out)
    logging.getLogger("pbx_edge").info("written twice", extra={"call_id": "c4"})
    shutdown_logging()
    earlier, line = (json.loads(x) for x in path.read_text().splitlines())
    assert earlier == {"earlier": True}  # appended, not truncated
    assert line["event"] == "written twice" and line["call_id"] == "c4"
    assert "written twice" in out.getvalue()  # and the console still got it


def test_file_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "edge.jsonl"
    configure_logging(config(logging={"format": "json", "file": str(path)}), stream=io.StringIO())
    logging.getLogger("pbx_edge").warning("x")
    shutdown_logging()
    assert json.loads(path.read_text())["event"] == "x"


def test_level_filtering() -> None:
    out = io.StringIO()
    configure_logging(config(log_level="WARNING", logging={"format": "json"}), stream=out)
    log = logging.getLogger("pbx_edge.gc")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [x["event"] for x in lines(out)] == ["w", "e"]
    debug = io.StringIO()
    configure_logging(config(log_level="DEBUG", logging={"format": "json"}), stream=debug)
    log.debug("d")
    assert [x["level"] for x in lines(debug)] == ["debug"]


def test_reconfigure_replaces_handlers_and_shutdown_is_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    configure_logging(config(logging={"format": "json"}), stream=first)
    configure_logging(config(logging={"format": "json"}), stream=second)
    assert len(root.handlers) == len(before) + 1
    logging.getLogger("pbx_edge").warning("once")
    assert first.getvalue() == "" and len(lines(second)) == 1
    shutdown_logging()
    shutdown_logging()
    assert root.handlers == before


def test_shutdown_flushes_buffered_stream(tmp_path: Path) -> None:
    path = tmp_path / "stderr.txt"
    with path.open("w", buffering=1 << 20) as buffered:  # nothing reaches the file until flushed
        configure_logging(config(logging={"format": "json"}), stream=buffered)
        logging.getLogger("pbx_edge").warning("last words")
        shutdown_logging()
        assert json.loads(path.read_text())["event"] == "last words"


def test_nothing_lost_at_exit(tmp_path: Path) -> None:
    """A process that logs and exits without calling shutdown_logging keeps its last lines."""
    log_file = tmp_path / "edge.jsonl"
    script = textwrap.dedent(
        f"""
        import logging
        from pbx_edge.ops.config import parse_config
        from pbx_edge.ops.logging import configure_logging
        cfg = parse_config({{"logging": {{"format": "json", "file": {str(log_file)!r}}}}}, environ={{}})
        configure_logging(cfg)
        logging.getLogger("pbx_edge").warning("edge ready node=%s", "edge-1")
        logging.getLogger("pbx_edge").warning("edge stopping")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == ""
    events = [json.loads(x)["event"] for x in done.stderr.splitlines()]
    assert events == ["edge ready node=edge-1", "edge stopping"]
    assert [json.loads(x)["event"] for x in log_file.read_text().splitlines()] == events
