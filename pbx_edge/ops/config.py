"""Edge node configuration: one YAML file validated by pydantic at start-up.

A bad file stops the node with a message naming the field, the bad value and why
(:class:`ConfigError`). Environment variables ``SMARTPBX__SECTION__KEY=value`` override any key
(``__`` separates levels), so secrets need not live in the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pbx_edge.ai_link.config import AiLinkConfig

ENV_PREFIX = "SMARTPBX__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Strict):
    transport: Literal["udp", "tcp"] = "udp"
    host: str = "127.0.0.1"
    port: int = Field(5060, ge=1, le=65535)


class TimerConfig(_Strict):
    """RFC 3261 §17 base timers in seconds."""

    t1: float = Field(0.5, gt=0, le=10)
    t2: float = Field(4.0, gt=0, le=60)
    t4: float = Field(5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _t2_not_below_t1(self) -> TimerConfig:
        if self.t2 < self.t1:
            raise ValueError(f"t2 ({self.t2}) must be >= t1 ({self.t1})")
        return self


class OptionsPingConfig(_Strict):
    enabled: bool = False
    interval: float = Field(30.0, gt=0)
    failures_before_dead: int = Field(2, ge=1)


class SipConfig(_Strict):
    listen: list[ListenConfig] = Field(
        default_factory=lambda: [ListenConfig(transport="udp"), ListenConfig(transport="tcp")]
    )
    domain: str = "pbx.local"
    advertised_host: str | None = None
    timers: TimerConfig = TimerConfig()
    max_message_size: int = Field(65535, ge=1024, le=1_048_576)
    user_agent: str = "SmartPBX-Edge/0.1"
    min_expires: int = Field(60, ge=0)
    max_expires: int = Field(3600, ge=1)
    default_expires: int = Field(3600, ge=1)
    options_ping: OptionsPingConfig = OptionsPingConfig()

    @field_validator("listen")
    @classmethod
    def _at_least_one(cls, value: list[ListenConfig]) -> list[ListenConfig]:
        if not value:
            raise ValueError("at least one listen address is required")
        return value


class NoAnswerAction(_Strict):
    """What the caller gets when the callee does not answer in time and no AI attendant answers
    (``ai_answer.no_answer`` off, or the AI layer unavailable)."""

    action: Literal["reject"] = "reject"
    code: int = Field(480, ge=400, le=699)
    reason: str = "Temporarily Unavailable"


TriggerAction = Literal["ai", "off"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RANGE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


class AiAnswerTriggers(_Strict):
    """When the AI attendant answers the caller (see pbx_edge/b2bua/attendant.py): ``ai``, or
    ``off`` for today's behaviour (no_answer: reject with ``no_answer_action``; unregistered: 480;
    busy: the callee's 486/600 relayed; away and after_hours: ring as usual). In an extension a
    missing (null) field takes the node default (``calls.ai_answer``), where it means ``off``."""

    no_answer: TriggerAction | None = None  # the callee did not answer within no_answer_timeout
    unregistered: TriggerAction | None = None  # a configured extension with no registered contact
    busy: TriggerAction | None = None  # the callee answered 486 or 600
    away: TriggerAction | None = None  # set with PUT /api/extensions/{ext}/away
    after_hours: TriggerAction | None = None  # outside ``business_hours``

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads a bare ``off`` as false: take it as the ``off`` it was written as."""
        return "off" if value is False else value


class BusinessHours(_Strict):
    """Opening hours: per weekday a list of ``HH:MM-HH:MM`` ranges in ``timezone`` (end exclusive,
    ``24:00`` allowed); a day not listed is closed all day."""

    timezone: str = "UTC"
    hours: dict[Weekday, list[str]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as 'Europe/Paris')"
            ) from None
        return value

    @field_validator("hours")
    @classmethod
    def _ranges(cls, value: dict[Weekday, list[str]]) -> dict[Weekday, list[str]]:
        for day, ranges in value.items():
            for index, text in enumerate(ranges):
                match = _TIME_RANGE.match(text)
                if match is None:
                    raise ValueError(f"{day}[{index}]: {text!r} is not a range 'HH:MM-HH:MM'")
                start_h, start_m, end_h, end_m = (int(g) for g in match.groups())
                if end_h == 24 and end_m:
                    raise ValueError(f"{day}[{index}]: {text!r} ends after 24:00")
                if end_h * 60 + end_m <= start_h * 60 + start_m:
                    raise ValueError(f"{day}[{index}]: {text!r} must end after it starts")
        return value

    def minutes(self, day: Weekday) -> list[tuple[int, int]]:
        """The day's ranges as (start, end) minutes since midnight."""
        result = []
        for text in self.hours.get(day, []):
            start, end = text.split("-")
            result.append((_minute_of(start), _minute_of(end)))
        return result


