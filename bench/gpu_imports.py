"""Lets `bench/gpu.py` import the sampler on the GPU machine's image, which has no `unidecode`.

`sampler.jukebox.cascade` imports the labeller, which imports `unidecode` to transliterate lyrics.
The bench labels no text, so where the package is missing a stand-in that returns its input is
registered under that name. Import this module before anything from `sampler`.
"""

from __future__ import annotations

import importlib.util
import sys
import types

if importlib.util.find_spec("unidecode") is None:
    stand_in = types.ModuleType("unidecode")
    stand_in.unidecode = lambda text, *args, **kwargs: text  # type: ignore[attr-defined]
    sys.modules["unidecode"] = stand_in
