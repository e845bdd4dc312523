"""Which decoder of a model a user means: by index, or by the name the model's config gives it.

A model's config lists its decoders (`ARCConfig.decoders`) as registry names ("gemma3-270m"), hub
names or folders. Each decoder answers to that entry exactly, to the registry name an alias stands
for and to its aliases (model/registry.py: "gemma3" and "google/gemma-3-270m" both mean
"gemma3-270m"), and to the last part of a folder or hub name ("Llama-3.1-8B" for
"meta-llama/Llama-3.1-8B"). An index stays valid
(an int, or a string of digits as a command line gives it). Anything else, or a name two decoders
answer to, is refused with the decoders the model has.
"""

from __future__ import annotations

from pathlib import PurePath

from .registry import ALIASES


def decoder_index(names: list[str], decoder: int | str) -> int:
    """The index in `names` (the config's decoders) of `decoder`, an index or a name (module doc)."""
    if isinstance(decoder, str) and decoder not in names and decoder.strip().isdigit():
        decoder = int(decoder)
    if isinstance(decoder, int) and not isinstance(decoder, bool):
        if 0 <= decoder < len(names):
            return decoder
        raise ValueError(f"decoder index {decoder} does not exist; this model has {listing(names)}")
    if not isinstance(decoder, str):
        raise ValueError(f"a decoder is an index or a name, got {decoder!r}; this model has {listing(names)}")
    wanted = {decoder, ALIASES.get(decoder, decoder)}  # "gemma3" selects a decoder listed as "gemma3-270m"
    matches = [i for i, name in enumerate(names) if wanted & answers_to(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"decoder {decoder!r} is ambiguous: it names decoders {matches}; use an index")
    raise ValueError(f"decoder {decoder!r} does not exist; this model has {listing(names)}")


def answers_to(name: str) -> set[str]:
    """Every name a decoder listed as `name` in a config is selected by."""
    canonical = ALIASES.get(name, name)
    return {name, canonical, PurePath(name).name}


def short_name(name: str) -> str:
    """How a decoder listed as `name` is shown: its registry name, else its folder's or hub name's
    last part ("/models/Llama-3.1-8B" -> "Llama-3.1-8B"); the resolver accepts it."""
    return PurePath(ALIASES.get(name, name)).name


def listing(names: list[str]) -> str:
    """The decoders as errors list them: `0: smollm2-135m, 1: gemma3-270m`."""
    return ", ".join(f"{i}: {n}" for i, n in enumerate(names))
