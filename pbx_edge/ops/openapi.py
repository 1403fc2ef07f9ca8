"""The admin API's route table and the OpenAPI 3.1 document generated from it.

The admin app registers its handlers from the same :class:`Route` list this module documents, and
the schemas come from the pydantic models the handlers validate queries with and return, so the
document cannot drift from what the server does. Required roles appear twice: as the role list of the
bearer security requirement (OpenAPI 3.1 allows role names there for non-OAuth schemes) and as
``x-required-role`` for readers that ignore the former.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from pbx_edge.ops.auth import REALM, Role
from pbx_edge.ops.problems import PROBLEM_JSON, Problem

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"
REF_TEMPLATE = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: what the server registers and what the document describes.

    ``response`` is the pydantic model the handler must return (checked at run time); routes that
    answer something else (CSV, the document itself) give ``response_schema`` instead.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    handler: Callable[..., Any]
    role: Role | None = Role.VIEWER  # None: no authentication (liveness/readiness probes)
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_schema: dict[str, Any] | None = None
    media_type: str = "application/json"
    status: int = 200
    problems: tuple[int, ...] = ()  # further documented problem statuses (404, 503, ...)
    description: str = ""

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    def problem_statuses(self) -> list[int]:
        statuses = set(self.problems)
        if self.query is not None:
            statuses.add(400)
        if self.role is not None:
            statuses.add(401)
        if self.role is Role.ADMIN:
            statuses.add(403)  # a viewer token on an admin route; every token is at least a viewer
        if self.path_params:
            statuses.add(404)
        return sorted(statuses)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` query fields: optional parameters, not parameters that accept a JSON null."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [s for s in options if s != {"type": "null"}]
        if len(rest) == 1 and len(rest) < len(options):
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**rest[0], **merged}
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation", ref_template=REF_TEMPLATE)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(dict(prop))
        prop.pop("title", None)
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _problem_response(status: int, problem_ref: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": problem_ref}},
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": f'Bearer challenge (realm="{REALM}")',
                "required": True,
                "schema": {"type": "string"},
            }
        }
    return response


def build_openapi(
    routes: Sequence[Route], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Problem, "serialization")]
    models += [(r.response, "serialization") for r in routes if r.response is not None]
    refs, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    problem_ref = refs[(Problem, "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in route.path_params
        ]
        if route.query is not None:
            query_schema = route.query.model_json_schema(mode="validation", ref_template=REF_TEMPLATE)
            schemas.update(query_schema.get("$defs", {}))
            params += _query_parameters(route.query)
        if route.response is not None:
            body_schema = refs[(route.response, "serialization")]
        else:
            body_schema = route.response_schema or {}
        responses: dict[str, Any] = {
            str(route.status): {
                "description": HTTPStatus(route.status).phrase,
                "content": {route.media_type: {"schema": body_schema}},
            }
        }
        for status in route.problem_statuses():
            responses[str(status)] = _problem_response(status, problem_ref)
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "responses": responses,
        }
        if route.description:
            operation["description"] = route.description
        if params:
            operation["parameters"] = params
        if route.role is None:
            operation["security"] = []
        else:
            operation["security"] = [{SECURITY_SCHEME: [route.role.value]}]
            operation["x-required-role"] = route.role.value
        paths.setdefault(route.path, {})[route.method.lower()] = operation

    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token whose SHA-256 is listed in admin.tokens; roles: viewer < admin",
                }
            },
        },
    }
