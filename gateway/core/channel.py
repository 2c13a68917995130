"""The one interface every platform implements (Rasa's input/output pair, sized like Starlette's
``BaseRoute``).

The edge (web process) calls ``verify`` then ``parse``; the workers call ``render`` then
``send`` for each part, ``download`` for the user's files, and ``show_working``/``clear_working``
around the wait for OCS with ``show_progress`` for OCS's progress lines during it. Platform SDKs
stay private attributes of the adapter, and SDK errors are translated into ``gateway.core.errors``
where the SDK meets our code.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    TypeVar,
)

import httpx

from gateway.core.models import (
    Attachment,
    Delivery,
    Inbound,
    Outgoing,
    ParsedRequest,
    Reply,
    ReplyAttachment,
    Route,
)

if TYPE_CHECKING:
    import aiohttp
    import redis.asyncio as aioredis
    from starlette.routing import BaseRoute

    from gateway.core.config import BotConfig, GatewayConfig
    from gateway.core.keys import Keys
    from gateway.core.metrics import Metrics

__all__ = ["AdapterServices", "Admit", "ChannelAdapter", "InboundFile", "InboundRequest", "VoiceNote"]

#: Stores one inbound event (claim, inbox append, wake-up) and returns True, or False for a
#: duplicate; raises ``StoreUnavailable`` when Redis did not take it. A listener acknowledges an
#: event to its platform only after this returned.
Admit = Callable[[Inbound], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """The parts of an HTTP request an adapter may look at; ``body`` is the raw bytes, unparsed,
    because every platform signs the exact bytes it sent."""

    channel: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class InboundFile:
    """A user's file, downloaded from the platform, ready to upload to OCS."""

    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class VoiceNote:
    """A spoken answer for ``ChannelAdapter.send_voice``, in the adapter's ``voice_format``."""

    data: bytes
    #: ``audio/ogg`` (OGG/Opus) or ``audio/mpeg``.
    content_type: str
    name: str
    duration_s: float | None = None
    #: The event id of the user message the answer replies to (``Reply.in_reply_to``).
    in_reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class AdapterServices:
    """What the gateway lends an adapter: one pooled HTTP client, Redis, and the OCS file fetch."""

    config: GatewayConfig
    http: httpx.AsyncClient
    redis: aioredis.Redis
    keys: Keys
    #: Downloads a reply attachment from OCS with the bot's credentials (docs/OCS.md §4.14), which go
    #: to OCS's origin only; ``AttachmentUnavailable`` (too big, gone, refused) means: send the
    #: reply without the file's bytes (a link, a description), never fail the turn over it.
    fetch_ocs_file: Callable[[ReplyAttachment], Awaitable[bytes]] | None = None
    #: One aiohttp session per process for SDKs built on aiohttp (slack_sdk's AsyncWebClient), so
    #: every channel's Web API calls share a connection pool; None: the adapter opens its own.
    aiohttp_session: aiohttp.ClientSession | None = None
    #: The process's metrics, for what only the adapter sees (delivery receipts a platform
    #: reports on the edge); sends are counted by the engine, never by the adapter.
    metrics: Metrics | None = None


ConfigT = TypeVar("ConfigT")


