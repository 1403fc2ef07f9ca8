"""The LLM role: an OpenAI-style chat interface and its backends (see :mod:`.backends`).

Importing this package needs neither llama-cpp-python nor a server: backends import their libraries
when they are created.
"""

from .backends import (
    BaseChatBackend,
    ChatBackend,
    LlmError,
    LlmStats,
    available_chat_backends,
    create_chat_backend,
    register_chat_backend,
)
from .llama_cpp import LlamaCppBackend, smollm2_gguf_path
from .openai_client import OpenAIChatBackend
from .types import ChatRequest, ChatResult, Message, ToolCall, ToolChoice, Usage

__all__ = [
    "BaseChatBackend",
    "ChatBackend",
    "ChatRequest",
    "ChatResult",
    "LlamaCppBackend",
    "LlmError",
    "LlmStats",
    "Message",
    "OpenAIChatBackend",
    "ToolCall",
    "ToolChoice",
    "Usage",
    "available_chat_backends",
    "create_chat_backend",
    "register_chat_backend",
    "smollm2_gguf_path",
]
