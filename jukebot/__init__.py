"""jukebot: the composition root (settings and the command line) tying bot, sampler and storage together."""

__version__ = "0.1.0"
