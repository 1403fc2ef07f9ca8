"""Identifiers the stack mints: tags, branches and Call-IDs (RFC 3261 §19.3), random and cheap."""

from __future__ import annotations

import os

from pbx_edge.sip.headers import BRANCH_MAGIC


def _token(nbytes: int) -> str:
    return os.urandom(nbytes).hex()


def new_tag() -> str:
    return _token(6)


def new_branch() -> str:
    return BRANCH_MAGIC + _token(8)


def new_call_id(host: str) -> str:
    return f"{_token(10)}@{host}"
