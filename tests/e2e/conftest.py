"""Fixtures for the end-to-end tests.

- ``ports``: one :class:`~tests.e2e.harness.PortAllocator` for the session (free loopback ports).
- ``e2e``: an :class:`~tests.e2e.harness.E2E` per test: a work directory under the pytest temp dir,
  and every edge and SIPp process the test starts, all stopped at teardown.
- ``shim``: a running :class:`~tests.e2e.lossy_udp_shim.ShimThread` to add lossy UDP pipes to.
- ``whisper``: whisper-base in this process (one thread), to hear what the AI said.
- ``clinic_roles``: the shared Serve app (``serve_app``) plus the roles app over the test clinic's
  knowledge base (:mod:`tests.e2e.clinic`), for the attendant's live tests.

When a test fails, the tail of each edge log and each SIPp run's summary (exit code, stats, command
line, errors log) are attached to its report as extra sections; the full traces stay in the work
directory named there.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.e2e.harness import E2E, PortAllocator
from tests.e2e.lossy_udp_shim import ShimThread

_SESSION_KEY = pytest.StashKey[E2E]()


@pytest.fixture(scope="session")
def ports() -> PortAllocator:
    return PortAllocator()


@pytest.fixture
def e2e(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ports: PortAllocator
) -> Iterator[E2E]:
    session = E2E(tmp_path_factory.mktemp(request.node.name[:40]), ports)
    request.node.stash[_SESSION_KEY] = session
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def shim() -> Iterator[ShimThread]:
    """A lossy-relay event loop in a background thread; the pipes added to it stop with the test."""
    with ShimThread() as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    session = item.stash.get(_SESSION_KEY, None)
    if session is not None and report.failed and report.when in ("call", "teardown"):
        for title, text in session.report():
            report.sections.append((title, text))
    return report


@pytest.fixture(scope="module")
def whisper() -> Any:
    from ai_serve.models import WhisperModelConfig
    from ai_serve.stt.backends import FasterWhisperBackend

    return FasterWhisperBackend(WhisperModelConfig.from_env().resolve(), cpu_threads=1)


@pytest.fixture(scope="module")
def clinic_roles(serve_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import importlib.util

    from tests.e2e.clinic import ROLES_MODULES, build_knowledge_base
    from tests.serve_cluster import roles_app

    missing = [m for m in ROLES_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the roles app needs {', '.join(missing)} (bash scripts/setup.sh)")
    path = tmp_path_factory.mktemp("clinic-kb") / "qdrant"
    build_knowledge_base(path)
    with roles_app({"num_cpus": 0.05, "retriever": {"knowledge_base": {"path": str(path)}}}):
        yield serve_app
