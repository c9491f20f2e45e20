"""A fake Discord server on loopback for end-to-end tests of the real discord.py client.

It speaks enough of REST API v10 and the gateway websocket for a `commands.Bot` with app
commands, buttons, autocomplete and modals, and keeps an in-memory model that tests assert:
messages per channel (with every revision), interactions and their callbacks, every HTTP request.

Behaviour copied from the real Discord where a bot could get it wrong:
- the first followup after a deferred response fills the "thinking" message (and inherits its
  visibility: a followup marked ephemeral after a public defer is public);
- an interaction can be acknowledged once (40060), its token expires (50027), attachments bigger
  than the guild's `attachment_size_limit` are refused (40005), content/choices/components over
  Discord's limits are refused (50035), privileged intents are refused (4014);
- a channel's overwrite can take permissions from the bot (`FakeChannel.bot_denied`): interactions
  there carry the rest as `app_permissions`, and posting without View Channel (50001), Send
  Messages or, with files, Attach Files (50013) is refused, as are a reply (160002) or reading a
  message (50013) without Read Message History, and editing or deleting one without View Channel
  (50001);
- a channel's member overwrites (`FakeChannel.member_overwrites`) change what a member may do there:
  an interaction carries the member's permissions in the channel it comes from, not elsewhere;
- a thread (`fake.add_thread`) takes its channel's permissions; in an archived one
  (`FakeChannel.archived`) edits and deletes are refused (400, 50083) and a message sent un-archives
  it, and in a locked one (`FakeChannel.locked`) the bot may neither post nor edit (403, 160005);
- command options are checked against the synced schema (unknown or missing options, choices,
  ranges) before anything reaches the bot, as the Discord client does.

Waiting is done with `await fake.wait_for(predicate)`, driven by a Condition notified on every
recorded request and gateway frame: no polling sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import discord
import yarl
from aiohttp import web

log = logging.getLogger(__name__)

T = TypeVar("T")
JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024

# Gateway opcodes and intents (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = (
    6,
    7,
    8,
    9,
    10,
    11,
)
INTENT_GUILD_MESSAGES = 1 << 9
PRIVILEGED_INTENTS = {1 << 1: "members", 1 << 8: "presences", 1 << 15: "message_content"}

# Interaction and callback types.
INTERACTION_COMMAND, INTERACTION_COMPONENT, INTERACTION_AUTOCOMPLETE, INTERACTION_MODAL_SUBMIT = 2, 3, 4, 5
CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE = 4, 5, 6, 7
CALLBACK_AUTOCOMPLETE, CALLBACK_MODAL = 8, 9
FLAG_EPHEMERAL, FLAG_LOADING = 1 << 6, 1 << 7
THREAD_PUBLIC = 11  # channel type

# Command option types.
OPT_SUB_COMMAND, OPT_SUB_GROUP, OPT_STRING, OPT_INTEGER, OPT_BOOLEAN = 1, 2, 3, 4, 5
OPT_USER, OPT_CHANNEL, OPT_ROLE, OPT_MENTIONABLE, OPT_NUMBER, OPT_ATTACHMENT = 6, 7, 8, 9, 10, 11

MAX_CONTENT, MAX_EMBEDS, MAX_FILES, MAX_ROWS, MAX_ROW_WIDTH, MAX_CUSTOM_ID, MAX_CHOICES = (
    2000,
    10,
    10,
    5,
    5,
    100,
    25,
)
# A message nonce is at most 25 characters. With enforce_nonce, Discord answers the author's message
# with the same nonce from "the past few minutes" instead of creating another (the fake keeps 5).
MAX_NONCE, NONCE_WINDOW_S = 25, 300.0
# An interaction's token works for 15 minutes; its webhook calls fail after (401, 50027).
INTERACTION_TOKEN_LIFETIME_S = 15 * 60.0
# Application commands: description 1-100, at most 25 options (and choices), option and choice
# names and string choice values within 100, string option lengths within 6000, and at most 8000
# characters of names, descriptions and choices in one command.
MAX_COMMAND_DESCRIPTION, MAX_COMMAND_OPTIONS, MAX_STRING_OPTION_LENGTH, MAX_COMMAND_CHARS = (
    100,
    25,
    6000,
    8000,
)
# Modals: title up to 45, at most 5 rows; a text input's label up to 45, placeholder up to 100, value
# and length bounds up to 4000.
MAX_MODAL_TITLE, MAX_MODAL_ROWS, MAX_INPUT_LABEL, MAX_INPUT_PLACEHOLDER, MAX_INPUT_LENGTH = (
    45,
    5,
    45,
    100,
    4000,
)
# Embed limits: per field of one embed, and all the text of a message's embeds together.
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096, "footer.text": 2048, "author.name": 256}
MAX_EMBED_FIELDS, MAX_FIELD_NAME, MAX_FIELD_VALUE, MAX_EMBEDS_TOTAL = 25, 256, 1024, 6000

# Discord sniffs the type from the name (discord.py uploads everything as octet-stream).
_CONTENT_TYPE_OVERRIDES = {
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".oga": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".wav": "audio/x-wav",
}

EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    attach_files=True,
    embed_links=True,
    add_reactions=True,
    use_application_commands=True,
    send_messages_in_threads=True,
).value
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | discord.Permissions(manage_messages=True).value


# --------------------------------------------------------------------------- errors


class FakeDiscordError(Exception):
    """A test drove the fake in a way the real Discord (or its client) would not allow."""


class UnknownCommandError(FakeDiscordError):
    """The command (or option) the test invoked was never synced by the bot."""


class InvalidOptionError(FakeDiscordError):
    """An option value the Discord client would refuse to send (type, range, choices, required)."""


class ComponentNotFoundError(FakeDiscordError):
    """No component with that custom_id on that message (or it is disabled)."""


class BotNotConnectedError(FakeDiscordError):
    """No bot session is connected to the gateway, so nothing can receive the event."""


class InteractionNotAcknowledgedError(FakeDiscordError):
    """The bot did not answer an interaction in time."""


class WaitTimeoutError(FakeDiscordError):
    """`FakeDiscord.wait_for` ran out of time; the message lists the last requests seen."""


class DiscordAPIError(Exception):
    """Raised inside a route handler; becomes a Discord-shaped JSON error response."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def body(self) -> JSON:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _form_error(field_path: str, error_code: str, message: str) -> DiscordAPIError:
    """Discord's 50035 shape: errors nested by the field's path ("data.choices" -> data -> choices)."""
    errors: JSON = {"_errors": [{"code": error_code, "message": message}]}
    for part in reversed(field_path.split(".") if field_path else []):  # "": the whole body
        errors = {part: errors}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors)


