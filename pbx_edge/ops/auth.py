"""Bearer-token authentication for the admin API (NFR10).

The configuration holds only the hex SHA-256 of each token, so a leaked config file does not leak a
usable credential. A presented token is hashed and compared with every configured hash using
:func:`hmac.compare_digest`, without stopping at the first match, so the time taken says nothing about
which (or whether a) hash matched.

Roles are ordered: ``admin`` may do everything ``viewer`` may. With no tokens configured nothing can
authenticate, so the API refuses every protected route (the node logs a warning at start-up): an
admin API that is open by default is the failure mode this rule exists to prevent.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from pbx_edge.ops.config import AdminToken

REALM = "smartpbx-admin"


class Role(enum.StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


_RANK = {Role.VIEWER: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request: the token's configured name (for logs) and its role."""

    name: str
    role: Role


def hash_token(token: str) -> str:
    """The hex SHA-256 to put in ``admin.tokens[].sha256`` for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenAuthenticator:
    def __init__(self, tokens: Sequence[AdminToken]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), Principal(t.name, Role(t.role))) for t in tokens]

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for expected, principal in self._tokens:
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        return found
