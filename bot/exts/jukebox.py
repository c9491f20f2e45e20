"""`/jukebox`: make a new song (a preview first, unless `full`), optionally continuing an attached clip.

Lyrics: type them in `lyrics`, or set `lyrics_modal:true` to get a form with a large text box
(what you typed in `lyrics` is filled in). With the 5b model (no lyrics) both are ignored with
a note. Everything is validated before anything is queued. The rest of a request waiting for its
form is kept in memory only: a form submitted after a restart, or after `LYRICS_FORM_HOURS`, queues
nothing and gives the user their lyrics back to paste into a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import actions, vocab
from bot.attachments import fetch_prime
from bot.bot import JukeBot, message_for
from bot.errors import MAX_MESSAGE_CHARS, InvalidRequest, JukebotError, fit_message
from bot.requests import (
    MAX_LENGTH_OPTION_SECONDS,
    MAX_SEED,
    MIN_LENGTH_SECONDS,
    GenerateOptions,
    build_generate,
    check_model,
    check_prime_metadata,
    default_model,
    has_lyrics,
    no_lyrics_note,
)
from bot.views import form_value
from sampler.jobspec import MAX_LYRICS_CHARS, MAX_PRIME_SECONDS, MIN_PRIME_SECONDS
from sampler.jukebox.registry import DEFAULT_MODEL, MODELS, SAMPLE_RATE
from storage.errors import StorageError
from storage.models import JobKind

log = logging.getLogger(__name__)
MODAL_LYRICS_CHARS = 4000  # Discord's limit for one text input
# How long an opened lyrics form can be submitted: time to write a song (a prime's Discord link lasts
# about a day).
LYRICS_FORM_HOURS = 12
MAX_OPEN_LYRICS_FORMS = 1000  # requests kept waiting for their form, ~10 kB each; the oldest goes
# Forms one member keeps open (opening one queues nothing, so no job limit applies): their oldest goes
# first, so one member opening forms again and again never expires anyone else's.
MAX_OPEN_LYRICS_FORMS_PER_USER = 3
LYRICS_FORM = re.compile(r"jukebot:lyrics-form:(?P<key>[0-9a-f]{16})")
STYLES_OPTION_CHARS = 2000  # 16 styles of long names fit
MODEL_CHOICES = [  # the default first
    app_commands.Choice(name=f"{model.name}: {model.summary}", value=model.name)
    for model in sorted(MODELS.values(), key=lambda model: model.name != DEFAULT_MODEL)
]


def _model_chosen(interaction: discord.Interaction[Any]) -> str | None:
    model = getattr(interaction.namespace, "model", None)
    return model if isinstance(model, str) and model in MODELS else None


# Autocomplete runs at each keystroke: the models served (which decide the default model) are read
# at most this often, and waited for at most this long (Discord drops a late answer).
SERVED_MODELS_FRESH_S = 30.0
SERVED_MODELS_WAIT_S = 1.0


_TOO_OLD = f"it was open more than {LYRICS_FORM_HOURS} hours"


def _expired(why: str) -> str:
    """What a lyrics form whose request was let go for `why` says when it comes back."""
    return f"This lyrics form expired ({why}), so nothing was queued."


@dataclass(frozen=True)
class _WaitingForLyrics:
    """A /jukebox request waiting for its lyrics form."""

    user_id: int
    options: GenerateOptions
    prime: discord.Attachment | None
    opened_at: float  # time.monotonic()
    # False: the database was too slow to choose the default model before the form had to open, so
    # the submission chooses it.
    model_chosen: bool = True


class LyricsModal(discord.ui.Modal, title="Lyrics"):
    """The lyrics form. The Jukebox cog answers every submission (`Jukebox.on_interaction`), also one
    whose request it no longer holds, so no submission ever fails without an answer."""

    lyrics: discord.ui.TextInput[LyricsModal] = discord.ui.TextInput(
        label="Lyrics",
        custom_id="lyrics",
        style=discord.TextStyle.paragraph,
        max_length=MODAL_LYRICS_CHARS,
        placeholder="One line per sung line. Leave empty for an instrumental.",
        required=False,
    )

    def __init__(self, key: str, lyrics: str | None) -> None:
        super().__init__(custom_id=f"jukebot:lyrics-form:{key}")
        self.lyrics.default = lyrics or None  # the command refuses lyrics the form cannot hold


class Jukebox(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot
        # Requests waiting for their lyrics form, by the key in the form's custom_id, oldest first.
        self.waiting_for_lyrics: OrderedDict[str, _WaitingForLyrics] = OrderedDict()
        # Why a form was let go before it came back (its key: a few bytes), newest last, to say so.
        self._forms_let_go: OrderedDict[str, str] = OrderedDict()
        self.lyrics_form_timeout_s = LYRICS_FORM_HOURS * 3600.0
        # (when read, the models live workers serve), for `_autocomplete_model`
        self._served_for_autocomplete: tuple[float, frozenset[str]] = (-math.inf, frozenset())
        # Members whose clip is downloading or decoding now. The job limits are checked before the
        # download and enforced only when the job is stored: without one clip at a time, a burst of
        # requests from one member would download and decode them all, for one place in the queue.
        self.fetching_prime = actions.OnePerMember(
            "Your previous clip is still being downloaded and checked; wait for its answer, then send "
            "this request again."
        )

    async def _autocomplete_model(self, interaction: discord.Interaction[Any]) -> str:
        """The model a request being typed will run on: the one chosen, else the default a request
        gets now (`_with_default_model`), from the models served as read within the last
        SERVED_MODELS_FRESH_S (names for another model's labels would be refused)."""
        chosen = _model_chosen(interaction)
        if chosen is not None:
            return chosen
        read_at, served = self._served_for_autocomplete
        if time.monotonic() - read_at >= SERVED_MODELS_FRESH_S:
            try:
                served = frozenset(
                    await asyncio.wait_for(self.bot.store.served_models(), SERVED_MODELS_WAIT_S)
                )
            except Exception as exc:  # a slow or absent database: the last models read, or none
                log.debug("autocomplete without the models served now: %r", exc)
            else:
                self._served_for_autocomplete = (time.monotonic(), served)
        return default_model(served)

    def _wait_for_lyrics(self, request: _WaitingForLyrics) -> str:
        """Keep `request` for its form; returns the form's key."""
        theirs = [key for key, kept in self.waiting_for_lyrics.items() if kept.user_id == request.user_id]
        for key in theirs[: len(theirs) - MAX_OPEN_LYRICS_FORMS_PER_USER + 1]:
            self._let_go(key, _expired(f"you opened {MAX_OPEN_LYRICS_FORMS_PER_USER} newer ones"))
        while self.waiting_for_lyrics:  # forget the expired ones, and the oldest beyond the limit
            key, oldest = next(iter(self.waiting_for_lyrics.items()))
            if time.monotonic() - oldest.opened_at >= self.lyrics_form_timeout_s:
                self._let_go(key, _expired(_TOO_OLD))
            elif len(self.waiting_for_lyrics) >= MAX_OPEN_LYRICS_FORMS:
                self._let_go(key, _expired(f"{MAX_OPEN_LYRICS_FORMS} forms were open; yours was the oldest"))
            else:
                break
        key = secrets.token_hex(8)
        self.waiting_for_lyrics[key] = request
        return key

    def _let_go(self, key: str, said: str) -> None:
        """Forget form `key`'s request, keeping what to say should the form come back."""
        self.waiting_for_lyrics.pop(key, None)
        self._forms_let_go[key] = said
        while len(self._forms_let_go) > 4 * MAX_OPEN_LYRICS_FORMS:  # a few bytes each: a bound all the same
            self._forms_let_go.popitem(last=False)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[JukeBot]) -> None:
        """Queue the job a submitted lyrics form completes, or give the lyrics back when the request is
        gone, saying why; other interactions are left alone."""
        data = cast("dict[str, Any]", interaction.data or {})
        found = LYRICS_FORM.fullmatch(str(data.get("custom_id", "")))
        if interaction.type != discord.InteractionType.modal_submit or found is None:
            return
        lyrics, key = form_value(data, "lyrics"), found["key"]
        async with self.bot.reporting_errors(interaction):
            request = self.waiting_for_lyrics.get(key)
            if request is None:  # none kept: the bot restarted (or let it go among many since)
                said = self._forms_let_go.get(key, _expired("the bot restarted since it was opened"))
                await self._give_lyrics_back(interaction, lyrics, said)
                return
            if request.user_id != interaction.user.id:  # a forged form is not theirs
                said = "This lyrics form was opened by someone else, so nothing was queued."
                await self._give_lyrics_back(interaction, lyrics, said)
                return
            if time.monotonic() - request.opened_at >= self.lyrics_form_timeout_s:
                said = _expired(_TOO_OLD)
                self._let_go(key, said)
                await self._give_lyrics_back(interaction, lyrics, said)
                return
            self._let_go(key, "This lyrics form was sent already, so nothing more was queued.")
            await interaction.response.defer(ephemeral=True, thinking=True)
            options = dataclasses.replace(request.options, lyrics=lyrics)
            try:
                if not request.model_chosen:
                    options = await self._with_default_model(options)
                await self.submit(interaction, options, request.prime)
            except Exception as exc:  # refused (a limit reached meanwhile, the prime), or a bug: lyrics back
                if interaction.extras.get("job_id") is not None:
                    raise  # it was queued: the usual report, naming the job
                said = message_for(interaction, exc)
                await self._give_lyrics_back(interaction, lyrics, said.rstrip() + "\nNothing was queued.")

    async def _give_lyrics_back(self, interaction: discord.Interaction[Any], lyrics: str, said: str) -> None:
        """Answer a form that queued nothing, saying why (`said`). The user gets what they typed back,
        in the message when it fits, else as a text file."""
        again = " Run /jukebox again with `lyrics_modal:true`"
        content, files = said + again + ".", []
        if lyrics.strip():
            inline = f"{said}{again} and paste your lyrics back in:\n```\n{lyrics}\n```"
            if len(inline) <= MAX_MESSAGE_CHARS and "```" not in lyrics:
                content = inline
            else:
                content = f"{said}{again} and paste your lyrics back in: they are in the attached lyrics.txt."
                files = [discord.File(io.BytesIO(lyrics.encode()), filename="lyrics.txt")]
        content = fit_message(content)
        if interaction.response.is_done():  # deferred: the answer replaces "thinking…"
            await interaction.edit_original_response(content=content, attachments=files)
        else:
            await interaction.response.send_message(content, files=files, ephemeral=True)

    @app_commands.command(
        name="jukebox", description="Make a song with OpenAI Jukebox (a quick preview first)"
    )
    @app_commands.guild_only()
    @app_commands.describe(
        artist="Artist style (start typing for suggestions)",
        genre="Genre (several: separate with commas)",
        styles="A style sweep, one sample per style: 'Ella Fitzgerald / jazz; Metallica / metal'",
        lyrics="Lyrics to sing (5b_lyrics and 1b_lyrics)",
        lyrics_modal="Open a large text box for the lyrics",
        prime="An audio clip to continue",
        prime_seconds="How many seconds of the clip to continue from (default: all of it)",
        length="Length of the song in seconds (including the prime)",
        samples="How many candidates to make (with styles: one per style)",
        model="Which Jukebox model (default: the best one a worker has)",
        temperature="Randomness (default 0.98; lower is safer, higher is wilder)",
        seed="Random seed, to repeat a result",
        full="Skip the preview and go straight to full quality (takes hours)",
    )
    @app_commands.choices(model=MODEL_CHOICES)
    async def jukebox(
        self,
        interaction: discord.Interaction[JukeBot],
        artist: str | None = None,
        genre: str | None = None,
        styles: app_commands.Range[str, 1, STYLES_OPTION_CHARS] | None = None,
        lyrics: app_commands.Range[str, 1, MAX_LYRICS_CHARS] | None = None,
        lyrics_modal: bool = False,
        prime: discord.Attachment | None = None,
        prime_seconds: app_commands.Range[float, MIN_PRIME_SECONDS, MAX_PRIME_SECONDS] | None = None,
        length: app_commands.Range[float, MIN_LENGTH_SECONDS, MAX_LENGTH_OPTION_SECONDS] | None = None,
        samples: app_commands.Range[int, 1, 16] | None = None,
        model: str | None = None,
        temperature: app_commands.Range[float, 0.1, 2.0] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        full: bool = False,
    ) -> None:
        if model is not None:
            check_model(model)
        options = GenerateOptions(
            model=model or DEFAULT_MODEL,  # chosen below from the served models when not given
            artist=artist,
            genres=genre,
            styles=styles,
            lyrics=lyrics,
            length=length,
            samples=samples,
            temperature=temperature,
            seed=seed,
            full=full,
            prime_seconds=prime_seconds,
        )
        if lyrics_modal:
            await self._lyrics_form_or_submit(interaction, options, prime, model_given=model is not None)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the database
        if model is None:
            options = await self._with_default_model(options)
        await self.submit(interaction, options, prime)

    async def _with_default_model(self, options: GenerateOptions) -> GenerateOptions:
        return dataclasses.replace(options, model=default_model(await self.bot.store.served_models()))

    async def _lyrics_form_or_submit(
        self,
        interaction: discord.Interaction[JukeBot],
        options: GenerateOptions,
        prime: discord.Attachment | None,
        *,
        model_given: bool,
    ) -> None:
        """Open the lyrics form, the first answer, so refusals that do not need the lyrics come before
        it; or, for a model without lyrics, queue the job with a note."""
        checked = await actions.checked_before_form(
            self.bot, self._checks_before_form(interaction, options, prime, model_given)
        )
        model_chosen = checked is not None or model_given
        options = checked or options
        if has_lyrics(options.model) or not model_chosen:
            self._check_form_holds(options.lyrics)  # the checks may not have got this far
            request = _WaitingForLyrics(
                interaction.user.id, options, prime, opened_at=time.monotonic(), model_chosen=model_chosen
            )
            key = self._wait_for_lyrics(request)
            form = LyricsModal(key, options.lyrics)
            await interaction.response.send_modal(form)
            form.stop()  # `on_interaction` answers it, in this process or (giving the lyrics back) the next
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        notes: tuple[str, ...] = ()
        if not (options.lyrics or "").strip():  # typed lyrics get `build_generate`'s note instead
            notes = (no_lyrics_note(options.model, "no lyrics form opened"),)
        await self.submit(interaction, options, prime, notes)

    async def _checks_before_form(
        self,
        interaction: discord.Interaction[JukeBot],
        options: GenerateOptions,
        prime: discord.Attachment | None,
        model_given: bool,
    ) -> GenerateOptions:
        """The options with their model chosen, once the request passed every check that needs no lyrics
        and no download (a model without lyrics opens no form: `submit` checks it)."""
        if not model_given:
            options = await self._with_default_model(options)
        if has_lyrics(options.model):
            self._check_form_holds(options.lyrics)  # cheap checks first
            limits = await actions.check_can_enqueue(self.bot, interaction)
            # Length, samples, labels, a prime_seconds with no prime and the prime's size too: refused
            # now, not after the lyrics are written. With a clip, `prime_seconds` stands for its length
            # until it is decoded (a length not past it is refused now too).
            with_prime = dataclasses.replace(options, prime_duration=options.prime_seconds)
            build_generate(limits, options if prime is None else with_prime)
            if prime is not None:
                check_prime_metadata(limits, prime.filename, prime.size)
        return options

    @staticmethod
    def _check_form_holds(lyrics: str | None) -> None:
        if len(lyrics or "") > MODAL_LYRICS_CHARS:
            raise InvalidRequest(
                f"Your lyrics are {len(lyrics or ''):,} characters, more than the form's "
                f"{MODAL_LYRICS_CHARS:,}: send them in `lyrics` without `lyrics_modal` "
                f"(up to {MAX_LYRICS_CHARS:,}), or shorten them."
            )

    async def submit(
        self,
        interaction: discord.Interaction[Any],
        options: GenerateOptions,
        prime: discord.Attachment | None,
        notes: tuple[str, ...] = (),
    ) -> None:
        """Validate everything, store the prime, queue the job and answer (the response is deferred),
        with `notes` for the user besides those of the validation."""
        guild_id = actions.guild_id_of(interaction)
        limits = await actions.check_can_enqueue(self.bot, interaction)
        # Labels, length and samples first: they cost nothing, the prime costs a download.
        build_generate(limits, dataclasses.replace(options, prime_seconds=None))
        prime_id = None
        if prime is not None:
            with self.fetching_prime.held_by(interaction.user.id):
                decoded = await fetch_prime(self.bot.session(), prime.url, prime.filename, prime.size, limits)
            # As they are now: an admin may have changed them (or the channels) while the clip downloaded.
            limits = await actions.check_can_enqueue(self.bot, interaction)
            validated = build_generate(
                limits, dataclasses.replace(options, prime_duration=decoded.duration_seconds)
            )
            try:
                prime_id = await self.bot.store.store_prime(
                    user_id=interaction.user.id,
                    filename=decoded.filename,
                    pcm=decoded.pcm,
                    sample_rate=SAMPLE_RATE,
                    guild_id=guild_id,
                )
            except StorageError as exc:
                raise JukebotError(str(exc)) from None
        else:
            validated = build_generate(limits, options)
        validated = dataclasses.replace(validated, notes=(*notes, *validated.notes))
        try:
            await actions.enqueue_and_announce(
                self.bot, interaction, JobKind.GENERATE, options.model, validated, prime_id=prime_id
            )
        except Exception:  # refused (jobs queued while the clip downloaded filled the user's places), a
            # database gone, a bug: the clip is nobody's (`jobs prune` drops what this cannot, a day on)
            if prime_id is not None:
                try:
                    await self.bot.store.discard_prime(prime_id)  # kept if a job uses it after all
                except Exception as exc:  # the user hears of the first failure, not of this one
                    log.warning("could not drop clip %s of a request that queued nothing: %r", prime_id, exc)
            raise

    @jukebox.autocomplete("artist")
    async def artist_autocomplete(
        self, interaction: discord.Interaction[JukeBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name[:100], value=name[:100])
            for name in vocab.suggest_artists(await self._autocomplete_model(interaction), current)
        ]

    @jukebox.autocomplete("genre")
    async def genre_autocomplete(
        self, interaction: discord.Interaction[JukeBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name, value=name)
            for name in vocab.suggest_genres(await self._autocomplete_model(interaction), current)
        ]

    @jukebox.autocomplete("styles")
    async def styles_autocomplete(
        self, interaction: discord.Interaction[JukeBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name, value=name)
            for name in vocab.suggest_styles(await self._autocomplete_model(interaction), current)
        ]


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Jukebox(bot))
