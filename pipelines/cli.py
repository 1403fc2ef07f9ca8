"""``smartpbx pipeline``: the knowledge job's commands.

::

    smartpbx pipeline sample data/sample-store [--calls 320 --seed 7]     # the demo/evaluation store
    smartpbx pipeline extract --from 2025-06-02 --to 2025-06-08 [--config pipeline.yaml]
    smartpbx pipeline extract --yesterday --store s3://bucket/transcripts  # what the nightly job runs

``--config`` is a YAML file of :class:`pipelines.job.ExtractConfig` fields; ``--store`` and ``--kb-path``
override it. The job runs on ``$RAY_ADDRESS`` when set (an existing cluster), else on a local one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import yaml
from pydantic import ValidationError

__all__ = ["main"]


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _extract(args: argparse.Namespace) -> int:
    from .job import ExtractConfig, run_extract

    try:
        raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
        config = ExtractConfig.model_validate(raw or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        print(f"smartpbx pipeline: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.store:
        config = config.model_copy(update={"store": args.store})
    if args.kb_path:
        kb = config.knowledge_base.model_copy(update={"path": args.kb_path, "url": None})
        config = config.model_copy(update={"knowledge_base": kb})
    if args.yesterday:
        since = until = datetime.now(UTC).date() - timedelta(days=1)
    elif args.since and args.until:
        since, until = args.since, args.until
    else:
        print("smartpbx pipeline extract: give --from and --to, or --yesterday", file=sys.stderr)
        return 2
    if since > until:
        print(f"smartpbx pipeline extract: --from {since} is after --to {until}", file=sys.stderr)
        return 2
    try:
        report = run_extract(config, since, until)
    except KeyboardInterrupt:
        print("cancelled: nothing was written for this run; run the same command again", file=sys.stderr)
        return 130
    print(report.summary())
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .sample_data import main as sample_main

    return sample_main([args.out, "--calls", str(args.calls), "--seed", str(args.seed)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartpbx pipeline", description="the knowledge pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract", help="transcripts of a date range -> Q&A in the knowledge base")
    extract.add_argument("--from", dest="since", type=_day, help="first day (UTC), YYYY-MM-DD")
    extract.add_argument("--to", dest="until", type=_day, help="last day (UTC), included")
    extract.add_argument("--yesterday", action="store_true", help="the previous UTC day (nightly)")
    extract.add_argument("--config", help="YAML of ExtractConfig fields (pipelines/job.py)")
    extract.add_argument("--store", help="call store folder or fsspec URL (default data/transcripts)")
    extract.add_argument("--kb-path", help="Qdrant local-mode folder (default data/knowledge/qdrant)")
    extract.set_defaults(func=_extract)
    sample = sub.add_parser("sample", help="write the seeded sample call store (EN/KO, 4 businesses)")
    sample.add_argument("out")
    sample.add_argument("--calls", type=int, default=320)
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
