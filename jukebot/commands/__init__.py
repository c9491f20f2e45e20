"""`jukebot` subcommands, one module per group; `jukebot.cli` adds each to the root group."""
