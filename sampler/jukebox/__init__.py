"""OpenAI Jukebox in plain torch + numpy: VQ-VAE, priors, labels, sampling.

Imports nothing else of ours: no database, no Discord, no asyncio.
"""
