"""The ``ai:`` config section: defaults, URLs, overrides by callee prefix, field-level errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pbx_edge.ai_link.config import AiLinkConfig


def test_defaults() -> None:
    config = AiLinkConfig()
    assert not config.enabled
    assert config.max_streams == 50 and config.batch_frames == 5 and config.queue_frames == 250
    assert config.stream_url("c1") == "ws://127.0.0.1:8000/v1/calls/c1/stream"


def test_stream_url_quotes_the_call_id_and_keeps_a_base_path() -> None:
    config = AiLinkConfig(url="wss://ai.example.com/edge/")
    assert config.stream_url("a/b c") == "wss://ai.example.com/edge/v1/calls/a%2Fb%20c/stream"


def test_longest_callee_prefix_wins() -> None:
    config = AiLinkConfig(
        language="en", languages={"82": "ko", "8": "auto"}, mode="transcribe", modes={"100": "ivr"}
    )
    assert config.language_for("8210") == "ko"
    assert config.language_for("810") == "auto"
    assert config.language_for("1000") == "en"
    assert config.mode_for("1001") == "ivr"
    assert config.mode_for("2000") == "transcribe"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"url": "http://x"}, "url", "ws:// or wss://"),
        ({"url": "ws://"}, "url", "with a host"),
        ({"url": "ws://h:99999"}, "url", "not a URL"),
        ({"url": "ws://h/?a=1"}, "url", "query"),
        ({"path": "/v1/stream"}, "path", "{call_id}"),
        ({"path": "v1/{call_id}"}, "path", "start with '/'"),
        ({"path": "/{call_id}/{leg}"}, "path", "no other"),
        ({"reconnect_initial": 5, "reconnect_max": 1}, "", "reconnect_max (1.0) must be >="),
        ({"batch_frames": 0}, "batch_frames", "greater than or equal to 1"),
        ({"languages": {"1": "fr"}}, "languages.1", "'en', 'ko' or 'auto'"),
        ({"bogus": 1}, "bogus", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        AiLinkConfig.model_validate(data)
    error = info.value.errors()[0]
    assert ".".join(str(p) for p in error["loc"]) == field
    assert message in error["msg"]
