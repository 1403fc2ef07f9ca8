"""Structured logs: every stdlib ``logging`` call in the code base comes out as one JSON object per line.

The code keeps using ``logging.getLogger("pbx_edge...")`` with %-style messages; this module puts
structlog's :class:`~structlog.stdlib.ProcessorFormatter` on the root logger's handlers, so a call such
as ::

    log.info("call %s answered", call.id, extra=call_context(call))

is written to stderr as ::

    {"timestamp": "2025-01-01T12:00:00.123456Z", "level": "info", "logger": "pbx_edge.b2bua",
     "event": "call c1 answered", "call_id": "c1", "a_call_id": "...", "b_call_id": "...",
     "node_id": "edge-1"}

``timestamp`` is the record's creation time in UTC, ``event`` the formatted message, and every
``extra=`` field is copied as a key (avoid the reserved ``timestamp``, ``level``, ``logger``,
``event``). Values that are not JSON types are written as their ``repr``. Code that prefers
structlog's API (``structlog.get_logger().info("x", call_id=...)``) goes through the same handlers.

``logging.format`` picks the renderer of the stderr handler: ``json``, ``console`` (structlog's
ConsoleRenderer, for people at a terminal) or ``auto`` (console when stderr is a terminal). The
``edge ready`` line that harnesses wait for is an ordinary message, so it reads the same in both.
``logging.file`` also appends JSON lines to a file, through a ``WatchedFileHandler`` so that
logrotate's move-and-create is followed.

Handlers write synchronously and flush every record, so a crash loses at most the record being
written; :func:`shutdown_logging` (also run at exit) flushes and closes them.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from typing import IO, Protocol

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from pbx_edge.ops.config import EdgeConfig

__all__ = ["call_context", "call_fields", "configure_logging", "shutdown_logging"]

FIRST_KEYS = ("timestamp", "level", "logger", "event")

_installed: list[logging.Handler] = []
_atexit_registered = False


# --- call context --------------------------------------------------------------------------------
class _Dialog(Protocol):
    @property
    def call_id(self) -> str: ...


class _Leg(Protocol):
    @property
    def dialog(self) -> _Dialog: ...


class CallLike(Protocol):
    """What :func:`call_context` reads: :class:`pbx_edge.b2bua.call.Call` fits."""

    @property
    def id(self) -> str: ...

    @property
    def a(self) -> _Leg: ...

    @property
    def b(self) -> _Leg | None: ...


def call_fields(
    call_id: str | None = None, *, a_call_id: str | None = None, b_call_id: str | None = None
) -> dict[str, str]:
    """``extra=`` fields naming a call (our id) and its legs' SIP Call-IDs; None values are left out."""
    fields = {"call_id": call_id, "a_call_id": a_call_id, "b_call_id": b_call_id}
    return {key: value for key, value in fields.items() if value is not None}


def call_context(call: CallLike) -> dict[str, str]:
    """``extra=`` fields for a log line about ``call``: ``log.info("...", extra=call_context(call))``."""
    return call_fields(
        call.id,
        a_call_id=call.a.dialog.call_id,
        b_call_id=call.b.dialog.call_id if call.b is not None else None,
    )


# --- processors ----------------------------------------------------------------------------------
def _timestamp(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """ISO 8601 UTC time the record was *made* (not formatted), microseconds, ``Z`` suffix."""
    record = event_dict.get("_record")
    created = record.created if isinstance(record, logging.LogRecord) else datetime.now(UTC).timestamp()
    moment = datetime.fromtimestamp(created, UTC)
    event_dict["timestamp"] = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return event_dict


def _first_keys(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, logger and event first: readable when someone tails the raw lines."""
    ordered = {key: event_dict.pop(key) for key in FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


class _AddNode:
    """Name the node in JSON lines, which are read after being merged with other nodes' lines."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("node_id", self.node_id)
        return event_dict


def _common() -> list[Processor]:
    """Run on every record, from logging or structlog alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamp,
    ]


def _json_formatter(node_id: str) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_common(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _AddNode(node_id),
            _first_keys,
            structlog.processors.JSONRenderer(),
        ],
    )


def _console_formatter(colors: bool) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_common(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Plain tracebacks: rich's would print local variables, and those can hold secrets.
            structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback),
        ],
    )


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


# --- set-up and tear-down ------------------------------------------------------------------------
def configure_logging(config: EdgeConfig, *, stream: IO[str] | None = None) -> None:
    """Route all logging through structlog renderers, replacing what an earlier call installed.

    Use it instead of ``logging.basicConfig``. ``stream`` defaults to ``sys.stderr`` as it is at the
    time of the call; tests pass their own.
    """
    global _atexit_registered
    shutdown_logging()
    stream = sys.stderr if stream is None else stream
    fmt = config.logging.format
    console = fmt == "console" or (fmt == "auto" and _is_tty(stream))
    main = logging.StreamHandler(stream)
    main.setFormatter(_console_formatter(_is_tty(stream)) if console else _json_formatter(config.node_id))
    handlers: list[logging.Handler] = [main]
    if config.logging.file is not None:
        config.logging.file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.WatchedFileHandler(config.logging.file, mode="a", encoding="utf-8")
        to_file.setFormatter(_json_formatter(config.node_id))
        handlers.append(to_file)
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(config.log_level)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            *_common(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    if not _atexit_registered:
        atexit.register(shutdown_logging)
        _atexit_registered = True


def shutdown_logging() -> None:
    """Flush, close and remove the handlers :func:`configure_logging` installed. Safe to call twice.

    Records logged afterwards go to logging's last-resort handler (stderr, WARNING and above).
    """
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop(0)
        root.removeHandler(handler)
        try:
            handler.flush()
            handler.close()
        except (OSError, ValueError):  # the stream is already closed: nothing left to save
            pass
    logging.captureWarnings(False)
