"""RFC 9457 problem details: the one error shape of the admin API.

Every error leaves as ``application/problem+json`` with ``type``, ``title``, ``status`` and ``detail``.
Plain HTTP conditions (401, 403, 404, 405, 500, 503) use ``type: about:blank`` with the status phrase
as the title, as RFC 9457 §4.2.1 asks; conditions of our own get a ``urn:smartpbx:problem:<slug>`` type
so a client can branch on them without parsing ``detail``. Validation problems also list each bad
parameter in ``errors`` (the extension member RFC 9457 §3 shows).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web
from pydantic import BaseModel, Field

PROBLEM_JSON = "application/problem+json"
ABOUT_BLANK = "about:blank"
TYPE_PREFIX = "urn:smartpbx:problem:"
INVALID_PARAMETERS = TYPE_PREFIX + "invalid-parameters"
CALL_NOT_FOUND = TYPE_PREFIX + "call-not-found"
NO_TOKENS_CONFIGURED = TYPE_PREFIX + "no-tokens-configured"


class ParameterError(BaseModel):
    """One rejected request parameter."""

    parameter: str
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(ABOUT_BLANK, description="URI identifying the problem type")
    title: str = Field(description="Short summary of the problem type")
    status: int = Field(ge=400, le=599, description="The HTTP status code")
    detail: str = Field(description="What went wrong with this request")
    errors: list[ParameterError] | None = Field(None, description="Each bad parameter (400 only)")


class ProblemError(Exception):
    """Raised by handlers (and the auth layer); the admin middleware turns it into the response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = ABOUT_BLANK,
        title: str | None = None,
        errors: list[ParameterError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(
            type=type,
            title=title or HTTPStatus(status).phrase,
            status=status,
            detail=detail,
            errors=errors,
        )
        self.headers = dict(headers or {})


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        text=problem.model_dump_json(exclude_none=True),
        content_type=PROBLEM_JSON,
        headers=headers,
    )
