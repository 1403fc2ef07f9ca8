"""The sample businesses' back-office systems (billing, CRM, orders) as one HTTP server on loopback.

What ``config/tools.yaml`` calls when no real system is configured: ``scripts/run.sh`` starts it, so a
new user who calls the IVR number (1200, Skyline Mobile) hears a tool-backed answer, and the session
tests run their tools against it. It is sample data and says so: every phone number has the same
sample account (``balance``, ``currency``, ``due_date``), plan changes and tickets are accepted and
remembered in memory, and every order number is "in transit". Credentials are checked the way the
tools send them (bearer token, API key header, basic auth), so a misconfigured tool fails here as it
would against the real system.

Run it by hand::

    python -m ai_serve.agents.sample_systems --port 8090 --env-file data/sample-systems.env

``--env-file`` writes the ``BILLING_URL``/``BILLING_TOKEN``/``CRM_URL``/``CRM_API_KEY``/``ORDERS_*``
variables (fresh random secrets) as shell ``export`` lines for the AI layer's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

__all__ = ["SampleSystems", "main"]

HOST = "127.0.0.1"


class SampleSystems:
    """Billing, CRM and orders on one port; records what it was asked (see the module docstring)."""

    def __init__(
        self,
        *,
        billing_token: str,
        crm_key: str,
        orders_user: str = "ivr",
        orders_password: str = "",
        balance: int = 39000,
        currency: str = "KRW",
        due_date: str = "2026-12-10",
    ) -> None:
        self.billing_token, self.crm_key = billing_token, crm_key
        self.orders_user = orders_user
        self.orders_password = orders_password or secrets.token_urlsafe(12)
        self.balance, self.currency, self.due_date = balance, currency, due_date
        self.port = 0
        self.balance_phones: list[str] = []
        self.plan_changes: list[tuple[str, Any]] = []
        self.tickets: list[Any] = []
        self.orders_asked: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The variables ``config/tools.yaml`` reads, pointing at this server."""
        return {
            "BILLING_URL": self.base, "BILLING_TOKEN": self.billing_token,
            "CRM_URL": self.base, "CRM_API_KEY": self.crm_key,
            "ORDERS_URL": self.base, "ORDERS_USER": self.orders_user, "ORDERS_PASSWORD": self.orders_password,
        }  # fmt: skip

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/accounts/{phone}/balance", self._balance)
        app.router.add_post("/accounts/{phone}/plan", self._plan)
        app.router.add_post("/api/v2/tickets", self._ticket)
        app.router.add_get("/orders/{order_id}", self._order)
        return app

    async def start(self, host: str = HOST, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --------------------------------------------------------------------------------- handlers

    def _billing_ok(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.billing_token}"

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        if not self._billing_ok(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        self.balance_phones.append(request.match_info["phone"])
        return web.json_response({
            "balance": self.balance, "currency": self.currency, "due_date": self.due_date,
            "last_payment": {"amount": self.balance + 2000},
        })  # fmt: skip

    async def _plan(self, request: web.Request) -> web.StreamResponse:
        if not self._billing_ok(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        self.plan_changes.append((request.match_info["phone"], body))
        return web.json_response(
            {"effective_date": body.get("start_date") or "2026-12-01", "plan": body["plan"]}
        )

    async def _ticket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Api-Key") != self.crm_key:
            return web.Response(status=403)
        self.tickets.append(await request.json())
        return web.json_response({"id": f"T-{1000 + len(self.tickets)}", "status": "open"}, status=201)

    async def _order(self, request: web.Request) -> web.StreamResponse:
        expected = base64.b64encode(f"{self.orders_user}:{self.orders_password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="orders"'})
        order_id = request.match_info["order_id"]
        self.orders_asked.append(order_id)
        return web.json_response(
            {"status": "in transit", "expected_delivery": "2026-12-03", "carrier": "Harbor Post"}
        )


def _write_env(path: str, environment: dict[str, str]) -> None:
    """``export NAME='value'`` lines, readable by this user only."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for name, value in environment.items():
            out.write(f"export {name}='{value}'\n")


async def _serve(host: str, port: int, env_file: str | None) -> None:
    systems = SampleSystems(billing_token=secrets.token_urlsafe(24), crm_key=secrets.token_urlsafe(24))
    await systems.start(host, port)
    if env_file:
        _write_env(env_file, systems.environment())
    print(f"sample business systems on {systems.base} (billing, CRM, orders; sample data)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await systems.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ai_serve.agents.sample_systems", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--env-file", help="write the tools' variables here as shell exports")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.env_file))
    except OSError as exc:
        print(f"sample systems: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
