"""Fixtures for the end-to-end tests.

- ``ports``: one :class:`~tests.e2e.harness.PortAllocator` for the session (free loopback ports).
- ``e2e``: an :class:`~tests.e2e.harness.E2E` per test: a work directory under the pytest temp dir,
  and every edge and SIPp process the test starts, all stopped at teardown.
- ``shim``: a running :class:`~tests.e2e.lossy_udp_shim.ShimThread` to add lossy UDP pipes to.

When a test fails, the tail of each edge log and each SIPp run's summary (exit code, stats, command
line, errors log) are attached to its report as extra sections; the full traces stay in the work
directory named there.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

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
