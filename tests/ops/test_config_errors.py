"""A bad config fails at start-up naming the field, the bad value and the reason: twelve kinds of bad
file through ``smartpbx config check``, and the edge itself refusing to start on one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pbx_edge.cli import main

BAD_FILES = [
    ("sip:\n  listen: [{transport: sctp}]\n", ["sip.listen.0.transport", "'sctp'"]),
    ("sip:\n  listen: [{port: 70000}]\n", ["sip.listen.0.port", "70000", "less than or equal to 65535"]),
    ("sip:\n  listen: []\n", ["sip.listen", "at least one"]),
    ("sip:\n  timers: {t1: 5, t2: 1}\n", ["t2"]),
    ("calls:\n  max_calls: many\n", ["calls.max_calls", "'many'", "integer"]),
    ("routing:\n  static_routes: [{target: 'mailto:x'}]\n", ["routing.static_routes.0.target", "sip"]),
    ("media:\n  port_start: 20001\n", ["media.port_start", "even"]),
    ("media:\n  bind_host: 0.0.0.0\n", ["media", "advertised_address is required"]),
    ("webhooks:\n  targets: [{url: 'ftp://x'}]\n", ["webhooks.targets.0.url", "http"]),
    ("admin:\n  tokens: [{name: a, sha256: secret}]\n", ["admin.tokens.0.sha256", "'secret'"]),
    ("rate_limit:\n  allow: [not-an-ip]\n", ["rate_limit.allow", "not-an-ip"]),
    ("log_level: LOUD\n", ["log_level", "'LOUD'"]),
    ("nodes_id: x\n", ["nodes_id", "Extra inputs are not permitted"]),
    ("sip: [1, 2\n", ["not valid YAML"]),
    ("- a\n- b\n", ["top level must be a mapping"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_config_check_names_field_value_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, err


def test_the_edge_does_not_start_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("media:\n  port_start: 20001\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_edge.cli", "edge", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "media.port_start" in proc.stderr and "even" in proc.stderr