class ChannelAdapter(ABC, Generic[ConfigT]):
    """One platform: verify and parse what it sends us, render and send what the bot says."""

    #: The ``type:`` of the channel in the config.
    kind: ClassVar[str]
    #: Where the platform POSTs, with a ``{channel}`` placeholder.
    inbound_path: ClassVar[str]
    #: How often ``show_working`` is repeated while OCS works; None means once.
    working_refresh_s: ClassVar[float | None] = None
    #: The audio the platform plays as a voice note, for ``send_voice``: ``ogg`` (OGG/Opus) or
    #: ``mp3``; None: the channel takes no voice replies.
    voice_format: ClassVar[str | None] = None

    def __init__(self, name: str, config: ConfigT, bot: BotConfig, services: AdapterServices) -> None:
        self.name = name
        self.config = config
        self.bot = bot
        self.services = services

    async def startup(self) -> None:
        """Prepare SDK clients (called once in each process before use)."""

    async def aclose(self) -> None:
        """Release what ``startup`` made."""

    # -- edge ---------------------------------------------------------------------------------

    @abstractmethod
    async def verify(self, request: InboundRequest) -> None:
        """Check that the request comes from the platform.

        Raises:
            SignatureInvalid: missing/wrong signature or secret, or a stale timestamp.
        """

    @abstractmethod
    async def parse(self, request: InboundRequest) -> ParsedRequest:
        """Turn a verified request into inbound events (none for events we ignore).

        Raises:
            PayloadInvalid: the body is not what the platform documents.
        """

    def routes(self) -> list[BaseRoute]:
        """Extra HTTP routes of this channel (OAuth install pages...)."""
        return []

    async def listen(self, admit: Admit, stop: asyncio.Event) -> None:
        """Receive events over a connection the gateway opens itself (Slack Socket Mode,
        Telegram long polling) until ``stop`` is set; the web process runs it beside its routes.

        The default returns at once: the channel receives over HTTP. A listener stores every
        event with ``admit`` *before* it acknowledges it to the platform, so an acknowledged event
        is never lost; when ``admit`` raises ``StoreUnavailable`` it leaves the event
        unacknowledged (the platform redelivers) and tries again later. It survives its
        platform's outages itself: only ``stop`` ends it.
        """

    # -- workers ------------------------------------------------------------------------------

    @abstractmethod
    def render(self, reply: Reply) -> list[Outgoing]:
        """Turn the bot's Markdown reply into platform messages, split to the platform's limits."""

    def reply_route(self, routes: Sequence[Route]) -> Route:
        """Where the answer to a turn of ``routes``' messages (oldest first; several when a
        burst went to OCS as one) goes: by default where the last of them came from. An adapter
        that threads answers under a message says here which one (the last)."""
        return routes[-1]

    @abstractmethod
    async def send(self, route: Route, outgoing: Outgoing, delivery: Delivery | None = None) -> str:
        """Send one part; returns the platform's message id.

        ``delivery`` says which part of which reply this is (its id is the same for every try of
        the part). The engine always passes it; None is a lone message outside any turn (an
        operator's tool, a test), sent as part 1 of 1 under a fresh id.

        Raises:
            RetryLater: rate limited or the platform is failing; try again after the delay.
            RecipientGone: the user blocked the bot / the app was removed.
            DeliveryRejected: this message cannot be delivered, ever.
        """

    async def download(self, attachment: Attachment, route: Route, *, max_bytes: int | None = None) -> InboundFile:
        """Fetch a user's file from the platform; ``max_bytes`` lowers the adapter's own limit
        (the speech service's, for a voice note): a larger file is refused, by its stated size
        before any byte is fetched, or cut off while it streams.

        Raises:
            AttachmentUnavailable: too large, gone, or not a file.
            RetryLater: the platform is failing for now.
        """
        from gateway.core.errors import AttachmentUnavailable

        raise AttachmentUnavailable(f"{self.kind} channels do not take files")

    async def send_voice(self, route: Route, note: VoiceNote, delivery: Delivery | None = None) -> str:
        """Send a spoken answer as the platform's voice note (its words went as text before it);
        returns the platform's message id. Errors as ``send``."""
        from gateway.core.errors import DeliveryRejected

        raise DeliveryRejected(f"{self.kind} channels take no voice notes")

    async def show_working(self, route: Route) -> None:
        """Show the user that the bot is working (typing indicator, reaction). Best effort."""

    async def show_progress(self, route: Route, text: str, turn_id: str) -> bool:
        """Show OCS's current progress line for the turn ``turn_id`` where the user looks, and
        say whether it is shown.

        Telegram: a message draft in a private chat (one draft per turn, replaced by the answer);
        Slack: the thread's status under the app's name; webhooks: a signed ``progress``
        callback, only when the channel opted in. False means this platform, chat or channel
        cannot show it now (the channel's ``show_progress`` is off, a group chat, a refusal the
        adapter remembers, a transient failure): the engine then keeps ``show_working`` going as
        before.

        The engine calls it whenever a task poll answers "processing" with a progress line, the
        same line again included, with one ``turn_id`` for every poll of one turn; the adapter
        skips repeats itself and re-sends what its platform lets expire (a draft lasts about
        30 s, a Slack status 2 minutes). ``clear_working`` after the answer clears what is left.
        Best effort: a platform's refusal or a ``RetryLater``-like failure is logged at debug
        and answered False, never raised.
        """
        return False

    async def clear_working(self, route: Route) -> None:
        """Undo ``show_working`` (and ``show_progress``) once the reply is out or the turn
        failed. Best effort."""

    async def forget_conversation(self, route: Route) -> None:
        """Called when a conversation is reset, for adapters that keep per-conversation state."""

    def describe(self) -> Mapping[str, Any]:
        """A few facts for logs and the startup banner (never secrets)."""
        return {"kind": self.kind, "path": self.inbound_path.format(channel=self.name)}

    async def status(self) -> Mapping[str, Any]:
        """What the platform says about this channel, for the operator's console (never secrets
        or user text): e.g. Telegram's webhook as Telegram has it. May call the platform; the
        caller bounds the time. ``{"warnings": [...]}`` entries are shown as drift."""
        return {}
