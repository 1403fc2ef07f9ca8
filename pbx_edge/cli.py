"""``smartpbx`` command line: run an edge node, check a config file, make a token, watch transcripts."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import sys

from pbx_edge.ops.config import ConfigError, load_config
from pbx_edge.ops.logging import configure_logging, shutdown_logging
from pbx_edge.watch import add_watch_parser


def _run_edge(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"smartpbx: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    from pbx_edge.edge import serve

    if config.runtime.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"smartpbx: cannot start edge: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found while starting (e.g. media.engine native but not built)
        print(f"smartpbx: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_logging()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(f"smartpbx: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


def _new_token(args: argparse.Namespace) -> int:
    """Print a fresh bearer token once, and the config entry that stores only its SHA-256."""
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"token (shown once, give it to the client): {token}")
    print("add under admin.tokens in the config:")
    print(f"  - {{name: {args.name}, role: {args.role}, sha256: {digest}}}")
    return 0


def _transcribe(argv: list[str]) -> int:
    """``smartpbx transcribe FILE.wav``: offline transcription with speakers (needs the ``ai`` extra)."""
    try:
        from ai_serve.offline import main as transcribe_main
    except ImportError as exc:
        print(
            f"smartpbx transcribe needs the AI extra ({exc}): pip install 'smartpbx[ai]' "
            "(or pip install -e '.[ai]' in a checkout)",
            file=sys.stderr,
        )
        return 2
    return transcribe_main(argv)


def _pipeline(argv: list[str]) -> int:
    """``smartpbx pipeline ...``: the knowledge job (needs the ``ai`` extra)."""
    try:
        from pipelines.cli import main as pipeline_main
    except ImportError as exc:
        print(f"smartpbx pipeline needs the AI extra ({exc}): pip install -e '.[ai]'", file=sys.stderr)
        return 2
    return pipeline_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartpbx", description="SmartPBX AI edge and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    edge = sub.add_parser("edge", help="run a SIP edge node")
    edge.add_argument("--config", required=True, help="YAML config file (see config/edge.yaml)")
    edge.set_defaults(func=_run_edge)
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("file")
    check.set_defaults(func=_check_config)
    token = sub.add_parser("token", help="make an admin API bearer token and its config entry")
    token.add_argument("--name", default="ops", help="who the token is for (logged on admin actions)")
    token.add_argument("--role", choices=("viewer", "admin"), default="viewer")
    token.set_defaults(func=_new_token)
    add_watch_parser(sub)
    transcribe = sub.add_parser(
        "transcribe",
        add_help=False,  # its own options and --help: main() hands everything after the word over
        help="transcribe a WAV recording with speaker labels, in-process (needs the ai extra)",
    )
    transcribe.add_argument("args", nargs=argparse.REMAINDER)
    transcribe.set_defaults(func=lambda args: _transcribe(args.args))
    pipeline = sub.add_parser("pipeline", add_help=False, help="the knowledge pipeline (sample, extract)")
    pipeline.add_argument("args", nargs=argparse.REMAINDER)
    pipeline.set_defaults(func=lambda args: _pipeline(args.args))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["transcribe"]:  # argparse would take its options (--json ...) as unknown ones
        return _transcribe(argv[1:])
    if argv[:1] == ["pipeline"]:
        return _pipeline(argv[1:])
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