def _too_long(path: str, limit: int) -> DiscordAPIError:
    return _form_error(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _check_length(value: object, low: int, high: int, path: str) -> None:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise _form_error(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


def _check_command_schema(body: JSON) -> None:
    """What Discord checks of a chat command's definition (its name is checked by the caller)."""
    if body.get("type", 1) != 1:
        return  # user and message commands have no description or options
    _check_length(body.get("description"), 1, MAX_COMMAND_DESCRIPTION, "description")
    chars = (
        len(body["name"]) + len(body["description"]) + _check_options(body.get("options") or [], "options")
    )
    if chars > MAX_COMMAND_CHARS:
        raise _form_error(
            "", "APPLICATION_COMMAND_TOO_LARGE", f"Command exceeds maximum size ({MAX_COMMAND_CHARS})"
        )


def _check_options(options: list[JSON], path: str) -> int:
    """Check `options` (and a sub-command's own); the characters they count towards the command's size."""
    if len(options) > MAX_COMMAND_OPTIONS:
        raise _too_long(path, MAX_COMMAND_OPTIONS)
    chars = 0
    for index, option in enumerate(options):
        where = f"{path}.{index}"
        _check_length(option.get("name"), 1, 32, f"{where}.name")
        _check_length(option.get("description"), 1, MAX_COMMAND_DESCRIPTION, f"{where}.description")
        chars += len(option["name"]) + len(option["description"])
        for bound in ("min_length", "max_length"):
            if bound in option and not 0 <= int(option[bound]) <= MAX_STRING_OPTION_LENGTH:
                raise _form_error(
                    f"{where}.{bound}",
                    "NUMBER_TYPE_MAX",
                    f"Must be between 0 and {MAX_STRING_OPTION_LENGTH}.",
                )
        choices = option.get("choices") or []
        if len(choices) > MAX_CHOICES:
            raise _too_long(f"{where}.choices", MAX_CHOICES)
        for number, choice in enumerate(choices):
            _check_length(choice.get("name"), 1, 100, f"{where}.choices.{number}.name")
            if isinstance(choice.get("value"), str):
                _check_length(choice["value"], 1, 100, f"{where}.choices.{number}.value")
            chars += len(choice["name"]) + len(str(choice.get("value", "")))
        chars += _check_options(option.get("options") or [], f"{where}.options")
    return chars


def _check_modal(data: JSON) -> None:
    _check_length(data.get("custom_id"), 1, 100, "data.custom_id")
    _check_length(data.get("title"), 1, MAX_MODAL_TITLE, "data.title")
    rows = data.get("components") or []
    if len(rows) > MAX_MODAL_ROWS:
        raise _too_long("data.components", MAX_MODAL_ROWS)
    for row_index, row in enumerate(rows):
        for index, field_ in enumerate(row.get("components") or []):
            where = f"data.components.{row_index}.components.{index}"
            _check_length(field_.get("custom_id"), 1, 100, f"{where}.custom_id")
            if "label" in field_:
                _check_length(field_["label"], 1, MAX_INPUT_LABEL, f"{where}.label")
            if field_.get("placeholder") is not None:
                _check_length(field_["placeholder"], 0, MAX_INPUT_PLACEHOLDER, f"{where}.placeholder")
            if field_.get("value") is not None:
                _check_length(field_["value"], 0, MAX_INPUT_LENGTH, f"{where}.value")
            for bound, low in (("min_length", 0), ("max_length", 1)):
                if field_.get(bound) is not None and not low <= int(field_[bound]) <= MAX_INPUT_LENGTH:
                    raise _form_error(
                        f"{where}.{bound}",
                        "NUMBER_TYPE_MAX",
                        f"Must be between {low} and {MAX_INPUT_LENGTH}.",
                    )


# --------------------------------------------------------------------------- world model


@dataclass
class FakeUser:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class FakeChannel:
    id: int
    name: str
    guild_id: int | None
    position: int = 0
    type: int = 0  # 0: guild text, 1: DM, 11: public thread
    recipients: list[FakeUser] = field(default_factory=list)
    # Permission bits this channel's overwrite takes from the bot (e.g. a moderator removed Send
    # Messages here): interactions carry what is left as `app_permissions`, and posts need it.
    bot_denied: int = 0
    # Member overwrites: user id -> (allowed bits, denied bits) in this channel, e.g. Manage Messages
    # for a channel's own moderator. Sent in `permission_overwrites`; interactions here carry them.
    member_overwrites: dict[int, tuple[int, int]] = field(default_factory=dict)
    # A thread's channel (its permissions are that channel's), and whether the thread is archived
    # (by a moderator, or automatically after a while without messages) or locked by a moderator.
    parent_id: int | None = None
    owner_id: int = 0
    archived: bool = False
    locked: bool = False

    @property
    def is_thread(self) -> bool:
        return self.type == THREAD_PUBLIC

    def payload(self) -> JSON:
        if self.type == 1:
            return {"id": str(self.id), "type": 1, "recipients": [u.payload() for u in self.recipients]}
        if self.is_thread:
            return {
                "id": str(self.id),
                "type": self.type,
                "guild_id": str(self.guild_id),
                "name": self.name,
                "parent_id": str(self.parent_id),
                "owner_id": str(self.owner_id),
                "message_count": 0,
                "member_count": 1,
                "rate_limit_per_user": 0,
                "last_message_id": None,
                "flags": 0,
                "thread_metadata": {
                    "archived": self.archived,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": datetime.now(UTC).isoformat(),
                    "locked": self.locked,
                },
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [
                {"id": str(user_id), "type": 1, "allow": str(allow), "deny": str(deny)}
                for user_id, (allow, deny) in self.member_overwrites.items()
            ],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }


@dataclass
class FakeMember:
    user: FakeUser
    role_ids: list[int]
    joined_at: datetime


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    attachment_size_limit: int
    roles: list[FakeRole] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)
    members: dict[int, FakeMember] = field(default_factory=dict)
    locale: str = "en-US"

    def channel(self, name: str) -> FakeChannel:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise FakeDiscordError(
            f"guild {self.name!r} has no channel {name!r}; it has {[c.name for c in self.channels]}"
        )

    def overwritten_by(self, channel: FakeChannel) -> FakeChannel:
        """The channel whose overwrites apply in `channel`: its own, or a thread's channel."""
        if channel.parent_id is None:
            return channel
        return next(c for c in self.channels if c.id == channel.parent_id)

    def role(self, role_id: int) -> FakeRole:
        return next(r for r in self.roles if r.id == role_id)

    def permissions_of(self, user_id: int) -> int:
        """Guild-level permissions as Discord computes them (owner and administrator get all)."""
        if user_id == self.owner_id:
            return discord.Permissions.all().value
        member = self.members.get(user_id)
        if member is None:
            raise FakeDiscordError(f"user {user_id} is not a member of guild {self.name!r}")
        value = self.role(self.id).permissions  # @everyone has the guild's id
        for role_id in member.role_ids:
            value |= self.role(role_id).permissions
        if value & discord.Permissions(administrator=True).value:
            return discord.Permissions.all().value
        return value

    def permissions_in(self, channel: FakeChannel, user_id: int) -> int:
        """A member's permissions in `channel`: the guild's, then the member's overwrite there (this
        fake has no role overwrites; a thread has its channel's), as Discord computes them for an
        interaction."""
        value = self.permissions_of(user_id)
        if value & discord.Permissions(administrator=True).value:
            return value
        allow, deny = self.overwritten_by(channel).member_overwrites.get(user_id, (0, 0))
        return (value & ~deny) | allow

    def member_payload(
        self, user_id: int, *, with_permissions: bool = False, channel: FakeChannel | None = None
    ) -> JSON:
        member = self.members[user_id]
        payload: JSON = {
            "user": member.user.payload(),
            "roles": [str(r) for r in member.role_ids],
            "joined_at": member.joined_at.isoformat(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "communication_disabled_until": None,
        }
        if with_permissions:
            value = self.permissions_of(user_id) if channel is None else self.permissions_in(channel, user_id)
            payload["permissions"] = str(value)
        return payload

    def payload(self, *, full: bool) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "roles": [r.payload() for r in self.roles],
            "emojis": [],
            "stickers": [],
            "features": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
        }
        if full:  # GUILD_CREATE shape
            payload.update(
                joined_at=datetime.now(UTC).isoformat(),
                large=False,
                unavailable=False,
                member_count=len(self.members),
                channels=[c.payload() for c in self.channels if not c.is_thread],
                members=[self.member_payload(uid) for uid in self.members],
                threads=[c.payload() for c in self.channels if c.is_thread and not c.archived],
                presences=[],
                voice_states=[],
                stage_instances=[],
                guild_scheduled_events=[],
                soundboard_sounds=[],
            )
        return payload


@dataclass(frozen=True)
class Upload:
    """A file a test user attaches to a command (or a message)."""

    filename: str
    data: bytes
    content_type: str | None = None  # None: guessed from the name, as Discord does


@dataclass
class FakeAttachment:
    id: int
    filename: str
    content_type: str
    data: bytes
    url: str
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            payload["description"] = self.description
        return payload


@dataclass(frozen=True)
class MessageRevision:
    """One state of a message: the first is its creation, each later one an edit."""

    at: datetime
    content: str
    embeds: list[JSON]
    components: list[JSON]
    attachments: tuple[FakeAttachment, ...]
    flags: int


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    webhook_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: JSON | None = None  # who triggered the interaction this message answers
    reference: JSON | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    revisions: list[MessageRevision] = field(default_factory=list)
    reactions: dict[str, set[int]] = field(default_factory=dict)
    deleted_at: datetime | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred response still showing "thinking"."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def edited_at(self) -> datetime | None:
        return self.revisions[-1].at if len(self.revisions) > 1 else None

    @property
    def edits(self) -> list[MessageRevision]:
        return self.revisions[1:]

    @property
    def replied_to(self) -> int | None:
        return (
            int(self.reference["message_id"]) if self.reference and "message_id" in self.reference else None
        )

    def snapshot(self) -> None:
        self.revisions.append(
            MessageRevision(
                at=datetime.now(UTC),
                content=self.content,
                embeds=json.loads(json.dumps(self.embeds)),
                components=json.loads(json.dumps(self.components)),
                attachments=tuple(self.attachments),
                flags=self.flags,
            )
        )

    def iter_components(self) -> Iterator[JSON]:
        """Every component, however deeply nested (action rows, v2 containers, sections)."""
        stack = list(reversed(self.components))
        while stack:
            component = stack.pop()
            yield component
            children = list(component.get("components", []))
            for key in ("accessory", "component"):
                if key in component:
                    children.append(component[key])
            stack.extend(reversed(children))

    def find_component(self, custom_id: str) -> JSON | None:
        return next((c for c in self.iter_components() if c.get("custom_id") == custom_id), None)

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.iter_components() if "custom_id" in c]

    @property
    def buttons(self) -> list[JSON]:
        return [c for c in self.iter_components() if c.get("type") == 2]


@dataclass
class InteractionCallback:
    type: int
    data: JSON
    files: list[FakeAttachment]
    at: float  # time.monotonic()


@dataclass
class InteractionRecord:
    id: int
    token: str
    type: int
    payload: JSON
    user: FakeUser
    guild_id: int | None
    channel_id: int
    created_at: float  # time.monotonic()
    callbacks: list[InteractionCallback] = field(default_factory=list)
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    source_message: FakeMessage | None = None  # the message whose component was used
    expired: bool = False

    @property
    def name(self) -> str | None:
        """Command name for commands/autocomplete, custom_id for components and modals."""
        data = self.payload.get("data", {})
        return data.get("name") or data.get("custom_id")

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)

    @property
    def response_type(self) -> int | None:
        return self.callbacks[0].type if self.callbacks else None

    @property
    def deferred(self) -> bool:
        return self.response_type in (CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE)

    @property
    def ack_latency(self) -> float | None:
        """Seconds from dispatch to the first callback (Discord allows 3)."""
        return self.callbacks[0].at - self.created_at if self.callbacks else None

    @property
    def modal(self) -> JSON | None:
        return next((c.data for c in self.callbacks if c.type == CALLBACK_MODAL), None)

    @property
    def choices(self) -> list[JSON] | None:
        return next(
            (c.data.get("choices", []) for c in self.callbacks if c.type == CALLBACK_AUTOCOMPLETE), None
        )

    @property
    def messages(self) -> list[FakeMessage]:
        """Every message this interaction produced (original response first), edits included."""
        original = (
            [self.original] if self.original is not None and self.original is not self.source_message else []
        )
        return original + self.followups


@dataclass
class RequestRecord:
    method: str
    path: str  # without the query string
    route: str  # e.g. "POST /channels/{channel_id}/messages"; "?" for unknown routes
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    status: int | None = None
    error: JSON | None = None


@dataclass
class GatewaySession:
    session_id: str
    intents: int
    seq: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    identified_at: float = field(default_factory=time.monotonic)
    resumed: int = 0

    @property
    def live(self) -> bool:
        return self.ws is not None and not self.ws.closed


@dataclass
class SyncedCommand:
    payload: JSON
    guild_id: int | None

    @property
    def name(self) -> str:
        return str(self.payload["name"])

    @property
    def id(self) -> int:
        return int(self.payload["id"])


@dataclass
class HeldRequest:
    """A request the fake holds before handling it, until the test releases or drops it (a barrier).
    With `handled`, the fake handles it first and holds the answer: Discord did it, the sender does
    not know yet.

    `arrived` turns true (and `FakeDiscord.wait_for` re-checks) once the request is being held."""

    method: str
    route: str
    skip: int  # matching requests still let through before the one to hold
    handled: bool
    arrived: bool = False
    dropped: bool = False
    _go: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        """Handle the held request as usual."""
        self._go.set()

    def drop(self) -> None:
        """Answer it with a 503 and change nothing, as if it never reached Discord (its sender died).
        A `handled` request was already done: its answer goes out as it is."""
        self.dropped = True
        self._go.set()

    async def _wait(self, fake: FakeDiscord) -> None:
        self.arrived = True
        await fake._notify()
        await self._go.wait()


