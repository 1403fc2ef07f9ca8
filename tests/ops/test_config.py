from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pbx_edge.cli import main
from pbx_edge.ops.config import ConfigError, EdgeConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def _missing_keys(model: type[BaseModel], data: object, where: str) -> list[str]:
    """Schema fields (nested models included) that the sample YAML does not show."""
    missing = []
    for name, field in model.model_fields.items():
        if not isinstance(data, dict) or name not in data:
            missing.append(f"{where}{name}")
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _missing_keys(annotation, data[name], f"{where}{name}.")
    return missing


def test_sample_config_is_valid_and_complete() -> None:
    path = ROOT / "config" / "edge.yaml"
    config = load_config(path, environ={})
    assert config.sip.listen[0].port == 5060
    assert config.sip.timers.t1 == 0.5
    assert config.routing.static_routes[0].target == "sip:127.0.0.1:5070"
    assert _missing_keys(EdgeConfig, yaml.safe_load(path.read_text()), "") == []


@pytest.mark.parametrize(
    ("media", "field", "reason"),
    [
        ({"port_start": 20001}, "media.port_start", "even"),
        ({"port_start": 20000, "port_end": 20005}, "media", "at least 8 ports"),
        ({"bind_host": "0.0.0.0"}, "media", "advertised_address is required"),
        ({"bind_host": "edge.example"}, "media.bind_host", "IP address"),
        ({"engine": "rust"}, "media.engine", "'rust'"),
        ({"inactivity_timeout": 0}, "media.inactivity_timeout", "greater than 0"),
    ],
)
def test_bad_media_settings_name_the_field(media: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"media": media}, environ={})
    assert field in str(err.value) and reason in str(err.value)


def test_error_names_field_value_and_reason() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"sip": {"listen": [{"transport": "sctp", "port": 70000}]}}, environ={})
    text = str(err.value)
    assert "sip.listen.0.transport" in text and "'sctp'" in text
    assert "sip.listen.0.port" in text and "70000" in text


def test_unknown_keys_and_bad_routes_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"calls\.no_such_key"):
        parse_config({"calls": {"no_such_key": 1}}, environ={})
    with pytest.raises(ConfigError, match="target"):
        parse_config({"routing": {"static_routes": [{"target": "not a uri"}]}}, environ={})
    with pytest.raises(ConfigError, match="t2"):
        parse_config({"sip": {"timers": {"t1": 5, "t2": 1}}}, environ={})


def test_environment_overrides_any_key() -> None:
    env = {"SMARTPBX__SIP__DOMAIN": "pbx.example", "SMARTPBX__CALLS__NO_ANSWER_TIMEOUT": "12.5"}
    config = parse_config({"sip": {"domain": "other"}}, environ=env)
    assert config.sip.domain == "pbx.example"
    assert config.calls.no_answer_timeout == 12.5


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("sip: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, environ={})


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(ROOT / "config" / "edge.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("log_level: LOUD\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "log_level" in capsys.readouterr().err
    assert main(["edge", "--config", str(bad)]) == 2


def test_token_command_prints_a_token_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    assert main(["token", "--role", "admin", "--name", "ops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token = lines[0].rsplit(" ", 1)[1]
    entry = yaml.safe_load(lines[2].strip().lstrip("- "))
    assert entry == {"name": "ops", "role": "admin", "sha256": hashlib.sha256(token.encode()).hexdigest()}
    parse_config({"admin": {"tokens": [entry]}}, environ={})
