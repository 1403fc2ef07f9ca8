"""Retrieval over the knowledge base (pipelines.knowledge_base): hybrid dense + keyword search."""

from .local_index import LocalIndex
from .retriever import Engine, Hit, Retriever

__all__ = ["Engine", "Hit", "LocalIndex", "Retriever"]
