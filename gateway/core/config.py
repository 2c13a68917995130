"""Configuration: one typed model, loaded once, refused early with a message that says the fix.

Secrets are never written in the file: a secret field holds a reference ``${ENV_VAR}`` and the
value is read from the environment at load time. A channel whose secret is missing stops
start-up (fail closed). What every channel has is here (``ChannelConfig``); the fields of each
type are its adapter's (``adapters/<platform>/config.py``), and the assembly's
``gateway.config_loading`` puts them together. The YAML shape::

    redis_url: ${REDIS_URL}            # optional; default $REDIS_URL, else an embedded Redis
    public_url: https://gw.example.com # what platforms call (set-webhook, Slack manifest)
    bots:                              # OCS chatbots, each with its own credentials
      clinic:
        base_url: https://www.openchatstudio.com
        chatbot_id: 6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23
        auth: oauth                    # oauth | embed_key | keyless
        client_id: ${CLINIC_CLIENT_ID}
        client_secret: ${CLINIC_CLIENT_SECRET}
    channels:
      support:
        type: webhook                  # an adapter's type (adapters/__init__.py)
        bot: clinic
        secret: ${SUPPORT_WEBHOOK_SECRET}
        callback_url: https://app.example.com/ocs-replies
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, Self, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.core.errors import ConfigError

__all__ = [
    "BotConfig",
    "BudgetLimits",
    "ChannelConfig",
    "ChannelModels",
    "CoalesceConfig",
    "EnvStr",
    "GatewayConfig",
    "HttpUrl",
    "RedisSentinelConfig",
    "RedisTls",
    "Secret",
    "SecretRef",
    "SpeechConfig",
    "WorkerTuning",
    "read_config",
]

CONFIG_ENV = "OCS_GATEWAY_CONFIG"
#: Overrides ``worker.metrics_port`` (a platform that assigns ports per process sets it).
METRICS_PORT_ENV = "OCS_GATEWAY_METRICS_PORT"
_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ANY_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: uvicorn's variable for ``forwarded_allow_ips``, read when the file leaves the field unset.
FORWARDED_ALLOW_IPS_ENV = "FORWARDED_ALLOW_IPS"
#: Whose ``X-Forwarded-*`` headers are believed when neither the file nor the variable says (uvicorn's default).
LOOPBACK_PROXIES = ("127.0.0.1", "::1")
#: The shortest ``admin_token`` accepted: guessing is throttled, but a short token still falls.
MIN_ADMIN_TOKEN_CHARS = 24


class Secret:
    """A secret value that prints as asterisks (Starlette's ``datastructures.Secret``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _secret_from_reference(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        # Not TypeError: pydantic reports a ValueError as a validation error, a TypeError it does not.
        raise ValueError("must be a reference to an environment variable, like ${MY_SECRET}")
    match = _REF.match(value.strip())
    if not match:
        raise ValueError(
            "secrets are not written in the config file: put the value in an environment "
            "variable and write its name here, like ${MY_SECRET}"
        )
    name = match.group(1)
    resolved = os.environ.get(name)
    if not resolved:
        raise ValueError(f"environment variable {name} is not set (or empty): export it")
    return Secret(resolved)


def _expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` in a plain (non-secret) string; a missing variable is an error."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set: export it")
        return os.environ[name]

    return _ANY_REF.sub(substitute, value)


def _http_url(value: Any) -> str:
    value = _expand_env(value)
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL: write it like https://host/path")
    return str(value).rstrip("/")


SecretRef = Annotated[Secret, BeforeValidator(_secret_from_reference)]
EnvStr = Annotated[str, BeforeValidator(_expand_env)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class BudgetLimits(_Model):
    """How many OCS requests the gateway may make (docs/OCS.md §3; ``gateway.ocs.budget``).

    Windows are aligned fixed windows like OCS's own limiter. Bots that share a base URL share
    its bucket (the hosted WAF counts the egress IP), so give them the same ``window_s``.
    """

    #: Per OCS base URL, all bots and processes together: the hosted WAF rule (docs/OCS.md §3.2).
    requests_per_window: int = Field(default=2000, ge=1)
    #: Per OCS session: the ``chat_api`` throttle (docs/OCS.md §3.1).
    session_requests_per_window: int = Field(default=300, ge=1)
    #: Session starts per channel (OAuth/embed-key starts share one bucket, docs/OCS.md §3.1).
    starts_per_window: int = Field(default=300, ge=1)
    window_s: int = Field(default=300, ge=1)
    #: When a bucket runs short, lower priorities yield first: watches may use at
    #: most this share of it, sends and starts at most send_share, waiting turns all of it.
    background_share: float = Field(default=0.6, gt=0.0, le=1.0)
    send_share: float = Field(default=0.9, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _background_yields_first(self) -> BudgetLimits:
        if self.background_share > self.send_share:
            raise ValueError("background_share must not exceed send_share (watches yield first)")
        return self


class SpeechConfig(_Model):
    """A bot's speech service: any OpenAI-compatible audio API (OpenAI, Azure OpenAI, Groq, a
    self-hosted whisper server) turns voice notes into words and answers into voice notes
    (docs/VOICE.md). Without it a voice note gets the channel's ``voice_notice`` and nothing
    reaches OCS."""

    #: Where ``/audio/transcriptions`` and ``/audio/speech`` live (e.g. https://api.groq.com/openai/v1).
    base_url: HttpUrl = "https://api.openai.com/v1"
    #: Sent as ``Authorization: Bearer`` (or in ``api_key_header``); none for a server without auth.
    api_key: SecretRef | None = None
    #: ``Authorization`` (Bearer, OpenAI and Groq) or ``api-key`` (Azure OpenAI's key header).
    api_key_header: Literal["Authorization", "api-key"] = "Authorization"
    #: Azure OpenAI's ``api-version`` query parameter, sent with every call when set.
    api_version: str | None = None
    transcription_model: str = "whisper-1"
    #: The speakers' language (ISO-639-1, e.g. ``sw``): better and faster transcripts; unset: detected.
    language: str | None = Field(default=None, min_length=2, max_length=12)
    #: Words the transcriber should expect (names, jargon), sent as ``prompt``.
    prompt: str | None = None
    #: off: text answers only; reciprocal: a voice note too when the user spoke; always: every answer.
    voice_replies: Literal["off", "reciprocal", "always"] = "off"
    speech_model: str = "tts-1"
    voice: str = "alloy"
    #: One call's bound (transcription or speech), the answer's last byte included.
    timeout_s: float = Field(default=60.0, gt=0)
    #: The largest audio file downloaded and sent (OpenAI's and Groq's upload limit is 25 MB);
    #: a larger one is refused with ``voice_unheard_notice``, before its download when the
    #: platform says its size.
    max_audio_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    #: The longest voice note transcribed (gpt-4o-transcribe takes at most 1,500 s).
    max_audio_seconds: float = Field(default=1500.0, gt=0)
    #: Answers are spoken up to this many characters (``/audio/speech`` takes at most 4,096); the
    #: written answer always carries all of it.
    max_speech_chars: int = Field(default=4096, ge=1, le=4096)


class BotConfig(_Model):
    """One OCS chatbot and how the gateway is admitted to it (docs/OCS.md §2.4)."""

    base_url: HttpUrl = "https://www.openchatstudio.com"
    chatbot_id: str
    #: oauth: client-credentials token (the intended server path); embed_key: the widget key
    #: with the Origin it is bound to; keyless: no credential (being retired by OCS, docs/OCS.md §2.4.4).
    auth: Literal["oauth", "embed_key", "keyless"] = "oauth"
    client_id: EnvStr | None = None
    client_secret: SecretRef | None = None
    scopes: str = "chat:start sessions:read sessions:write files:read"
    embed_key: SecretRef | None = None
    embed_origin: HttpUrl | None = None
    #: Our own limit on waiting for one reply: OCS polls an unknown task as "processing" forever.
    task_timeout_s: float = 180.0
    #: After the hosted WAF refuses a request (its HTML 403, docs/OCS.md §3.2), every process pauses
    #: its requests to this OCS this long; the WAF says nothing more precise.
    waf_backoff_s: float = Field(default=60.0, gt=0)
    #: Read-only management key used to download reply attachments in non-OAuth modes.
    api_key: SecretRef | None = None
    #: The largest reply attachment downloaded (refused by its Content-Length, cut off while it
    #: streams); OCS itself stores files up to 50 MB (docs/OCS.md §3.3).
    max_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    #: This bot's share of OCS's request limits (per base URL, session, start channel).
    budget: BudgetLimits = BudgetLimits()
    #: Voice notes in as words, answers back as voice (docs/VOICE.md); None: no speech service.
    speech: SpeechConfig | None = None

    @field_validator("chatbot_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a UUID: copy the chatbot's public id from OCS") from None

    @model_validator(mode="after")
    def _credentials_for_mode(self) -> BotConfig:
        if self.auth == "oauth" and (self.client_id is None or self.client_secret is None):
            raise ValueError("auth: oauth needs client_id and client_secret (${ENV} references)")
        if self.auth == "embed_key" and (self.embed_key is None or self.embed_origin is None):
            raise ValueError("auth: embed_key needs embed_key and embed_origin")
        return self


class CoalesceConfig(_Model):
    """How the messages of a burst become one OCS turn (docs/CONFIG.md, *Bursts*)."""

    #: ``while_busy``: messages that arrive while the conversation's previous turn is with OCS
    #: are sent together as its next turn; ``off``: one OCS turn per message.
    mode: Literal["off", "while_busy"] = "while_busy"
    #: Wait this long after a message before its turn is sent, for the rest of a burst to join
    #: it. Every reply waits that much longer, so 0 unless measurement says otherwise.
    quiet_ms: int = Field(default=0, ge=0, le=10_000)
    #: A turn covers at most this many messages and this many characters of joined text (the
    #: first message always goes, whatever its size); the rest wait for the next turn.
    max_messages: int = Field(default=10, ge=1, le=100)
    max_chars: int = Field(default=8000, ge=1)

    @property
    def depth(self) -> int:
        """How many inbox items a turn may cover."""
        return self.max_messages if self.mode == "while_busy" else 1


class ChannelConfig(_Model):
    """What every channel has, whatever its platform. Each adapter extends it with its own
    fields and ``type`` (``adapters/<platform>/config.py``); core knows none of them."""

    bot: str
    #: Bursts: see ``CoalesceConfig``.
    coalesce: CoalesceConfig = CoalesceConfig()
    #: Text sent when a turn fails for good (it is also parked in the dead-letter store).
    failure_notice: str = "Sorry, something went wrong on our side. Please try again in a moment."
    reset_notice: str = "Conversation reset. Send a message to start again."
    #: Sent before the answer when a file the user sent could not be attached (too big, a type
    #: OCS refuses, the platform would not give it); ``{files}`` names them. OCS is told only
    #: that there was a file.
    unattached_notice: str = "I couldn't open {files}, so I answered your words without it."
    #: Sent when OCS takes longer than the bot's task_timeout_s; the answer follows later.
    slow_notice: str = "This is taking longer than usual; I'll send the answer as soon as it is ready."
    #: How long a reply keeps being retried while the platform (or callback) is down or
    #: throttling, backing off exponentially, before it is parked in the dead-letter store.
    delivery_retry_budget_s: float = Field(default=3600.0, gt=0)
    #: Sent for a voice note when the bot has no ``speech`` service (or it refuses our key);
    #: nothing reaches OCS from a message that was only a voice note.
    voice_notice: str = "I can't listen to voice messages here yet — please type your question."
    #: Sent for a voice note that cannot be heard: too long or too large, unreadable, silent.
    voice_unheard_notice: str = "I couldn't make out that voice message. Please try again, or type your question."
    #: Show the user what was heard before the answer comes (``echo_template``, ``{transcript}``).
    echo_transcript: bool = False
    echo_template: str = "🎤 “{transcript}”"
    #: Which adapter serves the channel; an adapter's model narrows it to its own ``Literal``.
    type: str


#: Channel ``type`` → the model of its channels' settings.
ChannelModels = Mapping[str, type[ChannelConfig]]


def _channels_adapter(models: ChannelModels) -> TypeAdapter[dict[str, ChannelConfig]] | None:
    """Validates ``channels:`` by each entry's ``type`` (a discriminated union: an error names
    the channel and its type, ``channels.<name>.<type>.<field>``); None when no type is known."""
    if not models:
        return None
    union = Union[tuple(models.values())]  # type: ignore[valid-type]  # noqa: UP007 - a union built from the registry
    adapter: TypeAdapter[dict[str, ChannelConfig]] = TypeAdapter(
        dict[str, Annotated[union, Field(discriminator="type")]]  # type: ignore[valid-type]
    )
    return adapter


class WorkerTuning(_Model):
    """How the workers pace themselves; the defaults suit production, tests shrink them."""

    #: Dramatiq threads: they only hand conversations to the turn runner, so a few suffice.
    threads: int = 4
    #: The longest gap between two task polls; the gaps themselves follow the bot's learned
    #: completion times (workers/poll_schedule.py).
    poll_max_s: float = 5.0
    #: A process's hold on a conversation it owns, renewed (all of them in one round trip) every
    #: third of it; a killed process's conversations are adopted by another once it lapses. It is
    #: also how long a stopped (SIGSTOP, a frozen VM) process may go unheard before it loses them:
    #: 4 s with the grace and sweep below adopts a killed worker's conversations within about 7 s.
    lease_ttl_s: float = Field(default=4.0, gt=0)
    #: A conversation whose next step is this late, with no owner, is adopted by the sweeper. The
    #: grace spares the sweepers a conversation whose wake-up is still on its way in the queue.
    stall_grace_s: float = Field(default=1.5, ge=0)
    sweep_interval_s: float = Field(default=1.5, gt=0)
    #: Conversations one process owns at once (waiting turns included) and steps it runs at once.
    max_in_flight: int = Field(default=10_000, ge=1)
    max_concurrent_steps: int = Field(default=256, ge=1)
    #: A send whose outcome is unknown is sent again only if the session's history still lacks
    #: it after this long (OCS records the message when its worker picks the task up).
    reconcile_grace_s: float = 30.0
    #: While turns wait for an OCS that does not answer, it is probed this often (one cheap
    #: request, in the budget); the first answer wakes them, whatever their backoff said.
    ocs_probe_interval_s: float = Field(default=2.0, gt=0)
    #: Attempts of one step (OCS 5xx, platform errors) before the turn is dead-lettered.
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    dedup_ttl_s: int = 7 * 24 * 3600
    #: Bot-initiated messages: poll a session every watch_interval_s while its user was active
    #: in the last watch_recent_s, then less often as the silence grows (up to
    #: watch_max_interval_s), and not at all after watch_window_s.
    watch_interval_s: float = 30.0
    watch_recent_s: float = 300.0
    watch_max_interval_s: float = 1800.0
    watch_window_s: float = 24 * 3600
    watch_per_sweep: int = 50
    #: Seconds between a worker's heartbeats (gateway/store/heartbeats.py); a worker silent for
    #: three of them is reported dead.
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    #: The worker's own HTTP port for /metrics, /livez and /readyz (workers/http.py):
    #: None = none, 0 = any free port (logged). ``OCS_GATEWAY_METRICS_PORT`` overrides it.
    metrics_port: int | None = Field(default=None, ge=0, le=65535, validate_default=True)
    #: The address that listener binds (all interfaces: Prometheus scrapes from another host).
    metrics_host: str = "0.0.0.0"

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port_from_env(cls, value: Any) -> Any:
        override = os.environ.get(METRICS_PORT_ENV, "").strip()
        return int(override) if override else value


class RedisTls(_Model):
    """TLS to Redis (a ``rediss://`` URL, or Sentinel with ``tls: true``): the CA that signs
    the server's certificate and, where the server asks for one, this client's certificate."""

    #: PEM bundle of the CA(s) to trust; None: the system's.
    ca_file: EnvStr | None = None
    #: This client's certificate and key (PEM), for a server that verifies clients.
    cert_file: EnvStr | None = None
    key_file: EnvStr | None = None
    #: Check that the certificate names the host connected to (off only for IP-addressed servers
    #: whose certificate names something else).
    check_hostname: bool = True

    @model_validator(mode="after")
    def _cert_with_key(self) -> RedisTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("redis_tls: cert_file and key_file go together (the client certificate and its key)")
        return self


class RedisSentinelConfig(_Model):
    """A primary found through Redis Sentinel (gateway/store/connect.py): every process asks the
    sentinels which server is the master of ``master_name`` and asks again after a failover."""

    master_name: EnvStr
    #: ``host:port`` of each sentinel (three or more in production: a majority must agree).
    sentinels: tuple[EnvStr, ...] = Field(min_length=1)
    #: The ACL user and password of the data servers (primary and replicas).
    username: EnvStr | None = None
    password: SecretRef | None = None
    #: The sentinels' own user and password (``requirepass`` in sentinel.conf), when they have one.
    sentinel_username: EnvStr | None = None
    sentinel_password: SecretRef | None = None
    #: TLS to the sentinels and the data servers (with ``redis_tls``'s files).
    tls: bool = False
    db: int = Field(default=0, ge=0)

    @field_validator("sentinels")
    @classmethod
    def _host_port(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"sentinel {entry!r}: write host:port, like 10.0.0.1:26379")
        return value

    def addresses(self) -> list[tuple[str, int]]:
        return [(host.strip("[]"), int(port)) for host, _, port in (entry.rpartition(":") for entry in self.sentinels)]


class GatewayConfig(_Model):
    """The whole configuration. Which channel types exist is the adapters' business: this model
    knows none (``channel_models`` is empty), and the assembly's subclass,
    ``gateway.config_loading.GatewayConfig``, names every adapter's model."""

    #: Channel ``type`` → its model; a subclass sets it (core knows no platform).
    channel_models: ClassVar[ChannelModels] = MappingProxyType({})
    _channels_by_type: ClassVar[TypeAdapter[dict[str, ChannelConfig]] | None] = None

    redis_url: EnvStr | None = None
    public_url: HttpUrl | None = None
    max_body_bytes: int = 1_048_576
    #: Dead letters older than this are dropped (gateway/store/dead_letters.py).
    dead_letter_retention_days: float = Field(default=14.0, gt=0)
    #: Refuse to start unless Redis fsyncs before replying (appendonly yes + appendfsync always),
    #: or ``durable_replicas`` makes acknowledgements wait for replicas.
    require_durable_redis: bool = False
    #: TLS files for ``rediss://`` and Sentinel with ``tls: true``.
    redis_tls: RedisTls | None = None
    #: Find the primary through Sentinel (``redis_url`` is then not used).
    redis_sentinel: RedisSentinelConfig | None = None
    #: Acknowledge (edge 200, ledger steps before an OCS send, delivery marks) only once this many
    #: replicas hold the write: ``WAIT`` after it (gateway/store/replication.py).
    durable_replicas: int = Field(default=0, ge=0)
    #: How long one ``WAIT`` may take; past it the write counts as not replicated (503, retried).
    durable_timeout_ms: int = Field(default=1000, gt=0)
    #: Wait for the write to be on disk too (``WAITAOF 1 durable_replicas``, Redis 7.2+).
    durable_on_disk: bool = False
    #: Private hosts/CIDRs (optionally ``:port``) that downloads by URL (a webhook user's file, a
    #: reply file outside OCS's origin) may reach (gateway/core/fetching.py).
    fetch_allowlist: tuple[str, ...] = ()
    #: Log message text, platform user ids and raw conversation keys (gateway/core/logs.py); off,
    #: lines carry a short hash of the conversation key and SDK payload dumps are withheld.
    log_message_text: bool = False
    #: The operator console at /admin (gateway/edge/admin/) exists only when this is set; at
    #: least ``MIN_ADMIN_TOKEN_CHARS`` long (it guards message text and dead-letter drops).
    admin_token: SecretRef | None = None
    #: The proxies whose ``X-Forwarded-For``/``-Proto`` the web process believes (addresses or
    #: networks, ``*`` for any; uvicorn's semantics): a request from one of them counts as coming
    #: from the client the header names, e.g. for the console's failure throttle. Unset:
    #: ``$FORWARDED_ALLOW_IPS``, else loopback only.
    forwarded_allow_ips: tuple[str, ...] = Field(default=None, validate_default=True)
    #: When set, ``/metrics`` (web process and workers) and the web's channel listing at ``/``
    #: answer only ``Authorization: Bearer <token>`` (Prometheus: ``authorization:
    #: {credentials_file: …}``): the web ones are on the public port, and their channel and bot
    #: names are not for everyone.
    metrics_token: SecretRef | None = None
    bots: dict[str, BotConfig] = Field(default_factory=dict)
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    worker: WorkerTuning = WorkerTuning()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._channels_by_type = _channels_adapter(cls.channel_models)

    @field_validator("channels", mode="before")
    @classmethod
    def _channel_models(cls, value: Any) -> Any:
        """Each entry becomes the model its ``type`` names; entries that already are a
        ``ChannelConfig`` (built in code) stay as they are."""
        if not isinstance(value, Mapping) or all(isinstance(entry, ChannelConfig) for entry in value.values()):
            return value
        if cls._channels_by_type is None:
            raise ValueError("unknown channel type: no channel types are registered (load the configuration "
                             "with gateway.config_loading, which knows the adapters)")
        return cls._channels_by_type.validate_python(value)

    @model_validator(mode="after")
    def _channels_name_known_bots(self) -> GatewayConfig:
        for name, channel in self.channels.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"channel name {name!r}: use letters, digits, '-', '_' or '.'")
            if channel.bot not in self.bots:
                known = ", ".join(sorted(self.bots)) or "none defined"
                raise ValueError(f"channel {name!r} uses bot {channel.bot!r}, which is not under bots: ({known})")
        return self

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, value: Secret | None) -> Secret | None:
        if value is not None and len(value.reveal()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters (a short one can be "
                "guessed); make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""
            )
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _forwarded_allow_ips_default(cls, value: Any) -> Any:
        if value is None:
            value = os.environ.get(FORWARDED_ALLOW_IPS_ENV, "").strip() or LOOPBACK_PROXIES
        if isinstance(value, str):  # "10.0.0.0/8, 192.0.2.1", as uvicorn's variable is written
            value = [part.strip() for part in _expand_env(value).split(",") if part.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips_are_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # uvicorn would take a mistyped entry for a literal host name that no peer ever has: the
        # proxy would silently stay untrusted, so refuse it here.
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (write 10.0.0.0/8, "
                    "not 10.0.0.1/8), nor *"
                ) from None
        return value

    @field_validator("fetch_allowlist")
    @classmethod
    def _fetch_allowlist_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from gateway.core.fetching import (
            AddressPolicy,  # late: fetching imports the OCS client
        )

        AddressPolicy.from_allowlist(value)
        return value

    def bot_for(self, channel: str) -> BotConfig:
        return self.bots[self.channels[channel].bot]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Self:
        """Validate a parsed config, turning pydantic's report into one readable ConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = ["the gateway configuration is not valid:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":
            expected = str((error.get("ctx") or {}).get("expected_tags", "")).replace("'", "")
            message = f"unknown channel type: use one of {expected}"
        elif error["type"] == "extra_forbidden":
            message = "unknown field: check its spelling against docs/CONFIG.md"
        lines.append(f"  {where or '(top level)'}: {message}")
    return "\n".join(lines)


def read_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """Read ``path``, else ``$OCS_GATEWAY_CONFIG``, else ``./gateway.yaml``: the mapping it holds,
    not yet validated; None if none exists (``gateway.config_loading.load_config`` validates it).

    Raises:
        ConfigError: the file exists but cannot be used.
    """
    explicit = path or os.environ.get(CONFIG_ENV)
    candidate = Path(explicit) if explicit else Path("gateway.yaml")
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file {candidate} does not exist (set by {CONFIG_ENV} or --config)")
        return None
    try:
        data = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{candidate} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{candidate} must hold a mapping with bots: and channels:")
    return data
