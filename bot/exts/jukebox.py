"""`/jukebox`: make a new song (a preview first, unless `full`), optionally continuing an attached clip.

Lyrics: type them in `lyrics`, or set `lyrics_modal:true` to get a form with a large text box
(what you typed in `lyrics` is filled in). With the 5b model (no lyrics) both are ignored with
a note. Everything is validated before anything is queued.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import actions, vocab
from bot.attachments import fetch_prime
from bot.bot import JukeBot
from bot.errors import InvalidRequest, JukebotError
from bot.requests import (
    MAX_SEED,
    GenerateOptions,
    build_generate,
    check_model,
    default_model,
    has_lyrics,
)
from sampler.jobspec import MAX_LYRICS_CHARS, MAX_PRIME_SECONDS, MIN_PRIME_SECONDS
from sampler.jukebox.registry import DEFAULT_MODEL, MODELS, SAMPLE_RATE
from storage.errors import StorageError
from storage.models import JobKind

MODAL_LYRICS_CHARS = 4000  # Discord's limit for one text input
STYLES_OPTION_CHARS = 2000  # 16 styles of long names fit
MODEL_CHOICES = [  # the default first
    app_commands.Choice(name=f"{model.name}: {model.summary}", value=model.name)
    for model in sorted(MODELS.values(), key=lambda model: model.name != DEFAULT_MODEL)
]


def _model_of(interaction: discord.Interaction[Any]) -> str:
    model = getattr(interaction.namespace, "model", None)
    return model if isinstance(model, str) and model in MODELS else DEFAULT_MODEL


class LyricsModal(discord.ui.Modal, title="Lyrics"):
    lyrics: discord.ui.TextInput[LyricsModal] = discord.ui.TextInput(
        label="Lyrics",
        custom_id="lyrics",
        style=discord.TextStyle.paragraph,
        max_length=MODAL_LYRICS_CHARS,
        placeholder="One line per sung line. Leave empty for an instrumental.",
        required=False,
    )

    def __init__(self, cog: Jukebox, options: GenerateOptions, prime: discord.Attachment | None) -> None:
        super().__init__(timeout=30 * 60)
        self.cog, self.options, self.prime = cog, options, prime
        self.lyrics.default = options.lyrics or None  # the command refuses lyrics the form cannot hold

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        async with self.cog.bot.reporting_errors(interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
            options = dataclasses.replace(self.options, lyrics=self.lyrics.value)
            await self.cog.submit(interaction, options, self.prime)


class Jukebox(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot

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
        length: app_commands.Range[float, 1.0, 600.0] | None = None,
        samples: app_commands.Range[int, 1, 16] | None = None,
        model: str | None = None,
        temperature: app_commands.Range[float, 0.1, 2.0] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        full: bool = False,
    ) -> None:
        if not lyrics_modal:  # else a form may have to be the first answer
            await interaction.response.defer(ephemeral=True, thinking=True)  # before the database
        if model is None:
            model = default_model(await self.bot.store.served_models())
        check_model(model)
        options = GenerateOptions(
            model=model,
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
        if lyrics_modal and has_lyrics(model):
            # Cheap checks first so a refusal is not behind a form.
            if len(lyrics or "") > MODAL_LYRICS_CHARS:
                raise InvalidRequest(
                    f"Your lyrics are {len(lyrics or ''):,} characters, more than the form's "
                    f"{MODAL_LYRICS_CHARS:,}: send them in `lyrics` without `lyrics_modal` "
                    f"(up to {MAX_LYRICS_CHARS:,}), or shorten them."
                )
            await actions.check_can_enqueue(self.bot, interaction)
            await interaction.response.send_modal(LyricsModal(self, options, prime))
            return
        if lyrics_modal:  # a model without lyrics: no form; the job is queued with a note
            await interaction.response.defer(ephemeral=True, thinking=True)
        await self.submit(interaction, options, prime)

    async def submit(
        self,
        interaction: discord.Interaction[Any],
        options: GenerateOptions,
        prime: discord.Attachment | None,
    ) -> None:
        """Validate everything, store the prime, queue the job and answer (the response is deferred)."""
        guild_id = actions.guild_id_of(interaction)
        limits = await actions.check_can_enqueue(self.bot, interaction)
        # Labels, length and samples first: they cost nothing, the prime costs a download.
        build_generate(limits, dataclasses.replace(options, prime_seconds=None))
        prime_id = None
        if prime is not None:
            decoded = await fetch_prime(self.bot.session(), prime.url, prime.filename, prime.size, limits)
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
        try:
            await actions.enqueue_and_announce(
                self.bot, interaction, limits, JobKind.GENERATE, options.model, validated, prime_id=prime_id
            )
        except JukebotError:  # refused, e.g. jobs queued while the clip downloaded filled the user's places
            if prime_id is not None:
                await self.bot.store.discard_prime(prime_id)  # kept if a job uses it after all
            raise

    @jukebox.autocomplete("artist")
    async def artist_autocomplete(
        self, interaction: discord.Interaction[JukeBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name[:100], value=name[:100])
            for name in vocab.suggest_artists(_model_of(interaction), current)
        ]

    @jukebox.autocomplete("genre")
    async def genre_autocomplete(
        self, interaction: discord.Interaction[JukeBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name, value=name)
            for name in vocab.suggest_genres(_model_of(interaction), current)
        ]

    @jukebox.autocomplete("styles")
    async def styles_autocomplete(
        self, interaction: discord.Interaction[JukeBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name, value=name)
            for name in vocab.suggest_styles(_model_of(interaction), current)
        ]


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Jukebox(bot))
