"""Trigger resolution (extension over node default) and business hours, with fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pbx_edge.b2bua.business_hours import is_open
from pbx_edge.b2bua.no_answer import AiOnNoAnswer, AnswerWithAi, RejectCaller
from pbx_edge.b2bua.triggers import TRIGGERS, TriggerPolicy
from pbx_edge.ops.config import BusinessHours, ConfigError, EdgeConfig, load_config, parse_config


def _config(calls: dict[str, Any], extensions: dict[str, Any] | None = None) -> EdgeConfig:
    return parse_config({"calls": calls, "routing": {"extensions": extensions or {}}}, environ={})


def _policy(config: EdgeConfig) -> TriggerPolicy:
    return TriggerPolicy(config.calls, config.routing.extensions.get)


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_every_trigger_is_off_by_default() -> None:
    policy = _policy(_config({}))
    assert not any(policy.wants_ai("bob", t) for t in TRIGGERS)
    assert not policy.after_hours("bob", _at("2026-11-22T03:00:00"))  # no schedule: always open


def test_extension_fields_override_the_node_default_one_by_one() -> None:
    config = _config(
        {"ai_answer": {"no_answer": "ai", "busy": "ai"}},
        {"bob": {"ai_answer": {"busy": "off", "away": "ai"}}, "carol": {"no_answer_timeout": 5}},
    )
    policy = _policy(config)
    assert [t for t in TRIGGERS if policy.wants_ai("bob", t)] == ["no_answer", "away"]
    assert [t for t in TRIGGERS if policy.wants_ai("carol", t)] == ["no_answer", "busy"]
    assert [t for t in TRIGGERS if policy.wants_ai("dave", t)] == ["no_answer", "busy"]


def test_no_answer_policy_carries_the_reject_as_fallback() -> None:
    config = _config(
        {"ai_answer": {"no_answer": "ai"}, "no_answer_action": {"code": 486, "reason": "Busy Here"}},
        {"bob": {"ai_answer": {"no_answer": "off"}}},
    )
    policy = AiOnNoAnswer(config.calls.no_answer_action, _policy(config))

    class _Call:
        def __init__(self, callee: str) -> None:
            self.callee = callee

    reject = RejectCaller(486, "Busy Here")
    assert policy.on_no_answer(_Call("alice"), None) == AnswerWithAi("no_answer", reject)  # type: ignore[arg-type]
    assert policy.on_no_answer(_Call("bob"), None) == reject  # type: ignore[arg-type]


HOURS = BusinessHours(
    timezone="America/New_York", hours={"mon": ["09:00-12:00", "13:00-17:30"], "sat": ["10:00-24:00"]}
)


@pytest.mark.parametrize(
    ("utc", "open_"),
    [
        ("2026-11-23T14:00:00", True),  # Monday 09:00 EST: opening minute
        ("2026-11-23T13:59:00", False),  # 08:59
        ("2026-11-23T17:30:00", False),  # 12:30, lunch
        ("2026-11-23T22:29:00", True),  # 17:29
        ("2026-11-23T22:30:00", False),  # 17:30: the end is exclusive
        ("2026-11-24T15:00:00", False),  # Tuesday: not listed, closed
        ("2026-11-29T04:59:00", True),  # Saturday 23:59
        ("2026-11-29T05:00:00", False),  # Sunday 00:00
        ("2026-07-06T13:30:00", True),  # Monday 09:30 EDT (summer time: UTC-4)
        ("2026-07-06T12:30:00", False),  # 08:30 EDT
    ],
)
def test_business_hours_in_the_schedules_zone(utc: str, open_: bool) -> None:
    assert is_open(HOURS, _at(utc)) is open_


def test_after_hours_uses_the_extension_schedule_first() -> None:
    config = _config(
        {"business_hours": {"timezone": "UTC", "hours": {"mon": ["00:00-24:00"]}}},
        {"night": {"business_hours": {"timezone": "UTC", "hours": {"mon": ["22:00-24:00"]}}}},
    )
    policy = _policy(config)
    noon = _at("2026-11-23T12:00:00")
    assert not policy.after_hours("bob", noon)
    assert policy.after_hours("night", noon)


@pytest.mark.parametrize(
    ("calls", "field"),
    [
        ({"ai_answer": {"busy": "yes"}}, "calls.ai_answer.busy"),
        ({"ai_answer": {"lunch": "ai"}}, "calls.ai_answer.lunch"),
        ({"business_hours": {"timezone": "Mars/Olympus"}}, "calls.business_hours.timezone"),
        ({"business_hours": {"hours": {"mon": ["9-17"]}}}, "calls.business_hours.hours"),
        ({"business_hours": {"hours": {"mon": ["17:00-09:00"]}}}, "calls.business_hours.hours"),
        ({"business_hours": {"hours": {"mon": ["09:00-24:30"]}}}, "calls.business_hours.hours"),
        ({"business_hours": {"hours": {"monday": ["09:00-17:00"]}}}, "calls.business_hours.hours.monday"),
    ],
)
def test_config_errors_name_the_field(calls: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(calls)
    assert field in str(caught.value)


def test_extension_trigger_errors_name_the_extension() -> None:
    with pytest.raises(ConfigError) as caught:
        _config({}, {"bob": {"ai_answer": {"away": "maybe"}}})
    assert "routing.extensions.bob.ai_answer.away" in str(caught.value)


def test_a_bare_yaml_off_means_off_and_on_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("calls:\n  ai_answer: {no_answer: ai, busy: off}\n")
    triggers = load_config(path, environ={}).calls.ai_answer
    assert (triggers.no_answer, triggers.busy, triggers.away) == ("ai", "off", None)
    path.write_text("calls:\n  ai_answer: {busy: on}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "calls.ai_answer.busy" in str(caught.value)
    env = {"SMARTPBX__CALLS__AI_ANSWER__AWAY": "off"}
    assert parse_config({}, environ=env).calls.ai_answer.away == "off"
