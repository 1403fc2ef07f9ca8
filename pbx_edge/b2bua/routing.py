"""Request-URI -> where to send the outgoing leg: registered contacts, else static routes.

Order of resolution for ``sip:user@host``:

1. Registered contacts of ``sip:user@<domain>`` and of ``sip:user@<host>`` (a phone may have
   registered with the PBX's domain or with its IP address as the AOR domain), all of them, highest
   q first then most recently registered first; the B2BUA forks or hunts through them. When there
   are any, static routes are not consulted: a registered extension is never sent to a trunk.
2. Otherwise the static routes whose ``prefix`` starts the user part, the longest prefix winning;
   routes sharing that longest prefix are all returned, in configuration order, as failover
   targets. The user part is rewritten (drop ``strip`` leading characters, prepend
   ``add_prefix``) into the route's target URI, whose host, port and transport give ``dest``.
3. Otherwise nothing: the caller answers 404 (or 480 when :meth:`Router.extension_config` knows
   the user as an extension that is simply not registered).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from pbx_edge.b2bua.location import LocationTable, bare_host, copy_address, default_port
from pbx_edge.ops.config import ExtensionConfig, RoutingConfig, StaticRoute
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.uri import SipUri

# RFC 3261 §25.1 user = 1*( unreserved / escaped / user-unreserved ); alphanumerics are always safe.
_USER_SAFE = "-_.!~*'()&=+$,;?/"


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """``uri``: the Request-URI of the outgoing INVITE; ``dest``: where to send it;
    ``source``: ``"location"`` or ``"static:<prefix>"`` (for logs and call records)."""

    uri: SipUri
    dest: Endpoint
    source: str


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    route: StaticRoute
    target: SipUri
    dest: Endpoint


class Router:
    __slots__ = ("_config", "_domain", "_routes", "_table")

    def __init__(self, table: LocationTable, config: RoutingConfig, domain: str) -> None:
        self._table = table
        self._config = config
        self._domain = domain.lower()
        self._routes: list[_CompiledRoute] = []
        for route in config.static_routes:
            target = SipUri.parse(route.target)  # validated by the config model
            dest = Endpoint(target.transport, bare_host(target.host), target.port or default_port(target))
            self._routes.append(_CompiledRoute(route, target, dest))

    def resolve(self, request_uri: SipUri, now: float) -> list[RouteTarget]:
        """Targets for ``request_uri``, best first; [] when the user is unknown (404)."""
        if request_uri.opaque is not None or request_uri.user is None:
            return []
        user = request_uri.user_unescaped or ""
        targets = self._registered(request_uri.scheme, user, request_uri.host.lower(), now)
        return targets or self._static(user)

    def _registered(self, scheme: str, user: str, host: str, now: float) -> list[RouteTarget]:
        aors = (f"{scheme}:{user}@{self._domain}", f"{scheme}:{user}@{host}")
        targets: list[RouteTarget] = []
        seen: set[str] = set()
        for binding in self._table.lookup_many(aors, now):
            if binding.key in seen:
                continue  # the same phone registered under both AORs: ring it once
            seen.add(binding.key)
            targets.append(
                RouteTarget(uri=copy_address(binding.contact).uri, dest=binding.dest, source="location")
            )
        return targets

    def _static(self, user: str) -> list[RouteTarget]:
        matching = [r for r in self._routes if user.startswith(r.route.prefix)]
        if not matching:
            return []
        longest = max(len(r.route.prefix) for r in matching)
        return [self._rewrite(r, user) for r in matching if len(r.route.prefix) == longest]

    @staticmethod
    def _rewrite(compiled: _CompiledRoute, user: str) -> RouteTarget:
        route = compiled.route
        new_user = route.add_prefix + user[route.strip :]
        target = compiled.target
        uri = SipUri(
            scheme=target.scheme,
            user=quote(new_user, safe=_USER_SAFE) if new_user else None,
            host=target.host,
            port=target.port,
            params=dict(target.params),
        )
        return RouteTarget(uri=uri, dest=compiled.dest, source=f"static:{route.prefix}")

    def extension_config(self, user: str) -> ExtensionConfig | None:
        """Per-extension call settings (no-answer timeout and action), None when not configured."""
        return self._config.extensions.get(user)