@dataclass
class _InjectedFailure:
    method: str
    route: str
    status: int
    body: JSON
    headers: dict[str, str]
    times: int
    skip: int = 0  # matching requests answered before the failures start
    handled: bool = False  # done first: the answer is lost, as at Discord's edge
    dropped: bool = False  # no answer at all: the connection is cut (the client sees it reset)


# --------------------------------------------------------------------------- the server


class FakeDiscord:
    """One fake Discord (REST + gateway) on 127.0.0.1; state survives bot restarts."""

    def __init__(
        self,
        *,
        bot_name: str = "jukebot",
        token: str | None = None,
        allowed_privileged_intents: int = 0,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self._last_snowflake = 0
        self.token = token or f"fake.{secrets.token_urlsafe(24)}"
        self.bot_user = FakeUser(self._snowflake(), bot_name, bot=True)
        self.owner = FakeUser(self._snowflake(), "app-owner")
        self.application_id = self.bot_user.id  # like Discord for bots made today
        self.allowed_privileged_intents = allowed_privileged_intents
        self.heartbeat_interval_ms = heartbeat_interval_ms

        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user, self.owner.id: self.owner}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self.commands: dict[tuple[int | None, str], SyncedCommand] = {}
        self.command_syncs: list[tuple[int | None, list[str]]] = []  # (guild id or None, names) per PUT
        self.requests: list[RequestRecord] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.gateway_received: list[JSON] = []  # every frame a bot sent (heartbeats excluded)
        self.token_lifetime_s = INTERACTION_TOKEN_LIFETIME_S  # a test may shorten it, as 15 minutes

        self._failures: list[_InjectedFailure] = []
        self._holds: list[HeldRequest] = []
        self._nonces: dict[str, tuple[int, float]] = {}  # the bot's message nonces: (message id, when)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> FakeDiscord:
        app = web.Application(middlewares=[self._middleware], client_max_size=512 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        for hold in self._holds:  # a held handler would keep the server from shutting down
            hold.drop()
        for ws in list(self._sockets):
            await ws.close(code=1000, message=b"fake discord shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise FakeDiscordError("the fake Discord server is not started: await fake.start() first")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ---------------------------------------------------------------- world building

    def _snowflake(self) -> int:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(now, self._last_snowflake + 1)
        return self._last_snowflake

    def add_user(self, name: str, *, bot: bool = False) -> FakeUser:
        user = FakeUser(self._snowflake(), name, bot=bot)
        self.users[user.id] = user
        return user

    def user(self, name: str) -> FakeUser:
        for user in self.users.values():
            if user.name == name:
                return user
        raise FakeDiscordError(f"no user named {name!r}; known: {[u.name for u in self.users.values()]}")

    def add_guild(
        self,
        name: str = "Test Server",
        *,
        channels: Sequence[str] = ("general",),
        owner: FakeUser | None = None,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        everyone_permissions: int = EVERYONE_PERMISSIONS,
        locale: str = "en-US",
        with_bot: bool = True,
    ) -> FakeGuild:
        """A guild the bot is in (unless with_bot=False); owner defaults to a fresh user."""
        owner = owner or self.add_user(f"{name}-owner")
        guild_id = self._snowflake()
        guild = FakeGuild(guild_id, name, owner.id, attachment_size_limit, locale=locale)
        guild.roles.append(FakeRole(guild_id, "@everyone", everyone_permissions))
        self.guilds[guild_id] = guild
        for channel_name in channels:
            self.add_channel(guild, channel_name)
        self.add_member(guild, owner)
        if with_bot:
            self.add_member(guild, self.bot_user, permissions=BOT_PERMISSIONS, role_name=self.bot_user.name)
        return guild

    def add_channel(self, guild: FakeGuild, name: str) -> FakeChannel:
        channel = FakeChannel(self._snowflake(), name, guild.id, position=len(guild.channels))
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        return channel

    def add_thread(self, parent: FakeChannel, name: str) -> FakeChannel:
        """A public thread in `parent`, started by the guild's owner; `fake.channel(name)` finds it."""
        assert parent.guild_id is not None and not parent.is_thread
        guild = self.guilds[parent.guild_id]
        thread = FakeChannel(
            self._snowflake(),
            name,
            guild.id,
            type=THREAD_PUBLIC,
            parent_id=parent.id,
            owner_id=guild.owner_id,
        )
        guild.channels.append(thread)
        self.channels[thread.id] = thread
        return thread

    async def deny_bot(self, channel: FakeChannel, denied: discord.Permissions) -> None:
        """A moderator takes `denied` from the bot in `channel` (an overwrite for the bot; `Permissions()`
        gives everything back): Discord tells the bots (CHANNEL_UPDATE, with the overwrite)."""
        assert channel.guild_id is not None and not channel.is_thread
        channel.bot_denied = denied.value
        payload = channel.payload()
        overwrite = {"id": str(self.bot_user.id), "type": 1, "allow": "0", "deny": str(denied.value)}
        payload["permission_overwrites"] = [*payload["permission_overwrites"], overwrite]
        await self.dispatch("CHANNEL_UPDATE", payload)

    async def delete_channel(self, channel: FakeChannel) -> None:
        """Someone deletes `channel`: Discord forgets it (its id 404s) and tells the bots (CHANNEL_DELETE)."""
        assert channel.guild_id is not None and not channel.is_thread
        payload = channel.payload()
        self.guilds[channel.guild_id].channels.remove(channel)
        del self.channels[channel.id]
        await self.dispatch("CHANNEL_DELETE", payload)

    async def delete_thread(self, thread: FakeChannel) -> None:
        """Someone deletes `thread`: Discord forgets it (its id 404s) and tells the bots (THREAD_DELETE)."""
        assert thread.is_thread and thread.guild_id is not None
        self.guilds[thread.guild_id].channels.remove(thread)
        del self.channels[thread.id]
        payload = {
            "id": str(thread.id),
            "guild_id": str(thread.guild_id),
            "parent_id": str(thread.parent_id),
            "type": thread.type,
        }
        await self.dispatch("THREAD_DELETE", payload)

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        permissions: int | None = None,
        role_name: str | None = None,
    ) -> FakeMember:
        """Adds user to guild; extra `permissions` come through a role of their own (like an admin role)."""
        role_ids: list[int] = []
        if permissions is not None:
            role = FakeRole(
                self._snowflake(), role_name or f"{user.name}-role", permissions, position=len(guild.roles)
            )
            guild.roles.append(role)
            role_ids.append(role.id)
        member = FakeMember(user, role_ids, datetime.now(UTC))
        guild.members[user.id] = member
        return member

    def channel(self, name: str, guild: FakeGuild | None = None) -> FakeChannel:
        return (guild or self.default_guild).channel(name)

    @property
    def default_guild(self) -> FakeGuild:
        if not self.guilds:
            raise FakeDiscordError("no guild yet: call fake.add_guild(...) first")
        return next(iter(self.guilds.values()))

    # ---------------------------------------------------------------- queries for tests

    def channel_messages(
        self, channel: FakeChannel | int, *, include_ephemeral: bool = False
    ) -> list[FakeMessage]:
        """Messages in a channel, oldest first, deleted ones included (check `.deleted`)."""
        channel_id = channel if isinstance(channel, int) else channel.id
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and (include_ephemeral or not m.ephemeral) and not m.loading
        ]

    def message(self, message_id: int) -> FakeMessage:
        try:
            return self.messages[message_id]
        except KeyError:
            raise FakeDiscordError(f"no message {message_id} was ever created") from None

    def synced_commands(self, guild: FakeGuild | None = None) -> dict[str, JSON]:
        """The commands as last synced (global ones, or one guild's), by name."""
        guild_id = guild.id if guild else None
        return {c.name: c.payload for (g, _), c in self.commands.items() if g == guild_id}

    def calls(self, method: str | None = None, route: str | None = None) -> list[RequestRecord]:
        """Recorded requests, filtered by method and by route pattern, e.g. "/channels/{channel_id}/messages"."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (route is None or r.route.split(" ", 1)[-1] == route)
        ]

    @property
    def unknown_requests(self) -> list[RequestRecord]:
        """Requests to routes this fake does not implement (tests assert this stays empty)."""
        return [r for r in self.requests if r.route == "?"]

    @property
    def rejections(self) -> list[RequestRecord]:
        """Requests the fake answered with an error status (bad bodies, double acks, ...)."""
        return [r for r in self.requests if r.status is not None and r.status >= 400]

    @property
    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if s.live]

    # ---------------------------------------------------------------- waiting

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], T | None], *, timeout_s: float = 10.0) -> T:
        """Waits until predicate() is truthy, re-checked whenever the fake records something; returns it."""
        async with self._changed:
            try:
                result = await asyncio.wait_for(self._changed.wait_for(predicate), timeout_s)
            except TimeoutError:
                recent = "\n  ".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-15:])
                raise WaitTimeoutError(
                    f"condition not met within {timeout_s}s; last requests:\n  {recent or '(none)'}"
                ) from None
        assert result is not None  # Condition.wait_for returns only once the predicate is truthy
        return result

    # ---------------------------------------------------------------- failures

    def fail_next(
        self,
        method: str,
        route: str,
        *,
        status: int = 500,
        code: int = 0,
        message: str = "injected failure",
        retry_after: float = 0.05,
        times: int = 1,
        after: int = 0,
        handled: bool = False,
        dropped: bool = False,
    ) -> None:
        """The next `times` requests to route (pattern as in `calls`) get this error instead of a result;
        with `after`, only those that come after that many more matching ones (which are answered).
        With `handled`, each is done first, its answer replaced by the error: Discord did it, but the
        sender cannot know (an answer lost between Discord's servers). With `dropped`, the connection is
        cut instead of any answer (a reset, or a network path gone: not an HTTP error).

        status=429 produces a real rate-limit answer (retry_after in the body and a `Via` header,
        without which discord.py reads it as a Cloudflare ban)."""
        body: JSON = {"message": message, "code": code}
        headers: dict[str, str] = {}
        if status == 429:
            body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
            headers = {"Via": "1.1 google", "Retry-After": str(retry_after), "X-RateLimit-Scope": "user"}
        failure = _InjectedFailure(
            method.upper(), route, status, body, headers, times, after, handled, dropped
        )
        self._failures.append(failure)

    def failures_left(self) -> int:
        """How many requests the failures `fail_next` set up are still to meet."""
        return sum(failure.times for failure in self._failures)

    def clear_failures(self) -> None:
        """Discord is back: the failures `fail_next` set up and not yet met are dropped."""
        self._failures.clear()

    def hold(self, method: str, route: str, *, after: int = 0, handled: bool = False) -> HeldRequest:
        """Hold the request to route (pattern as in `calls`) that comes after `after` matching ones;
        `handled`: handle it, then hold its answer."""
        held = HeldRequest(method.upper(), route, after, handled)
        self._holds.append(held)
        return held

    def let_nonces_expire(self) -> None:
        """Simulates the minutes after which Discord no longer matches a message nonce: a message sent
        again with an earlier nonce is a new message."""
        self._nonces.clear()

    def expire_interaction(self, record: InteractionRecord) -> None:
        """Simulates the 15-minute lifetime of an interaction token: its webhook calls now fail (50027)."""
        record.expired = True

    # ---------------------------------------------------------------- gateway dispatch

    async def dispatch(self, event: str, data: JSON, *, intent: int | None = None) -> int:
        """Sends a DISPATCH to every live bot session (that asked for `intent`); returns how many."""
        sent = 0
        for session in self.live_sessions:
            if intent is not None and not session.intents & intent:
                continue
            await self._send_dispatch(session, event, data)
            sent += 1
        return sent

    async def _send_dispatch(self, session: GatewaySession, event: str, data: JSON) -> None:
        session.seq += 1
        frame = json.dumps({"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data})
        session.sent.append((session.seq, frame))
        del session.sent[:-1000]  # a bounded replay buffer for RESUME
        await self._send_frame(session, frame)

    async def _send_frame(self, session: GatewaySession, frame: str) -> None:
        ws = session.ws
        if ws is None or ws.closed:
            return  # kept in the buffer; a RESUME replays it
        async with session.send_lock:
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await ws.send_str(frame)

    async def request_reconnect(self) -> None:
        """Sends op 7 RECONNECT to every live session: discord.py must RESUME at resume_gateway_url."""
        for session in self.live_sessions:
            await self._send_frame(session, json.dumps({"op": OP_RECONNECT, "d": None}))

    async def post_user_message(
        self, channel: FakeChannel, user: FakeUser, content: str, *, files: Sequence[Upload] = ()
    ) -> FakeMessage:
        """A human posts in a channel (MESSAGE_CREATE goes to bots with the guild-messages intent)."""
        message = FakeMessage(self._snowflake(), channel.id, channel.guild_id, user, content=content)
        message.attachments = [self._store_upload(channel.id, upload) for upload in files]
        message.snapshot()
        self.messages[message.id] = message
        await self.dispatch("MESSAGE_CREATE", self.message_payload(message), intent=INTENT_GUILD_MESSAGES)
        await self._notify()
        return message

    # ---------------------------------------------------------------- interactions (test side)

    def bot_permissions_in(self, channel: FakeChannel) -> int:
        """The bot's permissions in a guild channel: its roles' less the channel's overwrite."""
        assert channel.guild_id is not None
        guild = self.guilds[channel.guild_id]
        return guild.permissions_of(self.bot_user.id) & ~guild.overwritten_by(channel).bot_denied

    def _interaction_base(
        self, kind: int, data: JSON, user: FakeUser, guild: FakeGuild, channel: FakeChannel, locale: str
    ) -> InteractionRecord:
        if user.id not in guild.members:
            raise FakeDiscordError(
                f"{user.name!r} is not a member of {guild.name!r}: fake.add_member(...) first"
            )
        interaction_id = self._snowflake()
        token = f"aW50ZXJhY3Rpb24.{interaction_id}.{secrets.token_urlsafe(32)}"
        channel_payload = channel.payload() | {"permissions": str(guild.permissions_in(channel, user.id))}
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
            "channel_id": str(channel.id),
            "channel": channel_payload,
            "member": guild.member_payload(user.id, with_permissions=True, channel=channel),
            "token": token,
            "version": 1,
            "app_permissions": str(self.bot_permissions_in(channel)),
            "locale": locale,
            "guild_locale": guild.locale,
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": guild.attachment_size_limit,
        }
        record = InteractionRecord(
            interaction_id, token, kind, payload, user, guild.id, channel.id, time.monotonic()
        )
        self.interactions[interaction_id] = record
        return record

    async def _deliver(self, record: InteractionRecord, *, wait: bool, timeout_s: float) -> InteractionRecord:
        if not self.live_sessions:
            raise BotNotConnectedError(
                "no bot is connected to the fake gateway: start one before interacting"
            )
        record.created_at = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", record.payload)
        if wait:
            try:
                await self.wait_for(lambda: record.acknowledged, timeout_s=timeout_s)
            except WaitTimeoutError as exc:
                raise InteractionNotAcknowledgedError(
                    f"the bot did not acknowledge interaction {record.name!r} within {timeout_s}s "
                    f"(Discord shows 'The application did not respond' after 3 s). {exc}"
                ) from None
        return record

    def _resolve_target(
        self, user: FakeUser | None, guild: FakeGuild | None, channel: FakeChannel | None
    ) -> tuple[FakeUser, FakeGuild, FakeChannel]:
        guild = guild or (
            self.guilds[channel.guild_id] if channel and channel.guild_id else self.default_guild
        )
        channel = channel or guild.channels[0]
        if user is None:
            humans = [
                m.user for m in guild.members.values() if not m.user.bot and m.user.id != guild.owner_id
            ]
            if not humans:
                raise FakeDiscordError("pass user=...: the guild has no member besides its owner and bots")
            user = humans[0]
        return user, guild, channel

    def _find_command(self, name: str, guild: FakeGuild) -> SyncedCommand:
        top = name.split(" ", 1)[0]
        command = self.commands.get((guild.id, top)) or self.commands.get((None, top))
        if command is None:
            known = sorted({c.name for (g, _), c in self.commands.items() if g in (None, guild.id)})
            raise UnknownCommandError(f"/{top} was not synced for guild {guild.name!r}; synced: {known}")
        return command

    def _build_command_data(
        self,
        name: str,
        options: Mapping[str, Any],
        guild: FakeGuild,
        channel: FakeChannel,
        *,
        focused: str | None = None,
        forged: bool = False,
    ) -> JSON:
        command = self._find_command(name, guild)
        data: JSON = {"id": str(command.id), "name": command.name, "type": command.payload.get("type", 1)}
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        resolved: dict[str, dict[str, JSON]] = {}
        # Walk down sub-command groups: "admin limits set" -> nested type 1/2 options.
        schema_options: list[JSON] = command.payload.get("options", [])
        container = data
        for part in name.split(" ")[1:]:
            sub = next((o for o in schema_options if o["name"] == part and o["type"] in (1, 2)), None)
            if sub is None:
                raise UnknownCommandError(f"/{name}: {part!r} is not a sub-command of /{command.name}")
            nested: JSON = {"name": part, "type": sub["type"], "options": []}
            container.setdefault("options", []).append(nested)
            container, schema_options = nested, sub.get("options", [])
        by_name = {o["name"]: o for o in schema_options}
        unknown = set(options) - set(by_name)
        if unknown:
            raise UnknownCommandError(f"/{name} has no option(s) {sorted(unknown)}; it has {sorted(by_name)}")
        if focused is None:
            missing = [o["name"] for o in schema_options if o.get("required") and o["name"] not in options]
            if missing:
                raise InvalidOptionError(f"/{name}: required option(s) {missing} missing")
        elif focused not in by_name or not by_name[focused].get("autocomplete"):
            raise InvalidOptionError(f"/{name}: option {focused!r} does not have autocomplete enabled")
        payload_options: list[JSON] = container.setdefault("options", [])
        for option_name, value in options.items():
            schema = by_name[option_name]
            if option_name == focused:
                payload_options.append(
                    {"name": option_name, "type": schema["type"], "value": str(value), "focused": True}
                )
                continue
            payload_options.append(
                {
                    "name": option_name,
                    "type": schema["type"],
                    "value": (
                        value
                        if forged and schema["type"] in (OPT_STRING, OPT_INTEGER, OPT_NUMBER)
                        else self._option_value(name, schema, value, guild, channel, resolved)
                    ),
                }
            )
        if resolved:
            data["resolved"] = resolved
        return data

    def _option_value(
        self,
        command: str,
        schema: JSON,
        value: Any,
        guild: FakeGuild,
        channel: FakeChannel,
        resolved: dict[str, dict[str, JSON]],
    ) -> Any:
        kind, label = schema["type"], f"/{command} {schema['name']}"
        if kind == OPT_STRING:
            if not isinstance(value, str):
                raise InvalidOptionError(f"{label} takes a string, got {value!r}")
            if not schema.get("min_length", 0) <= len(value) <= schema.get("max_length", 6000):
                raise InvalidOptionError(f"{label}: length {len(value)} outside the command's bounds")
        elif kind in (OPT_INTEGER, OPT_NUMBER):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (kind == OPT_INTEGER and not isinstance(value, int))
            ):
                raise InvalidOptionError(
                    f"{label} takes {'an integer' if kind == OPT_INTEGER else 'a number'}, got {value!r}"
                )
            if ("min_value" in schema and value < schema["min_value"]) or (
                "max_value" in schema and value > schema["max_value"]
            ):
                raise InvalidOptionError(
                    f"{label}: {value} outside [{schema.get('min_value')}, {schema.get('max_value')}]"
                )
        elif kind == OPT_BOOLEAN:
            if not isinstance(value, bool):
                raise InvalidOptionError(f"{label} takes a bool, got {value!r}")
        elif kind == OPT_ATTACHMENT:
            if not isinstance(value, Upload):
                raise InvalidOptionError(
                    f"{label} takes an Upload(filename, data), got {type(value).__name__}"
                )
            attachment = self._store_upload(channel.id, value)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            return str(attachment.id)
        elif kind in (OPT_USER, OPT_MENTIONABLE) and isinstance(value, FakeUser):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            if value.id in guild.members:
                member = guild.member_payload(value.id, with_permissions=True)
                member.pop("user")
                resolved.setdefault("members", {})[str(value.id)] = member
            return str(value.id)
        elif kind == OPT_CHANNEL and isinstance(value, FakeChannel):
            types = schema.get("channel_types")
            if types and value.type not in types:  # Discord's client offers no other channel
                raise InvalidOptionError(f"{label} takes channels of types {types}, not {value.type}")
            payload = value.payload() | {"permissions": str(discord.Permissions.all().value)}
            resolved.setdefault("channels", {})[str(value.id)] = payload
            return str(value.id)
        elif kind in (OPT_ROLE, OPT_MENTIONABLE) and isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        else:
            raise InvalidOptionError(f"{label}: the fake cannot send {value!r} for option type {kind}")
        choices = schema.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise InvalidOptionError(
                f"{label}: {value!r} is not one of the choices {[c['value'] for c in choices]}"
            )
        return value

    def _check_default_permissions(self, name: str, guild: FakeGuild, user: FakeUser) -> None:
        required = self._find_command(name, guild).payload.get("default_member_permissions")
        if required is not None and int(required) & ~guild.permissions_of(user.id):
            raise InvalidOptionError(
                f"/{name} needs permissions {int(required)} that {user.name!r} lacks: Discord hides it from "
                "them"
            )

    async def invoke_command(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        attachments: Mapping[str, Upload] | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        locale: str = "en-US",
        wait: bool = True,
        timeout_s: float = 10.0,
        forged: bool = False,
    ) -> InteractionRecord:
        """A user runs a slash command ("name" or "group sub"); options are checked against the synced
        schema; attachments (or Upload values in options) become resolved attachments served by the fake.
        `forged=True` sends string and number values unchecked (any JSON value, bounds and choices
        ignored), as a tampered client could. Returns once the bot acknowledged (wait=True)."""
        user, guild, channel = self._resolve_target(user, guild, channel)
        self._check_default_permissions(name, guild, user)
        all_options = dict(options or {}) | dict(attachments or {})
        data = self._build_command_data(name, all_options, guild, channel, forged=forged)
        record = self._interaction_base(INTERACTION_COMMAND, data, user, guild, channel, locale)
        return await self._deliver(record, wait=wait, timeout_s=timeout_s)

    async def autocomplete(
        self,
        name: str,
        focused: str,
        value: str,
        *,
        options: Mapping[str, Any] | None = None,
        user: FakeUser | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        timeout_s: float = 10.0,
    ) -> list[JSON]:
        """A user types `value` into option `focused` of /name; returns the bot's choices."""
        user, guild, channel = self._resolve_target(user, guild, channel)
        all_options = dict(options or {}) | {focused: value}
        data = self._build_command_data(name, all_options, guild, channel, focused=focused)
        record = self._interaction_base(INTERACTION_AUTOCOMPLETE, data, user, guild, channel, "en-US")
        await self._deliver(record, wait=True, timeout_s=timeout_s)
        if record.choices is None:
            raise FakeDiscordError(
                f"the bot answered autocomplete with callback type {record.response_type}, not 8"
            )
        return record.choices

    async def click(
        self,
        message: FakeMessage | int,
        custom_id: str,
        *,
        user: FakeUser | None = None,
        values: Sequence[str] | None = None,
        wait: bool = True,
        timeout_s: float = 10.0,
        forged: bool = False,
    ) -> InteractionRecord:
        """A user clicks a button (or picks `values` in a select) on a stored message. `forged=True`:
        a tampered client sends a click on a button with a `custom_id` the message does not have (the
        interaction's copy of the message shows it, so discord.py routes it like a real one)."""
        message = message if isinstance(message, FakeMessage) else self.message(message)
        if message.deleted:
            raise ComponentNotFoundError(f"message {message.id} was deleted; nobody can click on it")
        component = {"type": 2, "custom_id": custom_id} if forged else message.find_component(custom_id)
        if component is None:
            raise ComponentNotFoundError(
                f"message {message.id} has no component {custom_id!r}; it has {message.custom_ids}"
            )
        if component.get("disabled"):
            raise ComponentNotFoundError(f"component {custom_id!r} on message {message.id} is disabled")
        data: JSON = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = list(values or [])
        channel = self.channels[message.channel_id]
        user, guild, channel = self._resolve_target(user, None, channel)
        record = self._interaction_base(INTERACTION_COMPONENT, data, user, guild, channel, "en-US")
        record.payload["message"] = self.message_payload(message)
        if forged:  # the message as the tampered client claims it, with the forged button in a new row
            record.payload["message"]["components"] = [
                *message.components,
                {"type": 1, "components": [component | {"style": 2, "label": "forged"}]},
            ]
        record.source_message = message
        return await self._deliver(record, wait=wait, timeout_s=timeout_s)

    async def submit_modal(
        self,
        opened_by: InteractionRecord,
        values: Mapping[str, str],
        *,
        user: FakeUser | None = None,
        wait: bool = True,
        timeout_s: float = 10.0,
    ) -> InteractionRecord:
        """Submits the modal the bot opened in answer to `opened_by`, text inputs filled by custom_id."""
        modal = opened_by.modal
        if modal is None:
            raise FakeDiscordError(f"interaction {opened_by.name!r} was not answered with a modal")
        inputs: dict[str, JSON] = {}

        def answer(component: JSON) -> JSON:
            if component["type"] == 1:
                return {"type": 1, "components": [answer(c) for c in component.get("components", [])]}
            if component["type"] == 18:  # label wrapping one input
                return {"type": 18, "component": answer(component["component"])}
            inputs[component["custom_id"]] = component
            value = values.get(component["custom_id"], component.get("value") or "")
            if component.get("required", True) and not value:
                raise InvalidOptionError(f"modal field {component['custom_id']!r} is required")
            if value and not component.get("min_length", 0) <= len(value) <= component.get(
                "max_length", 4000
            ):
                raise InvalidOptionError(
                    f"modal field {component['custom_id']!r}: length {len(value)} out of bounds"
                )
            return {"type": component["type"], "custom_id": component["custom_id"], "value": value}

        components = [answer(c) for c in modal["components"]]
        unknown = set(values) - set(inputs)
        if unknown:
            raise InvalidOptionError(
                f"modal {modal['custom_id']!r} has no field(s) {sorted(unknown)}; it has {sorted(inputs)}"
            )
        channel = self.channels[opened_by.channel_id]
        user, guild, channel = self._resolve_target(user or opened_by.user, None, channel)
        data = {"custom_id": modal["custom_id"], "components": components}
        record = self._interaction_base(INTERACTION_MODAL_SUBMIT, data, user, guild, channel, "en-US")
        if opened_by.source_message is not None:
            record.payload["message"] = self.message_payload(opened_by.source_message)
            record.source_message = opened_by.source_message
        return await self._deliver(record, wait=wait, timeout_s=timeout_s)

    # ---------------------------------------------------------------- payloads

    def message_payload(self, message: FakeMessage) -> JSON:
        payload: JSON = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "author": message.author.payload(),
            "content": message.content,
            "timestamp": message.created_at.isoformat(),
            "edited_timestamp": message.edited_at.isoformat() if message.edited_at else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.payload() for a in message.attachments],
            "embeds": message.embeds,
            "components": message.components,
            "pinned": False,
            "type": message.type,
            "flags": message.flags,
            "reactions": [
                {
                    "emoji": {"id": None, "name": emoji},
                    "count": len(users),
                    "me": self.bot_user.id in users,
                    "burst_count": 0,
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me_burst": False,
                    "burst_colors": [],
                }
                for emoji, users in message.reactions.items()
                if users
            ],
        }
        if message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
            payload["application_id"] = str(self.application_id)
        if message.interaction_metadata is not None:
            payload["interaction_metadata"] = message.interaction_metadata
        if message.reference is not None:
            payload["message_reference"] = message.reference
            ref = self.messages.get(message.replied_to or 0)
            payload["referenced_message"] = self.message_payload(ref) if ref and ref is not message else None
        return payload

    def application_payload(self) -> JSON:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.name,
            "icon": None,
            "description": "",
            "summary": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner.payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "bot": self.bot_user.payload(),
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
        }

    # ---------------------------------------------------------------- storage of uploads and messages

    def _store_upload(
        self, channel_id: int, upload: Upload, description: str | None = None
    ) -> FakeAttachment:
        attachment_id = self._snowflake()
        suffix = "." + upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
        content_type = (
            upload.content_type
            or _CONTENT_TYPE_OVERRIDES.get(suffix)
            or mimetypes.guess_type(upload.filename)[0]
            or "application/octet-stream"
        )
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{yarl.URL.build(path=upload.filename).raw_path}"
        attachment = FakeAttachment(
            attachment_id, upload.filename, content_type, upload.data, url, description
        )
        self.attachments[attachment_id] = attachment
        return attachment

    def _size_limit(self, channel_id: int) -> int:
        channel = self.channels.get(channel_id)
        if channel is None or channel.guild_id is None:
            return DEFAULT_ATTACHMENT_SIZE_LIMIT
        return self.guilds[channel.guild_id].attachment_size_limit

    @staticmethod
    def _validate_content(body: JSON) -> None:
        content = body.get("content")
        if content is not None and len(content) > MAX_CONTENT:
            raise _too_long("content", MAX_CONTENT)
        embeds = body.get("embeds") or []
        if len(embeds) > MAX_EMBEDS:
            raise _too_long("embeds", MAX_EMBEDS)
        FakeDiscord._validate_embeds(embeds)
        components = body.get("components") or []
        flags = int(body.get("flags") or 0)
        if not flags & (1 << 15):  # classic components: at most 5 rows of 5
            if len(components) > MAX_ROWS:
                raise _too_long("components", MAX_ROWS)
            for row in components:
                if len(row.get("components", [])) > MAX_ROW_WIDTH:
                    raise _too_long("components", MAX_ROW_WIDTH)
        probe = FakeMessage(0, 0, None, FakeUser(0, ""), components=components)
        for custom_id in probe.custom_ids:
            if not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
                raise _form_error(
                    "custom_id", "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_CUSTOM_ID} in length."
                )

    @staticmethod
    def _validate_embeds(embeds: list[JSON]) -> None:
        total = 0
        for index, embed in enumerate(embeds):
            for path, limit in EMBED_TEXT_LIMITS.items():
                value: Any = embed
                for key in path.split("."):
                    value = value.get(key) if isinstance(value, dict) else None
                text = str(value or "")
                total += len(text)
                if len(text) > limit:
                    raise _too_long(f"embeds.{index}.{path}", limit)
            fields = embed.get("fields") or []
            if len(fields) > MAX_EMBED_FIELDS:
                raise _too_long(f"embeds.{index}.fields", MAX_EMBED_FIELDS)
            for number, item in enumerate(fields):
                for key, limit in (("name", MAX_FIELD_NAME), ("value", MAX_FIELD_VALUE)):
                    text = str(item.get(key) or "")
                    total += len(text)
                    if len(text) > limit:
                        raise _too_long(f"embeds.{index}.fields.{number}.{key}", limit)
        if total > MAX_EMBEDS_TOTAL:
            raise _form_error(
                "embeds", "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_EMBEDS_TOTAL}"
            )

    def _check_body(
        self, message: FakeMessage, body: JSON, uploads: list[tuple[int, Upload]], *, creating: bool
    ) -> list[FakeAttachment]:
        """Every refusal Discord gives a create or edit body, before anything changes (a refused edit
        of a deferred response leaves it "thinking"); returns the existing attachments kept."""
        self._validate_content(body)
        limit = self._size_limit(message.channel_id)
        for _, upload in uploads:
            if len(upload.data) > limit:
                raise DiscordAPIError(
                    413,
                    40005,
                    f"Request entity too large: {upload.filename!r} is {len(upload.data)} bytes, limit "
                    f"{limit}",
                )
        kept = list(message.attachments)
        if "attachments" in body:
            current = {a.id: a for a in message.attachments}
            by_index = dict(uploads)
            kept = []
            for item in body["attachments"] or []:
                item_id = int(item["id"])
                if item_id in current:
                    kept.append(current[item_id])
                elif item_id not in by_index:
                    raise _form_error(
                        "attachments", "ATTACHMENT_NOT_FOUND", f"Unknown attachment id {item_id}."
                    )
        if len(kept) + len(uploads) > MAX_FILES:
            raise _too_long("files", MAX_FILES)
        content = body["content"] if "content" in body else message.content
        embeds = body["embeds"] if "embeds" in body else message.embeds
        components = body["components"] if "components" in body else message.components
        if creating and not (content or embeds or kept or uploads or components):
            raise DiscordAPIError(400, 50006, "Cannot send an empty message")
        reference = body.get("message_reference")
        if reference and self.messages.get(int(reference.get("message_id", 0))) is None:
            if reference.get("fail_if_not_exists", True):
                raise _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        return kept

    def _apply_body(
        self, message: FakeMessage, body: JSON, uploads: list[tuple[int, Upload]], *, creating: bool
    ) -> None:
        """Sets content/embeds/components/attachments from a create or edit body (Discord's semantics)."""
        kept = self._check_body(message, body, uploads, creating=creating)
        if "content" in body:
            message.content = body["content"] or ""
        if "embeds" in body:
            message.embeds = list(body["embeds"] or [])
        if "components" in body:
            message.components = list(body["components"] or [])
        if "flags" in body and body["flags"] is not None:
            keep = message.flags & (FLAG_EPHEMERAL | FLAG_LOADING)
            message.flags = keep | (int(body["flags"]) & ~(FLAG_EPHEMERAL | FLAG_LOADING))
        descriptions = {int(item["id"]): item.get("description") for item in body.get("attachments") or []}
        new = [self._store_upload(message.channel_id, up, descriptions.get(i)) for i, up in uploads]
        message.attachments = [*kept, *new]
        if body.get("message_reference"):
            reference = dict(body["message_reference"])
            message.reference = {k: str(v) if k.endswith("_id") else v for k, v in reference.items()}
            message.type = 19

    async def _create_message(
        self,
        channel_id: int,
        body: JSON,
        uploads: list[tuple[int, Upload]],
        *,
        interaction: InteractionRecord | None = None,
        flags: int = 0,
    ) -> FakeMessage:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise DiscordAPIError(404, 10003, "Unknown Channel")
        message = FakeMessage(self._snowflake(), channel_id, channel.guild_id, self.bot_user, flags=flags)
        if interaction is not None:
            message.webhook_id, message.interaction_id = self.application_id, interaction.id
            message.interaction_metadata = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild_id)},
            }
            message.flags |= int(body.get("flags") or 0) & FLAG_EPHEMERAL
            message.type = 20 if interaction.type == INTERACTION_COMMAND else 0
        self._apply_body(message, body, uploads, creating=not message.loading)
        message.snapshot()
        self.messages[message.id] = message
        if not message.ephemeral and not message.loading:
            await self.dispatch("MESSAGE_CREATE", self.message_payload(message), intent=INTENT_GUILD_MESSAGES)
        return message

    async def _edit_message(
        self, message: FakeMessage, body: JSON, uploads: list[tuple[int, Upload]]
    ) -> FakeMessage:
        if message.deleted:
            raise DiscordAPIError(404, 10008, "Unknown Message")
        was_loading = message.loading
        self._check_body(message, body, uploads, creating=was_loading)  # refused: still "thinking"
        message.flags &= ~FLAG_LOADING  # an edit of a deferred response ends "thinking"
        self._apply_body(message, body, uploads, creating=was_loading)
        message.snapshot()
        if not message.ephemeral:
            event = "MESSAGE_CREATE" if was_loading else "MESSAGE_UPDATE"
            await self.dispatch(event, self.message_payload(message), intent=INTENT_GUILD_MESSAGES)
        return message

    async def _delete_message(self, message: FakeMessage) -> None:
        if message.deleted:
            raise DiscordAPIError(404, 10008, "Unknown Message")
        message.deleted_at = datetime.now(UTC)
        if not message.ephemeral:
            payload = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id:
                payload["guild_id"] = str(message.guild_id)
            await self.dispatch("MESSAGE_DELETE", payload, intent=INTENT_GUILD_MESSAGES)

    # ---------------------------------------------------------------- HTTP plumbing

    def _add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway)
        r.add_route("*", "/attachments/{channel_id}/{attachment_id}/{filename}", self._serve_attachment)
        r.add_get(p + "/users/@me", self._get_me)
        r.add_post(p + "/users/@me/channels", self._create_dm)
        r.add_get(p + "/users/{user_id}", self._get_user)
        r.add_get(p + "/oauth2/applications/@me", self._get_application)
        r.add_get(p + "/applications/@me", self._get_application)
        for prefix in ("/applications/{application_id}", "/applications/{application_id}/guilds/{guild_id}"):
            r.add_get(p + prefix + "/commands", self._get_commands)
            r.add_put(p + prefix + "/commands", self._put_commands)
            r.add_post(p + prefix + "/commands", self._post_command)
            r.add_get(p + prefix + "/commands/{command_id}", self._get_command)
            r.add_delete(p + prefix + "/commands/{command_id}", self._delete_command)
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback)
        r.add_post(p + "/webhooks/{application_id}/{token}", self._followup)
        r.add_get(p + "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_get)
        r.add_patch(p + "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_edit)
        r.add_delete(p + "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_delete)
        r.add_get(p + "/channels/{channel_id}", self._get_channel)
        r.add_get(p + "/channels/{channel_id}/messages", self._list_messages)
        r.add_post(p + "/channels/{channel_id}/messages", self._post_message)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self._get_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._patch_message)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self._delete_message_route)
        r.add_post(p + "/channels/{channel_id}/typing", self._typing)
        reaction = p + "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
        r.add_put(reaction, self._add_reaction)
        r.add_delete(reaction, self._remove_reaction)
        r.add_get(p + "/guilds/{guild_id}", self._get_guild)
        r.add_get(p + "/guilds/{guild_id}/channels", self._get_guild_channels)
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self._get_member)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        known = canonical is not None and not isinstance(request.match_info.http_exception, web.HTTPException)
        route = f"{request.method} {canonical.removeprefix(API_PREFIX)}" if known and canonical else "?"
        record = RequestRecord(
            request.method,
            request.path,
            route,
            dict(request.query),
            {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("range", "content-type", "x-audit-log-reason")
            },
            time.monotonic(),
        )
        self.requests.append(record)
        try:
            if route == "?":
                raise DiscordAPIError(
                    404, 0, f"404: Not Found ({request.method} {request.path} is not faked)"
                )
            failure = self._take_failure(request.method, route.split(" ", 1)[1])
            if failure is not None:
                if failure.handled:
                    await handler(request)
                if failure.dropped and request.transport is not None:
                    record.error = {"message": "the test cut the connection"}
                    request.transport.abort()
                    raise asyncio.CancelledError  # aiohttp's way to end a handler whose client is gone
                record.status, record.error = failure.status, failure.body
                return _json_response(failure.body, failure.status, failure.headers)
            if (
                not self._is_public_route(route)
                and request.headers.get("Authorization") != f"Bot {self.token}"
            ):
                raise DiscordAPIError(401, 0, "401: Unauthorized")
            held = self._take_hold(request.method, route.split(" ", 1)[1])
            if held is not None and not held.handled:
                await held._wait(self)
                if held.dropped:
                    raise DiscordAPIError(503, 0, "the test dropped this held request")
            response = await handler(request)
            record.status = response.status
            if held is not None and held.handled:
                await held._wait(self)
            return response
        except DiscordAPIError as exc:
            record.status, record.error = exc.status, exc.body()
            if exc.status != 404 or route != "?":
                log.info("fake discord rejected %s %s: %s", request.method, request.path, exc)
            return _json_response(exc.body(), exc.status)
        finally:
            await self._notify()

    @staticmethod
    def _is_public_route(route: str) -> bool:
        # Interaction callbacks and webhooks authenticate by their token; CDN and gateway by nothing.
        path = route.split(" ", 1)[1]
        return path.startswith(("/interactions/", "/webhooks/", "/attachments/", "/gateway"))

    def _take_hold(self, method: str, route: str) -> HeldRequest | None:
        for held in self._holds:
            if held.method == method and held.route == route and not held.arrived:
                if held.skip == 0:
                    return held
                held.skip -= 1
        return None

    def _take_failure(self, method: str, route: str) -> _InjectedFailure | None:
        for failure in self._failures:
            if failure.method == method and failure.route == route and failure.times > 0:
                if failure.skip > 0:
                    failure.skip -= 1
                    continue
                failure.times -= 1
                if failure.times == 0:
                    self._failures.remove(failure)
                return failure
        return None

    async def _read_body(self, request: web.Request) -> tuple[JSON, list[tuple[int, Upload]]]:
        """JSON body, or multipart with payload_json + files[n] (the n is the attachment index)."""
        if request.content_type == "multipart/form-data":
            body: JSON = {}
            uploads: list[tuple[int, Upload]] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.name and (match := re.fullmatch(r"files\[(\d+)\]", part.name)):
                    data = bytes(await part.read(decode=False))
                    uploads.append((int(match[1]), Upload(part.filename or f"file{match[1]}", data)))
                else:
                    raise _form_error(
                        part.name or "?", "UNKNOWN_FIELD", f"Unexpected multipart field {part.name!r}"
                    )
            return body, uploads
        if request.can_read_body:
            try:
                parsed = await request.json()
            except json.JSONDecodeError:
                raise DiscordAPIError(400, 50109, "The request body contains invalid JSON.") from None
            return (parsed if isinstance(parsed, dict) else {"__list__": parsed}), []
        return {}, []

    def _channel_or_404(self, request: web.Request) -> FakeChannel:
        channel = self.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise DiscordAPIError(404, 10003, "Unknown Channel")
        return channel

    def _message_or_404(self, request: web.Request) -> FakeMessage:
        channel = self._channel_or_404(request)
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None or message.channel_id != channel.id or message.deleted or message.ephemeral:
            raise DiscordAPIError(404, 10008, "Unknown Message")
        return message

    # ---------------------------------------------------------------- REST handlers

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response(
            {
                "url": f"ws://127.0.0.1:{self.port}/gateway",
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json_response(self.bot_user.payload() | {"verified": True, "mfa_enabled": False})

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise DiscordAPIError(404, 10013, "Unknown User")
        return _json_response(user.payload())

    async def _create_dm(self, request: web.Request) -> web.Response:
        body, _ = await self._read_body(request)
        user = self.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise DiscordAPIError(404, 10013, "Unknown User")
        channel = next((c for c in self.channels.values() if c.type == 1 and c.recipients == [user]), None)
        if channel is None:
            channel = FakeChannel(self._snowflake(), f"dm-{user.name}", None, type=1, recipients=[user])
            self.channels[channel.id] = channel
        return _json_response(channel.payload())

    async def _get_application(self, request: web.Request) -> web.Response:
        return _json_response(self.application_payload())

    def _command_scope(self, request: web.Request) -> int | None:
        if int(request.match_info["application_id"]) != self.application_id:
            raise DiscordAPIError(403, 50001, "Missing Access (wrong application id)")
        guild_id = request.match_info.get("guild_id")
        if guild_id is None:
            return None
        if int(guild_id) not in self.guilds:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        return int(guild_id)

    def _upsert_command(self, guild_id: int | None, body: JSON) -> SyncedCommand:
        if not re.fullmatch(r"[-_\w]{1,32}", body.get("name", "")) or body["name"] != body["name"].lower():
            raise _form_error(
                "name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid command name {body.get('name')!r}"
            )
        _check_command_schema(body)
        existing = self.commands.get((guild_id, body["name"]))
        command_id = existing.id if existing else self._snowflake()  # Discord keeps ids across re-syncs
        payload = dict(body) | {
            "id": str(command_id),
            "application_id": str(self.application_id),
            "version": str(self._snowflake()),
            "type": body.get("type", 1),
            "description": body.get("description", ""),
            "default_member_permissions": body.get("default_member_permissions"),
        }
        if guild_id is not None:
            payload["guild_id"] = str(guild_id)
        command = SyncedCommand(payload, guild_id)
        self.commands[(guild_id, command.name)] = command
        return command

    async def _put_commands(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        body, _ = await self._read_body(request)
        items = body.get("__list__")
        if not isinstance(items, list):
            raise DiscordAPIError(400, 50035, "Invalid Form Body: expected a list of commands")
        for key in [k for k in self.commands if k[0] == guild_id]:
            if key[1] not in {c.get("name") for c in items}:
                del self.commands[key]
        synced = [self._upsert_command(guild_id, item) for item in items]
        self.command_syncs.append((guild_id, [c.name for c in synced]))
        return _json_response([c.payload for c in synced])

    async def _post_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        body, _ = await self._read_body(request)
        return _json_response(self._upsert_command(guild_id, body).payload)

    async def _get_commands(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        return _json_response([c.payload for (g, _), c in self.commands.items() if g == guild_id])

    def _command_or_404(self, request: web.Request) -> tuple[tuple[int | None, str], SyncedCommand]:
        guild_id = self._command_scope(request)
        command_id = int(request.match_info["command_id"])
        for key, command in self.commands.items():
            if key[0] == guild_id and command.id == command_id:
                return key, command
        raise DiscordAPIError(404, 10063, "Unknown application command")

    async def _get_command(self, request: web.Request) -> web.Response:
        return _json_response(self._command_or_404(request)[1].payload)

    async def _delete_command(self, request: web.Request) -> web.Response:
        key, _ = self._command_or_404(request)
        del self.commands[key]
        return web.Response(status=204)

    def _interaction_by_token(self, request: web.Request) -> InteractionRecord:
        token = request.match_info["token"]
        record = next((i for i in self.interactions.values() if i.token == token), None)
        if (
            record is None
            or int(request.match_info.get("application_id", self.application_id)) != self.application_id
        ):
            raise DiscordAPIError(404, 10015, "Unknown Webhook")
        if record.expired or time.monotonic() - record.created_at > self.token_lifetime_s:
            raise DiscordAPIError(401, 50027, "Invalid Webhook Token")
        return record

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        record = self.interactions.get(int(request.match_info["interaction_id"]))
        if record is None or record.token != request.match_info["token"]:
            raise DiscordAPIError(404, 10062, "Unknown interaction")
        if record.acknowledged:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        body, uploads = await self._read_body(request)
        kind, data = int(body.get("type", 0)), body.get("data") or {}
        allowed = {
            INTERACTION_COMMAND: {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_MODAL},
            INTERACTION_AUTOCOMPLETE: {CALLBACK_AUTOCOMPLETE},
            INTERACTION_COMPONENT: {
                CALLBACK_MESSAGE,
                CALLBACK_DEFERRED_MESSAGE,
                CALLBACK_DEFERRED_UPDATE,
                CALLBACK_UPDATE,
                CALLBACK_MODAL,
            },
            INTERACTION_MODAL_SUBMIT: {
                CALLBACK_MESSAGE,
                CALLBACK_DEFERRED_MESSAGE,
                CALLBACK_DEFERRED_UPDATE,
                CALLBACK_UPDATE,
            },
        }[record.type]
        if kind not in allowed:
            raise DiscordAPIError(
                400,
                50035,
                f"Invalid Form Body: callback type {kind} is not valid for interaction type {record.type}",
            )
        if kind in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE) and record.source_message is None:
            raise DiscordAPIError(400, 50035, "Invalid Form Body: no message to update for this interaction")
        if kind == CALLBACK_AUTOCOMPLETE:
            choices = data.get("choices", [])
            if len(choices) > MAX_CHOICES:
                raise _too_long("data.choices", MAX_CHOICES)
            if any(not 1 <= len(str(c.get("name", ""))) <= 100 for c in choices):
                raise _form_error(
                    "data.choices.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            if any(isinstance(c.get("value"), str) and len(c["value"]) > 100 for c in choices):
                raise _form_error(
                    "data.choices.value", "BASE_TYPE_BAD_LENGTH", "Must be 100 or fewer in length."
                )
        if kind == CALLBACK_MODAL:
            if not (data.get("custom_id") and data.get("title") and data.get("components")):
                raise DiscordAPIError(
                    400, 50035, "Invalid Form Body: a modal needs custom_id, title and components"
                )
            _check_modal(data)
        resource: JSON | None = None
        if kind == CALLBACK_MESSAGE:
            record.original = await self._create_message(record.channel_id, data, uploads, interaction=record)
            resource = self.message_payload(record.original)
        elif kind == CALLBACK_DEFERRED_MESSAGE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            record.original = await self._create_message(
                record.channel_id, {}, [], interaction=record, flags=flags
            )
        elif kind == CALLBACK_UPDATE:
            assert record.source_message is not None
            record.original = await self._edit_message(record.source_message, data, uploads)
            resource = self.message_payload(record.original)
        elif kind == CALLBACK_DEFERRED_UPDATE:
            record.original = record.source_message
        attachments = (
            list(record.original.attachments[-len(uploads) :]) if uploads and record.original else []
        )
        record.callbacks.append(InteractionCallback(kind, data, attachments, time.monotonic()))
        interaction: JSON = {"id": str(record.id), "type": record.type}
        if record.original is not None:
            interaction |= {
                "response_message_id": str(record.original.id),
                "response_message_loading": record.original.loading,
                "response_message_ephemeral": record.original.ephemeral,
            }
        answer: JSON = {"interaction": interaction}
        if resource is not None:
            answer["resource"] = {"type": kind, "message": resource}
        if request.query.get("with_response") in ("1", "true", "True"):
            return _json_response(answer)
        return web.Response(status=204)

    def _webhook_message(self, request: web.Request, record: InteractionRecord) -> FakeMessage:
        message_id = request.match_info["message_id"]
        if message_id == "@original":
            if record.original is None:
                raise DiscordAPIError(404, 10008, "Unknown Message")
            return record.original
        message = self.messages.get(int(message_id))
        if (
            message is None
            or message.deleted
            or (message.interaction_id != record.id and message is not record.original)
        ):
            raise DiscordAPIError(404, 10008, "Unknown Message")
        return message

    async def _followup(self, request: web.Request) -> web.Response:
        record = self._interaction_by_token(request)
        if not record.acknowledged or record.type == INTERACTION_AUTOCOMPLETE:
            raise DiscordAPIError(404, 10015, "Unknown Webhook")
        body, uploads = await self._read_body(request)
        if record.original is not None and record.original.loading and not record.original.deleted:
            # The first followup after a deferral fills the "thinking" message, keeping its visibility
            # (once that message is deleted, a followup is a message of its own, ephemeral if asked).
            message = await self._edit_message(record.original, body, uploads)
        else:
            flags = int(body.get("flags") or 0) & FLAG_EPHEMERAL
            message = await self._create_message(
                record.channel_id, body, uploads, interaction=record, flags=flags
            )
            message.type = 0 if message.type == 20 else message.type
            record.followups.append(message)
        if request.query.get("wait") in ("1", "true", "True"):
            return _json_response(self.message_payload(message))
        return web.Response(status=204)

    async def _webhook_get(self, request: web.Request) -> web.Response:
        record = self._interaction_by_token(request)
        return _json_response(self.message_payload(self._webhook_message(request, record)))

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        record = self._interaction_by_token(request)
        message = self._webhook_message(request, record)
        body, uploads = await self._read_body(request)
        await self._edit_message(message, body, uploads)
        return _json_response(self.message_payload(message))

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        record = self._interaction_by_token(request)
        await self._delete_message(self._webhook_message(request, record))
        return web.Response(status=204)

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json_response(self._channel_or_404(request).payload())

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel_or_404(request)
        if channel.guild_id is not None:
            granted = discord.Permissions(self.bot_permissions_in(channel))
            if not granted.view_channel:
                raise DiscordAPIError(403, 50001, "Missing Access")
            if not granted.read_message_history:  # Discord: "no messages will be returned"
                return _json_response([])
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 1 << 63))
        after = int(request.query.get("after", 0))
        messages = [m for m in self.channel_messages(channel) if not m.deleted and after < m.id < before]
        newest_first = sorted(messages, key=lambda m: m.id, reverse=True)
        if "after" in request.query and "before" not in request.query:
            newest_first = sorted(messages, key=lambda m: m.id)[:limit][::-1]
        return _json_response([self.message_payload(m) for m in newest_first[:limit]])

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel_or_404(request)
        body, uploads = await self._read_body(request)
        if channel.guild_id is not None:
            granted = discord.Permissions(self.bot_permissions_in(channel))
            if not granted.view_channel:
                raise DiscordAPIError(403, 50001, "Missing Access")
            may_send = granted.send_messages_in_threads if channel.is_thread else granted.send_messages
            if not may_send or (uploads and not granted.attach_files):
                raise DiscordAPIError(403, 50013, "Missing Permissions")
            # Discord: "when creating a message as a reply to another message, the current user must
            # have the READ_MESSAGE_HISTORY permission".
            if body.get("message_reference") and not granted.read_message_history:
                raise DiscordAPIError(403, 160002, "Cannot reply without permission to read message history")
        if channel.locked:  # only members who may manage threads post there; the bot may not
            raise DiscordAPIError(403, 160005, "Thread is locked")
        if int(body.get("flags") or 0) & FLAG_EPHEMERAL:
            raise _form_error(
                "flags", "MESSAGE_FLAGS_INVALID", "Only interaction responses can be ephemeral."
            )
        nonce = None if body.get("nonce") is None else str(body["nonce"])
        if nonce is not None and len(nonce) > MAX_NONCE:
            raise _too_long("nonce", MAX_NONCE)
        if nonce is not None and body.get("enforce_nonce"):
            # Discord: the same author's message with this nonce from the past few minutes is returned
            # instead of creating another.
            earlier = self._nonces.get(nonce)
            if earlier is not None and time.monotonic() - earlier[1] < NONCE_WINDOW_S:
                return _json_response(self.message_payload(self.messages[earlier[0]]))
        channel.archived = False  # a message un-archives its thread, as the Discord client shows
        message = await self._create_message(channel.id, body, uploads)
        if nonce is not None:
            self._nonces[nonce] = (message.id, time.monotonic())
        return _json_response(self.message_payload(message))

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._message_or_404(request)
        self._check_bot_may(self.channels[message.channel_id], read_history=True)
        return _json_response(self.message_payload(message))

    async def _patch_message(self, request: web.Request) -> web.Response:
        message = self._message_or_404(request)
        self._check_bot_may(self.channels[message.channel_id])
        if message.author.id != self.bot_user.id:
            raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
        self._check_thread_open(self.channels[message.channel_id])
        body, uploads = await self._read_body(request)
        await self._edit_message(message, body, uploads)
        return _json_response(self.message_payload(message))

    async def _delete_message_route(self, request: web.Request) -> web.Response:
        message = self._message_or_404(request)
        self._check_bot_may(self.channels[message.channel_id])
        self._check_thread_open(self.channels[message.channel_id])
        await self._delete_message(message)
        return web.Response(status=204)

    def _check_bot_may(self, channel: FakeChannel, *, read_history: bool = False) -> None:
        """Discord refuses any request about a guild channel's messages to a bot that may not view it
        (50001), and reading one to a bot without Read Message History (50013)."""
        if channel.guild_id is None:
            return
        granted = discord.Permissions(self.bot_permissions_in(channel))
        if not granted.view_channel:
            raise DiscordAPIError(403, 50001, "Missing Access")
        if read_history and not granted.read_message_history:
            raise DiscordAPIError(403, 50013, "Missing Permissions")

    @staticmethod
    def _check_thread_open(channel: FakeChannel) -> None:
        """Discord refuses changes to the messages of an archived thread, and the bot's in a locked one."""
        if channel.archived:
            raise DiscordAPIError(400, 50083, "Thread is archived")
        if channel.locked:
            raise DiscordAPIError(403, 160005, "Thread is locked")

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel_or_404(request)
        return web.Response(status=204)

    async def _add_reaction(self, request: web.Request) -> web.Response:
        message = self._message_or_404(request)
        message.reactions.setdefault(request.match_info["emoji"], set()).add(self.bot_user.id)
        return web.Response(status=204)

    async def _remove_reaction(self, request: web.Request) -> web.Response:
        message = self._message_or_404(request)
        message.reactions.get(request.match_info["emoji"], set()).discard(self.bot_user.id)
        return web.Response(status=204)

    def _guild_or_404(self, request: web.Request) -> FakeGuild:
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None or self.bot_user.id not in guild.members:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        return guild

    async def _get_guild(self, request: web.Request) -> web.Response:
        return _json_response(self._guild_or_404(request).payload(full=False))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        return _json_response([c.payload() for c in self._guild_or_404(request).channels if not c.is_thread])

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self._guild_or_404(request)
        user_id = int(request.match_info["user_id"])
        if user_id not in guild.members:
            raise DiscordAPIError(404, 10007, "Unknown Member")
        return _json_response(guild.member_payload(user_id))

    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        """The CDN: bytes with Content-Length, HEAD, and single byte ranges (206/416)."""
        if request.method not in ("GET", "HEAD"):
            raise DiscordAPIError(405, 0, "405: Method Not Allowed")
        attachment = self.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None or request.match_info["filename"] != attachment.filename:
            raise DiscordAPIError(404, 0, "404: Not Found")
        data, size = attachment.data, attachment.size
        headers = {"Content-Type": attachment.content_type, "Accept-Ranges": "bytes"}
        status, start, end = 200, 0, size - 1
        range_header = request.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match is None or not (match[1] or match[2]):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(match[2]), 0)
            if start >= size or start > end:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = data[start : end + 1]
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            return response
        return web.Response(status=status, body=body, headers=headers)

    # ---------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: GatewaySession | None = None
        try:
            await ws.send_str(
                json.dumps({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                op, data = message.get("op"), message.get("d")
                if op == OP_HEARTBEAT:
                    await ws.send_str(json.dumps({"op": OP_HEARTBEAT_ACK}))
                    continue
                self.gateway_received.append(message)
                if op == OP_IDENTIFY:
                    session = await self._identify(ws, data)
                elif op == OP_RESUME:
                    session = await self._resume(ws, data)
                elif op == OP_REQUEST_MEMBERS and session is not None:
                    await self._send_member_chunk(session, data)
                await self._notify()
                if session is None and ws.closed:
                    break
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            await self._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: JSON) -> GatewaySession | None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        refused = [
            name
            for bit, name in PRIVILEGED_INTENTS.items()
            if intents & bit and not self.allowed_privileged_intents & bit
        ]
        if refused:
            await ws.close(code=4014, message=f"Disallowed intent(s): {', '.join(refused)}".encode())
            return None
        session = GatewaySession(secrets.token_hex(16), intents, ws=ws)
        self.sessions[session.session_id] = session
        guilds = [g for g in self.guilds.values() if self.bot_user.id in g.members]
        ready = {
            "v": 10,
            "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fake-discord"],
        }
        await self._send_dispatch(session, "READY", ready)
        for guild in guilds:
            await self._send_dispatch(session, "GUILD_CREATE", guild.payload(full=True))
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: JSON) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") != self.token:
            await ws.send_str(json.dumps({"op": OP_INVALID_SESSION, "d": False}))
            return None
        session.ws, session.resumed = ws, session.resumed + 1
        since = int(data.get("seq") or 0)
        for seq, frame in list(session.sent):
            if seq > since:
                await self._send_frame(session, frame)
        await self._send_dispatch(session, "RESUMED", {"_trace": ["fake-discord"]})
        return session

    async def _send_member_chunk(self, session: GatewaySession, data: JSON) -> None:
        guild = self.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": [guild.member_payload(uid) for uid in guild.members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)


def _json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when Content-Type is exactly application/json (no charset).
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=json.dumps(data).encode(), headers=all_headers)


@contextlib.contextmanager
def discord_py_pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Points discord.py's REST base and gateway URL at the fake; restores them on exit.

    Through the bot's own JUKEBOT_DISCORD_API_BASE / JUKEBOT_DISCORD_GATEWAY settings, as an
    operator points it at a rate-limit proxy.
    """
    from bot.bot import discord_endpoints
    from jukebot.settings import Settings

    settings = Settings.model_construct(discord_api_base=fake.api_base, discord_gateway=fake.gateway_url)
    with discord_endpoints(settings):
        yield


@contextlib.asynccontextmanager
async def running_fake_discord(**kwargs: Any) -> AsyncIterator[FakeDiscord]:
    """A started fake with discord.py pointed at it, for use outside pytest fixtures."""
    async with FakeDiscord(**kwargs) as fake:
        with discord_py_pointed_at(fake):
            yield fake