def _minute_of(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


class ExtensionConfig(_Strict):
    no_answer_timeout: float | None = Field(None, gt=0)
    no_answer_action: NoAnswerAction | None = None
    ai_answer: AiAnswerTriggers | None = None  # per-trigger overrides of calls.ai_answer
    business_hours: BusinessHours | None = None  # overrides calls.business_hours


class StaticRoute(_Strict):
    """Calls whose user part starts with ``prefix`` go to ``target`` (a gateway or trunk URI)."""

    prefix: str = ""
    target: str
    strip: int = Field(0, ge=0)
    add_prefix: str = ""

    @field_validator("target")
    @classmethod
    def _target_is_sip_uri(cls, value: str) -> str:
        from pbx_edge.sip.uri import SipUri

        try:
            uri = SipUri.parse(value)
        except ValueError as exc:
            raise ValueError(f"not a SIP URI: {exc}") from exc
        if uri.scheme not in ("sip", "sips") or not uri.host:
            raise ValueError("target must be a sip: URI with a host")
        return value


class CallsConfig(_Strict):
    no_answer_timeout: float = Field(30.0, gt=0)
    no_answer_action: NoAnswerAction = NoAnswerAction()
    max_calls: int = Field(10_000, ge=1)
    supported_extensions: list[str] = Field(default_factory=lambda: ["100rel", "timer", "replaces"])
    ai_answer: AiAnswerTriggers = AiAnswerTriggers()  # node default of each AI attendant trigger
    business_hours: BusinessHours | None = None  # None: always open (after_hours never fires)


class RoutingConfig(_Strict):
    static_routes: list[StaticRoute] = Field(default_factory=list)
    extensions: dict[str, ExtensionConfig] = Field(default_factory=dict)
    # Called numbers (Request-URI user parts) the AI answers at once in ``ivr`` mode, ringing no
    # one; while the AI layer is unavailable they are routed as any other number.
    ivr_numbers: list[str] = Field(default_factory=list)

    @field_validator("ivr_numbers")
    @classmethod
    def _ivr_numbers(cls, value: list[str]) -> list[str]:
        for number in value:
            if not number.strip() or number != number.strip():
                raise ValueError(f"an IVR number must be a non-empty user part, got {number!r}")
        return value


class RuntimeConfig(_Strict):
    """Process tuning; see pbx_edge/gc_policy.py for why the GC is driven by a timer."""

    gc_young_interval: float = Field(1.0, gt=0, le=60)
    gc_full_interval: float = Field(600.0, gt=0)
    uvloop: bool = True


class RecordingConfig(_Strict):
    """Per-call stereo WAV recording (caller left, callee right), off by default."""

    enabled: bool = False
    directory: Path = Path("recordings")


class MediaConfig(_Strict):
    """RTP handling; see pbx_edge/media/relay.py and pbx_edge/media/ports.py (8 ports per call)."""

    mode: Literal["relay", "passthrough"] = "relay"
    bind_host: str = "127.0.0.1"
    advertised_address: str | None = None  # put in SDP c=; default bind_host
    port_start: int = Field(20000, ge=1024, le=65534)
    port_end: int = Field(39999, ge=1031, le=65535)
    max_calls: int | None = Field(None, ge=1)  # default: what the range holds
    engine: Literal["auto", "native", "python"] = "auto"
    native_threads: int = Field(1, ge=1, le=64)
    inactivity_timeout: float = Field(60.0, gt=0)  # no RTP either way for this long -> BYE both legs
    hold_timeout: float = Field(3600.0, gt=0)  # the same while the call is on hold
    port_cooldown: float = Field(30.0, ge=0)  # an unbindable block is retried after this
    tap_queue_frames: int = Field(250, ge=1)  # 20 ms frames buffered per tap subscriber
    recording: RecordingConfig = RecordingConfig()

    @field_validator("port_start")
    @classmethod
    def _even_start(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (RTP on even ports, RTCP on the next odd one)")
        return value

    @field_validator("bind_host", "advertised_address")
    @classmethod
    def _ip_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IP address") from None
        return value

    @model_validator(mode="after")
    def _range_holds_a_call(self) -> MediaConfig:
        if self.port_end - self.port_start + 1 < 8:
            raise ValueError(
                f"port_start..port_end ({self.port_start}..{self.port_end}) must hold at least 8 ports"
            )
        address = self.advertised_address or self.bind_host
        if ipaddress.ip_address(address).is_unspecified:
            raise ValueError("advertised_address is required when bind_host is a wildcard address")
        return self


class LoggingConfig(_Strict):
    """structlog output: JSON lines, or a readable console format when ``auto`` and a terminal."""

    format: Literal["auto", "json", "console"] = "auto"
    file: Path | None = None  # also append JSON lines here


class EventsConfig(_Strict):
    recent: int = Field(1000, ge=1)  # events kept in memory for /api/events


class WebhookTarget(_Strict):
    url: str
    events: list[str] = Field(default_factory=lambda: ["*"])  # names or prefixes ending in '*'
    secret: str | None = None  # HMAC-SHA256 key; prefer secret_env
    secret_env: str | None = None  # name of the environment variable holding the key
    timeout: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class WebhooksConfig(_Strict):
    targets: list[WebhookTarget] = Field(default_factory=list)
    outbox_url: str = "sqlite:///data/outbox.sqlite3"  # SQLAlchemy URL; postgresql://... in production
    backoff_initial: float = Field(1.0, gt=0)  # seconds before the first retry
    backoff_max: float = Field(300.0, gt=0)  # retry interval cap; deliveries are retried until they land
    signature_header: str = "X-SmartPBX-Signature"


class CdrConfig(_Strict):
    url: str = "sqlite:///data/cdr.sqlite3"  # SQLAlchemy URL


class AdminToken(_Strict):
    """A bearer token, stored as the hex SHA-256 of the token (never the token itself)."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["viewer", "admin"] = "viewer"


class AdminConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tokens: list[AdminToken] = Field(default_factory=list)
    # The agents' tool-call audit log read by GET /api/tools/audit (SQLAlchemy URL; written by ai_serve)
    tool_audit_url: str = "sqlite:///data/tool_audit.sqlite3"


class MetricsConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)


class RateLimitConfig(_Strict):
    """New INVITEs per source IP: token bucket; beyond ``drop_above`` per second, silence."""

    invites_per_second: float = Field(10.0, gt=0)
    burst: int = Field(20, ge=1)
    drop_above: float = Field(100.0, gt=0)  # per source: above this, excess is dropped, not answered
    retry_after: int = Field(5, ge=1)
    allow: list[str] = Field(default_factory=list)  # IPs or CIDRs never limited (trunks)

    @field_validator("allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value


class ResourcesConfig(_Strict):
    memory_watermark_mb: float | None = Field(None, gt=0)  # RSS above this: new calls get 503
    check_interval: float = Field(1.0, gt=0)


class ShutdownConfig(_Strict):
    drain_timeout: float = Field(30.0, ge=0)  # SIGTERM: live calls get this long to end by themselves


class EdgeConfig(_Strict):
    node_id: str = "edge-1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    runtime: RuntimeConfig = RuntimeConfig()
    sip: SipConfig = SipConfig()
    calls: CallsConfig = CallsConfig()
    routing: RoutingConfig = RoutingConfig()
    media: MediaConfig = MediaConfig()
    logging: LoggingConfig = LoggingConfig()
    events: EventsConfig = EventsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    cdr: CdrConfig = CdrConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    resources: ResourcesConfig = ResourcesConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    ai: AiLinkConfig = AiLinkConfig()


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad field, its value and the reason."""


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if path:
            node[path[-1]] = yaml.safe_load(value) if value else value
    return data


def parse_config(data: dict[str, Any] | None, environ: dict[str, str] | None = None) -> EdgeConfig:
    merged = _apply_env(dict(data or {}), dict(os.environ if environ is None else environ))
    try:
        return EdgeConfig.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{where}: {err['msg']}{shown}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> EdgeConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return parse_config(data, environ)
