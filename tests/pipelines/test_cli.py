"""``smartpbx pipeline``: argument and config errors are clear and write nothing; ``sample`` writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbx_edge.cli import main


def test_extract_needs_a_range_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "extract", "--from", "2025-06-03"]) == 2
    assert "--from and --to, or --yesterday" in capsys.readouterr().err
    assert main(["pipeline", "extract", "--from", "2025-06-03", "--to", "2025-06-01"]) == 2
    assert "is after" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pipeline", "extract", "--from", "yesterday"])
    assert "not a date" in capsys.readouterr().err


def test_a_bad_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text("extractor: gpt\n")
    assert main(["pipeline", "extract", "--yesterday", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "extractor" in err and str(config) in err


def test_sample_writes_a_store(tmp_path: Path) -> None:
    assert main(["pipeline", "sample", str(tmp_path / "store"), "--calls", "12", "--seed", "3"]) == 0
    assert (tmp_path / "store" / "gold_facts.jsonl").exists()
    assert len(list((tmp_path / "store").glob("*/*.jsonl"))) == 12


def test_eval_rejects_bad_retriever_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pipeline", "eval", "--alpha", "1.5"])
    assert "not a weight in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pipeline", "eval", "--depth", "2"])
    assert "not a depth from 3 to 100" in capsys.readouterr().err
