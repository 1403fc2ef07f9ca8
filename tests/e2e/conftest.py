"""Fixtures for the end-to-end tests: a port allocator and an :class:`~tests.e2e.harness.E2E` per test.

When a test fails, the tail of every edge log and each SIPp run's summary (exit code, stats, command,
errors log) are attached to the report as extra sections; the full traces stay under the test's
``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.e2e.harness import E2E, PortAllocator

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("call", "teardown") or not report.failed:
        return
    session = item.stash.get(_SESSION_KEY, None)
    if session is None:
        return
    for title, text in session.report():
        report.sections.append((title, text))
